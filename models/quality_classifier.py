"""DCLM-style quality classifier: hashed word and character n-grams, a logistic-loss linear model.

DCLM trains a fastText classifier on reference text (OpenHermes-2.5 + ELI5) against random
RefinedWeb pages and keeps about the top 10% of documents by its score. This is the same
idea with scikit-learn: positives are reference text (books, curated prose), negatives are
ordinary web pages, and ``score`` returns P(positive) for each document.

Features: a ``HashingVectorizer`` over words and punctuation marks (``word_ngrams``; word
bigrams carry word order, which plain bag-of-words lacks) and, when ``char_ngrams`` is set,
a second one over character n-grams inside word boundaries (``char_wb``: robust to rare
words and typos). Each block is L2-normalised; no vocabulary is stored, so the model is the
weight vector alone. Model: ``SGDClassifier(loss="log_loss")`` with balanced class weights.
Training runs that scikit-learn pipeline; scoring computes the same features and score with
numpy (``models.hashed_ngrams``: equal to the bit, several times faster), so a saved model
scores the same whichever way, and ``model.joblib`` keeps its format.

Refused as bad input: the same file given as both classes, more than half of a class's texts
also in the other, and a held-out ROC-AUC below ``min_roc_auc`` (0.6; 0.5 is chance).

The saved model is the one trained on the training split, so the metrics in ``model.json``
describe exactly the model that scores documents. ``model.joblib`` is a pickle: load models
only from folders you trust.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import shutil
import time
import uuid
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import joblib
import numpy as np
import sklearn
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from scipy.special import expit
from sklearn.pipeline import FeatureUnion, Pipeline

from models.hashed_ngrams import TOKEN_PATTERN, HashedLinearModel
from pretrain.config import ClassifierConfig
from pretrain.outputs import check_replaceable, json_field_is
from pretrain.provenance import code_version, replace_dir

__all__ = [
    "FORMAT_VERSION", "MIN_DOCS_PER_CLASS", "EMPTY_TEXT_SCORE", "LOADS", "IncompatibleModelError",
    "QualityClassifier", "train_classifier", "load_cached", "load_count", "precision_at_k",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.joblib"
META_FILE = "model.json"
MIN_DOCS_PER_CLASS = 10
EMPTY_TEXT_SCORE = 0.0  # a text without a letter or digit is not prose: it is scored last
DCLM_KEEP_FRACTION = 0.10
MAX_SHARED_FRACTION = 0.5  # more of a class than this also in the other class: refused
TRAIN_HINT = "pretrain quality train-classifier --positive REFERENCE_TEXT --negative WEB_SHARDS --output {dir}"
_HAS_WORD = re.compile(r"\w")


class IncompatibleModelError(ValueError):
    """A saved model written by an incompatible format version or scikit-learn release."""


def build_pipeline(cfg: ClassifierConfig) -> Pipeline:
    hashing = dict(n_features=cfg.n_features, alternate_sign=False, norm="l2", dtype=np.float32)
    blocks = [("words", HashingVectorizer(
        analyzer="word", ngram_range=tuple(cfg.word_ngrams), token_pattern=TOKEN_PATTERN, **hashing))]
    if cfg.char_ngrams:
        blocks.append(("chars", HashingVectorizer(analyzer="char_wb", ngram_range=tuple(cfg.char_ngrams), **hashing)))
    model = SGDClassifier(
        loss="log_loss", alpha=cfg.alpha, max_iter=cfg.epochs, tol=None,  # tol=None: exactly `epochs` passes
        random_state=cfg.seed, class_weight="balanced",
    )
    return Pipeline([("features", FeatureUnion(blocks)), ("model", model)])


def _clip(texts: Sequence[str | None], max_chars: int) -> list[str]:
    return [(text or "")[:max_chars] for text in texts]


def _has_words(texts: list[str]) -> np.ndarray:
    return np.fromiter((_HAS_WORD.search(text) is not None for text in texts), dtype=bool, count=len(texts))


class QualityClassifier:
    """A trained pipeline plus its ``model.json`` metadata.

    Scoring runs the pipeline's features and weights through ``models.hashed_ngrams`` (the same
    scores to the bit, about 5x faster); a pipeline with settings that module does not
    reproduce is scored by scikit-learn.
    """

    def __init__(self, pipeline: Pipeline, metadata: dict[str, Any]):
        self.pipeline = pipeline
        self.metadata = metadata
        self.max_chars = int(metadata["config"]["max_chars_per_doc"])
        self.fast = HashedLinearModel.from_pipeline(pipeline)

    def score(self, texts: Sequence[str | None]) -> np.ndarray:
        """P(positive) per text, in [0, 1], as float64, in one batched pass.

        Texts are cut to ``max_chars_per_doc``. A text with no letter or digit (empty,
        whitespace, ``None``, only symbols) gets ``EMPTY_TEXT_SCORE`` (0.0).
        """
        clipped = _clip(texts, self.max_chars)
        scores = np.full(len(clipped), EMPTY_TEXT_SCORE, dtype=np.float64)
        wordy = _has_words(clipped)
        if wordy.any():
            batch = [text for text, keep in zip(clipped, wordy) if keep]
            scores[wordy] = self._positive_probability(batch)
        return scores

    def _positive_probability(self, texts: list[str]) -> np.ndarray:
        if self.fast is not None:
            return expit(self.fast.decision(texts))  # as SGDClassifier.predict_proba computes it
        features = self.pipeline["features"].transform(texts)
        positive = list(self.pipeline["model"].classes_).index(1)
        return self.pipeline["model"].predict_proba(features)[:, positive]

    def save(self, output_dir: Path, *, inputs: Sequence[Path | str] = (), force: bool = False) -> Path:
        """Write ``model.joblib`` and ``model.json`` into a temporary sibling folder, then rename it.

        Replaces only an earlier classifier or an empty folder (another with ``force``), never
        a folder holding one of ``inputs`` (``check_output``).
        """
        output_dir = Path(output_dir)
        check_output(output_dir, inputs, force)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            joblib.dump(self.pipeline, tmp / MODEL_FILE, compress=3)
            (tmp / META_FILE).write_text(json.dumps(self.metadata, indent=2, sort_keys=True, default=str) + "\n")
            replace_dir(tmp, output_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return output_dir

    @classmethod
    def load(cls, model_dir: Path | str) -> QualityClassifier:
        model_dir = Path(model_dir)
        meta_path, model_path = model_dir / META_FILE, model_dir / MODEL_FILE
        for path in (meta_path, model_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"no quality classifier at {model_dir} ({path.name} is missing); "
                    f"train one first: {TRAIN_HINT.format(dir=model_dir)}"
                )
        metadata = json.loads(meta_path.read_text())
        _check_compatible(metadata, model_dir)
        pipeline = joblib.load(model_path)
        LOADS[str(model_dir.resolve())] += 1
        return cls(pipeline, metadata)


def is_classifier(folder: Path) -> bool:
    """True for a folder ``QualityClassifier.save`` wrote (its model.json's kind)."""
    return json_field_is(Path(folder) / META_FILE, "kind", "quality_classifier")


def check_output(output_dir: Path, inputs: Sequence[Path | str] = (), force: bool = False) -> None:
    """Raise OutputRefused unless a classifier may replace ``output_dir`` (``pretrain.outputs``)."""
    check_replaceable(Path(output_dir), "train-classifier", is_classifier, inputs, force, marker=META_FILE)


def _check_compatible(metadata: dict, model_dir: Path) -> None:
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise IncompatibleModelError(
            f"{model_dir}: model format version {version!r}, this code reads version {FORMAT_VERSION}; "
            f"retrain with: {TRAIN_HINT.format(dir=model_dir)}"
        )
    saved = str(metadata.get("sklearn_version", "?"))
    saved_parts, ours = saved.split("."), sklearn.__version__.split(".")
    if saved_parts[0] != ours[0]:
        raise IncompatibleModelError(
            f"{model_dir}: trained with scikit-learn {saved}, this is {sklearn.__version__} "
            f"(different major version); retrain with: {TRAIN_HINT.format(dir=model_dir)}"
        )
    if saved_parts[:2] != ours[:2]:
        warnings.warn(
            f"{model_dir}: trained with scikit-learn {saved}, loading with {sklearn.__version__}; "
            "scores may differ slightly, retrain to be sure", stacklevel=3,
        )


LOADS: Counter[str] = Counter()
"""Models read from disk in this process, per resolved model folder (``load_cached`` hits do not count)."""


def load_count() -> int:
    return sum(LOADS.values())


@functools.lru_cache(maxsize=8)
def _load_cached(resolved_dir: str, meta_mtime_ns: int) -> QualityClassifier:
    return QualityClassifier.load(resolved_dir)


def load_cached(model_dir: Path | str) -> QualityClassifier:
    """One load per process per model folder (a retrained folder, with a newer model.json, reloads)."""
    resolved = Path(model_dir).resolve()
    meta = resolved / META_FILE
    mtime = meta.stat().st_mtime_ns if meta.is_file() else -1
    return _load_cached(str(resolved), mtime)


def precision_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of positives among the ``k`` highest-scored documents (ties broken by order)."""
    top = np.argsort(-scores, kind="stable")[:k]
    return float(np.mean(labels[top])) if k > 0 else float("nan")


def held_out_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC, accuracy at 0.5 and precision when keeping the top-scored share.

    ``precision_at_keep_rate``: k = the number of held-out positives (the keep rate equals
    the positive share, so precision equals recall here). ``precision_at_10pct_keep``: k =
    ceil(10% of held-out documents), DCLM's keep rate.
    """
    n_pos = int(labels.sum())
    k10 = max(1, math.ceil(DCLM_KEEP_FRACTION * len(labels)))
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "accuracy": float(accuracy_score(labels, scores >= 0.5)),
        "keep_rate": n_pos / len(labels),
        "precision_at_keep_rate": precision_at_k(labels, scores, n_pos),
        "precision_at_10pct_keep": precision_at_k(labels, scores, k10),
        "score_at_10pct_keep": float(np.sort(scores)[::-1][k10 - 1]),
    }


