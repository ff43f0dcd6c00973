"""Prefect flow ``ablate``: a data ablation, DCLM's and FineWeb's method as one command.

Each arm is the recipe with its overrides (``pretrain.config.arm_recipe``). Every arm's dataset is built by
the end-to-end run's stages (``flows.registry``, through ``flows.pretrain.run_one``) up to tokenize; then the
same model is trained on each with the same seed, the same tokenizer and exactly the same number of tokens
(the smallest arm's train tokens, or ``tokens``, in whole optimizer steps), and every model is evaluated
on the same tasks (the registry's stages after train) and on one shared held-out text (``tasks.heldout``).

Every stage of every arm writes into DIR/stages/<folder>-<hash>, the hash of what its result depends on
(``flows.stage.Stage.content_folder``): arms that agree up to a stage share its folder, so the second arm
takes it from cache, and an unchanged rerun is all cache hits. The tokenizer is trained once, on the
first arm's data, and given to every other arm's tokenize stage.

Output::

    demo-data/           the demo WARCs and reference (demo recipes), shared by every arm
    stages/              every stage's folder, content-addressed
    ablation.json        per arm: overrides, documents, train tokens, held-out loss, task accuracy
    ablation.png         loss curves, held-out loss and task scores side by side

Artifacts: ``ablation`` (table) and ``ablation-plot`` (image).
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_table_artifact

from flows import registry
from flows.common import file_identity, output_lock, parameter_policy
from flows.pretrain import confined, run_one, with_demo_data
from flows.stage import Pipeline, Stage
from pretrain.config import AblationConfig, PipelineConfig, arm_recipes
from pretrain.provenance import atomic_write_text, code_version, stable_hash
from tasks.demo_reference import write_demo_reference
from tasks.quality.corpus import corpus_identity
from tasks.tokenize import INDEX_FILE, TOKENIZER_FILE
from tasks.train.ds_config import batch_plan

RESULT_FILE = "ablation.json"
PLOT_FILE = "ablation.png"


class AblationError(ValueError):
    """An ablation that cannot be run as asked: a budget under one step, no held-out text, unequal tokens."""


@dataclass
class Arm:
    """One arm while it runs: its recipe's pipeline, the last stage's result and what the next stage reads."""

    name: str
    overrides: list[str]
    pipeline: Pipeline
    previous: dict | None = None
    reading: Path | None = None
    stages: list[str] = field(default_factory=list)

    def run(self, stages: tuple[Stage, ...], place: Path) -> None:
        logger = get_run_logger()
        for stage in stages:
            self.previous = run_one(stage, self.pipeline, self.previous, self.reading, place=place)
            self.reading = stage.next_input(self.pipeline, self.previous)
            self.stages.append(stage.name)
            logger.info("arm %s: %s %s (%s)", self.name, stage.name,
                        "from cache" if self.previous["cached"] else "done", self.pipeline.folder(stage.name))

    def result(self, stage: str) -> dict:
        return self.pipeline.results.get(stage, {})


# ---------------------------------------------------------------- the flow


@flow(name="ablate")
def ablate_flow(config: AblationConfig) -> dict:
    """Build every arm's dataset, train one model per arm at equal tokens, evaluate them; DIR/ablation.json."""
    config = confined_ablation(config)
    root = Path(config.output_dir).resolve()
    with output_lock(root, "ablate"):
        return _ablate(config, root)


def confined_ablation(config: AblationConfig) -> AblationConfig:
    """A deployment run's paths stay under the data root, the recipe's as in ``flows.pretrain.confined``."""
    policy = parameter_policy()
    if policy is None:
        return config
    return config.model_copy(update={
        "recipe": confined(config.recipe), "output_dir": str(policy.path(config.output_dir, "output_dir")),
        "heldout": [policy.location(entry, f"heldout[{i}]") for i, entry in enumerate(config.heldout)]})


