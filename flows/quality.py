"""Prefect flows for model-based quality: train the perplexity model and the classifier,
score shards on Ray (models loaded once per worker), keep by a rule.

Training tasks are cached on (training data identity, config, code version of what their
work imports, output folder). Scoring goes through the shard runner: one Ray actor per CPU
holds the models (``tasks.quality.score.Scorer``, loaded once) and scores the shards sent to
it, a Prefect task per shard, cached like every stage; then the cut-offs, then a second job
applies them shard by shard.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import file_identity, funnel_table, parameter_policy, parquet_shards
from flows.runner import Shard, ShardJob, StageRun, stage_run
from flows.stage import Pipeline, Stage
from models.perplexity import check_model_folder
from pretrain.config import ClassifierConfig, PerplexityConfig, PipelineConfig, QualityConfig, RayConfig
from pretrain.paths import PathPolicy
from pretrain.provenance import code_version, stable_hash
from tasks.demo_reference import write_demo_reference
from tasks.quality.classifier import train_classifier_from_corpora
from tasks.quality.corpus import check_distinct_corpora, corpus_identity
from tasks.quality.perplexity import train_perplexity_model
from tasks.quality.score import (
    Cutoffs, Scorer, apply_scores, cutoffs_from_scores, model_loads, sample_scores, score_held,
)


# ---------------------------------------------------------------- training
# Whole-dataset work, one task each: Prefect tasks of their own, not shard jobs.


def _train_key(work: Callable) -> Callable:
    """A training task's cache key: its text's identity, config, document cap, output folder (and
    whether it holds a model), and the code version of ``work``'s module (all that it imports)."""

    def key(context, parameters: dict) -> str:
        specs = [s for name in ("reference", "positive", "negative") for s in parameters.get(name, [])]
        output = Path(parameters["output_dir"])
        return stable_hash("train", context.task.name, corpus_identity(specs), parameters["config"].model_dump(),
                           parameters.get("max_documents"), code_version(work.__module__), str(output),
                           (output / "model.json").is_file())

    key.work = work  # what the key's code version is taken from
    return key


@task(name="train-perplexity", cache_key_fn=_train_key(train_perplexity_model), persist_result=True)
def train_perplexity_task(reference: list[str], output_dir: str, config: PerplexityConfig, force: bool = False) -> dict:
    model_dir = train_perplexity_model(reference, Path(output_dir), config, force=force)
    return json.loads((Path(model_dir) / "model.json").read_text())


@task(name="train-classifier", cache_key_fn=_train_key(train_classifier_from_corpora), persist_result=True)
def train_classifier_task(positive: list[str], negative: list[str], output_dir: str, config: ClassifierConfig,
                          max_documents: int, force: bool = False) -> dict:
    return train_classifier_from_corpora(positive, negative, output_dir, config, max_documents, force)


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
    check_distinct_corpora(positive, negative)
    return train_classifier_task(positive, negative, output_dir, config, max_documents, force)


# ---------------------------------------------------------------- scoring

# Pass 1 on Ray actors that each hold the models (loaded once per actor), pass 2 as Ray tasks.
SCORE = ShardJob(name="quality-score", work=score_held, run_name="score-{label}", holder=Scorer)
APPLY = ShardJob(name="quality-apply", work=apply_scores, run_name="apply-{label}")


def model_identities(cfg: QualityConfig) -> list:
    """The identity (path, size, mtime) of each given model's model.json: a retrained model changes it."""
    models = [str(Path(p).resolve() / "model.json") for p in (cfg.perplexity_model, cfg.classifier_model) if p]
    return [file_identity(m) for m in models]


def score_shards(shards: list[Path], work: Path, cfg: QualityConfig) -> list[Shard]:
    """One scoring task per shard, keyed on its identity, the models' identities and its score file."""
    models = model_identities(cfg)
    chosen = cfg.model_dump(include={"perplexity_model", "classifier_model"})
    return [Shard(label=shard.stem, args={"in_path": shard, "scores_path": work / shard.name},
                  key=(file_identity(shard), models, chosen, str(work / shard.name)),
                  outputs=(work / shard.name,), shown_as=str(shard)) for shard in shards]


def apply_shards(scored: list[Path], work: Path, out: Path, cutoffs: Cutoffs, model_lang: str | None) -> list[Shard]:
    """One task per scored shard, keyed on the shard, its score file, the cut-offs and its outputs."""
    shards = []
    for shard in scored:
        scores, targets = work / shard.name, (out / "scored" / shard.name, out / "kept" / shard.name)
        shards.append(Shard(label=shard.stem, args={"in_path": shard, "scores_path": scores, "scored_path": targets[0],
                                                    "kept_path": targets[1], "cutoffs": cutoffs,
                                                    "model_lang": model_lang},
                            key=(file_identity(shard), file_identity(scores), cutoffs.__dict__, model_lang,
                                 *map(str, targets)),
                            outputs=targets, shown_as=str(shard)))
    return shards


def _model_lang(cfg: QualityConfig) -> str | None:
    if not cfg.perplexity_model:
        return None
    meta = Path(cfg.perplexity_model) / "model.json"
    if not meta.is_file():
        raise FileNotFoundError(f"no perplexity model at {cfg.perplexity_model} (missing {meta}); "
                                f"make one with: pretrain quality train-perplexity --reference ... --output DIR")
    return json.loads(meta.read_text()).get("lang")


