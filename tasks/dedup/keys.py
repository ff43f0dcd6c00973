"""Exact-duplicate keys: a 64-bit hash of the normalized text, and of the normalized URL.

Two documents are exact duplicates when their normalized word sequences (see
``tasks.dedup.text``) are equal: the key hashes the sequence of 64-bit word
hashes with BLAKE2b, so case, punctuation, digits and whitespace differences
do not matter. (A document with no words at all gets the key of the empty
sequence, so all such documents are duplicates of each other.)

URL normalization (``normalize_url``): scheme dropped (http and https are the
same page), host lowercased without a leading ``www.`` or trailing dot, default
ports dropped, fragment dropped, trailing ``/`` of the path dropped, tracking
query parameters (``utm_*``, ``fbclid``, ``gclid``, ...) dropped and the rest
sorted. The path and query keep their case (servers treat them as distinct).
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

TRACKING_PARAMS = frozenset({"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "yclid", "_ga", "igshid"})
DEFAULT_PORTS = {80, 443}


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def exact_keys(hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One key per document: BLAKE2b-64 of its word-hash sequence."""
    keys = np.empty(offsets.size - 1, dtype=np.uint64)
    for i in range(keys.size):
        keys[i] = hash64(hashes[offsets[i] : offsets[i + 1]].tobytes())
    return keys


def _is_tracking(name: str) -> bool:
    name = name.lower()
    return name.startswith("utm_") or name in TRACKING_PARAMS


def normalize_url(url: str | None) -> str | None:
    """The form of ``url`` under which two fetches count as the same page; None if empty."""
    url = (url or "").strip()
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unparsable URL is only equal to itself
        return url
    host = (parts.hostname or "").rstrip(".")
    host = host.removeprefix("www.")
    netloc = host if port is None or port in DEFAULT_PORTS else f"{host}:{port}"
    path = parts.path.rstrip("/") or "/"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)) \
        if parts.query else []
    return f"{netloc}{path}" + (f"?{urlencode(query)}" if query else "")


def url_keys(urls: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, present)``: a key per document and whether it has a URL at all."""
    normalized = [normalize_url(url) for url in urls]
    present = np.array([n is not None for n in normalized], dtype=bool)
    keys = np.array([hash64(n.encode()) if n is not None else 0 for n in normalized], dtype=np.uint64)
    return keys, present
