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
from functools import lru_cache
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


@lru_cache(maxsize=4096)
def _npy_header(path: str, inode: int, mtime_ns: int, size: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of an .npy file version (keyed by inode, time and size: files are
    replaced, never rewritten in place)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        if fortran:
            raise ValueError(f"{path}: Fortran-order array (not written by save_npy)")
        return dtype, shape, handle.tell()


def npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    st = os.stat(path)
    return _npy_header(str(path), st.st_ino, st.st_mtime_ns, st.st_size)


def read_npy_rows(path: Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of an .npy file, read with one seek (``np.load``'s header parsing and
    memory map cost more than the read itself for the small sections a bucket task takes)."""
    dtype, shape, offset = npy_header(path)
    n_rows = shape[0] if shape else 1
    stop = n_rows if stop is None else stop
    if not 0 <= start <= stop <= n_rows:
        raise ValueError(f"{path}: rows {start}:{stop} outside its {n_rows}")
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    with open(path, "rb") as handle:
        handle.seek(offset + start * per_row * dtype.itemsize)
        data = np.fromfile(handle, dtype=dtype, count=(stop - start) * per_row)
    if data.size != (stop - start) * per_row:
        raise ValueError(f"{path}: file is shorter than its header says")
    return data.reshape((stop - start, *shape[1:])) if shape else data.reshape(())


def read_npy_picks(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (any order) of an .npy file: a seek per row when there are few, else a memory map."""
    dtype, shape, offset = npy_header(path)
    if len(rows) > 256:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)[rows]
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    out = np.empty((len(rows), *shape[1:]), dtype=dtype)
    flat = out.reshape(len(rows), per_row)
    row_bytes = per_row * dtype.itemsize
    with open(path, "rb", buffering=0) as handle:
        fd = handle.fileno()
        for i, row in enumerate(rows.tolist()):
            if not 0 <= row < shape[0]:
                raise ValueError(f"{path}: row {row} outside its {shape[0]}")
            chunk = os.pread(fd, row_bytes, offset + row * row_bytes)
            if len(chunk) != row_bytes:
                raise ValueError(f"{path}: file is shorter than its header says")
            flat[i] = np.frombuffer(chunk, dtype=dtype, count=per_row)
    return out
