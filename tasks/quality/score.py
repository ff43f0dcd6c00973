"""Score shards with the perplexity model and the quality classifier, then keep by a rule.

Two passes, so cut-offs can come from the data being scored:

1. ``score_shard``: one small score file per shard (``perplexity``,
   ``quality_score``, in row order) -- the models run here, loaded once per worker.
2. ``cutoffs_from_scores`` reads a sample of all score files; ``apply_scores``
   writes each shard with its scores and ``ppl_bucket`` to ``scored/`` and the rows
   the keep rule accepts to ``kept/``.

Outcomes that are not a number: text without letters gets no perplexity (bucket
``none``); a document whose ``lang`` differs from the perplexity model's language
is not scored by it (bucket ``other_language``). Under ``max_perplexity`` the
first are dropped (``unscorable_text``) and the second kept and counted
(``not_scored_other_language``): the model cannot judge them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.config import QualityConfig
from tasks.shards import ShardWriter

SCORE_SCHEMA = pa.schema([("perplexity", pa.float64()), ("quality_score", pa.float64())])
BATCH_ROWS = 512


@dataclass(frozen=True)
class Cutoffs:
    """Perplexity bucket cut-offs and the keep threshold actually applied."""

    ppl_head: float | None = None
    ppl_middle: float | None = None
    min_quality: float | None = None
    max_perplexity: float | None = None


class Scorer:
    """The models of one Ray actor (``ShardJob.holder``): loaded once, when the actor starts,
    so each worker process reads them once however many shards it scores."""

    def __init__(self, config: QualityConfig):
        self.config = config
        _load_models(config)


def score_held(scorer: Scorer, in_path: Path, scores_path: Path) -> dict:
    """Pass 1 on an actor: ``score_shard`` with the models the actor holds."""
    return score_shard(Path(in_path), Path(scores_path), scorer.config)


def model_loads(scorer: Scorer) -> dict:
    """How often this actor's process loaded each kind of model (asked of every actor at the end)."""
    from models import perplexity, quality_classifier

    return {"pid": os.getpid(), "perplexity": sum(perplexity.LOADS.values()),
            "classifier": sum(quality_classifier.LOADS.values())}


def _load_models(cfg: QualityConfig):
    from models.perplexity import load_cached as load_perplexity
    from models.quality_classifier import load_cached as load_classifier

    ppl = load_perplexity(Path(cfg.perplexity_model)) if cfg.perplexity_model else None
    clf = load_classifier(Path(cfg.classifier_model)) if cfg.classifier_model else None
    return ppl, clf


def _batch_perplexities(model, texts: list[str], langs: list[str | None]) -> list[float | None]:
    if model is None:
        return [None] * len(texts)
    return [model.perplexity(text) if (not lang or lang == model.lang) else None for text, lang in zip(texts, langs)]


def score_shard(in_path: Path, scores_path: Path, cfg: QualityConfig) -> dict:
    """Pass 1: score every row of one shard into a small Parquet file of scores."""
    started = time.perf_counter()
    ppl_model, classifier = _load_models(cfg)
    source = pq.ParquetFile(in_path)
    names = source.schema_arrow.names
    if "text" not in names:
        raise ValueError(f"{in_path}: a document shard needs a `text` column, it has {names}")
    columns = ["text"] + (["lang"] if "lang" in names else [])
    rows = 0
    with ShardWriter(scores_path, SCORE_SCHEMA, rows_per_group=50_000) as writer:
        for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            texts = [t or "" for t in batch.column("text").to_pylist()]
            langs = batch.column("lang").to_pylist() if "lang" in columns else [None] * len(texts)
            perplexities = _batch_perplexities(ppl_model, texts, langs)
            qualities = classifier.score(texts).tolist() if classifier is not None else [None] * len(texts)
            writer.write_many({"perplexity": p, "quality_score": q} for p, q in zip(perplexities, qualities))
            rows += len(texts)
    seconds = time.perf_counter() - started
    return {"input": str(in_path), "scores": str(scores_path), "documents": rows, "seconds": round(seconds, 3),
            "docs_per_s": round(rows / seconds, 1) if seconds > 0 else None}


