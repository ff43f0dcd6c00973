"""One input file (or a byte range of one) in, one Parquet shard out: the work of an ingestion task.

A WARC goes through ``tasks.warc`` and the extractor; the curated kinds (a Wikipedia dump, an
arXiv tarball, JSONL/Parquet/HF data) through their reader in ``tasks.readers``. Plain functions,
no Prefect: the flow wraps them with retries and caching, Ray runs them in parallel. Every record
that does not become a document is counted by reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

from pretrain.config import IngestConfig
from pretrain.paths import redact_url
from tasks.decode import decode_html, looks_binary
from tasks.extract import HtmlTooDeep, extract_text
from tasks.fetch import fetch_to_file
from tasks.langid import identify_language
from tasks.readers import WHOLE, Part, Record, reader
from tasks.readers.detect import UnknownKind, detect_kind
from tasks.shards import ShardWriter
from tasks.sources import InputFile
from tasks.warc import CRAWL_RE, HtmlPage, iter_html_pages

# Keys of the counter that are totals, not drop reasons.
TOTAL_KEYS = ("records_read", "responses", "html_responses", "documents", "html_bytes", "text_bytes")


def document_id(source: str, record_id: str) -> str:
    return hashlib.sha256(f"{source}\x00{record_id}".encode()).hexdigest()[:32]


# Pages extracted before their languages are identified, in one go. The language-id model (a
# 39 MB transition table) and the HTML parser evict each other from the CPU caches when they
# take turns page by page; in batches each stays warm: on bench/ingest.py's WARC py3langid
# takes 65-77 % of the CPU time it took page by page (0.81 s of 1.17 s for 711 pages). The
# batch holds texts, not payloads, and at most LANGID_BATCH_CHARS of them.
LANGID_BATCH = 256
LANGID_BATCH_CHARS = 16_000_000


def page_text(page: HtmlPage, cfg: IngestConfig, counts: Counter) -> str | None:
    """The page's extracted text, stripped; None (with a counted reason) when it cannot be extracted."""
    try:
        html = decode_html(page.payload, page.http_charset)
        if looks_binary(html):  # binary bytes labelled HTML: not worth extracting
            counts["binary_content"] += 1
            return None
        text = extract_text(html, cfg.extractor, url=page.url, max_depth=cfg.max_html_depth)
    except HtmlTooDeep:  # nested past any real page: the work would grow with its depth
        counts["html_too_deep"] += 1
        return None
    except Exception:  # a page the parser cannot handle must not cost the file
        counts["extraction_error"] += 1
        return None
    return text.strip()


def text_to_row(page: HtmlPage, text: str, cfg: IngestConfig, counts: Counter, meta: dict) -> dict | None:
    """Identify the language of a page's text and decide; None (with a counted reason) to drop."""
    kept = keep_text(text, cfg, counts)
    if kept is None:
        return None
    lang, lang_score = kept
    source = meta.get("source") or cfg.source or "commoncrawl"
    counts["documents"] += 1
    counts["text_bytes"] += len(text.encode("utf-8"))
    return {
        "id": document_id(source, page.record_id),
        "source": source,
        "url": page.url,
        "crawl": meta.get("crawl"),
        "warc_path": meta["warc_path"],
        "warc_record_id": page.record_id,
        "fetch_time": page.fetch_time,
        "lang": lang,
        "lang_score": lang_score,
        "text": text,
    }


def page_to_row(page: HtmlPage, cfg: IngestConfig, counts: Counter, meta: dict) -> dict | None:
    """Extract, identify the language and decide; None (with a counted reason) to drop."""
    text = page_text(page, cfg, counts)
    return None if text is None else text_to_row(page, text, cfg, counts, meta)


def ingest_warc(local_path: Path, shard_path: Path, cfg: IngestConfig, *, warc_path: str, crawl: str | None) -> dict:
    """Stream one local WARC into one shard; return the shard's report.

    Rows are written in WARC order; languages are identified ``LANGID_BATCH`` pages at a time.
    """
    started = time.perf_counter()
    counts: Counter = Counter()
    meta: dict = {"warc_path": warc_path, "source": cfg.source or "commoncrawl"}
    if crawl:
        meta["crawl"] = crawl
    extracted: list[tuple[HtmlPage, str, str | None]] = []  # with the crawl known when the page was read
    extracted_chars = 0

    def write_extracted(writer: ShardWriter) -> None:
        nonlocal extracted_chars
        for page, text, crawl_then in extracted:
            row = text_to_row(page, text, cfg, counts, {**meta, "crawl": crawl_then})
            if row is not None:
                writer.write(row)
        extracted.clear()
        extracted_chars = 0

    with open(local_path, "rb") as stream, ShardWriter(shard_path) as writer:
        for page in iter_html_pages(stream, counts, max_html_bytes=cfg.max_html_bytes, info=meta):
            text = page_text(page, cfg, counts)
            if text is not None:
                extracted.append((replace(page, payload=b""), text, meta.get("crawl")))
                extracted_chars += len(text)
            if len(extracted) >= LANGID_BATCH or extracted_chars >= LANGID_BATCH_CHARS:
                write_extracted(writer)
        write_extracted(writer)
    return shard_report(counts, input_uri=warc_path, shard_path=shard_path,
                        input_bytes=local_path.stat().st_size, seconds=time.perf_counter() - started)


