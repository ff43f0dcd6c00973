"""Prefect flow: train with DeepSpeed (``tasks.train.launch.run_training``).

The task launches the training processes and follows their output: progress goes
to ``report_progress`` (the CLI's bar) and a progress artifact. A failed launch is
retried by resuming from the newest checkpoint (``--resume``), so a crashed or
preempted run loses at most ``checkpoint_every_steps``; so is a run that stopped before
``max_steps`` (``stop_after_steps``); a bad config, data folder or checkpoint is not retried,
whether the launcher's checks find it or a rank does (``TrainingRejected``).
Artifacts: the loss curve (table, downsampled) and the summary.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import task_run

from flows.common import funnel_table, parameter_policy, publish_markdown
from flows.stage import Pipeline, Stage
from pretrain.config import TrainConfig
from pretrain.outputs import check_replaceable
from pretrain.paths import PathPolicy
from pretrain.progress import report_progress
from tasks.train.launch import TrainingFailed, run_training

STEP_LINE = re.compile(r"^step (\d+)/(\d+) loss")
MAX_TABLE_ROWS = 200


def retry_failed_training(task, task_run, state) -> bool:
    """Retry (by resuming) when the training processes failed, not for a config error."""
    try:
        state.result()
    except TrainingFailed:
        return True
    except Exception:
        return False
    return False


class TrainingIncomplete(TrainingFailed):
    """The processes exited cleanly before max_steps (``stop_after_steps``); retried like a crash."""


class _Follower:
    """Turns the ranks' output into log lines, progress and a progress artifact."""

    def __init__(self, logger):
        self.logger = logger
        self.artifact = create_progress_artifact(progress=0.0, key="train-progress", description="training steps")

    def __call__(self, line: str) -> None:
        (self.logger.warning if line.startswith("warning: ") else self.logger.info)(line)
        match = STEP_LINE.match(line)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            report_progress("train", done, total)
            update_progress_artifact(self.artifact, progress=100.0 * done / total)


@task(name="train", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_failed_training)
def train_task(config: TrainConfig, resume: bool = False) -> dict:
    logger = get_run_logger()
    resume_now = resume or task_run.run_count > 1  # a retry continues from the newest checkpoint
    if resume_now and not resume:
        logger.warning("attempt %d: resuming from the newest checkpoint", task_run.run_count)
    summary = run_training(config, resume=resume_now, log_callback=_Follower(logger))
    if not summary.get("completed"):
        raise TrainingIncomplete(f"training stopped before max_steps ({config.max_steps}); see {summary['run_dir']}")
    return summary


def publish_training(config: TrainConfig, summary: dict) -> None:
    metrics_path = Path(config.output_dir).resolve() / "metrics.jsonl"
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    val = {r["step"]: r["val_loss"] for r in records if r["kind"] == "eval"}
    stride = max(1, len(train) // MAX_TABLE_ROWS)
    rows = [{"step": r["step"], "loss": round(r["loss"], 4), "val_loss": val.get(r["step"]), "lr": r["lr"],
             "tokens_per_s": round(r["tokens_per_s"]), "mfu": r["mfu"]}
            for i, r in enumerate(train) if i % stride == 0 or i == len(train) - 1]
    create_table_artifact(key="train-loss", table=rows, description="loss per step (downsampled)")
    if summary.get("completed"):
        publish_markdown("train-summary", "Training", funnel_table([
            ("steps", summary["steps"]), ("tokens", summary["tokens"]), ("final loss", f"{summary['final_loss']:.4f}"),
            ("val loss", summary["val_loss"]), ("parameters", summary["params"]),
            ("FLOPs per token", f"{summary['flops_per_token']:.3g}"), ("batch", summary["batch"]),
            ("fp8", summary["fp8"]), ("checkpoint", summary["checkpoint"]),
            ("loss curve", str(Path(config.output_dir).resolve() / "loss.png")),
        ], header=("", "value")))


def confine_parameters(policy: PathPolicy, config: TrainConfig) -> TrainConfig:
    """Check an untrusted run's data, run folder and hostfile before anything is read or written."""
    updates = {"output_dir": str(policy.path(config.output_dir, "train.output_dir"))}
    for field in ("data_dir", "hostfile"):
        if getattr(config, field):
            updates[field] = str(policy.path(getattr(config, field), f"train.{field}"))
    return config.model_copy(update=updates)


@flow(name="train")
def train_flow(config: TrainConfig = TrainConfig(), resume: bool = False) -> dict:
    """Train (or resume) a model on token shards; returns RUN_DIR/summary.json.

    A run from a deployment has its paths confined to the data root (``pretrain.paths``).
    """
    policy = parameter_policy()
    if policy is not None:
        config = confine_parameters(policy, config)
    summary = train_task(config, resume)
    publish_training(config, summary)
    get_run_logger().info("training summary: %s", summary)
    return summary


# ---------------------------------------------------------------- the train stage of the end-to-end run


def train_config(pipeline: Pipeline) -> TrainConfig:
    """The recipe's training config on the tokens read, into the stage's folder (planned, if asked)."""
    cfg, tokens_dir = pipeline.recipe, pipeline.input_dir
    train = cfg.train.model_copy(update={"data_dir": str(tokens_dir), "output_dir": str(pipeline.folder("train"))})
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


def key_config(pipeline: Pipeline) -> dict:
    return {"train": train_config(pipeline), "export_hf": pipeline.recipe.export_hf}


def run_in_pipeline(pipeline: Pipeline) -> dict:
    return run_train(pipeline.config["train"], pipeline.key, pipeline.recipe.export_hf)


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


STAGE = Stage(
    name="train", folder="train", section="train", run=run_in_pipeline, key_config=key_config,
    code=(__name__, "tasks.train.main"),  # the launcher runs tasks.train.main by name, not by import
    products=("summary.json", "metrics.jsonl", "hf/config.json", "hf/model.safetensors"),
)
