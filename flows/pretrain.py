"""The end-to-end flow: (demo data ->) ingest -> filter -> dedup -> quality -> tokenize -> train.

Each stage is one cached Prefect task that runs the stage's own flow as a subflow
(whose per-shard tasks are cached and retried as always), and passes folders, never
data. A stage's cache key is Marin-style: the stage name, its config, its code
version, its output folder and the key of the stage it reads from (ingest: the
identity of its input files). So a rerun with nothing changed is one cache hit per
stage and recomputes nothing, and changing one stage's config reruns that stage and
the stages after it only. A stage whose outputs were deleted or modified since it
ran (``stage.json`` lists them with size and mtime) runs again.

OUTPUT/summary.json has the funnel (documents and tokens per stage), cache hits,
the model's path and its validation loss; the run gets a ``pretrain-report``
artifact (see ``flows.pretrain_report``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger, task

from flows.common import output_lock, parameter_policy, retry_if_transient
from flows.dedup import dedup_flow
from flows.filter import filter_flow
from flows.ingest import confine_parameters as confine_ingest
from flows.ingest import ingest_flow
from flows.pretrain_report import funnel, publish_report, scaling_position
from flows.quality import model_identities, score_flow, train_classifier_flow, train_perplexity_flow
from flows.tokenize import tokenize_flow
from flows.train import train_flow
from pretrain.config import PipelineConfig, TrainConfig
from pretrain.outputs import check_replaceable
from pretrain.provenance import atomic_write_text, code_version, stable_hash
from tasks.demo import write_demo_data
from tasks.demo_reference import write_demo_reference
from tasks.dedup import DEDUP_MODULES
from tasks.filter_runner import FILTER_MODULES
from tasks.ingest import INGEST_MODULES
from tasks.quality.corpus import corpus_identity
from tasks.quality.score import QUALITY_MODULES
from tasks.sources import input_identity, resolve_inputs
from tasks.tokenize import TOKENIZE_MODULES
from tasks.train import TRAIN_MODULES

STAGES = ("ingest", "filter", "dedup", "quality", "tokenize", "train")
FOLDERS = {"ingest": "ingest", "filter": "filter", "dedup": "dedup", "quality": "quality", "tokenize": "tokens",
           "train": "train"}
# What a finished stage leaves behind; stage.json records their size and mtime.
PRODUCTS = {
    "ingest": ["*.parquet"], "filter": ["*.parquet"], "dedup": ["*.parquet"],
    "quality": ["kept/*.parquet", "scored/*.parquet", "models/*/model.json"],
    "tokenize": ["index.json", "tokenizer.json", "train/*.bin", "val/*.bin"],
    "train": ["summary.json", "metrics.jsonl", "hf/config.json", "hf/model.safetensors"],
}
STAGE_FILE = "stage.json"
CODE = {
    "ingest": ("flows.ingest", *INGEST_MODULES), "filter": ("flows.filter", *FILTER_MODULES),
    "dedup": ("flows.dedup", *DEDUP_MODULES), "quality": ("flows.quality", "tasks.demo_reference", *QUALITY_MODULES),
    "tokenize": ("flows.tokenize", *TOKENIZE_MODULES), "train": TRAIN_MODULES,
}
SUMMARY_FIELDS = ("files", "records_read", "html_responses", "documents", "documents_in", "documents_kept",
                  "text_bytes", "bytes_in", "bytes_kept", "clusters", "dropped", "buckets", "cutoffs", "tokens",
                  "sources", "tokenizer", "steps", "final_loss", "val_loss", "params", "checkpoint", "seconds",
                  "hf_dir", "skipped")


# ---------------------------------------------------------------- stage bookkeeping


def products(folder: Path, stage: str) -> dict[str, list[int]]:
    """The stage's output files now: relative path -> [size, mtime_ns]."""
    found = {}
    for pattern in PRODUCTS[stage]:
        for path in sorted(folder.glob(pattern)):
            stat = path.stat()
            found[str(path.relative_to(folder))] = [stat.st_size, stat.st_mtime_ns]
    return found


