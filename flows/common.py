"""What every stage flow shares: retry policy, file identity for cache keys, reports."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from pretrain.provenance import atomic_write_text
from tasks.errors import is_transient_error


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry network and worker failures, never bad input."""
    try:
        state.result()
    except Exception as exc:  # the failed state re-raises the task's exception
        return is_transient_error(exc)
    return False


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
