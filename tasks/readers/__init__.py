"""Readers of curated sources into the document schema: one module per kind of input.

Every reader module has the same small interface, which ``tasks.ingest.ingest_records`` drives:

- ``DEFAULT_SOURCE``: the ``source`` tag of its documents unless ``IngestConfig.source`` sets one
  (None: generic readers, where a record's own ``source`` field, else the input's name, is used);
- ``REASONS``: the drop reasons it counts (the report lists them, ``flows.ingest.STAGE`` declares them);
- ``read(path, part, cfg, counts) -> Iterator[Record]``: streams the records of one local file (or of one
  ``Part`` of it), counting every record it reads under ``records_read`` and every one it skips under
  a reason in ``counts``; it never loads the file whole;
- optionally ``parts(path, cfg) -> list[Part]``: how one file splits over several tasks (a multistream
  Wikipedia dump by its index); without it a file is one task.

``tasks.readers.detect.detect_kind`` tells the kind of a file from its content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from tasks.readers import arxiv, generic, wikipedia

READER_KINDS = ("wikipedia", "arxiv", "jsonl", "parquet", "hf")  # besides warc, which tasks/warc.py reads


@dataclass(frozen=True)
class Part:
    """The piece of an input file one task reads: all of it, or bytes [start, end) (a multistream dump)."""

    index: int = 0
    count: int = 1
    start: int | None = None
    end: int | None = None

    @property
    def whole(self) -> bool:
        return self.count == 1 and self.start is None


WHOLE = Part()


class Record(NamedTuple):
    """One document as a reader found it; ``tasks.ingest`` adds the id, source tag and language."""

    record_id: str  # stable within the source: a page id, an arXiv id, a dataset's id field
    text: str
    url: str | None = None
    fetch_time: datetime | None = None  # e.g. a Wikipedia revision's timestamp
    source: str | None = None  # a generic record's own `source` field


def reader(kind: str):
    """The reader module of ``kind`` (one of READER_KINDS)."""
    modules = {"wikipedia": wikipedia, "arxiv": arxiv, "jsonl": generic, "parquet": generic, "hf": generic}
    if kind not in modules:
        raise ValueError(f"no reader for kind {kind!r}; the kinds are warc, {', '.join(READER_KINDS)}")
    return modules[kind]


def parts_of(kind: str, path: Path, cfg) -> list[Part]:
    module = reader(kind)
    return module.parts(path, cfg) if hasattr(module, "parts") else [WHOLE]
