"""The bad-input catalogue: every case gets a clear error or a counted skip, and costs nothing else.

README "Bad input catalogue" lists the same cases and outcomes.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faultlib import part_files, rows_of
from typer.testing import CliRunner

from cli.main import app
from pretrain.config import ConfigError, DedupConfig, FilterConfig, IngestConfig, TokenizeConfig, load_recipe
from tasks.demo import write_demo_data
from tasks.warc import iter_html_pages
from tasks.warcwriter import http_response_block, record_id, response_record, warc_date, write_warc

pytestmark = pytest.mark.faults
WHEN = datetime(2024, 1, 1, tzinfo=timezone.utc)
ARTICLE = ("<html><body><article><p>" + "A plain sentence of article text, long enough to be kept. " * 6
           + "</p></article></body></html>").encode()


def liar(url: str, delta: int) -> bytes:
    """A response record whose Content-Length is off by ``delta`` bytes."""
    block = http_response_block(ARTICLE, "text/html")
    head = (f"WARC/1.1\r\nWARC-Type: response\r\nWARC-Date: {warc_date(WHEN)}\r\n"
            f"WARC-Record-ID: {record_id('liar', url)}\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(block) + delta}\r\n\r\n")
    return gzip.compress(head.encode() + block + b"\r\n\r\n", mtime=0)


def page(url: str, body: bytes = ARTICLE, content_type: str = "text/html") -> bytes:
    return response_record(url, body, content_type, WHEN)


def pages_of(data: bytes) -> tuple[list, Counter]:
    counts = Counter()
    return list(iter_html_pages(BytesIO(data), counts, max_html_bytes=5_000_000)), counts


@pytest.mark.parametrize("delta", [+500, +5, -5, -50])
def test_a_record_with_a_lying_content_length_is_skipped_and_its_neighbours_kept(delta, ledger):
    data = page("https://e.org/before") + liar("https://e.org/liar", delta) + page("https://e.org/after")
    for variant in (data, gzip.decompress(data)):  # gzipped, and plain WARC
        pages, counts = pages_of(variant)
        assert [p.url for p in pages] == ["https://e.org/before", "https://e.org/after"]
        assert counts["content_length_mismatch"] == 1 and counts["html_responses"] == 2
        ledger("a record's Content-Length lies (+500, +5, -5, -50 bytes; gzip and plain WARC)",
               "record skipped as content_length_mismatch, both neighbours kept", warcs=1, pages_kept=len(pages))


def catalogue_warcs(folder: Path) -> None:
    """One WARC per bad-input case (plus a good one)."""
    write_demo_data(folder, n_files=1, articles_per_file=4)  # demo-00000.warc.gz: the good file
    (folder / "empty.warc.gz").write_bytes(b"")
    (folder / "not-gzip.warc.gz").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3 this is a PDF, not a WARC\n")
    (folder / "gzip-of-garbage.warc.gz").write_bytes(gzip.compress(bytes(range(256)) * 400))
    write_warc(folder / "lying-length.warc.gz", [page("https://e.org/a"), liar("https://e.org/liar", 300),
                                                 page("https://e.org/b"), page("https://e.org/c")])
    klingon = ("<html><body><article><p>" + "Привет, это длинный русский текст о погоде и городе. " * 8
               + "</p></article></body></html>").encode("cp1251")
    write_warc(folder / "unknown-encoding.warc.gz", [
        page("https://ru.example/a", klingon, "text/html; charset=x-klingon-unknown")])
    huge = b"<html><body>" + b"<p>" + b"word " * (10 * 1024 * 1024) + b"</p></body></html>"  # 50 MB, one page
    write_warc(folder / "huge-page.warc.gz", [page("https://e.org/huge", huge), page("https://e.org/small")])


@pytest.mark.integration
def test_bad_warc_catalogue_counts_every_skip_and_fails_only_the_unreadable_file(services, tmp_path, ledger):
    from flows.ingest import ingest_flow
    from flows.runner import StageFailed

    catalogue_warcs(tmp_path / "in")
    with pytest.raises(StageFailed, match=r"1 of 7 input files failed: .*not-gzip\.warc\.gz \(BadWarcError: not a WARC"):
        ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    shards = {Path(s["input"]).name: s for s in report["shards"]}
    assert shards["empty.warc.gz"]["dropped"] == {"empty_file": 1} and shards["empty.warc.gz"]["documents"] == 0
    assert shards["gzip-of-garbage.warc.gz"]["dropped"] == {"corrupt_record": 1}
    lying = shards["lying-length.warc.gz"]
    assert lying["dropped"] == {"content_length_mismatch": 1} and lying["documents"] == 3  # counted once
    assert shards["huge-page.warc.gz"]["dropped"] == {"html_too_large": 1}
    assert shards["huge-page.warc.gz"]["documents"] == 1
    assert shards["unknown-encoding.warc.gz"]["documents"] == 1
    assert [Path(f["input"]).name for f in report["failed"]] == ["not-gzip.warc.gz"]

    out = tmp_path / "out"
    ru = pq.read_table(out / "unknown-encoding.parquet").to_pylist()[0]
    assert ru["lang"] == "ru" and "длинный русский текст" in ru["text"]
    assert {r["url"] for r in pq.read_table(out / "lying-length.parquet").to_pylist()} == {
        "https://e.org/a", "https://e.org/b", "https://e.org/c"}
    assert not (out / "not-gzip.parquet").exists() and part_files(out) == []
    documents = rows_of(out)
    assert len(documents) == report["documents"] == sum(s["documents"] for s in shards.values())
    assert len({r["id"] for r in documents}) == len(documents)
    for name, outcome in [("empty.warc.gz", "counted empty_file"),
                          ("gzip-of-garbage.warc.gz", "counted corrupt_record"),
                          ("lying-length.warc.gz", "liar skipped, its 3 neighbours kept"),
                          ("unknown-encoding.warc.gz", "charset detected, kept as lang ru"),
                          ("huge-page.warc.gz", "counted html_too_large, next page kept")]:
        ledger(f"ingest: {name}", outcome, documents=shards[name]["documents"],
               dropped=sum(shards[name]["dropped"].values()))
    ledger("ingest: not-gzip.warc.gz (a PDF), among 6 other files", "that file fails by name, the others finish",
           files=len(shards) + 1, files_failed=len(report["failed"]), documents_read_back=len(documents),
           ids_unique=len({r["id"] for r in documents}))


def write_table(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def bad_shards(tmp_path) -> Path:
    """A folder with one good document shard and three bad ones."""
    folder = tmp_path / "shards"
    good = {"id": [f"d{i}" for i in range(40)], "url": [f"https://e.org/{i}" for i in range(40)],
            "lang": ["en"] * 40, "text": [ARTICLE.decode()[30:-40] + f" Number {i}." for i in range(40)]}
    write_table(folder / "good.parquet", good)
    write_table(folder / "no-text-column.parquet", {"id": ["x"], "body": ["text under another name"]})
    write_table(folder / "text-is-int.parquet", {"id": ["y"], "text": pa.array([7], pa.int64())})
    (folder / "not-parquet.parquet").write_bytes(b"PAR1 this is not a parquet file at all")
    return folder


@pytest.mark.integration
def test_bad_parquet_shards_fail_by_name_in_filter_and_dedup_and_the_good_shard_is_written(services, bad_shards,
                                                                                           tmp_path, ledger):
    from flows.dedup import dedup_flow
    from flows.filter import filter_flow
    from flows.runner import StageFailed

    with pytest.raises(StageFailed, match="3 of 4 shards failed") as info:
        filter_flow(config=FilterConfig(), input_dir=str(bad_shards), output_dir=str(tmp_path / "f"))
    message = str(info.value)
    assert "no-text-column.parquet" in message and "'body'" in message
    assert "text-is-int.parquet" in message and "the `text` column must hold strings, it holds int64" in message
    assert "not-parquet.parquet" in message
    assert (tmp_path / "f" / "good.parquet").is_file() and part_files(tmp_path / "f") == []

    with pytest.raises(StageFailed, match="dedup-hash: 3 of 4 task") as info:
        dedup_flow(config=DedupConfig(hash_partitions=1), input_dir=str(bad_shards), output_dir=str(tmp_path / "d"))
    assert "no-text-column" in str(info.value) and "text-is-int" in str(info.value)
    assert not list((tmp_path / "d").glob("*.parquet"))  # dedup needs every shard: nothing half-done is written
    result = CliRunner().invoke(app, ["dedup", "--input", str(bad_shards), "--output", str(tmp_path / "d2"),
                                      "--partitions", "1"])
    assert result.exit_code == 1, result.output  # the failed phase is listed, like the other stages (was a traceback)
    assert "dedup-hash: 3 of 4 task" in result.output and "report: " not in result.output  # it writes none
    assert "Traceback" not in result.output
    shards = len(list(bad_shards.glob("*.parquet")))
    ledger("filter: 3 bad Parquet shards (no text, int text, not Parquet) + 1 good",
           "bad shards fail by name, the good one is written", shards=shards,
           shards_written=len(list((tmp_path / "f").glob("*.parquet"))), documents_kept=len(rows_of(tmp_path / "f")))
    ledger("dedup: the same 4 shards", "hash stage fails listing them, nothing written", shards=shards,
           shards_written=len(list((tmp_path / "d").glob("*.parquet"))))


@pytest.mark.integration
def test_bad_parquet_shards_fail_by_name_in_tokenize(services, bad_shards, tmp_path, ledger):
    from flows.runner import StageFailed
    from flows.tokenize import tokenize_flow

    with pytest.raises(StageFailed, match="3 of 4 input shards are unusable") as info:
        tokenize_flow(config=TokenizeConfig(vocab_size=300, train_max_documents=100),
                      input_dirs=[str(bad_shards)], output_dir=str(tmp_path / "t"))
    message = str(info.value)
    assert "no-text-column.parquet: a document shard needs column(s) ['text'], it has ['id', 'body']" in message
    assert "text-is-int.parquet: the `text` column must hold strings, it holds int64" in message
    assert "not-parquet.parquet: not a readable Parquet file" in message
    assert not (tmp_path / "t").exists()  # refused before anything was written
    ledger("tokenize: the same 4 shards", "refused up front listing the 3 unusable, nothing written",
           shards=len(list(bad_shards.glob("*.parquet"))), shards_named=message.count(".parquet: "))


@pytest.mark.parametrize("override,field", [
    ("ingest.max_files=abc", "ingest.max_files: Input should be a valid integer"),
    ("ingest.no_such_key=1", "ingest.no_such_key: Extra inputs are not permitted"),
    ("filter.gopher_quality.min_doc_words=[1, 2]", "filter.gopher_quality.min_doc_words: Input should be a valid integer"),
    ("dedup.threshold=2", "dedup.threshold: Input should be less than or equal to 1"),
])
def test_a_config_with_a_wrong_type_or_unknown_key_names_the_field(override, field, ledger):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
        load_recipe("local", [override])
    result = CliRunner().invoke(app, ["run", "--set", override])
    assert result.exit_code == 2 and field.split(":")[0] in result.output
    ledger("config: wrong type or unknown key (`--set`, load_recipe)", "ConfigError naming the field; CLI exits 2",
           overrides=1)


def test_a_recipe_file_with_an_unknown_key_fails_from_the_cli(tmp_path, ledger):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("base: local\ningest:\n  extractr: fast\n")
    result = CliRunner().invoke(app, ["ingest", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                                      "--config", str(recipe)])
    assert result.exit_code == 2 and "ingest.extractr" in result.output and "Extra inputs" in result.output
    ledger("config: recipe file with an unknown key", "CLI exits 2 naming ingest.extractr", recipes=1)


@pytest.mark.integration
def test_a_flow_parameter_of_the_wrong_type_fails_naming_it(services, tmp_path, ledger):
    from prefect.exceptions import ParameterTypeError

    from flows.ingest import ingest_flow

    with pytest.raises(ParameterTypeError, match="max_files"):
        ingest_flow(config={"inputs": ["x"], "max_files": "many"}, output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    ledger("config: flow parameter of the wrong type", "ParameterTypeError naming max_files, nothing written",
           flow_runs=1)


def test_catalogue_inputs_are_what_they_claim(tmp_path, ledger):
    """Guards the catalogue itself: the huge page really is 50 MB and the liar really lies."""
    catalogue_warcs(tmp_path)
    with gzip.open(tmp_path / "huge-page.warc.gz") as handle:
        size = len(handle.read())
        assert size > 50 * 1024 * 1024
    ledger("catalogue guard: the huge page", "over 50 MB uncompressed", huge_page_bytes=size)
    pages, counts = pages_of((tmp_path / "lying-length.warc.gz").read_bytes())
    assert counts["content_length_mismatch"] == 1 and [p.url for p in pages] == [
        "https://e.org/a", "https://e.org/b", "https://e.org/c"]
