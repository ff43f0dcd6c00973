"""Bounds on what one input may cost: a deeply nested page, a task whose worker keeps dying, a FIFO as
input, language codes that match nothing.

Memory is bounded by running the work in a subprocess under an address-space limit (RLIMIT_AS): without
the bound the subprocess fails with MemoryError instead of eating the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from conftest import REPO
from faultlib import RequestKiller, StageProcess, rows_of, slow
from httpserver import FaultyHTTPServer
from typer.testing import CliRunner

from cli.main import app
from pretrain.config import ConfigError, IngestConfig, validate_config
from tasks.warcwriter import response_record, write_warc

pytestmark = pytest.mark.faults
WHEN = datetime(2024, 1, 1, tzinfo=timezone.utc)
ADDRESS_SPACE_LIMIT = 1536 * 1024 * 1024  # 1.5 GiB: the unbounded extractor needed 1.56 GB at 20k levels


def article(i: int) -> bytes:
    return (f"<html><body><article><h1>Report number {i}</h1><p>"
            + f"This is report number {i}, a plain sentence of article text that is long enough to keep. " * 5
            + "</p></article></body></html>").encode()


# ------------------------------------------------------------------ deep pages, in the extractor

def deep_page(levels: int) -> bytes:
    """Unclosed <div>s, each with a word: what the unbounded extractor's memory grew with (10k: 405 MB)."""
    return ("<html><body>" + "<div>x " * levels + "</body></html>").encode()


# Run in a fresh interpreter under an address-space limit of BYTES_LIMIT bytes.
_EXTRACT_UNDER_LIMIT = """
import json, resource
resource.setrlimit(resource.RLIMIT_AS, (BYTES_LIMIT, BYTES_LIMIT))
from tasks.extract import HtmlTooDeep, extract_text
SHAPES = {
    "100k nested <div>": "<html><body>" + "<div>x " * 100_000 + "</div>" * 100_000 + "</body></html>",
    "10k unclosed <div>": "<html><body>" + "<div>x " * 10_000 + "</body></html>",
    "10k unclosed <table>": "<html><body>" + "<table>x " * 10_000 + "</body></html>",
}
outcomes = {}
for name, html in SHAPES.items():
    for mode in ("fast", "precise"):
        try:
            outcomes[f"{name}, {mode}"] = f"{len(extract_text(html, mode))} chars"
        except HtmlTooDeep:
            outcomes[f"{name}, {mode}"] = "html_too_deep"
        except MemoryError:
            outcomes[f"{name}, {mode}"] = "MemoryError"
# Linear work: with the limit lifted, the 100k-level page is extracted whole in the same memory.
whole = extract_text(SHAPES["100k nested <div>"], "fast", max_depth=10**6)
outcomes["100k nested <div>, fast, no depth limit"] = f"{len(whole)} chars"
outcomes["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps(outcomes))
"""


def run_limited(script: str, timeout_s: float = 300) -> dict:
    """Run ``script`` in a fresh interpreter (repo on the path); its last stdout line as JSON."""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_deep_pages_are_dropped_as_html_too_deep_in_bounded_memory(ledger):
    outcomes = run_limited(_EXTRACT_UNDER_LIMIT.replace("BYTES_LIMIT", str(ADDRESS_SPACE_LIMIT)))
    maxrss_mb = outcomes.pop("maxrss_mb")
    whole = outcomes.pop("100k nested <div>, fast, no depth limit")
    assert outcomes == {f"{shape}, {mode}": "html_too_deep" for shape in
                        ("100k nested <div>", "10k unclosed <div>", "10k unclosed <table>")
                        for mode in ("fast", "precise")}
    assert whole == f"{2 * 100_000 - 1} chars"  # every "x", one per line: nothing lost, nothing quadratic
    ledger("a 1.6 MB page of 100k nested <div>s; 10k unclosed <div> or <table> (fast and precise)",
           "counted html_too_deep (ingest.max_html_depth, 512) under a 1.5 GiB address-space limit",
           pages=len(outcomes), maxrss_mb=maxrss_mb)


