"""`pretrain ablate`: a data ablation, each arm a recipe variant, one model per arm at equal tokens (flows/ablate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from cli.common import app, clear_failures, fail, run_with_progress
from cli.options import ListOptions
from pretrain.config import AblationConfig, ConfigError, arm_recipes, load_recipe, parse_arm


def ablation_config(recipe: str, arms: list[str], output: Path, tokens: Optional[int], heldout: list[str],
                    overrides: list[str]) -> AblationConfig:
    """The validated ablation, every arm's recipe included, so that a bad arm is refused before anything runs."""
    base = load_recipe(recipe, overrides)
    parsed = [parse_arm(spec) for spec in arms]
    try:
        config = AblationConfig(recipe=base, arms=parsed, output_dir=str(output), tokens=tokens, heldout=heldout)
    except ValidationError as error:
        raise ConfigError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                                    for e in error.errors())) from None
    arm_recipes(config)
    return config


@app.command(cls=ListOptions)
def ablate(
    recipe: str = typer.Option("local", help="A shipped recipe by name (local, cc-small, cc-full) or a YAML path."),
    arm: list[str] = typer.Option([], "--arm", help="An arm: NAME (the recipe as it is) or "
                                  "NAME=key.path=value[,key.path=value...], e.g. off=quality.max_perplexity=1000; "
                                  "two or more."),
    output: Path = typer.Option(..., "--output", "-o", help="DIR: stages/, ablation.json, ablation.png."),
    tokens: Optional[int] = typer.Option(None, min=1, help="Training tokens per arm (whole steps); default: the "
                                         "smallest arm's train tokens."),
    heldout: list[str] = typer.Option([], "--heldout", help="Held-out text for the validation loss (files, globs, "
                                      "folders); default: the demo reference, or quality_training.reference."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field for every arm: key.path=value."),
) -> None:
    """Build every arm's dataset, train the same model on each at equal tokens, evaluate; DIR/ablation.json."""
    from tasks.quality.corpus import corpus_files

    try:
        config = ablation_config(recipe, arm, output, tokens, heldout, set_)
        if heldout:
            corpus_files(heldout)
    except (ConfigError, FileNotFoundError) as error:
        fail(str(error))
    from flows.ablate import ablate_flow  # after the arms: a bad one is refused without importing every flow
    from flows.runner import StageFailed

    try:
        result = run_with_progress(f"ablate {config.recipe.name}", lambda: ablate_flow(config=config))
    except StageFailed as error:
        fail(str(error), code=1)
    except (*clear_failures(), ValueError, FileNotFoundError) as error:  # AblationError is a ValueError
        fail(str(error))
    except Exception as error:  # the flow already logged the details
        fail(f"{type(error).__name__}: {error}", code=1)
    print_result(result)


def print_result(result: dict) -> None:
    """The arms side by side, then the task scores per arm (stdout; logs go to stderr), and where the outputs are."""
    from rich.table import Table

    from flows.ablate import PLOT_FILE, RESULT_FILE

    out = Console()
    arms = result["arms"]
    table = Table(title=f"pretrain ablate {result['recipe']}: {result['train_tokens']:,} training tokens per arm "
                        f"({result['steps']} steps)")
    for column in ("arm", "overrides", "documents", "train tokens", "held-out loss", "centred"):
        table.add_column(column, justify="left" if column in ("arm", "overrides") else "right")
    for row in arms:
        centered = "" if row["centered"] is None else f"{row['centered']:.4f}"
        table.add_row(row["name"], ", ".join(row["overrides"]) or "(recipe)", f"{row['documents']:,}",
                      f"{row['train_tokens']:,}", f"{row['val_loss']:.4f}", centered)
    out.print(table)
    if result["tasks"]:
        scores = Table(title="accuracy per task")
        for column in ("task", "random", *(row["name"] for row in arms)):
            scores.add_column(column, justify="left" if column == "task" else "right")
        for task in result["tasks"]:
            scores.add_row(task, f"{result['random'][task]:.3f}", *(f"{row['eval'][task]:.3f}" for row in arms))
        out.print(scores)
    root = Path(result["output_dir"])
    out.print(f"held-out text: {', '.join(result['heldout']['files'])} ({result['heldout']['tokens']:,} tokens)")
    out.print(f"ablation: {root / RESULT_FILE}; plot: {root / PLOT_FILE} "
              f"({result['cache_hits']} of {result['cache_lookups']} steps from cache)")
