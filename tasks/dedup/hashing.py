"""Stage 1, one task per shard: every document's grouping keys, written bucketed.

Reads the shard's ``text`` (and ``url``) columns in batches of at most
MAX_BATCH_CHARS characters, computes per document the exact key, the URL key
and the MinHash band keys, and writes

* ``<shard>.keys.npy``: records (key uint64, row uint32) sorted by
  (slot, partition, key, row), where partition = key mod ``hash_partitions``;
* ``<shard>.index.npy``: where each (slot, partition) section starts
  (``slots * partitions + 1`` offsets), so a stage-2 task memory-maps the file
  and reads only its own section;
* ``<shard>.words.npy``: normalized word count per row (for the keep rule);
* ``<shard>.sigs.npy``: the signatures, only when a similarity threshold is set;
* ``<shard>.ids.npy``, ``<shard>.idindex.npy``: hashes of the ids, for the check that
  they are unique (``tasks.dedup.ids``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pretrain.config import DedupConfig
from tasks.dedup.ids import write_id_hashes
from tasks.dedup.keys import exact_keys, url_keys
from tasks.dedup.layout import EXACT, FUZZY, URL, Layout, Slot, key_slots, save_npy
from tasks.dedup.minhash import band_keys, signatures
from tasks.dedup.text import shingle_hashes, word_hashes

MAX_BATCH_CHARS = 2_000_000  # bounds the numpy temporaries of one batch (about 100 bytes a character)
READ_ROWS = 1024
KEY_RECORD = np.dtype([("key", "<u8"), ("row", "<u4")])


def document_keys(texts: list[str], urls: list[str | None], config: DedupConfig) -> dict[str, np.ndarray]:
    """Per-document arrays of one batch: words, and exact / url (+ url_present) / bands / sigs as configured."""
    hashes, offsets = word_hashes(texts)
    out = {"words": np.diff(offsets).astype(np.uint32)}
    if config.exact:
        out["exact"] = exact_keys(hashes, offsets)
    if config.url:
        out["url"], out["url_present"] = url_keys(urls)
    if config.fuzzy:
        shingles, shingle_offsets = shingle_hashes(hashes, offsets, config.ngram_words)
        sig = signatures(shingles, shingle_offsets, config.bands * config.rows_per_band, config.seed)
        out["bands"] = band_keys(sig, config.bands, config.rows_per_band)
        if config.threshold is not None:
            out["sigs"] = sig
    return out


def text_batches(path: Path, max_chars: int = MAX_BATCH_CHARS) -> Iterator[tuple[list[str], list[str | None]]]:
    """(texts, urls) of consecutive rows, each batch under ``max_chars`` (or a single row)."""
    parquet = pq.ParquetFile(path)
    if "text" not in parquet.schema_arrow.names or "id" not in parquet.schema_arrow.names:
        raise ValueError(f"{path}: a shard needs `id` and `text` columns, it has {parquet.schema_arrow.names}")
    has_url = "url" in parquet.schema_arrow.names
    for batch in parquet.iter_batches(batch_size=READ_ROWS, columns=["text", "url"] if has_url else ["text"]):
        texts = [text or "" for text in batch.column("text").to_pylist()]
        urls = batch.column("url").to_pylist() if has_url else [None] * len(texts)
        start, chars = 0, 0
        for i, text in enumerate(texts):
            if chars and chars + len(text) > max_chars:
                yield texts[start:i], urls[start:i]
                start, chars = i, 0
            chars += len(text)
        if start < len(texts):
            yield texts[start:], urls[start:]


def slot_keys(keys: dict[str, np.ndarray], slot: Slot) -> tuple[np.ndarray, np.ndarray]:
    """(keys, rows) of one slot; documents without a URL have no URL key."""
    if slot.kind == FUZZY:
        column = keys["bands"][:, slot.band]
        return column, np.arange(column.size, dtype=np.uint32)
    if slot.kind == EXACT:
        return keys["exact"], np.arange(keys["exact"].size, dtype=np.uint32)
    assert slot.kind == URL
    rows = np.flatnonzero(keys["url_present"]).astype(np.uint32)
    return keys["url"][rows], rows


def bucketed_records(keys: dict[str, np.ndarray], slots: list[Slot], partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Key records sorted by (slot, partition, key, row) and the offsets of every section."""
    columns = [slot_keys(keys, slot) for slot in slots]
    empty = [(np.zeros(0, np.uint64), np.zeros(0, np.uint32))]
    slot_ids = np.concatenate([np.full(k.size, s, dtype=np.int64) for s, (k, _) in enumerate(columns + empty)])
    key = np.concatenate([k for k, _ in columns + empty]).astype(np.uint64)
    row = np.concatenate([r for _, r in columns + empty]).astype(np.uint32)
    section = slot_ids * partitions + (key % np.uint64(partitions)).astype(np.int64)
    order = np.lexsort((row, key, section))
    records = np.empty(key.size, dtype=KEY_RECORD)
    records["key"], records["row"] = key[order], row[order]
    bounds = np.searchsorted(section[order], np.arange(len(slots) * partitions + 1), side="left")
    return records, bounds.astype(np.int64)


def hash_shard(shard_path: Path, shard: str, layout: Layout, config: DedupConfig) -> dict:
    """Compute and write the stage-1 files of one shard; returns a small report."""
    started = time.perf_counter()
    parts = [document_keys([], [], config)]  # gives empty shards the right shapes
    parts += [document_keys(texts, urls, config) for texts, urls in text_batches(shard_path)]
    keys = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    records, bounds = bucketed_records(keys, key_slots(config), config.hash_partitions)
    if "sigs" in keys:
        save_npy(layout.shard_file(shard, "sigs"), keys["sigs"])
    save_npy(layout.shard_file(shard, "words"), keys["words"])
    save_npy(layout.shard_file(shard, "index"), bounds)
    save_npy(layout.shard_file(shard, "keys"), records)
    write_id_hashes(shard_path, shard, layout, config.hash_partitions)
    return {"shard": shard, "documents": int(keys["words"].size), "seconds": round(time.perf_counter() - started, 3)}


def stage1_outputs(layout: Layout, shard: str, config: DedupConfig) -> list[Path]:
    names = ["keys", "index", "words", "ids", "idindex"] + (["sigs"] if config.fuzzy and config.threshold is not None else [])
    return [layout.shard_file(shard, name) for name in names]
