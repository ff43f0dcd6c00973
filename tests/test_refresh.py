"""cc-refresh: the newest crawl's new files are appended, nothing is done twice.

A local HTTP server plays Common Crawl (collinfo.json, warc.paths.gz, WARC files
from the demo generator); the flows run on the session's Prefect server and Ray.
"""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from httpserver import FaultyHTTPServer, http_server  # noqa: F401
from typer.testing import CliRunner

from flows.refresh import cc_refresh_flow
from cli.main import app
from pretrain.config import DownloadConfig, IngestConfig, RefreshConfig
from tasks.demo import write_demo_data
from tasks.refresh import LOCK_NAME, Layout, Ledger, LedgerConflict, RefreshLocked, plan_refresh, refresh_lock
from tasks.sources import InputFile, list_crawls

FAST = DownloadConfig(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=10)
OLD, NEW = "CC-MAIN-2026-05", "CC-MAIN-2026-09"


class FakeCommonCrawl:
    """collinfo.json, warc.paths.gz and WARC files on a local server, crawls added one by one."""

    def __init__(self, server: FaultyHTTPServer, warcs: list[Path]):
        self.server = server
        self.warcs = list(warcs)  # demo WARC files still to hand out
        self.crawls: list[str] = []
        self.paths: dict[str, list[str]] = {}
        self._publish_index()

    def _publish_index(self) -> None:
        index = [{"id": crawl, "name": f"{crawl} Index", "cdx-api": self.server.url(f"/{crawl}-index")}
                 for crawl in self.crawls]
        index.append({"id": "CC-MAIN-2012", "name": "an ARC crawl, no week"})
        self.server.add_file("/collinfo.json", json.dumps(index).encode())

    def add_crawl(self, crawl: str, n_files: int) -> list[str]:
        paths = [f"crawl-data/{crawl}/segments/1770000000.{i}/warc/{crawl}-2026-{i:05d}.warc.gz" for i in range(n_files)]
        for path in paths:
            self.server.add_file(path, self.warcs.pop(0).read_bytes())
        self.server.add_file(f"crawl-data/{crawl}/warc.paths.gz", gzip.compress("\n".join(paths).encode()))
        self.crawls.append(crawl)
        self.paths[crawl] = paths
        self._publish_index()
        return paths

    def warc_requests(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for request in self.server.requests:
            if request.path.endswith(".warc.gz"):
                counts[request.path.lstrip("/")] = counts.get(request.path.lstrip("/"), 0) + 1
        return counts


@pytest.fixture
def fake_cc(http_server, tmp_path):
    warcs = write_demo_data(tmp_path / "warcs", n_files=6, articles_per_file=6)
    return FakeCommonCrawl(http_server, warcs)


def refresh_config(fake: FakeCommonCrawl, dataset: Path, **values) -> RefreshConfig:
    return RefreshConfig(index_url=fake.server.url("/collinfo.json"), dataset_dir=str(dataset),
                         ingest=IngestConfig(cc_base_url=fake.server.base_url, download=FAST), **values)


def parquet_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def rows_in(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))


# ---- unit: no Prefect ---------------------------------------------------------------------


def test_newest_crawl_comes_from_the_ids_not_the_order(http_server):
    index = [{"id": "CC-MAIN-2024-10"}, {"id": "CC-MAIN-2024-33"}, {"id": "CC-MAIN-2012"}, {"id": "CC-MAIN-2023-50"}]
    url = http_server.add_file("/collinfo.json", json.dumps(index).encode())
    http_server.add_faults("/collinfo.json", ("status", 503))
    assert list_crawls(url, FAST) == ["CC-MAIN-2024-33", "CC-MAIN-2024-10", "CC-MAIN-2023-50"]


