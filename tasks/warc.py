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

from tasks.decode import UndecodableBody, decode_content_encoding

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
HEAD_BYTES = 1 << 16  # a WARC header longer than this is not believed
SLACK_BYTES = 1 << 20  # how far past its declared end a record's gzip member is followed
CRLF2 = b"\r\n\r\n"


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


class _PlainBytes:
    """A plain WARC's bytes from ``offset`` on."""

    def __init__(self, stream: BinaryIO, offset: int):
        self.stream = stream
        stream.seek(offset)

    def read(self, n: int) -> bytes:
        return self.stream.read(n)

    def skip(self, n: int) -> None:
        self.stream.seek(n, 1)


class _MemberBytes:
    """The inflated bytes of the gzip member at ``offset``, read forward chunk by chunk (a member
    that inflates to gigabytes never sits in memory); ``end`` is the file offset where the member
    ends, once it has been read to its end."""

    def __init__(self, stream: BinaryIO, offset: int):
        self.stream, self.inflate, self.fed_to = stream, zlib.decompressobj(31), offset
        self.end: int | None = None
        self.done = False
        stream.seek(offset)

    def read(self, n: int) -> bytes:
        parts = []
        while n > 0 and not self.done:
            source = self.inflate.unconsumed_tail or self._more()
            if not source:
                break
            try:
                data = self.inflate.decompress(source, n)
            except zlib.error:
                self.done = True
                break
            parts.append(data)
            n -= len(data)
            if self.inflate.eof:
                self.done, self.end = True, self.fed_to - len(self.inflate.unused_data)
        return b"".join(parts)

    def _more(self) -> bytes:
        chunk = self.stream.read(1 << 16)
        self.fed_to += len(chunk)
        self.done = self.done or not chunk
        return chunk

    def skip(self, n: int) -> None:
        while n > 0 and not self.done:
            n -= len(self.read(min(n, 1 << 16)))


_CONTENT_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


def _bytes_after_block(stream: BinaryIO, offset: int, gzipped: bool):
    """(up to 5 of the record's bytes from the end of its declared block on, where the block
    ends counted from ``offset``, the reader); the first two None if its header has no
    Content-Length."""
    reader = _MemberBytes(stream, offset) if gzipped else _PlainBytes(stream, offset)
    head = reader.read(HEAD_BYTES)
    header_end = head.find(CRLF2)
    match = _CONTENT_LENGTH.search(head[:header_end]) if header_end != -1 else None
    if match is None:
        return None, None, reader
    end = header_end + 4 + int(match.group(1))
    if end >= len(head):
        reader.skip(end - len(head))
        return reader.read(5), end, reader
    tail = head[end:end + 5]
    return tail + reader.read(5 - len(tail)), end, reader


def record_end(stream: BinaryIO, offset: int, gzipped: bool) -> tuple[bool, int | None]:
    """Whether the record at ``offset`` ends where its Content-Length says (its block followed by
    CRLF CRLF and, in a gzipped WARC, by the end of its own gzip member); and the file offset
    where its bytes end, where known (None for a lying record in a plain WARC).

    A record that declares more bytes than it has swallows the start of the next record
    (fastwarc reads across members), or runs past the end of the file; one that declares
    fewer leaves bytes behind. This tells the liar from an honest record followed by junk.
    """
    tail, block_end, reader = _bytes_after_block(stream, offset, gzipped)
    if not gzipped:
        honest = tail is not None and tail[:4] == CRLF2
        return honest, offset + block_end + 4 if honest else None
    if tail == CRLF2:
        reader.read(1)  # reaches the member's end if it ends here
        if reader.end is not None:
            return True, reader.end
    reader.skip(SLACK_BYTES)
    return False, reader.end


@dataclass
class _Outcome:
    """What one parsed record became: a page, a drop reason, or neither (not a response)."""

    offset: int
    page: HtmlPage | None = None
    reason: str | None = None


def _payload_outcome(record, offset: int, max_html_bytes: int) -> _Outcome:
    declared = record.content_length
    try:
        payload = record.reader.read(max_html_bytes + 1)
    except OSError:  # a corrupt body; the record iterator resynchronises after it
        return _Outcome(offset, reason="corrupt_record")
    if len(payload) < declared:
        return _Outcome(offset, reason="truncated_record")
    try:
        payload = decode_content_encoding(payload, record.http_headers.get("Content-Encoding"), max_html_bytes)
    except UndecodableBody as error:
        return _Outcome(offset, reason=error.reason)
    return _Outcome(offset, page=HtmlPage(
        url=record.headers.get("WARC-Target-URI", ""),
        record_id=record.record_id or "",
        fetch_time=record.record_date,
        payload=payload,
        http_charset=record.http_charset,
        warc_truncated=bool(record.headers.get("WARC-Truncated")),
    ))


