"""Generic datasets: JSON lines (plain, gzip, zstd), Parquet, and Hugging Face datasets saved to disk.

Fields map by name: the text from ``cfg.text_field``; the id from ``cfg.id_field``, else ``id`` when present, else
the record's position (``<file name>:<n>``); ``url`` and ``source`` when present. A ``save_to_disk`` folder holds
Arrow IPC *stream* files listed in ``state.json`` (a DatasetDict: ``dataset_dict.json`` and a folder per split); they
are read batch by batch with pyarrow, without ``datasets``.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from tasks.readers.records import Record

DEFAULT_SOURCE = None
REASONS: tuple[str, ...] = ("bad_json", "missing_text_field", "text_not_string", "empty_text")
BATCH_ROWS = 1024


def read(path: Path, part, cfg, counts: Counter) -> Iterator[Record]:
    path = Path(path)
    if cfg.kind == "jsonl":
        rows = _jsonl_rows(path, counts)
        yield from _records(rows, path.name, cfg, counts)
    elif cfg.kind == "parquet":
        yield from _records(_batch_rows(_parquet_batches(path, cfg), path, cfg), path.name, cfg, counts)
    elif cfg.kind == "hf":
        for arrow in _arrow_files(path):
            yield from _records(_batch_rows(_arrow_batches(arrow), arrow, cfg), _label(arrow), cfg, counts)
    else:
        raise ValueError(f"the generic reader reads jsonl, parquet or hf, not {cfg.kind!r}")


def _records(rows: Iterable[tuple[int, dict | None]], label: str, cfg, counts: Counter) -> Iterator:
    """(position, row or None for an unparsable line) -> Records, one reason counted per row skipped."""
    for position, row in rows:
        counts["records_read"] += 1
        if row is None:
            counts["bad_json"] += 1
            continue
        text = row.get(cfg.text_field)
        if text is None:
            counts["missing_text_field"] += 1
            continue
        if not isinstance(text, str):
            counts["text_not_string"] += 1
            continue
        if not text.strip():
            counts["empty_text"] += 1
            continue
        record_id = row.get(cfg.id_field or "id")
        url, source = row.get("url"), row.get("source")
        yield Record(str(record_id) if record_id is not None else f"{label}:{position}", text,
                     url=url if isinstance(url, str) else None, source=source if isinstance(source, str) else None)


def _jsonl_rows(path: Path, counts: Counter) -> Iterator[tuple[int, dict | None]]:
    with _open_binary(path) as handle:
        for position, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            yield position, row if isinstance(row, dict) else None


def _open_binary(path: Path):
    """The file's content as a binary stream, decompressed by its magic bytes (gzip, zstd) or as it is."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"\x28\xb5\x2f\xfd":
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - closed with the reader (closefd)
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _columns(schema: pa.Schema, path: Path, cfg) -> list[str]:
    """The columns to read; a ValueError naming the field and the columns there are when one named is absent."""
    names = schema.names
    for option, field in (("text field", cfg.text_field), ("id field", cfg.id_field)):
        if field is not None and field not in names:
            raise ValueError(f"{path}: the {option} {field!r} is not a column; its columns are {', '.join(names)} "
                             f"(give --{option.replace(' ', '-')})")
    wanted = [cfg.text_field, cfg.id_field or "id", "url", "source"]
    return [name for name in dict.fromkeys(wanted) if name in names]


def _parquet_batches(path: Path, cfg) -> Iterator[pa.RecordBatch]:
    parquet = pq.ParquetFile(path)
    columns = _columns(parquet.schema_arrow, path, cfg)
    yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """An Arrow IPC stream (what ``save_to_disk`` writes) or IPC file, batch by batch over a memory map."""
    with pa.memory_map(str(path)) as source:
        if source.read(6) == b"ARROW1":
            source.seek(0)
            reader = pa.ipc.open_file(source)
            for index in range(reader.num_record_batches):
                yield reader.get_batch(index)
            return
        source.seek(0)
        yield from pa.ipc.open_stream(source)


def _batch_rows(batches: Iterator[pa.RecordBatch], path: Path, cfg) -> Iterator[tuple[int, dict]]:
    position = 0
    columns = None
    for batch in batches:
        if columns is None:
            columns = _columns(batch.schema, path, cfg)
        values = {name: batch.column(name).to_pylist() for name in columns}
        for row in range(batch.num_rows):
            yield position, {name: values[name][row] for name in columns}
            position += 1


def _arrow_files(path: Path) -> list[Path]:
    """One ``.arrow`` file, or a ``save_to_disk`` folder's (every split's, for a DatasetDict)."""
    if path.is_file():
        return [path]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        return [arrow for split in splits for arrow in _arrow_files(path / split)]
    try:
        state = json.loads((path / "state.json").read_text())
        return [path / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a Hugging Face dataset folder (state.json: {error})") from None


def _label(arrow: Path) -> str:
    """An Arrow file's name for position ids, with its split when it is in a DatasetDict (train/data-00000...)."""
    if (arrow.parent.parent / "dataset_dict.json").is_file():
        return f"{arrow.parent.name}/{arrow.name}"
    return arrow.name
