"""The generic readers (JSON lines, Parquet, Hugging Face datasets on disk) and content detection of their files."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pretrain.config import IngestConfig
from tasks.readers import WHOLE, generic
from tasks.readers.detect import detect_kind

ROWS = [{"id": "a1", "text": "First document text.", "url": "https://example.org/1", "source": "books"},
        {"id": "a2", "text": "Second document text.", "body": "the body field"},
        {"id": "a3", "text": "   "},
        {"id": "a4", "title": "no text here"},
        {"id": "a5", "text": 42}]
KEPT = {"a1": "First document text.", "a2": "Second document text."}
DROPS = Counter(records_read=5, empty_text=1, missing_text_field=1, text_not_string=1)


def read(path: Path, kind: str, **fields) -> tuple[list, Counter]:
    counts: Counter = Counter()
    return list(generic.read(path, WHOLE, IngestConfig(kind=kind, **fields), counts)), counts


def jsonl_bytes(rows: list[dict], bad: bool = True) -> bytes:
    lines = [json.dumps(row) for row in rows] + (["{not json", "[1, 2]", ""] if bad else [])
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("name, pack", [("docs.jsonl", lambda b: b), ("docs.jsonl.gz", gzip.compress),
                                        ("docs.jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b))])
def test_jsonl_plain_gzip_zstd(tmp_path, name, pack):
    path = tmp_path / name
    path.write_bytes(pack(jsonl_bytes(ROWS)))
    assert detect_kind(path) == "jsonl"
    records, counts = read(path, "jsonl")
    assert {r.record_id: r.text for r in records} == KEPT
    assert counts == DROPS + Counter(records_read=2, bad_json=2)
    assert (records[0].url, records[0].source, records[1].url, records[1].source) == (
        "https://example.org/1", "books", None, None)


def test_jsonl_field_mapping_and_positions(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_bytes(jsonl_bytes([{"body": "Text one.", "key": 7}, {"body": "Text two."}], bad=False))
    records, counts = read(path, "jsonl", text_field="body", id_field="key")
    assert [(r.record_id, r.text) for r in records] == [("7", "Text one."), ("plain.jsonl:1", "Text two.")]
    records, _ = read(path, "jsonl", text_field="body")
    assert [r.record_id for r in records] == ["plain.jsonl:0", "plain.jsonl:1"]
    assert counts == Counter(records_read=2)


def table(rows: list[dict]) -> pa.Table:
    return pa.table({"id": [r["id"] for r in rows], "text": [r.get("text") if isinstance(r.get("text"), str) else None
                                                             for r in rows],
                     "url": [r.get("url") for r in rows], "body": [r.get("body") for r in rows]})


def test_parquet(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(table(ROWS), path, row_group_size=2)
    assert detect_kind(path) == "parquet"
    records, counts = read(path, "parquet")
    assert {r.record_id: r.text for r in records} == KEPT and records[0].url == "https://example.org/1"
    assert counts == Counter(records_read=5, empty_text=1, missing_text_field=2)
    records, _ = read(path, "parquet", text_field="body")
    assert [(r.record_id, r.text) for r in records] == [("a2", "the body field")]


def test_parquet_missing_column_is_refused(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(table(ROWS), path)
    with pytest.raises(ValueError, match=r"text field 'content' is not a column; its columns are id, text, url, body"):
        read(path, "parquet", text_field="content")
    with pytest.raises(ValueError, match=r"id field 'doc_id' is not a column"):
        read(path, "parquet", id_field="doc_id")


def test_hf_dataset_and_dataset_dict(tmp_path):
    import datasets

    rows = [{"text": f"Document number {i}.", "url": f"https://example.org/{i}"} for i in range(5)]
    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(tmp_path / "one"))
    assert detect_kind(tmp_path / "one") == "hf"
    records, counts = read(tmp_path / "one", "hf")
    assert [(r.record_id, r.text, r.url) for r in records][:2] == [
        ("data-00000-of-00001.arrow:0", "Document number 0.", "https://example.org/0"),
        ("data-00000-of-00001.arrow:1", "Document number 1.", "https://example.org/1")]
    assert len(records) == 5 and counts == Counter(records_read=5)

    splits = datasets.DatasetDict({"train": dataset.select(range(3)), "test": datasets.Dataset.from_list(
        [{"text": "A test document.", "id": "t0"}, {"text": ""}])})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert detect_kind(tmp_path / "dict") == "hf"
    records, counts = read(tmp_path / "dict", "hf")
    assert [r.record_id for r in records] == ["train/data-00000-of-00001.arrow:0", "train/data-00000-of-00001.arrow:1",
                                              "train/data-00000-of-00001.arrow:2", "t0"]
    assert counts == Counter(records_read=5, empty_text=1)

    arrow = tmp_path / "dict" / "test" / "data-00000-of-00001.arrow"
    assert detect_kind(arrow) == "hf"
    records, counts = read(arrow, "hf")
    assert [(r.record_id, r.text) for r in records] == [("t0", "A test document.")]
    with pytest.raises(ValueError, match=r"text field 'content' is not a column; its columns are text, id"):
        read(arrow, "hf", text_field="content")


def test_a_gz_is_told_by_its_content(tmp_path):
    jsonl = tmp_path / "a.gz"
    jsonl.write_bytes(gzip.compress(jsonl_bytes(ROWS)))
    warc = tmp_path / "b.gz"
    warc.write_bytes(gzip.compress(b"WARC/1.0\r\nWARC-Type: warcinfo\r\nContent-Length: 0\r\n\r\n\r\n\r\n"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        paper = gzip.compress(b"\\documentclass{article}\\begin{document}\\section{A}Text.\\end{document}")
        info = tarfile.TarInfo("2301/2301.01234.gz")
        info.size = len(paper)
        archive.addfile(info, io.BytesIO(paper))
    tar = tmp_path / "c.gz"
    tar.write_bytes(buffer.getvalue())
    assert [detect_kind(p) for p in (jsonl, warc, tar)] == ["jsonl", "warc", "arxiv"]
