"""Prefect flow: benchmark evaluation of a model (``tasks.evaluation.run.evaluate``); and the eval stage.

The model (a Hugging Face causal-LM folder, or a run folder whose newest checkpoint is exported on
the fly) is loaded once and scored batched on every task's items; progress goes to
``report_progress`` (the CLI's bar) and a progress artifact. Artifacts: a table (task, items,
accuracy, accuracy per character, random baseline, centred score) and a markdown summary. Output:
``eval.json`` and ``predictions/<task>.jsonl`` in the output folder.

As the last stage of ``pretrain run`` it evaluates the train stage's model (its ``hf/`` export when
there is one, else the run folder's newest checkpoint) with the recipe's ``eval`` section.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from flows.common import funnel_table, parameter_policy, publish_markdown
from flows.stage import Pipeline, Stage
from pretrain.config import EvalConfig
from pretrain.progress import report_progress
from tasks.evaluation.items import package_version
from tasks.evaluation.metrics import centered_score
from tasks.evaluation.run import EVAL_FILE, PREDICTIONS, evaluate


class _Progress:
    """Scored requests -> the CLI's bar and the progress artifact (updated once per percent)."""

    def __init__(self):
        self.artifact = create_progress_artifact(progress=0.0, key="eval-progress", description="requests scored")
        self.percent = 0

    def __call__(self, done: int, total: int) -> None:
        report_progress("eval", done, total)
        percent = 100 * done // max(total, 1)
        if percent > self.percent:
            self.percent = percent
            update_progress_artifact(self.artifact, progress=float(percent))


@task(name="evaluate")
def evaluate_task(model: str, config: EvalConfig, output_dir: str, force: bool) -> dict:
    from tasks.evaluation.models import load_model

    logger = get_run_logger()
    loaded = load_model(model, config.device, say=logger.warning)
    logger.info("scoring %s (%s, %d parameters, context %d tokens) on %s, %s items each", loaded.folder,
                loaded.device, loaded.parameters, loaded.max_length, ", ".join(config.tasks),
                config.limit or "all")
    return evaluate(loaded, config.tasks, config.limit, output_dir, config.batch_size, _Progress(), force)


def table_rows(result: dict) -> list[dict]:
    return [{"task": name, "items": m["items"], "accuracy": round(m["accuracy"], 4),
             "accuracy_per_char": round(m["accuracy_per_char"], 4), "random": round(m["random"], 4),
             "centred": round(centered_score(m), 4), "primary_metric": m["primary_metric"]}
            for name, m in result["tasks"].items()]


def publish(result: dict, output_dir: str) -> None:
    create_table_artifact(key="eval-tasks", table=table_rows(result), description="benchmark accuracy per task")
    publish_markdown("eval-summary", "Evaluation", funnel_table([
        ("model", result["model"]), ("checkpoint", result["checkpoint"] or "-"),
        ("tasks", len(result["tasks"])), ("items", result["items"]),
        ("centred (CORE-style)", f"{result['centered']:.4f}"), ("items/s", result["items_per_s"]),
        ("device", result["device"]), ("data", result["package"]),
        ("eval.json", str(Path(output_dir).resolve() / EVAL_FILE)),
    ], header=("", "value")))


@flow(name="eval")
def eval_flow(model: str, output_dir: str, config: EvalConfig = EvalConfig(), force: bool = False) -> dict:
    """Score a model on benchmark tasks; writes OUTPUT/eval.json and OUTPUT/predictions/<task>.jsonl.

    A run from a deployment has its paths confined to the data root (``pretrain.paths``).
    """
    policy = parameter_policy()
    if policy is not None:
        model, output_dir = str(policy.path(model, "model")), str(policy.path(output_dir, "output_dir"))
    result = evaluate_task(model, config, output_dir, force)
    publish(result, output_dir)
    get_run_logger().info("eval: centred %.4f over %d task(s), %s items/s", result["centered"], len(result["tasks"]),
                          result["items_per_s"])
    return result


# ---------------------------------------------------------------- the eval stage of the end-to-end run


def stage_model(run_dir: Path) -> Path:
    """The train stage's model: its hf/ export when there is one, else the run folder (newest checkpoint)."""
    hf = run_dir / "hf"
    return hf if (hf / "config.json").is_file() else run_dir


def run_in_pipeline(pipeline: Pipeline) -> dict:
    out = pipeline.folder("eval")
    result = eval_flow(model=str(stage_model(Path(pipeline.input_dir))), output_dir=str(out),
                       config=pipeline.recipe.eval)
    tasks = {name: {key: m[key] for key in ("accuracy", "accuracy_per_char", "random", "items")}
             for name, m in result["tasks"].items()}
    return {"documents": None, "tasks": tasks, "centered": result["centered"], "eval_json": str(out / EVAL_FILE)}


def key_config(pipeline: Pipeline) -> dict:
    """Its config and the version of the package whose items it scores."""
    return {"eval": pipeline.recipe.eval, "items": package_version()}


STAGE = Stage(name="eval", folder="eval", section="eval", run=run_in_pipeline, key_config=key_config,
              products=(EVAL_FILE, f"{PREDICTIONS}/*.jsonl"))
