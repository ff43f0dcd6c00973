"""Prefect flows for model-based quality: train the perplexity model and the classifier,
score shards on Ray (models loaded once per worker), keep by a rule.

Training tasks are cached on (training data identity, config, code version, output
folder). Scoring runs one Ray actor per CPU; each actor loads the models once and
scores the shards sent to it; a Prefect task per shard, cached like every stage.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from pathlib import Path

import ray
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import (
    SHARD_TASK_OPTIONS, claim_output, file_identity, funnel_table, gather, output_lock, parameter_policy,
    parquet_shards, write_report,
)
from pretrain.config import ClassifierConfig, PerplexityConfig, QualityConfig, RayConfig
from pretrain.paths import PathPolicy
from pretrain.provenance import code_version, stable_hash, write_info_json
from pretrain.outputs import local_inputs
from tasks.quality.corpus import corpus_files, corpus_identity, sample_corpus
from tasks.quality.score import (
    QUALITY_MODULES, Cutoffs, apply_scores, cutoffs_from_scores, sample_scores, score_shard,
)
from tasks.ray_runtime import cluster_cpus, ensure_ray


class QualityFailed(RuntimeError):
    """Some shards failed after their retries; report.json lists them."""


# ---------------------------------------------------------------- training


def _train_key(context, parameters: dict) -> str:
    specs = [s for key in ("reference", "positive", "negative") for s in parameters.get(key, [])]
    output = Path(parameters["output_dir"])
    return stable_hash("train", context.task.name, corpus_identity(specs), parameters["config"].model_dump(),
                       parameters.get("max_documents"), code_version(*QUALITY_MODULES), str(output),
                       (output / "model.json").is_file())


@task(name="train-perplexity", cache_key_fn=_train_key, persist_result=True)
def train_perplexity_task(reference: list[str], output_dir: str, config: PerplexityConfig, force: bool = False) -> dict:
    from tasks.quality.perplexity import train_perplexity_model

    model_dir = train_perplexity_model(reference, Path(output_dir), config, force=force)
    return json.loads((Path(model_dir) / "model.json").read_text())


@task(name="train-classifier", cache_key_fn=_train_key, persist_result=True)
def train_classifier_task(positive: list[str], negative: list[str], output_dir: str, config: ClassifierConfig,
                          max_documents: int, force: bool = False) -> dict:
    from models.quality_classifier import check_output, train_classifier

    inputs = local_inputs(positive + negative) + corpus_files(positive + negative)
    check_output(Path(output_dir), inputs, force)  # before the corpora are read
    positives = sample_corpus(positive, max_documents, seed=config.seed)
    negatives = sample_corpus(negative, max_documents, seed=config.seed + 1)
    sources = {"positive": corpus_identity(positive), "negative": corpus_identity(negative)}
    return train_classifier(positives, negatives, Path(output_dir), config, sources=sources, inputs=inputs, force=force)


def confine_corpus(policy: PathPolicy, specs: list[str], field: str) -> list[str]:
    """Training text locations of an untrusted run: under the data root, or URLs with an allowed scheme."""
    return [policy.location(spec, f"{field}[{i}]") for i, spec in enumerate(specs)]


@flow(name="train-perplexity")
def train_perplexity_flow(reference: list[str], output_dir: str, config: PerplexityConfig = PerplexityConfig(),
                          force: bool = False) -> dict:
    """Train a CCNet-style KenLM perplexity model on reference text (text, JSONL or Parquet).

    ``output_dir`` may be an earlier model or an empty folder; ``force`` replaces another (never
    one that holds the reference text).

    A run from a deployment has its paths confined to the data root (``pretrain.paths``).
    """
    policy = parameter_policy()
    if policy is not None:
        reference = confine_corpus(policy, reference, "reference")
        output_dir = str(policy.path(output_dir, "output_dir"))
    return train_perplexity_task(reference, output_dir, config, force)


@flow(name="train-classifier")
def train_classifier_flow(positive: list[str], negative: list[str], output_dir: str,
                          config: ClassifierConfig = ClassifierConfig(), max_documents: int = 20_000,
                          force: bool = False) -> dict:
    """Train the quality classifier: reference text (positive) vs web documents (negative).

    ``output_dir`` may be an earlier classifier or an empty folder; ``force`` replaces another
    (never one that holds the training text).

    A run from a deployment has its paths confined to the data root (``pretrain.paths``).
    """
    policy = parameter_policy()
    if policy is not None:
        positive, negative = confine_corpus(policy, positive, "positive"), confine_corpus(policy, negative, "negative")
        output_dir = str(policy.path(output_dir, "output_dir"))
    from tasks.quality.corpus import check_distinct_corpora

    check_distinct_corpora(positive, negative)
    return train_classifier_task(positive, negative, output_dir, config, max_documents, force)


# ---------------------------------------------------------------- scoring


@ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)
class Scorer:
    """Holds the models of one worker process; they are loaded once, at construction."""

    def __init__(self, config: QualityConfig):
        from tasks.quality.score import _load_models

        self.config = config
        _load_models(config)

    def score(self, in_path: str, scores_path: str) -> dict:
        return score_shard(Path(in_path), Path(scores_path), self.config)

    def model_loads(self) -> dict:
        import os

        from models import perplexity, quality_classifier

        return {"pid": os.getpid(), "perplexity": sum(perplexity.LOADS.values()),
                "classifier": sum(quality_classifier.LOADS.values())}


def model_identities(cfg: QualityConfig) -> list:
    """The identity (path, size, mtime) of each given model's model.json: a retrained model changes it."""
    models = [str(Path(p).resolve() / "model.json") for p in (cfg.perplexity_model, cfg.classifier_model) if p]
    return [file_identity(m) for m in models]


