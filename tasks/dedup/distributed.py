"""Stage 3 over parts: clusters and kept documents from the edge files, with no task holding them all.

With ``cluster_partitions`` P > 1 and Ray running, ``clusters.build_clusters`` hands the stage to
rounds of P Ray tasks. Each holds about 1/P of the edges or of the clustered documents (a node's
part is ``components.part_of``, a hash of the node):

1. read, one per group of edge files (file i of stage 2 in group i mod P): its edges, repeats
   dropped, routed by their smaller end;
2. pairs, one per part: the distinct pairs of the part, a pair found by several slots keeping its
   strongest kind (``rules.unique_pairs``); out: both directions of each pair, routed by key, for
   the star rounds, and each end's strongest kind, routed by node;
3. the star rounds (``components.star_rounds``) until the parts form a star forest;
4. members, one per part: each node of the part with its root (its star's centre; a centre is its
   own root) and its strongest relation, routed by root;
5. choose, one per part: the members of every cluster whose root is in the part: their word counts
   (stage 1's files, only those rows), the kept document of each cluster (``clusters.rules.choose_kept``)
   and its id, the sizes; routed by shard (shard index mod P), with the part's counts and its
   largest clusters;
6. write, one per part: the cluster table of every shard whose index mod P is the part.

What comes out (the tables and ``clusters.json``, timings and task counts aside) equals the one-task
path's byte for byte (``tests/test_dedup_components.py``); the caller holds only the counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from pretrain.config import DedupConfig
from tasks.dedup.buckets import gather_rows, make_refs, read_edges, split_refs
from tasks.dedup.components import both_directions, leaf_roots, part_of, star_rounds
from tasks.dedup.layout import KIND_NAMES, REASONS, Layout, key_slots
from tasks.dedup.rules import (
    CLUSTER_SCHEMA, choose_kept, read_ids, strongest_relation, unique_pairs, write_table_atomic,
)

LARGEST = 20  # clusters.json lists this many of the largest clusters
NO_KIND = 255


def split_by(parts: np.ndarray, partitions: int) -> list[np.ndarray]:
    """Per part, the positions whose ``parts`` value is that part (in their order)."""
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(partitions + 1))
    return [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def _concat(pieces, column: int, dtype) -> np.ndarray:
    arrays = [piece[column] for piece in pieces]
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def read_edge_files(partitions: int, files: list[tuple[int, str]]) -> list:
    """Task 1: the edges of some stage-2 files as (low, high, kind), repeats dropped, routed by low; then
    ``{"pairs": ...}``."""
    lows, highs, kinds = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)], [np.zeros(0, np.uint8)]
    for kind, path in files:
        a, b = read_edges(Path(path))
        lows.append(np.minimum(a, b))
        highs.append(np.maximum(a, b))
        kinds.append(np.full(a.size, kind, np.uint8))
    low, high, kind = unique_pairs(np.concatenate(lows), np.concatenate(highs), np.concatenate(kinds))
    routed = [(low[i], high[i], kind[i]) for i in split_by(part_of(low, partitions), partitions)]
    return [*routed, {"pairs": int(low.size)}]


def distinct_pairs(partitions: int, *pieces: tuple) -> list:
    """Task 2, one part: its distinct pairs. Returns the star rounds' pieces (both directions, one per part),
    then per part the (node, strongest kind) of the ends routed there, then ``{"edges": distinct pairs}``."""
    low, high, kind = unique_pairs(_concat(pieces, 0, np.uint64), _concat(pieces, 1, np.uint64),
                                   _concat(pieces, 2, np.uint8))
    loop = low == high  # a self loop links nothing, but its node is clustered, as union-find counts it
    stars = both_directions(high[~loop], low[~loop], partitions)
    nodes, inverse = np.unique(np.concatenate((low, high)), return_inverse=True)
    strength = strongest_relation(nodes.size, inverse[: low.size], inverse[low.size :], kind)
    kinds = [(nodes[i], strength[i]) for i in split_by(part_of(nodes, partitions), partitions)]
    return [*stars, *kinds, {"edges": int(low.size), "pairs": int(low.size)}]


def part_members(partitions: int, n_star: int, *pieces: tuple) -> list:
    """Task 4, one part: (node, root, relation) of each of its nodes, routed by the part of the root; then
    ``{"nodes": ...}``."""
    leaves, centres = leaf_roots(list(pieces[:n_star]))
    kinds = pieces[n_star:]
    nodes, strength = _concat(kinds, 0, np.uint64), _concat(kinds, 1, np.uint8)
    order = np.lexsort((strength, nodes))  # a node seen by several pair tasks keeps its strongest kind
    nodes, strength = nodes[order], strength[order]
    first = np.r_[True, nodes[1:] != nodes[:-1]] if nodes.size else np.zeros(0, bool)
    nodes, strength = nodes[first], strength[first]
    root = nodes.copy()
    root[np.searchsorted(nodes, leaves)] = centres
    routed = [(nodes[i], root[i], strength[i]) for i in split_by(part_of(root, partitions), partitions)]
    return [*routed, {"nodes": int(nodes.size)}]


def choose_part(output_dir: str, shards: list[str], inputs: list[str], partitions: int, *pieces: tuple) -> list:
    """Task 5, one part of the roots: the kept document of each of its clusters. Returns per writer part the
    members of its shards (ref, kept, relation, words, cluster size, cluster id), then the part's summary."""
    refs, root = _concat(pieces, 0, np.uint64), _concat(pieces, 1, np.uint64)
    relation = _concat(pieces, 2, np.uint8)
    layout = Layout(Path(output_dir))
    n_words = gather_rows(layout, shards, refs, "words") if refs.size else np.zeros(0, np.uint32)
    kept = choose_kept(root, n_words, refs)
    roots, cluster = np.unique(root, return_inverse=True)
    kept_member = np.empty(roots.size, dtype=np.int64)
    kept_member[cluster[kept]] = np.flatnonzero(kept)
    sizes = np.bincount(cluster, minlength=roots.size)
    cluster_ids = read_ids([Path(p) for p in inputs], refs[kept_member])  # a cluster is named after its kept doc
    shard_of, row_of = split_refs(refs)
    out = [(refs[i], kept[i], relation[i], n_words[i], sizes[cluster[i]], cluster_ids.take(pa.array(cluster[i])))
           for i in split_by(shard_of % partitions, partitions)]

    def describe(c: int) -> dict:
        k, members = kept_member[c], cluster == c
        return {
            "dup_cluster": cluster_ids[c].as_py(), "size": int(sizes[c]), "kept_shard": shards[shard_of[k]],
            "kept_row": int(row_of[k]), "kept_words": int(n_words[k]),
            **{f"{name}_members": int(np.sum(members & (relation == kind))) for kind, name in enumerate(KIND_NAMES)},
            "root": int(roots[c]),  # the order among equal sizes, as the one-task path numbers clusters
        }

    dropped = np.bincount(relation[~kept], minlength=len(REASONS))
    summary = {"clusters": int(roots.size), "clustered_documents": int(refs.size),
               "dropped": [int(n) for n in dropped[: len(REASONS)]],
               "largest": [describe(int(c)) for c in np.lexsort((roots, -sizes))[:LARGEST]]}
    return [*out, summary]