def outputs_intact(folder: Path, stage: str, key: str) -> bool:
    """True when the stage last finished here with this key and its outputs are as it left them."""
    record = folder / STAGE_FILE
    if not record.is_file():
        return False
    written = json.loads(record.read_text())
    return written.get("key") == key and written.get("products") == products(folder, stage) != {}


def record_stage(folder: Path, stage: str, key: str) -> None:
    atomic_write_text(folder / STAGE_FILE, json.dumps({"stage": stage, "key": key,
                                                       "products": products(folder, stage)}, indent=1) + "\n")


def stage_key(context, parameters: dict) -> str:
    return parameters["key"]


def _trim(summary: dict, output: Path) -> dict:
    """What summary.json keeps of a stage's summary (no per-shard lists: they grow with the data)."""
    kept = {name: summary[name] for name in SUMMARY_FIELDS if name in summary}
    hits = summary.get("cache_hits", 0)
    kept["task_cache_hits"] = sum(hits.values()) if isinstance(hits, dict) else hits
    return {"output": str(output), **kept}


@task(name="stage", task_run_name="{stage}", cache_key_fn=stage_key, persist_result=True, retries=1,
      retry_condition_fn=retry_if_transient)
def run_stage(stage: str, key: str, output_dir: str, run: Callable[[], dict]) -> dict:
    """Run one stage's flow (``run``) and record its outputs; the result is its trimmed summary."""
    folder = Path(output_dir)
    summary = _trim(run(), folder)
    if not summary.get("skipped"):
        record_stage(folder, stage, key)
    return summary


def call_stage(stage: str, key: str, folder: Path, run: Callable[[], dict]) -> dict:
    """The stage from cache when its outputs are intact, else run it; adds ``cached`` and the key."""
    runner = run_stage.with_options(refresh_cache=not outputs_intact(folder, stage, key))
    state = runner(stage, key, str(folder), run, return_state=True)
    return {**state.result(), "cached": state.name == "Cached", "key": key}


# ---------------------------------------------------------------- stage keys


def ingest_inputs_key(config) -> list[str]:
    """Input identity: local files by path, size and mtime; remote ones by URL (a crawl's files do not change)."""
    return [input_identity(item) for item in resolve_inputs(config)]


def key_for(stage: str, upstream: object, config: object, folder: Path) -> str:
    dump = config.model_dump() if hasattr(config, "model_dump") else config
    return stable_hash(stage, upstream, dump, code_version(*CODE[stage]), str(folder.resolve()), length=24)


# ---------------------------------------------------------------- quality and training


def quality_models(cfg: PipelineConfig, root: Path, logger) -> tuple[dict, str | None]:
    """Model folders to score with: the recipe's, else trained here; (updates for QualityConfig, why skipped)."""
    quality = cfg.quality
    if quality.perplexity_model or quality.classifier_model:
        return {}, None
    reference = list(cfg.quality_training.reference)
    if not reference and cfg.demo_data:
        reference = [str(write_demo_reference(root / "demo-data" / "reference"))]
    if not reference:
        return {}, ("no reference text and no model folders: set quality_training.reference, or "
                    "quality.perplexity_model / quality.classifier_model")
    negatives = str(root / ("ingest" if cfg.quality_training.negatives == "ingest" else "filter/removed"))
    models = root / "quality" / "models"
    logger.info("quality: training the perplexity model and the classifier on %s (negatives: %s)", reference, negatives)
    train_perplexity_flow(reference=reference, output_dir=str(models / "perplexity"), config=quality.perplexity)
    train_classifier_flow(positive=reference, negative=[negatives], output_dir=str(models / "classifier"),
                          config=quality.classifier, max_documents=cfg.quality_training.max_documents)
    return {"perplexity_model": str(models / "perplexity"), "classifier_model": str(models / "classifier")}, None


def reference_identity(cfg: PipelineConfig, root: Path) -> object:
    if cfg.quality.perplexity_model or cfg.quality.classifier_model:
        return model_identities(cfg.quality)  # a model retrained in place reruns quality
    if cfg.quality_training.reference:
        return corpus_identity(cfg.quality_training.reference)
    return "demo-reference" if cfg.demo_data else None


