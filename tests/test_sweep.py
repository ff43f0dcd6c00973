"""The scaling sweep flow end to end on CPU: six real training runs (DeepSpeed, one gloo
process each) on token shards of real books, then the fit, the plot and the artifacts,
on the session Prefect server. Then the same sweep again: every run is reused."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from conftest import shared_data
from flows.sweep import plan_sweep
from models.scaling import ScalingError, load_law
from pretrain.config import SweepConfig
from train_fixtures import build_token_shards

BOOKS = ("Pride_and_Prejudice_JaneAusten", "Great_Expectations_CharlesDickens")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    books = [shared_data("reference", "en", f"{name}.txt.gz") for name in BOOKS]
    return build_token_shards(books, tmp_path_factory.mktemp("sweep") / "shards", vocab_size=512)


def test_plan_sweep_steps_follow_the_budget(shards, tmp_path):
    runs = plan_sweep(SweepConfig(), shards, tmp_path)
    assert len(runs) == 6 and len({r.config.output_dir for r in runs}) == 6
    tokens_per_step = 8 * 128
    for run in runs:
        assert run.steps == round(run.budget_flops / (6 * run.n_params * tokens_per_step))
        assert run.config.model.vocab_size == 512 and run.config.max_steps == run.steps
        assert run.config.eval_every_steps == run.steps and run.config.model_size is None
    small, large = runs[0], runs[2]  # 1x32 and 2x64 at 1e10 FLOPs
    assert small.n_params < large.n_params and small.steps > large.steps  # same budget: fewer steps when bigger


def test_plan_sweep_rejects_a_budget_too_small_for_a_shape(shards, tmp_path):
    with pytest.raises(ScalingError, match=r"sweep.budgets_flops: budget 1e\+09 gives shape 1x32 \(45,152 parameters\) 4 steps .* under min_steps 5"):
        plan_sweep(SweepConfig(budgets_flops=[1e9]), shards, tmp_path)


@pytest.mark.integration
def test_sweep_flow_trains_fits_and_plots_on_cpu(prefect_server, shards, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.sweep import sweep_flow

    out = tmp_path / "sweep"
    result = sweep_flow(config=SweepConfig(bootstrap=10), data_dir=str(shards), output_dir=str(out))
    print("sweep result:", json.dumps({k: result[k] for k in ("E", "A", "B", "alpha", "beta", "seconds")}))

    with open(out / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and result["runs"] == 6
    for row in rows:
        print(row["label"], row["n_params"], row["tokens"], row["val_loss"])
        assert 1.0 < float(row["val_loss"]) < math.log(512)  # learned something, below uniform over the vocabulary
        assert float(row["flops_6nd"]) == pytest.approx(float(row["budget_flops"]), rel=0.15)
    by_budget = {}
    for row in rows:
        by_budget.setdefault(row["budget_flops"], []).append(float(row["val_loss"]))
    assert min(by_budget["30000000000.0"]) < min(by_budget["10000000000.0"])  # more compute, lower loss

    fit = json.loads((out / "fit.json").read_text())
    for key in ("E", "A", "B", "alpha", "beta"):
        assert math.isfinite(fit[key]) and fit[key] > 0
        low, high = fit["intervals"][key]
        assert low <= high
    law = load_law(str(out / "fit.json"))  # the planner reads the fit back
    # the fitted law reproduces the runs it was fitted to (Huber is robust: most of them closely)
    errors = sorted(abs(law.loss(float(r["n_params"]), float(r["tokens"])) / float(r["val_loss"]) - 1) for r in rows)
    print("fit's relative errors on the runs:", [round(e, 4) for e in errors])
    assert errors[3] < 0.02 and errors[-1] < 0.1
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert len(fit["isoflop"]["curves"]) == 2

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    wanted = ["scaling-sweep-runs", "scaling-sweep-fit"]  # by key: the session's server holds many artifacts
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=wanted)))}
    assert keys == set(wanted)

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    again = sweep_flow(config=SweepConfig(bootstrap=0), data_dir=str(shards), output_dir=str(out))  # runs reused
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")} == mtimes  # nothing retrained
    assert again["E"] == pytest.approx(result["E"])
