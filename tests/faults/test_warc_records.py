"""Every WARC record ends as a document or a counted drop: records = documents + drops.

Lying Content-Lengths (also past the end of the file), corrupt gzip members, bad headers,
and HTTP bodies that need decoding (Content-Encoding, a contradicting charset, binary junk).
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
from test_bad_input import ARTICLE, WHEN, liar, page

from tasks.warc import iter_html_pages
from tasks.warcwriter import http_response_block, record_id, warc_date, warc_record, write_warc

pytestmark = pytest.mark.faults
COUNTED = ("records_read", "responses", "html_responses", "html_bytes")  # totals, not drops


def read(data: bytes) -> tuple[list, dict]:
    """The pages of ``data`` and its drops by reason."""
    counts = Counter()
    pages = list(iter_html_pages(BytesIO(data), counts, max_html_bytes=5_000_000))
    return pages, {reason: n for reason, n in counts.items() if reason not in COUNTED}


def pages(prefix: str, n: int) -> bytes:
    return b"".join(page(f"https://e.org/{prefix}{i}") for i in range(n))


def plain(data: bytes) -> bytes:
    """The same records as one uncompressed WARC (gzip.decompress reads every member)."""
    return gzip.decompress(data)


@pytest.mark.parametrize("before", [1, 20])
@pytest.mark.parametrize("after", [2, 20])
@pytest.mark.parametrize("delta", [5_000, 1 << 20, 6 << 20])
def test_a_content_length_that_runs_past_the_end_of_the_file_loses_no_record(before, after, delta, ledger):
    data = pages("b", before) + liar("https://e.org/liar", delta) + pages("a", after)
    for variant in (data, plain(data)):
        kept, drops = read(variant)
        assert [p.url for p in kept] == ([f"https://e.org/b{i}" for i in range(before)]
                                         + [f"https://e.org/a{i}" for i in range(after)])
        assert drops == {"content_length_mismatch": 1}
        assert before + 1 + after == len(kept) + sum(drops.values())
    ledger("a Content-Length too long by 5,000 B, 1 MB or 6 MB, 2 or 20 records after it (gzip and plain WARC)",
           "liar counted content_length_mismatch, every record after it kept; records = documents + drops",
           records=2 * (before + 1 + after), pages_kept=2 * len(kept))


def test_a_record_cut_short_at_the_end_of_the_file_is_still_truncated_record():
    whole = page("https://e.org/last", ARTICLE * 20)
    data = pages("b", 3) + whole[: len(whole) * 2 // 3]
    kept, drops = read(data)
    assert len(kept) == 3 and drops == {"truncated_record": 1}


def corrupt_body(url: str) -> bytes:
    """A gzip member whose WARC header inflates but whose body does not (bytes flipped mid-member)."""
    body = "".join(random.Random(url).choice("abcdefgh ") for _ in range(40_000)).encode()
    member = bytearray(page(url, b"<html><body><p>" + body + b"</p></body></html>"))
    middle = len(member) // 2
    member[middle:middle + 64] = b"\xff" * 64
    return bytes(member)


def bad_header(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


BAD_RECORDS = {
    "gzip of garbage": gzip.compress(b"\x00garbage\xff" * 100, mtime=0),
    "raw junk bytes": b"junkjunk",
    "a broken gzip header": b"\x1f\x8b\x08broken",
    "a gzip member whose body is corrupt": corrupt_body("https://e.org/corrupt"),
    "a gzip member cut in half": page("https://e.org/half", ARTICLE * 30)[:400],
    "a WARC header with no fields": bad_header("WARC/1.1\r\nthis is not a header line\r\n\r\n"),
    "a WARC header whose Content-Length is not a number":
        bad_header("WARC/1.1\r\nWARC-Type: response\r\nContent-Length: abc\r\n\r\nxx\r\n\r\n"),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_one_bad_record_between_good_ones_is_counted_once(name, ledger):
    data = pages("b", 3) + BAD_RECORDS[name] + pages("a", 3)
    kept, drops = read(data)
    assert len(kept) == 6
    assert sum(drops.values()) == 1, drops
    assert 7 == len(kept) + sum(drops.values())
    ledger(f"one bad record between good ones: {name}", "counted once; the 6 good records kept",
           records=7, pages_kept=len(kept), drops=sum(drops.values()))


def test_two_bad_records_in_a_row_are_counted_twice():
    data = pages("b", 2) + corrupt_body("https://e.org/x") + corrupt_body("https://e.org/y") + pages("a", 2)
    kept, drops = read(data)
    assert len(kept) == 4 and drops == {"corrupt_record": 2}


@pytest.mark.parametrize("delta", [+500, +5, -5, -50])
def test_a_liar_counts_once_not_also_as_the_corrupt_bytes_after_it(delta):
    data = page("https://e.org/before") + liar("https://e.org/liar", delta) + page("https://e.org/after")
    for variant in (data, plain(data)):
        kept, drops = read(variant)
        assert len(kept) == 2 and drops == {"content_length_mismatch": 1}


def test_a_liar_followed_by_a_corrupt_member_counts_both():
    data = page("https://e.org/before") + liar("https://e.org/liar", 300) + BAD_RECORDS["gzip of garbage"] + page(
        "https://e.org/after")
    kept, drops = read(data)
    assert len(kept) == 2 and drops == {"content_length_mismatch": 1, "corrupt_record": 1}


def mixed(bad: bytes, gzipped: bool = True) -> bytes:
    """17 good records, 2 liars (the second past the end of the file) and ``bad`` between them."""
    first = pages("b", 5) + liar("https://e.org/liar1", 700) + pages("m", 5)
    last = pages("n", 5) + liar("https://e.org/liar2", 5_000) + pages("a", 2)
    return first + bad + last if gzipped else plain(first) + bad + plain(last)


def test_several_faults_in_one_file_each_count_once(ledger):
    for data in (mixed(corrupt_body("https://e.org/c")), mixed(b"junkjunk", gzipped=False)):
        kept, drops = read(data)
        assert len(kept) == 17 and drops == {"content_length_mismatch": 2, "corrupt_record": 1}
    ledger("one file with 17 good records, 2 liars and a corrupt record (gzip and plain WARC)",
           "each fault counted once, the 17 kept", records=40, pages_kept=34)


@pytest.mark.integration
def test_the_ingest_report_adds_up_for_a_file_with_liars_and_corrupt_records(services, tmp_path, ledger):
    from flows.ingest import ingest_flow
    from pretrain.config import IngestConfig

    write_warc(tmp_path / "in" / "mixed.warc.gz", [mixed(corrupt_body("https://e.org/c"))])
    summary = ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["documents"] == summary["documents"] == 17
    assert report["dropped"] == {"content_length_mismatch": 2, "corrupt_record": 1}
    assert 20 == report["documents"] + sum(report["dropped"].values())
    ledger("ingest: 17 good records, 2 liars (one past the end of the file), 1 corrupt member",
           "report.json adds up: records = documents + drops", records=20, documents=report["documents"],
           dropped=sum(report["dropped"].values()))


def encoded_page(url: str, body: bytes, coding: str, content_type: str = "text/html") -> bytes:
    """A response whose HTTP body is sent with ``Content-Encoding: coding``."""
    block = http_response_block(body, content_type, extra={"Content-Encoding": coding})
    return warc_record("response", block, {
        "WARC-Date": warc_date(WHEN), "WARC-Record-ID": record_id("response", url, coding),
        "WARC-Target-URI": url, "Content-Type": "application/http; msgtype=response"})


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


def brotli_or_skip():
    return pytest.importorskip("brotli", reason="br is decoded only where the brotli package is installed")


ENCODINGS = {
    "gzip": lambda body: gzip.compress(body, mtime=0),
    "x-gzip": lambda body: gzip.compress(body, mtime=0),
    "deflate": zlib.compress,
    "deflate (raw, as some servers send it)": raw_deflate,
    "br": lambda body: brotli_or_skip().compress(body),
    "gzip, br": lambda body: brotli_or_skip().compress(gzip.compress(body, mtime=0)),
}


def one_row(page):
    from pretrain.config import IngestConfig
    from tasks.ingest import page_to_row

    counts = Counter()
    row = page_to_row(page, IngestConfig(), counts, {"warc_path": "test.warc.gz"})
    return row, {k: n for k, n in counts.items() if k not in ("documents", "text_bytes")}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_a_content_encoded_body_is_decoded_into_a_document(name, ledger):
    coding = name.split(" (")[0]
    data = page("https://e.org/before") + encoded_page("https://e.org/zipped", ENCODINGS[name](ARTICLE), coding)
    kept, drops = read(data)
    assert drops == {} and kept[1].payload == ARTICLE
    row, row_drops = one_row(kept[1])
    assert row_drops == {} and "A plain sentence of article text" in row["text"] and row["lang"] == "en"
    ledger(f"HTTP body with Content-Encoding: {name}", "decoded; kept as an English document", records=2,
           documents=1)


def test_a_body_labelled_gzip_but_stored_decoded_is_kept():
    kept, drops = read(encoded_page("https://e.org/stored-decoded", ARTICLE, "gzip"))
    assert drops == {} and kept[0].payload == ARTICLE


def test_a_content_encoding_bomb_is_refused_without_inflating_it(ledger):
    import tracemalloc

    packer = zlib.compressobj(9, wbits=31)
    bomb = packer.compress(b"<html><body><p>") + b"".join(packer.compress(b" " * (1 << 20)) for _ in range(200))
    bomb += packer.flush()  # 200 MB of spaces in about 200 KB
    data = encoded_page("https://e.org/bomb", bomb, "gzip") + page("https://e.org/after")
    tracemalloc.start()
    try:
        kept, drops = read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert drops == {"html_too_large": 1} and [p.url for p in kept] == ["https://e.org/after"]
    assert peak < 3 * 5_000_000, f"{peak} bytes allocated"  # max_html_bytes is 5 MB; inflated fully, 200 MB
    ledger("HTTP body gzip bomb (200 MB of spaces in 200 KB, Content-Encoding: gzip)",
           "counted html_too_large after at most max_html_bytes inflated; next page kept",
           records=2, peak_mib=round(peak / 2**20))


@pytest.mark.parametrize("coding,body,reason", [
    ("gzip", gzip.compress(ARTICLE, mtime=0)[:-40], "content_encoding_error"),
    ("deflate", b"\x00\x01 not deflate at all \xff\xfe" * 20, "content_encoding_error"),
    ("zstd", b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 4, "unsupported_content_encoding"),
], ids=["gzip cut short", "deflate of junk", "zstd"])
def test_a_body_that_cannot_be_decoded_is_counted(coding, body, reason, ledger):
    data = encoded_page("https://e.org/bad", body, coding) + page("https://e.org/after")
    kept, drops = read(data)
    assert drops == {reason: 1} and [p.url for p in kept] == ["https://e.org/after"]
    ledger(f"HTTP body that does not decode ({coding})", f"counted {reason}; next page kept", records=2)


GERMAN = ("<html><body><article><p>" + "Grüße aus Köln: die Straßenbahn fährt über die Brücke am Dom. " * 6
          + "</p></article></body></html>").encode("utf-8")


def test_a_utf8_body_labelled_latin1_is_read_as_utf8(ledger):
    from tasks.decode import decode_html

    assert "Grüße aus Köln" in decode_html(GERMAN, "iso-8859-1")
    kept, _ = read(page("https://de.example/", GERMAN, "text/html; charset=iso-8859-1"))
    row, drops = one_row(kept[0])
    assert drops == {} and "Grüße aus Köln: die Straßenbahn fährt über die Brücke" in row["text"]
    assert row["lang"] == "de" and "Ã" not in row["text"]
    ledger("UTF-8 body labelled charset=iso-8859-1", "read as UTF-8 (no mojibake), kept as lang de", documents=1)


def test_a_latin1_body_labelled_latin1_stays_latin1():
    from tasks.decode import decode_html

    assert "Grüße aus Köln" in decode_html(GERMAN.decode().encode("latin-1"), "iso-8859-1")
    assert "Ã¼" in decode_html("Ã¼ is mojibake".encode("utf-8"), "utf-8")  # a label that agrees stands


def test_random_bytes_labelled_html_are_dropped_as_binary_content(ledger):
    junk = random.Random(0).randbytes(200_000)
    kept, drops = read(page("https://e.org/junk", junk, "text/html"))
    assert drops == {}
    row, row_drops = one_row(kept[0])
    assert row is None and row_drops == {"binary_content": 1}
    ledger("200 KB of random bytes labelled text/html", "dropped as binary_content before extraction", records=1)


def test_no_real_page_looks_binary():
    from conftest import shared_data

    from tasks.decode import decode_html, looks_binary

    pages_seen = 0
    for path in sorted(shared_data("extraction-dev", "html").glob("*.html.gz")):
        assert not looks_binary(decode_html(gzip.decompress(path.read_bytes()))), path.name
        pages_seen += 1
    for path in sorted(shared_data("cc").glob("*.warc.gz")):
        for page_ in iter_html_pages(path.open("rb"), Counter(), max_html_bytes=5_000_000):
            assert not looks_binary(decode_html(page_.payload, page_.http_charset)), page_.url
            pages_seen += 1
    assert pages_seen > 250


@pytest.mark.integration
def test_ingest_decodes_bodies_and_drops_binary_junk(services, tmp_path, ledger):
    from flows.ingest import ingest_flow
    from pretrain.config import IngestConfig

    write_warc(tmp_path / "in" / "bodies.warc.gz", [
        encoded_page("https://e.org/gzip", gzip.compress(ARTICLE, mtime=0), "gzip"),
        encoded_page("https://e.org/deflate", zlib.compress(ARTICLE), "deflate"),
        page("https://de.example/", GERMAN, "text/html; charset=iso-8859-1"),
        page("https://e.org/junk", random.Random(1).randbytes(200_000), "text/html"),
    ])
    ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["documents"] == 3 and report["dropped"] == {"binary_content": 1}
    ledger("ingest: gzip and deflate bodies, UTF-8 labelled latin-1, random bytes labelled HTML",
           "3 documents, the junk counted binary_content", records=4, documents=report["documents"])