def run_quality(cfg: PipelineConfig, root: Path, input_dir: Path) -> dict:
    logger = get_run_logger()
    updates, skipped = quality_models(cfg, root, logger)
    if skipped:
        logger.warning("quality: skipped: %s", skipped)
        return {"skipped": skipped}
    return score_flow(config=cfg.quality.model_copy(update=updates), input_dir=str(input_dir),
                      output_dir=str(root / "quality"), ray_config=cfg.ray)


def train_config(cfg: PipelineConfig, tokens_dir: Path, run_dir: Path) -> TrainConfig:
    train = cfg.train.model_copy(update={"data_dir": str(tokens_dir), "output_dir": str(run_dir)})
    if cfg.plan_model_size:
        train = planned_model(train, tokens_dir)
    return train


def planned_model(train: TrainConfig, tokens_dir: Path) -> TrainConfig:
    """The scaling planner's choice (``models.scaling``) for the tokens obtained."""
    from models.scaling import plan_for_tokens
    from models.shapes import closest_model_shape
    from tasks.scaling import tokens_in_index

    index = json.loads((tokens_dir / "index.json").read_text())
    plan = plan_for_tokens(tokens_in_index(tokens_dir))
    name, model = closest_model_shape(plan.n_params, vocab_size=index["vocab_size"], seq_len=train.seq_len)
    get_run_logger().info("scaling planner: %.3g tokens -> %.3g parameters -> model %s", plan.n_tokens,
                          plan.n_params, name)
    return train.model_copy(update={"model_size": None, "model": model})


def run_train(cfg: TrainConfig, key: str, export: bool) -> dict:
    """Train; a folder left by a crashed run with the same key resumes, one from another config starts over."""
    run_dir = Path(cfg.output_dir)
    key_file = run_dir / "stage-key"
    resume = key_file.is_file() and key_file.read_text().strip() == key and (run_dir / "checkpoints").is_dir()
    if not resume and run_dir.exists():
        check_replaceable(run_dir, "pretrain run (train stage)", lambda folder: (folder / "stage-key").is_file(),
                          marker="stage-key", remedy="move it away or choose another --output")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    summary = train_flow(config=cfg, resume=resume)
    if export:
        summary["hf_dir"] = str(export_model(run_dir, summary))
    return summary


def export_model(run_dir: Path, summary: dict) -> Path:
    from models.export_hf import export_hf
    from pretrain.config import ModelConfig
    from tasks.train.checkpoint import checkpoint_root, consolidate_fp32
    from tasks.train.main import load_train_config

    cfg = load_train_config(run_dir / "train_config.json")
    tokenizer = Path(cfg.data_dir) / "tokenizer.json"
    state = consolidate_fp32(checkpoint_root(run_dir))
    return export_hf(state, ModelConfig.model_validate(summary["model"]), run_dir / "hf",
                     tokenizer_file=tokenizer if tokenizer.is_file() else None, inputs=[run_dir])


# ---------------------------------------------------------------- the flow


def confined(cfg: PipelineConfig) -> PipelineConfig:
    """A deployment run's paths stay under the data root (``pretrain.paths``); a local call is trusted."""
    policy = parameter_policy()
    if policy is None:
        return cfg
    ingest, output_dir = confine_ingest(policy, cfg.ingest, cfg.output_dir)
    reference = [policy.location(entry, f"quality_training.reference[{i}]")
                 for i, entry in enumerate(cfg.quality_training.reference)]
    models = {name: str(policy.path(value, f"quality.{name}")) for name in ("perplexity_model", "classifier_model")
              if (value := getattr(cfg.quality, name))}
    return cfg.model_copy(update={
        "ingest": ingest, "output_dir": output_dir, "quality": cfg.quality.model_copy(update=models),
        "quality_training": cfg.quality_training.model_copy(update={"reference": reference})})


@flow(name="pretrain")
def pretrain_flow(config: PipelineConfig = PipelineConfig()) -> dict:
    """Run the pipeline on a recipe, stage by stage, and write OUTPUT/summary.json."""
    config = confined(config)
    root = Path(config.output_dir).resolve()
    with output_lock(root, "pretrain"):
        return _pretrain(config, root)


