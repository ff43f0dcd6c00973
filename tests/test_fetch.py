"""fetch_to_file and friends against a real local HTTP server with scripted faults."""

from __future__ import annotations

import gzip
import os
import random

import pytest
from httpserver import FaultyHTTPServer, http_server  # noqa: F401

from pretrain.config import DownloadConfig
from tasks import fetch
from tasks.fetch import FetchError, backoff_delay, fetch_to_file, open_remote_lines, read_remote_bytes

PATH = "/crawl-data/CC-MAIN-2024-10/segments/1/warc/CC-MAIN-20240220211055-20240221001055-00000.warc.gz"
DATA = random.Random(0).randbytes(10_000)


def fast_cfg(**overrides) -> DownloadConfig:
    values = dict(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=5, chunk_bytes=1024)
    return DownloadConfig(**{**values, **overrides})


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record retry delays instead of waiting."""
    delays: list[float] = []
    monkeypatch.setattr(fetch, "_sleep", delays.append)
    return delays


def test_success_streams_file_and_reports_progress(http_server, tmp_path):
    url = http_server.add_file(PATH, DATA)
    progress = []
    dest = fetch_to_file(url, tmp_path / "a.warc.gz", fast_cfg(), on_progress=lambda d, t: progress.append((d, t)))
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "a.warc.gz.part").exists()
    assert progress[-1] == (len(DATA), len(DATA))
    assert len(progress) >= len(DATA) // 1024


def test_existing_dest_is_returned_without_request(http_server, tmp_path):
    url = http_server.add_file(PATH, DATA)
    dest = tmp_path / "a.warc.gz"
    dest.write_bytes(b"already here")
    assert fetch_to_file(url, dest, fast_cfg()) == dest
    assert dest.read_bytes() == b"already here"
    assert http_server.requests == []


def test_503_burst_then_success(http_server, tmp_path, sleeps):
    url = http_server.add_file(PATH, DATA)
    http_server.add_faults(PATH, ("status", 503), ("status", 503), ("status", 500))
    dest = fetch_to_file(url, tmp_path / "a.warc.gz", fast_cfg())
    assert dest.read_bytes() == DATA
    assert len(http_server.requests_for(PATH)) == 4
    assert len(sleeps) == 3


def test_429_retry_after_is_honoured(http_server, tmp_path, sleeps):
    url = http_server.add_file(PATH, DATA)
    http_server.add_faults(PATH, ("status", 429, 7), ("status", 503, 120))
    cfg = fast_cfg(backoff_base_s=0.001, backoff_max_s=30)
    assert fetch_to_file(url, tmp_path / "a.warc.gz", cfg).read_bytes() == DATA
    assert sleeps == [7.0, 30.0]  # the second is capped by backoff_max_s


def test_backoff_delay_doubles_caps_and_jitters():
    cfg = DownloadConfig(backoff_base_s=1, backoff_max_s=10, jitter_fraction=0.5)
    for attempt, base in [(0, 1), (1, 2), (2, 4), (3, 8), (4, 10), (9, 10)]:
        assert base <= backoff_delay(attempt, cfg) <= base * 1.5
    no_jitter = DownloadConfig(backoff_base_s=1, backoff_max_s=10, jitter_fraction=0)
    assert backoff_delay(2, no_jitter) == 4
    assert backoff_delay(0, cfg, retry_after=3) == 3
    assert backoff_delay(0, cfg, retry_after=300) == 10


def test_dropped_connection_is_retried(http_server, tmp_path, sleeps):
    url = http_server.add_file(PATH, DATA)
    http_server.add_faults(PATH, ("drop",), ("drop",))
    assert fetch_to_file(url, tmp_path / "a.warc.gz", fast_cfg()).read_bytes() == DATA
    assert len(http_server.requests_for(PATH)) == 3


def test_read_timeout_is_retried(http_server, tmp_path, sleeps):
    url = http_server.add_file(PATH, DATA)
    http_server.add_faults(PATH, ("slow", 1.0))
    assert fetch_to_file(url, tmp_path / "a.warc.gz", fast_cfg(timeout_s=0.2)).read_bytes() == DATA
    assert len(http_server.requests_for(PATH)) == 2


def test_truncated_body_resumes_with_range(http_server, tmp_path, sleeps):
    url = http_server.add_file(PATH, DATA)
    http_server.add_faults(PATH, ("truncate", 4096))
    dest = fetch_to_file(url, tmp_path / "a.warc.gz", fast_cfg())
    assert dest.read_bytes() == DATA
    assert http_server.ranges_for(PATH) == [None, "bytes=4096-"]


def test_server_without_range_support_restarts_from_zero(tmp_path, sleeps):
    with FaultyHTTPServer({PATH: DATA}, ranges=False) as server:
        server.add_faults(PATH, ("truncate", 4096), ("truncate", 8000))
        dest = fetch_to_file(server.url(PATH), tmp_path / "a.warc.gz", fast_cfg())
        assert dest.read_bytes() == DATA
        assert server.ranges_for(PATH) == [None, None, None]


def test_range_request_answered_with_200_restarts_from_zero(tmp_path, sleeps):
    """A server that advertises ranges but then ignores them must not corrupt the file."""
    with FaultyHTTPServer({PATH: DATA}, ranges=False, advertise_ranges=True) as server:
        server.add_faults(PATH, ("truncate", 4096))
        dest = fetch_to_file(server.url(PATH), tmp_path / "a.warc.gz", fast_cfg())
        assert dest.read_bytes() == DATA
        first, second = server.ranges_for(PATH)
        assert first is None and second.startswith("bytes=")


def test_retries_exhausted_raise_fetch_error_and_leave_no_file(http_server, tmp_path, sleeps):
    url = http_server.add_file(PATH, DATA)
    http_server.add_faults(PATH, *[("truncate", 100)] + [("status", 503)] * 3)
    dest = tmp_path / "a.warc.gz"
    with pytest.raises(FetchError) as info:
        fetch_to_file(url, dest, fast_cfg(max_attempts=4))
    assert str(info.value) == f"GET {url} failed after 4 attempts: HTTP 503"
    assert len(http_server.requests_for(PATH)) == 4
    assert sorted(os.listdir(tmp_path)) == []


def test_404_fails_at_once(http_server, tmp_path, sleeps):
    url = http_server.url("/missing.warc.gz")
    with pytest.raises(FetchError, match=r"GET http://.*/missing\.warc\.gz failed after 1 attempts: HTTP 404"):
        fetch_to_file(url, tmp_path / "m.warc.gz", fast_cfg())
    assert len(http_server.requests_for("/missing.warc.gz")) == 1
    assert sleeps == []
    assert os.listdir(tmp_path) == []


def test_connection_refused_is_transient_then_fails(tmp_path, sleeps):
    with FaultyHTTPServer() as server:
        url = server.url("/gone.warc.gz")
    with pytest.raises(FetchError, match=r"failed after 2 attempts: ConnectionError"):
        fetch_to_file(url, tmp_path / "g.warc.gz", fast_cfg(max_attempts=2))
    assert len(sleeps) == 1


def test_local_path_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="local path"):
        fetch_to_file(str(tmp_path / "x.warc.gz"), tmp_path / "y.warc.gz", fast_cfg())


def test_open_remote_lines_gzip_and_plain(http_server, sleeps):
    text = "crawl-data/a.warc.gz\n\ncrawl-data/b.warc.gz\n"
    gz_url = http_server.add_file("/warc.paths.gz", gzip.compress(text.encode()))
    plain_url = http_server.add_file("/warc.paths", text.encode())
    http_server.add_faults("/warc.paths.gz", ("status", 503), ("truncate", 10))
    expected = ["crawl-data/a.warc.gz", "crawl-data/b.warc.gz"]
    assert open_remote_lines(gz_url, fast_cfg()) == expected
    assert open_remote_lines(plain_url, fast_cfg()) == expected
    assert len(http_server.requests_for("/warc.paths.gz")) == 3


def test_read_remote_bytes_reads_local_files_too(tmp_path):
    (tmp_path / "f.bin").write_bytes(DATA)
    assert read_remote_bytes(str(tmp_path / "f.bin"), fast_cfg()) == DATA


def test_fsspec_path_retries_and_renames(tmp_path, sleeps, monkeypatch):
    """The fsspec branch (s3:// in production) shares the retry loop and the .part scheme."""
    import fsspec

    memfs = fsspec.filesystem("memory")
    memfs.pipe("/bucket/a.warc.gz", DATA)
    real_open = fsspec.open
    failures = iter([OSError("SlowDown: reduce your request rate")])

    def flaky_open(url, mode="rb", **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_open(url, mode, **kwargs)

    monkeypatch.setattr(fetch.fsspec, "open", flaky_open)
    dest = fetch_to_file("memory://bucket/a.warc.gz", tmp_path / "a.warc.gz", fast_cfg())
    assert dest.read_bytes() == DATA
    assert len(sleeps) == 1
    with pytest.raises(FetchError, match="failed after 1 attempts: FileNotFoundError"):
        fetch_to_file("memory://bucket/missing.warc.gz", tmp_path / "m.warc.gz", fast_cfg())


def test_s3_is_anonymous_only_without_credentials(monkeypatch, tmp_path):
    for name in fetch._CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fetch._storage_options("s3://commoncrawl/x") == {"anon": True}
    monkeypatch.setenv("AWS_PROFILE", "work")
    assert fetch._storage_options("s3://commoncrawl/x") == {}
    assert fetch._storage_options("gs://bucket/x") == {}


class _BreaksAfter:
    """A source file that raises a connection error once ``limit`` bytes were read."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.size = inner, limit, inner.size
        self.seeks: list[int] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.inner.close()

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int) -> None:
        self.seeks.append(offset)
        self.inner.seek(offset)

    def read(self, n: int) -> bytes:
        if self.limit < self.size and self.inner.tell() >= self.limit:
            raise ConnectionResetError("connection reset by peer")
        return self.inner.read(min(n, self.limit - self.inner.tell()))


def test_fsspec_path_resumes_by_seeking(tmp_path, sleeps, monkeypatch):
    import fsspec

    fsspec.filesystem("memory").pipe("/bucket/b.warc.gz", DATA)
    opened: list[_BreaksAfter] = []

    def breaking_open(url, mode="rb", **kwargs):
        limit = 3000 if not opened else len(DATA)
        opened.append(_BreaksAfter(fsspec.filesystem("memory").open(url.removeprefix("memory://"), mode), limit))
        return opened[-1]

    monkeypatch.setattr(fetch.fsspec, "open", breaking_open)
    dest = fetch_to_file("memory://bucket/b.warc.gz", tmp_path / "b.warc.gz", fast_cfg())
    assert dest.read_bytes() == DATA
    assert [f.seeks for f in opened] == [[], [3000]]