def _outcome(record, offset: int, counts: Counter, max_html_bytes: int, info: dict | None) -> _Outcome:
    counts["records_read"] += 1
    if record.record_type == WarcRecordType.no_type:  # no WARC-Type: not a valid WARC header
        return _Outcome(offset, reason="corrupt_record")
    if record.record_type == WarcRecordType.warcinfo:
        if info is not None and "crawl" not in info:
            info["crawl"] = crawl_from_warcinfo(record)
        return _Outcome(offset)
    if record.record_type != WarcRecordType.response:
        return _Outcome(offset)
    counts["responses"] += 1
    reason = _skip_reason(record, max_html_bytes)
    if reason:
        return _Outcome(offset, reason=reason)
    return _payload_outcome(record, offset, max_html_bytes)


def _settle(outcome: _Outcome | None, counts: Counter) -> Iterator[HtmlPage]:
    if outcome is None:
        return
    if outcome.reason:
        counts[outcome.reason] += 1
    elif outcome.page is not None:
        counts["html_responses"] += 1
        counts["html_bytes"] += len(outcome.page.payload)
        yield outcome.page


class _Reader:
    """Reads a WARC record by record, resynchronising after what fastwarc cannot read, and
    decides each record's outcome once it knows where the record ended.

    Every record ends as a page or one counted drop. A record whose Content-Length lies
    counts once, ``content_length_mismatch``, not also as the unreadable bytes after it. A
    stretch fastwarc cannot read counts ``corrupt_record`` once per record-like start in it
    that yields nothing, plus once for bytes before the first such start (junk).
    """

    def __init__(self, stream: BinaryIO, counts: Counter, gzipped: bool, max_html_bytes: int, info: dict | None):
        self.stream, self.counts, self.gzipped = stream, counts, gzipped
        self.max_html_bytes, self.info = max_html_bytes, info
        self.gap_from: int | None = None  # where bytes start that no record has explained

    def pages(self) -> Iterator[HtmlPage]:
        start: int | None = 0
        while start is not None:
            held, broken = None, False
            self.stream.seek(start)
            try:
                for record in ArchiveIterator(self.stream, parse_http=True):
                    yield from _settle(held, self.counts)
                    # stream_pos is the record's offset in the file, also after a seek
                    held = _outcome(record, record.stream_pos, self.counts, self.max_html_bytes, self.info)
            except OSError:
                broken = True
            if held is None:
                after = self._nothing_read_at(start)
            else:
                after = self._held_record_end(held, broken)
                yield from _settle(held, self.counts)
            start = None if after is None else self._resume_after(after)

    def _nothing_read_at(self, start: int) -> int:
        """A pass that read no record: a record-like start that fails, or junk."""
        if start > 0 or _starts_a_record(self.stream, start, self.gzipped):
            self.counts["corrupt_record"] += 1
        elif self.gap_from is None:
            self.gap_from = start
        return start

    def _held_record_end(self, held: _Outcome, broken: bool) -> int | None:
        """Where to look for the next record after the pass's last one; None if the file is done."""
        honest, end = record_end(self.stream, held.offset, self.gzipped)
        if honest:
            if broken:
                self.gap_from = end
            return end - 1 if broken else None  # the next record may start right at its end
        if not broken and _next_record_start(self.stream, held.offset, self.gzipped) is None:
            return None  # cut short at the end of the file: its reason stands (truncated_record)
        if held.reason != "corrupt_record":
            held.page, held.reason = None, "content_length_mismatch"
        self.gap_from = end
        return held.offset

    def _resume_after(self, after: int) -> int | None:
        resume = _next_record_start(self.stream, after, self.gzipped)
        if self.gap_from is not None:
            stop = resume if resume is not None else self.stream.seek(0, 2)
            if stop > self.gap_from:
                self.counts["corrupt_record"] += 1
            self.gap_from = None
        return resume


def iter_html_pages(
    stream: BinaryIO, counts: Counter, *, max_html_bytes: int, info: dict | None = None
) -> Iterator[HtmlPage]:
    """Yield HTTP 200 HTML responses; count every record by type and every skip by reason.

    ``info`` (if given) receives ``crawl`` from the warcinfo record (its isPartOf).
    Records whose payload is shorter than their declared length at the end of the file (a
    file cut short) are skipped as ``truncated_record``; the records before them are kept.
    A record is held back until the next record parses: when the stream breaks (or ends)
    right after it and its Content-Length does not match its bytes, it is skipped as
    ``content_length_mismatch`` (its payload would hold part of the next records) and
    reading resumes at the next record after its start. Bodies sent with an HTTP
    Content-Encoding are decoded (``tasks.decode.decode_content_encoding``).
    """
    first = stream.read(4)
    if not first:
        counts["empty_file"] += 1
        return
    if not (first.startswith(b"\x1f\x8b") or first.startswith(b"WARC")):
        raise BadWarcError(f"not a WARC file (starts with {first!r}, expected gzip or 'WARC/')")
    stream.seek(0)
    gzipped = first.startswith(b"\x1f\x8b")
    yield from _Reader(stream, counts, gzipped, max_html_bytes, info).pages()
