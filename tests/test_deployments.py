"""deployments/prefect.yaml: valid entrypoints and parameters, and the `pretrain` deployment run for real.

The integration test registers every deployment on the session's real Prefect server
(`prefect deploy --all`), starts a process worker on the `cpu` pool, and triggers
`pretrain` twice through the REST API, as the UI's Run button does.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from flows import registry
import yaml

from pretrain.config import PipelineConfig, load_recipe

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    return {deployment["name"]: deployment for deployment in spec["deployments"]}


def entrypoint_flow(deployment: dict):
    path, func = deployment["entrypoint"].split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)


@pytest.mark.parametrize("name", sorted(deployments()))
def test_deployment_entrypoint_and_parameters_are_valid(name):
    deployment = deployments()[name]
    flow = entrypoint_flow(deployment)
    params = deployment.get("parameters", {})
    assert set(params) <= set(flow.parameters.properties), name
    flow.validate_parameters(params)  # the flow's own typed signature, as the worker will apply it
    assert deployment["work_pool"]["name"], name


def test_pretrain_deployment_is_the_local_recipe_one_run_at_a_time():
    deployment = deployments()["pretrain"]
    assert PipelineConfig.model_validate(deployment["parameters"]["config"]) == load_recipe("local")
    assert deployment["concurrency_limit"]["limit"] == 1
    assert {"ingest", "pretrain"} <= set(deployments())


@pytest.fixture(scope="module")
def worker(prefect_server, tmp_path_factory):
    """Deployments registered and a process worker running, against the session's Prefect server."""
    from prefect_rest import deploy_all, ensure_work_pools, prefect_env, start_worker, stop_worker

    tmp_path = tmp_path_factory.mktemp("deployments")
    env = prefect_env(prefect_server, PRETRAIN_DATA_ROOT=str(tmp_path), PREFECT_LOGGING_LEVEL="INFO")
    ensure_work_pools(env)
    deploy_all(env)
    process = start_worker(env, "cpu", log_path=tmp_path / "worker.log")
    yield process, tmp_path
    stop_worker(process)


def run_pretrain(rest, parameters: dict, worker, label: str) -> dict:
    deployment = rest.deployment("pretrain", "pretrain")
    created = rest.create_flow_run(deployment["id"], parameters, name=label)
    run = rest.wait_for(created["id"], timeout=900, worker=worker)
    assert run["state_type"] == "COMPLETED", (run["state_name"], "\n".join(rest.logs(run["id"])[-40:]))
    return run


FIRST_RUN: dict = {}


@pytest.mark.integration
def test_pretrain_deployment_runs_from_the_api_then_reruns_from_cache(prefect_server, worker):
    from prefect_rest import PrefectREST, run_seconds

    worker, tmp_path = worker
    rest = PrefectREST(prefect_server)
    out = tmp_path / "run"
    config = load_recipe("local", [f"output_dir={out}", "train.max_steps=20", "train.eval_every_steps=10",
                                   "train.checkpoint_every_steps=20"])
    parameters = {"config": config.model_dump(mode="json")}

    first = run_pretrain(rest, parameters, worker, "first")
    FIRST_RUN.update(first)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cache_hits"] == dict.fromkeys(registry.names(), False)
    assert len(registry.names()) == 10
    assert (Path(summary["model"]["hf_dir"]) / "model.safetensors").is_file()
    assert summary["model"]["steps"] == 20 and 0 < summary["model"]["val_loss"] < 6.0
    keys = {artifact["key"] for artifact in rest.artifacts(first["id"])}
    assert {"pretrain-report", "pretrain-funnel", "pretrain-loss-curve", "pretrain-score-histograms",
            "pretrain-scaling"} <= keys
    first_tasks = [t for fid in rest.flow_run_tree(first["id"]) for t in rest.task_runs([fid])]
    assert len(rest.flow_run_tree(first["id"])) > 6  # every stage ran its subflow(s)

    second = run_pretrain(rest, parameters, worker, "second")
    tree = rest.flow_run_tree(second["id"])
    tasks = rest.task_runs(tree)
    assert tree == [second["id"]]  # no stage started a subflow
    assert sorted(t["name"] for t in tasks) == sorted(registry.names())
    assert {t["state_name"] for t in tasks} == {"Cached"}
    assert json.loads((out / "summary.json").read_text())["cached_stages"] == 10
    print(f"\npretrain deployment: first run {run_seconds(first):.1f} s ({len(first_tasks)} task runs), "
          f"second run {run_seconds(second):.1f} s ({len(tasks)} task runs, all Cached), "
          f"ratio {run_seconds(second) / run_seconds(first):.2f}")


@pytest.mark.integration
def test_ui_screenshot_of_the_completed_run(prefect_server, tmp_path):
    """The UI (served by a second server process on the session's database) shows the run; needs chromium."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
    from prefect_rest import PrefectREST
    from ui_screenshot import (
        distinct_colours, find_chromium, free_port, rendered_text, screenshot, start_server, stop_server,
    )

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH: run bash scripts/install_chromium.sh (or set CHROMIUM) for the UI screenshot")
    if not FIRST_RUN:
        pytest.skip("the deployment run test did not complete")
    port = free_port()
    server = start_server(tmp_path / "home", port, tmp_path / "server.log",
                          database_url=PREFECT_API_DATABASE_CONNECTION_URL.value(), services=False)
    try:
        PrefectREST(f"http://127.0.0.1:{port}/api").wait_healthy(timeout=180)
        url = f"http://127.0.0.1:{port}/runs/flow-run/{FIRST_RUN['id']}"
        png = screenshot(url, tmp_path / "run.png", chromium)
        dom = rendered_text(url, chromium)
    finally:
        stop_server(server)
    assert distinct_colours(png) > 300  # a rendered page; a blank or error page has a handful
    # The run's name ("first"), its state and its deployment; the stage graph is a canvas, not text.
    assert "Completed" in dom and FIRST_RUN["name"] in dom and "pretrain" in dom
