"""What every stage flow shares: retry policy, file identity for cache keys, reports."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from pretrain.outputs import claim_shards
from pretrain.paths import PathPolicy, parquet_files, policy_from_env, root_is_configured
from pretrain.progress import report_progress
from pretrain.provenance import atomic_write_text, exclusive_lock
from pretrain.errors import describe_error, is_transient_error


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
    """The complete shards of a stage folder; see ``pretrain.paths.parquet_files``."""
    return parquet_files(folder)


def claim_output(folder: Path, stage: str, names, patterns, logger) -> list[str]:
    """Make a stage's output folder hold only this run's shards (``pretrain.outputs.claim_shards``):
    an earlier run's other shards are removed and logged; a foreign shard stops the run (OutputRefused)."""
    stale = claim_shards(folder, stage, names, patterns)
    if stale:
        logger.warning("%s: removed %d shard file(s) of an earlier run that this run does not produce: %s",
                       stage, len(stale), ", ".join(stale[:10]) + (", ..." if len(stale) > 10 else ""))
    return stale


def write_report(output_dir: Path, summary: dict) -> None:
    atomic_write_text(output_dir / "report.json", json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def funnel_table(rows: list[tuple[str, object]], header: tuple[str, str] = ("stage", "count")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    return lines + [f"| {name} | {value} |" for name, value in rows]


def publish_markdown(key: str, title: str, lines: list[str]) -> None:
    create_markdown_artifact(key=key, markdown="\n".join([f"# {title}", "", *lines]), description=title)


def parameter_policy() -> PathPolicy | None:
    """The confinement for this flow run's path and URL parameters; None when they are trusted.

    Runs created from a deployment (UI, API, schedule; their subflows too) are
    confined to the data root, as is every run where ``PRETRAIN_DATA_ROOT`` is set.
    A flow called directly by the local user (the CLI, a script) is not.
    """
    from prefect.runtime import deployment

    if root_is_configured() or deployment.id:
        return policy_from_env()
    return None


def confined_folders(input_dir: str, output_dir: str) -> tuple[str, str, PathPolicy | None]:
    """A folder-to-folder flow's input and output, confined to the data root when this run is untrusted
    (``parameter_policy``); and the policy, for the flow's other paths."""
    policy = parameter_policy()
    if policy is None:
        return input_dir, output_dir, None
    return str(policy.path(input_dir, "input_dir")), str(policy.path(output_dir, "output_dir")), policy


class OutputInUse(RuntimeError):
    """Another run is writing the same output folder."""


class OutputNotWritable(PermissionError):
    """The output folder cannot be created or written."""


@contextlib.contextmanager
def output_lock(folder: Path, stage: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``folder/.lock``) while a run writes into it.

    A second run on the same folder fails at once, naming the holder, instead of
    racing the first one on report.json and info.json. The kernel drops the lock
    when its process dies, so a killed run leaves no stale lock behind. Temporary
    files of writers that were killed (``.*.part``, never read as complete) are
    removed on the way in and out: while the lock is held no live writer of
    another run owns them, and this run's tasks have all finished on the way out.
    """
    busy = lambda holder: OutputInUse(f"{stage}: output folder {folder} is being written by another run "  # noqa: E731
                                      f"({holder}); wait for it to finish or choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = exclusive_lock(folder / ".lock", stage, busy)
    except OSError as error:
        raise OutputNotWritable(f"{stage}: output folder {folder} is not writable: {error}") from error
    with lock:
        remove_stale_parts(folder)
        yield folder
        remove_stale_parts(folder)


def remove_stale_parts(folder: Path) -> int:
    """Delete the temporary ``.*.part`` files under ``folder``; how many there were."""
    stale = list(folder.rglob(".*.part"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
