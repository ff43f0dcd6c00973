"""Stream HTML responses out of a WARC file with fastwarc.

The reader decides which records are web pages and counts everything it skips;
it never loads a whole file (fastwarc reads record by record from the stream).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterator

from fastwarc.warc import ArchiveIterator, WarcRecordType

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/xml+xhtml"})
CRAWL_RE = re.compile(r"CC-MAIN-\d{4}-\d{2}")


class BadWarcError(ValueError):
    """The file is not a WARC (or not readable as one); it is reported, not retried."""


@dataclass(frozen=True)
class HtmlPage:
    url: str
    record_id: str
    fetch_time: datetime | None
    payload: bytes
    http_charset: str | None
    warc_truncated: bool


def _http_status(record) -> int | None:
    headers = record.http_headers
    return None if headers is None else headers.status_code


def _skip_reason(record, max_html_bytes: int) -> str | None:
    """Why a response record is not an HTML page we extract, or None."""
    status = _http_status(record)
    if status is None:
        return "no_http_headers"
    if status != 200:
        return "http_status_not_200"
    mime = (record.http_content_type or "").strip().lower()
    if mime not in HTML_TYPES:
        return "not_html"
    if record.content_length > max_html_bytes:
        return "html_too_large"
    return None


def crawl_from_warcinfo(record) -> str | None:
    """The warcinfo's ``isPartOf`` field (Common Crawl names the crawl there)."""
    body = record.reader.read().decode("utf-8", "replace")
    for line in body.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "ispartof" and value.strip():
            return value.strip()
    match = CRAWL_RE.search(body)
    return match.group(0) if match else None


GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."
SCAN_BYTES = 1 << 20


def _starts_a_record(stream: BinaryIO, offset: int, gzipped: bool) -> bool:
    stream.seek(offset)
    head = stream.read(4096)
    if not gzipped:
        return head.startswith(WARC_MAGIC)
    try:
        return zlib.decompressobj(31).decompress(head, 16).startswith(WARC_MAGIC)
    except zlib.error:
        return False


def _next_record_start(stream: BinaryIO, after: int, gzipped: bool) -> int | None:
    """Offset of the next readable record strictly after ``after``, scanning in bounded windows."""
    magic = GZIP_MAGIC if gzipped else WARC_MAGIC
    position = after + 1
    while True:
        stream.seek(position)
        window = stream.read(SCAN_BYTES + len(magic))
        if len(window) < len(magic):
            return None
        hit = window.find(magic)
        while hit != -1 and hit <= SCAN_BYTES:
            if _starts_a_record(stream, position + hit, gzipped):
                return position + hit
            hit = window.find(magic, hit + 1)
        position += SCAN_BYTES


def _records_skipping_corruption(stream: BinaryIO, counts: Counter, gzipped: bool):
    """(record, offset) from fastwarc; on a corrupt record, count it, yield ``(None, offset of the
    last good record)`` and resume at the next readable one."""
    start, last_record = 0, -1
    while True:
        stream.seek(start)
        try:
            for record in ArchiveIterator(stream, parse_http=True):
                last_record = start + record.stream_pos
                yield record, last_record
            return
        except OSError:
            counts["corrupt_record"] += 1
            yield None, last_record
            resume = _next_record_start(stream, max(last_record, start), gzipped)
            if resume is None:
                return
            start = resume


_CONTENT_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


