"""Turn ``IngestConfig.inputs`` (crawl ids, URLs, local paths, folders and globs) into input files.

A folder stands for the input files in it of the kind asked for (``IngestConfig.kind``; auto: any
kind the readers know), and a Hugging Face dataset saved to disk for its Arrow files, every split's.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pretrain.config import DownloadConfig, IngestConfig
from tasks.fetch import open_remote_lines, read_remote_bytes
from tasks.readers.detect import is_hf_dataset

CRAWL_ID = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
_CRAWL_IN_PATH = re.compile(r"CC-MAIN-\d{4}-\d{2}(?!\d)")
_NAME_SUFFIXES = (".warc.gz", ".warc", ".xml.bz2", ".xml", ".jsonl.gz", ".jsonl.zst", ".jsonl", ".json.gz", ".json",
                  ".parquet", ".arrow", ".tar", ".gz", ".bz2", ".zst")  # what a shard's name leaves out
KIND_PATTERNS = {
    "warc": ("*.warc.gz", "*.warc"),
    "wikipedia": ("*pages-articles*.xml", "*pages-articles*.xml.bz2", "*.xml", "*.xml.bz2"),
    "arxiv": ("*.tar",),
    "jsonl": ("*.jsonl", "*.jsonl.gz", "*.jsonl.zst", "*.json.gz"),
    "parquet": ("*.parquet",),
    "hf": ("*.arrow",),
}
_GLOB_CHARS = re.compile(r"[*?\[]")

Kind = Literal["local", "http", "s3"]


@dataclass(frozen=True)
class InputFile:
    uri: str  # an absolute local path, or an http(s):// or s3:// URL
    kind: Kind
    crawl: str | None  # e.g. CC-MAIN-2024-10, when the path names one

    @property
    def shard_name(self) -> str:
        """Basename without ``.warc.gz``/``.warc``/``.gz``; callers resolve collisions."""
        path = self.uri if self.kind == "local" else urlparse(self.uri).path
        name = os.path.basename(path.rstrip("/"))
        for suffix in _NAME_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return name


def crawl_of(path: str) -> str | None:
    match = _CRAWL_IN_PATH.search(path)
    return match.group(0) if match else None


def _remote_kind(url: str) -> Kind:
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        return "http"
    if scheme in ("s3", "s3a"):
        return "s3"
    raise ValueError(f"input {url!r}: unsupported URL scheme {scheme!r} (use a local path, http(s):// or s3://)")


def _expand_paths_listing(listing_url: str, base_url: str, cfg: IngestConfig) -> list[InputFile]:
    """Each line of a ``*.paths.gz`` listing, resolved against ``base_url``."""
    base = base_url.rstrip("/")
    files = []
    for rel in open_remote_lines(listing_url, cfg.download):
        url = f"{base}/{rel.lstrip('/')}"
        files.append(InputFile(url, _remote_kind(url), crawl_of(rel)))
    return files


def _listing_base(url: str) -> str:
    """Where the relative paths of a listing resolve: the prefix before ``crawl-data/``, else the host."""
    marker = url.find("/crawl-data/")
    if marker != -1:
        return url[:marker]
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}"


def _files_in_dir(directory: Path, kind: str = "warc") -> list[str]:
    """The input files of ``kind`` in a folder (auto: of any kind); a Hugging Face dataset's Arrow files."""
    if kind in ("auto", "hf") and is_hf_dataset(directory):
        return hf_dataset_files(directory)
    patterns = sorted({p for ps in KIND_PATTERNS.values() for p in ps}) if kind == "auto" else KIND_PATTERNS[kind]
    # Not only regular files: a FIFO or socket named *.warc.gz is refused by name, never skipped silently.
    found = {str(p) for pattern in patterns for p in directory.glob(pattern) if not p.is_dir()}
    if not found:
        listed = " or ".join(patterns) if kind != "auto" else "files of a kind the readers know"
        raise FileNotFoundError(f"input directory {str(directory)!r} holds no {listed}")
    return sorted(found)


