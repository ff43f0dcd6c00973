"""Bytes of an HTML payload to text: the declared charset, else a detected one."""

from __future__ import annotations

import codecs
import re

from resiliparse.parse.encoding import bytes_to_str, detect_encoding

META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
SNIFF_BYTES = 4096


def _known_codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def declared_charset(payload: bytes, http_charset: str | None) -> str | None:
    """The HTTP header's charset, else the first <meta charset> in the head; None if unknown."""
    charset = _known_codec(http_charset)
    if charset:
        return charset
    match = META_CHARSET_RE.search(payload[:SNIFF_BYTES])
    return _known_codec(match.group(1).decode("ascii", "ignore")) if match else None


def decode_html(payload: bytes, http_charset: str | None = None) -> str:
    """Decode with the declared charset; fall back to detection, then UTF-8/cp1252.

    Never raises on bad bytes: undecodable sequences are dropped.
    """
    charset = declared_charset(payload, http_charset)
    if charset is None or charset == "ascii":
        charset = detect_encoding(payload)
    try:
        return bytes_to_str(payload, charset, errors="ignore")
    except (LookupError, UnicodeError):
        return bytes_to_str(payload, "utf-8", errors="ignore")