def _ablate(config: AblationConfig, root: Path) -> dict:
    started = time.perf_counter()
    place = root / "stages"
    arms = [Arm(name, arm.overrides, Pipeline(recipe=with_demo_data(recipe, root), root=root, folders={}))
            for arm, (name, recipe) in zip(config.arms, arm_recipes(config).items())]
    build_datasets(arms, place)
    plan = training_plan(arms, config.tokens)
    get_run_logger().info("training every arm for %d steps of %d tokens: %d tokens (budget %d)", plan["steps"],
                          plan["tokens_per_step"], plan["train_tokens"], plan["budget"])
    for arm in arms:
        arm.pipeline.recipe = training_recipe(arm.pipeline.recipe, plan["steps"])
        arm.run(after_tokenize(), place)
    check_equal_tokens(arms, plan["train_tokens"])
    heldout = heldout_files(config, arms[0].pipeline.recipe, root)
    losses = {arm.name: heldout_loss(arm, heldout) for arm in arms}
    result = ablation_result(config, root, arms, plan, heldout, losses, time.perf_counter() - started)
    atomic_write_text(root / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    publish(result, root)
    return result


def build_datasets(arms: list[Arm], place: Path) -> None:
    """Every arm's stages up to tokenize; every arm after the first tokenizes with the first arm's tokenizer."""
    tokenizer = arms[0].pipeline.recipe.tokenize.tokenizer
    for arm in arms:
        if tokenizer:
            recipe = arm.pipeline.recipe
            arm.pipeline.recipe = recipe.model_copy(update={
                "tokenize": recipe.tokenize.model_copy(update={"tokenizer": str(tokenizer)})})
        arm.run(registry.until("tokenize"), place)
        tokenizer = tokenizer or arm.pipeline.folder("tokenize") / TOKENIZER_FILE


def after_tokenize() -> tuple[Stage, ...]:
    """The registry's stages after tokenize: train, and the evaluation when it is registered."""
    return registry.STAGES[registry.STAGES.index(registry.stage("tokenize")) + 1:]


def train_tokens(arm: Arm) -> int:
    index = json.loads((arm.pipeline.folder("tokenize") / INDEX_FILE).read_text())
    return index["tokens"]["train"]


def training_plan(arms: list[Arm], budget: int | None) -> dict:
    """The same whole number of optimizer steps for every arm: the budget (default: the smallest arm's train
    tokens) // tokens per step (micro batch x accumulation x processes x seq_len)."""
    train = arms[0].pipeline.recipe.train
    per_step = batch_plan(train, train.num_procs).tokens_per_step
    available = {arm.name: train_tokens(arm) for arm in arms}
    smallest = min(available, key=available.get)
    tokens = budget or available[smallest]
    steps = tokens // per_step
    if steps < 1:
        raise AblationError(f"a budget of {tokens:,} tokens ({'given' if budget else f'arm {smallest}'}) is less than "
                            f"one optimizer step: micro_batch_size {train.micro_batch_size} x grad_accum_steps "
                            f"{train.grad_accum_steps} x num_procs {train.num_procs} x seq_len {train.seq_len} = "
                            f"{per_step:,} tokens")
    return {"budget": tokens, "budget_from": "tokens" if budget else f"arm {smallest}", "tokens_per_step": per_step,
            "steps": steps, "train_tokens": steps * per_step, "available": available}


def training_recipe(recipe: PipelineConfig, steps: int) -> PipelineConfig:
    """The arm's recipe with the planned steps, exporting the model that the evaluations read."""
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"max_steps": steps}),
                                     "export_hf": True})


def check_equal_tokens(arms: list[Arm], expected: int) -> None:
    """What each trainer reports having trained on (its summary.json ``tokens``) is the planned count, for every arm."""
    trained = {arm.name: json.loads((Path(arm.result("train")["output"]) / "summary.json").read_text())["tokens"]
               for arm in arms}
    unequal = {name: tokens for name, tokens in trained.items() if tokens != expected}
    if unequal:
        raise AblationError(f"arms trained on other than the planned {expected:,} tokens: {unequal}")


# ---------------------------------------------------------------- held-out loss


