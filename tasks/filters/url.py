"""URL filter: blocked domains, banned and soft-banned URL words.

The rules are RefinedWeb's (Penedo et al. 2023, section G.1), as FineWeb applies
them: a domain blocklist (there, UT1's adult list), words that ban a URL on
their own, and "soft" words that ban it only several at a time. The lists
shipped in ``tasks/filters/lists/`` are small examples; users pass their own
(see that folder's README).
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from pretrain.config import DownloadConfig, UrlFilterConfig
from tasks.filters.base import Doc, DocFilter, Verdict

LISTS_DIR = Path(__file__).resolve().parent / "lists"
DEFAULT_DOMAINS = LISTS_DIR / "blocked_domains.txt"
DEFAULT_BANNED_WORDS = LISTS_DIR / "banned_url_words.txt"
DEFAULT_SOFT_BANNED_WORDS = LISTS_DIR / "soft_banned_url_words.txt"
_URL_WORD_SPLIT_RE = re.compile(r"[^a-z0-9]+")
_REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "gcs://", "az://", "abfs://")


class FilterListError(ValueError):
    """A filter list that cannot be read; the message names the path."""


def _read_list_bytes(path: str, kind: str, download: DownloadConfig | None) -> bytes:
    if not path.startswith(_REMOTE_PREFIXES):
        return Path(path).expanduser().read_bytes()
    from tasks.fetch import FetchError, read_remote_bytes  # lazy: pulls in fsspec/s3fs

    try:
        return read_remote_bytes(path, download or DownloadConfig())
    except FetchError as error:
        raise FilterListError(f"cannot fetch URL filter {kind} {path}: {error}") from error


def load_list(path: str | Path, kind: str = "list", download: DownloadConfig | None = None) -> list[str]:
    """Entries of a one-per-line list (local file or URL; gzip detected by magic).

    Blank lines and ``#`` comments are skipped; entries are lower-cased.
    """
    path = str(path)
    try:
        data = _read_list_bytes(path, kind, download)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise FilterListError(f"URL filter {kind} not found: {path}") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise FilterListError(f"cannot read URL filter {kind} {path}: {error}") from error
    entries = (line.strip().lower() for line in text.splitlines())
    return [entry for entry in entries if entry and not entry.startswith("#")]


def _domain_entry(entry: str) -> str:
    """A domain from a list line: ``0.0.0.0 example.com.``, ``*.example.com`` -> ``example.com``."""
    return entry.split()[-1].strip(".").removeprefix("*.")


def url_host(url: str) -> str:
    """Lower-cased host name of ``url`` ("" when there is none or it does not parse)."""
    if "://" not in url:
        url = "//" + url
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


class UrlFilter(DocFilter):
    """Drop pages by URL. In order:

    * "url_blocked_domain": the host, or a parent domain of it
      (``a.b.example.com`` -> ``b.example.com`` -> ``example.com``), is blocked;
    * "url_banned_word": a banned word is one of the URL's words;
    * "url_soft_banned_words": at least ``soft_banned_min_count`` different
      soft-banned words are.

    URL words: the lower-cased URL split on every non-alphanumeric character.
    A document without a URL is kept (there is nothing to judge). Lists are read
    once, when the filter is built; a missing or unreadable list raises
    ``FilterListError`` naming the path.
    """

    name = "url"

    def __init__(self, cfg: UrlFilterConfig | None = None, download: DownloadConfig | None = None):
        self.cfg = cfg = cfg or UrlFilterConfig()
        domains = list(cfg.blocklist_paths)
        banned = list(cfg.banned_words_paths)
        soft = list(cfg.soft_banned_words_paths)
        if cfg.use_default_lists:
            domains.insert(0, str(DEFAULT_DOMAINS))
            banned.insert(0, str(DEFAULT_BANNED_WORDS))
            soft.insert(0, str(DEFAULT_SOFT_BANNED_WORDS))
        self.blocked_domains = {
            _domain_entry(entry) for path in domains for entry in load_list(path, "domain blocklist", download)
        }
        self.banned_words = {w for path in banned for w in load_list(path, "banned word list", download)}
        self.soft_banned_words = {w for path in soft for w in load_list(path, "soft-banned word list", download)}

    def filter(self, doc: Doc) -> Verdict:
        url = doc.url
        if not url:
            return True
        if self._domain_blocked(url_host(url)):
            return False, "url_blocked_domain"
        url_words = set(_URL_WORD_SPLIT_RE.split(url.lower()))
        if not self.banned_words.isdisjoint(url_words):
            return False, "url_banned_word"
        if len(self.soft_banned_words.intersection(url_words)) >= self.cfg.soft_banned_min_count:
            return False, "url_soft_banned_words"
        return True

    def _domain_blocked(self, host: str) -> bool:
        if not host or not self.blocked_domains:
            return False
        if host in self.blocked_domains:
            return True
        dot = host.find(".")
        while dot != -1:
            if host[dot + 1:] in self.blocked_domains:
                return True
            dot = host.find(".", dot + 1)
        return False