def test_a_page_just_within_the_depth_limit_is_extracted():
    from tasks.extract import HtmlTooDeep, extract_text

    prose = "<p>" + "A plain sentence of article text, long enough to count as prose. " * 4 + "</p>"
    deep = "<html><body>" + "<div>" * 500 + prose + "</div>" * 500 + "</body></html>"  # html+body+500+p = 503
    assert "A plain sentence of article text" in extract_text(deep, "fast", max_depth=503)
    with pytest.raises(HtmlTooDeep, match="deeper than 502"):
        extract_text(deep, "fast", max_depth=502)
    with pytest.raises(HtmlTooDeep):
        extract_text(deep, "precise", max_depth=502)


def test_the_extract_command_writes_a_deep_page_as_dropped(tmp_path):
    (tmp_path / "deep.html").write_bytes(deep_page(2_000))  # in-process: small enough for the unbounded code
    (tmp_path / "good.html").write_bytes(article(1))
    result = CliRunner().invoke(app, ["extract", str(tmp_path / "deep.html"), str(tmp_path / "good.html"),
                                      "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    deep, good = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert deep == {"file": str(tmp_path / "deep.html"), "text": "", "dropped": "html_too_deep"}
    assert "report number 1" in good["text"] and "dropped" not in good


# ------------------------------------------------------------------ deep pages, in ingestion



@pytest.mark.integration
@pytest.mark.parametrize("extractor", ["fast", "precise"])
def test_a_deep_page_between_good_pages_costs_only_itself(services, tmp_path, extractor, ledger):
    from flows.ingest import ingest_flow

    records = [response_record(f"https://e.org/{i}", article(i), "text/html", WHEN) for i in range(3)]
    records.append(response_record("https://e.org/deep", deep_page(10_000), "text/html", WHEN))
    records += [response_record(f"https://e.org/{i}", article(i), "text/html", WHEN) for i in range(3, 6)]
    write_warc(tmp_path / "in" / "deep.warc.gz", records)
    summary = ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")], extractor=extractor),
                          output_dir=str(tmp_path / "out"))
    assert summary["html_responses"] == 7 and summary["documents"] == 6
    assert summary["dropped"] == {"html_too_deep": 1}
    assert sorted(row["url"] for row in rows_of(tmp_path / "out")) == [f"https://e.org/{i}" for i in range(6)]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dropped"] == {"html_too_deep": 1} and report["failed"] == []
    ledger(f"ingest ({extractor}): a page of 10k unclosed <div>s between 6 good pages",
           "the page counted html_too_deep, the 6 others kept", pages=7, documents=summary["documents"],
           dropped=1)


# ------------------------------------------------------------------ a worker that keeps dying

@slow  # 12 worker restarts and 2 Prefect retry delays: about 40 s
@pytest.mark.integration
def test_a_file_whose_worker_always_dies_fails_by_name_and_the_others_finish(services, tmp_path, ledger):
    from flows.ingest import ingest_flow
    from flows.runner import StageFailed

    inputs = tmp_path / "in"
    for name in ("a", "b"):
        write_warc(inputs / f"{name}.warc.gz", [response_record(f"https://{name}.org/{i}", article(i), "text/html",
                                                                WHEN) for i in range(3)])
    # Served over HTTP and held at every request: each attempt's worker is killed inside its fetch.
    doomed = write_warc(tmp_path / "remote" / "doomed.warc.gz", [response_record(f"https://d.org/{i}", article(i),
                                                                                 "text/html", WHEN) for i in range(3)])
    with FaultyHTTPServer(root=doomed.parent) as server:
        killer = RequestKiller(server.hold("/doomed.warc.gz", repeat=True), server.port)
        killer.start()
        try:
            with pytest.raises(StageFailed, match=r"1 of 3 input files failed: .*doomed\.warc\.gz"):
                ingest_flow(config=IngestConfig(inputs=[str(inputs), server.url("doomed.warc.gz")]),
                            output_dir=str(tmp_path / "out"))
        finally:
            killed = killer.stop()
        requests = server.requests_for("/doomed.warc.gz")
    assert len(requests) == len(killed) == len(set(killed))  # every attempt was killed in its fetch, each worker once
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [Path(f["input"]).name for f in report["failed"]] == ["doomed.warc.gz"]
    assert "WorkerCrashedError" in report["failed"][0]["error"]
    assert sorted(Path(s["input"]).name for s in report["shards"]) == ["a.warc.gz", "b.warc.gz"]
    assert report["documents"] == 6 and len(rows_of(tmp_path / "out")) == 6
    # Ray's 3 retries per Prefect attempt, 2 Prefect retries: 12 attempts at most, then the file fails.
    assert 4 <= len(killed) <= 12
    ledger("ingest: a file whose Ray worker is SIGKILLed on every attempt, among 2 good files",
           "that file reported failed in report.json after bounded retries, the others kept",
           files=3, worker_kills=len(killed), documents=report["documents"])


_OOM_HOG = """
import json, os, time
import psutil, ray
from tasks.ray_runtime import start_local_ray

start_local_ray(num_cpus=1, object_store_memory_mb=100)
attempts = {attempts!r}

@ray.remote(num_cpus=1, max_retries=3)  # the options of the stages' Ray tasks
def hog():
    with open(attempts, "a") as f:
        f.write("attempt\\n")
    chunks = []
    for _ in range({chunks}):  # grows 1 GiB past the memory monitor's threshold, 64 MiB at a time
        chunks.append(b"\\x01" * (64 << 20))  # written, so resident
        time.sleep(0.02)
    time.sleep(30)
    return "survived"

try:
    outcome = ray.get(hog.remote())
except ray.exceptions.OutOfMemoryError:
    outcome = "OutOfMemoryError"
print(json.dumps({{"outcome": outcome, "attempts": len(open(attempts).read().split())}}))
"""


def run_with_own_ray(script: str, env: dict, timeout_s: float) -> subprocess.CompletedProcess | None:
    """Run ``script`` with its own Ray instance (in a short temp dir); None if it ran past ``timeout_s``.

    Whatever happens, the process group and every process of that Ray instance are killed after.
    """
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # Ray's socket paths must fit in 107 bytes
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for other in psutil.process_iter(["cmdline"]):
            if ray_tmp in " ".join(other.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    other.kill()


def test_a_task_the_memory_monitor_kills_is_retried_a_bounded_number_of_times(tmp_path, ledger):
    from tasks.ray_runtime import MAX_OOM_RETRIES

    memory = psutil.virtual_memory()
    margin = 768 * 1024 * 1024  # the monitor's threshold sits this far above what the machine uses now
    threshold = (memory.total - memory.available + margin) / memory.total
    env = {"RAY_memory_usage_threshold": f"{threshold:.4f}", "RAY_min_memory_free_bytes": "-1",
           "RAY_memory_monitor_refresh_ms": "50", "RAY_task_oom_retry_delay_base_ms": "100"}
    os_env_retries = os.environ.pop("RAY_task_oom_retries", None)
    try:
        attempts = tmp_path / "attempts"
        done = run_with_own_ray(_OOM_HOG.format(attempts=str(attempts), chunks=(margin + (1 << 30)) >> 26), env,
                                timeout_s=120)
    finally:
        if os_env_retries is not None:
            os.environ["RAY_task_oom_retries"] = os_env_retries
    if done is None:
        pytest.fail(f"still retrying after 120 s and {len(attempts.read_text().split())} attempts: "
                    "OOM retries are unbounded")
    assert done.returncode == 0, done.stderr[-3000:]
    # Ray may print its own notices (the OOM advice) after the script's result line
    result = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith('{"outcome"')))
    assert result == {"outcome": "OutOfMemoryError", "attempts": MAX_OOM_RETRIES + 1}
    ledger("a Ray task killed by Ray's memory monitor on every attempt",
           f"fails with OutOfMemoryError after {MAX_OOM_RETRIES} retries (Ray's default: retried forever)",
           attempts=result["attempts"])


