"""infra/ and the cc-refresh/train deployments: files parse, carry the fields their tools need, agree.

No network, no Docker, no Kubernetes: the checks use the validators of the tools
where the venv has them (Ray's cluster-config schema, Prefect's work pool and
prefect.yaml models, DeepSpeed's hostfile parser) and read the rest as data.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO

INFRA = REPO / "infra"
IMAGES = yaml.safe_load((INFRA / "images.yaml").read_text())
RAY_AUTH_SECRET = ("pretrain-ray-auth", "auth_token")
DATA_CLAIM = "pretrain-data"


def pinned(package: str) -> str:
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not pinned in requirements/constraints.txt")


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def deployment(name: str) -> dict:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    matches = [d for d in spec["deployments"] if d["name"] == name]
    assert len(matches) == 1, f"deployments/prefect.yaml: expected one `{name}` deployment, found {len(matches)}"
    return matches[0]


def walk(node, key: str):
    """Every value stored under ``key`` anywhere in a parsed YAML/JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def gpu_pool() -> dict:
    return json.loads((INFRA / "prefect" / "gpu-work-pool.json").read_text())


def rendered_gpu_job(overrides: dict | None = None) -> dict:
    """The pool's Kubernetes Job as Prefect renders it from the variables' defaults (plus overrides)."""
    from prefect.utilities.templating import apply_values

    template = gpu_pool()
    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return apply_values(template["job_configuration"], {**values, **(overrides or {})})["job_manifest"]


# ---- one image name per variant, used everywhere -------------------------------------------


def test_images_are_named_once_and_tagged_with_the_project_version():
    assert set(IMAGES) == {"registry", "cpu", "cuda"}
    version = project()["version"]
    for variant in ("cpu", "cuda"):
        repository, tag = IMAGES[variant].rsplit(":", 1)
        assert repository.startswith(IMAGES["registry"] + "/"), IMAGES[variant]
        assert tag == f"{version}-{variant}", f"images.yaml {variant}: tag {tag!r}, pyproject version {version}"