def sample_scores(score_files: list[Path], max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """An evenly strided sample of (perplexity, quality_score) across all score files."""
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in score_files)
    stride = max(1, total // max_rows)
    ppl, quality = [], []
    for path in score_files:
        table = pq.read_table(path)
        ppl.append(table.column("perplexity").to_numpy(zero_copy_only=False)[::stride])
        quality.append(table.column("quality_score").to_numpy(zero_copy_only=False)[::stride])
    as_array = lambda parts: np.concatenate(parts).astype(float) if parts else np.array([])  # noqa: E731
    return as_array(ppl), as_array(quality)


def cutoffs_from_scores(cfg: QualityConfig, ppl: np.ndarray, quality: np.ndarray) -> Cutoffs:
    """Bucket cut-offs (fixed or percentiles of the sample) and the keep threshold."""
    ppl = ppl[~np.isnan(ppl)]
    quality = quality[~np.isnan(quality)]
    head = middle = None
    if cfg.perplexity.cutoffs is not None:
        head, middle = cfg.perplexity.cutoffs
    elif ppl.size:
        head, middle = (float(v) for v in np.percentile(ppl, [cfg.perplexity.head_percentile,
                                                               cfg.perplexity.middle_percentile]))
    min_quality = cfg.min_quality
    if cfg.keep_fraction is not None:
        if not quality.size:
            raise ValueError("keep_fraction needs quality scores: give a classifier model")
        min_quality = float(np.quantile(quality, 1.0 - cfg.keep_fraction))
    if cfg.max_perplexity is not None and cfg.perplexity_model is None:
        raise ValueError("max_perplexity needs a perplexity model")
    if cfg.min_quality is not None and cfg.classifier_model is None:
        raise ValueError("min_quality needs a classifier model")
    return Cutoffs(ppl_head=head, ppl_middle=middle, min_quality=min_quality, max_perplexity=cfg.max_perplexity)


def bucket_of(perplexity: float | None, lang: str | None, model_lang: str | None, cutoffs: Cutoffs) -> str:
    if model_lang is None:
        return "none"
    if lang and lang != model_lang:
        return "other_language"
    if perplexity is None or cutoffs.ppl_head is None:
        return "none"
    if perplexity < cutoffs.ppl_head:
        return "head"
    return "middle" if perplexity < cutoffs.ppl_middle else "tail"


def keep_reason(perplexity: float | None, quality: float | None, bucket: str, cutoffs: Cutoffs) -> str | None:
    """None to keep; otherwise why the row is dropped (or ``_kept`` notes, see module doc)."""
    if cutoffs.max_perplexity is not None:
        if bucket == "other_language":
            return None
        if perplexity is None:
            return "unscorable_text"
        if perplexity > cutoffs.max_perplexity:
            return "perplexity_too_high"
    if cutoffs.min_quality is not None and (quality is None or quality < cutoffs.min_quality):
        return "quality_too_low"
    return None


def apply_scores(in_path: Path, scores_path: Path, scored_path: Path, kept_path: Path, cutoffs: Cutoffs,
                 model_lang: str | None) -> dict:
    """Pass 2: write the shard with its scores and bucket, and the kept subset."""
    source = pq.ParquetFile(in_path)
    scores = pq.read_table(scores_path)
    if scores.num_rows != source.metadata.num_rows:
        raise ValueError(f"{scores_path} has {scores.num_rows} rows for {source.metadata.num_rows} in {in_path}")
    schema = source.schema_arrow
    for name in ("perplexity", "quality_score", "ppl_bucket"):
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    schema = schema.append(pa.field("perplexity", pa.float64())).append(pa.field("quality_score", pa.float64()))
    schema = schema.append(pa.field("ppl_bucket", pa.string()))
    ppl_all = scores.column("perplexity").to_pylist()
    quality_all = scores.column("quality_score").to_pylist()
    counts, buckets = Counter(), Counter()
    offset = 0
    with ShardWriter(scored_path, schema) as scored, ShardWriter(kept_path, schema) as kept:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                ppl, quality = ppl_all[offset], quality_all[offset]
                offset += 1
                bucket = bucket_of(ppl, row.get("lang"), model_lang, cutoffs)
                out = {**row, "perplexity": ppl, "quality_score": quality, "ppl_bucket": bucket}
                scored.write(out)
                buckets[bucket] += 1
                if bucket == "other_language" and cutoffs.max_perplexity is not None:
                    counts["not_scored_other_language"] += 1
                reason = keep_reason(ppl, quality, bucket, cutoffs)
                if reason:
                    counts[reason] += 1
                else:
                    counts["kept"] += 1
                    kept.write(out)
    kept_n = counts.pop("kept", 0)
    notes = {k: counts.pop(k) for k in ("not_scored_other_language",) if k in counts}
    return {"input": str(in_path), "documents_in": offset, "documents_kept": kept_n,
            "dropped": dict(sorted(counts.items())), "buckets": dict(sorted(buckets.items())), "notes": notes}
