import gzip
from collections import Counter
from io import BytesIO

import pytest
from conftest import shared_data

from tasks.decode import decode_html
from tasks.demo import write_demo_data
from tasks.warc import BadWarcError, iter_html_pages
from tasks.warcwriter import response_record, warcinfo_record


def pages_of(data: bytes, max_html_bytes: int = 5_000_000):
    counts, info = Counter(), {}
    pages = list(iter_html_pages(BytesIO(data), counts, max_html_bytes=max_html_bytes, info=info))
    return pages, counts, info


def test_real_common_crawl_sample_yields_html_responses():
    data = shared_data("cc", "CC-MAIN-2020-34-sample.warc.gz").read_bytes()
    pages, counts, info = pages_of(data)
    assert counts["records_read"] == 50
    assert counts["responses"] == 16
    assert len(pages) == 16
    assert all(page.url.startswith("http") for page in pages)
    assert info["crawl"] == "CC-MAIN-2020-34"


def test_clipped_record_is_counted_not_yielded():
    data = shared_data("cc", "clipped-record.warc.gz").read_bytes()
    pages, counts, _ = pages_of(data)
    assert pages == []
    assert counts["truncated_record"] == 1


def test_records_after_a_clipped_file_part_are_kept():
    good = shared_data("cc", "CC-MAIN-2022-05-mini.warc.gz").read_bytes()
    clipped = shared_data("cc", "clipped-record.warc.gz").read_bytes()
    pages, counts, _ = pages_of(good + clipped)
    assert len(pages) == 1 and counts["truncated_record"] == 1


@pytest.mark.parametrize("status,ctype,reason", [
    (404, "text/html", "http_status_not_200"),
    (200, "application/pdf", "not_html"),
    (200, "image/png", "not_html"),
])
def test_non_pages_are_skipped_with_reason(status, ctype, reason):
    from datetime import datetime, timezone

    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    data = warcinfo_record("x.warc.gz", "CC-MAIN-2024-10", when) + response_record(
        "https://example.org/", b"<html><body>hi</body></html>", ctype, when, status)
    pages, counts, info = pages_of(data)
    assert pages == [] and counts[reason] == 1 and info["crawl"] == "CC-MAIN-2024-10"


def test_oversized_page_is_skipped():
    from datetime import datetime, timezone

    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    body = b"<html><body>" + b"x" * 5000 + b"</body></html>"
    pages, counts, _ = pages_of(response_record("https://e.org/", body, "text/html", when), max_html_bytes=1000)
    assert pages == [] and counts["html_too_large"] == 1


def test_not_a_warc_is_a_clear_error():
    with pytest.raises(BadWarcError, match="not a WARC"):
        pages_of(b"%PDF-1.4 not a warc at all")


def test_empty_file_is_counted():
    pages, counts, _ = pages_of(b"")
    assert pages == [] and counts["empty_file"] == 1


def test_gzip_of_garbage_is_a_counted_corrupt_record():
    pages, counts, _ = pages_of(gzip.compress(b"\x00garbage\xff" * 100))
    assert pages == []
    assert counts["corrupt_record"] == 1


@pytest.mark.parametrize("junk", [gzip.compress(b"\x00garbage\xff" * 100), b"junkjunk", b"\x1f\x8b\x08broken"])
def test_corrupt_record_between_good_ones_loses_nothing_else(junk):
    good = shared_data("cc", "CC-MAIN-2022-05-mini.warc.gz").read_bytes()
    pages, counts, _ = pages_of(good + junk + good)
    assert len(pages) == 2
    assert counts["corrupt_record"] == 1
    assert counts["records_read"] == 6


def test_demo_data_is_deterministic_and_varied(tmp_path):
    first = write_demo_data(tmp_path / "a", n_files=2, articles_per_file=10)
    second = write_demo_data(tmp_path / "b", n_files=2, articles_per_file=10)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    pages, counts, info = pages_of(first[0].read_bytes())
    assert info["crawl"] == "demo-local"
    assert counts["not_html"] >= 3 and counts["http_status_not_200"] >= 2
    urls = [p.url for p in pages]
    assert any("mirror-" in u for u in urls) and any("scraper-" in u for u in urls)
    assert any("spam-" in u for u in urls) and any("//fr." in u for u in urls)


@pytest.mark.parametrize("payload,charset,expected", [
    ("Grüße aus Köln".encode("utf-8"), "utf-8", "Grüße aus Köln"),
    ("Grüße aus Köln".encode("latin-1"), "iso-8859-1", "Grüße aus Köln"),
    ('<meta charset="windows-1251"><p>Привет</p>'.encode("cp1251"), None, "Привет"),
    ("日本語のテキストです。".encode("shift_jis"), "no-such-charset", "日本語"),
])
def test_decode_uses_declared_or_detected_charset(payload, charset, expected):
    assert expected in decode_html(payload, charset)
