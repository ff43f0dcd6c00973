"""What the fault tests share: reading outputs back, running a stage as a process and killing it.

A kill lands on a task that provably runs: the test first holds the task at a known point and sees it
there (a request held by tests/httpserver.py, or a shard's commit held by tests/faults/trap), then
kills exactly the process held, never after a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import REPO

slow = pytest.mark.skipif(not os.environ.get("PRETRAIN_SLOW_FAULTS"),
                          reason="slow fault test: run `make test-faults` (PRETRAIN_SLOW_FAULTS=1)")


def shard_bytes(folder: Path, pattern: str = "*.parquet") -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob(pattern))}


def rows_of(folder: Path) -> list[dict]:
    return [row for shard in sorted(folder.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


def part_files(folder: Path) -> list[str]:
    """Temporary files a writer left behind (none may survive a finished run)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.part"))


def assert_no_duplicate_ids(folder: Path) -> int:
    ids = [row["id"] for row in rows_of(folder)]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate document ids in {folder}"
    return len(ids)


class StageProcess:
    """``pretrain <args>`` in its own process group with its own Ray (in a short temp dir)."""

    def __init__(self, args: list[str], api_url: str, **env: str):
        self._start([sys.executable, "-m", "cli.main", *args], api_url, env)

    def _start(self, argv: list[str], api_url: str, env: dict[str, str]) -> None:
        self.ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # Ray's socket paths must fit in 107 bytes
        full_env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(REPO),
                    "RAY_TMPDIR": self.ray_tmp, **env}
        self.proc = subprocess.Popen(argv, env=full_env, cwd=REPO, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_for(self, condition, timeout_s: float = 300) -> bool:
        """Poll ``condition()`` until it holds or the process ends; True if it held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if condition():
                return True
            time.sleep(0.05)
        return False

    def kill9(self) -> None:
        """SIGKILL the command's process group and every process of its Ray instance."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for proc in psutil.process_iter(["cmdline"]):
            if self.ray_tmp in " ".join(proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    proc.kill()

    def finish(self, timeout_s: float = 600) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, out

    def stop(self) -> str:
        """Kill what is left of the run (nothing, once it finished); its output so far."""
        running = self.proc.poll() is None
        self.kill9()
        out = ""
        if self.proc.stdout and not self.proc.stdout.closed:
            os.set_blocking(self.proc.stdout.fileno(), False)  # a surviving Ray process may hold the pipe
            with contextlib.suppress(OSError, TypeError):
                out = self.proc.stdout.read() or ""
        return ("(killed: still running)\n" if running else "") + out


_FLOW_SCRIPT = """
import importlib, json, sys
from pretrain import config as configs
spec = json.loads(sys.argv[1])
module, _, name = spec["flow"].rpartition(".")
flow = getattr(importlib.import_module(module), name)
config = getattr(configs, spec["config_type"]).model_validate(spec["config"])
flow(config=config, **spec["kwargs"])
"""


class FlowProcess(StageProcess):
    """A stage's flow function (``"flows.filter.filter_flow"``) called in a process of its own, with its
    own Ray: where a ``CommitTrap`` can reach the Ray workers. The config is passed as the fields the
    test set, so the process builds the same config as the test."""

    def __init__(self, flow: str, config, api_url: str, env: dict[str, str] | None = None, **kwargs):
        spec = {"flow": flow, "config_type": type(config).__name__, "kwargs": kwargs,
                "config": config.model_dump(mode="json", exclude_unset=True)}
        self._start([sys.executable, "-c", _FLOW_SCRIPT, json.dumps(spec)], api_url, env or {})


# ---------------------------------------------------------------- holding a task, then killing it

TRAP = Path(__file__).parent / "trap"  # sitecustomize.py: the commit trap, for processes given this PYTHONPATH


class CommitTrap:
    """The Ray worker that is about to rename ``shard`` into place waits there (see trap/sitecustomize.py);
    ``process`` names other processes by the end of their ``sys.argv[0]`` (``tasks/train/main.py``).

    ``env`` goes to a process of the test's own (``StageProcess``, ``FlowProcess``); markers written
    under ``markers`` name the workers held (``held``), and those that passed later (``passed``: the
    retried task).
    """

    def __init__(self, shard: Path, markers: Path, process: str = "default_worker.py"):
        self.shard, self.markers = shard, markers
        markers.mkdir(parents=True, exist_ok=True)
        self.env = {"PYTHONPATH": f"{TRAP}{os.pathsep}{REPO}", "FAULT_TRAP_SHARD": str(shard),
                    "FAULT_TRAP_DIR": str(markers), "FAULT_TRAP_PROCESS": process}

    def pids(self, kind: str) -> list[int]:
        return sorted(int(p.name.split("-", 1)[1]) for p in self.markers.glob(f"{kind}-*"))

    def wait_held(self, run: StageProcess, timeout_s: float = 300) -> int:
        """The pid of the worker held at the commit; the test fails, with the run's output, if none gets there."""
        if run.wait_for(lambda: self.pids("held"), timeout_s):
            return self.pids("held")[0]
        pytest.fail(f"no process reached the commit of {self.shard} within {timeout_s:.0f} s; the run's "
                    f"output:\n{run.stop()[-3000:]}")


def kill_running_worker(pid: int) -> str:
    """SIGKILL Ray worker ``pid``, checked first to be running a task (its title is ``ray::<task>``, not
    ``ray::IDLE``), and wait until it is gone; returns that title."""
    proc = psutil.Process(pid)
    title = " ".join(proc.cmdline())
    assert title.startswith("ray::") and not title.startswith("ray::IDLE"), \
        f"pid {pid} should be a Ray worker running a task, its title is {title!r}"
    proc.kill()
    proc.wait(timeout=30)
    return title


def client_pid(client_port: int, server_port: int) -> int:
    """The process whose TCP connection goes from local port ``client_port`` to ``server_port``."""
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.raddr and (conn.laddr.port, conn.raddr.port) == (client_port, server_port):
            assert conn.pid is not None, f"the client on port {client_port} belongs to another user"
            return conn.pid
    raise AssertionError(f"no process holds a connection from port {client_port} to port {server_port}")


class Killer(threading.Thread):
    """A thread that SIGKILLs processes until ``stop()``, which returns their pids (and raises what went wrong)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: list[int] = []
        self.error: BaseException | None = None
        self._done = threading.Event()

    def stop(self) -> list[int]:
        self._done.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error
        return self.killed


class RequestKiller(Killer):
    """SIGKILL the Ray worker that made each request ``hold`` holds (the worker is inside that fetch), then
    let the request go; at most ``limit`` kills."""

    def __init__(self, hold, server_port: int, limit: int | None = None):
        super().__init__()
        self.hold, self.server_port, self.limit = hold, server_port, limit

    def run(self) -> None:
        while not self._done.is_set() and (self.limit is None or len(self.killed) < self.limit):
            try:
                held = self.hold.next(timeout_s=0.2)
            except AssertionError:  # none arrived yet
                continue
            try:
                pid = client_pid(held.client_port, self.server_port)
                kill_running_worker(pid)
                self.killed.append(pid)
            except BaseException as error:  # noqa: BLE001 - raised again by stop()
                self.error = error
                return
            finally:
                held.release()
