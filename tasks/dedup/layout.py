"""Where every stage reads and writes, and the key "slots" the stages share.

A slot is one kind of grouping key: each MinHash band is a slot, and so are the
exact text hash and the URL hash. Stages 1 and 2 treat them all alike; the kind
(``exact`` beats ``url`` beats ``fuzzy``) only matters for the drop reason.

Output folder::

    OUTPUT/<shard>.parquet                 kept rows, every input column + dup_cluster
    OUTPUT/info.json, OUTPUT/report.json
    OUTPUT/dedup/clusters/<shard>.parquet  one row per document of <shard> that has duplicates
    OUTPUT/dedup/work/shards/<shard>.*.npy stage 1: bucketed keys, their index, word counts, signatures, id hashes
    OUTPUT/dedup/work/edges/<slot>-p<part>.npy  stage 2: duplicate edges of one bucket
    OUTPUT/dedup/work/clusters.json        stage 3: cluster summary

``dedup/work`` only serves reruns (cache hits need it); it may be deleted after a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.config import DedupConfig

EXACT, URL, FUZZY = 0, 1, 2  # also the priority of a drop reason: lower wins
KIND_NAMES = ("exact", "url", "fuzzy")
REASONS = tuple(f"{name}_duplicate" for name in KIND_NAMES)


@dataclass(frozen=True)
class Slot:
    kind: int
    band: int = 0

    @property
    def name(self) -> str:
        return f"band-{self.band:03d}" if self.kind == FUZZY else KIND_NAMES[self.kind]


def key_slots(config: DedupConfig) -> list[Slot]:
    """The grouping keys every document gets, in the order of the key files' sections."""
    slots = [Slot(FUZZY, band) for band in range(config.bands)] if config.fuzzy else []
    if config.exact:
        slots.append(Slot(EXACT))
    if config.url:
        slots.append(Slot(URL))
    return slots


@dataclass(frozen=True)
class Layout:
    output_dir: Path

    @property
    def work(self) -> Path:
        return self.output_dir / "dedup" / "work"

    def shard_file(self, shard: str, what: str) -> Path:
        """Stage-1 files of a shard: ``keys``, ``index``, ``words``, ``sigs``, ``ids`` or ``idindex``."""
        return self.work / "shards" / f"{shard}.{what}.npy"

    def edges(self, slot: Slot, part: int) -> Path:
        return self.work / "edges" / f"{slot.name}-p{part:03d}.npy"

    @property
    def cluster_summary(self) -> Path:
        return self.work / "clusters.json"

    def cluster_table(self, shard: str) -> Path:
        return self.output_dir / "dedup" / "clusters" / f"{shard}.parquet"

    def output_shard(self, shard: str) -> Path:
        return self.output_dir / f"{shard}.parquet"


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy atomically (temporary name, then rename); bytes depend only on the array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)

