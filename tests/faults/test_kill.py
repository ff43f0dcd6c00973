"""kill -9 in the middle of a stage: a Ray worker (Ray reruns its task), then the flow process (rerun
it): the final files equal a clean run's, no partial file is read as complete, no document twice.

The flow-process kill of ingestion is in tests/test_ingest_flow.py; a training run stopped
mid-way and resumed is in tests/test_train.py, one killed with -9 and resumed in
test_kill_train.py. Here: a worker kill in every Ray stage (in `make test`), and flow-process
kills of filter, dedup and tokenize (slow: `make test-faults`).

No kill waits on a clock. Ingest reads its inputs over HTTP from tests/httpserver.py, which holds
one file's request open: the worker that made it is inside that shard's fetch when it is killed.
The other stages run in a process of their own whose Ray workers carry the commit trap
(tests/faults/trap): the worker about to rename one shard into place waits there, and the test
kills exactly that worker (or the whole run). Each test then checks that the killed process was
that task's worker and that the task ran again (a second request, a second worker at the commit).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import psutil
import pytest
from faultlib import (CommitTrap, FlowProcess, RequestKiller, StageProcess, assert_no_duplicate_ids,
                      kill_running_worker, part_files, rows_of, shard_bytes, slow)
from httpserver import FaultyHTTPServer

from pretrain.config import DedupConfig, FilterConfig, IngestConfig, TokenizeConfig
from tasks.demo import write_demo_data

pytestmark = [pytest.mark.faults, pytest.mark.integration]
SAME_AS_CLEAN = "Ray reran the task; equals a clean run, ids unique, no .part"
HELD = "demo-00003"  # the shard whose task is held and killed (of demo-00000 .. demo-00005)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, prefect_server, ray_session) -> Path:
    """Ingested demo shards (6 files), the input of the later stages."""
    from flows.ingest import ingest_flow

    root = tmp_path_factory.mktemp("kill")
    write_demo_data(root / "demo", n_files=6, articles_per_file=40)
    ingest_flow(config=IngestConfig(inputs=[str(root / "demo")]), output_dir=str(root / "ingest"))
    return root


def kill_worker_at_commit(flow: str, config, shard: Path, api_url: str, markers: Path, **kwargs) -> list[int]:
    """Run ``flow`` in a process of its own; SIGKILL the Ray worker held at the commit of ``shard``.

    The run must then end well, its task retried: a second worker reached the same commit and went on.
    """
    trap = CommitTrap(shard, markers)
    run = FlowProcess(flow, config, api_url, trap.env, **kwargs)
    try:
        held = trap.wait_held(run)
        kill_running_worker(held)
        code, output = run.finish()
    finally:
        run.stop()
    assert code == 0, output[-3000:]
    assert trap.pids("held") == [held] and len(trap.pids("passed")) == 1, \
        f"the task of {shard.name} should run twice: held {trap.pids('held')}, passed {trap.pids('passed')}"
    assert trap.pids("passed") != [held] and shard.is_file()
    return [held]


def test_killing_a_ray_worker_mid_ingest_loses_and_duplicates_nothing(services, ingested, tmp_path, ledger):
    from flows.ingest import ingest_flow

    held_file = f"/{HELD}.warc.gz"
    with FaultyHTTPServer(root=ingested / "demo") as server:
        urls = [server.url(p.name) for p in sorted((ingested / "demo").glob("*.warc.gz"))]
        cfg = IngestConfig(inputs=urls, min_text_chars=21)  # not a cache hit of the fixture's run
        killer = RequestKiller(server.hold(held_file), server.port, limit=1)
        killer.start()
        try:
            ingest_flow(config=cfg, output_dir=str(tmp_path / "k"))
        finally:
            killed = killer.stop()
        assert len(killed) == 1, f"no worker was caught fetching {held_file}"
        # the killed worker's request, then Ray's retry of the task in another worker
        assert [r.method for r in server.requests_for(held_file)] == ["GET", "GET"]
        ingest_flow(config=cfg, output_dir=str(tmp_path / "clean"))
    assert shard_bytes(tmp_path / "k") == shard_bytes(tmp_path / "clean") and len(shard_bytes(tmp_path / "k")) == 6
    assert assert_no_duplicate_ids(tmp_path / "k") == json.loads((tmp_path / "k" / "report.json").read_text())["documents"]
    assert part_files(tmp_path / "k") == []
    ledger("kill -9 a Ray worker mid ingest", SAME_AS_CLEAN, workers_killed=len(killed),
           shards_compared=len(shard_bytes(tmp_path / "k")), ids_unique=len(rows_of(tmp_path / "k")))


def test_killing_a_ray_worker_mid_filter_loses_and_duplicates_nothing(services, ingested, tmp_path, ledger):
    from flows.filter import filter_flow

    cfg = FilterConfig.model_validate({"c4": {"min_sentences": 4}})
    run = lambda out: filter_flow(config=cfg, input_dir=str(ingested / "ingest"), output_dir=str(out))  # noqa: E731
    killed = kill_worker_at_commit("flows.filter.filter_flow", cfg, tmp_path / "k" / f"{HELD}.parquet", services,
                                   tmp_path / "trap", input_dir=str(ingested / "ingest"),
                                   output_dir=str(tmp_path / "k"))
    assert len(killed) == 1
    run(tmp_path / "clean")
    assert shard_bytes(tmp_path / "k", "**/*.parquet") == shard_bytes(tmp_path / "clean", "**/*.parquet")
    report = json.loads((tmp_path / "k" / "report.json").read_text())
    assert assert_no_duplicate_ids(tmp_path / "k") == report["documents_kept"] > 0
    assert report["documents_in"] == len(rows_of(ingested / "ingest"))  # every input document was seen once
    assert part_files(tmp_path / "k") == []
    ledger("kill -9 a Ray worker mid filter", SAME_AS_CLEAN, workers_killed=len(killed),
           shards_compared=len(shard_bytes(tmp_path / "k", "**/*.parquet")), documents_in=report["documents_in"],
           ids_unique=report["documents_kept"])


def test_killing_a_ray_worker_mid_dedup_loses_and_duplicates_nothing(services, ingested, tmp_path, ledger):
    from flows.dedup import dedup_flow

    cfg = DedupConfig(hash_partitions=2, seed=7)
    run = lambda out: dedup_flow(config=cfg, input_dir=str(ingested / "ingest"), output_dir=str(out))  # noqa: E731
    hashed = tmp_path / "k" / "dedup" / "work" / "shards" / f"{HELD}.keys.npy"  # the hash stage's 4th file of 5
    killed = kill_worker_at_commit("flows.dedup.dedup_flow", cfg, hashed, services, tmp_path / "trap",
                                   input_dir=str(ingested / "ingest"), output_dir=str(tmp_path / "k"))
    assert len(killed) == 1
    run(tmp_path / "clean")
    assert shard_bytes(tmp_path / "k") == shard_bytes(tmp_path / "clean")
    assert shard_bytes(tmp_path / "k", "dedup/clusters/*.parquet") == shard_bytes(tmp_path / "clean",
                                                                                 "dedup/clusters/*.parquet")
    report = json.loads((tmp_path / "k" / "report.json").read_text())
    assert assert_no_duplicate_ids(tmp_path / "k") == report["documents_kept"]
    assert report["documents_in"] == len(rows_of(ingested / "ingest"))
    assert report["documents_kept"] + sum(report["dropped"].values()) == report["documents_in"]
    compared = len(shard_bytes(tmp_path / "k")) + len(shard_bytes(tmp_path / "k", "dedup/clusters/*.parquet"))
    ledger("kill -9 a Ray worker mid dedup (hash stage)", "Ray reran the task; shards and cluster tables equal "
           "a clean run's, ids unique", workers_killed=len(killed), shards_compared=compared,
           documents_in=report["documents_in"], ids_unique=report["documents_kept"])


def test_killing_a_ray_worker_mid_tokenize_loses_and_duplicates_nothing(services, ingested, tmp_path, ledger):
    from flows.tokenize import tokenize_flow

    cfg = TokenizeConfig(vocab_size=400, train_max_documents=200, val_fraction=0.1)
    run = lambda out: tokenize_flow(config=cfg, input_dirs=[str(ingested / "ingest")], output_dir=str(out))  # noqa
    killed = kill_worker_at_commit("flows.tokenize.tokenize_flow", cfg, tmp_path / "k" / "train" / f"{HELD}.bin",
                                   services, tmp_path / "trap", input_dirs=[str(ingested / "ingest")],
                                   output_dir=str(tmp_path / "k"))
    assert len(killed) == 1
    run(tmp_path / "clean")
    assert shard_bytes(tmp_path / "k", "*/*.bin") == shard_bytes(tmp_path / "clean", "*/*.bin")
    index = json.loads((tmp_path / "k" / "index.json").read_text())
    assert index == json.loads((tmp_path / "clean" / "index.json").read_text())
    assert index["documents"]["train"] + index["documents"]["val"] == len(rows_of(ingested / "ingest"))
    assert part_files(tmp_path / "k") == []  # the killed worker's .bin.part files were removed
    ledger("kill -9 a Ray worker mid tokenize", "Ray reran the task; token files and index.json equal a clean "
           "run's, no .bin.part", workers_killed=len(killed),
           bin_files_compared=len(shard_bytes(tmp_path / "k", "*/*.bin")),
           documents=index["documents"]["train"] + index["documents"]["val"])


def kill_then_rerun(args: list[str], out: Path, shard: Path, api_url: str, markers: Path) -> None:
    """Run ``pretrain <args>``, SIGKILL it (and its Ray) while a worker is held at the commit of ``shard``,
    then rerun it to the end."""
    trap = CommitTrap(shard, markers)
    stage = StageProcess(args, api_url, **trap.env)
    try:
        held = trap.wait_held(stage)
        assert psutil.Process(held).cmdline()[0].startswith("ray::"), "the held process should be a Ray worker"
        stage.kill9()
        with contextlib.suppress(psutil.Error):  # its raylet is gone; the worker may be going on its own
            psutil.Process(held).kill()
    finally:
        stage.stop()
    # killed in the middle: the held shard's temporary file is on disk, the shard is not, the run never finished
    assert list(shard.parent.glob(f".{shard.name}.*part")) and not shard.exists(), sorted(shard.parent.iterdir())
    assert not (out / "report.json").exists()
    rerun = StageProcess(args, api_url)
    code, output = rerun.finish()
    assert code == 0, output[-3000:]


@slow
def test_killing_the_filter_process_then_rerunning_gives_the_clean_result(services, ingested, tmp_path, ledger):
    from flows.filter import filter_flow

    out = tmp_path / "k"
    args = ["filter", "--input", str(ingested / "ingest"), "--output", str(out), "--num-cpus", "1"]
    kill_then_rerun(args, out, out / f"{HELD}.parquet", services, tmp_path / "trap")
    filter_flow(config=FilterConfig(), input_dir=str(ingested / "ingest"), output_dir=str(tmp_path / "clean"))
    assert shard_bytes(out, "**/*.parquet") == shard_bytes(tmp_path / "clean", "**/*.parquet")
    ids = assert_no_duplicate_ids(out)
    assert part_files(out) == [] and ids > 0
    ledger("kill -9 the filter process mid-run, rerun", "the rerun equals a clean run, ids unique, no .part",
           shards_compared=len(shard_bytes(out, "**/*.parquet")), ids_unique=ids)


@slow
def test_killing_the_dedup_process_then_rerunning_gives_the_clean_result(services, ingested, tmp_path, ledger):
    from flows.dedup import dedup_flow

    out = tmp_path / "k"
    args = ["dedup", "--input", str(ingested / "ingest"), "--output", str(out), "--partitions", "2", "--num-cpus", "1"]
    kill_then_rerun(args, out, out / f"{HELD}.parquet", services, tmp_path / "trap")  # its cluster tables are written
    dedup_flow(config=DedupConfig(hash_partitions=2), input_dir=str(ingested / "ingest"),
               output_dir=str(tmp_path / "clean"))
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean") and len(shard_bytes(out)) == 6
    kept = json.loads((out / "report.json").read_text())["documents_kept"]
    assert assert_no_duplicate_ids(out) == kept
    ledger("kill -9 the dedup process mid-run, rerun", "the rerun equals a clean run, ids unique",
           shards_compared=len(shard_bytes(out)), ids_unique=kept)


@slow
def test_killing_the_tokenize_process_then_rerunning_gives_the_clean_result(services, ingested, tmp_path, ledger):
    from flows.tokenize import tokenize_flow

    out = tmp_path / "k"
    args = ["tokenize", "--input", str(ingested / "ingest"), "--output", str(out), "--vocab-size", "400",
            "--num-cpus", "1"]
    kill_then_rerun(args, out, out / "train" / f"{HELD}.bin", services, tmp_path / "trap")
    tokenize_flow(config=TokenizeConfig(vocab_size=400), input_dirs=[str(ingested / "ingest")],
                  output_dir=str(tmp_path / "clean"))
    assert shard_bytes(out, "*/*.bin") == shard_bytes(tmp_path / "clean", "*/*.bin")
    assert (out / "index.json").read_text() == (tmp_path / "clean" / "index.json").read_text()
    assert part_files(out) == []
    documents = json.loads((out / "index.json").read_text())["documents"]
    ledger("kill -9 the tokenize process mid-run, rerun",
           "the rerun equals a clean run (token files, index.json), no .part",
           bin_files_compared=len(shard_bytes(out, "*/*.bin")), documents=documents["train"] + documents["val"])


def test_killing_the_synthesize_actor_mid_shard_loses_and_duplicates_nothing(services, tmp_path, ledger):
    """kill -9 the Ray actor holding the model while it commits a shard: Ray restarts the actor, the task
    reruns, and the output equals a clean run's (seeded per document), one row per input document."""
    from tiny_run import tiny_book_run

    from flows.synthesize import synthesize_flow
    from flows.train import export_model
    from pretrain.config import SynthesizeConfig
    from tasks.shards import ShardWriter

    run_dir, _, _, _ = tiny_book_run(tmp_path / "model")
    hf = export_model(run_dir, json.loads((run_dir / "summary.json").read_text()))
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "short.txt").write_text("Rewrite: {text}\nRewritten:\n")
    documents = tmp_path / "docs"
    for shard in range(3):
        with ShardWriter(documents / f"shard-{shard}.parquet") as writer:
            writer.write_many({"id": f"doc-{shard}-{i}", "source": "web", "lang": "en",
                               "text": f"Document {i} of shard {shard} says the weather was fine and warm."}
                              for i in range(2))
    cfg = SynthesizeConfig(model=str(hf), template="short", templates_dir=str(tmp_path / "templates"),
                           max_new_tokens=8, batch_size=2)
    killed = kill_worker_at_commit("flows.synthesize.synthesize_flow", cfg, tmp_path / "k" / "shard-1.parquet",
                                   services, tmp_path / "trap", input_dir=str(documents),
                                   output_dir=str(tmp_path / "k"))
    synthesize_flow(config=cfg, input_dir=str(documents), output_dir=str(tmp_path / "clean"))
    assert shard_bytes(tmp_path / "k") == shard_bytes(tmp_path / "clean") and len(shard_bytes(tmp_path / "k")) == 3
    assert assert_no_duplicate_ids(tmp_path / "k") == 6 and part_files(tmp_path / "k") == []
    parents = sorted(row["parent_id"] for row in rows_of(tmp_path / "k"))
    assert parents == sorted(f"doc-{s}-{i}" for s in range(3) for i in range(2))
    ledger("kill -9 the synthesize actor mid shard", SAME_AS_CLEAN, workers_killed=len(killed),
           shards_compared=3, ids_unique=6)
