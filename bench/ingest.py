"""Ingestion throughput: our WARC -> Parquet path against datatrove's, on the same file.

Builds one WARC of a few thousand HTTP 200 HTML response records from the real
pages in ../shared/data/extraction-dev (each page repeated with distinct URLs and
record ids), then, in this one process and on one core each:

* ours: ``tasks.ingest.ingest_warc`` -- the function every `pretrain ingest` Ray
  task runs on its file (fastwarc, charset decoding, the `fast` extractor,
  py3langid, zstd Parquet);
* datatrove: ``WarcReader`` -> ``Trafilatura`` -> a language-id filter -> ``ParquetWriter``,
  its steps chained in-process as its executor would. datatrove's own language
  filter downloads a fastText model, so both sides use the same offline py3langid.

Prints documents/s per core for each and the ratio. With ``--cli`` it also runs
the whole `pretrain ingest` command (Prefect server, Ray start) on the file and
prints its wall time, which includes that fixed start-up cost.

    .venv/bin/python bench/ingest.py [--repeat 10] [--cli]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "extraction-dev"

from pretrain.config import IngestConfig  # noqa: E402
from tasks.ingest import ingest_warc  # noqa: E402
from tasks.langid import identify_language  # noqa: E402
from tasks.warcwriter import warc_date, warc_record, http_response_block, record_id, write_warc  # noqa: E402


def build_warc(path: Path, repeat: int, first_copy: int = 0) -> int:
    """One WARC of len(pages) x repeat response records; returns the record count.

    Copies are numbered from ``first_copy``, so WARCs built with disjoint ranges hold distinct URLs and ids.
    """
    expectations = json.loads((DATA / "expectations.json").read_text())
    pages = [(key, gzip.decompress((DATA / "html" / f"{key}.html.gz").read_bytes())) for key in sorted(expectations)]
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)

    def records():
        for copy in range(first_copy, first_copy + repeat):
            for n, (key, body) in enumerate(pages):
                base = (expectations[key].get("url") or f"https://example.org/{key}").strip().replace(" ", "%20")
                url = f"{base}#copy{copy}"
                when = start + timedelta(seconds=copy * len(pages) + n)
                yield warc_record("response", http_response_block(body, "text/html"), {
                    "WARC-Date": warc_date(when), "WARC-Record-ID": record_id("bench", url),
                    "WARC-Target-URI": url, "Content-Type": "application/http; msgtype=response",
                    "WARC-Identified-Payload-Type": "text/html",
                })

    write_warc(path, records())
    return len(pages) * repeat


def run_ours(warc: Path, out: Path) -> dict:
    started = time.perf_counter()
    report = ingest_warc(warc, out / "ours.parquet", IngestConfig(), warc_path=str(warc), crawl=None)
    seconds = time.perf_counter() - started
    return {"documents": report["documents"], "seconds": seconds, "docs_per_s": report["documents"] / seconds}


def run_datatrove(warc: Path, out: Path) -> dict:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    def tag_language(doc) -> bool:
        doc.metadata["lang"], doc.metadata["lang_score"] = identify_language(doc.text)
        return True

    steps = [
        WarcReader(str(warc.parent), glob_pattern=warc.name),
        Trafilatura(favour_precision=True, timeout=1.0),
        LambdaFilter(tag_language),
        ParquetWriter(str(out / "datatrove")),
    ]
    started = time.perf_counter()
    docs = None
    for step in steps:
        docs = step.run(docs, rank=0, world_size=1)
    for _ in docs or ():
        pass
    seconds = time.perf_counter() - started
    kept = _count_parquet_rows(out / "datatrove")
    return {"documents": kept, "seconds": seconds, "docs_per_s": kept / seconds}


def _count_parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))


def run_cli(warc: Path, out: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([str(REPO / ".venv" / "bin" / "pretrain"), "ingest", "--input", str(warc), "--output",
                    str(out / "cli"), "--num-cpus", "1"], check=True, capture_output=True)
    report = json.loads((out / "cli" / "report.json").read_text())
    return {"documents": report["documents"], "wall_s": time.perf_counter() - started,
            "task_docs_per_s": report["shards"][0]["docs_per_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="copies of each of the 237 pages")
    parser.add_argument("--cli", action="store_true", help="also time the whole `pretrain ingest` command")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: real pages not found at {DATA} (see ../shared/data/README.md)")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp_path = Path(tmp)
        warc = tmp_path / "input" / "bench.warc.gz"
        n_records = build_warc(warc, args.repeat)
        print(f"WARC: {n_records} HTML response records, {warc.stat().st_size / 1e6:.1f} MB")
        ours = run_ours(warc, tmp_path)
        theirs = run_datatrove(warc, tmp_path)
        ratio = ours["docs_per_s"] / theirs["docs_per_s"]
        print(f"{'pipeline':<34}{'documents':>10}{'seconds':>10}{'docs/s/core':>13}")
        print(f"{'ours (fastwarc + fast + langid)':<34}{ours['documents']:>10}{ours['seconds']:>10.1f}{ours['docs_per_s']:>13.1f}")
        print(f"{'datatrove (warcio + trafilatura)':<34}{theirs['documents']:>10}{theirs['seconds']:>10.1f}{theirs['docs_per_s']:>13.1f}")
        print(f"ratio ours/datatrove: {ratio:.1f}x (goal >= 5x)")
        if args.cli:
            cli = run_cli(warc, tmp_path)
            print(f"`pretrain ingest` end to end: {cli['documents']} documents in {cli['wall_s']:.1f} s wall "
                  f"(includes Prefect and Ray start-up); its Ray task ran at {cli['task_docs_per_s']} docs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
