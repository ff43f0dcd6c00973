"""Connected components by star rounds as Ray tasks over edge parts (tasks/dedup/components.py)
against the one-task union-find (tasks/dedup/clusters.connected_components): the same roots
on chains, stars, cliques, random graphs and many small components, for 1, 3 and 8 parts; and
the whole clustering stage over parts (tasks/dedup/distributed.py) against the one-task path on
the same graphs as dedup edge files: byte-equal cluster tables and summary."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tasks.dedup.clusters import connected_components, find_components
from tasks.dedup.components import distributed_components, part_of

RNG = np.random.default_rng(7)


def _clique(size: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(size, 1)
    return i + offset, j + offset


def _graphs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = 3000
    perm = RNG.permutation(n)
    sparse = RNG.integers(0, 6000, (4000, 2))
    starts = RNG.integers(0, 10**12, 1500)
    cliques = [_clique(12, 100 * k) for k in range(20)]
    return {
        "chain in order": (np.arange(n - 1), np.arange(1, n)),
        "chain shuffled": (perm[:-1], perm[1:]),
        "star": (np.full(800, 5000), np.arange(800)),  # the centre is the largest node
        "cliques": (np.concatenate([c[0] for c in cliques]), np.concatenate([c[1] for c in cliques])),
        "random sparse": (sparse[:, 0], sparse[:, 1]),
        "many small, refs-like": (starts, starts + RNG.integers(1, 4, starts.size)),
        "self loops and repeats": (np.array([3, 3, 4, 9, 9, 1]), np.array([3, 4, 3, 9, 1, 9])),
    }


GRAPHS = _graphs()


@pytest.mark.parametrize("partitions", [1, 3, 8])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_star_rounds_give_union_finds_components(name, partitions, ray_session):
    a, b = (np.asarray(x, dtype=np.uint64) for x in GRAPHS[name])
    nodes, root = connected_components(a, b)
    found = distributed_components(a, b, partitions)
    keep = a != b
    expected_nodes = np.unique(np.concatenate((a[keep], b[keep])))
    assert np.array_equal(found.nodes, expected_nodes)
    known = np.isin(nodes, expected_nodes)  # union-find also lists a node seen only in a self loop
    assert np.array_equal(found.root, nodes[root][known])
    assert found.tasks == 3 * partitions * found.rounds and found.rounds >= 1


def test_parts_spread_nodes_evenly():
    counts = np.bincount(part_of(np.arange(100_000, dtype=np.uint64), 8), minlength=8)
    assert counts.min() > 0.95 * 100_000 / 8 and counts.max() < 1.05 * 100_000 / 8


def test_a_task_holds_its_part_of_the_edges_and_at_most_the_largest_component(ray_session):
    """Random sparse graph, 8 parts: in the first round no task read more than a fifth of the directed edges
    (an even split is an eighth); later, a star's centre reads its whole component, never more than its
    share plus twice the largest component. One part reads them all."""
    a, b = (np.asarray(x, dtype=np.uint64) for x in GRAPHS["random sparse"])
    directed = 2 * int((a != b).sum())
    nodes, root = connected_components(a, b)
    largest_component = int(np.bincount(root).max())
    spread, whole = distributed_components(a, b, 8), distributed_components(a, b, 1)
    assert spread.largest_task_edges[0] <= directed / 5, (spread.largest_task_edges, directed)
    assert max(spread.largest_task_edges) <= directed / 5 + 2 * largest_component, spread.largest_task_edges
    assert whole.largest_task_edges[0] >= directed * 0.9  # repeats dropped
    assert np.array_equal(spread.root, whole.root)


def test_the_clustering_stage_finds_union_finds_nodes_and_roots(ray_session):
    """What stage 3 calls: the same (nodes, root index) as union-find, a node only in a self loop included,
    with the task count it reports as cluster_tasks."""
    a = np.array([10, 11, 12, 40, 40, 7], dtype=np.uint64)
    b = np.array([11, 12, 10, 41, 40, 7], dtype=np.uint64)  # 40-40 beside 40-41; 7 only in a self loop
    nodes, root = connected_components(a, b)
    found_nodes, found_root, stats = find_components(a, b, 4)
    assert np.array_equal(found_nodes, nodes) and np.array_equal(found_root, root)
    assert nodes[root].tolist() == [7, 10, 10, 10, 40, 40]
    assert stats["cluster_tasks"] == 3 * 4 * stats["cluster_rounds"] and stats["cluster_rounds"] >= 1
    assert find_components(a, b, 1)[2] == {"cluster_tasks": 1, "cluster_rounds": 0, "largest_task_edges": 12}


# --- the whole stage 3 over parts (tasks/dedup/distributed.py) against the one-task path ---------------

SHARDS, ROWS = 4, 2000


def _stage2_layout(folder, name: str, config) -> tuple:
    """A dedup output folder as stages 1-2 leave it, for graph ``name``: input shards with ids, word counts (1-39:
    many ties) per row, and its edges spread over every (slot, partition) file, a quarter of them found twice (by
    another slot of another kind), as bands and the exact key find the same pair."""
    from tasks.dedup.buckets import make_refs
    from tasks.dedup.planted import write_stage2_folder

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    a, b = (np.asarray(x, dtype=np.uint64) for x in GRAPHS[name])
    nodes, inverse = np.unique(np.concatenate((a, b)), return_inverse=True)
    refs = make_refs(np.arange(SHARDS).repeat(ROWS), np.tile(np.arange(ROWS), SHARDS))
    as_ref = rng.choice(refs, nodes.size, replace=False)  # each node a document somewhere
    ref_a, ref_b = as_ref[inverse[: a.size]], as_ref[inverse[a.size :]]
    again = rng.random(a.size) < 0.25
    ref_a, ref_b = np.concatenate((ref_a, ref_b[again])), np.concatenate((ref_b, ref_a[again]))
    return write_stage2_folder(folder / name.replace(" ", "-"), ref_a, ref_b, SHARDS, ROWS, config, rng)


def _stage3_outputs(layout, names) -> tuple[dict, dict]:
    import json

    summary = json.loads(layout.cluster_summary.read_text())
    for key in ("seconds", "cluster_tasks", "cluster_rounds", "largest_task_edges"):
        summary.pop(key)
    return summary, {n: layout.cluster_table(n).read_bytes() for n in names}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_stage_3_over_parts_writes_the_one_task_paths_tables_and_summary(name, ray_session, tmp_path):
    """Every graph as edge files of a dedup folder: the six rounds of part tasks (3 and 8 parts) write cluster
    tables byte-equal to the one-task union-find's, and the same clusters.json (counts, drops, the largest
    clusters with their kept documents); the summary counts every task."""
    from pretrain.config import DedupConfig
    from tasks.dedup.clusters import build_clusters

    config = DedupConfig(bands=2, rows_per_band=4, hash_partitions=2)
    layout, names, inputs = _stage2_layout(tmp_path, name, config)
    build_clusters(layout, names, inputs, config.model_copy(update={"cluster_partitions": 1}))
    expected = _stage3_outputs(layout, names)
    assert expected[0]["clustered_documents"] > 0 and expected[0]["clusters"] > 0
    for parts in (3, 8):
        summary = build_clusters(layout, names, inputs, config.model_copy(update={"cluster_partitions": parts}))
        assert _stage3_outputs(layout, names) == expected, parts
        assert summary["cluster_tasks"] == 5 * parts + 3 * parts * summary["cluster_rounds"]