def image_references() -> dict[str, set[str]]:
    """Every reference to one of our images (the registry's prefix) in infra/, deployments/ and the README."""
    pattern = re.compile(re.escape(IMAGES["registry"]) + r"/[\w.\-/]+(?::[\w.\-]+)?")
    files = [p for p in list(INFRA.rglob("*")) + list((REPO / "deployments").rglob("*")) + [REPO / "README.md"]
             if p.is_file() and p.name != "images.yaml"]
    found: dict[str, set[str]] = {}
    for path in files:
        for ref in pattern.findall(path.read_text(errors="replace")):
            found.setdefault(ref, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_reference_to_our_images_is_a_declared_name():
    refs = image_references()
    unknown = {ref: files for ref, files in refs.items() if ref not in (IMAGES["cpu"], IMAGES["cuda"])}
    assert not unknown, f"image names not in infra/images.yaml: {unknown}"
    assert {IMAGES["cpu"], IMAGES["cuda"]} <= set(refs)


def test_each_manifest_runs_the_right_variant():
    cpu_files = [INFRA / "ray" / "cluster.yaml", INFRA / "kuberay" / "raycluster.yaml", INFRA / "kuberay" / "rayjob.yaml"]
    for path in cpu_files:
        images = set(walk(yaml.safe_load(path.read_text()), "image"))
        assert images == {IMAGES["cpu"]}, f"{path.name}: {images}"
    assert gpu_pool()["variables"]["properties"]["image"]["default"] == IMAGES["cuda"]
    assert rendered_gpu_job()["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["cuda"]


def test_build_script_tags_from_images_yaml_and_builds_both_dockerfiles():
    script = (INFRA / "build_images.sh").read_text()
    assert "infra/images.yaml" in script and "infra/Dockerfile.$variant" in script
    assert IMAGES["registry"] not in script  # the names are read, not repeated
    assert subprocess.run(["bash", "-n", str(INFRA / "build_images.sh")]).returncode == 0


# ---- Dockerfiles ---------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            instructions.append((op.upper(), rest.strip()))
    return instructions


def base_image(instructions: list[tuple[str, str]]) -> str:
    args = dict(re.match(r"([A-Z_]+)=?(.*)", rest).groups() for op, rest in instructions if op == "ARG")
    (source,) = [rest for op, rest in instructions if op == "FROM"]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)].strip('"'), source)


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_dockerfile_copies_files_that_exist_and_are_not_ignored(variant):
    dockerfile = INFRA / f"Dockerfile.{variant}"
    ignored = [line.strip() for line in (INFRA / f"Dockerfile.{variant}.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    instructions = dockerfile_instructions(dockerfile)
    copies = [shlex.split(rest) for op, rest in instructions if op == "COPY"]
    assert copies, dockerfile
    for *sources, _dest in copies:
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: no such file in the repository"
            hits = [p for p in ignored if fnmatch.fnmatch(source, p) or fnmatch.fnmatch(source.split("/")[0], p)]
            assert not hits, f"{dockerfile.name}: COPY {source} is excluded by {hits} in its .dockerignore"
    copied = {source.split("/")[0] for *sources, _ in copies for source in sources}
    assert {"pyproject.toml", "pretrain", "flows", "tasks", "models", "cli"} <= copied


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_dockerfile_base_is_pinned_and_python_matches_the_lock(variant):
    instructions = dockerfile_instructions(INFRA / f"Dockerfile.{variant}")
    base = base_image(instructions)
    assert ":" in base and not base.endswith(":latest"), base
    text = (INFRA / f"Dockerfile.{variant}").read_text()
    assert re.search(r"python:?3\.11\b|python3\.11\b", text), f"Dockerfile.{variant} must use Python 3.11"
    assert "requirements/constraints.txt" in text and "build_kenlm.sh" in text
    env = " ".join(rest for op, rest in instructions if op == "ENV")
    assert "PRETRAIN_REPO_DIR=/opt/pretrain" in env  # prefect.yaml's pull step changes into it
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "python infra/build_native.py" in runs  # the C modules, built in the image, not copied in
    ignored = (INFRA / f"Dockerfile.{variant}.dockerignore").read_text().split()
    assert "tasks/_*.so" in ignored


def test_cuda_dockerfile_has_cuda_deepspeed_and_flash_attn():
    instructions = dockerfile_instructions(INFRA / "Dockerfile.cuda")
    assert base_image(instructions).startswith("nvidia/cuda:") and "devel" in base_image(instructions)
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "--no-build-isolation deepspeed" in runs and "flash-attn" in runs and ".[gpu]" in runs
    assert "pdsh" in runs and "openssh" in runs  # DeepSpeed's multi-node launcher
    gpu_extra = project()["optional-dependencies"]["gpu"]
    assert any(req.startswith("flash-attn") for req in gpu_extra), gpu_extra


# ---- Ray: cluster launcher and KubeRay -------------------------------------------------------


def test_ray_cluster_launcher_config_passes_rays_schema_with_token_auth():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # Ray's own JSON schema and checks
    options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert token_path in config["file_mounts"], "the token file Ray reads must be mounted on every node"
    assert config["head_node_type"] in config["available_node_types"]


def kuberay(name: str) -> dict:
    return yaml.safe_load((INFRA / "kuberay" / name).read_text())


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def ray_pod_specs(manifest: dict) -> list[dict]:
    spec = cluster_spec(manifest)
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    if manifest["kind"] == "RayJob":
        pods.append(manifest["spec"]["submitterPodTemplate"]["spec"])
    return pods


def assert_token_env(container: dict, where: str) -> None:
    env = {item["name"]: item for item in container.get("env", [])}
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
    ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    assert (ref.get("name"), ref.get("key")) == RAY_AUTH_SECRET, f"{where}: RAY_AUTH_TOKEN from the Secret: {ref}"


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifest_fields(name, kind):
    manifest = kuberay(name)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", kind)
    spec = cluster_spec(manifest)
    assert spec["rayVersion"] == pinned("ray"), "the cluster must run the Ray version the flows use"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 10001}
    for pod in ray_pod_specs(manifest):
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        for container in pod["containers"]:
            where = f"{name}: container {container['name']}"
            assert container["image"] == IMAGES["cpu"], where
            assert_token_env(container, where)
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][section]), f"{where}: {section}"
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if container["name"] != "ray-job-submitter":
                assert claims == {DATA_CLAIM} and "/data" in mounts, f"{where}: the shared data volume"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    if kind == "RayJob":
        assert manifest["spec"]["entrypoint"].split()[0] == "pretrain"
        assert manifest["spec"]["shutdownAfterJobFinishes"] is True


# ---- DeepSpeed: hostfile and multi-node recipe ------------------------------------------------


