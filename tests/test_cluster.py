"""The flows on a real two-node Ray cluster on loopback (tests/ray_cluster.py), joined through
RAY_ADDRESS as on a real cluster: `pretrain ingest` with RAY_ADDRESS=127.0.0.1:PORT writes what the
embedded default writes, and its shards ran on both nodes (report.json's ``ray_node_id`` per
shard).

Before: Ray 2.60 swapped the client's 127.0.0.1 for the host's routable address and retried a
GCS that was not there, without end (tasks/ray_runtime.is_loopback keeps it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO
from ray_cluster import loopback_cluster

from tasks.demo import write_demo_data

pytestmark = pytest.mark.integration


def ingest(demo: Path, out: Path, env: dict, prefect_server: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cli.main", "ingest", "--input", str(demo), "--output", str(out), "--num-cpus", "2"]
    return subprocess.run(cmd, env={**env, "PREFECT_API_URL": prefect_server}, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def rows(folder: Path) -> list[dict]:
    found = [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    return sorted(found, key=lambda row: row["id"])


@pytest.fixture(scope="module")
def two_node_ingest(prefect_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    write_demo_data(base / "demo", n_files=6, articles_per_file=6)
    with loopback_cluster(nodes=2, cpus=1) as cluster:
        on_cluster = ingest(base / "demo", base / "on-cluster", {**cluster.env, "RAY_ADDRESS": cluster.address},
                            prefect_server)
        embedded = ingest(base / "demo", base / "embedded", cluster.env, prefect_server)  # the cluster still runs
        yield {"cluster": cluster, "on_cluster": on_cluster, "embedded": embedded, "base": base}


def test_ingest_through_ray_address_on_two_loopback_nodes_equals_the_embedded_run(two_node_ingest, ledger):
    found, base = two_node_ingest, two_node_ingest["base"]
    for name in ("on_cluster", "embedded"):
        assert found[name].returncode == 0, found[name].stderr[-3000:]
    assert "Failed to connect to GCS" not in found["on_cluster"].stderr
    mine, embedded = rows(base / "on-cluster"), rows(base / "embedded")
    assert len(mine) > 0 and mine == embedded  # every column of every row
    report = json.loads((base / "on-cluster" / "report.json").read_text())
    nodes = {shard["ray_node_id"] for shard in report["shards"]}
    assert nodes == set(found["cluster"].node_ids), (nodes, found["cluster"].node_ids)  # both nodes ran shards
    assert sum(report["ray_nodes"].values()) == len(report["shards"]) == 6
    local = json.loads((base / "embedded" / "report.json").read_text())
    assert not {shard["ray_node_id"] for shard in local["shards"]} & set(found["cluster"].node_ids)
    ledger("`pretrain ingest` with RAY_ADDRESS=127.0.0.1:PORT, a two-node cluster_utils cluster on loopback",
           "rc 0, rows equal to the embedded run's, shards on both nodes (was: endless 'Failed to connect to GCS')",
           documents=len(mine), nodes=len(nodes))
