"""What the fault tests share: reading outputs back, running a stage as a process and killing it."""

from __future__ import annotations

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
        self.ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # Ray's socket paths must fit in 107 bytes
        full_env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(REPO),
                    "RAY_TMPDIR": self.ray_tmp, **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "pretrain.cli", *args], env=full_env, cwd=REPO,
                                     start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)

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
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for proc in psutil.process_iter(["cmdline"]):
            if self.ray_tmp in " ".join(proc.info["cmdline"] or []):
                try:
                    proc.kill()
                except psutil.Error:
                    pass

    def finish(self, timeout_s: float = 600) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, out


class Killer(threading.Thread):
    """A thread that SIGKILLs processes until ``stop()``, which returns their pids."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: list[int] = []
        self._done = threading.Event()

    def stop(self) -> list[int]:
        self._done.set()
        self.join(timeout=5)
        return self.killed


class WorkerKiller(Killer):
    """SIGKILL the first Ray worker seen running a task whose process title starts with ``title``."""

    def __init__(self, title: str, after_s: float = 0.3):
        super().__init__()
        self.title, self.after_s = title, after_s

    def run(self) -> None:
        while not self._done.is_set() and not self.killed:
            for proc in psutil.process_iter(["name", "cmdline"]):
                title = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
                if title.startswith(self.title):
                    time.sleep(self.after_s)  # let it get into the work
                    try:
                        proc.send_signal(signal.SIGKILL)
                        self.killed.append(proc.pid)
                    except psutil.Error:
                        continue
                    break
            time.sleep(0.02)


class HolderKiller(Killer):
    """SIGKILL every Ray worker seen holding ``path`` open, for as long as it runs."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = str(path)

    def run(self) -> None:
        while not self._done.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                if not " ".join(proc.info["cmdline"] or []).startswith("ray::"):
                    continue
                try:
                    if any(f.path == self.path for f in proc.open_files()):
                        proc.kill()
                        self.killed.append(proc.pid)
                except psutil.Error:
                    continue
            time.sleep(0.01)