def heldout_files(config: AblationConfig, recipe: PipelineConfig, root: Path) -> list[str]:
    """--heldout, else the demo reference (demo recipes), else the recipe's quality reference text."""
    if config.heldout:
        return list(config.heldout)
    if recipe.demo_data:
        return [str(write_demo_reference(root / "demo-data" / "reference"))]
    if recipe.quality_training.reference:
        return list(recipe.quality_training.reference)
    raise AblationError("no held-out text: give --heldout FILES (text, JSONL or Parquet that no arm trains on)")


def heldout_key(context, parameters: dict) -> str:
    """The model's weights and config, the tokenizer and the held-out files by identity; the settings; the code."""
    hf = Path(parameters["hf_dir"])
    return stable_hash(file_identity(hf / "model.safetensors"), file_identity(hf / "config.json"),
                       file_identity(parameters["tokenizer"]), corpus_identity(parameters["files"]),
                       parameters["eos_token"], parameters["seq_len"], code_version("tasks.heldout"))


@task(name="heldout-loss", task_run_name="heldout-loss-{arm}", cache_key_fn=heldout_key, persist_result=True)
def heldout_task(arm: str, hf_dir: str, tokenizer: str, files: list[str], eos_token: str, seq_len: int) -> dict:
    from tasks.heldout import heldout_tokens, mean_loss

    return mean_loss(hf_dir, heldout_tokens(files, tokenizer, eos_token), seq_len)


def heldout_loss(arm: Arm, files: list[str]) -> dict:
    """The arm's model on the held-out text, tokenized with its (the shared) tokenizer; with ``cached``."""
    recipe = arm.pipeline.recipe
    state = heldout_task(arm.name, str(Path(arm.result("train")["output"]) / "hf"),
                         str(arm.pipeline.folder("tokenize") / TOKENIZER_FILE), files, recipe.tokenize.eos_token,
                         recipe.train.seq_len, return_state=True)
    return {**state.result(), "cached": state.name == "Cached"}


# ---------------------------------------------------------------- ablation.json


def eval_scores(arm: Arm) -> dict:
    """{task: accuracy}, each task's random baseline and the centred aggregate from the arm's eval.json; empty
    without an eval stage."""
    eval_stage = arm.result("eval")
    path = Path(eval_stage["output"]) / "eval.json" if eval_stage else None
    if path is None or not path.is_file():
        return {"eval": {}, "random": {}, "centered": None}
    report = json.loads(path.read_text())
    return {"eval": {task: scores["accuracy"] for task, scores in report["tasks"].items()},
            "random": {task: scores["random"] for task, scores in report["tasks"].items()},
            "centered": report.get("centered")}


def arm_row(arm: Arm, plan: dict, loss: dict) -> dict:
    tokenize, train = arm.result("tokenize"), arm.result("train")
    summary = json.loads((Path(train["output"]) / "summary.json").read_text())
    return {
        "name": arm.name, "overrides": arm.overrides, "documents": tokenize.get("documents"),
        "dataset_tokens": plan["available"][arm.name], "train_tokens": summary["tokens"],
        "epochs": round(summary["tokens"] / plan["available"][arm.name], 4),
        "val_loss": loss["loss"], "own_val_loss": summary.get("val_loss"), "final_loss": summary.get("final_loss"),
        **eval_scores(arm),
        "run_dir": train["output"],
        "stages": {name: {"output": arm.result(name)["output"], "cached": arm.result(name)["cached"]}
                   for name in arm.stages},
        "heldout_cached": loss["cached"],
    }


def ablation_result(config: AblationConfig, root: Path, arms: list[Arm], plan: dict, heldout: list[str],
                    losses: dict[str, dict], seconds: float) -> dict:
    rows = [arm_row(arm, plan, losses[arm.name]) for arm in arms]
    random = {task: baseline for row in rows for task, baseline in row.pop("random").items()}
    lookups = [stage["cached"] for row in rows for stage in row["stages"].values()] + \
              [row["heldout_cached"] for row in rows]
    return {
        "recipe": config.recipe.name, "output_dir": str(root),
        "steps": plan["steps"], "tokens_per_step": plan["tokens_per_step"], "train_tokens": plan["train_tokens"],
        "token_budget": plan["budget"], "budget_from": plan["budget_from"],
        "heldout": {"files": heldout, "tokens": next(iter(losses.values()))["tokens"]},
        "tasks": list(random), "random": random,
        "arms": rows,
        "cache_hits": sum(lookups), "cache_lookups": len(lookups),
        "seconds": round(seconds, 1),
    }


