"""Scaling-law commands: plan a run, fit L(N, D) to runs, run a sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cli.common import app, console, fail, run_with_progress
from cli.options import ListOptions
from pretrain.config import ConfigError


scaling_app = typer.Typer(help="Scaling laws: plan a run (Chinchilla), fit L(N, D) to runs, run a sweep.",
                          no_args_is_help=True)
app.add_typer(scaling_app, name="scaling")


def _plan_budget(flops, gpu_hours, device, mfu, tokens, tokens_dir) -> tuple[str, float, dict]:
    """("flops" or "tokens", the amount, how it was derived) from the plan options."""
    from models.scaling import flops_from_gpu_hours
    from tasks.scaling import tokens_in_index

    given = [name for name, value in (("--flops", flops), ("--gpu-hours", gpu_hours),
                                      ("--tokens/--tokens-dir", tokens or tokens_dir)) if value is not None]
    if len(given) != 1 or (tokens is not None and tokens_dir is not None):
        raise typer.BadParameter(f"give one of --flops, --gpu-hours or --tokens/--tokens-dir (got {given or 'none'})")
    if gpu_hours is not None:
        if device is None or mfu is None:
            raise typer.BadParameter("--gpu-hours needs --device and --mfu")
        budget = flops_from_gpu_hours(gpu_hours, device, mfu)
        return "flops", budget, {"gpu_hours": gpu_hours, "device": device, "mfu": mfu}
    if flops is not None:
        return "flops", flops, {}
    if tokens_dir is not None:
        return "tokens", float(tokens_in_index(tokens_dir)), {"tokens_dir": str(tokens_dir)}
    return "tokens", tokens, {}


def _check_plan_sizes(seq_len: Optional[int], vocab_size: Optional[int]) -> None:
    """The model-shape options must be ones a ModelConfig takes (a context of 8+ tokens, 2+ token types)."""
    if seq_len is not None and seq_len < 8:
        raise typer.BadParameter(f"--seq-len must be at least 8 tokens, got {seq_len}")
    if vocab_size is not None and vocab_size < 2:
        raise typer.BadParameter(f"--vocab-size must be at least 2, got {vocab_size}")


def _model_params(model: str, vocab_size: int, seq_len: int) -> float:
    from models.shapes import total_params
    from models.sizes import MODEL_SIZES, model_config

    if model in MODEL_SIZES:
        return float(total_params(model_config(model, vocab_size, seq_len)))
    try:
        return float(model)
    except ValueError:
        raise typer.BadParameter(f"--model: {model!r} is neither a named size ({', '.join(MODEL_SIZES)}) "
                                 "nor a parameter count") from None


def _print_plan(out: dict) -> None:
    law, shape = out["law_params"], out["model"]
    lines = [
        ("law", f"{out['law']}: L = {law['E']:.4g} + {law['A']:.4g} / N^{law['alpha']:.4g} + "
                f"{law['B']:.4g} / D^{law['beta']:.4g}"),
        ("budget", f"{out['flops']:.4g} FLOPs ({out['method']})"),
        ("parameters N", f"{out['n_params']:.4g}"),
        ("tokens D", f"{out['n_tokens']:.4g}"),
        ("tokens per parameter", f"{out['tokens_per_param']:.1f}"),
        ("predicted loss", f"{out['loss']:.4f} nats/token"),
        ("closest config", "none (see the warning)" if shape is None else
         f"{shape['name']}: n_layers {shape['n_layers']}, d_model {shape['d_model']}, n_heads "
         f"{shape['n_heads']} ({shape['params']:.4g} parameters, vocabulary {shape['vocab_size']})"),
    ]
    epochs = out.get("epochs_for_model")
    if epochs:
        lines.append((f"model {epochs['model']}", f"{epochs['n_params']:.4g} parameters, compute-optimal at "
                      f"{epochs['optimal_tokens']:.4g} tokens = {epochs['epochs']:.2f} epochs of the data"
                      + (" (over 4: repeated data is worth less, Muennighoff et al. 2023)"
                         if epochs["repeats_too_much"] else "")))
    for label, value in lines:
        typer.echo(f"{label:<22}{value}")


@scaling_app.command("plan")
def scaling_plan(
    flops: Optional[float] = typer.Option(None, help="Training compute budget in FLOPs, e.g. 1e21."),
    gpu_hours: Optional[float] = typer.Option(None, help="Budget as GPU-hours (with --device and --mfu)."),
    device: Optional[str] = typer.Option(None, help="h100, h200 or a100 (dense bf16 peak)."),
    mfu: Optional[float] = typer.Option(None, help="Model FLOPs utilisation, e.g. 0.4."),
    tokens: Optional[float] = typer.Option(None, help="Tokens the data has: plan the model for them."),
    tokens_dir: Optional[Path] = typer.Option(None, help="Token shards folder: its index.json's train tokens."),
    law: str = typer.Option("chinchilla", help="chinchilla, epoch, or a JSON file from `scaling fit --json`."),
    seq_len: Optional[int] = typer.Option(None, help="Count attention FLOPs at this sequence length (numeric optimum)."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary for the config's embeddings (default: the "
                                             "tokens dir's, else 32000)."),
    model: Optional[str] = typer.Option(None, help="With --tokens: epochs a named size or N-parameter model needs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compute-optimal N and D for a budget (or the best N for the tokens you have)."""
    from models.scaling import (
        ScalingError, epochs_needed, load_law, loss_above_uniform, optimal_allocation, plan_for_tokens,
    )
    from models.shapes import closest_model_shape, shape_mismatch, total_params

    try:
        _check_plan_sizes(seq_len, vocab_size)
        kind, amount, source = _plan_budget(flops, gpu_hours, device, mfu, tokens, tokens_dir)
        if model is not None and kind != "tokens":
            raise typer.BadParameter("--model needs --tokens or --tokens-dir (it reports epochs of that data)")
        scaling_law = load_law(law)
        plan = optimal_allocation(amount, scaling_law, seq_len=seq_len) if kind == "flops" \
            else plan_for_tokens(amount, scaling_law)
        if vocab_size is None and tokens_dir is not None:
            vocab_size = json.loads((tokens_dir / "index.json").read_text()).get("vocab_size")
        vocab, context = vocab_size or 32_000, seq_len or 2048
        name, shape = closest_model_shape(plan.n_params, vocab_size=vocab, seq_len=context)
        warnings = [w for w in (shape_mismatch(plan.n_params, name, shape), loss_above_uniform(plan.loss, vocab)) if w]
        out = {**plan.to_dict(), **source, "law_params": scaling_law.params(), "warnings": warnings,
               "model": None if shape_mismatch(plan.n_params, name, shape) else
               {"name": name, **shape.model_dump(include={"n_layers", "d_model", "n_heads", "n_kv_heads",
                                                          "vocab_size"}), "params": total_params(shape)}}
        if model is not None:
            out["epochs_for_model"] = {"model": model,
                                       **epochs_needed(_model_params(model, vocab, context), amount, scaling_law)}
    except (ScalingError, typer.BadParameter) as error:
        fail(str(error.message if isinstance(error, typer.BadParameter) else error))
    for warning in out["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        _print_plan(out)


@scaling_app.command("fit")
def scaling_fit(
    csv_path: Path = typer.Option(..., "--csv", help="One row per training run."),
    params_col: str = typer.Option(..., help="Column of parameter counts N."),
    loss_col: str = typer.Option(..., help="Column of final (validation) losses."),
    tokens_col: Optional[str] = typer.Option(None, help="Column of training tokens D."),
    flops_col: Optional[str] = typer.Option(None, help="Column of training FLOPs (D = FLOPs / 6N)."),
    plot: Optional[Path] = typer.Option(None, help="PNG to write (default: next to the CSV, <name>-fit.png)."),
    bootstrap: int = typer.Option(100, min=0, help="Bootstrap resamples for the confidence intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit L(N, D) (Huber on log loss, L-BFGS from a grid) and IsoFLOP parabolas; plot them."""
    from models.scaling import LAW_FIELDS, ScalingError, fit_law, isoflop_fits
    from tasks.scaling import plot_fit, read_runs_csv

    try:
        runs = read_runs_csv(csv_path, params_col, loss_col, tokens_col=tokens_col, flops_col=flops_col)
        fit = fit_law(runs.n_params, runs.n_tokens, runs.losses, bootstrap=bootstrap, name=csv_path.stem)
    except ScalingError as error:
        fail(str(error))
    isoflop = isoflop_fits(runs.n_params, runs.losses, runs.flops)
    png = plot_fit(plot or csv_path.with_name(f"{csv_path.stem}-fit.png"), runs, fit.law, isoflop)
    out = {**fit.to_dict(), "isoflop": isoflop.to_dict(), "plot": str(png)}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{len(runs)} runs; {fit.confidence:.0%} intervals from {bootstrap} bootstrap resamples")
    for key in LAW_FIELDS:
        low, high = fit.intervals.get(key, (float("nan"), float("nan")))
        typer.echo(f"  {key:<6} {out[key]:>10.4g}   [{low:.4g}, {high:.4g}]")
    typer.echo(f"N_opt ~ C^{fit.law.a:.3f}, D_opt ~ C^{fit.law.b:.3f}; IsoFLOP parabolas: a = {isoflop.a}, "
               f"b = {isoflop.b}")
    typer.echo(f"plot: {png}")


@scaling_app.command("sweep", cls=ListOptions)
def scaling_sweep(
    data: Path = typer.Option(..., help="Token shards folder (from `pretrain tokenize`)."),
    output: Path = typer.Option(Path("runs/sweep"), "--output", "-o", help="Sweep folder: runs/, sweep.csv, fit.json, sweep.png."),
    config: Optional[str] = typer.Option(None, help="A sweep config: a shipped one by name (gpu: a GPU grid) or a "
                                         "YAML path (default: the CPU grid)."),
    set_: list[str] = typer.Option([], "--set", help="Override a sweep config field: key.path=value, e.g. "
                                   "train.seq_len=128 (one or more)."),
) -> None:
    """Train a grid of models at several compute budgets, then fit L(N, D) to their losses."""
    from flows.sweep import sweep_flow
    from models.scaling import ScalingError
    from pretrain.config import load_sweep_config

    try:
        cfg = load_sweep_config(config, set_)
    except (ConfigError, OSError) as error:
        fail(str(error))
    try:
        result = run_with_progress("sweep", lambda: sweep_flow(config=cfg, data_dir=str(data), output_dir=str(output)))
    except (ScalingError, FileNotFoundError) as error:
        fail(str(error))
    except Exception as error:  # a training run failed after its retries
        fail(f"{type(error).__name__}: {error}", code=1)
    console.print(f"[green]sweep[/green] {result['runs']} runs in {result['seconds']} s: "
                  + ", ".join(f"{k} {result[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta")))
    console.print(f"table {result['csv']}, fit {result['fit']}, plot {result['plot']}")