def _score_key(context, parameters: dict) -> str:
    cfg: QualityConfig = parameters["config"]
    return stable_hash("quality-score", file_identity(parameters["in_path"]), model_identities(cfg),
                       cfg.model_dump(include={"perplexity_model", "classifier_model"}),
                       code_version(*QUALITY_MODULES), parameters["scores_path"])


@task(name="quality-score", task_run_name="score-{shard_name}", cache_key_fn=_score_key, **SHARD_TASK_OPTIONS)
def score_task(scorer, in_path: str, scores_path: str, config: QualityConfig, shard_name: str) -> dict:
    return ray.get(scorer.score.remote(in_path, scores_path))


@ray.remote(num_cpus=1, max_retries=3)
def _apply_on_ray(in_path: str, scores_path: str, scored_path: str, kept_path: str, cutoffs: Cutoffs,
                  model_lang: str | None) -> dict:
    return apply_scores(Path(in_path), Path(scores_path), Path(scored_path), Path(kept_path), cutoffs, model_lang)


def _model_lang(cfg: QualityConfig) -> str | None:
    if not cfg.perplexity_model:
        return None
    meta = Path(cfg.perplexity_model) / "model.json"
    if not meta.is_file():
        raise FileNotFoundError(f"no perplexity model at {cfg.perplexity_model} (missing {meta}); "
                                f"make one with: pretrain quality train-perplexity --reference ... --output DIR")
    return json.loads(meta.read_text()).get("lang")


def _check_models(cfg: QualityConfig) -> None:
    from models.perplexity import check_model_folder

    if not cfg.perplexity_model and not cfg.classifier_model:
        raise ValueError("give --perplexity-model and/or --classifier-model to score with")
    if cfg.perplexity_model:
        check_model_folder(cfg.perplexity_model)  # here, not in each Ray actor: a bad model fails once, by name
    if cfg.classifier_model and not (Path(cfg.classifier_model) / "model.json").is_file():
        raise FileNotFoundError(f"no classifier model at {cfg.classifier_model}; make one with: "
                                f"pretrain quality train-classifier --positive ... --negative ... --output DIR")


def _run_scoring(shards: list[Path], work: Path, cfg: QualityConfig, logger) -> tuple[list, list, int, list]:
    n_actors = max(1, min(len(shards), cluster_cpus()))
    scorers = [Scorer.remote(cfg) for _ in range(n_actors)]
    futures = {}
    for index, shard in enumerate(shards):
        runner = score_task.with_options(refresh_cache=not (work / shard.name).exists())
        futures[runner.submit(scorers[index % n_actors], str(shard), str(work / shard.name), cfg, shard.stem)] = shard
    reports, failures, hits = gather("quality-score", futures, logger)
    loads = ray.get([s.model_loads.remote() for s in scorers])
    for scorer in scorers:
        ray.kill(scorer)
    return reports, failures, hits, loads


