"""Security: nothing listens beyond loopback, paths stay under the data root, no secret reaches a log.

Runs on the session's real Prefect server and real Ray; the only fake is the
internet (a local HTTP server, which also plays S3 through ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from httpserver import FaultyHTTPServer

from pretrain.paths import PathPolicy, UnsafePathError, policy_from_env, redact_url
from tasks.demo import write_demo_data

pytestmark = pytest.mark.faults


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(ip, port, pid, process name) of every TCP socket in LISTEN and every bound UDP socket."""
    found = []
    for pid in sorted(pids):
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in connections:
            listening = conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr)  # 2: SOCK_DGRAM
            if listening and conn.laddr:
                found.append((conn.laddr.ip, conn.laddr.port, pid, name))
    return found


def ray_session_pids(ray) -> set[int]:
    """The driver, every process started for this Ray session (named by its session folder), their children."""
    session = ray._private.worker._global_node.get_session_dir_path()
    pids = {os.getpid()}
    for proc in psutil.process_iter(["cmdline"]):
        if session in " ".join(proc.info["cmdline"] or []):
            pids.add(proc.pid)
    for pid in list(pids):
        try:
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return pids


# ---------------------------------------------------------------- listening sockets


@pytest.mark.integration
def test_ray_listens_on_loopback_only(ray_session, ledger):
    ray = ray_session

    @ray.remote
    def worker_pid() -> int:
        return os.getpid()

    worker_pids = set(ray.get([worker_pid.remote() for _ in range(4)]))
    pids = ray_session_pids(ray)
    sockets = listening_sockets(pids)
    names = {name for _, _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check must see Ray's servers to mean anything
    assert worker_pids & {pid for _, _, pid, _ in sockets}, "a worker's gRPC server should be among them"
    exposed = [s for s in sockets if not is_loopback(s[0])]
    assert exposed == [], f"Ray sockets on non-loopback addresses: {exposed}"
    ledger("network exposure: Ray's listening sockets", "all on loopback", processes=len(pids), sockets=len(sockets))


@pytest.mark.integration
def test_prefect_server_listens_on_loopback_only(prefect_server, ledger):
    from urllib.parse import urlsplit

    from prefect.settings import get_current_settings

    port = urlsplit(prefect_server).port
    assert urlsplit(prefect_server).hostname == "127.0.0.1"
    pids = {p.pid for p in psutil.process_iter()}
    sockets = [s for s in listening_sockets(pids) if s[1] == port]
    assert sockets, f"nothing listens on the Prefect server's port {port}"
    assert all(is_loopback(ip) for ip, *_ in sockets), sockets
    assert get_current_settings().server.api.host == "127.0.0.1"  # what `prefect server start` binds by default
    ledger("network exposure: the Prefect server's port", "listens on loopback only", processes=len(pids),
           sockets=len(sockets))


# ---------------------------------------------------------------- path confinement (unit)


@pytest.fixture
def policy(tmp_path) -> PathPolicy:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    return PathPolicy(root=root)


def test_paths_under_the_root_are_accepted(policy, ledger):
    root = policy.root.resolve()
    assert policy.path("data/x.warc.gz", "f") == root / "data" / "x.warc.gz"
    assert policy.path(str(root / "data"), "f") == root / "data"
    assert policy.path("data/../data/y", "f") == root / "data" / "y"
    assert policy.location("data/*.warc.gz", "f") == str(root / "data" / "*.warc.gz")
    assert policy.location("file://data/a.warc", "f") == str(root / "data" / "a.warc")
    assert policy.location("s3://commoncrawl/crawl-data/x.warc.gz", "f") == "s3://commoncrawl/crawl-data/x.warc.gz"
    ledger("paths: under the data root (relative, absolute, .., glob, file://, s3://)", "accepted", paths=6)


@pytest.mark.parametrize("value,reason", [
    ("../outside", "outside the data root"),
    ("data/../../outside", "outside the data root"),
    ("/etc/passwd", "outside the data root"),
    ("~/.aws/credentials", "home-relative"),
    ("", "not a usable path"),
    ("data/\x00x", "not a usable path"),
])
def test_escaping_paths_are_rejected_naming_the_field(policy, value, reason, ledger):
    with pytest.raises(UnsafePathError, match=reason) as info:
        policy.path(value, "ingest.output_dir")
    assert str(info.value).startswith("ingest.output_dir: ")
    ledger("paths: escaping (../, /etc, ~/, empty, NUL byte)", "UnsafePathError naming the field", paths=1)


def test_a_symlink_out_of_the_root_is_rejected(policy, tmp_path, ledger):
    (tmp_path / "secret").mkdir()
    (policy.root / "data" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePathError, match="outside the data root"):
        policy.path("data/link/file", "input_dir")
    ledger("paths: a symlink out of the data root", "UnsafePathError", paths=1)


@pytest.mark.parametrize("value,reason", [
    ("data/*/../../../etc/*", "'..' is not allowed"),
    ("/etc/*.conf", "outside the data root"),
    ("file:///etc/passwd", "outside the data root"),
    ("ftp://example.org/x.warc.gz", "scheme 'ftp'"),
    ("gs://bucket/x.warc.gz", "scheme 'gs'"),
    ("memory://bucket/x", "scheme 'memory'"),
    ("https://user:hunter2@example.org/x.warc.gz", "carries credentials"),
    ("https:///x.warc.gz", "has no host"),
])
def test_bad_locations_are_rejected(policy, value, reason, ledger):
    with pytest.raises(UnsafePathError, match=reason) as info:
        policy.location(value, "ingest.inputs[0]")
    assert "hunter2" not in str(info.value)
    ledger("locations: glob with .., other schemes, credentials in the URL, no host",
           "UnsafePathError, no password in the message", locations=1)


def test_policy_comes_from_the_environment(tmp_path, ledger):
    env = {"PRETRAIN_DATA_ROOT": str(tmp_path), "PRETRAIN_URL_SCHEMES": "https, s3"}
    assert policy_from_env(env) == PathPolicy(root=tmp_path, url_schemes=("https", "s3"))
    assert policy_from_env({}).root == Path(os.getcwd())
    assert redact_url("https://u:p@host:8/x?y=1") == "https://***@host:8/x?y=1"
    assert redact_url("s3://bucket/key") == "s3://bucket/key"
    ledger("paths: policy from the environment; URL redaction", "root and schemes as set; credentials shown as ***",
           urls_redacted=2)


# ---------------------------------------------------------------- path confinement in the flows


@pytest.mark.integration
def test_flows_refuse_escaping_parameters_when_a_data_root_is_set(services, tmp_path, monkeypatch, ledger):
    from flows.dedup import dedup_flow
    from flows.filter import filter_flow
    from flows.ingest import ingest_flow
    from pretrain.config import DedupConfig, FilterConfig, IngestConfig

    root = tmp_path / "root"
    write_demo_data(root / "in", n_files=1, articles_per_file=2)
    monkeypatch.setenv("PRETRAIN_DATA_ROOT", str(root))
    cases = [
        (lambda: ingest_flow(config=IngestConfig(inputs=["in"]), output_dir="../escaped"), "output_dir: '../escaped'"),
        (lambda: ingest_flow(config=IngestConfig(inputs=["/etc/hostname"]), output_dir="out"), r"ingest.inputs\[0\]"),
        (lambda: ingest_flow(config=IngestConfig(inputs=["in"], cc_base_url="file:///etc"), output_dir="out"),
         "ingest.cc_base_url: URL scheme 'file'"),
        (lambda: filter_flow(config=FilterConfig.model_validate({"url": {"blocklist_paths": ["/etc/hosts"]}}),
                             input_dir="in", output_dir="f"), r"filter.url.blocklist_paths\[0\]"),
        (lambda: dedup_flow(config=DedupConfig(), input_dir=str(tmp_path), output_dir="d"), "input_dir: "),
    ]
    for run, field in cases:
        with pytest.raises(UnsafePathError, match=field):
            run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing written outside the root
    assert sorted(p.name for p in root.iterdir()) == ["in"]  # and nothing inside: refused before any write
    ledger("escaping paths: ingest, filter, dedup flows", "UnsafePathError naming the field, nothing written",
           paths_refused=len(cases))


@pytest.mark.integration
def test_a_deployment_run_is_confined_and_a_direct_call_is_not(services, tmp_path, monkeypatch, ledger):
    """The boundary: parameters arriving through a deployment are confined even with no root configured."""
    from prefect import get_client
    from prefect.flow_engine import run_flow

    from flows.ingest import ingest_flow
    from pretrain.config import IngestConfig

    monkeypatch.delenv("PRETRAIN_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # the worker's folder is the default root
    write_demo_data(tmp_path / "in", n_files=1, articles_per_file=2)
    outside = tempfile.mkdtemp(prefix="outside-")

    deployment_id = ingest_flow.to_deployment(name="security-test").apply()
    parameters = {"config": {"inputs": ["in"]}, "output_dir": outside}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    state = run_flow(ingest_flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert state.is_failed()
    with pytest.raises(UnsafePathError, match=f"output_dir: '{outside}' resolves to .* outside the data root"):
        state.result()
    assert os.listdir(outside) == []

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"config": {"inputs": ["in"]}, "output_dir": "out"})
    inside = run_flow(ingest_flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert inside.is_completed() and (tmp_path / "out" / "demo-00000.parquet").is_file()

    direct = ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=outside)  # the local user
    assert direct["documents"] > 0 and (Path(outside) / "demo-00000.parquet").is_file()
    ledger("deployment run with output_dir outside the worker's folder", "run fails with UnsafePathError, nothing "
           "written; inside it, and a direct call, succeed", flow_runs=3)


# ---------------------------------------------------------------- secrets


SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDFAKEKEY42",
    "AWS_SECRET_ACCESS_KEY": "planted/Fake+Secret/Key/0123456789abcdef",
    "AWS_SESSION_TOKEN": "PlantedFakeSessionToken9876543210",
}
URL_PASSWORD = "url-Pa55word-planted"