def shard_report(counts: Counter, *, input_uri: str, shard_path: Path, input_bytes: int, seconds: float) -> dict:
    dropped = {key: n for key, n in sorted(counts.items()) if key not in TOTAL_KEYS}
    totals = {key: counts.get(key, 0) for key in TOTAL_KEYS}
    return {
        "input": input_uri,
        "shard": str(shard_path),
        **totals,
        "dropped": dropped,
        "input_bytes": input_bytes,
        "seconds": round(seconds, 3),
        "docs_per_s": round(totals["documents"] / seconds, 1) if seconds > 0 else None,
    }


def staging_dir(cfg: IngestConfig, output_dir: Path) -> Path:
    return Path(cfg.download.download_dir) if cfg.download.download_dir else output_dir / ".downloads"


def keep_text(text: str, cfg: IngestConfig, counts: Counter) -> tuple[str, float] | None:
    """(language, score) of a text that passes the length and language settings; None, counted, if not."""
    if not text:
        counts["empty_text"] += 1
        return None
    if len(text) < cfg.min_text_chars:
        counts["text_too_short"] += 1
        return None
    lang, lang_score = identify_language(text)
    if cfg.languages and lang not in cfg.languages:
        counts["language_not_selected"] += 1
        return None
    if lang_score < cfg.min_lang_score:
        counts["lang_score_too_low"] += 1
        return None
    return lang, lang_score


def source_tag(cfg: IngestConfig, kind: str, input_uri: str, record: Record | None = None) -> str:
    """``cfg.source``; else the kind's (commoncrawl, wikipedia, arxiv); else the record's own; else the input's name."""
    if cfg.source:
        return cfg.source
    if kind == "warc":
        return "commoncrawl"
    default = reader(kind).DEFAULT_SOURCE
    if default:
        return default
    if record is not None and record.source:
        return record.source
    return input_name(input_uri, kind)


def input_name(input_uri: str, kind: str) -> str:
    """What a source without a tag is called: the input's name; an HF dataset's folder name, not its Arrow file's."""
    path = Path(input_uri)
    if kind == "hf" and path.suffix == ".arrow":
        folder = path.parent
        return (folder.parent if (folder.parent / "dataset_dict.json").is_file() else folder).name
    return InputFile(input_uri, "local", None).shard_name


def record_to_row(record: Record, cfg: IngestConfig, kind: str, input_uri: str, counts: Counter) -> dict | None:
    text = (record.text or "").strip()
    kept = keep_text(text, cfg, counts)
    if kept is None:
        return None
    source = source_tag(cfg, kind, input_uri, record)
    counts["documents"] += 1
    counts["text_bytes"] += len(text.encode("utf-8", "surrogatepass"))
    return {"id": document_id(source, record.record_id), "source": source, "url": record.url, "crawl": None,
            "warc_path": input_uri, "warc_record_id": record.record_id, "fetch_time": record.fetch_time,
            "lang": kept[0], "lang_score": kept[1], "text": text}


def ingest_records(local_path: Path, shard_path: Path, cfg: IngestConfig, kind: str, part: Part, *,
                   input_uri: str) -> dict:
    """Stream one curated input (or one part of it) through its reader into one shard; the shard's report."""
    started = time.perf_counter()
    counts: Counter = Counter()
    resolved = cfg.model_copy(update={"kind": kind})
    with ShardWriter(shard_path) as writer:
        for record in reader(kind).read(local_path, part, resolved, counts):
            row = record_to_row(record, cfg, kind, input_uri, counts)
            if row is not None:
                writer.write(row)
    size = part.end - part.start if part.start is not None and part.end is not None else _size(local_path)
    report = shard_report(counts, input_uri=input_uri, shard_path=shard_path, input_bytes=size,
                          seconds=time.perf_counter() - started)
    return {**report, "kind": kind, **({"part": [part.index, part.count]} if not part.whole else {})}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def input_kind(path: Path, cfg: IngestConfig) -> str:
    """``cfg.kind``, or the kind told from the content; a file named as a WARC whose content is no known kind is
    read as one, so that its error says what is wrong with it as a WARC."""
    if cfg.kind != "auto":
        return cfg.kind
    try:
        return detect_kind(path)
    except UnknownKind:
        if path.name.endswith((".warc", ".warc.gz")):
            return "warc"
        raise


def ingest_local(path: Path, shard_path: Path, cfg: IngestConfig, part: Part, *, input_uri: str,
                 crawl: str | None) -> dict:
    kind = input_kind(path, cfg)
    if kind == "warc":
        return ingest_warc(path, shard_path, cfg, warc_path=input_uri, crawl=crawl)
    return ingest_records(path, shard_path, cfg, kind, part, input_uri=input_uri)


def ingest_input(item: InputFile, shard_path: Path, cfg: IngestConfig, part: Part = WHOLE) -> dict:
    """Fetch the input if it is remote, then ingest it (or its ``part``); staged downloads are removed after."""
    crawl = item.crawl or _crawl_in(item.uri)
    if item.kind == "local":
        return ingest_local(Path(item.uri), shard_path, cfg, part, input_uri=item.uri, crawl=crawl)
    name = os.path.basename(urlparse(item.uri).path.rstrip("/")) or "input"
    staged = staging_dir(cfg, shard_path.parent) / f"{hashlib.sha256(item.uri.encode()).hexdigest()[:8]}-{name}"
    staged.parent.mkdir(parents=True, exist_ok=True)
    fetch_to_file(item.uri, staged, cfg.download)
    try:  # credentials in a URL (user:password@) never reach documents or reports
        return ingest_local(staged, shard_path, cfg, part, input_uri=redact_url(item.uri), crawl=crawl)
    finally:
        if not cfg.download.keep_downloads:
            staged.unlink(missing_ok=True)


def _crawl_in(uri: str) -> str | None:
    match = CRAWL_RE.search(uri)
    return match.group(0) if match else None
