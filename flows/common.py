"""What every stage flow shares: retry policy, file identity for cache keys, reports."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from pretrain.progress import report_progress
from pretrain.provenance import atomic_write_text
from tasks.errors import describe_error, is_transient_error


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry network and worker failures, never bad input."""
    try:
        state.result()
    except Exception as exc:  # the failed state re-raises the task's exception
        return is_transient_error(exc)
    return False


# What every per-shard stage task shares: retried only on transient errors, with
# backoff and jitter; results persisted (needed for caching), not kept in memory.
SHARD_TASK_OPTIONS = dict(
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    persist_result=True,
    cache_result_in_memory=False,
)


def gather(stage: str, futures: dict, logger=None) -> tuple[list, list[dict], int]:
    """Wait for every future (mapped to a label); (results, failures, cache hits).

    A failed task does not stop the others: its label and cause are collected, and
    the caller reports them once everything has finished.
    """
    results, failures, hits = [], [], 0
    for done, future in enumerate(as_completed(list(futures)), start=1):
        try:
            results.append(future.result())
            hits += future.state.name == "Cached"
        except Exception as exc:
            failures.append({"input": str(futures[future]), "error": describe_error(exc)})
            if logger is not None:
                logger.error("%s failed: %s: %s", stage, futures[future], failures[-1]["error"])
        report_progress(stage, done, len(futures))
    failures.sort(key=lambda failure: failure["input"])
    return results, failures, hits


def file_identity(path: str | Path) -> str:
    """Changes when the file may have changed: absolute path, size, mtime."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def parquet_shards(folder: str | Path) -> list[Path]:
    """The complete shards of a stage folder (temporary ``.*.part`` files never match)."""
    shards = sorted(Path(folder).glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no Parquet shards (*.parquet) in {folder}")
    return shards


def write_report(output_dir: Path, summary: dict) -> None:
    atomic_write_text(output_dir / "report.json", json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def funnel_table(rows: list[tuple[str, object]], header: tuple[str, str] = ("stage", "count")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    return lines + [f"| {name} | {value} |" for name, value in rows]


def publish_markdown(key: str, title: str, lines: list[str]) -> None:
    create_markdown_artifact(key=key, markdown="\n".join([f"# {title}", "", *lines]), description=title)
