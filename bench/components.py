"""Peak memory per task of the distributed connected components (tasks/dedup/components.py)
against union-find in one process, on graphs shaped like dedup's: many small clusters.

For each size, a graph of N documents in clusters of 2-8 (30% of documents clustered, the
README's memory-table assumption) is made with a seed, then:

* union-find (``clusters.connected_components``) in this process: its peak Python-heap
  memory (tracemalloc sees numpy's buffers);
* the star rounds (``components.distributed_components``) over ``--partitions`` Ray tasks
  (local Ray, ``--cpus`` CPUs): each large- and small-star task measures its own tracemalloc
  peak plus the arrays it was handed; the largest over all of them and all rounds is printed
  (the small check tasks are not measured).

Both results are checked equal. The last column projects the per-task peak to 1e9 documents
(it grows with the clustered documents / partitions).

``--stage``: the whole clustering stage instead, on a dedup output folder made for each size (16
input shards of ids, stage 1's word counts, the graph's edges spread over the default's 30 slots x 4
partitions of edge files, a quarter found by two slots): the one-task path
(``clusters.build_clusters_here``, tracemalloc in this process) against the rounds of part tasks
(``distributed.build_clusters_over_parts``), whose every task (read, pairs, star rounds, members,
choose, write) measures its own peak; the cluster tables are checked byte-equal.

    .venv/bin/python bench/components.py [--sizes 100000,1000000,3000000] [--partitions 8] [--stage] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.dedup import components as cc  # noqa: E402
from tasks.dedup.clusters import connected_components  # noqa: E402

CLUSTERED = 0.3


def dedup_like_graph(documents: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining 30% of ``documents`` refs into clusters of 2-8, each cluster a random tree."""
    rng = np.random.default_rng(seed)
    refs = rng.choice(np.uint64(documents * 4), size=int(documents * CLUSTERED), replace=False).astype(np.uint64)
    sizes, used = [], 0
    while used < refs.size:
        size = min(int(rng.integers(2, 9)), refs.size - used)
        sizes.append(size)
        used += size
    a, b, start = [], [], 0
    for size in sizes:
        members = refs[start:start + size]
        for i in range(1, size):  # each member links to an earlier one: a tree
            a.append(members[i])
            b.append(members[int(rng.integers(0, i))])
        start += size
    return np.array(a, np.uint64), np.array(b, np.uint64)


def measured(fn):
    """A star task's function that adds ``peak_bytes`` to its stats: its tracemalloc peak (numpy's buffers
    included) plus the arrays it was handed, which Ray maps from the object store and tracemalloc does
    not see."""
    def run(*args):
        handed = sum(array.nbytes for piece in args if isinstance(piece, tuple) for array in piece)
        tracemalloc.start()
        try:
            result = fn(*args)
            (result if isinstance(result, dict) else result[-1])["peak_bytes"] = \
                tracemalloc.get_traced_memory()[1] + handed
            return result
        finally:
            tracemalloc.stop()
    run.__name__ = fn.__name__
    return run