def test_out_of_memory_is_not_retried_again_by_prefect():
    import ray.exceptions

    from pretrain.errors import is_transient_error

    assert not is_transient_error(ray.exceptions.OutOfMemoryError("killed by the memory monitor"))


# ------------------------------------------------------------------ a FIFO as input

@pytest.mark.integration
def test_a_fifo_as_input_is_refused_by_name_without_hanging(services, tmp_path, ledger):
    fifo = tmp_path / "fifo.warc.gz"
    os.mkfifo(fifo)
    stage = StageProcess(["ingest", "--input", str(fifo), "--output", str(tmp_path / "out")], services,
                         COLUMNS="400")
    try:
        rc, out = stage.finish(timeout_s=120)
    except subprocess.TimeoutExpired:
        stage.kill9()
        pytest.fail("pretrain ingest on a FIFO was still running after 120 s")
    assert rc == 2, out[-3000:]
    assert f"error: input '{fifo}' is a named pipe (FIFO), not a regular file" in " ".join(out.split())
    assert "Traceback" not in out
    ledger("ingest --input fifo.warc.gz (a named pipe)", "exit 2: error names the path, nothing read", inputs=1)


def test_other_files_that_are_not_regular_are_refused(tmp_path):
    import socket

    from tasks.sources import resolve_inputs

    with pytest.raises(ValueError, match=r"input '/dev/null' is a character device, not a regular file"):
        resolve_inputs(IngestConfig(inputs=["/dev/null"]))
    sock_path = tmp_path / "s.warc.gz"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(ValueError, match=rf"input '{sock_path}' is a socket, not a regular file"):
            resolve_inputs(IngestConfig(inputs=[str(tmp_path / "*.warc.gz")]))
    os.mkfifo(tmp_path / "in.warc.gz")  # inside a folder too: never skipped silently
    sock_path.unlink()
    with pytest.raises(ValueError, match=r"in\.warc\.gz' is a named pipe \(FIFO\)"):
        resolve_inputs(IngestConfig(inputs=[str(tmp_path)]))


