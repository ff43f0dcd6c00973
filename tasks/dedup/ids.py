"""Document ids must be unique: ``dup_cluster`` names a cluster by its kept document's id.

Stage 1 writes, per shard, a 64-bit hash of every document's ``id`` with its row,
sorted by (partition, hash) like the key files (``<shard>.ids.npy`` and the section
offsets ``<shard>.idindex.npy``; partition = hash mod ``hash_partitions``). The check
then reads one partition of every shard at a time, so it holds N / P records of
12 B (about 750 MB for N = 1e9, P = 16). Equal hashes are confirmed on the id
strings themselves (64-bit hashes of a billion ids collide with a chance of a few
per cent); a null id is a value like any other, so two null ids are duplicates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tasks.dedup.buckets import make_refs, split_refs
from tasks.dedup.clusters import read_ids
from tasks.dedup.keys import hash64
from tasks.dedup.layout import Layout, read_npy_rows, save_npy

ID_RECORD = np.dtype([("hash", "<u8"), ("row", "<u4")])
NULL_ID = b"\x00null id"  # hashed for a missing id: no string id encodes to it
EXAMPLES = 3


class DuplicateIds(ValueError):
    """Two or more input documents share an ``id``."""


def id_hashes(ids: list[str | None]) -> np.ndarray:
    return np.fromiter((hash64(NULL_ID if i is None else i.encode("utf-8", "surrogatepass")) for i in ids),
                       dtype=np.uint64, count=len(ids))


def write_id_hashes(shard_path: Path, shard: str, layout: Layout, partitions: int) -> None:
    """Stage 1: the shard's id hashes and rows, sorted by (partition, hash, row), with section offsets."""
    ids = pq.read_table(shard_path, columns=["id"]).column("id").to_pylist()
    hashes = id_hashes(ids)
    part = (hashes % np.uint64(partitions)).astype(np.int64)
    order = np.lexsort((hashes, part))
    records = np.empty(hashes.size, dtype=ID_RECORD)
    records["hash"], records["row"] = hashes[order], order.astype(np.uint32)
    bounds = np.searchsorted(part[order], np.arange(partitions + 1), side="left").astype(np.int64)
    save_npy(layout.shard_file(shard, "idindex"), bounds)
    save_npy(layout.shard_file(shard, "ids"), records)


def _partition(layout: Layout, shards: list[str], part: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, refs) of one partition, from every shard."""
    hashes, refs = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
    for shard_index, shard in enumerate(shards):
        bounds = read_npy_rows(layout.shard_file(shard, "idindex"))
        records = read_npy_rows(layout.shard_file(shard, "ids"), int(bounds[part]), int(bounds[part + 1]))
        hashes.append(records["hash"])
        refs.append(make_refs(shard_index, records["row"]))
    return np.concatenate(hashes), np.concatenate(refs)


def _repeated(hashes: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Refs of the documents whose hash occurs more than once."""
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    same_as_next = sorted_hashes[1:] == sorted_hashes[:-1]
    repeated = np.zeros(hashes.size, dtype=bool)
    repeated[1:] |= same_as_next
    repeated[:-1] |= same_as_next
    return refs[order[repeated]]


def duplicate_ids(layout: Layout, shards: list[str], inputs: list[Path], partitions: int) -> dict:
    """``{id: [(shard, row), ...]}`` of every id held by more than one document."""
    refs = np.sort(np.concatenate([_repeated(*_partition(layout, shards, part)) for part in range(partitions)]))
    found: dict = {}
    shard_of, row_of = split_refs(refs)
    for doc_id, shard_index, row in zip(read_ids(inputs, refs).to_pylist(), shard_of, row_of):
        found.setdefault(doc_id, []).append((shards[shard_index], int(row)))
    return {doc_id: places for doc_id, places in found.items() if len(places) > 1}


def check_unique_ids(layout: Layout, shards: list[str], inputs: list[Path], partitions: int) -> None:
    """Raise DuplicateIds naming the shards and example ids when an id repeats."""
    duplicates = duplicate_ids(layout, shards, inputs, partitions)
    if not duplicates:
        return
    examples = sorted(duplicates.items(), key=lambda item: item[1])[:EXAMPLES]
    described = "; ".join(f"id {doc_id!r} in " + ", ".join(f"{shard} row {row}" for shard, row in places)
                          for doc_id, places in examples)
    documents = sum(len(places) for places in duplicates.values())
    shards_with = sorted({shard for places in duplicates.values() for shard, _ in places})
    raise DuplicateIds(
        f"{len(duplicates)} document id(s) occur more than once ({documents} documents, in shard(s) "
        f"{', '.join(shards_with)}), e.g. {described}. Dedup names each cluster after its kept document's id, "
        "so ids must be unique: give every document its own id")
