"""The stages on a real two-node Ray cluster on loopback (the session's ``ray_cluster``, tests/ray_cluster.py),
joined through RAY_ADDRESS as on a real cluster: the CLI chain `pretrain ingest` -> `filter` -> `dedup` ->
`quality score` -> `tokenize` with RAY_ADDRESS=127.0.0.1:PORT writes what the same chain writes on the
embedded default (run while the cluster is up, which it must not join), and each stage's shards ran on
both nodes (report.json's ``ray_node_id`` per shard).

Before: Ray 2.60 swapped the client's 127.0.0.1 for the host's routable address and retried a
GCS that was not there, without end (tasks/ray_runtime.is_loopback keeps it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from tasks.demo import write_demo_data
from tasks.demo_reference import write_demo_reference

pytestmark = pytest.mark.integration

SHARDS = 6  # demo WARC files, one shard each: with 1 CPU per node, both nodes get some
MAX_PERPLEXITY = 3.05  # the small model below scores the deduplicated demo documents 2.7-3.3
# Where each stage's report.json lists its per-shard reports (dedup's: the write phase; quality's: the keep pass).
SHARD_REPORTS = {"ingest": "shards", "filter": "reports", "dedup": "reports", "quality": "reports",
                 "tokenize": "reports"}


def chain(demo: Path, model: Path, root: Path) -> list[tuple[str, list[str]]]:
    """The stages in order, each reading the one before: (stage, `pretrain` arguments)."""
    return [
        ("ingest", ["ingest", "--input", str(demo), "--output", str(root / "ingest")]),
        ("filter", ["filter", "--input", str(root / "ingest"), "--output", str(root / "filter")]),
        ("dedup", ["dedup", "--input", str(root / "filter"), "--output", str(root / "dedup"), "--partitions", "1"]),
        ("quality", ["quality", "score", "--input", str(root / "dedup"), "--output", str(root / "quality"),
                     "--perplexity-model", str(model), "--max-perplexity", str(MAX_PERPLEXITY)]),
        ("tokenize", ["tokenize", "--input", str(root / "quality" / "kept"), "--output", str(root / "tokens"),
                      "--vocab-size", "600"]),
    ]


# The chain in one process, a `pretrain` command after the other through `cli.main:app` (the console script's
# entry): each stage is its own flow run (on the cluster, its tasks are this job's), without the 10-20 s a
# process takes to import Prefect and Ray and to join or start Ray, five times over.
CHAIN = textwrap.dedent("""
    import json, sys, time
    from cli.main import app
    results = {}
    for stage, args in json.loads(sys.argv[1]):
        started = time.monotonic()
        try:
            rc = app(args, standalone_mode=False) or 0  # a command's exit code (typer.Exit) comes back here
        except SystemExit as stop:
            rc = stop.code or 0
        except Exception as error:
            print(f"{stage}: {error!r}", file=sys.stderr)
            rc = 1
        results[stage] = {"rc": rc, "seconds": round(time.monotonic() - started, 1)}
        if rc:
            break
    print(json.dumps(results))
""")


def run_chain(demo: Path, model: Path, root: Path, env: dict) -> dict:
    """Every stage in order; a failed stage ends the chain (the next reads its output). Per stage: rc, seconds;
    and the process's stderr."""
    commands = [(stage, [*args, "--num-cpus", "2"]) for stage, args in chain(demo, model, root)]
    done = subprocess.run([sys.executable, "-c", CHAIN, json.dumps(commands)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"stages": json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


@pytest.fixture(scope="module")
def chains(prefect_server, ray_cluster, tmp_path_factory):
    from pretrain.config import PerplexityConfig
    from tasks.quality.perplexity import train_perplexity_model

    base = tmp_path_factory.mktemp("cluster")
    write_demo_data(base / "demo", n_files=SHARDS, articles_per_file=6)
    reference = write_demo_reference(base / "reference", n_documents=120)
    model = train_perplexity_model([str(reference)], base / "ppl", PerplexityConfig(
        order=3, vocab_size=300, max_train_chars=200_000, lmplz_memory="64M"))
    env = {**ray_cluster.env, "PREFECT_API_URL": prefect_server}
    with ThreadPoolExecutor(2) as pool:  # at once: much of a stage's time is waiting on Prefect and Ray
        on_cluster = pool.submit(run_chain, base / "demo", model, base / "on-cluster",
                                 {**env, "RAY_ADDRESS": ray_cluster.address})
        embedded = pool.submit(run_chain, base / "demo", model, base / "embedded", env)  # while the cluster runs
        return {"cluster": ray_cluster, "base": base, "on-cluster": on_cluster.result(),
                "embedded": embedded.result()}


def rows(folder: Path, pattern: str = "*.parquet") -> list[dict]:
    found = [row for path in sorted(folder.glob(pattern)) for row in pq.read_table(path).to_pylist()]
    return sorted(found, key=lambda row: (row["id"], str(row.get("reason"))))


def files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob(pattern))}


def stage_ran(chains: dict, stage: str) -> tuple[dict, dict]:
    """Both runs of ``stage`` succeeded; their report.json files (on the cluster, embedded)."""
    for run in ("on-cluster", "embedded"):
        assert chains[run]["stages"].get(stage, {}).get("rc") == 0, \
            f"{run} {stage}: {chains[run]['stages']}\n{chains[run]['stderr'][-3000:]}"
    assert "Failed to connect to GCS" not in chains["on-cluster"]["stderr"]
    folder = {"quality": "quality", "tokenize": "tokens"}.get(stage, stage)
    return tuple(json.loads((chains["base"] / run / folder / "report.json").read_text())
                 for run in ("on-cluster", "embedded"))


