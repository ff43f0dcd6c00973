"""Apply a configured filter chain to one Parquet shard.

Filters only decide (``tasks/filters``); this runner does everything else once:
batching, counting per filter and reason, timing per filter, writing kept rows
and, for audit, the dropped rows under ``removed/<filter>/<shard>.parquet`` with
their reason.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.config import FilterConfig
from tasks.filters import Doc, build_chain
from tasks.shards import ShardWriter, check_document_shard

BATCH_ROWS = 1000


def _verdict_reason(verdict, filter_name: str) -> str | None:
    """None to keep; the drop reason otherwise."""
    if verdict is True:
        return None
    if isinstance(verdict, tuple):
        keep, *reason = verdict
        return None if keep else (reason[0] if reason else f"{filter_name}_dropped")
    return None if verdict else f"{filter_name}_dropped"


class _RemovedWriters:
    """One audit shard per filter, opened on the first drop."""

    def __init__(self, folder: Path | None, shard_name: str, schema: pa.Schema):
        self.folder, self.shard_name = folder, shard_name
        self.schema = schema.append(pa.field("reason", pa.string()))
        self.writers: dict[str, ShardWriter] = {}

    def clear_stale(self, filter_names: list[str]) -> None:
        """A rerun must not leave audit files from an earlier config behind."""
        if self.folder is None:
            return
        for stale in self.folder.glob(f"*/{self.shard_name}"):
            stale.unlink()
        for name in filter_names:
            (self.folder / name / self.shard_name).unlink(missing_ok=True)

    def write(self, filter_name: str, row: dict, reason: str) -> None:
        if self.folder is None:
            return
        writer = self.writers.get(filter_name)
        if writer is None:
            writer = self.writers[filter_name] = ShardWriter(self.folder / filter_name / self.shard_name, self.schema)
        writer.write({**row, "reason": reason})

    def commit(self) -> None:
        for writer in self.writers.values():
            writer.commit()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


def new_filter_stats(names: list[str]) -> dict:
    return {name: {"in": 0, "kept": 0, "dropped": Counter(), "seconds": 0.0} for name in names}


def apply_chain(chain, doc: Doc, stats: dict) -> tuple[str, str] | None:
    """Run ``doc`` through the chain; (filter, reason) of the first drop, or None."""
    for flt in chain:
        entry = stats[flt.name]
        entry["in"] += 1
        started = time.perf_counter()
        reason = _verdict_reason(flt.filter(doc), flt.name)
        entry["seconds"] += time.perf_counter() - started
        if reason is not None:
            entry["dropped"][reason] += 1
            return flt.name, reason
        entry["kept"] += 1
    return None


def filter_checked_shard(in_path: Path, out_path: Path, cfg: FilterConfig, removed_dir: Path) -> dict:
    """Filter one shard after checking it is a document shard with text (a clear error, by name, if not)."""
    check_document_shard(in_path, required=("text",))
    return filter_shard(in_path, out_path, cfg, removed_dir)


def filter_shard(in_path: Path, out_path: Path, cfg: FilterConfig, removed_dir: Path | None = None) -> dict:
    """Filter one shard; return its report (counts, bytes, per-filter stats)."""
    started = time.perf_counter()
    chain = build_chain(cfg)
    stats = new_filter_stats([f.name for f in chain])
    source = pq.ParquetFile(in_path)
    schema = source.schema_arrow
    if "text" not in schema.names:
        raise ValueError(f"{in_path}: a document shard needs a `text` column, it has {schema.names}")
    removed = _RemovedWriters(removed_dir if cfg.write_removed else None, out_path.name, schema)
    removed.clear_stale([f.name for f in chain])
    totals = Counter()
    writer = ShardWriter(out_path, schema)
    try:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                text = row.get("text") or ""
                totals["documents_in"] += 1
                totals["bytes_in"] += len(text.encode("utf-8"))
                doc = Doc(text=text, url=row.get("url") or "", lang=row.get("lang") or "", id=row.get("id") or "")
                dropped = apply_chain(chain, doc, stats)
                if dropped:
                    filter_name, reason = dropped
                    removed.write(filter_name, row, reason)
                    continue
                row["text"] = doc.text  # C4 line cleaning may have rewritten it
                totals["documents_kept"] += 1
                totals["bytes_kept"] += len(doc.text.encode("utf-8"))
                writer.write(row)
        writer.commit()
        removed.commit()
    except BaseException:
        writer.abort()
        removed.abort()
        raise
    return shard_report(in_path, out_path, totals, stats, time.perf_counter() - started)


def shard_report(in_path: Path, out_path: Path, totals: Counter, stats: dict, seconds: float) -> dict:
    dropped = Counter()
    for entry in stats.values():
        dropped.update(entry["dropped"])
    return {
        "input": str(in_path),
        "shard": str(out_path),
        "documents_in": totals["documents_in"],
        "documents_kept": totals["documents_kept"],
        "bytes_in": totals["bytes_in"],
        "bytes_kept": totals["bytes_kept"],
        "dropped": dict(sorted(dropped.items())),
        "filters": {name: {**entry, "dropped": dict(sorted(entry["dropped"].items())),
                           "seconds": round(entry["seconds"], 4)} for name, entry in stats.items()},
        "seconds": round(seconds, 3),
    }
