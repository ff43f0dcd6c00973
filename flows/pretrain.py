"""The end-to-end flow: (demo data ->) the stages of ``flows.registry`` in order, up to ``until``.

(ingest -> filter -> dedup -> quality -> decontaminate -> tokenize -> train -> eval.) Each
stage (``flows.stage.Stage``) is one cached Prefect task that runs the stage's own flow as a subflow
(whose per-shard tasks are cached and retried as always), and passes folders, never
data. A stage's cache key is Marin-style: the stage name, its config, its code
version, its output folder and the key of the stage it reads from (ingest: the
identity of its input files). So a rerun with nothing changed is one cache hit per
stage and recomputes nothing, and changing one stage's config reruns that stage and
the stages after it only. A stage whose outputs were deleted or modified since it
ran (``stage.json`` lists them with size and mtime) runs again.

OUTPUT/summary.json has the funnel (documents and tokens per stage), cache hits,
the model's path and its validation loss, and the eval stage's benchmark table (``eval``); the
run gets a ``pretrain-report``
artifact (see ``flows.pretrain_report``).
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger, task

from flows import registry
from flows.common import output_lock, parameter_policy, retry_if_transient
from flows.ingest import confine_parameters as confine_ingest
from flows.pretrain_report import funnel, publish_report, scaling_position
from flows.stage import Pipeline, Stage
from pretrain.config import PipelineConfig
from pretrain.provenance import atomic_write_text
from tasks.demo import write_demo_data

STAGE_FILE = "stage.json"
SUMMARY_FIELDS = ("files", "records_read", "html_responses", "documents", "documents_in", "documents_kept",
                  "text_bytes", "bytes_in", "bytes_kept", "clusters", "dropped", "buckets", "cutoffs", "tokens",
                  "sources", "tokenizer", "steps", "final_loss", "val_loss", "params", "checkpoint", "seconds",
                  "hf_dir", "skipped", "benchmarks", "documents_cut", "matched_items", "tasks", "centered",
                  "eval_json", "masked", "documents_changed", "shards", "branches")


# ---------------------------------------------------------------- stage bookkeeping


def products(folder: Path, globs: tuple[str, ...]) -> dict[str, list[int]]:
    """The stage's output files now: relative path -> [size, mtime_ns]."""
    found = {}
    for pattern in globs:
        for path in sorted(folder.glob(pattern)):
            stat = path.stat()
            found[str(path.relative_to(folder))] = [stat.st_size, stat.st_mtime_ns]
    return found


def outputs_intact(folder: Path, globs: tuple[str, ...], key: str) -> bool:
    """True when the stage last finished here with this key and its outputs are as it left them (a stage
    that was skipped with this key has none to check)."""
    record = folder / STAGE_FILE
    if not record.is_file():
        return False
    written = json.loads(record.read_text())
    if written.get("key") != key:
        return False
    return bool(written.get("skipped")) or written.get("products") == products(folder, globs) != {}


def record_stage(folder: Path, stage: str, globs: tuple[str, ...], key: str, skipped: str | None = None) -> None:
    """``stage.json``: the key and the products as written; for a skipped stage, why (it wrote nothing)."""
    record = {"stage": stage, "key": key, "products": {} if skipped else products(folder, globs)}
    if skipped:
        record["skipped"] = skipped
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / STAGE_FILE, json.dumps(record, indent=1) + "\n")


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
def run_stage(stage: str, key: str, output_dir: str, products: tuple[str, ...], run: Callable[[], dict]) -> dict:
    """Run one stage's flow (``run``) and record its outputs; the result is its trimmed summary."""
    folder = Path(output_dir)
    summary = _trim(run(), folder)
    record_stage(folder, stage, products, key, skipped=summary.get("skipped"))
    return summary


def call_stage(stage: Stage, key: str, folder: Path, run: Callable[[], dict]) -> dict:
    """The stage from cache when its outputs are intact, else run it; adds ``cached`` and the key."""
    runner = run_stage.with_options(refresh_cache=not outputs_intact(folder, stage.products, key))
    state = runner(stage.name, key, str(folder), stage.products, run, return_state=True)
    return {**state.result(), "cached": state.name == "Cached", "key": key}


def run_one(stage: Stage, pipeline: Pipeline, previous: dict | None, reading: Path | None,
            place: Path | None = None) -> dict:
    """Key the stage on what it reads, its config, its code and its folder; run it or take it from cache.

    With ``place`` (a root folder) the stage's folder is the content-addressed one under it
    (``Stage.content_folder``, as flows/ablate.py runs its arms), not the one ``pipeline.folders`` has.
    """
    pipeline.input_dir = reading if stage.reads else None
    upstream = stage.upstream(pipeline, previous)
    if place is not None:
        pipeline.folders[stage.name] = stage.content_folder(pipeline, upstream, place)
    folder = pipeline.folder(stage.name)
    pipeline.config = stage.config_of(pipeline)
    pipeline.key = stage.key(upstream, pipeline.config, folder)
    result = call_stage(stage, pipeline.key, folder, partial(stage.run, pipeline))
    pipeline.results[stage.name] = result
    return result


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


def with_demo_data(cfg: PipelineConfig, root: Path) -> PipelineConfig:
    """A demo recipe ingests the demo WARCs, written (unchanged files left as they are) under ROOT/demo-data."""
    if not cfg.demo_data:
        return cfg
    demo_dir = root / "demo-data"
    paths = write_demo_data(demo_dir)
    get_run_logger().info("demo data: %d WARC files in %s", len(paths), demo_dir)
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"inputs": [str(demo_dir)]})})


def _pretrain(cfg: PipelineConfig, root: Path) -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    cfg = with_demo_data(cfg, root)
    pipeline = Pipeline(recipe=cfg, root=root, folders={stage.name: root / stage.folder for stage in registry.STAGES})
    previous, reading = None, None
    for stage in registry.until(cfg.until):
        previous = run_one(stage, pipeline, previous, reading)
        reading = stage.next_input(pipeline, previous)
        logger.info("%s: %s", stage.name, "from cache" if previous["cached"] else "done")
    summary = build_summary(cfg, root, pipeline.results, time.perf_counter() - started)
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
        "eval": evaluation(stages.get("eval")),
        "seconds": round(seconds, 1),
    }


def evaluation(stage: dict | None) -> dict | None:
    """The eval stage's table (per task: accuracy, accuracy_per_char, random, items) and the centred score."""
    if not stage or stage.get("skipped"):
        return None
    return {"tasks": stage["tasks"], "centered": stage["centered"], "eval_json": stage["eval_json"]}
