"""Bytes of an HTML payload to text: undo the HTTP Content-Encoding, then decode with
valid UTF-8, else the declared charset, else a detected one; tell binary junk from text."""

from __future__ import annotations

import codecs
import re
import zlib

from resiliparse.parse.encoding import bytes_to_str, detect_encoding

try:  # br is decoded where the brotli package is installed (fastwarc depends on it)
    import brotli
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

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


def _is_utf8(payload: bytes) -> bool:
    """Whether the payload is valid UTF-8 with non-ASCII characters (a sequence cut at the
    very end is allowed: a payload may be clipped)."""
    if payload.isascii():
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(payload, final=False)
    except UnicodeDecodeError:
        return False
    return True


def decode_html(payload: bytes, http_charset: str | None = None) -> str:
    """Decode as UTF-8 where the bytes are valid UTF-8, whatever the label says (text in a
    legacy charset is almost never valid UTF-8 by accident; a wrong label is common); else
    with the declared charset; fall back to detection, then UTF-8.

    Never raises on bad bytes: undecodable sequences are dropped.
    """
    if _is_utf8(payload):
        return bytes_to_str(payload, "utf-8", errors="ignore")
    charset = declared_charset(payload, http_charset)
    if charset is None or charset == "ascii":
        charset = detect_encoding(payload)
    try:
        return bytes_to_str(payload, charset, errors="ignore")
    except (LookupError, UnicodeError):
        return bytes_to_str(payload, "utf-8", errors="ignore")


BINARY_CHARS_RE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")
BINARY_SAMPLE_CHARS = 100_000
MAX_BINARY_SHARE = 0.02  # real pages here: at most 0.015 %; random bytes: 11-24 % in any charset


# BINARY_CHARS_RE's characters in UTF-8: the C0 ones and DEL are single bytes (bytes.translate
# deletes them at C speed, where the regex steps through a page character by character), the C1
# ones \xc2 \x80-\x9f, U+FFFD \xef\xbf\xbd. None of these byte strings occurs inside another character.
BINARY_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F])
C1_UTF8_RE = re.compile(b"\xc2[\x80-\x9f]")
REPLACEMENT_UTF8 = "\ufffd".encode()


def looks_binary(text: str) -> bool:
    """Whether decoded text is binary junk: more than 2 % control or replacement characters
    (those of ``BINARY_CHARS_RE``), counted on its UTF-8 bytes."""
    sample = text[:BINARY_SAMPLE_CHARS]
    data = sample.encode("utf-8", "surrogatepass")
    found = len(data) - len(data.translate(None, BINARY_BYTES))
    if not sample.isascii():
        found += len(C1_UTF8_RE.findall(data)) + data.count(REPLACEMENT_UTF8)
    return found > MAX_BINARY_SHARE * len(sample)


class UndecodableBody(ValueError):
    """An HTTP body whose Content-Encoding cannot be undone; ``reason`` is its drop reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _inflate(body: bytes, wbits: int, max_bytes: int) -> bytes:
    """Inflate a zlib, gzip (every member) or raw deflate stream; never more than ``max_bytes + 1``."""
    parts, size = [], 0
    while True:
        inflater = zlib.decompressobj(wbits)
        part = inflater.decompress(body, max_bytes + 1 - size)
        parts.append(part)
        size += len(part)
        if size > max_bytes:
            raise UndecodableBody("html_too_large", f"the body inflates to more than {max_bytes} bytes")
        if not inflater.eof:
            raise zlib.error("the compressed body is cut short")
        body = inflater.unused_data
        if wbits < 0 or not body.startswith(b"\x1f\x8b"):  # only gzip has further members
            return b"".join(parts)


def _unbrotli(body: bytes, max_bytes: int) -> bytes:
    decompressor = brotli.Decompressor()
    out = decompressor.process(body, output_buffer_limit=max_bytes + 1)
    if len(out) > max_bytes:
        raise UndecodableBody("html_too_large", f"the body inflates to more than {max_bytes} bytes")
    if not decompressor.is_finished():
        raise brotli.error("the compressed body is cut short")
    return out


def _undo(coding: str, body: bytes, max_bytes: int) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return _inflate(body, 47, max_bytes)  # 47: gzip or zlib header, whichever it has
    if coding == "deflate":
        try:
            return _inflate(body, 15, max_bytes)
        except zlib.error:
            return _inflate(body, -15, max_bytes)  # raw deflate, as some servers send it
    if coding == "br" and brotli is not None:
        return _unbrotli(body, max_bytes)
    raise UndecodableBody("unsupported_content_encoding", f"Content-Encoding {coding!r} is not supported")


def _looks_decoded(body: bytes) -> bool:
    """A body that starts like markup: a crawler stored it decoded but kept the header."""
    return body.removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"<"


def decode_content_encoding(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo an HTTP ``Content-Encoding`` (gzip, deflate, br; codings listed in the order they
    were applied are undone last first), inflating at most ``max_bytes`` so that a
    decompression bomb is refused rather than inflated.

    Raises ``UndecodableBody`` with reason ``html_too_large``, ``content_encoding_error`` or
    ``unsupported_content_encoding``; a body that does not decode but starts like markup is
    returned as it is.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    for coding in reversed([c for c in codings if c and c != "identity"]):
        try:
            body = _undo(coding, body, max_bytes)
        except UndecodableBody as error:
            if error.reason == "html_too_large" or not _looks_decoded(body):
                raise
            return body
        except (zlib.error, getattr(brotli, "error", zlib.error)) as error:
            if not _looks_decoded(body):
                raise UndecodableBody("content_encoding_error", f"{coding} body does not decode: {error}") from error
            return body
    return body
