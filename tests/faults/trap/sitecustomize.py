"""Test only: hold a Ray worker at the moment it commits one shard, so a fault test can kill it there.

Every stage writes a shard under a temporary name and renames it into place when it is complete
(``tasks.shards.AtomicOutput``, ``tasks.dedup.layout.save_npy``). Python imports this module at
start-up in each process whose PYTHONPATH holds this folder: the fault tests put it there for a
run of their own (a subprocess with its own Ray), never for the suite. With

    FAULT_TRAP_SHARD=<the shard's final path>   FAULT_TRAP_DIR=<a folder for the markers>

an audit hook watches for the rename onto that path in a Ray worker (or, with
FAULT_TRAP_PROCESS=<suffix>, in a process whose ``sys.argv[0]`` ends so: ``tasks/train/main.py``
for a training rank). The first process to get there writes ``held-<pid>`` and waits to be killed
(at most FAULT_TRAP_HOLD_S, 300 s, then ``released-<pid>`` and it goes on); a later one, the
retried task, writes ``passed-<pid>`` and goes on. The test waits for the marker, so the process
it kills is provably inside that shard's task, its work done and its output not yet in place.
"""

import os
import sys
import time


def _marker(folder: str, name: str) -> None:
    """Create ``folder/name`` whole (written under another name, then linked into place)."""
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.link(tmp, os.path.join(folder, name))
    os.unlink(tmp)


def _first(folder: str) -> bool:
    """True for the one process that gets here first."""
    try:
        os.close(os.open(os.path.join(folder, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _install(target: str, folder: str, hold_s: float, process: str) -> None:
    target = os.path.realpath(target)

    def hook(event: str, args: tuple) -> None:
        if event != "os.rename" or not isinstance(args[1], (str, bytes, os.PathLike)):
            return
        if os.path.realpath(os.fsdecode(args[1])) != target or not sys.argv or not sys.argv[0].endswith(process):
            return
        if not _first(folder):
            _marker(folder, f"passed-{os.getpid()}")
            return
        _marker(folder, f"held-{os.getpid()}")
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
        _marker(folder, f"released-{os.getpid()}")

    sys.addaudithook(hook)


if os.environ.get("FAULT_TRAP_SHARD") and os.environ.get("FAULT_TRAP_DIR"):
    _install(os.environ["FAULT_TRAP_SHARD"], os.environ["FAULT_TRAP_DIR"],
             float(os.environ.get("FAULT_TRAP_HOLD_S", "300")),
             os.environ.get("FAULT_TRAP_PROCESS", "default_worker.py"))
