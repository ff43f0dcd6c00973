"""Fetch remote inputs (https://, s3:// and other fsspec URLs) with retries.

One retry loop serves every protocol: an attempt raises ``TransientFetchError`` for
what is worth retrying (HTTP 408/429/5xx, dropped or refused connections, timeouts,
short bodies, S3 throttling) and anything else ends the fetch. Files are written to
``DEST.part`` and renamed onto ``DEST`` only when complete, so a file at ``DEST``
is always whole.

S3 credentials: s3fs's usual chain (environment, profile, instance role) is used when
``AWS_ACCESS_KEY_ID`` or a profile/credentials file is configured; otherwise the
request is anonymous (``anon=True``), which only works for public buckets. Note that
``s3://commoncrawl/`` needs credentials; without them use ``https://data.commoncrawl.org``.
On EC2 with only an instance role, set ``AWS_PROFILE`` or credentials explicitly.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar
from urllib.parse import urlparse

import fsspec
import requests
import urllib3

from pretrain.config import DownloadConfig
from pretrain.errors import TransientFetchError
from pretrain.paths import redact_url

T = TypeVar("T")
ProgressFn = Callable[[int, "int | None"], None]

_sleep = time.sleep  # tests replace this to record delays instead of waiting
_THROTTLE_TEXT = re.compile(r"SlowDown|Throttl|\b50[0-4]\b|RequestTimeout", re.IGNORECASE)
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)

try:  # s3fs brings both; other fsspec backends may not
    import aiohttp
    import botocore.exceptions

    _REMOTE_LIB_ERRORS: tuple[type[BaseException], ...] = (
        aiohttp.ClientError,
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
    )
    _TRANSIENT_LIB_ERRORS: tuple[type[BaseException], ...] = (
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        botocore.exceptions.ReadTimeoutError,
    )
except ImportError:  # pragma: no cover
    _REMOTE_LIB_ERRORS = ()
    _TRANSIENT_LIB_ERRORS = ()


class FetchError(Exception):
    """A permanent failure, or retries exhausted; the message names URL, attempts and cause."""


class _Permanent(Exception):
    """Raised inside an attempt for a failure that retrying cannot fix (e.g. HTTP 404)."""


def backoff_delay(attempt: int, cfg: DownloadConfig, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
    if retry_after is not None:
        return min(cfg.backoff_max_s, max(0.0, retry_after))
    delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2**attempt)
    return delay * (1 + cfg.jitter_fraction * random.random())


def _as_transient(error: BaseException) -> TransientFetchError | None:
    """The retryable form of ``error``, or None when retrying would not help."""
    if isinstance(error, TransientFetchError):
        return error
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return None
    transient_types = (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
        *_TRANSIENT_LIB_ERRORS,
    )
    if isinstance(error, transient_types):
        return TransientFetchError(_describe(error))
    if isinstance(error, OSError) and not isinstance(error, _PERMANENT_OS_ERRORS):
        return TransientFetchError(_describe(error))
    if isinstance(error, _REMOTE_LIB_ERRORS) and _THROTTLE_TEXT.search(str(error)):
        return TransientFetchError(_describe(error))
    return None


def _describe(error: BaseException) -> str:
    text = str(error) or repr(error)
    if isinstance(error, (TransientFetchError, _Permanent)):
        return text
    return f"{type(error).__name__}: {text}"


def _failure(url: str, tries: int, error: BaseException) -> str:
    """The message of a final failure: the URL without credentials, the tries, the cause.

    The cause's own text can hold the URL too (requests puts it in connection
    errors), so credentials are removed from it as well.
    """
    cause = _describe(error)
    safe = redact_url(url)
    if safe != url:
        cause = cause.replace(url, safe)
        userinfo = urlparse(url).netloc.rsplit("@", 1)[0]
        cause = cause.replace(userinfo + "@", "***@")  # the credentials where they stand, not every match
    return f"GET {safe} failed after {tries} attempts: {cause}"


def _cause(url: str, error: BaseException) -> BaseException | None:
    """The chained cause, dropped when the URL holds credentials (tracebacks print it in full)."""
    return None if redact_url(url) != url else error


def _with_retries(url: str, cfg: DownloadConfig, attempt_fn: Callable[[int], T]) -> T:
    """Run ``attempt_fn(attempt)`` until it succeeds, fails permanently or runs out of tries.

    I/O errors that are not transient become ``FetchError``; other exceptions
    (programming errors) propagate unchanged.
    """
    for attempt in range(cfg.max_attempts):
        try:
            return attempt_fn(attempt)
        except Exception as error:
            transient = _as_transient(error)
            tries = attempt + 1
            if transient is None:
                if isinstance(error, (_Permanent, OSError, requests.RequestException, *_REMOTE_LIB_ERRORS)):
                    raise FetchError(_failure(url, tries, error)) from _cause(url, error)
                raise
            if tries == cfg.max_attempts:
                raise FetchError(_failure(url, tries, transient)) from _cause(url, error)
            _sleep(backoff_delay(attempt, cfg, transient.retry_after))
    raise AssertionError("unreachable: max_attempts >= 1")


def _is_http(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


def _is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


# ---- http(s) ---------------------------------------------------------------------


@dataclass
class _RangeState:
    """What the server told us so far about resuming with ``Range``."""

    resumable: bool = False


def _retry_after_s(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None  # the HTTP-date form is ignored


def _raise_for_status(resp: requests.Response) -> None:
    code = resp.status_code
    if 200 <= code < 300:
        return
    cause = f"HTTP {code}"
    if code in (408, 429) or code >= 500:
        retry_after = _retry_after_s(resp) if code in (429, 503) else None
        raise TransientFetchError(cause, retry_after)
    raise _Permanent(cause)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _content_range(resp: requests.Response) -> tuple[int, int | None]:
    """(first byte, total size or None) of a 206 answer."""
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if not match:
        raise TransientFetchError(f"HTTP 206 with unusable Content-Range {resp.headers.get('Content-Range')!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def _http_attempt(
    url: str,
    cfg: DownloadConfig,
    out: BinaryIO,
    offset: int,
    state: _RangeState,
    on_progress: ProgressFn | None,
) -> None:
    """GET ``url`` into ``out``, asking for bytes from ``offset`` on when it is not 0.

    The body is read raw (no Content-Encoding decoding) so ``out`` gets the exact
    bytes of the remote file and the count can be checked against the headers.
    """
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with requests.get(url, headers=headers, stream=True, timeout=cfg.timeout_s) as resp:
        if resp.status_code == 416 and offset:
            state.resumable = False  # our .part is not a prefix we can extend; start over
            if resp.headers.get("Content-Range", "") == f"bytes */{offset}":
                return  # the .part already holds the whole file
            raise TransientFetchError(f"HTTP 416 for Range bytes={offset}-")
        _raise_for_status(resp)
        if resp.headers.get("Accept-Ranges", "").strip().lower() == "bytes":
            state.resumable = True
        if resp.status_code == 206:
            state.resumable = True
            start, total = _content_range(resp)
            if start != offset:
                state.resumable = False
                raise TransientFetchError(f"HTTP 206 starts at byte {start}, asked for {offset}")
        else:  # a full answer, even to a Range request: start from zero
            start, total = 0, _content_length(resp)
        out.seek(start)
        out.truncate()
        done = start
        for chunk in resp.raw.stream(cfg.chunk_bytes, decode_content=False):
            out.write(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    if total is not None and done != total:
        if done > total:
            state.resumable = False
        raise TransientFetchError(f"truncated body: got {done} of {total} bytes")


# ---- fsspec (s3:// and friends) --------------------------------------------------


def _aws_credentials_configured() -> bool:
    if any(os.environ.get(name) for name in _CREDENTIAL_ENV):
        return True
    aws_dir = Path(os.environ.get("HOME", "~")).expanduser() / ".aws"
    return (aws_dir / "credentials").is_file() or (aws_dir / "config").is_file()


def _storage_options(url: str) -> dict:
    if urlparse(url).scheme in ("s3", "s3a") and not _aws_credentials_configured():
        return {"anon": True}
    return {}


def _fsspec_attempt(url: str, cfg: DownloadConfig, out: BinaryIO, offset: int, on_progress: ProgressFn | None) -> None:
    """Copy ``url`` into ``out``; from ``offset`` on when the source can seek (S3 can, cheaply)."""
    with fsspec.open(url, "rb", **_storage_options(url)) as src:
        total = getattr(src, "size", None)
        total = total if isinstance(total, int) else None
        start = offset if offset and src.seekable() and (total is None or offset <= total) else 0
        if start:
            src.seek(start)
        out.seek(start)
        out.truncate()
        done = start
        while chunk := src.read(cfg.chunk_bytes):
            out.write(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    if total is not None and done != total:
        raise TransientFetchError(f"truncated body: got {done} of {total} bytes")


# ---- public API ------------------------------------------------------------------


def fetch_to_file(url: str, dest: Path, cfg: DownloadConfig, *, on_progress: ProgressFn | None = None) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``) with retries; an existing ``dest`` is kept.

    Resumes a partial download with ``Range`` on retries when the server supports it.
    On final failure the ``.part`` file is removed and ``FetchError`` raised.
    """
    if _is_local(url):
        raise ValueError(f"{url!r} is a local path, not a remote URL; read it in place")
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    state = _RangeState()

    def attempt(number: int) -> None:
        # A .part left by an earlier process is overwritten; one from this call may be extended.
        offset = part.stat().st_size if number > 0 and part.exists() else 0
        if _is_http(url) and not state.resumable:
            offset = 0
        with open(part, "r+b" if part.exists() else "w+b") as out:
            if _is_http(url):
                _http_attempt(url, cfg, out, offset, state, on_progress)
            else:
                _fsspec_attempt(url, cfg, out, offset, on_progress)
            out.flush()
            os.fsync(out.fileno())

    try:
        _with_retries(url, cfg, attempt)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def read_remote_bytes(url: str, cfg: DownloadConfig) -> bytes:
    """The whole body of a small remote (or local) file, with the same retry policy."""

    def attempt(number: int) -> bytes:
        out = io.BytesIO()
        if _is_http(url):
            _http_attempt(url, cfg, out, 0, _RangeState(), None)
        else:
            _fsspec_attempt(url, cfg, out, 0, None)
        return out.getvalue()

    return _with_retries(url, cfg, attempt)


def open_remote_lines(url: str, cfg: DownloadConfig) -> list[str]:
    """Non-empty lines of a small text file such as ``warc.paths.gz`` (gzip detected by magic)."""
    data = read_remote_bytes(url, cfg)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise FetchError(f"GET {url}: body is not valid gzip: {error}") from error
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
