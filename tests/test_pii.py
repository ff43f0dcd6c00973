"""PII masking (acceptance 5): planted e-mails and public IPs in real pages are masked, nothing else changes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_data
from prefect import flow
from typer.testing import CliRunner

from flows.pii import STAGE, pii_flow, run_in_pipeline
from flows.stage import Pipeline
from pretrain.config import PiiConfig, PipelineConfig, RayConfig
from tasks.extract import extract_text
from tasks.pii import find_pii, is_public, mask_pii

CLEAN_PAGES = ("04bfdf1d565e79af", "04ccdc724dbb2855", "04e86e6309d05828", "05c278c43f05938f")
PAGE_WITH_EMAIL = ("949a69a6bc22e28a", "presse@bsi.bund.de")  # a real address in a real page

# (text planted, the kind it is masked as, or None: it must stay); each planted between spaces,
# some with punctuation around them that must stay too
PLANTS = [
    ("jane.doe@example.org", "emails"), ("<Bob_Smith+news@Mail.Example.co.uk>,", "emails"),
    ("8.8.8.8", "ips"), ("(93.184.216.34).", "ips"), ("2606:4700:4700::1111", "ips"),
    ("[2001:4860:4860::8888]:443", "ips"), ("::ffff:1.1.1.1", "ips"),
    ("10.0.0.1", None), ("192.168.1.20", None), ("172.16.5.4", None), ("127.0.0.1", None), ("169.254.10.10", None),
    ("224.0.0.1", None), ("0.0.0.0", None), ("255.255.255.255", None), ("192.0.2.1", None), ("::1", None),
    ("fe80::1", None), ("fc00::1", None), ("ff02::1", None), ("2001:db8::8.8.8.8", None), ("::", None),
    ("1.2.3.4.5", None), ("v1.2.3.4", None), ("3.14.15.92.65", None), ("256.1.2.3", None), ("010.1.1.1", None),
    ("12:30:45", None), ("00:1a:2b:3c:4d:5e", None), ("std::vector", None), ("user@localhost", None),
    ("+44 20 7946 0958", None),  # phones are off by default
]
PLACEHOLDER = {"emails": "email@example.com", "ips": "0.0.0.0"}
INNER = {"<Bob_Smith+news@Mail.Example.co.uk>,": "Bob_Smith+news@Mail.Example.co.uk", "(93.184.216.34).": "93.184.216.34",
         "[2001:4860:4860::8888]:443": "2001:4860:4860::8888"}


def page_text(name: str) -> str:
    path = shared_data("extraction-dev", "html") / f"{name}.html.gz"
    return extract_text(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))


def planted(text: str, plants: list[tuple[str, str | None]]) -> tuple[str, str, dict]:
    """``text`` with the plants put after evenly spread spaces; the text expected once masked; the counts."""
    spaces = [i for i, char in enumerate(text) if char == " "]
    cuts = [spaces[(k + 1) * len(spaces) // (len(plants) + 1)] for k in range(len(plants))]
    pieces, expected, counts, position = [], [], {"emails": 0, "ips": 0, "phones": 0}, 0
    for cut, (token, kind) in zip(cuts, plants):
        pieces += [text[position:cut], f" {token}"]
        masked = token.replace(INNER.get(token, token), PLACEHOLDER[kind]) if kind else token
        expected += [text[position:cut], f" {masked}"]
        if kind:
            counts[kind] += 1
        position = cut
    return "".join(pieces + [text[position:]]), "".join(expected + [text[position:]]), counts


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    """Real pages' text with the plants (a share each), and the page with a real address of its own."""
    rows = []
    for index, name in enumerate(CLEAN_PAGES):
        original = page_text(name)
        assert find_pii(original, PiiConfig(phones=True)) == []  # no false hit on the page itself
        text, expected, counts = planted(original, PLANTS[index::len(CLEAN_PAGES)])
        rows.append({"id": name, "text": text, "expected": expected, "counts": counts})
    name, address = PAGE_WITH_EMAIL
    text = page_text(name)
    assert text.count(address) == 1
    rows.append({"id": name, "text": text, "expected": text.replace(address, "email@example.com"),
                 "counts": {"emails": 1, "ips": 0, "phones": 0}})
    rows.append({"id": "untouched", "text": page_text(CLEAN_PAGES[0]), "expected": page_text(CLEAN_PAGES[0]),
                 "counts": {"emails": 0, "ips": 0, "phones": 0}})
    return rows


def totals(rows: list[dict]) -> dict:
    return {kind: sum(row["counts"][kind] for row in rows) for kind in ("emails", "ips", "phones")}


def test_planted_addresses_are_masked_and_nothing_else_changes(documents):
    for row in documents:
        masked, counts = mask_pii(row["text"], PiiConfig())
        assert masked == row["expected"], row["id"]
        assert counts == row["counts"], row["id"]
    assert totals(documents) == {"emails": 3, "ips": 5, "phones": 0}


