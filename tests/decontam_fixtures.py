"""Documents for the decontamination tests and bench/decontaminate.py: clean real text and planted items.

Clean documents are paragraph chunks of the English books in ../shared/data/reference/en (hard-wrapped
lines joined, consecutive paragraphs grouped until a chunk holds at least ``min_chars``, a chunk closed
before a paragraph would take it past ``max_chars``); those of 1-3 KB are taken evenly across the books.
A planted document is one HellaSwag item's gold context and continuation, the text the model is scored
on, between two stretches of book text (filler chunks, none of them a clean document, so no clean
document's text is repeated in a planted one).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.evaluation.items import Item

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def book_chunks(folder: Path, min_chars: int = 1000, max_chars: int = 3000) -> list[dict]:
    """Every chunk of every book in ``folder`` (``*.txt.gz``), in book order, as documents (id, source, text)."""
    chunks = []
    for path in sorted(folder.glob("*.txt.gz")):
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        paragraphs = [" ".join(part.split()) for part in PARAGRAPH_BREAK.split(text) if part.strip()]
        current: list[str] = []
        for paragraph in paragraphs:
            if current and sum(map(len, current)) + len(paragraph) > max_chars:
                chunks.append(_chunk(path, len(chunks), current))
                current = []
            current.append(paragraph)
            if sum(map(len, current)) >= min_chars:
                chunks.append(_chunk(path, len(chunks), current))
                current = []
    return chunks


def _chunk(path: Path, number: int, paragraphs: list[str]) -> dict:
    return {"id": f"book:{path.name.removesuffix('.txt.gz')}:{number}", "source": "books",
            "text": "\n\n".join(paragraphs)}


def clean_and_filler(folder: Path, clean: int, filler: int) -> tuple[list[dict], list[dict]]:
    """``clean`` chunks spread evenly across all the books, and ``filler`` other chunks for planting."""
    chunks = [chunk for chunk in book_chunks(folder) if 1000 <= len(chunk["text"]) <= 3000]
    if len(chunks) < clean + filler:
        raise ValueError(f"{folder} gives {len(chunks)} chunks of 1-3 KB, fewer than {clean} + {filler}")
    step = len(chunks) / clean
    chosen = {int(i * step) for i in range(clean)}
    rest = [chunk for i, chunk in enumerate(chunks) if i not in chosen]
    return [chunks[i] for i in sorted(chosen)], rest[:filler]


def gold_text(item: Item) -> str:
    """The gold request as the scorer sees it: context then continuation."""
    context, continuation = item.requests[item.gold]
    return context + continuation


def planted_documents(items: list[Item], filler: list[dict]) -> list[dict]:
    """One document per item: half a filler chunk, the item's gold text, the next filler chunk's other half."""
    docs = []
    for i, item in enumerate(items):
        before, after = filler[i % len(filler)]["text"], filler[(i + 1) % len(filler)]["text"]
        text = f"{before[: len(before) // 2]}\n\n{gold_text(item)}\n\n{after[len(after) // 2:]}"
        docs.append({"id": f"planted:{item.task}:{item.doc_id}", "source": "planted", "text": text})
    return docs


def write_shards(docs: list[dict], folder: Path, shards: int) -> list[Path]:
    """The documents dealt round-robin into ``shards`` Parquet files (``part-00000.parquet``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(shards):
        part = docs[number::shards]
        path = folder / f"part-{number:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(part, schema=pa.schema([("id", pa.string()), ("source", pa.string()),
                                                                    ("text", pa.string())])), path)
        paths.append(path)
    return paths
