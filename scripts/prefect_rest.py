"""Drive a Prefect server the way its UI does: work pool, deployments, a worker, runs over REST.

Used by ``make ui-screenshot`` (scripts/ui_screenshot.py) and tests/test_deployments.py.
Every call goes to the server's REST API (``/api``); ``create_flow_run`` is what the
UI's Run button posts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class PrefectRunError(RuntimeError):
    """A flow run did not complete, or the server or worker misbehaved; the message says which."""


def prefect_env(api_url: str, **extra: str) -> dict[str, str]:
    """The environment for Prefect CLI processes talking to ``api_url`` (and for the runs a worker starts)."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PRETRAIN_REPO_DIR": str(REPO),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}
    env.pop("PREFECT_PROFILES_PATH", None)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run([*PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise PrefectRunError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}"
                              f"\n{done.stderr[-3000:]}")
    return done.stdout


# The work pools deployments/prefect.yaml names: `cpu` runs flows as local processes; `gpu` is a
# Kubernetes pool whose job template infra/ provides.
WORK_POOLS = {
    "cpu": ["--type", "process"],
    "gpu": ["--type", "kubernetes", "--base-job-template", "infra/prefect/gpu-work-pool.json"],
}


def ensure_work_pools(env: dict[str, str]) -> list[str]:
    """Create the work pools of WORK_POOLS that do not exist yet; returns the ones created."""
    created = []
    for name, options in WORK_POOLS.items():
        try:
            run_cli(["work-pool", "inspect", name], env, timeout=120)
        except PrefectRunError:
            run_cli(["work-pool", "create", name, *options], env, timeout=120)
            created.append(name)
    return created


def deploy_all(env: dict[str, str]) -> str:
    """Register every deployment of deployments/prefect.yaml (``prefect deploy --all``)."""
    return run_cli(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"], env)


def start_worker(env: dict[str, str], pool: str = "cpu", log_path: Path | None = None) -> subprocess.Popen:
    """A process worker on ``pool`` in its own process group (``stop_worker`` ends it and its runs)."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen([*PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
                            env={"PREFECT_WORKER_QUERY_SECONDS": "2", **env}, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(worker: subprocess.Popen, timeout: float = 30) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGINT)
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


class PrefectREST:
    """The few REST calls the UI makes to run a deployment and show the result."""

    def __init__(self, api_url: str):
        self.api_url = api_url.rstrip("/")
        self.client = httpx.Client(base_url=self.api_url, timeout=30)

    def _json(self, method: str, path: str, attempts: int = 6, **kwargs):
        """One API call; 503 (SQLite busy) and 429 are retried with backoff, as Prefect's own client does."""
        for attempt in range(attempts):
            response = self.client.request(method, path, **kwargs)
            if response.status_code not in (429, 503):
                break
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
        if response.status_code >= 400:
            raise PrefectRunError(f"{method} {self.api_url}{path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise PrefectRunError(f"no Prefect server answered at {self.api_url} within {timeout:.0f} s")

    def deployment(self, flow_name: str, name: str) -> dict:
        return self._json("GET", f"/deployments/name/{flow_name}/{name}")

    def create_flow_run(self, deployment_id: str, parameters: dict, name: str | None = None) -> dict:
        """What the UI's Run > Custom run button posts."""
        body = {"parameters": parameters, **({"name": name} if name else {})}
        return self._json("POST", f"/deployments/{deployment_id}/create_flow_run", json=body)

    def flow_run(self, flow_run_id: str) -> dict:
        return self._json("GET", f"/flow_runs/{flow_run_id}")

    def wait_for(self, flow_run_id: str, timeout: float, worker: subprocess.Popen | None = None) -> dict:
        """Poll until the run reaches a final state; a dead worker or the deadline is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(flow_run_id)
            if run["state_type"] in FINAL_STATES:
                return run
            if worker is not None and worker.poll() is not None:
                raise PrefectRunError(f"the worker exited ({worker.returncode}) while run {flow_run_id} was "
                                      f"{run['state_name']}")
            time.sleep(2)
        raise PrefectRunError(f"flow run {flow_run_id} still {self.flow_run(flow_run_id)['state_name']} "
                              f"after {timeout:.0f} s")

    def flow_run_tree(self, flow_run_id: str) -> list[str]:
        """The run and every subflow run under it (subflows of tasks included)."""
        ids, todo = [], [flow_run_id]
        while todo:
            current = todo.pop()
            ids.append(current)
            tasks = self.task_runs([current])
            children = self._json("POST", "/flow_runs/filter", json={
                "flow_runs": {"parent_task_run_id": {"any_": [t["id"] for t in tasks]}}}) if tasks else []
            todo += [child["id"] for child in children]
        return ids

    def task_runs(self, flow_run_ids: list[str]) -> list[dict]:
        return self._json("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": flow_run_ids}},
                                                              "limit": 200})

    def artifacts(self, flow_run_id: str) -> list[dict]:
        return self._json("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})

    def logs(self, flow_run_id: str, limit: int = 200) -> list[str]:
        records = self._json("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                           "limit": limit, "sort": "TIMESTAMP_DESC"})
        return [record["message"] for record in reversed(records)]


def run_seconds(run: dict) -> float:
    """Wall time of a finished flow run, from the server's start and end timestamps."""
    from datetime import datetime

    start, end = (datetime.fromisoformat(run[key].replace("Z", "+00:00")) for key in ("start_time", "end_time"))
    return (end - start).total_seconds()


def main() -> None:
    """``python scripts/prefect_rest.py deploy``: create the work pools, register every deployment."""
    if sys.argv[1:] != ["deploy"]:
        sys.exit("usage: python scripts/prefect_rest.py deploy   (PREFECT_API_URL names the server)")
    env = prefect_env(os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api")
    PrefectREST(env["PREFECT_API_URL"]).wait_healthy(timeout=10)
    for name in ensure_work_pools(env):
        print(f"created work pool {name}")
    print(deploy_all(env))


if __name__ == "__main__":
    main()
