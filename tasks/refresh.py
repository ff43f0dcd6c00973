"""The incremental Common Crawl refresh without Prefect: dataset layout, ledger, lock, plan, commit.

A refresh dataset grows by appending; nothing already committed is rewritten::

    DATASET/
      filtered/<crawl>/<shard>.parquet       the dataset: documents that passed the heuristic filters
      ingest/<crawl>/<shard>.parquet         every extracted document (to re-filter with another config)
      removed/<crawl>/<filter>/<shard>.parquet   dropped documents with their reason
      ledger/<crawl>/<shard>.json            one entry per processed WARC file, written last
      manifest.json                          files and documents per crawl (rebuilt from the ledger)
      runs/<time>-<run>/report.json          what each run did
      .refresh.lock                          held (flock) while a refresh runs
      .work/<run>/                           a run's staging area, removed when it ends

A WARC file counts as processed once its ledger entry exists; the entry is written
atomically after the file's shards are in place, so a run killed half way redoes
at most the files it had not recorded (their shards come out byte for byte the same).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

from pretrain.paths import redact_url
from pretrain.provenance import atomic_write_text, exclusive_lock
from tasks.sources import InputFile

LOCK_NAME = ".refresh.lock"


class RefreshLocked(RuntimeError):
    """Another refresh holds the dataset's lock; the message names it."""


class LedgerConflict(ValueError):
    """Two different WARC paths map to the same shard name."""


@dataclass(frozen=True)
class Layout:
    root: Path

    def filtered(self, crawl: str) -> Path:
        return self.root / "filtered" / crawl

    def ingested(self, crawl: str) -> Path:
        return self.root / "ingest" / crawl

    def removed(self, crawl: str) -> Path:
        return self.root / "removed" / crawl

    def ledger(self, crawl: str) -> Path:
        return self.root / "ledger" / crawl

    @property
    def work(self) -> Path:
        return self.root / ".work"

    @property
    def runs(self) -> Path:
        return self.root / "runs"


def relative_path(uri: str) -> str:
    """The host-independent part of a WARC URL (``crawl-data/...``), so a mirror change reprocesses nothing."""
    marker = uri.find("crawl-data/")
    return uri[marker:] if marker != -1 else redact_url(uri)


def refresh_lock(root: Path, run_id: str) -> ContextManager[None]:
    """The dataset's lock (``DATASET/.refresh.lock``) for the length of one refresh run;
    a second run fails at once with ``RefreshLocked`` naming the holder."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    return exclusive_lock(path, f"cc-refresh run {run_id}", lambda holder: RefreshLocked(
        f"another cc-refresh is running on {root}: {path} is locked by {holder}; this run did nothing "
        "(the lock is released when that run ends)"))


class Ledger:
    """Processed WARC files, one small JSON file per file: ``ledger/<crawl>/<shard>.json``."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def entry_path(self, crawl: str, shard_name: str) -> Path:
        return self.layout.ledger(crawl) / f"{shard_name}.json"

    def is_done(self, crawl: str, item: InputFile) -> bool:
        path = self.entry_path(crawl, item.shard_name)
        if not path.is_file():
            return False
        recorded = json.loads(path.read_text())["path"]
        if recorded != relative_path(item.uri):
            raise LedgerConflict(f"{path} records {recorded!r}, but {relative_path(item.uri)!r} has the same "
                                 "shard name; shard names must be unique within a crawl")
        return True

    def record(self, crawl: str, shard_name: str, entry: dict) -> Path:
        path = self.entry_path(crawl, shard_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, indent=2, sort_keys=True) + "\n")
        return path

    def entries(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.layout.root.glob("ledger/*/*.json"))]


@dataclass(frozen=True)
class Plan:
    crawl: str
    new: list[InputFile]  # to process in this run
    done: list[InputFile]  # already in the ledger
    deferred: list[InputFile]  # new, but over max_files_per_run


def plan_refresh(crawl: str, listing: list[InputFile], ledger: Ledger, max_files: int | None) -> Plan:
    names: dict[str, str] = {}
    for item in listing:
        other = names.setdefault(item.shard_name, item.uri)
        if other != item.uri:
            raise LedgerConflict(f"crawl {crawl}: {other} and {item.uri} have the same shard name {item.shard_name!r}")
    done_flags = [ledger.is_done(crawl, item) for item in listing]
    done = [item for item, flag in zip(listing, done_flags) if flag]
    todo = [item for item, flag in zip(listing, done_flags) if not flag]
    limit = len(todo) if max_files is None else max_files
    return Plan(crawl, todo[:limit], done, todo[limit:])


def move_into_place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)


def commit_file(layout: Layout, crawl: str, shard_name: str, work_ingest: Path, work_filter: Path) -> None:
    """Move one file's shards from the run's staging area into the dataset (same filesystem: atomic renames).

    The filtered shard goes last, so a reader of ``filtered/`` never sees a file
    whose raw shard is missing; the caller writes the ledger entry after this.
    """
    name = f"{shard_name}.parquet"
    move_into_place(work_ingest / name, layout.ingested(crawl) / name)
    for removed in sorted((work_filter / "removed").glob(f"*/{name}")):
        move_into_place(removed, layout.removed(crawl) / removed.parent.name / name)
    move_into_place(work_filter / name, layout.filtered(crawl) / name)


def clear_work(layout: Layout) -> None:
    """Remove staging folders of earlier runs (call with the lock held: no other run is using them)."""
    shutil.rmtree(layout.work, ignore_errors=True)


def manifest(layout: Layout, entries: list[dict]) -> dict:
    crawls: dict[str, dict] = {}
    for entry in entries:
        crawl = crawls.setdefault(entry["crawl"], {"files": 0, "documents_ingested": 0, "documents_kept": 0})
        crawl["files"] += 1
        crawl["documents_ingested"] += entry["documents_ingested"]
        crawl["documents_kept"] += entry["documents_kept"]
    totals = {key: sum(c[key] for c in crawls.values()) for key in ("files", "documents_ingested", "documents_kept")}
    return {"dataset": str(layout.root), **totals, "crawls": dict(sorted(crawls.items()))}