def _check_counts(n_pos: int, n_neg: int, test_fraction: float) -> None:
    if min(n_pos, n_neg) < MIN_DOCS_PER_CLASS:
        raise ValueError(
            f"too few documents to train a quality classifier: {n_pos} positive and {n_neg} negative "
            f"non-empty documents; need at least {MIN_DOCS_PER_CLASS} of each"
        )
    n_test = math.ceil(test_fraction * (n_pos + n_neg))
    if n_test < 2 or n_pos + n_neg - n_test < 2:
        raise ValueError(
            f"test_fraction {test_fraction} of {n_pos + n_neg} documents leaves {n_test} held out; "
            "need at least 2 held out and 2 for training"
        )


def train_classifier(
    positives: list[str], negatives: list[str], output_dir: Path, cfg: ClassifierConfig,
    *, sources: dict | None = None, inputs: Sequence[Path | str] = (), force: bool = False,
) -> dict:
    """Train on a stratified split, measure on the held-out part, save; returns model.json's content.

    Documents without a letter or digit are left out (and counted); ``sources`` (file lists,
    dataset identities) is recorded as given. ``inputs`` and ``force``: see ``QualityClassifier.save``
    (which checks the output folder; the flow checks it once more before the corpora are read).
    """
    started = time.perf_counter()
    pos = [t for t in _clip(positives, cfg.max_chars_per_doc) if _HAS_WORD.search(t)]
    neg = [t for t in _clip(negatives, cfg.max_chars_per_doc) if _HAS_WORD.search(t)]
    _check_counts(len(pos), len(neg), cfg.test_fraction)
    shared = shared_texts(pos, neg)
    texts = pos + neg
    labels = np.array([1] * len(pos) + [0] * len(neg))
    train_x, test_x, train_y, test_y = train_test_split(
        texts, labels, test_size=cfg.test_fraction, stratify=labels, random_state=cfg.seed)
    pipeline = build_pipeline(cfg).fit(train_x, train_y)
    counts = {
        "positives": len(pos), "negatives": len(neg),
        "skipped_empty_positives": len(positives) - len(pos), "skipped_empty_negatives": len(negatives) - len(neg),
        "train_positives": int(train_y.sum()), "train_negatives": int(len(train_y) - train_y.sum()),
        "test_positives": int(test_y.sum()), "test_negatives": int(len(test_y) - test_y.sum()),
        "shared_texts": shared,
    }
    metadata = _metadata(cfg, counts, sources)
    classifier = QualityClassifier(pipeline, metadata)
    metadata["metrics"] = held_out_metrics(test_y, classifier.score(test_x))
    _check_separates(metadata["metrics"]["roc_auc"], cfg)
    metadata["training_seconds"] = round(time.perf_counter() - started, 3)
    classifier.save(Path(output_dir), inputs=inputs, force=force)
    return metadata


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "surrogatepass"), digest_size=8).digest()


