"""One WARC file in, one Parquet shard out: the work of an ingestion task.

Plain functions, no Prefect: the flow wraps them with retries and caching, Ray runs
them in parallel. Every record that does not become a document is counted by reason.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

from pretrain.config import IngestConfig
from pretrain.paths import redact_url
from tasks.decode import decode_html, looks_binary
from tasks.extract import HtmlTooDeep, extract_text
from tasks.fetch import fetch_to_file
from tasks.langid import identify_language
from tasks.shards import ShardWriter
from tasks.sources import InputFile
from tasks.warc import CRAWL_RE, HtmlPage, iter_html_pages

# Keys of the counter that are totals, not drop reasons.
TOTAL_KEYS = ("records_read", "responses", "html_responses", "documents", "html_bytes", "text_bytes")


def document_id(source: str, record_id: str) -> str:
    return hashlib.sha256(f"{source}\x00{record_id}".encode()).hexdigest()[:32]


def page_to_row(page: HtmlPage, cfg: IngestConfig, counts: Counter, meta: dict) -> dict | None:
    """Extract, identify the language and decide; None (with a counted reason) to drop."""
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
    text = text.strip()
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
    counts["documents"] += 1
    counts["text_bytes"] += len(text.encode("utf-8"))
    return {
        "id": document_id(cfg.source, page.record_id),
        "source": cfg.source,
        "url": page.url,
        "crawl": meta.get("crawl"),
        "warc_path": meta["warc_path"],
        "warc_record_id": page.record_id,
        "fetch_time": page.fetch_time,
        "lang": lang,
        "lang_score": lang_score,
        "text": text,
    }


def ingest_warc(local_path: Path, shard_path: Path, cfg: IngestConfig, *, warc_path: str, crawl: str | None) -> dict:
    """Stream one local WARC into one shard; return the shard's report."""
    started = time.perf_counter()
    counts: Counter = Counter()
    meta: dict = {"warc_path": warc_path}
    if crawl:
        meta["crawl"] = crawl
    with open(local_path, "rb") as stream, ShardWriter(shard_path) as writer:
        for page in iter_html_pages(stream, counts, max_html_bytes=cfg.max_html_bytes, info=meta):
            row = page_to_row(page, cfg, counts, meta)
            if row is not None:
                writer.write(row)
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


def ingest_input(item: InputFile, shard_path: Path, cfg: IngestConfig) -> dict:
    """Fetch the input if it is remote, then ingest it; staged downloads are removed after."""
    crawl = item.crawl or _crawl_in(item.uri)
    if item.kind == "local":
        return ingest_warc(Path(item.uri), shard_path, cfg, warc_path=item.uri, crawl=crawl)
    staged = staging_dir(cfg, shard_path.parent) / f"{item.shard_name}-{hashlib.sha256(item.uri.encode()).hexdigest()[:8]}.warc.gz"
    staged.parent.mkdir(parents=True, exist_ok=True)
    fetch_to_file(item.uri, staged, cfg.download)
    try:  # credentials in a URL (user:password@) never reach documents or reports
        return ingest_warc(staged, shard_path, cfg, warc_path=redact_url(item.uri), crawl=crawl)
    finally:
        if not cfg.download.keep_downloads:
            staged.unlink(missing_ok=True)


def _crawl_in(uri: str) -> str | None:
    match = CRAWL_RE.search(uri)
    return match.group(0) if match else None
