"""Losing a whole worker node mid-run (issue 17, item 2): a stage through RAY_ADDRESS on a two-node
loopback cluster (tests/ray_cluster.py, a cluster of the test's own), and the second node's raylet with
every process under it (its workers, its agents) SIGKILLed as a machine that dies, at a point the test
sees: `pretrain ingest` once its first shards are written; `pretrain dedup` while that node runs a
hash task (the first of four phases); `pretrain tokenize` while it runs a shard task. The tasks it was
running are retried on the head node, and the output equals an embedded run's, row for row or byte
for byte."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from faultlib import slow
from ray_cluster import LoopbackCluster, kill_node, loopback_cluster, running_on, tasks_on

from tasks.demo import near_duplicate, write_demo_data
from tasks.demo_reference import demo_reference_documents

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FILES = 8


def rows(folder: Path) -> list[dict]:
    found = [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    return sorted(found, key=lambda row: row["id"])


def files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob(pattern))}


def pretrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args, "--num-cpus", "2"]


def write_documents(folder: Path, shards: int = FILES, per_shard: int = 240) -> None:
    """``shards`` Parquet shards of demo articles (id, text, url, source), each also holding an exact and an
    edited copy of an article of the shard before it: duplicates across shards for dedup to find."""
    rng = random.Random(0)
    articles = demo_reference_documents(shards * per_shard)
    folder.mkdir(parents=True)
    for shard in range(shards):
        mine = articles[shard * per_shard:(shard + 1) * per_shard]
        source = articles[((shard - 1) % shards) * per_shard]["text"]
        texts = [doc["text"] for doc in mine] + [source, "\n".join(near_duplicate(rng, source.split("\n")))]
        ids = [doc["id"] for doc in mine] + [f"copy-{shard}", f"edited-{shard}"]
        pq.write_table(pa.table({"id": ids, "text": texts, "url": [f"https://example.org/{i}" for i in ids],
                                 "source": ["demo"] * len(ids)}), folder / f"shard-{shard:02d}.parquet")


def embedded_run(argv: list[str], env: dict) -> None:
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def lose_node_mid_run(cluster: LoopbackCluster, argv: list[str], env: dict, log_path: Path,
                      ready: Callable[[], bool]) -> dict:
    """Run ``argv`` on the cluster; once ``ready()`` holds, SIGKILL node 1; what happened."""
    log = log_path.open("w")  # a file, not a pipe: nothing blocks while we poll
    run = subprocess.Popen(argv, env={**env, "RAY_ADDRESS": cluster.address}, cwd=REPO, stdout=log,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline, held = time.monotonic() + 300, False
        while run.poll() is None and time.monotonic() < deadline and not (held := ready()):
            time.sleep(0.02)
        seen = {"still_running": run.poll() is None, "ready": held, "running_there": tasks_on(cluster, 1)}
        seen["killed"] = kill_node(cluster, 1)
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
    output = log_path.read_text()
    # The owner of each task the node took with it says so as it submits the task again (Ray's words).
    lost = re.findall(r"Task (\S+) failed\. There are \d+ retries remaining, so the task will be retried\. Error: "
                      r"Task failed because the node it was running on is dead", output)
    return {**seen, "rc": run.returncode, "log": output, "lost": lost}


@slow  # about a minute: `make test-faults`
def test_losing_a_worker_node_mid_ingest_finishes_on_the_other_with_equal_output(prefect_server, tmp_path, ledger):
    demo = tmp_path / "demo"
    write_demo_data(demo, n_files=FILES, articles_per_file=120)  # about a second of work per file
    out = tmp_path / "on-cluster"
    with loopback_cluster(nodes=2, cpus=1) as cluster:
        env = {**cluster.env, "PREFECT_API_URL": prefect_server}
        embedded_run(pretrain("ingest", "--input", str(demo), "--output", str(tmp_path / "embedded")), env)
        written_before = []

        def first_shards_written() -> bool:
            written_before[:] = list(out.glob("*.parquet"))
            return bool(written_before)

        seen = lose_node_mid_run(cluster, pretrain("ingest", "--input", str(demo), "--output", str(out)), env,
                                 tmp_path / "cluster-run.log", first_shards_written)
    assert seen["still_running"] and len(written_before) < FILES, (written_before, "the run ended before the loss")
    assert seen["rc"] == 0, seen["log"][-3000:]
    assert rows(out) == rows(tmp_path / "embedded")
    report = json.loads((out / "report.json").read_text())
    assert report["shards_written"] == FILES and not report.get("failed")
    assert cluster.node_ids[0] in report["ray_nodes"]  # the head finished the run
    ledger("a worker node (raylet, workers, agents) SIGKILLed mid `pretrain ingest` on a two-node cluster",
           "rc 0, the lost node's shards rerun on the head; rows equal the embedded run's",
           shards_before_loss=len(written_before), processes_killed=seen["killed"], shards=FILES)


@slow
def test_losing_a_worker_node_mid_dedup_finishes_on_the_other_with_equal_output(prefect_server, tmp_path, ledger):
    write_documents(tmp_path / "in")
    out = tmp_path / "on-cluster"
    dedup = lambda folder: pretrain("dedup", "--input", str(tmp_path / "in"), "--output", str(folder),  # noqa: E731
                                    "--partitions", "2")
    with loopback_cluster(nodes=2, cpus=1) as cluster:
        env = {**cluster.env, "PREFECT_API_URL": prefect_server}
        embedded_run(dedup(tmp_path / "embedded"), env)
        seen = lose_node_mid_run(cluster, dedup(out), env, tmp_path / "cluster-run.log",
                                 lambda: running_on(cluster, 1, "dedup-hash"))  # phase 1 of 4
    assert seen["still_running"] and seen["ready"], "node 1 never ran a hash task while the run was on"
    assert seen["rc"] == 0, seen["log"][-3000:]
    assert seen["lost"], f"no task was lost with the node (it ran {seen['running_there']})"
    for part in ("", "dedup/clusters"):
        ours = rows(out / part)
        assert len(ours) > 0 and ours == rows(tmp_path / "embedded" / part), part
    report, clean = (json.loads((folder / "report.json").read_text()) for folder in (out, tmp_path / "embedded"))
    assert report["shards"] == FILES and report["dropped"] == clean["dropped"] and sum(report["dropped"].values()) > 0
    assert report["clusters"] == clean["clusters"] and report["cluster_tasks"] > 1  # stage 3 as rounds of Ray tasks
    assert cluster.node_ids[0] in report["ray_nodes"]  # the head finished the run
    ledger("a worker node SIGKILLed while it runs a `pretrain dedup` hash task (two-node cluster)",
           "rc 0, the lost task reruns on the head; kept rows and cluster tables equal the embedded run's",
           shards=FILES, processes_killed=seen["killed"], tasks_lost=len(seen["lost"]), clusters=report["clusters"])


@slow
def test_losing_a_worker_node_mid_tokenize_finishes_on_the_other_with_equal_output(prefect_server, tmp_path, ledger):
    write_documents(tmp_path / "in", per_shard=480)
    out = tmp_path / "on-cluster"
    tokenize = lambda folder: pretrain("tokenize", "--input", str(tmp_path / "in"), "--output", str(folder),  # noqa: E731
                                       "--vocab-size", "1000")
    with loopback_cluster(nodes=2, cpus=1) as cluster:
        env = {**cluster.env, "PREFECT_API_URL": prefect_server}
        embedded_run(tokenize(tmp_path / "embedded"), env)
        seen = lose_node_mid_run(cluster, tokenize(out), env, tmp_path / "cluster-run.log",
                                 lambda: running_on(cluster, 1, "tokenize-shard"))
    assert seen["still_running"] and seen["ready"], "node 1 never ran a shard task while the run was on"
    assert seen["rc"] == 0, seen["log"][-3000:]
    assert seen["lost"], f"no task was lost with the node (it ran {seen['running_there']})"
    clean = tmp_path / "embedded"
    assert (out / "tokenizer.json").read_bytes() == (clean / "tokenizer.json").read_bytes()
    tokens = files(out, "*/*.bin")
    assert len(tokens) == 2 * FILES and tokens == files(clean, "*/*.bin")  # train/ and val/, byte for byte
    index, expected = (json.loads((folder / "index.json").read_text()) for folder in (out, clean))
    assert index["tokens"] == expected["tokens"] and index["tokens"]["train"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["shards_written"] == FILES and not report["failed"]
    assert cluster.node_ids[0] in report["ray_nodes"]
    ledger("a worker node SIGKILLed while it runs a `pretrain tokenize` shard task (two-node cluster)",
           "rc 0, its shards rerun on the head; token files byte-equal the embedded run's",
           shards=FILES, processes_killed=seen["killed"], tasks_lost=len(seen["lost"]), tokens=index["tokens"]["train"])
