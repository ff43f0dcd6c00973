"""Training commands: train a model on token shards, export a checkpoint for Hugging Face."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cli.common import app, console, fail, run_with_progress
from cli.options import ListOptions
from pretrain.config import ConfigError, PipelineConfig, TrainConfig, apply_overrides, load_recipe, validate_config


def _train_config(config: Optional[Path], overrides: list[str], short: dict) -> TrainConfig:
    """The recipe's `train` section, with the --set assignments (recipe paths: train.seq_len=8), then the options."""
    for assignment in overrides:
        _refuse_a_bare_train_key(assignment)
    recipe = (load_recipe(str(config), overrides) if config else
              validate_config(PipelineConfig, apply_overrides({}, overrides)))
    raw = recipe.train.model_dump(exclude_none=True)
    raw.update({k: v for k, v in short.items() if v is not None})
    return validate_config(TrainConfig, raw, prefix="train.")


def _refuse_a_bare_train_key(assignment: str) -> None:
    """`--set seq_len=8` (a TrainConfig field, not a recipe key): say the recipe path, train.seq_len."""
    key = assignment.split("=", 1)[0].strip()
    top = key.split(".", 1)[0]
    if top not in PipelineConfig.model_fields and top in TrainConfig.model_fields:
        raise ConfigError(f"--set {assignment}: the recipe has no key {key!r}; the training field is train.{key} "
                          f"(--set train.{assignment})")


@app.command(cls=ListOptions)
def train(
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `train` section is the run's config."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value, e.g. "
                                   "train.max_steps=5 (one or more)."),
    resume: bool = typer.Option(False, help="Continue from the newest checkpoint in the run folder."),
    data: Optional[Path] = typer.Option(None, help="Token shards folder (from `pretrain tokenize`)."),
    output: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, metrics.jsonl, summary.json."),
    model: Optional[str] = typer.Option(None, help="Named model size: tiny, small, 125m, 350m, 1b, 7b."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    num_procs: Optional[int] = typer.Option(None, help="Processes (GPUs, or CPU ranks on gloo)."),
) -> None:
    """Train a model with DeepSpeed (ZeRO-3 by default) on token shards."""
    from flows.train import train_flow
    from tasks.train.ds_config import BatchConfigError
    from tasks.train.launch import world_size
    from tasks.train.parallel.layout import check_layout
    from tasks.train.preflight import TrainConfigError, check_run

    try:
        cfg = _train_config(config, set_, {"data_dir": str(data) if data else None,
                                           "output_dir": str(output) if output else None,
                                           "model_size": model, "max_steps": max_steps, "num_procs": num_procs})
    except ConfigError as error:
        fail(str(error))
    if not cfg.data_dir:
        fail("no token data: give --data TOKENS_DIR (or train.data_dir in the recipe)")
    try:
        found = check_run(cfg)  # data, model and vocabulary, before Prefect or a launcher starts
        check_layout(cfg, world_size(cfg), found.model)  # and the parallel layout
    except (TrainConfigError, FileNotFoundError) as error:
        fail(str(error))
    for warning in found.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    try:
        summary = run_with_progress("train", lambda: train_flow(config=cfg, resume=resume))
    except (BatchConfigError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    except Exception as error:  # the training processes failed after their retries
        fail(f"{type(error).__name__}: {error}", code=1)
    val_loss = summary.get("val_loss")
    validation = (f"validation loss {val_loss}" if val_loss is not None else
                  f"no validation loss (the val split has {summary.get('val_tokens', 0):,} tokens, not one window "
                  f"of seq_len {cfg.seq_len} + 1)")
    console.print(f"[green]trained[/green] {summary.get('steps')} steps: loss {summary.get('final_loss')}, "
                  f"{validation}; run folder {cfg.output_dir}")


@app.command("export-hf")
def export_hf_command(
    run_dir: Path = typer.Option(..., "--run", help="A training run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for config.json + model.safetensors (+ tokenizer)."),
    tag: Optional[str] = typer.Option(None, help="Checkpoint tag (default: the newest undamaged, e.g. step100)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --output that is not an earlier export."),
) -> None:
    """Export a checkpoint as a Hugging Face `LlamaForCausalLM` folder (loads with transformers)."""
    from models.export_hf import check_output, export_hf
    from pretrain.outputs import OutputRefused
    from tasks.train.checkpoint import checkpoint_folder, checkpoint_root, consolidate_fp32, saved_model_shape
    from tasks.train.main import load_train_config

    summary_path, config_path = run_dir / "summary.json", run_dir / "train_config.json"
    if not config_path.is_file():
        fail(f"{run_dir} is not a training run folder (no train_config.json)")
    cfg = load_train_config(config_path)
    tokenizer = Path(cfg.data_dir) / "tokenizer.json"
    inputs = [run_dir, checkpoint_root(run_dir), *([tokenizer] if tokenizer.is_file() else [])]
    try:
        check_output(output, inputs, force)  # before the checkpoint is read
    except OutputRefused as error:
        fail(str(error))
    try:
        folder = checkpoint_folder(checkpoint_root(run_dir), tag,  # its files checked against its manifest
                                   say=lambda line: console.print(f"[yellow]warning:[/yellow] {line}"))
        state = consolidate_fp32(checkpoint_root(run_dir), folder.name)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    shape = saved_model_shape(folder) or summary.get("model")  # the checkpoint's own, else the run's
    if shape is None:
        fail(f"no model shape in {folder / 'client.json'} or {summary_path}; finish or resume the run first")
    from pretrain.config import ModelConfig

    model_cfg = ModelConfig.model_validate(shape)
    try:
        out = export_hf(state, model_cfg, output, tokenizer_file=tokenizer if tokenizer.is_file() else None,
                        inputs=[run_dir, folder], force=force)
    except OutputRefused as error:
        fail(str(error))
    console.print(f"[green]exported[/green] {out} (LlamaForCausalLM, {len(state)} tensors)")
