"""Stage 2, one task per (slot, partition): equal keys across all shards become edges.

The task memory-maps every shard's key file and reads only its own section,
so it holds about 1 / (slots * partitions) of the dataset's key records. Documents
sharing a key form a group; a group of k documents yields a star of k - 1 edges
(each member to the group's smallest document), not k^2 pairs. With a
similarity threshold, a fuzzy edge is kept only if the two signatures agree on
at least that fraction of values (the estimated Jaccard similarity).

A document is referred to by ``ref = shard_index << 32 | row`` (uint64), where
shard_index is its shard's position in the sorted list of input shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrain.config import DedupConfig
from tasks.dedup.layout import FUZZY, Layout, Slot, key_slots, read_npy_picks, read_npy_rows, save_npy
from tasks.dedup.minhash import estimated_jaccard

EDGE_RECORD = np.dtype([("a", "<u8"), ("b", "<u8")])
ROW_BITS = np.uint64(32)
ROW_MASK = np.uint64(0xFFFFFFFF)


def make_refs(shard_index, rows: np.ndarray) -> np.ndarray:
    """``shard_index << 32 | row``: one uint64 per document, ordered like (shard, row)."""
    return (np.asarray(shard_index, dtype=np.uint64) << ROW_BITS) | rows.astype(np.uint64)


def split_refs(refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard index, row) of each ref."""
    return (refs >> ROW_BITS).astype(np.int64), (refs & ROW_MASK).astype(np.int64)


def star_edges(keys: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every group of equal keys, an edge from each member to the group's smallest ref."""
    order = np.lexsort((refs, keys))
    keys, refs = keys[order], refs[order]
    first = np.concatenate(([True], keys[1:] != keys[:-1]))[: keys.size]
    center = refs[first][np.cumsum(first) - 1]
    return refs[~first], center[~first]


def read_section(layout: Layout, shards: list[str], section: int, n_sections: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, refs) of one (slot, partition) section, from every shard's key file."""
    keys, refs = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
    for shard_index, shard in enumerate(shards):
        bounds = read_npy_rows(layout.shard_file(shard, "index"))
        if bounds.size != n_sections + 1:
            raise ValueError(f"{shard}: key index has {bounds.size - 1} sections, expected {n_sections} "
                             "(stage-1 files written with another config?)")
        records = read_npy_rows(layout.shard_file(shard, "keys"), int(bounds[section]), int(bounds[section + 1]))
        keys.append(records["key"])
        refs.append(make_refs(shard_index, records["row"]))
    return np.concatenate(keys), np.concatenate(refs)


def gather_rows(layout: Layout, shards: list[str], refs: np.ndarray, what: str) -> np.ndarray:
    """Rows ``refs`` of every shard's stage-1 array ``what`` (memory-mapped; only those rows are read)."""
    shard_of, row_of = split_refs(refs)
    out = None
    for shard_index in np.unique(shard_of):
        pick = shard_of == shard_index
        rows = read_npy_picks(layout.shard_file(shards[shard_index], what), row_of[pick])
        if out is None:
            out = np.empty((refs.size, *rows.shape[1:]), dtype=rows.dtype)
        out[pick] = rows
    return out


def verify(layout: Layout, shards: list[str], a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Which edges have an estimated Jaccard similarity of at least ``threshold``."""
    if a.size == 0:
        return np.zeros(0, dtype=bool)
    nodes, inverse = np.unique(np.concatenate((a, b)), return_inverse=True)
    sigs = gather_rows(layout, shards, nodes, "sigs")
    return estimated_jaccard(sigs[inverse[: a.size]], sigs[inverse[a.size :]]) >= threshold


def find_edges(layout: Layout, shards: list[str], slot_index: int, slot: Slot, part: int, config: DedupConfig) -> dict:
    """Write the edges of bucket (slot, part) to ``layout.edges(slot, part)``; return counts."""
    partitions = config.hash_partitions
    n_sections = len(key_slots(config)) * partitions
    keys, refs = read_section(layout, shards, slot_index * partitions + part, n_sections)
    a, b = star_edges(keys, refs)
    candidates = int(a.size)
    if slot.kind == FUZZY and config.threshold is not None:
        keep = verify(layout, shards, a, b, config.threshold)
        a, b = a[keep], b[keep]
    edges = np.empty(a.size, dtype=EDGE_RECORD)
    edges["a"], edges["b"] = a, b
    save_npy(layout.edges(slot, part), edges)
    return {"slot": slot.name, "part": part, "documents": int(keys.size), "candidates": candidates,
            "edges": int(a.size)}


def read_edges(path: Path) -> tuple[np.ndarray, np.ndarray]:
    edges = np.load(path)
    return edges["a"], edges["b"]
