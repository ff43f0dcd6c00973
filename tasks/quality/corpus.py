"""Read training text from text files, JSONL or Parquet (local paths, globs or folders)."""

from __future__ import annotations

import glob
import gzip
import json
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from tasks.sampling import reservoir_sample

TEXT_SUFFIXES = (".txt", ".txt.gz", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return any(path.name.endswith(suffix) for suffix in suffixes)


def corpus_files(specs: list[str]) -> list[Path]:
    """Expand paths, globs and folders (sorted); an entry that matches nothing is an error."""
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and _has_suffix(p, KNOWN_SUFFIXES))
        else:
            matches = sorted(Path(p) for p in glob.glob(spec)) if glob.has_magic(spec) else [path] * path.is_file()
        if not matches:
            raise FileNotFoundError(f"no corpus files for {spec!r} (text: .txt[.gz], JSONL, Parquet)")
        files += [m for m in matches if m not in files]
    return files


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8", errors="replace") if path.name.endswith(".gz") \
        else open(path, encoding="utf-8", errors="replace")


def iter_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """Documents of one file: a text file's blank-line-separated paragraphs joined per ~file chunk,
    a JSONL line's ``text_field``, or a Parquet row's ``text_field`` column."""
    if _has_suffix(path, PARQUET_SUFFIXES):
        source = pq.ParquetFile(path)
        if text_field not in source.schema_arrow.names:
            raise ValueError(f"{path}: no `{text_field}` column (has {source.schema_arrow.names})")
        for batch in source.iter_batches(batch_size=1000, columns=[text_field]):
            yield from (text for text in batch.column(0).to_pylist() if text)
    elif _has_suffix(path, JSONL_SUFFIXES):
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        text = json.loads(line).get(text_field)
                    except (json.JSONDecodeError, AttributeError) as error:
                        raise ValueError(f"{path}:{number}: not a JSON object with `{text_field}`: {error}") from None
                    if text:
                        yield text
    else:
        with _open_text(path) as handle:
            yield from _paragraph_documents(handle)


def _paragraph_documents(lines, target_chars: int = 3000) -> Iterator[str]:
    """Cut a long text (a book) into documents of whole paragraphs, about ``target_chars`` each."""
    paragraphs: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if line.strip():
            current.append(line.strip())
            continue
        if current:
            paragraphs.append(" ".join(current))
            size += len(paragraphs[-1])
            current = []
        if size >= target_chars:
            yield "\n".join(paragraphs)
            paragraphs, size = [], 0
    if current:
        paragraphs.append(" ".join(current))
    if paragraphs:
        yield "\n".join(paragraphs)


def iter_corpus(specs: list[str], text_field: str = "text") -> Iterator[str]:
    for path in corpus_files(specs):
        yield from iter_documents(path, text_field)


def sample_corpus(specs: list[str], max_documents: int, seed: int = 0, text_field: str = "text") -> list[str]:
    """Up to ``max_documents`` documents drawn uniformly (reservoir sampling, fixed seed)."""
    return reservoir_sample(iter_corpus(specs, text_field), max_documents, seed)


def check_distinct_corpora(positive: list[str], negative: list[str]) -> None:
    """The same file as both positives and negatives teaches the quality classifier nothing: refuse it by name."""
    both = sorted({p.resolve() for p in corpus_files(positive)} & {p.resolve() for p in corpus_files(negative)})
    if both:
        raise ValueError(f"{len(both)} file(s) given as both positives and negatives, e.g. {both[0]}: "
                         f"--positive takes reference text, --negative web documents")


def corpus_identity(specs: list[str]) -> list[str]:
    """What a trained model depends on: each file's path, size and mtime."""
    identities = []
    for path in corpus_files(specs):
        stat = path.stat()
        identities.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return identities
