"""Dedup throughput at equal recall: our four stages against datatrove's MinHash stages.

Builds the planted-duplicate dataset of the acceptance test (real extracted web
pages and book chunks, copies made exact / with boilerplate / with 2-5% word
edits / truncated / combined), scaled up with every ~1500-word chunk of the
15 reference books, in 8 Parquet shards. Then, in this one process (one core):

* ours: ``hash_shard`` per shard, ``find_edges`` per (slot, partition),
  ``build_clusters``, ``write_deduped_shard`` per shard -- the functions the
  Ray tasks of `flows/dedup.py` run; exact and URL dedup are on too;
* datatrove: ``MinhashDedupSignature`` per shard (rank), ``MinhashDedupBuckets``
  per bucket, ``MinhashDedupCluster``, ``MinhashDedupFilter`` per shard, driven
  in-process as LocalPipelineExecutor(tasks=1, workers=1) would run them; its
  documents are read from the shards beforehand (not timed).

Both use word 5-grams and the same bands x rows (default 28 x 4: the recall
setting of the acceptance test; FineWeb's 14 x 8 with ``--bands 14 --rows 8``).
Prints the recall of the planted pairs for each, documents/s per core for the
signature + grouping + clustering stages and for all four, and the ratio.

With ``--settings``, instead: ours alone under the default (28 x 4, threshold 0.4) and under
FineWeb's 14 x 8 without a threshold (the default before), on the same data: recall, documents/s
per core of all four stages and the bytes of the work files (band keys, signatures, edges).

    .venv/bin/python bench/dedup.py [--bands 28 --rows 4] [--per-book N] [--settings]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pretrain.config import DedupConfig  # noqa: E402
from tasks.dedup.apply import write_deduped_shard  # noqa: E402
from tasks.dedup.buckets import find_edges  # noqa: E402
from tasks.dedup.clusters import build_clusters  # noqa: E402
from tasks.dedup.hashing import hash_shard  # noqa: E402
from tasks.dedup.layout import Layout, key_slots  # noqa: E402
from tasks.dedup.planted import PlantedDataset, book_chunks, plant, web_pages, write_shards  # noqa: E402


def build(folder: Path, per_book: int | None, shards: int) -> tuple[PlantedDataset, list[Path]]:
    pages = web_pages(DATA / "extraction-dev")
    books = book_chunks(DATA / "reference", chunk_words=1500, per_book=per_book)
    rng = random.Random(7)
    data = plant(pages + books[:-10], rng, copy_fraction=0.4, spare=books[-10:], url_duplicates=10)
    return data, write_shards(data.documents, folder, shards, rng)


def recall(data: PlantedDataset, cluster_of: dict[str, object]) -> float:
    hits = [cluster_of.get(a) is not None and cluster_of.get(a) == cluster_of.get(b) for a, b, _ in data.pairs]
    return sum(hits) / len(hits)


def run_ours(paths: list[Path], out: Path, config: DedupConfig) -> dict:
    layout, names = Layout(out), [p.stem for p in paths]
    started = time.perf_counter()
    for path in paths:
        hash_shard(path, path.stem, layout, config)
    signed = time.perf_counter()
    for slot_index, slot in enumerate(key_slots(config)):
        for part in range(config.hash_partitions):
            find_edges(layout, names, slot_index, slot, part, config)
    grouped = time.perf_counter()
    build_clusters(layout, names, paths, config)
    clustered = time.perf_counter()
    for path in paths:
        write_deduped_shard(path, layout.cluster_table(path.stem), layout.output_shard(path.stem))
    done = time.perf_counter()
    table = pa.concat_tables(pq.read_table(layout.cluster_table(n), columns=["id", "dup_cluster"]) for n in names)
    return {"stages": [signed - started, grouped - signed, clustered - grouped, done - clustered],
            "clusters": dict(zip(table.column("id").to_pylist(), table.column("dup_cluster").to_pylist()))}


def run_datatrove(paths: list[Path], out: Path, bands: int, rows: int) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
    )
    from datatrove.utils.hashing import HashConfig
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    try:
        import xxhash  # noqa: F401  datatrove's default shingle hash
        sys.path.insert(0, str(REPO / "bench"))
        from pipeline import hash_str_with_xxhash4

        hash_str_with_xxhash4()  # xxhash 4 refuses the str datatrove 0.10.1 hands it: encode it as xxhash 3 did
        hash_config = HashConfig(hash_fc="xxhash")
    except ImportError:
        hash_config = HashConfig(hash_fc="sha1")
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1, hash_config=hash_config)
    shards = [[Document(text=r["text"], id=r["id"]) for r in pq.read_table(p, columns=["id", "text"]).to_pylist()]
              for p in paths]
    sigs, buckets, removed = out / "sigs", out / "buckets", out / "remove"

    started = time.perf_counter()
    for rank, docs in enumerate(shards):
        MinhashDedupSignature(output_folder=str(sigs), config=config).run(iter(docs), rank=rank, world_size=len(shards))
    signed = time.perf_counter()
    for bucket in range(bands):
        MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(buckets), config=config).run(
            rank=bucket, world_size=bands)
    grouped = time.perf_counter()
    MinhashDedupCluster(input_folder=str(buckets), output_folder=str(removed), config=config,
                        save_cluster_id=True).run(world_size=1)
    clustered = time.perf_counter()
    kept = 0
    for rank, docs in enumerate(shards):
        kept += sum(1 for _ in MinhashDedupFilter(input_folder=str(removed)).run(iter(docs), rank=rank))
    done = time.perf_counter()
    clusters = {}  # from the cluster step's (doc index, cluster id) records, for every clustered document
    for rank, docs in enumerate(shards):
        path = removed / f"{rank:06d}.clusters"
        records = np.fromfile(path, dtype="<u4").reshape(-1, 2) if path.exists() else np.zeros((0, 2), np.uint32)
        clusters.update((docs[i].id, int(c)) for i, c in records.tolist())
    return {"stages": [signed - started, grouped - signed, clustered - grouped, done - clustered],
            "clusters": clusters, "kept": kept, "hash": hash_config.hash_fc}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def compare_settings(data: PlantedDataset, paths: list[Path], tmp_path: Path) -> None:
    """Ours under the default and under FineWeb's 14 x 8 (no threshold): what the default's recall costs."""
    settings = {"28 x 4, threshold 0.4 (default)": DedupConfig(hash_partitions=4),
                "14 x 8, no threshold (FineWeb)": DedupConfig(bands=14, rows_per_band=8, threshold=None,
                                                              hash_partitions=4)}
    print(f"{'':<34}{'recall':>8}{'docs/s 1-4':>12}{'work MB':>9}{'sig s':>8}{'group s':>9}{'cluster s':>10}")
    found = {}
    for name, config in settings.items():
        out = tmp_path / name.split(",")[0].replace(" ", "")
        result = run_ours(paths, out, config)
        s, work = result["stages"], folder_bytes(out / "dedup" / "work") / 1e6
        found[name] = (recall(data, result["clusters"]), len(data.documents) / sum(s), work)
        print(f"{name:<34}{found[name][0]:>8.4f}{found[name][1]:>12.1f}{work:>9.1f}{s[0]:>8.2f}{s[1]:>9.2f}"
              f"{s[2]:>10.2f}")
    (r1, d1, w1), (r2, d2, w2) = found.values()
    print(f"default against 14 x 8: recall {r1:.4f} vs {r2:.4f}, {d2 / d1:.2f}x the time, {w1 / w2:.2f}x the work bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bands", type=int, default=28)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.4, help="ours only: verify fuzzy pairs")
    parser.add_argument("--per-book", type=int, default=None, help="book chunks per book (default: all)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--settings", action="store_true", help="ours only: the default against 14 x 8")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: real data not found at {DATA} (see ../shared/data/README.md)")
        return 0
    config = DedupConfig(bands=args.bands, rows_per_band=args.rows, threshold=args.threshold, hash_partitions=4)
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        tmp_path = Path(tmp)
        data, paths = build(tmp_path / "input", args.per_book, args.shards)
        n_docs = len(data.documents)
        n_words = sum(len(d.text.split()) for d in data.documents)
        print(f"dataset: {n_docs} documents ({n_words / n_docs:.0f} words on average) in {len(paths)} shards, "
              f"{len(data.pairs)} planted pairs; {args.bands} bands x {args.rows} rows, word 5-grams")
        if args.settings:
            compare_settings(data, paths, tmp_path)
            return 0
        ours = run_ours(paths, tmp_path / "ours", config)
        theirs = run_datatrove(paths, tmp_path / "datatrove", args.bands, args.rows)
        ours_recall = recall(data, ours["clusters"])
        theirs_recall = recall(data, theirs["clusters"])
        print(f"{'':<34}{'recall':>8}{'sig s':>8}{'group s':>9}{'cluster s':>10}{'write s':>9}"
              f"{'docs/s 1-3':>12}{'docs/s 1-4':>12}")
        rates = {}
        for name, result, found in (("ours (exact+url+fuzzy, numpy)", ours, ours_recall),
                                    (f"datatrove ({theirs['hash']} shingles)", theirs, theirs_recall)):
            s = result["stages"]
            rates[name] = (n_docs / sum(s[:3]), n_docs / sum(s))
            print(f"{name:<34}{found:>8.4f}{s[0]:>8.2f}{s[1]:>9.2f}{s[2]:>10.2f}{s[3]:>9.2f}"
                  f"{rates[name][0]:>12.1f}{rates[name][1]:>12.1f}")
        (o13, o14), (t13, t14) = rates.values()
        print(f"ratio ours/datatrove: {o13 / t13:.1f}x (stages 1-3), {o14 / t14:.1f}x (all four); goal >= 3x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
