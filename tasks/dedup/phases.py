"""The four dedup phases as the shard runner calls them: plain arguments in, a small report out.

Each runs on a Ray worker (``flows/dedup.py`` makes them ``ShardJob``s), so it takes
the output folder as a path and rebuilds the ``Layout`` there; the work itself is in
``hashing``, ``buckets``, ``clusters`` and ``apply``.
"""

from __future__ import annotations

from pathlib import Path

from pretrain.config import DedupConfig
from tasks.dedup.apply import write_deduped_shard
from tasks.dedup.buckets import find_edges
from tasks.dedup.clusters import build_clusters
from tasks.dedup.hashing import hash_shard
from tasks.dedup.layout import Layout, key_slots
from tasks.shards import check_document_shard


def hash_checked_shard(shard_path: str, shard: str, output_dir: str, config: DedupConfig) -> dict:
    """Phase 1, one shard: refuse a shard without string ``id`` and ``text`` by name, else hash it."""
    check_document_shard(Path(shard_path), required=("id", "text"))
    return hash_shard(Path(shard_path), shard, Layout(Path(output_dir)), config)


def bucket_edges(shards: list[str], slot_index: int, part: int, output_dir: str, config: DedupConfig) -> dict:
    """Phase 2, one (slot, partition): its duplicate edges across every shard."""
    slot = key_slots(config)[slot_index]
    return find_edges(Layout(Path(output_dir)), shards, slot_index, slot, part, config)


def cluster_all(shards: list[str], inputs: list[str], output_dir: str, config: DedupConfig) -> dict:
    """Phase 3, once: clusters, the kept document of each, a cluster table per shard."""
    return build_clusters(Layout(Path(output_dir)), shards, [Path(p) for p in inputs], config)


def write_shard(shard_path: str, shard: str, output_dir: str) -> dict:
    """Phase 4, one shard: its kept rows with their ``dup_cluster``."""
    layout = Layout(Path(output_dir))
    return write_deduped_shard(Path(shard_path), layout.cluster_table(shard), layout.output_shard(shard))