def hf_dataset_files(folder: Path) -> list[str]:
    """The Arrow files of a ``save_to_disk`` folder: ``state.json``'s data files, every split's for a DatasetDict."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        return [path for split in splits for path in hf_dataset_files(folder / split)]
    try:
        state = json.loads((folder / "state.json").read_text())
        files = [str(folder / entry["filename"]) for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder}: not a readable Hugging Face dataset folder (state.json: {error})") from None
    missing = [path for path in files if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{folder}: state.json lists Arrow files that are not there: {missing}")
    return files


def _expand_local(entry: str, kind: str = "warc") -> list[InputFile]:
    pattern = os.path.expanduser(entry.removeprefix("file://"))
    if _GLOB_CHARS.search(pattern):
        matches = sorted(glob.glob(pattern, recursive=True))
    else:
        matches = [pattern] if os.path.exists(pattern) else []
    if not matches:
        raise FileNotFoundError(f"input {entry!r} matches no file")
    paths: list[str] = []
    for match in matches:
        paths.extend(_files_in_dir(Path(match), kind) if os.path.isdir(match) else [match])
    for path in paths:
        _check_regular_file(path)
    return [InputFile(os.path.abspath(p), "local", crawl_of(os.path.abspath(p))) for p in paths]


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_regular_file(path: str) -> None:
    """Refuse, by name, what is not a regular file (checked with stat, before anything opens it):
    reading a FIFO or a socket waits for a writer forever, a device never ends."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return
    kind = next((name for is_kind, name in _NOT_REGULAR if is_kind(mode)), "a special file")
    raise ValueError(f"input {path!r} is {kind}, not a regular file: give WARC files (.warc.gz or .warc), or the "
                     f"files of another kind the readers know")


def _is_local(entry: str) -> bool:
    scheme = urlparse(entry).scheme
    return scheme in ("", "file") or len(scheme) == 1  # len 1: a Windows drive letter


def _expand_entry(entry: str, cfg: IngestConfig) -> list[InputFile]:
    entry = entry.strip()
    if CRAWL_ID.match(entry):
        base = cfg.cc_base_url.rstrip("/")
        return _expand_paths_listing(f"{base}/crawl-data/{entry}/warc.paths.gz", base, cfg)
    if _is_local(entry):
        return _expand_local(entry, cfg.kind)
    kind = _remote_kind(entry)
    if entry.endswith(".paths.gz"):
        return _expand_paths_listing(entry, _listing_base(entry), cfg)
    return [InputFile(entry, kind, crawl_of(entry))]


def check_local_inputs(cfg: IngestConfig) -> None:
    """Expand the local entries of ``cfg.inputs`` now, by stat alone: a path that matches nothing or is
    not a regular file fails before a run starts (the CLI checks this; the flow checks it again)."""
    for entry in cfg.inputs:
        entry = entry.strip()
        if not CRAWL_ID.match(entry) and _is_local(entry):
            _expand_local(entry, cfg.kind)


def resolve_inputs(cfg: IngestConfig) -> list[InputFile]:
    """All input files in order, deduplicated, then this shard's part, then at most ``max_files``.

    Crawl ids and ``*.paths.gz`` URLs are expanded by fetching the listing.
    """
    if not cfg.inputs:
        raise ValueError("ingest.inputs is empty: give local WARC paths/globs, URLs or crawl ids")
    seen: set[str] = set()
    files: list[InputFile] = []
    for entry in cfg.inputs:
        for f in _expand_entry(entry, cfg):
            if f.uri not in seen:
                seen.add(f.uri)
                files.append(f)
    total = len(files)
    selected = files[cfg.shard_index :: cfg.num_shards][: cfg.max_files]
    if not selected:
        raise ValueError(
            f"no input files selected: {total} found for inputs {cfg.inputs}, "
            f"shard {cfg.shard_index} of {cfg.num_shards} keeps none"
        )
    return selected


def crawl_order(crawl_id: str) -> tuple[int, int]:
    """(year, week) of a ``CC-MAIN-YYYY-WW`` id: later crawls sort higher."""
    year, week = crawl_id.removeprefix("CC-MAIN-").split("-")
    return int(year), int(week)


def list_crawls(index_url: str, cfg: DownloadConfig) -> list[str]:
    """The ``CC-MAIN-YYYY-WW`` ids in a ``collinfo.json`` (a JSON list of ``{"id": ...}``), newest first.

    The order comes from the ids, not from the file; entries with other ids (the
    2008-2012 ARC crawls) are ignored.
    """
    body = read_remote_bytes(index_url, cfg)
    try:
        entries = json.loads(body)
    except ValueError as error:
        raise ValueError(f"crawl index {index_url}: not JSON ({error})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
        raise ValueError(f"crawl index {index_url}: expected a JSON list of objects with an `id`")
    crawls = sorted({e["id"] for e in entries if CRAWL_ID.match(str(e["id"]))}, key=crawl_order, reverse=True)
    if not crawls:
        raise ValueError(f"crawl index {index_url}: no crawl id of the form CC-MAIN-YYYY-WW among {len(entries)} entries")
    return crawls


def newest_crawl(index_url: str, cfg: DownloadConfig) -> str:
    return list_crawls(index_url, cfg)[0]


def input_identity(f: InputFile) -> str:
    """A string that changes when the file's content may have changed.

    Local files: absolute path, size and mtime. Remote files: the URL alone, since
    Common Crawl files are immutable once published (a re-published remote file under
    the same URL would not be noticed).
    """
    if f.kind == "local":
        stat = os.stat(f.uri)
        return f"{os.path.abspath(f.uri)}|{stat.st_size}|{stat.st_mtime_ns}"
    return f.uri
