"""The Parquet document schema and atomic, deterministic shard writing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.provenance import part_path

DOCUMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("crawl", pa.string()),
        ("warc_path", pa.string()),
        ("warc_record_id", pa.string()),
        ("fetch_time", pa.timestamp("us", tz="UTC")),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("text", pa.string()),
    ]
)
ROWS_PER_GROUP = 2000
COMPRESSION = "zstd"


class AtomicOutput:
    """A file written under a temporary name: ``commit`` renames it into place, ``abort``
    removes it. As a context manager it commits on success and aborts on an exception."""

    def commit(self):
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:  # e.g. the disk filled up while the footer was written
            self.abort()
            raise


class ShardWriter(AtomicOutput):
    """Write rows in batches to a temporary file; ``commit`` renames it into place.

    Output depends only on the rows: no timestamps or random names end up in the
    file, so rerunning a shard gives identical bytes.
    """

    def __init__(self, path: Path, schema: pa.Schema = DOCUMENT_SCHEMA, rows_per_group: int = ROWS_PER_GROUP):
        self.path = path
        self.schema = schema
        self.rows_per_group = rows_per_group
        self.rows_written = 0
        self._pending: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = part_path(path)
        try:
            self._writer = pq.ParquetWriter(self._tmp, schema, compression=COMPRESSION)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def write(self, row: dict) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.rows_per_group:
            self._flush()

    def write_many(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.write(row)

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self.schema))
            self.rows_written += len(self._pending)
            self._pending = []

    def commit(self) -> Path:
        self._flush()
        self._writer.close()
        with open(self._tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()  # on a full disk this raises too: the file must go all the same
        except OSError:
            pass
        finally:
            self._tmp.unlink(missing_ok=True)


def check_document_shard(path: Path, required: tuple[str, ...] = ("text",)) -> pa.Schema:
    """The schema of a document shard, or a ValueError naming the file and what is wrong with it.

    ``required`` columns must exist; ``text``, ``id`` and ``url`` must hold strings.
    """
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    missing = [name for name in required if name not in schema.names]
    if missing:
        raise ValueError(f"{path}: a document shard needs column(s) {missing}, it has {schema.names}")
    for name in ("text", "id", "url"):
        if name in schema.names and not (pa.types.is_string(schema.field(name).type)
                                         or pa.types.is_large_string(schema.field(name).type)):
            raise ValueError(f"{path}: the `{name}` column must hold strings, it holds {schema.field(name).type}")
    return schema
