"""Prefect flow: a scaling sweep. Train every model shape at every compute budget with
the training stack (``flows.train.train_task``: DeepSpeed, one run after another), take
each run's final validation loss, fit L(N, D) (``models.scaling.fit_law``) and the
IsoFLOP parabolas, and publish the runs table, the fit and the plot. The sweep's plan (which
shapes at which budgets, for how many steps) is made here too.

Output folder::

    runs/<label>/     each training run (label: budget and shape, e.g. c3e10-2x128)
    sweep.csv         one row per run (``pretrain scaling fit --csv`` reads it)
    fit.json          E, A, B, alpha, beta, intervals, IsoFLOP minima (``--law fit.json``)
    sweep.png         IsoFLOP curves and the fitted frontier
    info.json

A run is reused when its folder holds a finished run of the same TrainConfig, token
data (index.json identity) and training code: a rerun of an unchanged sweep trains
nothing.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.common import file_identity, funnel_table, parameter_policy, publish_markdown
from flows.train import STAGE as TRAIN_STAGE
from flows.train import train_task
from models.scaling import LAW_FIELDS, ScalingError, fit_law, isoflop_fits
from models.shapes import total_params
from models.transformer import non_embedding_params
from pretrain.config import ModelConfig, SweepConfig, TrainConfig
from pretrain.progress import report_progress
from pretrain.provenance import atomic_write_text, code_version, stable_hash, write_info_json
from tasks.scaling import Runs, plot_fit
from tasks.tokenize import INDEX_FILE, TokenShards
from tasks.train.ds_config import batch_plan

KEY_FILE = "sweep_key.txt"
MIN_RUNS = 5  # the law has five parameters
FIT_STARTS = 8  # L-BFGS from the 8 best points of the paper's grid (a sweep has few runs; they agree)


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: a shape at a budget, its steps and its TrainConfig."""

    label: str
    budget_flops: float
    n_params: int  # with embeddings
    steps: int
    config: Any  # TrainConfig


def plan_sweep(sweep, data_dir: str | Path, output_dir: str | Path) -> list[SweepRun]:
    """Every (budget, shape) of a ``SweepConfig`` as a run in OUTPUT/runs/<label>.

    Tokens are C / (6 N), N with embeddings, rounded to whole optimizer steps; a run
    under ``min_steps`` is an error that names its budget and shape.
    """
    vocab_size = TokenShards.open(data_dir).vocab_size
    base = sweep.train.model_dump(exclude={"model", "model_size"})
    tokens_per_step = batch_plan(sweep.train, sweep.train.num_procs).tokens_per_step
    runs = []
    for budget in sweep.budgets_flops:
        for shape in sweep.shapes:
            model = ModelConfig(vocab_size=vocab_size, max_seq_len=sweep.train.seq_len, **shape.model_dump())
            n_params = total_params(model)
            steps = round(budget / (6.0 * n_params * tokens_per_step))
            label = f"c{budget:.0e}-{shape.n_layers}x{shape.d_model}".replace("+", "")
            if steps < sweep.min_steps:
                raise ScalingError(
                    f"sweep.budgets_flops: budget {budget:.3g} gives shape {shape.n_layers}x{shape.d_model} "
                    f"({n_params:,} parameters) {steps} steps of {tokens_per_step:,} tokens, under min_steps "
                    f"{sweep.min_steps}; raise the budget to at least "
                    f"{6.0 * n_params * tokens_per_step * sweep.min_steps:.3g}")
            fields = {**base, "data_dir": str(data_dir), "output_dir": str(Path(output_dir) / "runs" / label),
                      "model": model.model_dump(), "model_size": None, "max_steps": steps,
                      "warmup_steps": round(sweep.warmup_fraction * steps), "eval_every_steps": steps,
                      "checkpoint_every_steps": steps, "stop_after_steps": None}
            runs.append(SweepRun(label, budget, n_params, steps, TrainConfig.model_validate(fields)))
    return runs


SWEEP_COLUMNS = ("label", "budget_flops", "n_layers", "d_model", "n_heads", "n_params", "n_params_non_embedding",
                 "steps", "tokens", "flops_6nd", "train_flops", "final_loss", "val_loss")


def sweep_row(run: SweepRun, summary: dict) -> dict[str, Any]:
    """One row of sweep.csv from a finished run's summary.json."""
    model = run.config.model
    if summary.get("val_loss") is None:
        raise ScalingError(f"run {run.label}: no validation loss in its summary (empty val split?)")
    return {"label": run.label, "budget_flops": run.budget_flops, "n_layers": model.n_layers,
            "d_model": model.d_model, "n_heads": model.n_heads, "n_params": summary["params"],
            "n_params_non_embedding": non_embedding_params(model), "steps": summary["steps"],
            "tokens": summary["tokens"], "flops_6nd": 6.0 * summary["params"] * summary["tokens"],
            "train_flops": summary["flops_per_token"] * summary["tokens"], "final_loss": summary["final_loss"],
            "val_loss": summary["val_loss"]}


def write_csv(path: str | Path, rows: list[dict], columns: tuple[str, ...] = SWEEP_COLUMNS) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)


def run_key(run: SweepRun) -> str:
    cfg = run.config
    return stable_hash("sweep-run", cfg.model_dump(mode="json"), file_identity(Path(cfg.data_dir) / INDEX_FILE),
                       TRAIN_STAGE.code_version())