def assert_both_nodes(chains: dict, stage: str, mine: dict, embedded: dict) -> int:
    """Every shard report names the Ray node that ran it: on the cluster both nodes ran shards (the runner
    spreads them, ``flows.runner.SPREAD``), and every task of the stage ran on one of them; embedded, on a
    node of its own."""
    cluster = set(chains["cluster"].node_ids)
    shards = mine[SHARD_REPORTS[stage]]
    nodes = {shard["ray_node_id"] for shard in shards}
    assert nodes == cluster, (stage, nodes, cluster)
    assert set(mine["ray_nodes"]) == cluster, mine["ray_nodes"]  # every task of the stage (dedup: 4 phases)
    local = {shard["ray_node_id"] for shard in embedded[SHARD_REPORTS[stage]]}
    assert len(local) == 1 and not local & cluster, (stage, local)  # its own one-node instance
    return len(shards)


def test_ingest_on_two_loopback_nodes_equals_the_embedded_run(chains, ledger):
    mine, embedded = stage_ran(chains, "ingest")
    ours, theirs = rows(chains["base"] / "on-cluster" / "ingest"), rows(chains["base"] / "embedded" / "ingest")
    assert len(ours) > 0 and ours == theirs  # every column of every row
    shards = assert_both_nodes(chains, "ingest", mine, embedded)
    assert sum(mine["ray_nodes"].values()) == shards == SHARDS
    ledger("`pretrain ingest` with RAY_ADDRESS=127.0.0.1:PORT, a two-node cluster_utils cluster on loopback",
           "rc 0, rows equal to the embedded run's, shards on both nodes (was: endless 'Failed to connect to GCS')",
           documents=len(ours), nodes=2)


def test_filter_on_two_loopback_nodes_equals_the_embedded_run(chains, ledger):
    mine, embedded = stage_ran(chains, "filter")
    for pattern in ("*.parquet", "removed/*/*.parquet"):  # kept; dropped, under their filter's name
        ours = rows(chains["base"] / "on-cluster" / "filter", pattern)
        assert len(ours) > 0 and ours == rows(chains["base"] / "embedded" / "filter", pattern), pattern
    assert mine["dropped"] == embedded["dropped"] and sum(mine["dropped"].values()) > 0
    shards = assert_both_nodes(chains, "filter", mine, embedded)
    ledger("`pretrain filter` through RAY_ADDRESS on the two-node loopback cluster",
           "rc 0, kept and removed rows equal to the embedded run's, shards on both nodes",
           documents=mine["documents_in"], shards=shards)


def test_dedup_on_two_loopback_nodes_equals_the_embedded_run(chains, ledger):
    mine, embedded = stage_ran(chains, "dedup")
    for part in ("", "dedup/clusters"):
        ours = rows(chains["base"] / "on-cluster" / "dedup" / part)
        assert len(ours) > 0 and ours == rows(chains["base"] / "embedded" / "dedup" / part), part
    assert mine["dropped"] == embedded["dropped"] and sum(mine["dropped"].values()) > 0
    assert mine["cluster_tasks"] > 1  # the components ran as star rounds of Ray tasks, not union-find in one
    assert assert_both_nodes(chains, "dedup", mine, embedded) == SHARDS  # its write phase's shards
    ledger("`pretrain dedup` (hash, buckets, clusters in star rounds, write) through RAY_ADDRESS on two nodes",
           "rc 0, kept rows and cluster tables equal to the embedded run's, tasks on both nodes",
           documents=mine["documents_in"], clusters=mine["clusters"], tasks=sum(mine["ray_nodes"].values()))


def test_quality_score_on_two_loopback_nodes_equals_the_embedded_run(chains, ledger):
    mine, embedded = stage_ran(chains, "quality")
    for part in ("scored", "kept"):
        ours = rows(chains["base"] / "on-cluster" / "quality" / part)
        assert len(ours) > 0 and ours == rows(chains["base"] / "embedded" / "quality" / part), part
    assert mine["cutoffs"] == embedded["cutoffs"] and mine["documents_kept"] < mine["documents_in"]
    assert len(mine["model_loads"]) == 2  # a scoring actor per CPU of the cluster
    shards = assert_both_nodes(chains, "quality", mine, embedded)
    ledger("`pretrain quality score` (scoring actors, keep pass) through RAY_ADDRESS on two nodes",
           "rc 0, scored and kept rows equal to the embedded run's, shards on both nodes",
           documents=mine["documents_in"], shards=shards)


def test_tokenize_on_two_loopback_nodes_equals_the_embedded_run(chains, ledger):
    mine, embedded = stage_ran(chains, "tokenize")
    ours, theirs = chains["base"] / "on-cluster" / "tokens", chains["base"] / "embedded" / "tokens"
    assert (ours / "tokenizer.json").read_bytes() == (theirs / "tokenizer.json").read_bytes()
    tokens = files(ours, "*/*.bin")
    assert len(tokens) == 2 * SHARDS and tokens == files(theirs, "*/*.bin")  # train/ and val/, byte for byte
    index, local = (json.loads((folder / "index.json").read_text()) for folder in (ours, theirs))
    assert index["tokens"] == local["tokens"] and index["tokens"]["train"] > 0
    shards = assert_both_nodes(chains, "tokenize", mine, embedded)
    ledger("`pretrain tokenize` (tokenizer task, shard tasks) through RAY_ADDRESS on two nodes",
           "rc 0, token files byte-equal to the embedded run's, shards on both nodes",
           tokens=index["tokens"]["train"], shards=shards)
