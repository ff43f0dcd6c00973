"""Ingestion under load: peak memory of each Ray worker does not grow with the number of files.

Builds WARC files from the real pages in ../shared/data/extraction-dev (``bench.ingest.build_warc``:
every file holds each of the 237 pages ``--repeat`` times, with URLs and record ids of its own),
then runs the real ingest flow (Prefect, Ray on 2 CPUs) on a small and on a larger number of files
of the same size. A sampler thread polls this Ray session's worker processes (children of its
raylet) and keeps the peak RSS of every worker that ran an ingest task. A one-file warm-up run
comes first, so both measured runs find their workers started and their modules imported.

Prints one row per run: files, records, documents, peak RSS per worker (MiB), docs/s.
tests/faults/test_load.py asserts on the same measurements.

    .venv/bin/python bench/load.py [--files 4 16] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from bench.ingest import DATA, build_warc  # noqa: E402

CC_SAMPLE = DATA.parent / "cc" / "CC-MAIN-2020-34-sample.warc.gz"
CC_SAMPLE_RECORDS = 50  # 1 warcinfo, 17 request, 16 response, 16 metadata (../shared/data/README.md)
MIB = 1024 * 1024
INGEST_TASK_TITLE = "ray::ingest-shard"


def build_inputs(folder: Path, n_files: int, repeat: int) -> int:
    """``n_files`` WARCs in ``folder``, each of 237 x ``repeat`` page records of its own followed by the
    real Common Crawl sample (warcinfo, request, response and metadata records); returns the record count."""
    sample = CC_SAMPLE.read_bytes()  # gzip members: appended, they continue the WARC
    records = 0
    for i in range(n_files):
        path = folder / f"load-{i:03d}.warc.gz"
        records += build_warc(path, repeat, first_copy=i * repeat) + CC_SAMPLE_RECORDS
        with open(path, "ab") as handle:
            handle.write(sample)
    return records


def find_raylet() -> psutil.Process:
    """The raylet of the Ray session this process is connected to (its command line names the session)."""
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "raylet" and session in " ".join(proc.info["cmdline"] or []):
            return proc
    raise RuntimeError(f"no raylet process of the Ray session {session} found")


class WorkerRssSampler(threading.Thread):
    """Polls the raylet's worker processes; the peak RSS of each worker seen running ``title``."""

    def __init__(self, title: str = INGEST_TASK_TITLE, interval_s: float = 0.02):
        super().__init__(daemon=True)
        self.title, self.interval_s = title, interval_s
        self.raylet = find_raylet()
        self.peak: dict[int, int] = {}
        self.ran_task: set[int] = set()
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            time.sleep(self.interval_s)
        self.sample()

    def sample(self) -> None:
        for proc in self.raylet.children(recursive=True):
            try:
                title = " ".join(proc.cmdline())
                rss = proc.memory_info().rss
            except psutil.Error:  # the worker exited between listing and reading
                continue
            if not title.startswith("ray::"):
                continue
            self.peak[proc.pid] = max(rss, self.peak.get(proc.pid, 0))
            if title.startswith(self.title):
                self.ran_task.add(proc.pid)
        self.samples += 1

    def finish(self) -> dict[int, int]:
        """Stop sampling; {pid: peak RSS in bytes} of the workers that ran the task."""
        self._done.set()
        self.join(timeout=10)
        return {pid: self.peak[pid] for pid in sorted(self.ran_task)}


@dataclass
class LoadRun:
    files: int
    records: int
    records_read: int
    documents: int
    dropped: dict[str, int]
    peak_rss_mib: list[float]  # one per worker that ran an ingest task, largest first
    seconds: float
    samples: int

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds

    @property
    def worst_worker_mib(self) -> float:
        return max(self.peak_rss_mib)


def measure_ingest(input_dir: Path, output_dir: Path, files: int, records: int) -> LoadRun:
    """Run the ingest flow on ``input_dir`` while sampling the Ray workers' memory."""
    from flows.ingest import ingest_flow
    from pretrain.config import IngestConfig

    sampler = WorkerRssSampler()
    sampler.start()
    started = time.perf_counter()
    try:
        summary = ingest_flow(config=IngestConfig(inputs=[str(input_dir)]), output_dir=str(output_dir))
    finally:
        peaks = sampler.finish()
    seconds = time.perf_counter() - started
    return LoadRun(files=files, records=records, records_read=summary.get("records_read", 0),
                   documents=summary.get("documents", 0), dropped=summary["dropped"],
                   peak_rss_mib=sorted((rss / MIB for rss in peaks.values()), reverse=True), seconds=seconds,
                   samples=sampler.samples)


def run_load(work: Path, file_counts: list[int], repeat: int) -> list[LoadRun]:
    """A one-file warm-up, then one measured ingest run per file count (files of the same size)."""
    build_inputs(work / "warm-up", 1, repeat)
    measure_ingest(work / "warm-up", work / "out-warm-up", 1, 0)
    runs = []
    for n_files in file_counts:
        records = build_inputs(work / f"in-{n_files}", n_files, repeat)
        runs.append(measure_ingest(work / f"in-{n_files}", work / f"out-{n_files}", n_files, records))
    return runs


def table(runs: list[LoadRun]) -> str:
    lines = ["| files | records | documents | dropped | peak RSS per worker (MiB) | docs/s |",
             "| ---: | ---: | ---: | ---: | --- | ---: |"]
    for run in runs:
        peaks = ", ".join(f"{mib:.0f}" for mib in run.peak_rss_mib)
        lines.append(f"| {run.files} | {run.records} | {run.documents} | {sum(run.dropped.values())} | {peaks} | "
                     f"{run.docs_per_s:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[4, 16], help="file counts to compare")
    parser.add_argument("--repeat", type=int, default=1, help="copies of each of the 237 pages per file")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: real pages not found at {DATA} (see ../shared/data/README.md)")
        return 0
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from tasks.ray_runtime import start_local_ray

    start_local_ray(num_cpus=2, object_store_memory_mb=256)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        runs = run_load(Path(tmp), args.files, args.repeat)
    print(table(runs))
    for run in runs:
        print(f"{run.files} files: drops {run.dropped}; {run.samples} memory samples")
    small, large = runs[0], runs[-1]
    print(f"largest worker peak: {small.worst_worker_mib:.0f} MiB with {small.files} files, "
          f"{large.worst_worker_mib:.0f} MiB with {large.files} files "
          f"(ratio {large.worst_worker_mib / small.worst_worker_mib:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
