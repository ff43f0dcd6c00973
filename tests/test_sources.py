"""resolve_inputs: crawl ids against a local server, local globs and folders, errors."""

from __future__ import annotations

import gzip
import os

import pytest
from httpserver import http_server  # noqa: F401

from pretrain.config import DownloadConfig, IngestConfig
from tasks.sources import InputFile, input_identity, resolve_inputs

CRAWL = "CC-MAIN-2024-10"
WARC_PATHS = [
    f"crawl-data/{CRAWL}/segments/1708474643.29/warc/CC-MAIN-20240220211055-20240221001055-{i:05d}.warc.gz"
    for i in range(7)
]
FAST = DownloadConfig(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=5)


def ingest_cfg(**values) -> IngestConfig:
    return IngestConfig(download=FAST, **values)


@pytest.fixture
def crawl_server(http_server):
    listing = gzip.compress(("\n".join(WARC_PATHS) + "\n").encode())
    http_server.add_file(f"/crawl-data/{CRAWL}/warc.paths.gz", listing)
    http_server.add_faults(f"/crawl-data/{CRAWL}/warc.paths.gz", ("status", 503))
    return http_server


def test_crawl_id_expands_listing(crawl_server):
    base = crawl_server.base_url
    files = resolve_inputs(ingest_cfg(inputs=[CRAWL], cc_base_url=base + "/"))
    assert [f.uri for f in files] == [f"{base}/{p}" for p in WARC_PATHS]
    assert {(f.kind, f.crawl) for f in files} == {("http", CRAWL)}
    assert files[0].shard_name == "CC-MAIN-20240220211055-20240221001055-00000"


def test_crawl_id_with_shard_selection_and_max_files(crawl_server):
    cfg = ingest_cfg(inputs=[CRAWL], cc_base_url=crawl_server.base_url, num_shards=3, shard_index=1, max_files=2)
    names = [f.shard_name[-5:] for f in resolve_inputs(cfg)]
    assert names == ["00001", "00004"]


def test_paths_listing_url_resolves_against_its_root(crawl_server):
    url = crawl_server.url(f"/crawl-data/{CRAWL}/warc.paths.gz")
    files = resolve_inputs(ingest_cfg(inputs=[url], cc_base_url="https://elsewhere.invalid"))
    assert files[0].uri == f"{crawl_server.base_url}/{WARC_PATHS[0]}"


def test_urls_are_single_files_and_deduplicated():
    url = f"https://data.commoncrawl.org/{WARC_PATHS[0]}"
    s3 = f"s3://commoncrawl/{WARC_PATHS[1]}"
    files = resolve_inputs(ingest_cfg(inputs=[url, s3, url]))
    assert files == [InputFile(url, "http", CRAWL), InputFile(s3, "s3", CRAWL)]
    assert input_identity(files[0]) == url


def test_unsupported_scheme_is_an_error():
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        resolve_inputs(ingest_cfg(inputs=["ftp://host/a.warc.gz"]))


@pytest.fixture
def warc_dir(tmp_path):
    folder = tmp_path / "warcs"
    folder.mkdir()
    for name in ["b.warc.gz", "a.warc.gz", "c.warc", "notes.txt"]:
        (folder / name).write_bytes(b"x")
    return folder


def test_local_directory_lists_warcs_sorted(warc_dir):
    files = resolve_inputs(ingest_cfg(inputs=[str(warc_dir)]))
    assert [os.path.basename(f.uri) for f in files] == ["a.warc.gz", "b.warc.gz", "c.warc"]
    assert [f.shard_name for f in files] == ["a", "b", "c"]
    assert all(f.kind == "local" and os.path.isabs(f.uri) and f.crawl is None for f in files)


def test_local_glob_sorted_deduplicated_and_sharded(warc_dir):
    cfg = ingest_cfg(inputs=[str(warc_dir / "*.warc.gz"), str(warc_dir / "a.warc.gz")], num_shards=2)
    assert [f.shard_name for f in resolve_inputs(cfg)] == ["a"]
    cfg = ingest_cfg(inputs=[str(warc_dir / "*.warc.gz"), str(warc_dir / "c.warc")], num_shards=2, shard_index=1)
    assert [f.shard_name for f in resolve_inputs(cfg)] == ["b"]


def test_crawl_is_read_from_local_path(tmp_path):
    folder = tmp_path / CRAWL
    folder.mkdir()
    (folder / "x.warc.gz").write_bytes(b"x")
    assert resolve_inputs(ingest_cfg(inputs=[str(folder)]))[0].crawl == CRAWL


def test_missing_glob_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-*.warc.gz")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        resolve_inputs(ingest_cfg(inputs=[pattern]))
    with pytest.raises(FileNotFoundError, match="holds no"):
        resolve_inputs(ingest_cfg(inputs=[str(tmp_path)]))


def test_empty_selection_is_an_error(warc_dir):
    with pytest.raises(ValueError, match="shard 3 of 4 keeps none"):
        resolve_inputs(ingest_cfg(inputs=[str(warc_dir)], num_shards=4, shard_index=3))
    with pytest.raises(ValueError, match="inputs is empty"):
        resolve_inputs(ingest_cfg(inputs=[]))


def test_local_identity_changes_with_content(warc_dir):
    f = resolve_inputs(ingest_cfg(inputs=[str(warc_dir / "a.warc.gz")]))[0]
    before = input_identity(f)
    (warc_dir / "a.warc.gz").write_bytes(b"longer content")
    assert input_identity(f) != before
    assert input_identity(f).startswith(f.uri + "|")