def dedup_folder(folder: Path, documents: int, seed: int = 0):
    """A dedup output folder as stages 1-2 leave it: 16 shards of ids and word counts, the edges of
    ``dedup_like_graph`` over their documents in every (slot, partition) file of the default config."""
    from pretrain.config import DedupConfig
    from tasks.dedup.buckets import make_refs
    from tasks.dedup.planted import write_stage2_folder

    shards, rng = 16, np.random.default_rng(seed)
    rows = -(-documents // shards)
    a, b = dedup_like_graph(documents, seed)
    a, b = a % np.uint64(documents), b % np.uint64(documents)  # graph nodes are 0 .. 4N: fold onto the documents
    to_ref = lambda n: make_refs(n // np.uint64(rows), n % np.uint64(rows))  # noqa: E731
    again = rng.random(a.size) < 0.25
    ref_a, ref_b = np.concatenate((to_ref(a), to_ref(b[again]))), np.concatenate((to_ref(b), to_ref(a[again])))
    config = DedupConfig(hash_partitions=4)
    layout, names, inputs = write_stage2_folder(folder, ref_a, ref_b, shards, rows, config, rng, word_range=(50, 3000))
    return layout, names, inputs, config, int(a.size)


def measure_stage(sizes: list[int], partitions: int) -> list[dict]:
    """Peak memory of the one-task clustering stage against the largest task of each kind over parts."""
    import tempfile

    from tasks.dedup.clusters import build_clusters_here
    from tasks.dedup.distributed import build_clusters_over_parts

    kinds = ("read", "pairs", "stars", "members", "choose", "write")
    print(f"{'documents':>12} {'edges':>10} {'one task':>10} " + " ".join(f"{k:>8}" for k in kinds)
          + f" {'largest/one':>11} {'largest at 1e9':>14}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stage3-") as tmp:  # warm-up: each worker's first imports
        layout, names, inputs, config, _ = dedup_folder(Path(tmp), 5000, seed=1)
        for _ in range(2):
            build_clusters_over_parts(layout, names, inputs,
                                      config.model_copy(update={"cluster_partitions": partitions}))
    for documents in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-stage3-") as tmp:
            layout, names, inputs, config, edges = dedup_folder(Path(tmp), documents)
            tracemalloc.start()
            build_clusters_here(layout, names, inputs, config)
            one_task = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            expected = {n: layout.cluster_table(n).read_bytes() for n in names}
            parts_config = config.model_copy(update={"cluster_partitions": partitions})
            _, stats = build_clusters_over_parts(layout, names, inputs, parts_config, wrap=measured)
            assert {n: layout.cluster_table(n).read_bytes() for n in names} == expected, "cluster tables differ"
        peaks = {kind: max(task["peak_bytes"] for task in stats[kind]) / 2**20 for kind in kinds}
        largest = max(peaks.values())
        row = {"documents": documents, "edges": edges, "partitions": partitions,
               "one_task_peak_mb": round(one_task / 2**20, 1),
               **{f"{kind}_task_peak_mb": round(peak, 2) for kind, peak in peaks.items()},
               "largest_task_peak_mb": round(largest, 2),
               "projected_largest_task_gb_at_1e9": round(largest * 2**20 * 1e9 / documents / 2**30, 2),
               "projected_one_task_gb_at_1e9": round(one_task * 1e9 / documents / 2**30, 1)}
        results.append(row)
        print(f"{documents:>12,} {edges:>10,} {row['one_task_peak_mb']:>7} MB "
              + " ".join(f"{peaks[k]:>8.2f}" for k in kinds)
              + f" {largest * 2**20 / one_task:>11.3f} {row['projected_largest_task_gb_at_1e9']:>11} GB", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,3000000", help="documents per graph")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stage", action="store_true", help="the whole clustering stage, every task kind")
    args = parser.parse_args()
    from tasks.ray_runtime import start_local_ray

    start_local_ray(num_cpus=args.cpus, object_store_memory_mb=2048)
    if args.stage:
        results = measure_stage([int(s) for s in args.sizes.split(",")], args.partitions)
        if args.json:
            print(json.dumps({"stage3": results}))
        return 0
    results = []
    print(f"{'documents':>12} {'edges':>10} {'union-find peak':>16} {'per-task peak':>14} {'rounds':>6} "
          f"{'task/union-find':>15} {'per task at 1e9 docs':>20}")
    for documents in (int(s) for s in args.sizes.split(",")):
        a, b = dedup_like_graph(documents)
        tracemalloc.start()
        started = time.perf_counter()
        nodes, root = connected_components(a, b)
        union_find_s = time.perf_counter() - started
        union_find_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        started = time.perf_counter()
        found = cc.distributed_components(a, b, args.partitions, wrap=measured)
        found_nodes, found_root, rounds = found.nodes, found.root, found.rounds
        task_peak = max(stats["peak_bytes"] for round_stats in found.task_stats for stats in round_stats)
        rounds_s = time.perf_counter() - started
        assert np.array_equal(found_nodes, nodes) and np.array_equal(found_root, nodes[root]), "results differ"
        projected = task_peak * 1e9 / documents
        row = {"documents": documents, "edges": int(a.size), "union_find_peak_mb": round(union_find_peak / 2**20, 1),
               "task_peak_mb": round(task_peak / 2**20, 2), "rounds": rounds, "partitions": args.partitions,
               "union_find_s": round(union_find_s, 2), "star_rounds_s": round(rounds_s, 2),
               "projected_task_peak_gb_at_1e9": round(projected / 2**30, 2),
               "projected_union_find_gb_at_1e9": round(union_find_peak * 1e9 / documents / 2**30, 1)}
        results.append(row)
        print(f"{documents:>12,} {a.size:>10,} {row['union_find_peak_mb']:>13} MB {row['task_peak_mb']:>11} MB "
              f"{rounds:>6} {task_peak / union_find_peak:>15.3f} {row['projected_task_peak_gb_at_1e9']:>17} GB",
              flush=True)
    if args.json:
        print(json.dumps({"components": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
