"""The scaling study's files: runs from a CSV, the plot of a fit, the token budget of a token index.

The law and its fit are ``models.scaling``; this module only reads and draws.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.scaling import CHINCHILLA, IsoFlopResult, ScalingError, ScalingLaw, check_runs
from tasks.tokenize import INDEX_FILE


def tokens_in_index(tokens_dir: str | Path, split: str = "train") -> int:
    """Tokens of a split in a tokenize output folder's index.json."""
    path = Path(tokens_dir) / INDEX_FILE
    if not path.is_file():
        raise ScalingError(f"--tokens-dir: no {INDEX_FILE} in {tokens_dir} (run `pretrain tokenize` first)")
    try:
        index = json.loads(path.read_bytes())
    except ValueError as error:  # not JSON, or not UTF-8
        raise ScalingError(f"--tokens-dir: {path} is not JSON ({error}); rerun `pretrain tokenize`") from None
    if not isinstance(index, dict) or not isinstance(index.get("tokens", {}), dict):
        raise ScalingError(f"--tokens-dir: {path} is not a token index (no tokens mapping)")
    tokens = index.get("tokens", {}).get(split)
    if not isinstance(tokens, int) or tokens <= 0:
        raise ScalingError(f"--tokens-dir: {path} has no {split} tokens (tokens: {index.get('tokens')!r})")
    return tokens



@dataclass
class Runs:
    n_params: np.ndarray
    n_tokens: np.ndarray
    losses: np.ndarray
    flops: np.ndarray  # the FLOPs column, else 6 N D

    def __len__(self) -> int:
        return len(self.losses)


def read_runs_csv(path: str | Path, params_col: str, loss_col: str, tokens_col: str | None = None,
                  flops_col: str | None = None) -> Runs:
    """Runs from a CSV: tokens from ``tokens_col``, or FLOPs / (6 N) from ``flops_col``."""
    if (tokens_col is None) == (flops_col is None):
        raise ScalingError("give exactly one of --tokens-col and --flops-col")
    path = Path(path)
    if not path.is_file():
        raise ScalingError(f"--csv: no file {path}")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ScalingError(f"--csv: {path} is not a CSV text file ({error})") from None
    columns = list(rows[0]) if rows else []
    flags = {"--params-col": params_col, "--loss-col": loss_col, "--tokens-col": tokens_col, "--flops-col": flops_col}
    for flag, column in flags.items():
        if column is not None and column not in columns:
            raise ScalingError(f"{flag}: no column {column!r} in {path} (columns: {', '.join(columns) or 'none'})")

    def numbers(flag: str) -> np.ndarray:
        values = []
        for line, row in enumerate(rows, start=2):
            try:
                values.append(float(row[flags[flag]]))
            except (TypeError, ValueError):
                raise ScalingError(f"{flag}: {path} line {line}: {flags[flag]} = {row[flags[flag]]!r} is not a "
                                   "number") from None
        return np.array(values)

    n, loss = numbers("--params-col"), numbers("--loss-col")
    if flops_col is not None:
        flops = numbers("--flops-col")
        tokens = flops / (6.0 * n)
    else:
        tokens = numbers("--tokens-col")
        flops = 6.0 * n * tokens
    check_runs(n, tokens, loss)
    return Runs(n, tokens, loss, flops)


def plot_fit(path: str | Path, runs: Runs, law: ScalingLaw, isoflop: IsoFlopResult) -> Path:
    """IsoFLOP curves (runs, parabolas, the law at each budget) and the compute-optimal frontier."""
    import matplotlib  # here, not at the top: slow to import, and only a fit draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(isoflop.curves))))
    for curve, color in zip(isoflop.curves, colors):
        left.scatter(curve.n_params, curve.losses, color=color, label=f"C = {curve.flops:.2g}")
        grid = np.geomspace(min(curve.n_params) / 1.5, max(curve.n_params) * 1.5, 100)
        left.plot(grid, law.loss(grid, curve.flops / (6.0 * grid)), color=color, alpha=0.6)
        if curve.coeffs is not None:
            x = np.log(grid)
            left.plot(grid, np.polyval(curve.coeffs, x), "--", color=color, alpha=0.6)
        if curve.n_opt is not None:
            left.plot([curve.n_opt], [curve.loss_opt], "*", color=color, markersize=12)
    left.set(xscale="log", xlabel="parameters N", ylabel="loss (nats/token)",
             title="IsoFLOP profiles (line: fitted law, dashed: parabola, star: its minimum)")
    left.legend(fontsize=8)

    budgets = np.array([c.flops for c in isoflop.curves]) if isoflop.curves else runs.flops
    c_grid = np.geomspace(budgets.min() / 3, budgets.max() * 3, 100)
    right.plot(c_grid, law.G * (c_grid / 6.0) ** law.a, label=f"fitted law: N_opt ~ C^{law.a:.3f}")
    right.plot(c_grid, CHINCHILLA.G * (c_grid / 6.0) ** CHINCHILLA.a, ":", color="gray",
               label="Hoffmann et al. 2022 (approach 3)")
    right.scatter(runs.flops, runs.n_params, s=12, color="lightgray", label="runs")
    minima = [(c.flops, c.n_opt) for c in isoflop.curves if c.n_opt is not None]
    if minima:
        right.scatter(*zip(*minima), marker="*", s=120, color="C3", label="IsoFLOP minima")
    right.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="N_opt",
              title="Compute-optimal frontier")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
