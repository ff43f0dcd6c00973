"""Integration: the ingest flow on a real Prefect server and a real local Ray."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import REPO, shared_data
from httpserver import FaultyHTTPServer
from typer.testing import CliRunner

from flows.ingest import ingest_flow
from flows.runner import StageFailed
from cli.main import app
from pretrain.config import DownloadConfig, IngestConfig, RayConfig
from tasks.demo import write_demo_data

pytestmark = pytest.mark.integration
FAST_RETRIES = DownloadConfig(max_attempts=5, backoff_base_s=0.02, backoff_max_s=0.1, timeout_s=5)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def flow_task_states(flow_state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(run.state.name for run in runs)


def test_pretrain_ingest_on_real_common_crawl_samples(services, tmp_path):
    cc = shared_data("cc")
    out = tmp_path / "cc"
    result = CliRunner().invoke(app, ["ingest", "--input", f"{cc}/*.warc.gz", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "truncated_record: 1" in result.output

    rows = pq.read_table(out / "CC-MAIN-2020-34-sample.parquet").to_pylist()
    assert len(rows) >= 10
    assert all(row["url"].startswith(("http://", "https://")) for row in rows)
    assert all(len(row["text"]) >= 20 for row in rows)
    assert all(row["crawl"] == "CC-MAIN-2020-34" for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)
    assert {row["lang"] for row in rows} >= {"zh", "ru"}

    import json

    report = json.loads((out / "report.json").read_text())
    assert report["files"] == 3 and report["failed"] == []
    assert report["dropped"]["truncated_record"] == 1
    assert report["records_read"] == 54  # 50 + 3 + the clipped one
    clipped = next(s for s in report["shards"] if "clipped" in s["input"])
    assert clipped["dropped"] == {"truncated_record": 1} and clipped["documents"] == 0
    assert (out / "info.json").is_file()
    assert not list(out.glob(".*.part"))


def test_languages_option_keeps_only_those(services, tmp_path):
    demo = write_demo_data(tmp_path / "demo", n_files=1, articles_per_file=6)
    cfg = IngestConfig(inputs=[str(demo[0])], languages=["fr", "de"])
    summary = ingest_flow(config=cfg, output_dir=str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "demo-00000.parquet")
    assert set(table.column("lang").to_pylist()) == {"fr", "de"}
    assert table.num_rows == 2
    assert summary["dropped"]["language_not_selected"] > 0


def test_http_faults_are_retried_and_shards_equal_a_clean_run(services, tmp_path):
    demo = write_demo_data(tmp_path / "demo", n_files=3, articles_per_file=8)
    files = {f"/warcs/{p.name}": p.read_bytes() for p in demo}
    with FaultyHTTPServer(files=files) as server:
        urls = [server.url(path) for path in files]
        clean_cfg = IngestConfig(inputs=urls, download=FAST_RETRIES)
        ingest_flow(config=clean_cfg, output_dir=str(tmp_path / "clean"))

        first, second, third = list(files)
        server.add_faults(first, ("status", 503), ("status", 503))
        server.add_faults(second, ("drop",))
        server.add_faults(third, ("truncate", len(files[third]) // 2))
        summary = ingest_flow(config=clean_cfg, output_dir=str(tmp_path / "faulty"))
        assert len(server.requests_for(first)) == 1 + 3  # clean run, then two 503s and a success
        assert any(r and r.startswith("bytes=") for r in server.ranges_for(third))

    assert summary["failed"] == [] and summary["shards_written"] == 3
    clean, faulty = shard_bytes(tmp_path / "clean"), shard_bytes(tmp_path / "faulty")
    assert len(clean) == 3 and clean == faulty
    assert not (tmp_path / "faulty" / ".downloads").exists() or not any((tmp_path / "faulty" / ".downloads").iterdir())


def test_permanent_http_failure_is_reported_after_other_shards(services, tmp_path):
    demo = write_demo_data(tmp_path / "demo", n_files=2, articles_per_file=4)
    with FaultyHTTPServer(files={f"/w/{p.name}": p.read_bytes() for p in demo}) as server:
        urls = [server.url(f"/w/{p.name}") for p in demo] + [server.url("/w/missing.warc.gz")]
        with pytest.raises(StageFailed, match="missing.warc.gz"):
            ingest_flow(config=IngestConfig(inputs=urls, download=FAST_RETRIES), output_dir=str(tmp_path / "out"))
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["shards_written"] == 2
    assert [f["input"] for f in report["failed"]] == [urls[-1]]
    assert "404" in report["failed"][0]["error"]


def test_second_run_recomputes_nothing_and_missing_shard_is_rebuilt(services, tmp_path):
    demo = write_demo_data(tmp_path / "demo", n_files=3, articles_per_file=5)
    cfg = IngestConfig(inputs=[str(tmp_path / "demo")])
    out = str(tmp_path / "out")

    first = ingest_flow(config=cfg, output_dir=out, return_state=True)
    assert flow_task_states(first) == ["Completed"] * 3
    before = shard_bytes(tmp_path / "out")

    second = ingest_flow(config=cfg, output_dir=out, return_state=True)
    assert flow_task_states(second) == ["Cached"] * 3
    assert second.result()["cache_hits"] == 3
    assert shard_bytes(tmp_path / "out") == before

    (tmp_path / "out" / "demo-00001.parquet").unlink()
    third = ingest_flow(config=cfg, output_dir=out, return_state=True)
    assert flow_task_states(third) == ["Cached", "Cached", "Completed"]
    assert shard_bytes(tmp_path / "out") == before

    changed = cfg.model_copy(update={"min_text_chars": 500})
    fourth = ingest_flow(config=changed, output_dir=out, return_state=True)
    assert flow_task_states(fourth) == ["Completed"] * 3
    assert len(demo) == 3


def test_killed_run_then_rerun_gives_identical_shards(services, tmp_path):
    write_demo_data(tmp_path / "demo", n_files=8, articles_per_file=60)
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "PREFECT_API_URL": services, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cli.main", "ingest", "--input", str(tmp_path / "demo"),
           "--output", str(out), "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for leftover in psutil.process_iter(["cmdline"]):  # the killed run's own Ray processes (its own RAY_TMPDIR)
        if ray_tmp in " ".join(leftover.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                leftover.kill()
    written_before_kill = len(list(out.glob("*.parquet")))
    assert 1 <= written_before_kill < 8, "the run should be killed half way"

    cfg = IngestConfig(inputs=[str(tmp_path / "demo")])
    ingest_flow(config=cfg, output_dir=str(out), ray_config=RayConfig())
    ingest_flow(config=cfg, output_dir=str(tmp_path / "clean"))
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean")
    assert len(shard_bytes(out)) == 8


def test_a_file_that_is_not_a_warc_fails_clearly_and_others_finish(services, tmp_path):
    demo = write_demo_data(tmp_path / "in", n_files=1, articles_per_file=3)
    (tmp_path / "in" / "broken.warc.gz").write_bytes(b"%PDF-1.4 this is not a warc")
    with pytest.raises(StageFailed, match=r"broken\.warc\.gz.*not a WARC"):
        ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(tmp_path / "out"))
    assert (tmp_path / "out" / "demo-00000.parquet").is_file()
    assert not (tmp_path / "out" / "broken.parquet").exists()
    assert len(demo) == 1


def test_extract_command_writes_one_json_object_per_file(tmp_path):
    import gzip
    import json

    page = "<html><body><nav><a href='/'>Home</a></nav><article><h1>Title here</h1>" \
           "<p>" + "This is a long paragraph of real article text, with commas and a full stop. " * 5 + "</p>" \
           "</article><footer>Copyright 2024 Example</footer></body></html>"
    plain, packed = tmp_path / "a.html", tmp_path / "b.html.gz"
    plain.write_text(page)
    packed.write_bytes(gzip.compress(page.encode()))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["extract", "--output", str(out), str(plain), str(packed)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in records] == [str(plain), str(packed)]
    assert records[0]["text"] == records[1]["text"]
    assert "real article text" in records[0]["text"] and "Copyright" not in records[0]["text"]


def test_extract_command_rejects_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["extract", "--output", str(tmp_path / "o.jsonl"), str(tmp_path / "nope.html")])
    assert result.exit_code == 2 and "not found" in result.output


def test_crawl_id_resolves_through_warc_paths_and_max_files(services, tmp_path):
    import gzip

    demo = write_demo_data(tmp_path / "demo", n_files=3, articles_per_file=4)
    crawl = "CC-MAIN-2024-10"
    rel = [f"crawl-data/{crawl}/segments/1/warc/{p.name}" for p in demo]
    files = {f"/{r}": p.read_bytes() for r, p in zip(rel, demo)}
    files[f"/crawl-data/{crawl}/warc.paths.gz"] = gzip.compress("\n".join(rel).encode())
    with FaultyHTTPServer(files=files) as server:
        cfg = IngestConfig(inputs=[crawl], max_files=2, cc_base_url=server.base_url, download=FAST_RETRIES)
        summary = ingest_flow(config=cfg, output_dir=str(tmp_path / "out"))
        first_url = server.url("/" + rel[0])
    assert summary["files"] == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ["demo-00000.parquet", "demo-00001.parquet"]
    rows = pq.read_table(tmp_path / "out" / "demo-00000.parquet").to_pylist()
    assert {r["warc_path"] for r in rows} == {first_url}
    assert {r["crawl"] for r in rows} == {crawl}


def test_pretrain_run_local_recipe_writes_summary(services, tmp_path):
    import json

    from flows.pretrain import pretrain_flow
    from pretrain.config import load_recipe

    cfg = load_recipe("local", [f"output_dir={tmp_path / 'run'}", "ray.num_cpus=2", "until=dedup"])
    summary = pretrain_flow(config=cfg)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary, default=str))
    ingest = written["stages"]["ingest"]
    assert ingest["files"] == 3 and ingest["documents"] > 150
    assert ingest["dropped"]["not_html"] == 9 and ingest["dropped"]["http_status_not_200"] == 6
    filtered, deduped = written["stages"]["filter"], written["stages"]["dedup"]
    assert filtered["documents_in"] == ingest["documents"]
    assert filtered["dropped"]["gopher_too_few_stop_words"] >= 12  # keyword spam, 4 pages per file
    assert filtered["dropped"]["dup_line_frac"] >= 12  # one paragraph repeated, 4 pages per file
    assert deduped["documents_in"] == filtered["documents_kept"]
    assert deduped["dropped"]["exact_duplicate"] > 0 and deduped["dropped"]["fuzzy_duplicate"] > 0
    assert written["documents"]["dedup"] == deduped["documents_kept"] < filtered["documents_kept"]
    shards = sorted((tmp_path / "run" / "ingest").glob("*.parquet"))
    langs = {lang for s in shards for lang in pq.read_table(s).column("lang").to_pylist()}
    assert {"en", "fr", "de", "es"} <= langs