@pytest.mark.parametrize("body, message", [
    (b"<html>maintenance</html>", "not JSON"),
    (b'{"id": "CC-MAIN-2024-10"}', "expected a JSON list"),
    (b'[{"id": "CC-MAIN-2012"}]', "no crawl id of the form CC-MAIN-YYYY-WW among 1 entries"),
])
def test_bad_crawl_index_names_the_url(http_server, body, message):
    url = http_server.add_file("/collinfo.json", body)
    with pytest.raises(ValueError, match=message) as error:
        list_crawls(url, FAST)
    assert url in str(error.value)


def test_config_rejects_file_selection_inside_ingest():
    with pytest.raises(ValueError, match=r"ingest.inputs, ingest.max_files must be left unset"):
        RefreshConfig(ingest={"inputs": ["CC-MAIN-2024-10"], "max_files": 3})
    with pytest.raises(ValueError, match="crawl"):
        RefreshConfig(crawl="2024-10")
    assert RefreshConfig(ingest={"languages": "en,fr"}).ingest.languages == ["en", "fr"]


def test_plan_skips_recorded_files_and_defers_past_the_limit(tmp_path):
    layout = Layout(tmp_path)
    listing = [InputFile(f"http://h/crawl-data/{OLD}/w/f{i}.warc.gz", "http", OLD) for i in range(5)]
    Ledger(layout).record(OLD, "f1", {"path": f"crawl-data/{OLD}/w/f1.warc.gz"})
    plan = plan_refresh(OLD, listing, Ledger(layout), max_files=2)
    assert [f.shard_name for f in plan.new] == ["f0", "f2"]
    assert [f.shard_name for f in plan.done] == ["f1"]
    assert [f.shard_name for f in plan.deferred] == ["f3", "f4"]
    clash = listing + [InputFile(f"http://h/crawl-data/{OLD}/other/f0.warc.gz", "http", OLD)]
    with pytest.raises(LedgerConflict, match="same shard name 'f0'"):
        plan_refresh(OLD, clash, Ledger(layout), None)


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    with refresh_lock(tmp_path, "first-run"):
        with pytest.raises(RefreshLocked, match="locked by cc-refresh run first-run, pid"):
            with refresh_lock(tmp_path, "second-run"):
                pass
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released, and nobody named
    with refresh_lock(tmp_path, "third-run"):  # free again
        assert "third-run" in (tmp_path / LOCK_NAME).read_text()


# ---- integration: Prefect + Ray -------------------------------------------------------------


