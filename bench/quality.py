"""Quality scorers' throughput: documents/s per core for the perplexity model and the classifier.

Trains both models on part of ../shared/data/reference/en (small settings: a few
seconds each), then scores the same documents -- held-out book chunks and the
real pages of extraction-dev, extracted with our `fast` extractor -- in this
process, one core, each scorer on its own, and prints documents/s and MB/s.

    .venv/bin/python bench/quality.py [--docs 2000]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

from models.perplexity import PerplexityModel  # noqa: E402
from models.quality_classifier import QualityClassifier, train_classifier  # noqa: E402
from pretrain.config import ClassifierConfig, PerplexityConfig  # noqa: E402
from tasks.decode import decode_html  # noqa: E402
from tasks.extract import extract_text  # noqa: E402
from tasks.quality.corpus import iter_corpus  # noqa: E402
from tasks.quality.perplexity import train_perplexity_model  # noqa: E402

TRAIN = ["Great_Expectations_CharlesDickens", "French_Revolution_ThomasCarlyle", "My_Man_Jeeves_PGWodehouse",
         "Anne-of-Green-Gables", "Collected_Speeches_FrederickDouglass"]


def documents(limit: int) -> tuple[list[str], list[str], list[str]]:
    books = DATA / "reference" / "en"
    train = [str(books / f"{name}.txt.gz") for name in TRAIN]
    held_out = [str(p) for p in sorted(books.glob("*.txt.gz")) if p.name.removesuffix(".txt.gz") not in TRAIN]
    pages = [extract_text(decode_html(gzip.decompress(p.read_bytes())), "fast")
             for p in sorted((DATA / "extraction-dev" / "html").glob("*.html.gz"))]
    pages = [p for p in pages if p.strip()]
    docs = (list(iter_corpus(held_out)) + pages) * 3
    return train, pages, docs[:limit]


def timed(score, docs: list[str]) -> float:
    started = time.perf_counter()
    score(docs)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    args = parser.parse_args()
    if not (DATA / "reference" / "en").is_dir():
        print(f"skipped: reference books not found under {DATA} (see ../shared/data/README.md)")
        return 0
    train, pages, docs = documents(args.docs)
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        started = time.perf_counter()
        train_perplexity_model(train, Path(tmp) / "ppl", PerplexityConfig(order=5, vocab_size=8000,
                                                                          max_train_chars=5_000_000, lmplz_memory="1G"))
        ppl_train = time.perf_counter() - started
        positives = list(iter_corpus(train))
        started = time.perf_counter()
        train_classifier(positives, pages, Path(tmp) / "clf", ClassifierConfig())
        clf_train = time.perf_counter() - started
        ppl = PerplexityModel.load(Path(tmp) / "ppl")
        clf = QualityClassifier.load(Path(tmp) / "clf")
        ppl_s = timed(lambda batch: [ppl.perplexity(d) for d in batch], docs)
        clf_s = timed(lambda batch: [clf.score(batch[i:i + 256]) for i in range(0, len(batch), 256)], docs)
    print(f"{len(docs)} documents, {megabytes:.1f} MB of text, one core")
    print(f"{'scorer':<40}{'train s':>9}{'docs/s':>10}{'MB/s':>8}")
    print(f"{'perplexity (KenLM 5-gram + sentencepiece)':<40}{ppl_train:>9.1f}{len(docs) / ppl_s:>10.1f}"
          f"{megabytes / ppl_s:>8.2f}")
    print(f"{'classifier (hashed n-grams + SGD)':<40}{clf_train:>9.1f}{len(docs) / clf_s:>10.1f}"
          f"{megabytes / clf_s:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
