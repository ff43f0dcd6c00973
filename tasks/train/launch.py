"""Launch ``tasks.train.main`` on every process of a run, and stream its output.

How the processes are started:

* CPU (no CUDA, or ``DS_ACCELERATOR=cpu``): ``python -m torch.distributed.run --standalone
  --nproc_per_node N -m tasks.train.main ...`` with ``DS_ACCELERATOR=cpu``; the ranks
  talk over gloo. torchrun's standalone rendezvous picks a free port itself. (DeepSpeed's
  own launcher also starts CPU ranks here with ``DS_ACCELERATOR=cpu``, but it spends
  about ten seconds more per start and appends ``--local_rank``; torchrun is used.)
* CUDA, one node: ``python -m deepspeed.launcher.runner --num_gpus N --master_port P
  --module tasks.train.main ...`` (the ``deepspeed`` command); nccl.
* Several nodes: the same with ``--hostfile H`` (DeepSpeed reaches the other nodes over
  ssh/pdsh; the repository and the run folder must be at the same paths there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pretrain.config import TrainConfig
from pretrain.provenance import atomic_write_text
from tasks.train.ds_config import batch_plan
from tasks.train.parallel.layout import check_layout
from tasks.train.preflight import TrainConfigError, check_run

REPO = Path(__file__).resolve().parents[2]
ENTRY_MODULE = "tasks.train.main"
CONFIG_FILE = "train_config.json"
RANK_ERRORS_DIR = "rank_errors"  # tasks.train.main writes rank<R>.json there when a rank fails


class TrainingFailed(RuntimeError):
    """The training processes exited with an error; the message holds the last output lines."""


class TrainingRejected(TrainConfigError):
    """A rank failed on an error that another attempt would meet again (bad data, config, checkpoint)."""


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    backend: str  # "gloo" or "nccl"


def cuda_available() -> bool:
    if os.environ.get("DS_ACCELERATOR", "") == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(cfg: TrainConfig, config_path: Path, resume: bool, cuda: bool | None = None) -> Launch:
    """argv and environment that start ``cfg.num_procs`` ranks (or the hostfile's) of the entry point."""
    cuda = cuda_available() if cuda is None else cuda
    entry_args = ["--config", str(config_path)] + (["--resume"] if resume else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a rank that aborts prints every thread's Python stack
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # torch deprecations inside DeepSpeed, per rank
    if cuda or cfg.hostfile:
        runner = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(free_port())]
        where = ["--hostfile", cfg.hostfile] if cfg.hostfile else ["--num_gpus", str(cfg.num_procs)]
        return Launch(runner + where + ["--module", ENTRY_MODULE] + entry_args, env, "nccl" if cuda else "gloo")
    env["DS_ACCELERATOR"] = "cpu"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.num_procs)))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cfg.num_procs),
            "-m", ENTRY_MODULE, *entry_args]
    return Launch(argv, env, "gloo")


def write_run_config(cfg: TrainConfig) -> Path:
    """RUN_DIR/train_config.json with absolute paths (the ranks run from the repository root)."""
    run_dir = Path(cfg.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    fixed = cfg.model_copy(update={"output_dir": str(run_dir), "data_dir": str(Path(cfg.data_dir).resolve())})
    path = run_dir / CONFIG_FILE
    atomic_write_text(path, fixed.model_dump_json(indent=2) + "\n")
    return path


def _stream(process: subprocess.Popen, log_path: Path, log_callback: Callable[[str], None]) -> deque:
    tail: deque = deque(maxlen=40)
    with log_path.open("a") as log:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.write(line + "\n")
            log_callback(line)
    return tail


def world_size(cfg: TrainConfig) -> int:
    """Ranks of the run: ``num_procs``, or the slots of every host in the hostfile."""
    if cfg.hostfile is None:
        return cfg.num_procs
    if not Path(cfg.hostfile).is_file():
        raise FileNotFoundError(f"train.hostfile: no hostfile at {cfg.hostfile}")
    from deepspeed.launcher.runner import fetch_hostfile  # DeepSpeed's own parser, as its launcher reads it

    try:
        pool = fetch_hostfile(cfg.hostfile)
    except ValueError as error:
        raise ValueError(f"train.hostfile {cfg.hostfile}: {error}") from error
    if not pool:
        raise ValueError(f"train.hostfile {cfg.hostfile} lists no hosts (lines like 'worker-0 slots=8')")
    return sum(pool.values())


def rank_failure(run_dir: Path) -> str | None:
    """The deterministic errors the ranks recorded, one line each (None when there are none)."""
    lines = []
    for path in sorted((run_dir / RANK_ERRORS_DIR).glob("rank*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("deterministic"):
            lines.append(f"rank {record['rank']}: {record['type']}: {record['message']}")
    return "\n".join(dict.fromkeys(lines)) or None


def _file_identity(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def run_training(cfg: TrainConfig, resume: bool = False,
                 log_callback: Callable[[str], None] | None = None) -> dict:
    """Train (or ``resume``) in RUN_DIR = cfg.output_dir; return RUN_DIR/summary.json.

    Output lines of every rank go to ``log_callback`` (default: print) and RUN_DIR/train.log.
    Raises, before launching, TrainConfigError when the data or model cannot work and
    BatchConfigError when the batch sizes disagree; TrainingRejected when a rank failed on
    such an error anyway, TrainingFailed when a rank failed otherwise (a crash, a kill).
    A run stopped by ``stop_after_steps`` returns ``{"completed": False}``.
    """
    callback = log_callback or (lambda line: print(line, flush=True))
    batch_plan(cfg, world_size(cfg))  # fail here, with every factor named, not in N ranks
    found = check_run(cfg)  # likewise for the data, the model shape and the vocabulary
    check_layout(cfg, world_size(cfg), found.model)  # and the parallel layout against the model and batch
    for warning in found.warnings:
        callback(f"warning: {warning}")
    config_path = write_run_config(cfg)
    run_dir = config_path.parent
    shutil.rmtree(run_dir / RANK_ERRORS_DIR, ignore_errors=True)  # the previous attempt's
    summary_before = _file_identity(run_dir / "summary.json")  # kept until this run writes its own
    launch = launch_command(cfg, config_path, resume)
    started = f"launch ({launch.backend}): {' '.join(launch.argv)}"
    with (run_dir / "train.log").open("a") as log:  # one such line per attempt
        log.write(started + "\n")
    callback(started)
    process = subprocess.Popen(launch.argv, env=launch.env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    try:
        tail = _stream(process, run_dir / "train.log", callback)
        code = process.wait()
    except BaseException:
        os.killpg(process.pid, signal.SIGTERM)  # our own child's process group: the launcher and its ranks
        process.wait()
        raise
    if code != 0:
        cause = rank_failure(run_dir)
        if cause is not None:
            raise TrainingRejected(f"{cause}\n(not retried: another attempt would fail the same way; "
                                   f"log: {run_dir / 'train.log'})")
        raise TrainingFailed(f"training exited with code {code}; last output:\n" + "\n".join(tail))
    summary_path = run_dir / "summary.json"
    if _file_identity(summary_path) in (None, summary_before):  # this run wrote none: stopped early
        return {"completed": False, "run_dir": str(run_dir)}
    return json.loads(summary_path.read_text())
