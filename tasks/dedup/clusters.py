"""Stage 3: clusters from all edges, one kept document per cluster.

Clusters are the connected components of the graph whose edges are every
exact, URL and (verified) fuzzy duplicate relation found in stage 2. With
``cluster_partitions`` above 1 the stage runs as rounds of that many Ray tasks, each
holding its part of the edges or of the clustered documents (``tasks.dedup.distributed``;
the components by star rounds, ``tasks.dedup.components``); with 1, or without Ray, in
this one task by the union-find below. Both give the same tables and summary.

Keep rule: in each cluster keep the document with the most normalized words
(the complete version wins over truncated copies, and a page over its excerpt);
ties go to the earliest document in dataset order (sorted shard name, then row).

Reason: every member's ``reason`` is the strongest relation it has to another
member, ``exact`` > ``url`` > ``fuzzy``; a dropped member is counted as
``exact_duplicate``, ``url_duplicate`` or ``fuzzy_duplicate`` accordingly.

Cluster id (``dup_cluster``): the ``id`` of the cluster's kept document, a
string, so it is meaningful on its own and stable across reruns; documents
without duplicates have none (null).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pretrain.config import DedupConfig
from pretrain.provenance import atomic_write_text
from tasks.dedup.buckets import gather_rows, make_refs, read_edges, split_refs
from tasks.dedup.components import distributed_components
from tasks.dedup.distributed import LARGEST, build_clusters_over_parts
from tasks.dedup.layout import KIND_NAMES, REASONS, Layout, key_slots
from tasks.dedup.rules import (  # noqa: F401  (CLUSTER_SCHEMA, unique_pairs: this module's names too)
    CLUSTER_SCHEMA, _starts, choose_kept, read_ids, strongest_relation, unique_pairs, write_table_atomic,
)


def connected_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over edges (a[i], b[i]), vectorized.

    Returns ``(nodes, root)``: the sorted distinct endpoints and, per node, the
    index of its component's smallest node. Each round hooks the larger of two
    different roots under the smaller, then compresses paths completely.
    """
    nodes, inverse = np.unique(np.concatenate((a, b)), return_inverse=True)
    ends_a, ends_b = inverse[: a.size], inverse[a.size :]
    parent = np.arange(nodes.size)
    while True:
        root_a, root_b = parent[ends_a], parent[ends_b]
        cross = root_a != root_b
        if not cross.any():
            return nodes, parent
        low, high = np.minimum(root_a[cross], root_b[cross]), np.maximum(root_a[cross], root_b[cross])
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def find_components(a: np.ndarray, b: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(nodes, root, stats)`` as ``connected_components`` gives them (root: the index
    of the component's smallest node; a node seen only in a self loop is its own component), computed by
    star rounds over ``partitions`` Ray tasks; by that union-find in this process when partitions is 1
    or Ray is not running here. ``stats``: tasks, rounds, the most edges one task read."""
    import ray

    if partitions == 1 or a.size == 0 or not ray.is_initialized():
        nodes, root = connected_components(a, b)
        return nodes, root, {"cluster_tasks": 1, "cluster_rounds": 0, "largest_task_edges": 2 * int(a.size)}
    found = distributed_components(a, b, partitions)
    nodes = np.unique(np.concatenate((a, b))).astype(np.uint64)
    smallest = nodes.copy()  # self-loop-only nodes keep themselves
    smallest[np.searchsorted(nodes, found.nodes)] = found.root
    stats = {"cluster_tasks": found.tasks, "cluster_rounds": found.rounds,
             "largest_task_edges": max(found.largest_task_edges)}
    return nodes, np.searchsorted(nodes, smallest), stats


def load_edges(layout: Layout, config: DedupConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stage-2 edge, deduplicated slot by slot so memory follows distinct pairs."""
    a, b, kind = np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8)
    for slot in key_slots(config):
        parts = [read_edges(layout.edges(slot, part)) for part in range(config.hash_partitions)]
        new_a = np.concatenate([a] + [p[0] for p in parts])
        new_b = np.concatenate([b] + [p[1] for p in parts])
        new_kind = np.concatenate([kind, np.full(new_a.size - a.size, slot.kind, np.uint8)])
        a, b, kind = unique_pairs(new_a, new_b, new_kind)
    return a, b, kind


@dataclass
class Clusters:
    """Per clustered document (sorted by ref): its cluster, whether it is kept, its strongest relation."""

    refs: np.ndarray  # uint64 shard_index << 32 | row
    cluster: np.ndarray  # cluster number per document
    kept: np.ndarray  # bool
    relation: np.ndarray  # EXACT, URL or FUZZY
    n_words: np.ndarray
    sizes: np.ndarray  # per cluster
    kept_member: np.ndarray  # per cluster: index of its kept document

    stats: dict  # how the components were found: tasks, rounds, the most edges one task read

    @classmethod
    def from_edges(cls, a: np.ndarray, b: np.ndarray, kind: np.ndarray, n_words_of, partitions: int = 1) -> Clusters:
        refs, root, stats = find_components(a, b, partitions)
        relation = strongest_relation(refs.size, np.searchsorted(refs, a), np.searchsorted(refs, b), kind)
        n_words = n_words_of(refs)
        kept = choose_kept(root, n_words, refs)
        roots, cluster = np.unique(root, return_inverse=True)
        kept_member = np.empty(roots.size, dtype=np.int64)
        kept_member[cluster[kept]] = np.flatnonzero(kept)
        sizes = np.bincount(cluster, minlength=roots.size)
        return cls(refs, cluster, kept, relation, n_words, sizes, kept_member, stats)

    def in_shard(self, shard_index: int) -> np.ndarray:
        bounds = make_refs(np.array([shard_index, shard_index + 1]), np.zeros(2, np.uint64))
        return np.arange(*np.searchsorted(self.refs, bounds))


def build_clusters(layout: Layout, shards: list[str], inputs: list[Path], config: DedupConfig) -> dict:
    """Write one cluster table per shard and the cluster summary; return the summary. Over
    ``cluster_partitions`` parts of Ray tasks (``tasks.dedup.distributed``) when that is above 1 and Ray
    runs here, else in this one task; both write the same tables and summary."""
    started = time.perf_counter()
    import ray

    if config.cluster_partitions > 1 and ray.is_initialized():
        summary, _ = build_clusters_over_parts(layout, shards, inputs, config)
    else:
        summary = build_clusters_here(layout, shards, inputs, config)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_text(layout.cluster_summary, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def build_clusters_here(layout: Layout, shards: list[str], inputs: list[Path], config: DedupConfig) -> dict:
    """Stage 3 in this task: every edge read here (union-find)."""
    a, b, kind = load_edges(layout, config)

    def n_words_of(refs: np.ndarray) -> np.ndarray:
        return gather_rows(layout, shards, refs, "words") if refs.size else np.zeros(0, np.uint32)

    clusters = Clusters.from_edges(a, b, kind, n_words_of, 1)
    cluster_ids = read_ids(inputs, clusters.refs[clusters.kept_member])  # a cluster is named after its kept doc
    for shard_index, shard in enumerate(shards):
        table = cluster_table(clusters, shard_index, shard, inputs, cluster_ids)
        write_table_atomic(layout.cluster_table(shard), table)
    summary = summarize(clusters, shards, cluster_ids)
    summary.update(edges=int(a.size), **clusters.stats)
    return summary


def cluster_table(clusters: Clusters, shard_index: int, shard: str, inputs: list[Path],
                  cluster_ids: pa.Array) -> pa.Table:
    """The members of ``shard``: one row per document of that shard that has duplicates."""
    members = clusters.in_shard(shard_index)
    return pa.table({
        "id": read_ids(inputs, clusters.refs[members]),
        "shard": pa.array([shard] * members.size, pa.string()),
        "row": split_refs(clusters.refs[members])[1],
        "dup_cluster": cluster_ids.take(pa.array(clusters.cluster[members])),
        "kept": clusters.kept[members],
        "reason": pa.array([KIND_NAMES[k] for k in clusters.relation[members]], pa.string()),
        "n_words": clusters.n_words[members].astype(np.int64),
        "cluster_size": clusters.sizes[clusters.cluster[members]].astype(np.int64),
    }, schema=CLUSTER_SCHEMA)


def summarize(clusters: Clusters, shards: list[str], cluster_ids: pa.Array) -> dict:
    dropped = np.bincount(clusters.relation[~clusters.kept], minlength=len(REASONS))
    shard_of, row_of = split_refs(clusters.refs)
    largest = np.lexsort((np.arange(clusters.sizes.size), -clusters.sizes))[:LARGEST]

    def describe(c: int) -> dict:
        kept, members = clusters.kept_member[c], clusters.cluster == c
        return {
            "dup_cluster": cluster_ids[c].as_py(),
            "size": int(clusters.sizes[c]),
            "kept_shard": shards[shard_of[kept]],
            "kept_row": int(row_of[kept]),
            "kept_words": int(clusters.n_words[kept]),
            **{f"{name}_members": int(np.sum(members & (clusters.relation == k))) for k, name in enumerate(KIND_NAMES)},
        }

    return {
        "clusters": int(clusters.sizes.size),
        "clustered_documents": int(clusters.refs.size),
        "dropped": {reason: int(n) for reason, n in zip(REASONS, dropped)},
        "largest": [describe(int(c)) for c in largest],
    }
