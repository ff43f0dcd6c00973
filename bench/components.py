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

    .venv/bin/python bench/components.py [--sizes 100000,1000000,3000000] [--partitions 8] [--json]
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
            result[-1]["peak_bytes"] = tracemalloc.get_traced_memory()[1] + handed
            return result
        finally:
            tracemalloc.stop()
    run.__name__ = fn.__name__
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,3000000", help="documents per graph")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from tasks.ray_runtime import start_local_ray

    start_local_ray(num_cpus=args.cpus, object_store_memory_mb=2048)
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
