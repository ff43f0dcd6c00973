"""Losing a whole worker node mid-run (issue 17, item 2): `pretrain ingest` through RAY_ADDRESS on a
two-node loopback cluster (tests/ray_cluster.py), and the second node's raylet with every
process under it (its workers, its agents) SIGKILLed once the first shards are written, as a
machine that dies. The shards it was running are retried on the head node, and the output equals
an embedded run's, row for row."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO
from faultlib import slow
from ray_cluster import kill_node, loopback_cluster

from tasks.demo import write_demo_data

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FILES = 8


def rows(folder: Path) -> list[dict]:
    found = [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    return sorted(found, key=lambda row: row["id"])


def ingest_command(demo: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cli.main", "ingest", "--input", str(demo), "--output", str(out), "--num-cpus", "2"]


@slow  # about a minute: `make test-faults`
def test_losing_a_worker_node_mid_ingest_finishes_on_the_other_with_equal_output(prefect_server, tmp_path, ledger):
    demo = tmp_path / "demo"
    write_demo_data(demo, n_files=FILES, articles_per_file=120)  # about a second of work per file
    with loopback_cluster(nodes=2, cpus=1) as cluster:
        env = {**cluster.env, "PREFECT_API_URL": prefect_server}
        embedded = subprocess.run(ingest_command(demo, tmp_path / "embedded"), env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=600)
        assert embedded.returncode == 0, embedded.stderr[-3000:]
        out = tmp_path / "on-cluster"
        log = (tmp_path / "cluster-run.log").open("w")  # a file, not a pipe: nothing blocks while we poll
        run = subprocess.Popen(ingest_command(demo, out), env={**env, "RAY_ADDRESS": cluster.address}, cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while run.poll() is None and not list(out.glob("*.parquet")) and time.monotonic() < deadline:
                time.sleep(0.05)
            written_before = len(list(out.glob("*.parquet")))
            still_running = run.poll() is None
            killed = kill_node(cluster, 1)
            run.wait(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
            log.close()
    stderr = (tmp_path / "cluster-run.log").read_text()
    assert still_running and written_before < FILES, (written_before, "the run ended before the node was lost")
    assert run.returncode == 0, stderr[-3000:]
    assert rows(out) == rows(tmp_path / "embedded")
    report = json.loads((out / "report.json").read_text())
    assert report["shards_written"] == FILES and not report.get("failed")
    assert cluster.node_ids[0] in report["ray_nodes"]  # the head finished the run
    ledger("a worker node (raylet, workers, agents) SIGKILLed mid `pretrain ingest` on a two-node cluster",
           "rc 0, the lost node's shards rerun on the head; rows equal the embedded run's",
           shards_before_loss=written_before, processes_killed=killed, shards=FILES)