def _prefect_logs_since(start: datetime) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=start)), limit=200)
        offset = len(logs)
        while offset and offset % 200 == 0:
            more = client.read_logs(log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=start)),
                                    limit=200, offset=offset)
            logs += more
            offset = len(logs) if more else 0
        artifacts = []
        while page := client.read_artifacts(limit=200, offset=len(artifacts)):  # every page, not the first
            artifacts += page
    return [log.message for log in logs] + [json.dumps(a.data, default=str) for a in artifacts]


def _files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and not path.is_symlink()]


def _every_text_under(folder: Path) -> str:
    return "\n".join(path.read_bytes().decode("utf-8", "replace") for path in _files_under(folder))


@pytest.mark.integration
def test_planted_credentials_never_reach_logs_reports_or_documents(services, tmp_path, ledger):
    demo = write_demo_data(tmp_path / "demo", n_files=3, articles_per_file=3)
    files = {"/bucket/crawl/s3-file.warc.gz": demo[0].read_bytes(), "/private/http-file.warc.gz": demo[1].read_bytes()}
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    out = tmp_path / "out"
    start = datetime.now(timezone.utc)
    with FaultyHTTPServer(files=files) as server:
        userinfo = f"planted-user:{URL_PASSWORD}@"
        base = server.base_url.replace("http://", f"http://{userinfo}")
        inputs = ["s3://bucket/crawl/s3-file.warc.gz", "s3://bucket/crawl/missing.warc.gz",
                  f"{base}/private/http-file.warc.gz", f"{base}/private/missing.warc.gz"]
        env = {**os.environ, **SECRETS, "AWS_ENDPOINT_URL": server.base_url, "AWS_DEFAULT_REGION": "us-east-1",
               "PREFECT_API_URL": services, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp,
               "PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_LOGGING_TO_API_LEVEL": "DEBUG"}
        cmd = [sys.executable, "-m", "cli.main", "ingest", "--output", str(out), "--num-cpus", "1"]
        for entry in inputs:
            cmd += ["--input", entry]
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        authorized = [r for r in server.requests if "Authorization" in r.headers]

    assert proc.returncode == 1, proc.stderr[-3000:]  # the two missing files fail the run, by name
    assert any(r.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=" + SECRETS["AWS_ACCESS_KEY_ID"])
               for r in authorized), "the S3 requests should be signed with the planted key"
    assert any(r.headers["Authorization"].startswith("Basic ") for r in authorized), "HTTP basic auth from the URL"
    report = json.loads((out / "report.json").read_text())
    assert report["shards_written"] == 2 and len(report["failed"]) == 2
    failed = sorted(f["input"] for f in report["failed"])
    assert failed[0].startswith("http://***@127.0.0.1:") and failed[0].endswith("/private/missing.warc.gz")
    assert failed[1] == "s3://bucket/crawl/missing.warc.gz"
    rows = [row for shard in out.glob("*.parquet") for row in pq.read_table(shard).to_pylist()]
    assert len(rows) > 0 and all("***@" in r["warc_path"] or r["warc_path"].startswith("s3://") for r in rows)

    prefect_records = _prefect_logs_since(start)
    haystacks = {
        "stdout": proc.stdout, "stderr": proc.stderr, "output folder": _every_text_under(out),
        "Ray logs": _every_text_under(Path(ray_tmp)), "Prefect logs and artifacts": "\n".join(prefect_records),
    }
    assert "ingest" in haystacks["Prefect logs and artifacts"]  # the logs were captured at all
    for where, text in haystacks.items():
        for secret in [*SECRETS.values(), URL_PASSWORD]:
            assert secret not in text, f"{secret!r} found in {where}"
    ledger("secrets: planted AWS keys and a URL password; s3:// and http:// signed with them",
           "none in stdout, stderr, output files, Ray logs, Prefect logs and artifacts", secrets=len(SECRETS) + 1,
           signed_requests=len(authorized), files_scanned=len(_files_under(out)) + len(_files_under(Path(ray_tmp))),
           prefect_records_scanned=len(prefect_records),
           lines_scanned=sum(text.count("\n") + 1 for text in haystacks.values()))