def reusable_summary(run: SweepRun) -> dict | None:
    """The run's summary.json when the folder holds this very run, finished."""
    run_dir = Path(run.config.output_dir)
    key_path, summary_path = run_dir / KEY_FILE, run_dir / "summary.json"
    if not (key_path.is_file() and summary_path.is_file()) or key_path.read_text().strip() != run_key(run):
        return None
    summary = json.loads(summary_path.read_text())
    return summary if summary.get("completed") and summary.get("steps") == run.steps else None


def train_run(run: SweepRun, logger) -> dict:
    summary = reusable_summary(run)
    if summary is not None:
        logger.info("%s: reusing the finished run in %s", run.label, run.config.output_dir)
        return summary
    logger.info("%s: %d steps of %s (%s parameters, budget %.3g FLOPs)", run.label, run.steps,
                run.config.model.model_dump(include={"n_layers", "d_model", "n_heads"}), f"{run.n_params:,}",
                run.budget_flops)
    summary = train_task.with_options(task_run_name=f"train-{run.label}")(run.config)
    atomic_write_text(Path(run.config.output_dir) / KEY_FILE, run_key(run) + "\n")
    return summary


def fit_rows(rows: list[dict], bootstrap: int, out: Path) -> dict:
    """Fit the law and the IsoFLOP parabolas to the runs; write fit.json and sweep.png."""
    runs = Runs(*(np.array([row[k] for row in rows], dtype=float)
                  for k in ("n_params", "tokens", "val_loss", "budget_flops")))
    fit = fit_law(runs.n_params, runs.n_tokens, runs.losses, starts=FIT_STARTS, bootstrap=bootstrap, name="sweep")
    isoflop = isoflop_fits(runs.n_params, runs.losses, runs.flops)
    result = {**fit.to_dict(), "isoflop": isoflop.to_dict()}
    atomic_write_text(out / "fit.json", json.dumps(result, indent=2) + "\n")
    plot_fit(out / "sweep.png", runs, fit.law, isoflop)
    return result


def publish(rows: list[dict], result: dict, out: Path) -> None:
    create_table_artifact(key="scaling-sweep-runs", table=rows, description="scaling sweep: one row per run")
    intervals = result["intervals"]
    lines = funnel_table([(key, f"{result[key]:.4g}" + (f" [{intervals[key][0]:.4g}, {intervals[key][1]:.4g}]"
                                                        if key in intervals else ""))
                          for key in LAW_FIELDS], header=("parameter", f"fit ({result['confidence']:.0%} interval)"))
    lines += ["", f"N_opt ~ C^{result['a']:.3f}, D_opt ~ C^{result['b']:.3f} (from the fit); IsoFLOP parabolas: "
              f"a = {result['isoflop']['a']}, b = {result['isoflop']['b']}", "",
              f"runs: {len(rows)}; table {out / 'sweep.csv'}; fit {out / 'fit.json'}", "",
              "![IsoFLOP curves and frontier](data:image/png;base64,"
              + base64.b64encode((out / "sweep.png").read_bytes()).decode() + ")"]
    publish_markdown("scaling-sweep-fit", "Scaling sweep fit", lines)


@flow(name="scaling-sweep")
def sweep_flow(config: SweepConfig = SweepConfig(), data_dir: str = "", output_dir: str = "runs/sweep") -> dict:
    """Train the sweep grid on token shards, fit L(N, D); returns fit.json's content and the paths.

    A run from a deployment has data_dir and output_dir confined to the data root (``pretrain.paths``)."""
    logger = get_run_logger()
    started = time.perf_counter()
    if not data_dir:
        raise ScalingError("data_dir: give a token shards folder (from `pretrain tokenize`)")
    policy = parameter_policy()
    if policy is not None:
        data_dir, output_dir = str(policy.path(data_dir, "data_dir")), str(policy.path(output_dir, "output_dir"))
    out = Path(output_dir).resolve()
    runs = plan_sweep(config, Path(data_dir).resolve(), out)
    if len(runs) < MIN_RUNS:
        raise ScalingError(f"sweep: {len(runs)} runs ({len(config.budgets_flops)} budgets x {len(config.shapes)} "
                           f"shapes); fitting five parameters needs at least {MIN_RUNS}")
    logger.info("scaling sweep: %d runs (%d budgets x %d shapes) into %s", len(runs), len(config.budgets_flops),
                len(config.shapes), out)
    rows = []
    for done, run in enumerate(runs, start=1):
        rows.append(sweep_row(run, train_run(run, logger)))
        report_progress("sweep", done, len(runs))
    write_csv(out / "sweep.csv", rows)
    result = fit_rows(rows, config.bootstrap, out)
    write_info_json(out, stage="scaling-sweep", code=code_version(__name__, *TRAIN_STAGE.code_modules),
                    config=config.model_dump(mode="json"), inputs=[str(Path(data_dir).resolve())])
    publish(rows, result, out)
    seconds = round(time.perf_counter() - started, 1)
    logger.info("sweep fit: %s (%.1f s)", {k: round(result[k], 4) for k in LAW_FIELDS}, seconds)
    return {**result, "runs": len(rows), "seconds": seconds, "csv": str(out / "sweep.csv"),
            "plot": str(out / "sweep.png"), "fit": str(out / "fit.json")}