def _histogram_png(values, title: str, cut_lines: list[float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = values[~np.isnan(values)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if values.size:
        ax.hist(values, bins=50, color="#4472c4")
    for x in cut_lines:
        ax.axvline(x, color="#c00000", linestyle="--")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def publish(summary: dict, out: Path, ppl, quality, cutoffs: Cutoffs) -> None:
    lines = funnel_table([("documents in", summary["documents_in"]), ("documents kept", summary["documents_kept"])])
    lines += ["", *funnel_table(list(summary["dropped"].items()), ("dropped, by reason", "documents"))]
    lines += ["", *funnel_table(list(summary["buckets"].items()), ("perplexity bucket", "documents"))]
    lines += ["", "Cut-offs: " + json.dumps(summary["cutoffs"])]
    create_markdown_artifact(key="quality-report", markdown="# Quality scoring\n\n" + "\n".join(lines),
                             description="Quality scoring funnel and cut-offs")
    plots = {"perplexity": (ppl, [c for c in (cutoffs.ppl_head, cutoffs.ppl_middle, cutoffs.max_perplexity) if c]),
             "quality_score": (quality, [cutoffs.min_quality] if cutoffs.min_quality is not None else [])}
    for name, (values, lines_at) in plots.items():
        if values.size and not all(map(lambda v: v != v, values)):
            png = _histogram_png(values, f"{name} (sample)", lines_at)
            (out / f"{name}_histogram.png").write_bytes(png)
            create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(),
                                  key=f"quality-{name.replace('_', '-')}-histogram",
                                  description=f"{name} histogram, cut-offs dashed")


def summarize(applied: list[dict], failures: list[dict], cutoffs: Cutoffs, hits: int, loads: list[dict],
              seconds: float) -> dict:
    dropped, buckets, notes = Counter(), Counter(), Counter()
    for report in applied:
        dropped.update(report["dropped"])
        buckets.update(report["buckets"])
        notes.update(report["notes"])
    documents_in = sum(r["documents_in"] for r in applied)
    return {
        "shards": len(applied) + len(failures), "failed": failures,
        "documents_in": documents_in, "documents_kept": sum(r["documents_kept"] for r in applied),
        "dropped": dict(sorted(dropped.items())), "buckets": dict(sorted(buckets.items())), "notes": dict(notes),
        "cutoffs": {k: v for k, v in cutoffs.__dict__.items() if v is not None},
        "cache_hits": hits, "model_loads": loads,
        "seconds": round(seconds, 2), "docs_per_s": round(documents_in / seconds, 1) if seconds > 0 else None,
        "reports": applied,
    }


def confine_parameters(policy: PathPolicy, config: QualityConfig, input_dir: str,
                       output_dir: str) -> tuple[QualityConfig, str, str]:
    """Check an untrusted run's folders and model folders before anything is read or written."""
    models = {name: str(policy.path(value, f"quality.{name}")) for name in ("perplexity_model", "classifier_model")
              if (value := getattr(config, name))}
    return (config.model_copy(update=models), str(policy.path(input_dir, "input_dir")),
            str(policy.path(output_dir, "output_dir")))


@flow(name="quality-score", task_runner=ThreadPoolTaskRunner(max_workers=16))
def score_flow(config: QualityConfig, input_dir: str, output_dir: str, ray_config: RayConfig = RayConfig()) -> dict:
    """Score every shard (perplexity, quality_score, ppl_bucket) into OUTPUT/scored and keep by the rule
    into OUTPUT/kept. A run from a deployment has its paths confined to the data root (``pretrain.paths``)."""
    policy = parameter_policy()
    if policy is not None:
        config, input_dir, output_dir = confine_parameters(policy, config, input_dir, output_dir)
    logger = get_run_logger()
    started = time.perf_counter()
    _check_models(config)
    model_lang = _model_lang(config)
    shards = parquet_shards(input_dir)
    with output_lock(Path(output_dir), "quality") as out:  # claim_output removes stale shards: only with the lock
        work = out / ".scores"
        stale = claim_output(out, "quality", [shard.stem for shard in shards], logger)
        ensure_ray(ray_config)
        logger.info("scoring %d shard(s) with %s", len(shards),
                    ", ".join(p for p in (config.perplexity_model, config.classifier_model) if p))
        reports, failures, hits, loads = _run_scoring(shards, work, config, logger)
        scored_ok = [Path(r["input"]) for r in reports]
        ppl, quality = sample_scores([work / s.name for s in scored_ok], config.percentile_sample_rows)
        cutoffs = cutoffs_from_scores(config, ppl, quality)
        refs = [_apply_on_ray.remote(str(s), str(work / s.name), str(out / "scored" / s.name),
                                     str(out / "kept" / s.name), cutoffs, model_lang) for s in sorted(scored_ok)]
        applied = ray.get(refs)
        summary = summarize(applied, failures, cutoffs, hits, loads, time.perf_counter() - started)
        summary["stale_removed"] = stale
        write_info_json(out, stage="quality", code=code_version(*QUALITY_MODULES), config=config.model_dump(),
                        inputs=[str(s) for s in shards])
        write_report(out, summary)
        publish(summary, out, ppl, quality, cutoffs)
        logger.info("quality: kept %d of %d documents; cut-offs %s", summary["documents_kept"], summary["documents_in"],
                    summary["cutoffs"])
        if failures:
            raise QualityFailed(f"{len(failures)} of {len(shards)} shards failed: "
                                + "; ".join(f"{f['input']} ({f['error']})" for f in failures))
        return summary