def _check_models(cfg: QualityConfig) -> None:
    if not cfg.perplexity_model and not cfg.classifier_model:
        raise ValueError("give --perplexity-model and/or --classifier-model to score with")
    if cfg.perplexity_model:
        check_model_folder(cfg.perplexity_model)  # here, not in each Ray actor: a bad model fails once, by name
    if cfg.classifier_model and not (Path(cfg.classifier_model) / "model.json").is_file():
        raise FileNotFoundError(f"no classifier model at {cfg.classifier_model}; make one with: "
                                f"pretrain quality train-classifier --positive ... --negative ... --output DIR")


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
    started = time.perf_counter()
    _check_models(config)
    model_lang = _model_lang(config)
    shards = parquet_shards(input_dir)
    with stage_run("quality", output_dir, ray_config) as run:  # claim removes stale shards: only with the lock
        return _score(config, shards, model_lang, run, started)


def _score(config: QualityConfig, shards: list[Path], model_lang: str | None, run: StageRun, started: float) -> dict:
    """Score every shard, take the cut-offs from a sample of all scores, then apply them to each."""
    work = run.out / ".scores"
    run.claim([shard.stem for shard in shards], ("scored/*.parquet", "kept/*.parquet", ".scores/*.parquet"))
    run.logger.info("scoring %d shard(s) with %s", len(shards),
                    ", ".join(p for p in (config.perplexity_model, config.classifier_model) if p))
    reports = run.map(SCORE, score_shards(shards, work, config), holder_args={"config": config}, ask=model_loads)
    loads = run.answers
    scored_ok = sorted(Path(r["input"]) for r in reports)
    ppl, quality = sample_scores([work / s.name for s in scored_ok], config.percentile_sample_rows)
    cutoffs = cutoffs_from_scores(config, ppl, quality)
    applied = sorted(run.map(APPLY, apply_shards(scored_ok, work, run.out, cutoffs, model_lang)),
                     key=lambda report: report["input"])
    summary = summarize(applied, run.failures, cutoffs, run.cache_hits[SCORE.name], loads,
                        time.perf_counter() - started)
    run.logger.info("quality: kept %d of %d documents; cut-offs %s", summary["documents_kept"],
                    summary["documents_in"], summary["cutoffs"])
    return run.finish(summary, config=config.model_dump(), inputs=[str(s) for s in shards],
                      code=code_version(*SCORE.modules(), *APPLY.modules()), total=len(shards),
                      publish=functools.partial(publish, out=run.out, ppl=ppl, quality=quality, cutoffs=cutoffs))


# ---------------------------------------------------------------- the quality stage of the end-to-end run


def quality_models(pipeline: Pipeline, logger) -> tuple[dict, str | None]:
    """Model folders to score with: the recipe's, else trained here; (updates for QualityConfig, why skipped)."""
    cfg = pipeline.recipe
    quality = cfg.quality
    if quality.perplexity_model or quality.classifier_model:
        return {}, None
    reference = list(cfg.quality_training.reference)
    if not reference and cfg.demo_data:
        reference = [str(write_demo_reference(pipeline.root / "demo-data" / "reference"))]
    if not reference:
        return {}, ("no reference text and no model folders: set quality_training.reference, or "
                    "quality.perplexity_model / quality.classifier_model")
    negatives = str(pipeline.folder("ingest") if cfg.quality_training.negatives == "ingest"
                    else pipeline.folder("filter") / "removed")
    models = pipeline.folder("quality") / "models"
    logger.info("quality: training the perplexity model and the classifier on %s (negatives: %s)", reference, negatives)
    train_perplexity_flow(reference=reference, output_dir=str(models / "perplexity"), config=quality.perplexity)
    train_classifier_flow(positive=reference, negative=[negatives], output_dir=str(models / "classifier"),
                          config=quality.classifier, max_documents=cfg.quality_training.max_documents)
    return {"perplexity_model": str(models / "perplexity"), "classifier_model": str(models / "classifier")}, None


def reference_identity(cfg: PipelineConfig) -> object:
    if cfg.quality.perplexity_model or cfg.quality.classifier_model:
        return model_identities(cfg.quality)  # a model retrained in place reruns quality
    if cfg.quality_training.reference:
        return corpus_identity(cfg.quality_training.reference)
    return "demo-reference" if cfg.demo_data else None


def key_config(pipeline: Pipeline) -> dict:
    """Besides its config: the reference text (or models) it is trained on, the key of its negatives' stage."""
    cfg = pipeline.recipe
    negatives = "ingest" if cfg.quality_training.negatives == "ingest" else "filter"
    return {"quality": cfg.quality, "training": cfg.quality_training, "reference": reference_identity(cfg),
            "negatives_from": pipeline.results[negatives]["key"]}


def run_in_pipeline(pipeline: Pipeline) -> dict:
    logger = get_run_logger()
    updates, skipped = quality_models(pipeline, logger)
    if skipped:
        logger.warning("quality: skipped: %s", skipped)
        return {"skipped": skipped}
    return score_flow(config=pipeline.recipe.quality.model_copy(update=updates), input_dir=str(pipeline.input_dir),
                      output_dir=str(pipeline.folder("quality")), ray_config=pipeline.recipe.ray)


def kept_or_input(pipeline: Pipeline, result: dict) -> Path:
    """The next stage reads the kept documents; a skipped quality stage passes its input on."""
    return pipeline.input_dir if result.get("skipped") else pipeline.folder("quality") / "kept"


STAGE = Stage(
    name="quality", folder="quality", section="quality", run=run_in_pipeline, jobs=(SCORE, APPLY), key_config=key_config,
    output=kept_or_input, products=("kept/*.parquet", "scored/*.parquet", "models/*/model.json"),
    reasons=("unscorable_text", "perplexity_too_high", "quality_too_low",
             "not_scored_other_language"),  # tasks/quality/score.py; the last is counted, and kept
)
