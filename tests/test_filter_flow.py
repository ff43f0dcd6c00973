"""Integration: the heuristic filter flow on real Common Crawl records and the demo sample."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from conftest import shared_data
from typer.testing import CliRunner

from flows.filter import filter_flow
from cli.main import app
from pretrain.config import FilterConfig, IngestConfig
from tasks.demo import write_demo_data
from tasks.ingest import ingest_warc

pytestmark = pytest.mark.integration


def ingest_to(folder: Path, warcs: list[Path]) -> Path:
    for warc in warcs:
        name = warc.name.removesuffix(".warc.gz")
        ingest_warc(warc, folder / f"{name}.parquet", IngestConfig(), warc_path=str(warc), crawl=None)
    return folder


def urls(path: Path) -> set[str]:
    return set(pq.read_table(path, columns=["url"]).column("url").to_pylist())


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter-input")
    cc = sorted(shared_data("cc").glob("*.warc.gz"))
    demo = write_demo_data(root / "demo-warc", n_files=2, articles_per_file=20)
    return ingest_to(root / "ingested", cc + demo)


def test_filter_chain_drops_spam_and_boilerplate_and_keeps_articles(services, ingested, tmp_path):
    out = tmp_path / "filtered"
    result = CliRunner().invoke(app, ["filter", "--input", str(ingested), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["documents_in"] == report["documents_kept"] + sum(report["dropped"].values())
    assert report["failed"] == [] and report["shards_written"] == 5

    demo_in = urls(ingested / "demo-00000.parquet") | urls(ingested / "demo-00001.parquet")
    demo_kept = urls(out / "demo-00000.parquet") | urls(out / "demo-00001.parquet")
    articles = {u for u in demo_in if "-journal.example/" in u}
    junk = {u for u in demo_in if "//spam-" in u or "//farm-" in u or "//portal-" in u}
    assert len(articles) == 40 and junk
    assert len(articles & demo_kept) / len(articles) >= 0.9  # real articles survive
    assert not (junk & demo_kept), sorted(junk & demo_kept)  # spam, repetition, link lists do not

    cc_kept = urls(out / "CC-MAIN-2020-34-sample.parquet")
    for spam in ("http://044545.com/topic/20200207/015849.html",  # casino "plan" spam, repeated lines
                 "http://06.live-radsport.ch/tippspiel/stats_140_petzi.html",  # visitor counters
                 "http://0615235.com/02mjqjo%7Bibotij2.btq?odmbtt=106&tdmbtt=121"):  # product code list
        assert spam not in cc_kept
    assert "http://0900-hovenier.nl/gelderland/oosterbeek/" in cc_kept  # a real prose page (Dutch)

    assert len(report["dropped"]) >= 3  # several distinct reasons, each counted
    assert all(entry["in"] >= entry["kept"] for entry in report["filters"].values())
    removed = list((out / "removed").glob("*/*.parquet"))
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in removed) == sum(report["dropped"].values())
    sample = pq.read_table(removed[0]).to_pylist()[0]
    assert sample["reason"] in report["dropped"]


def test_filter_rerun_is_cached_and_config_change_reruns(services, ingested, tmp_path):
    out = str(tmp_path / "f")
    first = filter_flow(config=FilterConfig(), input_dir=str(ingested), output_dir=out)
    second = filter_flow(config=FilterConfig(), input_dir=str(ingested), output_dir=out)
    assert first["cache_hits"] == 0 and second["cache_hits"] == 5
    loose = FilterConfig(order=["url"])
    third = filter_flow(config=loose, input_dir=str(ingested), output_dir=out)
    assert third["cache_hits"] == 0
    assert third["documents_kept"] > first["documents_kept"]
    assert not list((tmp_path / "f" / "removed").glob("gopher_quality/*.parquet"))  # stale audit files removed


def test_an_edited_list_file_reruns_the_filter(services, ingested, tmp_path):
    """A given blocklist is part of what a shard depends on: editing the file reruns every shard
    (its path alone would serve the old verdicts from cache)."""
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("nothing-matches.invalid\n")
    config = FilterConfig.model_validate({"order": ["url"], "url": {"blocklist_paths": [str(blocklist)]}})
    out = str(tmp_path / "f")
    first = filter_flow(config=config, input_dir=str(ingested), output_dir=out)
    again = filter_flow(config=config, input_dir=str(ingested), output_dir=out)
    assert again["cache_hits"] == 5 and again["documents_kept"] == first["documents_kept"]
    urls = [url for shard in sorted(Path(ingested).glob("*.parquet"))
            for url in pq.read_table(shard, columns=["url"]).column("url").to_pylist()]
    domains = sorted({urlsplit(url).hostname for url in urls})
    blocklist.write_text(f"{domains[0]}\n")
    edited = filter_flow(config=config, input_dir=str(ingested), output_dir=out)
    assert edited["cache_hits"] == 0
    assert edited["dropped"].get("url_blocked_domain", 0) > 0
    assert edited["documents_kept"] < first["documents_kept"]