def _pretrain(cfg: PipelineConfig, root: Path) -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    ingest_cfg = cfg.ingest
    if cfg.demo_data:
        demo_dir = root / "demo-data"
        paths = write_demo_data(demo_dir)
        logger.info("demo data: %d WARC files in %s", len(paths), demo_dir)
        ingest_cfg = ingest_cfg.model_copy(update={"inputs": [str(demo_dir)]})
    folders = {stage: root / name for stage, name in FOLDERS.items()}
    todo = STAGES[: STAGES.index(cfg.until) + 1]
    stages: dict[str, dict] = {}

    def stage(name: str, upstream: object, config: object, run: Callable[[], dict]) -> dict:
        stages[name] = call_stage(name, key_for(name, upstream, config, folders[name]), folders[name], run)
        logger.info("%s: %s", name, "from cache" if stages[name]["cached"] else "done")
        return stages[name]

    up = stage("ingest", ingest_inputs_key(ingest_cfg), ingest_cfg, lambda: ingest_flow(
        config=ingest_cfg, output_dir=str(folders["ingest"]), ray_config=cfg.ray))
    if "filter" in todo:
        up = stage("filter", up["key"], cfg.filter, lambda: filter_flow(
            config=cfg.filter, input_dir=str(folders["ingest"]), output_dir=str(folders["filter"]),
            ray_config=cfg.ray))
    if "dedup" in todo:
        up = stage("dedup", up["key"], cfg.dedup, lambda: dedup_flow(
            config=cfg.dedup, input_dir=str(folders["filter"]), output_dir=str(folders["dedup"]),
            ray_config=cfg.ray))
    tokenize_input = folders["dedup"]
    if "quality" in todo:
        quality_cfg = {"quality": cfg.quality, "training": cfg.quality_training,
                       "reference": reference_identity(cfg, root), "negatives_from": stages[
                           "ingest" if cfg.quality_training.negatives == "ingest" else "filter"]["key"]}
        up = stage("quality", up["key"], quality_cfg, lambda: run_quality(cfg, root, folders["dedup"]))
        if not up.get("skipped"):
            tokenize_input = folders["quality"] / "kept"
    if "tokenize" in todo:
        up = stage("tokenize", up["key"], cfg.tokenize, lambda: tokenize_flow(
            config=cfg.tokenize, input_dirs=[str(tokenize_input)], output_dir=str(folders["tokenize"]),
            ray_config=cfg.ray))
    if "train" in todo:
        train_cfg = train_config(cfg, folders["tokenize"], folders["train"])
        train_key = key_for("train", up["key"], {"train": train_cfg, "export_hf": cfg.export_hf}, folders["train"])
        stages["train"] = call_stage("train", train_key, folders["train"],
                                     lambda: run_train(train_cfg, train_key, cfg.export_hf))
    summary = build_summary(cfg, root, stages, time.perf_counter() - started)
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    publish_report(summary, root)
    logger.info("summary: %s", root / "summary.json")
    return summary


def build_summary(cfg: PipelineConfig, root: Path, stages: dict[str, dict], seconds: float) -> dict:
    rows = funnel(stages)
    train = stages.get("train", {})
    model = None
    if train:
        run_dir = Path(train["output"])
        model = {"run_dir": str(run_dir), "hf_dir": str(run_dir / "hf") if (run_dir / "hf").is_dir() else None,
                 "checkpoint": train.get("checkpoint"), "params": train.get("params"), "steps": train.get("steps"),
                 "final_loss": train.get("final_loss"), "val_loss": train.get("val_loss"),
                 "loss_curve": str(run_dir / "loss.png")}
        model["scaling"] = scaling_position(train.get("params"), rows)
    return {
        "recipe": cfg.name,
        "output_dir": str(root),
        "documents": {row["stage"]: row["documents"] for row in rows},
        "tokens": {row["stage"]: row["tokens"] for row in rows},
        "funnel": rows,
        "cache_hits": {name: stage["cached"] for name, stage in stages.items()},
        "cached_stages": sum(stage["cached"] for stage in stages.values()),
        "stages": stages,
        "model": model,
        "seconds": round(seconds, 1),
    }
