"""Which reader an input file needs, told from its content (its first bytes), not its name.

Compressed files (gzip, bzip2, zstd) are looked into: a ``.gz`` may be a WARC, JSON lines or an arXiv paper.
A folder is a Hugging Face dataset saved to disk when it holds ``state.json`` or ``dataset_dict.json``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import tarfile
from pathlib import Path

SNIFF_BYTES = 64 << 10
ARROW_STREAM = b"\xff\xff\xff\xff"  # an Arrow IPC stream's continuation marker (what save_to_disk writes)


class UnknownKind(ValueError):
    """No reader recognises the file: the message names it and what its first bytes look like."""


def _head(path: Path, size: int = SNIFF_BYTES) -> tuple[bytes, str | None]:
    """The first ``size`` bytes of the file's content, decompressed; and the compression it is under."""
    with open(path, "rb") as handle:
        raw = handle.read(size)
    try:
        if raw[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                return handle.read(size), "gzip"
        if raw[:3] == b"BZh":
            with bz2.open(path, "rb") as handle:
                return handle.read(size), "bzip2"
        if raw[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
                return reader.read(size), "zstd"
    except Exception as error:  # OSError, EOFError, zlib.error, zstandard.ZstdError: whatever the codec says is unreadable
        raise UnknownKind(f"{path}: its compressed content cannot be read ({type(error).__name__}: {error})") from None
    return raw, None


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def is_hf_dataset(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def detect_kind(path: str | Path) -> str:
    """warc, wikipedia, arxiv, jsonl, parquet or hf; an UnknownKind error saying what was found otherwise."""
    path = Path(path)
    if is_hf_dataset(path):
        return "hf"
    head, compression = _head(path)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:4] == ARROW_STREAM or head[:6] == b"ARROW1":
        return "hf"
    if head.startswith(b"WARC/"):
        return "warc"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<") and b"<mediawiki" in head[:4096]:
        return "wikipedia"
    if _is_tar(head):
        return "arxiv" if _looks_like_arxiv_tar(path) else _unknown(path, "a tar archive that holds no arXiv papers")
    if compression == "gzip" and (b"\\documentclass" in head or b"\\begin{document}" in head):
        return "arxiv"  # one paper's gzipped .tex
    if text.startswith(b"{"):
        return "jsonl"
    return _unknown(path, f"starts with {head[:24]!r}" + (f" (under {compression})" if compression else ""))


def _looks_like_arxiv_tar(path: Path, members: int = 20) -> bool:
    """A bulk source tarball: its first members are per-paper .gz (or .pdf) files, or .tex files."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for count, member in enumerate(archive):
                if count >= members:
                    break
                if member.isfile() and member.name.endswith((".gz", ".pdf", ".tex")):
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def _unknown(path: Path, what: str) -> str:
    raise UnknownKind(f"{path}: not a kind the readers know ({what}); give --kind warc, wikipedia, arxiv, jsonl, "
                      f"parquet or hf")