# ---------------------------------------------------------------- table and plot


def table_rows(result: dict) -> list[dict]:
    return [{"arm": row["name"], "overrides": ", ".join(row["overrides"]) or "(recipe)",
             "documents": row["documents"], "train_tokens": row["train_tokens"], "epochs": row["epochs"],
             "heldout_val_loss": round(row["val_loss"], 4),
             **{task: round(accuracy, 4) for task, accuracy in row["eval"].items()},
             **({"centered": round(row["centered"], 4)} if row["centered"] is not None else {})}
            for row in result["arms"]]


def loss_curves(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, validation loss) from a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return ([(r["step"], r["loss"]) for r in records if r["kind"] == "train"],
            [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval" and r.get("val_loss") is not None])


def plot(result: dict) -> bytes:
    """Loss curves (train and own validation, by tokens), the held-out loss, and the task scores, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms, tasks = result["arms"], result["tasks"]
    fig, axes = plt.subplots(1, 3 if tasks else 2, figsize=(14 if tasks else 10, 4))
    per_step = result["tokens_per_step"]
    for i, row in enumerate(arms):
        train, val = loss_curves(Path(row["run_dir"]))
        colour = f"C{i}"
        axes[0].plot([s * per_step for s, _ in train], [v for _, v in train], color=colour, label=f"{row['name']} train")
        if val:
            axes[0].plot([s * per_step for s, _ in val], [v for _, v in val], "o--", color=colour,
                         label=f"{row['name']} own val")
    axes[0].set(xlabel="training tokens", ylabel="loss (nats/token)", title="loss curves")
    axes[0].legend(fontsize=8)
    names = [row["name"] for row in arms]
    losses = [row["val_loss"] for row in arms]
    bars = axes[1].bar(names, losses, color=[f"C{i}" for i in range(len(arms))])
    axes[1].bar_label(bars, fmt="%.4f", fontsize=8)
    spread = max(max(losses) - min(losses), 0.05 * max(losses))
    axes[1].set_ylim(max(0.0, min(losses) - spread), max(losses) + spread)  # the differences, not the whole bars
    axes[1].set(ylabel="loss (nats/token)", title=f"held-out loss ({result['heldout']['tokens']:,} tokens)")
    if tasks:
        width = 0.8 / len(arms)
        x = np.arange(len(tasks))
        for i, row in enumerate(arms):
            axes[2].bar(x + i * width, [row["eval"].get(task, 0.0) for task in tasks], width, label=row["name"],
                        color=f"C{i}")
        axes[2].hlines([result["random"][task] for task in tasks], x - width / 2, x + 0.8 - width / 2,
                       colors="black", linestyles="dotted", label="random")
        axes[2].set_xticks(x + width * (len(arms) - 1) / 2, tasks, rotation=30, ha="right", fontsize=8)
        axes[2].set(ylabel="accuracy", title="task scores")
        axes[2].legend(fontsize=8)
    fig.suptitle(f"{result['recipe']}: {len(arms)} arms, {result['train_tokens']:,} training tokens each")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def publish(result: dict, root: Path) -> None:
    """DIR/ablation.png, and the table and plot artifacts."""
    png = plot(result)
    (root / PLOT_FILE).write_bytes(png)
    where = f"{result['output_dir']}: {len(result['arms'])} arms at {result['train_tokens']:,} tokens"
    create_table_artifact(key="ablation", table=table_rows(result), description=f"Data ablation {where}")
    create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(), key="ablation-plot",
                          description=f"Loss curves, held-out loss and task scores, ablation {where}")