def shared_texts(positives: list[str], negatives: list[str]) -> int:
    """How many texts are in both classes (same words, any spacing); refuse when over half of a class."""
    pos, neg = [_text_key(t) for t in positives], [_text_key(t) for t in negatives]
    pos_set, neg_set = set(pos), set(neg)
    pos_shared, neg_shared = sum(k in neg_set for k in pos), sum(k in pos_set for k in neg)
    for shared, total, kind, other in ((pos_shared, len(pos), "positive", "negatives"),
                                       (neg_shared, len(neg), "negative", "positives")):
        if shared > MAX_SHARED_FRACTION * total:
            raise ValueError(
                f"{shared} of the {total} {kind} texts ({shared / total:.0%}) are also {other}: a classifier cannot "
                f"learn to tell a class from itself; give reference text as --positive and web documents "
                f"as --negative")
    return len(pos_set & neg_set)


def _check_separates(roc_auc: float, cfg: ClassifierConfig) -> None:
    if roc_auc < cfg.min_roc_auc:
        raise ValueError(
            f"held-out ROC-AUC {roc_auc:.3f} is below min_roc_auc {cfg.min_roc_auc}: the classifier cannot tell "
            f"positives from negatives (0.5 is chance), so it is not saved; check that --positive and --negative "
            f"hold different kinds of text (or lower quality.classifier.min_roc_auc)")


def _metadata(cfg: ClassifierConfig, counts: dict, sources: dict | None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kind": "quality_classifier",
        "code_version": code_version(__name__),
        "sklearn_version": sklearn.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"),
        "labels": {"1": "positive (reference text)", "0": "negative (web text)"},
        "empty_text_score": EMPTY_TEXT_SCORE,
        "counts": counts,
        "sources": sources or {},
    }
