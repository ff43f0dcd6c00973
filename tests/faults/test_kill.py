"""kill -9 in the middle of a stage: a Ray worker (Ray reruns its task), then the flow process (rerun
it): the final files equal a clean run's, no partial file is read as complete, no document twice.

The flow-process kill of ingestion is in tests/test_ingest_flow.py; a training run stopped
mid-way and resumed is in tests/test_train.py, one killed with -9 and resumed in
test_kill_train.py. Here: a worker kill in every Ray stage (in `make test`), and flow-process
kills of filter, dedup and tokenize (slow: `make test-faults`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faultlib import StageProcess, WorkerKiller, assert_no_duplicate_ids, part_files, rows_of, shard_bytes, slow

from pretrain.config import DedupConfig, FilterConfig, IngestConfig, TokenizeConfig
from tasks.demo import write_demo_data

pytestmark = [pytest.mark.faults, pytest.mark.integration]
SAME_AS_CLEAN = "Ray reran the task; equals a clean run, ids unique, no .part"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, prefect_server, ray_session) -> Path:
    """Ingested demo shards (6 files), the input of the later stages."""
    from flows.ingest import ingest_flow

    root = tmp_path_factory.mktemp("kill")
    write_demo_data(root / "demo", n_files=6, articles_per_file=40)
    ingest_flow(config=IngestConfig(inputs=[str(root / "demo")]), output_dir=str(root / "ingest"))
    return root


def run_with_worker_kill(title: str, run) -> list[int]:
    killer = WorkerKiller(title)
    killer.start()
    try:
        run()
    finally:
        killed = killer.stop()
    return killed


def test_killing_a_ray_worker_mid_ingest_loses_and_duplicates_nothing(services, ingested, tmp_path, ledger):
    from flows.ingest import ingest_flow

    cfg = IngestConfig(inputs=[str(ingested / "demo")], min_text_chars=21)  # not a cache hit of the fixture's run
    killed = run_with_worker_kill("ray::ingest-shard", lambda: ingest_flow(config=cfg, output_dir=str(tmp_path / "k")))
    assert len(killed) == 1
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
    killed = run_with_worker_kill("ray::filter-shard", lambda: run(tmp_path / "k"))
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
    killed = run_with_worker_kill("ray::_hash_on_ray", lambda: run(tmp_path / "k"))
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
    killed = run_with_worker_kill("ray::_tokenize_on_ray", lambda: run(tmp_path / "k"))
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


def kill_then_rerun(args: list[str], out: Path, started, api_url: str) -> None:
    """Run ``pretrain <args>``, SIGKILL it once ``started(out)`` holds, then rerun it to the end."""
    stage = StageProcess(args, api_url)
    assert stage.wait_for(lambda: started(out)), "the run should be killed in the middle"
    stage.kill9()
    rerun = StageProcess(args, api_url)
    code, output = rerun.finish()
    assert code == 0, output[-3000:]


@slow
def test_killing_the_filter_process_then_rerunning_gives_the_clean_result(services, ingested, tmp_path, ledger):
    from flows.filter import filter_flow

    out = tmp_path / "k"
    args = ["filter", "--input", str(ingested / "ingest"), "--output", str(out), "--num-cpus", "1"]
    kill_then_rerun(args, out, lambda o: 1 <= len(list(o.glob("*.parquet"))) < 6, services)
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
    kill_then_rerun(args, out, lambda o: any((o / "dedup").rglob("*.parquet")) if (o / "dedup").exists() else False,
                    services)
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
    kill_then_rerun(args, out, lambda o: 1 <= len(list(o.glob("train/*.bin"))) < 6, services)
    tokenize_flow(config=TokenizeConfig(vocab_size=400), input_dirs=[str(ingested / "ingest")],
                  output_dir=str(tmp_path / "clean"))
    assert shard_bytes(out, "*/*.bin") == shard_bytes(tmp_path / "clean", "*/*.bin")
    assert (out / "index.json").read_text() == (tmp_path / "clean" / "index.json").read_text()
    assert part_files(out) == []
    documents = json.loads((out / "index.json").read_text())["documents"]
    ledger("kill -9 the tokenize process mid-run, rerun",
           "the rerun equals a clean run (token files, index.json), no .part",
           bin_files_compared=len(shard_bytes(out, "*/*.bin")), documents=documents["train"] + documents["val"])
