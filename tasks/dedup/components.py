"""Connected components as many small tasks: alternating large-star and small-star rounds
(Kiveris, Lattanzi, Mirrokni, Rastogi, Vassilvitskii, "Connected Components in MapReduce and
Beyond", SoCC 2014), each round one task per edge partition.

The edges live in ``partitions`` parts, an edge with key node u in part ``part_of(u)``, and a
task holds only its part: memory per task follows its edges, not the graph. A round:

* large-star (key u, both directions of every edge): m = min(u, neighbours of u); link every
  neighbour v > u to m;
* small-star (key u, only the edges to smaller nodes v < u): m = min(u, those v); link every
  such v != m, and u itself, to m.

Both keep every component connected and its smallest node in it, and their fixed point is a
forest of stars, each component's smallest node at its centre. A round ends with a check task
per part (edges routed by both ends): every leaf has exactly one centre, and no centre is itself
a leaf. When every part says yes, ``root`` of each node is its component's smallest node:
exactly what ``tasks.dedup.clusters.connected_components`` (union-find in one task) gives.

Memory: the first round's tasks hold about 1/partitions of the edges each. As the rounds turn
each component into a star, its centre's part reads every edge of that component, so a task
holds at most its share plus twice the largest component's size (for dedup: the largest
duplicate cluster, not the corpus). ``largest_task_edges`` records it per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

MIX_1, MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def part_of(nodes: np.ndarray, partitions: int) -> np.ndarray:
    """The part of each node: a splitmix64 finaliser of the node, modulo ``partitions``."""
    x = nodes.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * MIX_1
        x = (x ^ (x >> np.uint64(27))) * MIX_2
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(partitions)).astype(np.int64)


def _route(keys: np.ndarray, others: np.ndarray, partitions: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(keys, others) split by the part of each key."""
    parts = part_of(keys, partitions)
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(partitions + 1))
    return [(keys[order[lo:hi]], others[order[lo:hi]]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _pairs(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (key, other) pairs of several pieces, sorted by key."""
    keys = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.uint64)
    others = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.uint64)
    if keys.size == 0:
        return keys.astype(np.uint64), others.astype(np.uint64)
    stacked = np.unique(np.stack((keys, others), axis=1), axis=0)
    return stacked[:, 0], stacked[:, 1]


def _group_min(keys: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Per pair, min(key, every other of that key); keys sorted."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, np.int64)
    smallest = np.minimum.reduceat(others, starts) if keys.size else others
    counts = np.diff(np.r_[starts, keys.size])
    return np.minimum(np.repeat(smallest, counts), keys)


def both_directions(high: np.ndarray, low: np.ndarray, partitions: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Undirected edges as (u, v) and (v, u), each routed by its key: a large-star round's input."""
    return _route(np.concatenate((high, low)), np.concatenate((low, high)), partitions)


def large_star(partitions: int, *pieces: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One part's large-star: its (u, v) pairs (both directions) -> edges (v, m(u)) for v > u, as (high, low)
    routed by high for the small-star round; then its stats, ``{"pairs": pairs it read}``."""
    u, v = _pairs(list(pieces))
    m = _group_min(u, v)
    pick = v > u
    return [*_route(v[pick], m[pick], partitions), {"pairs": int(u.size)}]


def small_star(partitions: int, *pieces: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One part's small-star: its (u, v) pairs with v < u -> edges (v, m) for v != m and (u, m), m = min(u, v...),
    as undirected (high, low) pairs routed both ways for the next round and the check; then its stats,
    ``{"pairs": pairs it read}``."""
    u, v = _pairs(list(pieces))
    m = _group_min(u, v)
    high = np.concatenate((v, u))
    low = np.concatenate((m, m))
    keep = high != low
    high, low = high[keep], low[keep]
    return [*both_directions(high, low, partitions), {"pairs": int(u.size)}]


def is_star_part(*pieces: tuple[np.ndarray, np.ndarray]) -> bool:
    """One part's check on both directions of the edges whose key falls in it: every node of the part
    that links to a smaller node (a leaf) links to exactly one, and that one links to no smaller node.
    Seen from the part: a leaf here has one smaller neighbour, and no node here is both a centre (a
    larger neighbour's smaller end) and a leaf."""
    u, v = _pairs(list(pieces))
    down = v < u
    leaves, centres = u[down], v[down]
    if leaves.size and np.any(leaves[1:] == leaves[:-1]):  # sorted by key: a leaf listed twice has two centres
        return False
    centre_here = u[~down]  # u has a larger neighbour: u is someone's centre
    return not np.isin(leaves, centre_here).any()


@dataclass
class Components:
    """Per part, its nodes' roots; with the rounds and tasks it took."""

    nodes: np.ndarray  # sorted
    root: np.ndarray  # per node, its component's smallest node
    rounds: int
    tasks: int
    task_stats: list[list[dict]]  # per round, each large- and small-star task's stats ({"pairs": ..., ...})

    @property
    def largest_task_edges(self) -> list[int]:
        """Per round, the most (directed) edges one task read: what bounds a task's memory."""
        return [max(stats["pairs"] for stats in round_stats) for round_stats in self.task_stats]


def distributed_components(a: np.ndarray, b: np.ndarray, partitions: int, max_rounds: int = 200,
                           wrap: Callable | None = None) -> Components:
    """Components of the edges (a[i], b[i]) by star rounds as Ray tasks over ``partitions`` parts.

    ``wrap(fn)``, when given, replaces each star task's function (bench/components.py adds the task's
    peak memory to its stats that way).

    The edges are handed to the tasks as routed pieces (object refs: a task's arguments, so Ray hands it the
    arrays); only the final (node, root) pairs come back to the caller.
    """
    import ray

    keep = a != b
    high, low = np.maximum(a[keep], b[keep]).astype(np.uint64), np.minimum(a[keep], b[keep]).astype(np.uint64)
    routed = [ray.put(piece) for piece in both_directions(high, low, partitions)]
    stars = star_rounds([[routed[p]] for p in range(partitions)], partitions, max_rounds, wrap)
    pieces = ray.get([piece for part in stars.pieces for piece in part])
    return _collect(pieces, stars.rounds, stars.tasks, stars.task_stats)


@dataclass
class Stars:
    """The star forest the rounds ended with: per part, the refs of its pieces (both directions of every
    final edge whose key falls in the part: each leaf to its centre)."""

    pieces: list[list]
    rounds: int
    tasks: int
    task_stats: list[list[dict]]


def star_rounds(inputs: list[list], partitions: int, max_rounds: int = 200, wrap: Callable | None = None) -> Stars:
    """Large-star and small-star rounds until every part's check says star forest. ``inputs[p]``: object
    refs of the pieces routed to part p (both directions of every edge, keyed in p); nothing is fetched
    here but the checks and the stats."""
    import ray

    wrap = wrap or (lambda fn: fn)
    large = ray.remote(num_returns=partitions + 1)(wrap(large_star))  # a piece per part, then its stats
    small = ray.remote(num_returns=partitions + 1)(wrap(small_star))
    check = ray.remote(is_star_part)
    tasks, stats = 0, []
    for round_number in range(1, max_rounds + 1):
        larges = [large.remote(partitions, *inputs[p]) for p in range(partitions)]
        smalls = [small.remote(partitions, *[out[p] for out in larges]) for p in range(partitions)]
        inputs = [[out[p] for out in smalls] for p in range(partitions)]
        checks = ray.get([check.remote(*inputs[p]) for p in range(partitions)])
        tasks += 3 * partitions
        stats.append(ray.get([out[-1] for out in larges + smalls]))
        if all(checks):
            return Stars(inputs, round_number, tasks, stats)
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")


def leaf_roots(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(leaves, centres) of a star forest's pieces: each node with a smaller neighbour, and that neighbour."""
    keys = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.uint64)
    others = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.uint64)
    down = others < keys
    return keys[down], others[down]


def _collect(pieces: list[tuple[np.ndarray, np.ndarray]], rounds: int, tasks: int, stats: list) -> Components:
    keys = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.uint64)
    others = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.uint64)
    leaves, centres = leaf_roots(pieces)
    nodes = np.unique(np.concatenate((keys, others)))
    root = nodes.copy()
    root[np.searchsorted(nodes, leaves)] = centres
    return Components(nodes, root, rounds, tasks, stats)
