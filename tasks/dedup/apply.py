"""Stage 4, one task per shard: write the kept rows with their ``dup_cluster``.

Streams the input shard in row groups; memory holds one row group plus the
shard's cluster table (its documents that have duplicates). Every input column
is kept; ``dup_cluster`` (string, the kept document's id; null for documents
without duplicates) is appended, replacing any earlier one. The output is
written under a temporary name and renamed, and its bytes depend only on the
input and the cluster table.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.provenance import part_path
from tasks.shards import COMPRESSION, ROWS_PER_GROUP

CLUSTER_COLUMN = "dup_cluster"


def output_schema(schema: pa.Schema) -> pa.Schema:
    if CLUSTER_COLUMN in schema.names:
        schema = schema.remove(schema.get_field_index(CLUSTER_COLUMN))
    return schema.append(pa.field(CLUSTER_COLUMN, pa.string()))


def read_cluster_table(path: Path) -> tuple[dict[int, str], dict[int, str]]:
    """(row -> dup_cluster for every clustered row, row -> drop reason for dropped rows)."""
    table = pq.read_table(path, columns=["row", "dup_cluster", "kept", "reason"]).to_pydict()
    clusters = dict(zip(table["row"], table["dup_cluster"]))
    rows = zip(table["row"], table["kept"], table["reason"])
    dropped = {row: f"{reason}_duplicate" for row, kept, reason in rows if not kept}
    return clusters, dropped


def with_clusters(batch: pa.RecordBatch, first_row: int, clusters: dict[int, str], schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_batches([batch])
    if CLUSTER_COLUMN in table.column_names:
        table = table.drop_columns([CLUSTER_COLUMN])
    column = pa.array([clusters.get(row) for row in range(first_row, first_row + batch.num_rows)], pa.string())
    return table.append_column(CLUSTER_COLUMN, column).cast(schema)


def write_deduped_shard(input_path: Path, cluster_table: Path, output_path: Path) -> dict:
    """Copy the kept rows of ``input_path`` to ``output_path``; returns counts by reason."""
    started = time.perf_counter()
    clusters, dropped = read_cluster_table(cluster_table)
    source = pq.ParquetFile(input_path)
    schema = output_schema(source.schema_arrow)
    if clusters and max(clusters) >= source.metadata.num_rows:
        raise ValueError(f"{cluster_table} names row {max(clusters)}, "
                         f"but {input_path} has {source.metadata.num_rows} rows")
    reasons: Counter = Counter()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(output_path)
    first_row = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
            for batch in source.iter_batches(batch_size=ROWS_PER_GROUP):
                rows = range(first_row, first_row + batch.num_rows)
                keep = np.array([row not in dropped for row in rows], dtype=bool)
                reasons.update(dropped[row] for row in rows if row in dropped)
                writer.write_table(with_clusters(batch, first_row, clusters, schema).filter(keep))
                first_row += batch.num_rows
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(output_path)
    return {
        "shard": output_path.stem,
        "documents": first_row,
        "kept": first_row - sum(reasons.values()),
        "dropped": dict(sorted(reasons.items())),
        "seconds": round(time.perf_counter() - started, 3),
    }