def write_part(output_dir: str, shards: list[str], inputs: list[str], part: int, partitions: int,
               *pieces: tuple) -> dict:
    """Task 6: the cluster table of every shard whose index mod ``partitions`` is ``part``; returns
    ``{"rows": rows written}``."""
    refs = _concat(pieces, 0, np.uint64)
    order = np.argsort(refs, kind="stable")
    refs = refs[order]
    kept, relation = _concat(pieces, 1, bool)[order], _concat(pieces, 2, np.uint8)[order]
    n_words, size = _concat(pieces, 3, np.int64)[order], _concat(pieces, 4, np.int64)[order]
    ids = (pa.concat_arrays([p[5] for p in pieces]) if pieces else pa.array([], pa.string())).take(pa.array(order))
    layout, paths = Layout(Path(output_dir)), [Path(p) for p in inputs]
    for shard_index in range(part, len(shards), partitions):
        lo, hi = np.searchsorted(refs, make_refs(np.array([shard_index, shard_index + 1]), np.zeros(2, np.uint64)))
        table = pa.table({
            "id": read_ids(paths, refs[lo:hi]),
            "shard": pa.array([shards[shard_index]] * int(hi - lo), pa.string()),
            "row": split_refs(refs[lo:hi])[1],
            "dup_cluster": ids.slice(lo, hi - lo),
            "kept": kept[lo:hi],
            "reason": pa.array([KIND_NAMES[k] for k in relation[lo:hi]], pa.string()),
            "n_words": n_words[lo:hi],
            "cluster_size": size[lo:hi],
        }, schema=CLUSTER_SCHEMA)
        write_table_atomic(layout.cluster_table(shards[shard_index]), table)
    return {"rows": int(refs.size)}


