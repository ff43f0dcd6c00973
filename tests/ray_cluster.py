"""A real multi-node Ray cluster on loopback for tests: ``ray.cluster_utils.Cluster`` (Ray's own
multi-node test helper) in a holder process, a head plus ``nodes - 1`` more raylets, each with
its own object store and workers, every one bound to 127.0.0.1 (``ENABLE_RAY_CLUSTER = False``
in the holder; never ``ray start``, which binds the host's routable address).

The holder gets its own short RAY_TMPDIR, so its ``ray/ray_current_cluster`` file is this
test's alone; the clients join through ``RAY_ADDRESS``, as on a real cluster. Closing the
holder's stdin shuts the cluster down; on any failure its process group and every Ray process
under its temp folder are killed (by pid, nothing else on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import json, sys
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False  # keep 127.0.0.1 (see the Ray notes)
    from ray.cluster_utils import Cluster
    nodes, cpus, store = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    args = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "object_store_memory": store}
    cluster = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    nodes = cluster.list_all_nodes()
    raylets = [n.all_processes["raylet"][0].process.pid for n in nodes]
    print(json.dumps({"address": cluster.address, "nodes": [n.node_id for n in nodes], "raylets": raylets}),
          flush=True)
    sys.stdin.read()  # hold the cluster until the test closes stdin
    cluster.shutdown()
""")


@dataclass
class LoopbackCluster:
    address: str  # 127.0.0.1:PORT
    node_ids: list[str]  # head first
    raylet_pids: list[int]  # per node, its raylet (its workers and agents are the raylet's children)
    env: dict[str, str]  # for a client: RAY_TMPDIR of the cluster, PYTHONPATH of the repository
    address_file: Path  # RAY_TMPDIR/ray/ray_current_cluster


def kill_group_and_ray(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL a process group a test started, and the Ray processes under its own temp dir."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for other in psutil.process_iter(["cmdline"]):
        if ray_tmp in " ".join(other.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                other.kill()


@contextlib.contextmanager
def loopback_cluster(nodes: int = 2, cpus: int = 1, store_mb: int = 80, timeout_s: float = 180) -> Iterator[LoopbackCluster]:
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    address_file = Path(ray_tmp) / "ray" / "ray_current_cluster"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(nodes), str(cpus), str(store_mb * 1024 * 1024)],
                              env=env, cwd=REPO, start_new_session=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        started = None
        for line in iter(holder.stdout.readline, ""):
            if line.startswith("{") and '"address"' in line:
                started = json.loads(line)
                break
        deadline = time.monotonic() + timeout_s
        while not address_file.is_file() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started and re.fullmatch(r"127\.0\.0\.1:\d+", started["address"]) and address_file.is_file(), \
            f"the loopback cluster did not start (rc {holder.poll()})"
        yield LoopbackCluster(started["address"], started["nodes"], started["raylets"], env, address_file)
        holder.stdin.close()
        holder.wait(timeout=60)
    finally:
        kill_group_and_ray(holder, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def kill_node(cluster: LoopbackCluster, index: int) -> int:
    """SIGKILL node ``index`` (not the head, 0): its raylet and every process under it (workers, agents), as
    a machine that dies would vanish; returns how many processes were killed."""
    if index == 0:
        raise ValueError("the head node holds the GCS: losing it ends the cluster, not a node")
    raylet = psutil.Process(cluster.raylet_pids[index])
    victims = [raylet, *raylet.children(recursive=True)]
    for process in victims:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return len(victims)


def tasks_on(cluster: LoopbackCluster, index: int) -> list[str]:
    """The tasks node ``index``'s workers run now, by name: a Ray worker's title is ``ray::<task name>`` while it
    runs one, ``ray::IDLE`` between tasks (its agents are ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``)."""
    idle = {"IDLE", "DashboardAgent", "RuntimeEnvAgent"}
    names = []
    with contextlib.suppress(psutil.Error):
        for process in psutil.Process(cluster.raylet_pids[index]).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                title = " ".join(process.cmdline())
                if title.startswith("ray::") and title[5:].split()[0] not in idle:
                    names.append(title[5:].split()[0])
    return names


def running_on(cluster: LoopbackCluster, index: int, task: str) -> bool:
    """Whether a worker of node ``index`` runs a task named ``task`` now."""
    return task in tasks_on(cluster, index)
