"""One input shard -> one shard of synthetic documents: every document in, one generation out.

An output row keeps the input's document columns, with ``source`` "synthetic", a new ``id``
(a hash of the parent's id, the template and the seed), ``text`` the generation, and
``parent_id`` and ``template``. A generation that comes out empty is still written (N documents
in, N out: a row per parent) and counted as ``empty_generation``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.shards import DOCUMENT_SCHEMA, ShardWriter, check_document_shard
from tasks.synthesis.generate import Synthesizer

SOURCE = "synthetic"
SYNTHETIC_SCHEMA = pa.schema([*DOCUMENT_SCHEMA, pa.field("parent_id", pa.string()), pa.field("template", pa.string())])


def synthetic_id(parent_id: str, template: str, seed: int) -> str:
    return hashlib.sha256(f"{SOURCE}\x00{parent_id}\x00{template}\x00{seed}".encode()).hexdigest()[:32]


def read_documents(path: Path, limit: int | None) -> list[dict]:
    """The shard's first ``limit`` documents (all by default), with every document column (None where absent)."""
    schema = check_document_shard(path, required=("id", "text"))
    columns = [name for name in DOCUMENT_SCHEMA.names if name in schema.names]
    table = pq.read_table(path, columns=columns)
    if limit is not None:
        table = table.slice(0, limit)
    return [{name: row.get(name) for name in DOCUMENT_SCHEMA.names} for row in table.to_pylist()]


def synthesize_held(synthesizer: Synthesizer, in_path: Path, out_path: Path) -> dict:
    """Rephrase the documents of ``in_path`` into ``out_path`` (written atomically), in batches of the
    shard's order; the counts."""
    config, template = synthesizer.config, synthesizer.template.name
    documents = read_documents(Path(in_path), config.max_documents)
    counts = Counter(documents_in=len(documents))
    with ShardWriter(Path(out_path), SYNTHETIC_SCHEMA) as writer:
        for start in range(0, len(documents), config.batch_size):
            batch = documents[start:start + config.batch_size]
            generations = synthesizer.generate([(doc["id"], doc["text"] or "") for doc in batch])
            for doc, generation in zip(batch, generations):
                counts["generated_tokens"] += generation.tokens
                counts["document_truncated"] += generation.truncated
                counts["empty_generation"] += not generation.text
                writer.write({**doc, "id": synthetic_id(doc["id"], template, config.seed), "source": SOURCE,
                              "text": generation.text, "parent_id": doc["id"], "template": template})
    return {"input": str(in_path), "output": str(out_path), "documents": writer.rows_written, **counts}