def _raw_record(stream: BinaryIO, offset: int, gzipped: bool, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the record at ``offset`` (its gzip member alone, decompressed);
    and whether the whole record (member) was read."""
    stream.seek(offset)
    if not gzipped:
        data = stream.read(limit)
        return data, len(data) < limit
    inflate, data = zlib.decompressobj(31), b""
    while not inflate.eof and len(data) < limit:
        chunk = stream.read(1 << 16)
        if not chunk:
            break
        try:
            data += inflate.decompress(chunk, limit - len(data))
        except zlib.error:
            return data, True
    return data, inflate.eof


def record_length_is_honest(stream: BinaryIO, offset: int, gzipped: bool) -> bool:
    """Whether the record at ``offset`` ends where its Content-Length says: its block is followed
    by CRLF CRLF and, in a gzipped WARC, by the end of its own gzip member.

    A record that declares more bytes than it has swallows the start of the next record
    (fastwarc reads across members); one that declares fewer leaves bytes behind. Both
    show up as a corrupt record right after it; this tells the liar from an honest
    record followed by junk.
    """
    head, _ = _raw_record(stream, offset, gzipped, 1 << 16)
    header_end = head.find(b"\r\n\r\n")
    match = _CONTENT_LENGTH.search(head[:header_end]) if header_end != -1 else None
    if match is None:
        return False
    end = header_end + 4 + int(match.group(1))
    data, whole = _raw_record(stream, offset, gzipped, end + 4 + (1 if gzipped else 0))
    if data[end:end + 4] != b"\r\n\r\n":
        return False
    return whole and len(data) == end + 4 if gzipped else True


def _html_pages(stream: BinaryIO, counts: Counter, gzipped: bool, max_html_bytes: int, info: dict | None):
    """(page, offset) of each HTML response, and ``(None, offset)`` where the stream broke after ``offset``."""
    for record, offset in _records_skipping_corruption(stream, counts, gzipped):
        if record is None:
            yield None, offset
            continue
        counts["records_read"] += 1
        if record.record_type == WarcRecordType.warcinfo:
            if info is not None and "crawl" not in info:
                info["crawl"] = crawl_from_warcinfo(record)
            continue
        if record.record_type != WarcRecordType.response:
            continue
        counts["responses"] += 1
        reason = _skip_reason(record, max_html_bytes)
        if reason:
            counts[reason] += 1
            continue
        declared = record.content_length
        try:
            payload = record.reader.read(max_html_bytes + 1)
        except OSError:  # a corrupt body; the record iterator resynchronises after it
            counts["corrupt_record"] += 1
            continue
        if len(payload) < declared:
            counts["truncated_record"] += 1
            continue
        yield HtmlPage(
            url=record.headers.get("WARC-Target-URI", ""),
            record_id=record.record_id or "",
            fetch_time=record.record_date,
            payload=payload,
            http_charset=record.http_charset,
            warc_truncated=bool(record.headers.get("WARC-Truncated")),
        ), offset


def iter_html_pages(
    stream: BinaryIO, counts: Counter, *, max_html_bytes: int, info: dict | None = None
) -> Iterator[HtmlPage]:
    """Yield HTTP 200 HTML responses; count every record by type and every skip by reason.

    ``info`` (if given) receives ``crawl`` from the warcinfo record (its isPartOf).
    Records whose payload is shorter than their declared length (a file cut short)
    are skipped as ``truncated_record``; the records before them are kept. A page is
    held back until the next record parses: when the stream breaks right after it and
    its Content-Length does not match its bytes, it is skipped as
    ``content_length_mismatch`` (its payload would hold part of the next record).
    """
    first = stream.read(4)
    if not first:
        counts["empty_file"] += 1
        return
    if not (first.startswith(b"\x1f\x8b") or first.startswith(b"WARC")):
        raise BadWarcError(f"not a WARC file (starts with {first!r}, expected gzip or 'WARC/')")
    stream.seek(0)
    gzipped = first.startswith(b"\x1f\x8b")
    pending: tuple[HtmlPage, int] | None = None
    for page, offset in _html_pages(stream, counts, gzipped, max_html_bytes, info):
        if page is None and pending is not None and pending[1] == offset:
            if not record_length_is_honest(stream, offset, gzipped):
                counts["content_length_mismatch"] += 1
                pending = None
        if pending is not None:
            counts["html_responses"] += 1
            counts["html_bytes"] += len(pending[0].payload)
            yield pending[0]
        pending = (page, offset) if page is not None else None
    if pending is not None:
        counts["html_responses"] += 1
        counts["html_bytes"] += len(pending[0].payload)
        yield pending[0]