# ------------------------------------------------------------------ language codes

def test_language_codes_are_normalized():
    assert IngestConfig(languages="EN, fr ,De").languages == ["en", "fr", "de"]
    assert IngestConfig(languages=[" EN", "en", "zh"]).languages == ["en", "zh"]
    assert IngestConfig(languages=["yue"]).languages == ["yue"]  # py3langid's own codes beyond ISO 639-1


@pytest.mark.parametrize("value, bad", [("english,EN", "english"), ("en,xx", "xx"), (["fr", "fra"], "fra")])
def test_language_codes_that_are_not_iso_639_1_are_refused(value, bad, ledger):
    with pytest.raises(ConfigError, match=rf"ingest\.languages: '{bad}' is not an ISO 639-1 code"):
        validate_config(IngestConfig, {"languages": value}, prefix="ingest.")
    ledger("ingest.languages with a code that is not ISO 639-1 (english, xx, fra)",
           "ConfigError naming the field and the code", configs=1)


def test_an_iso_code_the_identifier_never_outputs_is_refused():
    with pytest.raises(ConfigError, match=r"ingest\.languages: 'ab' is an ISO 639-1 code that the language "
                                          r"identifier \(py3langid\) never outputs"):
        validate_config(IngestConfig, {"languages": ["en", "ab"]}, prefix="ingest.")


def test_the_known_codes_are_the_identifiers_own():
    from pretrain.languages import IDENTIFIED_CODES, ISO_639_1
    from tasks.langid import _identifier

    assert set(_identifier().nb_classes) == IDENTIFIED_CODES
    assert len(ISO_639_1) == 183 and all(len(code) == 2 and code.islower() for code in ISO_639_1)


def test_cli_languages_english_exits_2_naming_the_code(tmp_path, ledger):
    result = CliRunner().invoke(app, ["ingest", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                                      "--languages", "english,EN"])
    assert result.exit_code == 2
    assert "ingest.languages: 'english' is not an ISO 639-1 code" in " ".join(result.output.split())
    ledger("ingest --languages english,EN", "exit 2: 'english' is not an ISO 639-1 code (EN read as en)", runs=1)