@pytest.mark.integration
def test_refresh_appends_only_new_files_of_the_newest_crawl(services, fake_cc, tmp_path):
    dataset = tmp_path / "dataset"
    layout = Layout(dataset)
    old_paths = fake_cc.add_crawl(OLD, 3)
    config = refresh_config(fake_cc, dataset, max_files_per_run=2)

    first = cc_refresh_flow(config=config)
    assert (first["crawl"], first["files_listed"], first["files_new"], first["files_skipped"],
            first["files_deferred"]) == (OLD, 3, 2, 0, 1)
    assert fake_cc.warc_requests() == {old_paths[0]: 1, old_paths[1]: 1}
    assert 0 < first["documents_kept"] < first["documents_ingested"]
    assert rows_in(layout.filtered(OLD)) == first["documents_kept"]
    assert rows_in(layout.ingested(OLD)) == first["documents_ingested"]

    before = parquet_bytes(dataset)
    second = cc_refresh_flow(config=config)
    assert (second["files_new"], second["files_skipped"], second["files_deferred"]) == (1, 2, 0)
    assert fake_cc.warc_requests() == {path: 1 for path in old_paths}
    after = parquet_bytes(dataset)
    assert {k: after[k] for k in before} == before
    assert len(after) > len(before)

    recipe = tmp_path / "recipe.yaml"  # the same run from the command line: nothing left to do
    recipe.write_text(yaml.safe_dump({"ingest": {"cc_base_url": fake_cc.server.base_url}}))
    result = CliRunner().invoke(app, ["refresh", "--dataset", str(dataset), "--config", str(recipe),
                                      "--index-url", config.index_url, "--max-files", "2"])
    assert result.exit_code == 0, result.output
    assert f"{OLD}: 0 new file(s), 3 already in the dataset, 0 left for later" in " ".join(result.output.split())
    assert fake_cc.warc_requests() == {path: 1 for path in old_paths}  # nothing downloaded

    before = parquet_bytes(dataset)
    new_paths = fake_cc.add_crawl(NEW, 2)
    third = cc_refresh_flow(config=config)
    assert (third["crawl"], third["files_listed"], third["files_new"], third["files_skipped"]) == (NEW, 2, 2, 0)
    assert fake_cc.warc_requests() == {path: 1 for path in old_paths + new_paths}
    after = parquet_bytes(dataset)
    assert {k: after[k] for k in before} == before
    added = set(after) - set(before)
    assert {k for k in added if not k.startswith("removed/")} == {
        f"{stage}/{NEW}/{NEW}-2026-{i:05d}.parquet" for stage in ("filtered", "ingest") for i in range(2)}
    assert all(k.startswith(f"removed/{NEW}/") for k in added if k.startswith("removed/"))
    assert rows_in(layout.filtered(NEW)) == third["documents_kept"] > 0

    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["files"] == 5 and set(manifest["crawls"]) == {OLD, NEW}
    assert manifest["documents_kept"] == first["documents_kept"] + second["documents_kept"] + third["documents_kept"]
    assert manifest["crawls"][NEW]["documents_ingested"] == third["documents_ingested"]
    assert len(list((dataset / "runs").glob("*/report.json"))) == 4
    assert not (dataset / ".work").exists() or not any((dataset / ".work").iterdir())


@pytest.mark.integration
def test_a_run_that_finds_the_dataset_locked_does_nothing(services, fake_cc, tmp_path):
    dataset = tmp_path / "dataset"
    fake_cc.add_crawl(OLD, 1)
    config = refresh_config(fake_cc, dataset)
    with refresh_lock(dataset, "a-running-refresh"):
        with pytest.raises(RefreshLocked, match="a-running-refresh"):
            cc_refresh_flow(config=config)
    assert fake_cc.server.requests == [] and not (dataset / "ledger").exists()


@pytest.mark.integration
def test_overlapping_runs_fetch_and_write_each_file_once(services, fake_cc, tmp_path):
    dataset = tmp_path / "dataset"
    paths = fake_cc.add_crawl(OLD, 3)
    config = refresh_config(fake_cc, dataset, max_files_per_run=None)
    start = threading.Barrier(2)
    outcomes: list = [None, None]

    def run(slot: int) -> None:
        start.wait()
        try:
            outcomes[slot] = cc_refresh_flow(config=config)
        except RefreshLocked as error:
            outcomes[slot] = error

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    summaries = [o for o in outcomes if isinstance(o, dict)]
    assert summaries, outcomes
    assert all(isinstance(o, (dict, RefreshLocked)) for o in outcomes), outcomes
    assert sum(s["files_new"] for s in summaries) == 3
    assert fake_cc.warc_requests() == {path: 1 for path in paths}
    assert len(Ledger(Layout(dataset)).entries()) == 3
    assert len(list(Layout(dataset).filtered(OLD).glob("*.parquet"))) == 3


@pytest.mark.integration
def test_the_cli_names_an_unreachable_index_and_exits_2(services, fake_cc, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"ingest": {"download": FAST.model_dump()}}))
    missing = f"{fake_cc.server.base_url}/no-such-collinfo.json"  # the server answers 404
    result = CliRunner().invoke(app, ["refresh", "--dataset", str(tmp_path / "dataset"), "--config", str(recipe),
                                      "--index-url", missing])
    assert result.exit_code == 2, result.output
    assert "no-such-collinfo.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "dataset" / "ledger").exists()
