"""Scaling laws: the planner against values computed here from the papers' constants,
the fit on losses drawn from a known law, IsoFLOP parabolas, the CSV reader and the
`pretrain scaling` commands. No training here (tests/test_sweep.py trains)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from models.scaling import (
    CHINCHILLA, EPOCH, InitGrid, ScalingError, ScalingLaw, epochs_needed, fit_law, flops_from_gpu_hours,
    isoflop_fits, load_law, optimal_allocation, plan_for_tokens, shape_for_params, training_flops_per_token,
)
from models.shapes import closest_model_shape, total_params
from tasks.scaling import read_runs_csv, tokens_in_index

# Hoffmann et al. 2022, approach 3 (Eq. 10), and Besiroglu et al. 2024's refit, typed in again here.
PAPER = {"chinchilla": (1.69, 406.4, 410.7, 0.34, 0.28), "epoch": (1.82, 482.01, 2085.43, 0.3478, 0.3658)}
BUDGETS = (1e18, 1e21, 5.76e23, 1e25)  # 5.76e23: Gopher's and Chinchilla's budget


def closed_form(E, A, B, alpha, beta, flops):
    """Hoffmann et al. 2022, Eq. 4, written out independently of models.scaling."""
    g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n = g * (flops / 6) ** (beta / (alpha + beta))
    d = (1 / g) * (flops / 6) ** (alpha / (alpha + beta))
    return n, d, E + A / n ** alpha + B / d ** beta


def brute_force_optimum(E, A, B, alpha, beta, flops):
    """argmin over a fine log grid of N of L(N, C / 6N): no algebra at all."""
    n = np.geomspace(1e3, flops / 6 / 1e3, 400_001)
    loss = E + A / n ** alpha + B / (flops / (6 * n)) ** beta
    return n[np.argmin(loss)]


# ---------------------------------------------------------------- acceptance 1: the planner


@pytest.mark.parametrize("name", ["chinchilla", "epoch"])
def test_closed_form_frontier_matches_independent_values(name):
    law, (E, A, B, alpha, beta) = {"chinchilla": CHINCHILLA, "epoch": EPOCH}[name], PAPER[name]
    assert (law.E, law.A, law.B, law.alpha, law.beta) == (E, A, B, alpha, beta)
    assert law.a == pytest.approx(beta / (alpha + beta), rel=1e-12)
    assert law.b == pytest.approx(alpha / (alpha + beta), rel=1e-12)
    for flops in BUDGETS:
        plan = optimal_allocation(flops, law)
        n, d, loss = closed_form(E, A, B, alpha, beta, flops)
        print(f"{name} C={flops:.3g}: N {plan.n_params:.4g} (indep. {n:.4g}), D {plan.n_tokens:.4g} "
              f"(indep. {d:.4g}), D/N {plan.tokens_per_param:.2f}, loss {plan.loss:.4f} (indep. {loss:.4f})")
        assert plan.n_params == pytest.approx(n, rel=1e-9)
        assert plan.n_tokens == pytest.approx(d, rel=1e-9)
        assert plan.loss == pytest.approx(loss, rel=1e-12)
        assert 6 * plan.n_params * plan.n_tokens == pytest.approx(flops, rel=1e-12)
        assert plan.n_params == pytest.approx(brute_force_optimum(E, A, B, alpha, beta, flops), rel=2e-4)


def test_chinchilla_exponents_are_the_papers_approach_3_row():
    # Hoffmann et al. 2022, Table 2, approach 3: a = 0.46, b = 0.54 (from the rounded fit).
    assert CHINCHILLA.a == pytest.approx(0.46, abs=0.01)
    assert CHINCHILLA.b == pytest.approx(0.54, abs=0.01)
    assert CHINCHILLA.a + CHINCHILLA.b == pytest.approx(1.0)


def test_epoch_law_gives_about_20_tokens_per_parameter():
    ratios = [optimal_allocation(flops, EPOCH).tokens_per_param for flops in (1e20, 1e22, 5.76e23, 1e25)]
    print("epoch tokens per parameter:", [round(r, 2) for r in ratios])
    assert all(15 < r < 25 for r in ratios)
    # exponents of N_opt and D_opt are nearly equal (0.513 and 0.487): the ratio barely moves over 5 decades
    assert max(ratios) / min(ratios) < 1.5


def test_numeric_allocation_counts_attention_and_is_optimal():
    flops, seq_len = 1e21, 8192
    plan = optimal_allocation(flops, CHINCHILLA, seq_len=seq_len)
    closed = optimal_allocation(flops, CHINCHILLA)
    assert plan.method == "numeric" and closed.method == "closed_form"
    # the whole budget is spent at the training code's FLOPs per token
    assert plan.n_tokens * training_flops_per_token(plan.n_params, seq_len) == pytest.approx(flops, rel=1e-9)
    assert plan.n_tokens < closed.n_tokens  # attention FLOPs leave fewer tokens
    for factor in (0.97, 1.03):  # a local minimum of the loss along the budget
        n = plan.n_params * factor
        assert CHINCHILLA.loss(n, flops / training_flops_per_token(n, seq_len)) > plan.loss
    tiny_context = optimal_allocation(flops, CHINCHILLA, seq_len=1)
    assert tiny_context.n_params == pytest.approx(closed.n_params, rel=1e-3)


def test_attention_term_is_the_training_codes():
    from models.transformer import flops_per_token
    from pretrain.config import ModelConfig

    cfg = ModelConfig(vocab_size=1000, n_layers=24, d_model=1536, n_heads=24, max_seq_len=4096)
    attention = flops_per_token(cfg, 4096) - 6 * total_params(cfg)  # tied: 6 N with the (shared) output head
    assert attention == pytest.approx(12 * 24 * 4096 * 1536)
    n_layers, d_model = shape_for_params(12 * 24 * 1536 ** 2, aspect_ratio=1536 / 24)  # 12 d^2 per layer
    assert (n_layers, d_model) == (pytest.approx(24), pytest.approx(1536))
    assert training_flops_per_token(12 * 24 * 1536 ** 2, 4096, 64) - 6 * 12 * 24 * 1536 ** 2 == pytest.approx(attention)


def test_token_limited_plan_inverts_the_frontier():
    for flops in BUDGETS:
        best = optimal_allocation(flops, EPOCH)
        plan = plan_for_tokens(best.n_tokens, EPOCH)
        assert plan.n_params == pytest.approx(best.n_params, rel=1e-9)
        assert plan.flops == pytest.approx(flops, rel=1e-9)
        need = epochs_needed(best.n_params, best.n_tokens / 3, EPOCH)
        assert need["epochs"] == pytest.approx(3.0, rel=1e-9)
        assert need["optimal_tokens"] == pytest.approx(best.n_tokens, rel=1e-9)
    assert epochs_needed(7e9, 1e10, CHINCHILLA)["repeats_too_much"]  # Muennighoff et al. 2023: > 4 epochs


def test_budget_from_gpu_hours_uses_the_dense_bf16_peak():
    assert flops_from_gpu_hours(1000, "h100", 0.4) == pytest.approx(1000 * 3600 * 989e12 * 0.4)
    assert flops_from_gpu_hours(10, "A100", 0.5) == pytest.approx(10 * 3600 * 312e12 * 0.5)
    with pytest.raises(ScalingError, match="--device: unknown device 'v100'; known: a100, h100, h200"):
        flops_from_gpu_hours(10, "v100", 0.4)
    with pytest.raises(ScalingError, match=r"--mfu must be in \(0, 1\], got 40"):
        flops_from_gpu_hours(10, "h100", 40)


def test_tokens_from_the_shards_index(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": 1, "tokens": {"train": 123_456, "val": 789}}))
    assert tokens_in_index(tmp_path) == 123_456
    with pytest.raises(ScalingError, match="--tokens-dir: no index.json in"):
        tokens_in_index(tmp_path / "missing")


def test_closest_model_shape_prefers_named_sizes_then_builds_one():
    from models.sizes import model_config

    named = total_params(model_config("350m", 32_000, 2048))
    assert closest_model_shape(named * 1.05)[0] == "350m"
    for target in (3e7, 2.5e9, 3e10):
        name, cfg = closest_model_shape(target, vocab_size=32_000)
        params = total_params(cfg)
        print(f"{target:.3g}: {name} {cfg.n_layers} x {cfg.d_model}, {cfg.n_heads} heads, {params:.4g} parameters")
        assert abs(params / target - 1) < 0.05
        assert 16 <= cfg.d_model / cfg.n_layers <= 256
        assert cfg.d_model // cfg.n_heads in (64, 128) and cfg.d_model % cfg.n_heads == 0


def test_law_files_and_their_errors(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"E": 2.0, "A": 300, "B": 500, "alpha": 0.3, "beta": 0.25, "intervals": {}}))
    law = load_law(str(path))
    assert (law.E, law.beta, law.name) == (2.0, 0.25, "fit")
    path.write_text(json.dumps({"E": 2.0, "A": 300, "B": 500}))
    with pytest.raises(ScalingError, match="law 'fit': missing alpha, beta"):
        load_law(str(path))
    with pytest.raises(ScalingError, match="neither a named law \\(chinchilla, epoch\\) nor a file"):
        load_law("kaplan")
    with pytest.raises(ScalingError, match="beta must be a positive number"):
        ScalingLaw(E=1, A=1, B=1, alpha=1, beta=-1)


# ---------------------------------------------------------------- acceptance 2: the fit


def grid_runs(law: ScalingLaw, noise: float, seed: int):
    """Losses of a known law over a 7 x 7 grid of (N, D), times log-normal noise."""
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(1e8, 1e12, 7)))
    rng = np.random.default_rng(seed)
    return n, d, law.loss(n, d) * np.exp(rng.normal(0.0, noise, n.size))


def test_fit_recovers_the_law_exactly_without_noise():
    n, d, loss = grid_runs(CHINCHILLA, 0.0, 0)
    fit = fit_law(n, d, loss, starts=8, bootstrap=0)
    errors = {k: fit.law.params()[k] / CHINCHILLA.params()[k] - 1 for k in ("E", "A", "B", "alpha", "beta")}
    print("noise-free relative errors:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert all(abs(e) < 1e-3 for e in errors.values())


def test_fit_recovers_a_known_law_from_noisy_losses():
    """0.5% log-normal noise on 49 runs: E, alpha, beta within 5%, A and B within 25%
    (they trade off against the exponents), predictions within 1.5%."""
    n, d, loss = grid_runs(CHINCHILLA, 0.005, 0)
    fit = fit_law(n, d, loss, starts=8, bootstrap=10, seed=0)
    errors = {k: fit.law.params()[k] / CHINCHILLA.params()[k] - 1 for k in ("E", "A", "B", "alpha", "beta")}
    print("fit:", {k: round(v, 4) for k, v in fit.law.params().items()}, "relative errors:",
          {k: f"{v:+.3f}" for k, v in errors.items()}, "intervals:", fit.intervals)
    for key in ("E", "alpha", "beta"):
        assert abs(errors[key]) < 0.05, key
    for key in ("A", "B"):
        assert abs(errors[key]) < 0.25, key
    assert fit.law.a == pytest.approx(CHINCHILLA.a, abs=0.02)
    assert np.abs(fit.law.loss(n, d) / CHINCHILLA.loss(n, d) - 1).max() < 0.015  # 3 sigma of the noise
    for key, (low, high) in fit.intervals.items():
        assert low <= fit.law.params()[key] * 1.05 and high >= fit.law.params()[key] * 0.95 and low < high


def test_fit_rejects_bad_runs():
    with pytest.raises(ScalingError, match="loss: run 2 has -1.0; every value must be positive"):
        fit_law([1e6] * 6, [1e8] * 6, [3, 3, -1, 3, 3, 3])
    with pytest.raises(ScalingError, match="at least 5 runs, got 3"):
        fit_law([1e6, 2e6, 3e6], [1e8] * 3, [3, 3, 3])


def test_grid_of_starts_is_the_papers():
    points = InitGrid().points()
    assert points.shape == (6 * 6 * 5 * 5 * 5, 5)


# ---------------------------------------------------------------- IsoFLOP (approach 2)


def test_isoflop_parabolas_find_the_law_frontier():
    budgets = np.array([1e19, 1e20, 1e21, 1e22])
    n_all, loss_all, flops_all = [], [], []
    for flops in budgets:
        center = CHINCHILLA.G * (flops / 6) ** CHINCHILLA.a
        n = center * np.geomspace(0.5, 2.0, 9)
        n_all += list(n)
        loss_all += list(CHINCHILLA.loss(n, flops / (6 * n)))
        flops_all += [flops] * 9
    result = isoflop_fits(n_all, loss_all, flops_all)
    assert len(result.curves) == 4
    for curve, flops in zip(result.curves, budgets):
        assert curve.flops == pytest.approx(flops)
        assert curve.n_opt == pytest.approx(optimal_allocation(flops, CHINCHILLA).n_params, rel=0.05)
    print(f"IsoFLOP exponents a {result.a:.4f} (law {CHINCHILLA.a:.4f}), b {result.b:.4f} (law {CHINCHILLA.b:.4f})")
    assert result.a == pytest.approx(CHINCHILLA.a, abs=0.01)
    assert result.b == pytest.approx(CHINCHILLA.b, abs=0.01)


# ---------------------------------------------------------------- CSV and the commands


def write_runs_csv(path: Path, law: ScalingLaw = EPOCH, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "params", "flops", "loss"])
        for flops in (1e18, 1e19, 1e20):
            for n in optimal_allocation(flops, law).n_params * np.geomspace(0.25, 4, 5):
                loss = law.loss(n, flops / (6 * n)) * math.exp(rng.normal(0, 0.002))
                writer.writerow([f"m{n:.0f}", f"{n:.6g}", f"{flops:.6g}", f"{loss:.6f}"])
    return path


def test_read_runs_csv_from_flops_and_its_errors(tmp_path):
    path = write_runs_csv(tmp_path / "runs.csv")
    runs = read_runs_csv(path, "params", "loss", flops_col="flops")
    assert len(runs) == 15
    assert runs.n_tokens == pytest.approx(runs.flops / (6 * runs.n_params))
    with pytest.raises(ScalingError, match="--loss-col: no column 'val' in .* \\(columns: model, params, flops, loss\\)"):
        read_runs_csv(path, "params", "val", flops_col="flops")
    with pytest.raises(ScalingError, match="--params-col: .* line 2: model = 'm"):
        read_runs_csv(path, "model", "loss", flops_col="flops")
    with pytest.raises(ScalingError, match="exactly one of --tokens-col and --flops-col"):
        read_runs_csv(path, "params", "loss")


def test_cli_plan_json_for_flops_gpu_hours_and_tokens(tmp_path):
    result = CliRunner().invoke(app, ["scaling", "plan", "--flops", "5.76e23", "--law", "chinchilla", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    n, d, loss = closed_form(*PAPER["chinchilla"], 5.76e23)
    assert plan["n_params"] == pytest.approx(n, rel=1e-9) and plan["n_tokens"] == pytest.approx(d, rel=1e-9)
    assert plan["loss"] == pytest.approx(loss) and plan["tokens_per_param"] == pytest.approx(d / n)
    assert {"n_layers", "d_model", "n_heads"} <= set(plan["model"])

    result = CliRunner().invoke(app, ["scaling", "plan", "--gpu-hours", "1000", "--device", "h100", "--mfu", "0.4",
                                      "--law", "epoch", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["flops"] == pytest.approx(1000 * 3600 * 989e12 * 0.4)

    (tmp_path / "index.json").write_text(json.dumps({"format": 1, "tokens": {"train": 2_000_000_000, "val": 1}}))
    result = CliRunner().invoke(app, ["scaling", "plan", "--tokens-dir", str(tmp_path), "--model", "1b", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["n_tokens"] == 2_000_000_000
    assert plan["n_params"] == pytest.approx(plan_for_tokens(2e9, CHINCHILLA).n_params)
    assert plan["epochs_for_model"]["epochs"] > 1  # 1b wants more than 2B tokens

    result = CliRunner().invoke(app, ["scaling", "plan", "--flops", "1e21"])
    assert result.exit_code == 0 and "tokens per parameter" in result.output


def test_cli_plan_errors_name_the_flag():
    result = CliRunner().invoke(app, ["scaling", "plan", "--flops", "1e21", "--tokens", "1e9"])
    assert result.exit_code == 2 and "give one of --flops, --gpu-hours or --tokens/--tokens-dir" in result.output
    result = CliRunner().invoke(app, ["scaling", "plan", "--gpu-hours", "10"])
    assert result.exit_code == 2 and "--gpu-hours needs --device and --mfu" in result.output
    result = CliRunner().invoke(app, ["scaling", "plan", "--flops", "-5"])
    assert result.exit_code == 2 and "--flops must be a positive number" in result.output


def test_cli_fit_prints_parameters_and_writes_the_plot(tmp_path):
    path = write_runs_csv(tmp_path / "runs.csv")
    plot = tmp_path / "fit.png"
    result = CliRunner().invoke(app, ["scaling", "fit", "--csv", str(path), "--params-col", "params",
                                      "--flops-col", "flops", "--loss-col", "loss", "--plot", str(plot),
                                      "--bootstrap", "5", "--json"])
    assert result.exit_code == 0, result.output
    fit = json.loads(result.stdout)
    print("CLI fit of the epoch law:", {k: round(fit[k], 4) for k in ("E", "A", "B", "alpha", "beta")})
    assert {"E", "A", "B", "alpha", "beta", "intervals", "isoflop"} <= set(fit)
    assert fit["E"] == pytest.approx(EPOCH.E, rel=0.05)
    assert fit["isoflop"]["a"] == pytest.approx(EPOCH.a, abs=0.05)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    law_file = tmp_path / "law.json"
    law_file.write_text(result.stdout)  # a fit is a law the planner takes
    result = CliRunner().invoke(app, ["scaling", "plan", "--flops", "1e20", "--law", str(law_file), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["law"] == "law" and plan["law_params"]["E"] == fit["E"]
    fitted = ScalingLaw(**{k: fit[k] for k in ("E", "A", "B", "alpha", "beta")})
    assert plan["n_params"] == pytest.approx(optimal_allocation(1e20, fitted).n_params)
    result = CliRunner().invoke(app, ["scaling", "fit", "--csv", str(path), "--params-col", "N",
                                      "--flops-col", "flops", "--loss-col", "loss"])
    assert result.exit_code == 2 and "--params-col: no column 'N'" in result.output
