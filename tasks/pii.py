"""PII masking as FineWeb does it: e-mail addresses and public IP addresses become placeholders.

The facts carried over from datatrove's ``PIIFormatter`` (src/datatrove/pipeline/formatters/pii.py,
the step FineWeb's pipeline ends with): e-mails and IP addresses are both masked by default, an
e-mail is matched by an RFC 5322-style pattern (dot-separated atoms of letters, digits and
``!#$%&'*+/=?^_`{|}~-``, an ``@``, dot-separated host labels or a bracketed IPv4 literal), an IP
match is kept unless ``ipaddress`` calls it global (only public addresses identify someone), and
the default e-mail placeholder is ``email@example.com`` (example.com is reserved for examples).
Where we differ, on purpose: the patterns are our own and case-insensitive (datatrove's e-mail
pattern is lowercase only), IPv6 is masked too, a dotted quad inside a longer dotted number
("1.2.3.4.5", "v1.2.3.4") is not an address, multicast and reserved addresses are kept
(``is_global`` alone says yes to 224.0.0.1 and ff02::1), an IPv4-mapped IPv6 address is judged
by its IPv4 address, and one placeholder per kind (``PiiConfig``) rather than a rotation.

Every match is found on the original text and replaced in one pass, so everything between two
matches is left byte for byte as it was. Phone numbers are optional (off by default, as in
FineWeb) and matched conservatively: an international number written with a leading ``+``, or a
North American one with its separators.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pretrain.config import PiiConfig
from tasks.shards import ShardWriter, check_document_shard

KINDS = ("emails", "ips", "phones")  # the counters of a masked text, in the order overlaps are settled
BATCH_ROWS = 1000

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"  # no leading zeros: ipaddress refuses them
_QUAD = rf"{_OCTET}(?:\.{_OCTET}){{3}}"

EMAIL = re.compile(
    rf"(?<!{_ATOM[:-1]})(?<!{_ATOM[:-1]}\.)"  # the whole local part, not its tail (nor each tail of a dotted run)
    rf"{_ATOM}(?:\.{_ATOM})*@(?:(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]*[a-z0-9])?|\[{_QUAD}\])"
    r"(?![a-z0-9-])",
    re.IGNORECASE)
# A dotted quad standing alone: not inside a longer dotted number or word ("1.2.3.4.5", "11.2.3.4", "v1.2.3.4")
IPV4 = re.compile(rf"(?<![a-z0-9])(?<![a-z0-9]\.){_QUAD}(?![a-z0-9])(?!\.[a-z0-9])", re.IGNORECASE)
# Candidates only (two or more colons among hex groups, maybe an IPv4 tail); ipaddress decides what is an address
IPV6 = re.compile(r"(?<![a-z0-9:.])(?:[0-9a-f]{0,4}:){2,7}(?:[0-9a-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"
                  r"(?![a-z0-9:])(?!\.[a-z0-9])", re.IGNORECASE)
PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]\d{2,4}){2,4}"  # +44 20 7946 0958, +1 (555) 123-4567
    r"|\(\d{3}\) ?\d{3}[.-]\d{4}|\d{3}([.-])\d{3}\1\d{4}"  # (555) 123-4567, 555-123-4567, 555.123.4567
    r")(?![\w])(?![.-]\d)")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # one of KINDS


def is_public(address: str) -> bool:
    """Whether ``address`` is an IP address that can point at someone: global, not multicast or reserved."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_private or ip.is_multicast or ip.is_reserved or ip.is_loopback
                                 or ip.is_link_local or ip.is_unspecified)


def find_pii(text: str, config: PiiConfig) -> list[Span]:
    """The spans to mask, in text order, none overlapping (an e-mail wins over the IP literal inside it)."""
    found: list[Span] = []
    if config.emails:
        found += [Span(m.start(), m.end(), "emails") for m in EMAIL.finditer(text)]
    if config.ips:
        found += _public_ips(text)
    if config.phones:
        found += [Span(m.start(), m.end(), "phones") for m in PHONE.finditer(text)]
    spans: list[Span] = []  # in text order, none overlapping
    for span in sorted(found, key=lambda s: (KINDS.index(s.kind), s.start)):
        at = bisect.bisect_left(spans, span.start, key=lambda kept: kept.start)
        if (at == 0 or spans[at - 1].end <= span.start) and (at == len(spans) or span.end <= spans[at].start):
            spans.insert(at, span)
    return spans


def _public_ips(text: str) -> list[Span]:
    """The public addresses; a dotted quad that is the tail of an IPv6 address ("2001:db8::8.8.8.8") is that
    address's, public or not."""
    v6 = [m for m in IPV6.finditer(text) if _is_address(m.group())]
    v4 = [m for m in IPV4.finditer(text) if not any(a.start() <= m.start() < a.end() for a in v6)]
    return [Span(m.start(), m.end(), "ips") for m in (*v6, *v4) if is_public(m.group())]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def mask_pii(text: str, config: PiiConfig) -> tuple[str, dict[str, int]]:
    """``text`` with every span of ``find_pii`` replaced by its kind's placeholder; the count per kind."""
    placeholders = {"emails": config.email_placeholder, "ips": config.ip_placeholder,
                    "phones": config.phone_placeholder}
    counts = dict.fromkeys(KINDS, 0)
    pieces, position = [], 0
    for span in find_pii(text, config):
        pieces += [text[position:span.start], placeholders[span.kind]]
        counts[span.kind] += 1
        position = span.end
    if position == 0:
        return text, counts
    pieces.append(text[position:])
    return "".join(pieces), counts


def pii_shard(in_path: Path, out_path: Path, config: PiiConfig) -> dict:
    """Write every row of the shard, its text masked, under the same schema; the report counts per kind."""
    started = time.perf_counter()
    in_path, out_path = Path(in_path), Path(out_path)
    check_document_shard(in_path, required=("text",))
    source = pq.ParquetFile(in_path)
    counts = Counter(dict.fromkeys(("documents_in", "documents_changed", *KINDS), 0))
    writer = ShardWriter(out_path, source.schema_arrow)
    try:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                counts["documents_in"] += 1
                if row["text"]:
                    row["text"], found = mask_pii(row["text"], config)
                    counts.update(found)
                    counts["documents_changed"] += any(found.values())
                writer.write(row)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"input": str(in_path), "shard": str(out_path), **counts, "seconds": round(time.perf_counter() - started, 3)}
