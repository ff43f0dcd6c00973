"""The rules stage 3 applies on either path (one task, or parts: ``tasks.dedup.distributed``): distinct
pairs, each document's strongest relation, the kept document of a cluster; and the cluster table's
schema, ids and atomic write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.provenance import part_path
from tasks.dedup.buckets import split_refs
from tasks.shards import COMPRESSION

CLUSTER_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("shard", pa.string()),
    ("row", pa.int64()),
    ("dup_cluster", pa.string()),
    ("kept", pa.bool_()),
    ("reason", pa.string()),
    ("n_words", pa.int64()),
    ("cluster_size", pa.int64()),
])


def choose_kept(root: np.ndarray, n_words: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """One True per component: the most words, then the smallest ref."""
    order = np.lexsort((refs, -n_words.astype(np.int64), root))
    first = _starts(root[order])
    kept = np.zeros(root.size, dtype=bool)
    kept[order[first]] = True
    return kept


def strongest_relation(n_nodes: int, ends_a: np.ndarray, ends_b: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Per node, the smallest (strongest) kind among its edges."""
    strength = np.full(n_nodes, 255, dtype=np.uint8)
    np.minimum.at(strength, ends_a, kinds)
    np.minimum.at(strength, ends_b, kinds)
    return strength


def unique_pairs(a: np.ndarray, b: np.ndarray, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges without repeats; a pair found by several slots keeps its strongest kind."""
    low, high = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((kind, high, low))
    low, high, kind = low[order], high[order], kind[order]
    first = _starts(low) | _starts(high)
    return low[first], high[first], kind[first]


def _starts(values: np.ndarray) -> np.ndarray:
    """Where a run of equal values begins in a sorted array (empty for an empty one)."""
    first = np.ones(values.size, dtype=bool)
    first[1:] = values[1:] != values[:-1]
    return first


def read_ids(inputs: list[Path], refs: np.ndarray) -> pa.Array:
    """The ``id`` of each ref, read shard by shard (only the id column)."""
    if refs.size == 0:
        return pa.array([], pa.string())
    shard_of, row_of = split_refs(refs)
    chunks, positions = [], []
    for shard_index in np.unique(shard_of):
        pick = np.flatnonzero(shard_of == shard_index)
        ids = pq.read_table(inputs[shard_index], columns=["id"]).column("id").combine_chunks()
        chunks.append(ids.take(pa.array(row_of[pick])))
        positions.append(pick)
    return pa.concat_arrays(chunks).take(pa.array(np.argsort(np.concatenate(positions), kind="stable")))


def write_table_atomic(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(path)
    pq.write_table(table, tmp, compression=COMPRESSION)
    tmp.replace(path)