def build_clusters_over_parts(layout: Layout, shards: list[str], inputs: list[Path], config: DedupConfig,
                              wrap: Callable | None = None) -> tuple[dict, dict]:
    """Stage 3 as the six rounds of tasks above. Returns the summary ``build_clusters`` writes (without
    seconds), and per round kind (read, pairs, stars, members, choose, write) its tasks' stats.
    ``wrap(fn)``, when given, replaces each task's function (bench/components.py measures memory so)."""
    import ray

    wrap = wrap or (lambda fn: fn)
    p = config.cluster_partitions
    out, names, paths = str(layout.output_dir), list(shards), [str(path) for path in inputs]
    files = [(slot.kind, str(layout.edges(slot, part))) for slot in key_slots(config)
             for part in range(config.hash_partitions)]
    read = ray.remote(num_returns=p + 1)(wrap(read_edge_files))
    pairs = ray.remote(num_returns=2 * p + 1)(wrap(distinct_pairs))
    members = ray.remote(num_returns=p + 1)(wrap(part_members))
    choose = ray.remote(num_returns=p + 1)(wrap(choose_part))
    write = ray.remote(wrap(write_part))

    read_out = [read.remote(p, files[group::p]) for group in range(p)]
    pair_out = [pairs.remote(p, *[r[part] for r in read_out]) for part in range(p)]
    pair_stats = ray.get([o[-1] for o in pair_out])
    stars = star_rounds([[o[part] for o in pair_out] for part in range(p)], p, wrap=wrap)
    member_out = [members.remote(p, len(stars.pieces[part]), *stars.pieces[part], *[o[p + part] for o in pair_out])
                  for part in range(p)]
    choose_out = [choose.remote(out, names, paths, p, *[m[part] for m in member_out]) for part in range(p)]
    written = [write.remote(out, names, paths, part, p, *[c[part] for c in choose_out]) for part in range(p)]
    parts = ray.get([c[-1] for c in choose_out])
    task_stats = {"read": ray.get([r[-1] for r in read_out]), "pairs": pair_stats,
                  "stars": [s for round_stats in stars.task_stats for s in round_stats],
                  "members": ray.get([m[-1] for m in member_out]), "choose": parts, "write": ray.get(written)}

    largest = sorted((c for part in parts for c in part["largest"]), key=lambda c: (-c["size"], c["root"]))[:LARGEST]
    for c in largest:
        del c["root"]
    star_edges = [max(stats["pairs"] for stats in round_stats) for round_stats in stars.task_stats]
    summary = {
        "clusters": sum(part["clusters"] for part in parts),
        "clustered_documents": sum(part["clustered_documents"] for part in parts),
        "dropped": {reason: sum(part["dropped"][k] for part in parts) for k, reason in enumerate(REASONS)},
        "largest": largest,
        "edges": sum(stats["edges"] for stats in pair_stats),
        "cluster_tasks": 5 * p + stars.tasks,  # read, pairs, members, choose, write + the star rounds'
        "cluster_rounds": stars.rounds,
        "largest_task_edges": max(star_edges),
    }
    return summary, task_stats
