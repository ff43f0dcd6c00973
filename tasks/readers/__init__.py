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

from pathlib import Path

from tasks.readers import arxiv, generic, wikipedia
from tasks.readers.records import WHOLE, Part, Record

__all__ = ["READER_KINDS", "WHOLE", "Part", "Record", "parts_of", "reader"]

READER_KINDS = ("wikipedia", "arxiv", "jsonl", "parquet", "hf")  # besides warc, which tasks/warc.py reads


def reader(kind: str):
    """The reader module of ``kind`` (one of READER_KINDS)."""
    modules = {"wikipedia": wikipedia, "arxiv": arxiv, "jsonl": generic, "parquet": generic, "hf": generic}
    if kind not in modules:
        raise ValueError(f"no reader for kind {kind!r}; the kinds are warc, {', '.join(READER_KINDS)}")
    return modules[kind]


def parts_of(kind: str, path: Path, cfg) -> list[Part]:
    module = reader(kind)
    return module.parts(path, cfg) if hasattr(module, "parts") else [WHOLE]
