"""deployments/prefect.yaml points at real flows with parameters they accept."""

import importlib
from pathlib import Path

import yaml

from pretrain.config import IngestConfig, PipelineConfig

REPO = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_and_parameters_are_valid():
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        path, func = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        names.add(deployment["name"])
        params = deployment.get("parameters", {})
        assert set(params) <= set(flow.parameters.properties), deployment["name"]
        if flow.name == "ingest":
            IngestConfig.model_validate(params["config"])
        else:
            PipelineConfig.model_validate(params["config"])
    assert {"ingest", "pretrain"} <= names
