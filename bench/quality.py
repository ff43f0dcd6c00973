"""Quality scorers' throughput: documents/s per core for the perplexity model and the classifier.

Trains both models on part of ../shared/data/reference/en (small settings: a few
seconds each), then scores the same documents -- held-out book chunks and the
real pages of extraction-dev, extracted with our `fast` extractor -- in this
process, one core, each scorer on its own, and prints documents/s and MB/s.

``--part classifier`` trains the classifier alone and compares, in one run, on the same
documents and pinned to one core, the scikit-learn scoring path it replaced (copied below
as ``baseline_score``) with ``QualityClassifier.score``: a profile of the old path (where
its time went), documents/s per CPU-second of each in alternating rounds, their ratio, the
largest score difference and both held-out ROC-AUCs, and the share a shard's Parquet
reading and writing takes in ``score_shard``.

    .venv/bin/python bench/quality.py [--docs 2000] [--part all|classifier] [--rounds 3]
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import normalize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

from models.perplexity import PerplexityModel  # noqa: E402
from models.quality_classifier import EMPTY_TEXT_SCORE, QualityClassifier, load_cached, train_classifier  # noqa: E402
from pretrain.config import ClassifierConfig, PerplexityConfig, QualityConfig  # noqa: E402
from tasks.decode import decode_html  # noqa: E402
from tasks.extract import extract_text  # noqa: E402
from tasks.quality.corpus import iter_corpus  # noqa: E402
from tasks.quality.perplexity import train_perplexity_model  # noqa: E402
from tasks.quality.score import score_shard  # noqa: E402

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


BATCH = 256
_HAS_WORD = re.compile(r"\w")


def baseline_score(classifier: QualityClassifier, texts: list[str]) -> np.ndarray:
    """THE BASELINE BEING REPLACED: ``QualityClassifier.score`` as it was before ``models.hashed_ngrams``
    (scikit-learn's HashingVectorizers in a FeatureUnion, then ``predict_proba``), copied verbatim."""
    clipped = [(text or "")[:classifier.max_chars] for text in texts]
    scores = np.full(len(clipped), EMPTY_TEXT_SCORE, dtype=np.float64)
    wordy = np.fromiter((_HAS_WORD.search(text) is not None for text in clipped), dtype=bool, count=len(clipped))
    if wordy.any():
        batch = [text for text, keep in zip(clipped, wordy) if keep]
        features = classifier.pipeline["features"].transform(batch)
        positive = list(classifier.pipeline["model"].classes_).index(1)
        scores[wordy] = classifier.pipeline["model"].predict_proba(features)[:, positive]
    return scores


def batches(docs: list[str]) -> list[list[str]]:
    return [docs[i:i + BATCH] for i in range(0, len(docs), BATCH)]


def cpu_seconds(score, docs: list[str]) -> tuple[float, np.ndarray]:
    started = time.process_time()
    scores = np.concatenate([score(batch) for batch in batches(docs)])
    return time.process_time() - started, scores


def baseline_profile(classifier: QualityClassifier, docs: list[str]) -> dict[str, float]:
    """CPU seconds of each stage of the old path over ``docs``, run stage by stage as
    ``HashingVectorizer.transform`` runs them."""
    union, model = classifier.pipeline["features"], classifier.pipeline["model"]
    stages = dict.fromkeys(["clip and empty check"] + [f"{name}: analyzer (n-gram strings)" for name, _ in
                                                       union.transformer_list]
                           + ["hashing the strings to CSR (FeatureHasher, incl. index sort)", "L2 normalise, hstack",
                              "predict_proba"], 0.0)

    def timed(stage: str, work):
        started = time.process_time()
        result = work()
        stages[stage] += time.process_time() - started
        return result

    for batch in batches(docs):
        clipped = timed("clip and empty check", lambda: [t for t in ((x or "")[:classifier.max_chars] for x in batch)
                                                         if _HAS_WORD.search(t)])
        blocks = []
        for name, vectorizer in union.transformer_list:
            analyze = vectorizer.build_analyzer()
            grams = timed(f"{name}: analyzer (n-gram strings)", lambda: [analyze(text) for text in clipped])
            hashed = timed("hashing the strings to CSR (FeatureHasher, incl. index sort)",
                           lambda: vectorizer._get_hasher().transform(grams))
            blocks.append(timed("L2 normalise, hstack", lambda: normalize(hashed, norm=vectorizer.norm, copy=False)))
        features = timed("L2 normalise, hstack", lambda: sp.hstack(blocks).tocsr())
        timed("predict_proba", lambda: model.predict_proba(features))
    return stages


def new_profile(classifier: QualityClassifier, docs: list[str]) -> dict[str, float]:
    """Seconds of the new path's stages under cProfile (a few large numpy calls: little overhead)."""
    profile = cProfile.Profile()
    profile.enable()
    for batch in batches(docs):
        classifier.score(batch)
    profile.disable()
    stats = pstats.Stats(profile).stats
    cumulative = {name: ct for (path, _line, name), (_, _, _, ct, _) in stats.items() if "hashed_ngrams" in path}
    sort = "<method 'sort' of 'numpy.ndarray' objects>"
    own_sort = sum(tt for (_, _, name), (_, _, tt, _, _) in stats.items() if name == sort)
    stages = {
        "word tokens (character classes, joined buffer)": (cumulative.get("_joined_tokens", 0.0)
                                                           - cumulative.get("_bmp_classes", 0.0)),
        "word n-gram spans": cumulative.get("word_ngram_spans", 0.0) - cumulative.get("_joined_tokens", 0.0),
        "char_wb n-gram spans": cumulative.get("char_wb_spans", 0.0),
        "MurmurHash3 of all spans": cumulative.get("feature_indices", 0.0),
        "per-document sorts": own_sort,
        "table of character classes (once per process)": cumulative.get("_bmp_classes", 0.0),
    }
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    stages["counts, L2 norms, dot product, clip, rest"] = total - sum(stages.values())
    return stages


def held_out_split(positives: list[str], negatives: list[str], cfg: ClassifierConfig) -> tuple[list[str], np.ndarray]:
    """The held-out texts and labels ``train_classifier`` measured the model on (same clip, filter, split, seed)."""
    pos = [t for t in (p[:cfg.max_chars_per_doc] for p in positives) if _HAS_WORD.search(t)]
    neg = [t for t in (n[:cfg.max_chars_per_doc] for n in negatives) if _HAS_WORD.search(t)]
    labels = np.array([1] * len(pos) + [0] * len(neg))
    _, test_x, _, test_y = train_test_split(pos + neg, labels, test_size=cfg.test_fraction, stratify=labels,
                                            random_state=cfg.seed)
    return test_x, test_y


def shard_seconds(model_dir: Path, docs: list[str], tmp: Path) -> tuple[float, float]:
    """CPU seconds of ``score_shard`` (the path of ``pretrain quality score``) on one shard of ``docs``:
    as it is, and with the classifier's score stubbed out (what reading, to_pylist and writing take)."""
    shard = tmp / "docs.parquet"
    pq.write_table(pa.table({"text": docs}), shard)
    cfg = QualityConfig(classifier_model=str(model_dir))
    classifier = load_cached(model_dir)  # the object score_shard gets

    def run() -> float:
        started = time.process_time()
        score_shard(shard, tmp / "scores.parquet", cfg)
        return time.process_time() - started

    whole = run()
    classifier.score = lambda texts: np.zeros(len(texts))
    try:
        io = run()
    finally:
        del classifier.score
    return whole, io


def classifier_part(docs: list[str], positives: list[str], pages: list[str], rounds: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})  # one core: CPU seconds and wall seconds describe the same core
    cfg = ClassifierConfig()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        started = time.perf_counter()
        metadata = train_classifier(positives, pages, Path(tmp) / "clf", cfg)
        print(f"trained in {time.perf_counter() - started:.1f} s on {metadata['counts']['train_positives']} + "
              f"{metadata['counts']['train_negatives']} documents; model.json held-out ROC-AUC "
              f"{metadata['metrics']['roc_auc']:.4f}")
        clf = QualityClassifier.load(Path(tmp) / "clf")
        assert clf.fast is not None, "the trained pipeline is not one models.hashed_ngrams reproduces"
        megabytes = sum(len(d.encode()) for d in docs) / 1e6
        print(f"{len(docs)} documents, {megabytes:.1f} MB of text, batches of {BATCH}, pinned to CPU {cpus[-1]}")

        for title, stages in (("the old path's", baseline_profile(clf, docs)),
                              ("the new path's (cProfile)", new_profile(clf, docs))):
            total = sum(stages.values())
            print(f"\nwhere {title} time went over all documents:")
            for name, seconds in stages.items():
                print(f"  {name:<62}{seconds:>7.2f} s {100 * seconds / total:>6.1f}%")

        times = {"old": [], "new": []}
        for _ in range(rounds):  # alternated, so both see the same load
            old_s, old_scores = cpu_seconds(lambda batch: baseline_score(clf, batch), docs)
            new_s, new_scores = cpu_seconds(clf.score, docs)
            times["old"].append(old_s)
            times["new"].append(new_s)
        old_rate, new_rate = (len(docs) / statistics.median(times[k]) for k in ("old", "new"))
        test_x, test_y = held_out_split(positives, pages, cfg)
        old_auc = roc_auc_score(test_y, baseline_score(clf, test_x))
        new_auc = roc_auc_score(test_y, clf.score(test_x))
        shard_s, io_s = shard_seconds(Path(tmp) / "clf", docs, Path(tmp))
    print(f"\n{'scorer':<44}{'docs/s per core':>16}{'MB/s':>8}{'ROC-AUC':>9}")
    for name, rate, auc in (("old: sklearn HashingVectorizer + predict_proba", old_rate, old_auc),
                            ("new: models.hashed_ngrams (numpy)", new_rate, new_auc)):
        print(f"{name:<44}{rate:>16.1f}{megabytes * rate / len(docs):>8.2f}{auc:>9.4f}")
    print(f"ratio new/old {new_rate / old_rate:.2f}x (median of {rounds} alternating rounds; per round "
          f"old {', '.join(f'{t:.2f}' for t in times['old'])} s, new {', '.join(f'{t:.2f}' for t in times['new'])} s)")
    print(f"scores: max |new - old| = {np.abs(new_scores - old_scores).max():.3g}, "
          f"bit-equal: {np.array_equal(new_scores, old_scores)}; held-out split: {len(test_y)} documents, "
          f"ROC-AUC difference {new_auc - old_auc:+.4f}")
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"score_shard on one shard of these documents (new scorer): {shard_s:.2f} s, of which Parquet "
          f"read/write and row handling {io_s:.2f} s: {100 * io_s / shard_s:.1f}% of it now, "
          f"{100 * io_s / (io_s + old_s):.1f}% with the old scorer's time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--part", choices=["all", "classifier"], default="all")
    parser.add_argument("--rounds", type=int, default=3, help="--part classifier: alternating timing rounds")
    args = parser.parse_args()
    if not (DATA / "reference" / "en").is_dir():
        print(f"skipped: reference books not found under {DATA} (see ../shared/data/README.md)")
        return 0
    train, pages, docs = documents(args.docs)
    if args.part == "classifier":
        classifier_part(docs, list(iter_corpus(train)), pages, args.rounds)
        return 0
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