def test_every_planted_look_alike_is_kept_and_every_planted_address_found():
    for token, kind in PLANTS:
        spans = find_pii(f"see {token} here", PiiConfig())
        assert [span.kind for span in spans] == ([kind] if kind else []), token
    assert mask_pii("to a.b.c@d.org, and x..y@d.org", PiiConfig())[0] == "to email@example.com, and x..email@example.com"
    assert not is_public("2001:db8::1") and not is_public("ff02::1") and is_public("::ffff:8.8.8.8")


def test_kinds_can_be_turned_off_and_phones_on():
    text = "write to a@b.org from 8.8.8.8 or call +44 20 7946 0958 or (555) 123-4567; ISBN 978-3-16-148410-0"
    assert mask_pii(text, PiiConfig(emails=False, ips=False)) == (text, {"emails": 0, "ips": 0, "phones": 0})
    masked, counts = mask_pii(text, PiiConfig(phones=True, phone_placeholder="<PHONE>"))
    assert masked == ("write to email@example.com from 0.0.0.0 or call <PHONE> or <PHONE>; "
                      "ISBN 978-3-16-148410-0")
    assert counts == {"emails": 1, "ips": 1, "phones": 2}
    assert mask_pii("mail u@[8.8.8.8] now", PiiConfig()) == ("mail email@example.com now",
                                                             {"emails": 1, "ips": 0, "phones": 0})


def write_shards(folder: Path, documents: list[dict]) -> list[dict]:
    """Two shards of the documents with an extra column and a row without text; the rows as written."""
    folder.mkdir(parents=True)
    rows = [{"id": row["id"], "text": row["text"], "url": f"https://example.net/{row['id']}", "n": i}
            for i, row in enumerate(documents)] + [{"id": "null", "text": None, "url": None, "n": 99}]
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("url", pa.string()), ("n", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows[:3], schema=schema), folder / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:], schema=schema), folder / "part-00001.parquet")
    return rows


def test_flow_masks_every_shard_keeps_every_row_and_reports_counts(services, documents, tmp_path):
    rows = write_shards(tmp_path / "in", documents)
    out = tmp_path / "out"
    summary = pii_flow(config=PiiConfig(), input_dir=str(tmp_path / "in"), output_dir=str(out),
                       ray_config=RayConfig(num_cpus=2))
    changed = sum(any(row["counts"].values()) for row in documents)
    report = json.loads((out / "report.json").read_text())
    for counts in (summary, report):
        assert counts["masked"] == totals(documents) == {"emails": 3, "ips": 5, "phones": 0}
        assert (counts["documents_in"], counts["documents_changed"], counts["shards"]) == (7, changed, 2)
    assert changed == 5
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    written = [r for name in ("part-00000", "part-00001") for r in pq.read_table(out / f"{name}.parquet").to_pylist()]
    expected = {row["id"]: row["expected"] for row in documents}
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    for before, after in zip(rows, written):
        assert after == {**before, "text": expected.get(before["id"])}
    assert pq.read_schema(out / "part-00000.parquet") == pq.read_schema(tmp_path / "in" / "part-00000.parquet")
    assert json.loads((out / "info.json").read_text())["stage"] == "pii"

    again = pii_flow(config=PiiConfig(), input_dir=str(tmp_path / "in"), output_dir=str(out),
                     ray_config=RayConfig(num_cpus=2))
    assert again["cache_hits"] == 2 and again["masked"] == summary["masked"]
    no_ips = pii_flow(config=PiiConfig(ips=False), input_dir=str(tmp_path / "in"), output_dir=str(out),
                      ray_config=RayConfig(num_cpus=2))
    assert no_ips["cache_hits"] == 0 and no_ips["masked"] == {"emails": 3, "ips": 0, "phones": 0}


def test_a_disabled_stage_is_skipped_and_passes_filters_output_on(prefect_server, tmp_path):
    recipe = PipelineConfig(pii=PiiConfig(enabled=False))
    pipeline = Pipeline(recipe=recipe, root=tmp_path, folders={"pii": tmp_path / "pii"},
                        input_dir=tmp_path / "filter")

    @flow
    def run_it() -> dict:
        return run_in_pipeline(pipeline)

    result = run_it()
    assert result == {"skipped": "pii.enabled is false"}
    assert STAGE.next_input(pipeline, result) == tmp_path / "filter"
    assert STAGE.next_input(pipeline, {"masked": {}}) == tmp_path / "pii"


def test_command_masks_and_prints_counts_and_refuses_an_empty_folder(services, documents, tmp_path):
    import cli.pii  # noqa: F401  (registers the command; cli/main.py imports it in the app)
    from cli.common import app

    write_shards(tmp_path / "in", documents)
    result = CliRunner().invoke(app, ["pii", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                                      "--no-ips", "--num-cpus", "2"])
    assert result.exit_code == 0, result.output
    assert "PII in 3 of 7 documents" in result.output
    assert "emails: 3" in result.output and "ips: 0" in result.output and "phones: 0" in result.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["masked"]["ips"] == 0

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["pii", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "no Parquet shards" in result.output, result.output
    result = CliRunner().invoke(app, ["pii", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o3")])
    assert result.exit_code == 2 and "missing" in result.output, result.output
    assert not (tmp_path / "o2").exists()