def launch(hostfile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INFRA / "deepspeed" / "launch_multinode.sh"), str(hostfile), *args],
                          env={"DRY_RUN": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_hostfile_example_parses_with_deepspeed_and_the_launcher_agrees():
    from deepspeed.launcher.runner import _parse_hostfile

    hostfile = INFRA / "deepspeed" / "hostfile.example"
    pool = _parse_hostfile(hostfile.read_text().splitlines())
    assert len(pool) >= 2 and all(slots >= 1 for slots in pool.values())
    result = launch(hostfile, "--model", "1b")
    assert result.returncode == 0, result.stderr
    assert f"{len(pool)} nodes, {sum(pool.values())} GPUs" in result.stdout
    assert f"pretrain train --set train.hostfile={hostfile} --model 1b" in result.stdout


@pytest.mark.parametrize("lines, message", [
    ("node-a slots=8\nnode-b slot=8\n", "line 2: expected '<host> slots=<GPUs>'"),
    ("node-a slots=8\nnode-a slots=8\n", "lists a node twice: node-a"),
    ("# nothing\n\n", "lists no nodes"),
])
def test_launcher_rejects_a_bad_hostfile_naming_the_problem(tmp_path, lines, message):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(lines)
    result = launch(hostfile)
    assert result.returncode == 2 and message in result.stderr, result.stderr


# ---- Prefect: GPU work pool, train and cc-refresh deployments ----------------------------------


def test_gpu_work_pool_template_is_valid_for_prefect_and_requests_gpus():
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=gpu_pool())  # Prefect's own check
    job = rendered_gpu_job()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    gpus = gpu_pool()["variables"]["properties"]["gpu_count"]["default"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == gpus >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {DATA_CLAIM}
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == {"/data", "/dev/shm"}
    four = rendered_gpu_job({"gpu_count": 4})["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert four["limits"]["nvidia.com/gpu"] == 4


def test_train_deployment_runs_on_the_gpu_pool_with_as_many_ranks_as_gpus():
    from pretrain.config import TrainConfig
    from tasks.train.ds_config import batch_plan

    train = deployment("train")
    assert train["entrypoint"] == "flows.train:train_flow" and train["work_pool"]["name"] == "gpu"
    variables = train["work_pool"]["job_variables"]
    jsonschema.validate(variables, gpu_pool()["variables"])
    config = TrainConfig.model_validate(train["parameters"]["config"])
    assert config.num_procs == variables["gpu_count"], "one rank per GPU the pod gets"
    batch_plan(config, config.num_procs)  # micro x accumulation x world size = global batch
    assert train["concurrency_limit"]["limit"] == 1


def test_cc_refresh_deployment_is_scheduled_limited_and_takes_valid_parameters():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    from flows.refresh import cc_refresh_flow

    PrefectYamlModel.model_validate(yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text()))
    refresh = deployment("cc-refresh")
    assert refresh["entrypoint"] == "flows.refresh:cc_refresh_flow" and refresh["work_pool"]["name"] == "cpu"
    (schedule,) = refresh["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    limit = refresh["concurrency_limit"]
    assert limit["limit"] == 1, "two refreshes must never run at once"
    assert ConcurrencyLimitStrategy(limit["collision_strategy"]) == ConcurrencyLimitStrategy.CANCEL_NEW
    config = cc_refresh_flow.validate_parameters(refresh["parameters"])["config"]
    assert config.max_files_per_run and config.ingest.languages == ["en"]


@pytest.mark.integration
def test_the_server_cancels_a_cc_refresh_run_that_would_overlap(prefect_server):
    """prefect.yaml's concurrency_limit, registered on the real server: a second run is cancelled, not run."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyOptions
    from prefect.states import Completed, Pending, Running

    limit = deployment("cc-refresh")["concurrency_limit"]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("cc-refresh")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=f"cc-refresh-{uuid.uuid4().hex[:8]}", entrypoint="flows.refresh:cc_refresh_flow",
            concurrency_limit=limit["limit"],
            concurrency_options=ConcurrencyOptions(collision_strategy=limit["collision_strategy"]),
        )
        first, second, later = (client.create_flow_run_from_deployment(deployment_id) for _ in range(3))
        assert client.set_flow_run_state(first.id, Pending()).status.value == "ACCEPT"
        client.set_flow_run_state(first.id, Running())
        rejected = client.set_flow_run_state(second.id, Pending())
        assert rejected.status.value == "REJECT"
        assert client.read_flow_run(second.id).state.type.value == "CANCELLED"
        client.set_flow_run_state(first.id, Completed())  # its slot is released
        assert client.set_flow_run_state(later.id, Pending()).status.value == "ACCEPT"
