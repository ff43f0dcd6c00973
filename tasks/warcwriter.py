"""Write WARC/1.1 files (one gzip member per record): demo data, benchmarks, tests."""

from __future__ import annotations

import gzip
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

WARC_NAMESPACE = uuid.UUID("6f1c1a3e-2a4b-4d8e-9a51-6e9b1c0d7f20")
HTTP_REASONS = {200: "OK", 301: "Moved Permanently", 404: "Not Found", 500: "Internal Server Error"}


def record_id(*parts: str) -> str:
    """A deterministic WARC-Record-ID, so generated files are reproducible."""
    return f"<urn:uuid:{uuid.uuid5(WARC_NAMESPACE, '|'.join(parts))}>"


def warc_date(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def warc_record(record_type: str, block: bytes, headers: dict[str, str]) -> bytes:
    """One complete WARC record (header, block, two CRLFs) as a gzip member."""
    lines = [f"WARC-Type: {record_type}", *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(block)}"]
    raw = ("WARC/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode() + block + b"\r\n\r\n"
    return gzip.compress(raw, compresslevel=6, mtime=0)


def http_response_block(body: bytes, content_type: str, status: int = 200, extra: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} {HTTP_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def warcinfo_record(filename: str, is_part_of: str, when: datetime) -> bytes:
    fields = f"software: pretrain-pipeline\r\nisPartOf: {is_part_of}\r\nformat: WARC File Format 1.1\r\n".encode()
    return warc_record("warcinfo", fields, {
        "WARC-Date": warc_date(when), "WARC-Record-ID": record_id("warcinfo", filename),
        "WARC-Filename": filename, "Content-Type": "application/warc-fields",
    })


def response_record(url: str, body: bytes, content_type: str, when: datetime, status: int = 200) -> bytes:
    return warc_record("response", http_response_block(body, content_type, status), {
        "WARC-Date": warc_date(when), "WARC-Record-ID": record_id("response", url, warc_date(when)),
        "WARC-Target-URI": url, "Content-Type": "application/http; msgtype=response",
    })


def request_record(url: str, when: datetime) -> bytes:
    host = url.split("/")[2] if "://" in url else url
    block = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pretrain-demo\r\n\r\n".encode()
    return warc_record("request", block, {
        "WARC-Date": warc_date(when), "WARC-Record-ID": record_id("request", url, warc_date(when)),
        "WARC-Target-URI": url, "Content-Type": "application/http; msgtype=request",
    })


def metadata_record(url: str, when: datetime, fields: str) -> bytes:
    return warc_record("metadata", fields.encode(), {
        "WARC-Date": warc_date(when), "WARC-Record-ID": record_id("metadata", url, warc_date(when)),
        "WARC-Target-URI": url, "Content-Type": "application/warc-fields",
    })


def write_warc(path: Path, records: Iterable[bytes]) -> Path:
    """Write records to ``path`` atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as handle:
        for record in records:
            handle.write(record)
    os.replace(tmp, path)
    return path
