"""Real documents with planted duplicates: the ground truth that dedup recall is measured on.

Originals are real text: main text extracted from web pages and ~1500-word
chunks of books. Copies are made the ways the web makes them:

* ``exact``: the same text;
* ``boilerplate``: a navigation / cookie / footer block prepended or appended,
  or the first or last lines removed;
* ``edit``: 2-5% of the words replaced, inserted or deleted;
* ``truncate``: only the first 85-95% of the words;
* ``combo``: boilerplate, then 2-3% edits, then 88-95% truncation.

``true_jaccard`` and ``max_similarity`` compute exact 5-gram Jaccard similarity
on the normalized words (``tasks.dedup.text.words``), so a report can separate
planted pairs from real near-duplicates that the originals already contain.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.decode import decode_html
from tasks.dedup.buckets import EDGE_RECORD
from tasks.dedup.layout import Layout, key_slots, save_npy
from tasks.dedup.text import words
from tasks.extract import extract_text
from tasks.shards import DOCUMENT_SCHEMA

BOILERPLATE = (
    "Home | News | Sport | Business | Culture | Contact us\nSearch this site",
    ("We use cookies to give you the best experience on our website. By continuing you accept our use of "
     "cookies.\nAccept all cookies | Manage preferences"),
    "Subscribe to our newsletter and never miss a story. Enter your email address below.",
    ("Copyright 2024 Example Media Group. All rights reserved.\nPrivacy policy | Terms of use | Cookie settings | "
     "Accessibility | Site map"),
    "Share this article: Facebook Twitter LinkedIn Email Print\nRelated articles you may also like",
    "Skip to main content\nMenu\nLog in | Register | My account",
)
COPY_KINDS = ("exact", "boilerplate", "edit", "truncate", "combo")


@dataclass
class Document:
    id: str
    url: str
    text: str


@dataclass
class PlantedDataset:
    documents: list[Document]
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (original id, copy id, kind)
    url_pairs: list[tuple[str, str]] = field(default_factory=list)  # (original id, same-URL document id)


def web_pages(extraction_dev: Path, min_words: int = 50) -> list[Document]:
    """Main text of the real pages (our `fast` extractor), those with at least ``min_words`` words."""
    expectations = json.loads((extraction_dev / "expectations.json").read_text())
    pages = []
    for key in sorted(expectations):
        raw = gzip.decompress((extraction_dev / "html" / f"{key}.html.gz").read_bytes())
        text = extract_text(decode_html(raw), "fast").strip()
        if len(text.split()) >= min_words:
            url = (expectations[key].get("url") or f"https://example.org/{key}").strip()
            pages.append(Document(f"page-{key}", url, text))
    return pages


def book_chunks(reference: Path, chunk_words: int = 1500, per_book: int | None = 20) -> list[Document]:
    """Consecutive chunks of about ``chunk_words`` words (whole lines) of every book."""
    chunks = []
    for path in sorted(reference.glob("*/*.txt.gz")):
        lines, count, n = [], 0, 0
        for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines():
            lines.append(line)
            count += len(line.split())
            if count >= chunk_words:
                if per_book is not None and n >= per_book:
                    break
                name = path.name.removesuffix(".txt.gz")
                chunks.append(Document(f"book-{name}-{n:04d}", f"https://books.example/{name}/{n}", "\n".join(lines)))
                lines, count, n = [], 0, n + 1
    return chunks


def add_boilerplate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    action = rng.choice(("prepend", "append", "both", "remove"))
    if action == "remove" and len(lines) > 4:
        cut = rng.randint(1, 2)
        return "\n".join(lines[cut:] if rng.random() < 0.5 else lines[:-cut])
    head = rng.choice(BOILERPLATE) if action in ("prepend", "both", "remove") else ""
    tail = rng.choice(BOILERPLATE) if action in ("append", "both") else ""
    return "\n".join(part for part in (head, text, tail) if part)


def edit_words(text: str, fraction: float, rng: random.Random, vocabulary: list[str]) -> str:
    """Replace, insert or delete about ``fraction`` of the words (lines are flattened)."""
    out = []
    for word in text.split():
        if rng.random() >= fraction:
            out.append(word)
            continue
        action = rng.choice(("replace", "insert", "delete"))
        if action == "replace":
            out.append(rng.choice(vocabulary))
        elif action == "insert":
            out += [word, rng.choice(vocabulary)]
    return " ".join(out)


def truncate(text: str, fraction: float) -> str:
    tokens = text.split(" ")
    return " ".join(tokens[: max(1, round(len(tokens) * fraction))])


def make_copy(text: str, kind: str, rng: random.Random, vocabulary: list[str]) -> str:
    if kind == "exact":
        return text
    if kind == "boilerplate":
        return add_boilerplate(text, rng)
    if kind == "edit":
        return edit_words(text, rng.uniform(0.02, 0.05), rng, vocabulary)
    if kind == "truncate":
        return truncate(text, rng.uniform(0.85, 0.95))
    assert kind == "combo"
    edited = edit_words(add_boilerplate(text, rng), rng.uniform(0.02, 0.03), rng, vocabulary)
    return truncate(edited, rng.uniform(0.88, 0.95))


def plant(originals: list[Document], rng: random.Random, copy_fraction: float = 0.4,
          spare: list[Document] = (), url_duplicates: int = 0) -> PlantedDataset:
    """Copy ``copy_fraction`` of the originals (1 or 2 copies each, at other URLs); then give
    ``url_duplicates`` other originals a same-URL document whose text comes from ``spare``."""
    vocabulary = sorted({w for doc in originals[:50] for w in doc.text.split() if w.isalpha()})
    data = PlantedDataset(list(originals))
    chosen = rng.sample(range(len(originals)), round(copy_fraction * len(originals)))
    for index in chosen:
        original = originals[index]
        for k in range(1 if rng.random() < 0.7 else 2):
            kind = rng.choice(COPY_KINDS)
            copy = Document(f"{original.id}-copy{k}-{kind}", f"https://mirror{k}.example/{original.id}",
                            make_copy(original.text, kind, rng, vocabulary))
            data.documents.append(copy)
            data.pairs.append((original.id, copy.id, kind))
    copied = set(chosen)
    others = [i for i in range(len(originals)) if i not in copied]
    for index, extra in zip(rng.sample(others, min(url_duplicates, len(others))), spare):
        original = originals[index]
        rest = original.url.split("://", 1)[-1]
        variant = "http://" + (rest[4:] if rest.startswith("www.") else f"www.{rest}") + "#recrawl"
        data.documents.append(Document(f"{original.id}-samepage", variant, extra.text))
        data.url_pairs.append((original.id, f"{original.id}-samepage"))
    return data


def write_shards(documents: list[Document], folder: Path, n_shards: int, rng: random.Random) -> list[Path]:
    """Shuffle the documents into ``n_shards`` Parquet shards with the ingest schema."""
    order = list(documents)
    rng.shuffle(order)
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(n_shards):
        rows = [
            {"id": doc.id, "source": "planted", "url": doc.url, "crawl": "CC-MAIN-2024-10",
             "warc_path": f"planted-{shard}.warc.gz", "warc_record_id": f"<urn:uuid:{doc.id}>",
             "fetch_time": start + timedelta(minutes=i), "lang": None, "lang_score": None, "text": doc.text}
            for i, doc in enumerate(order[shard::n_shards])
        ]
        path = folder / f"planted-{shard:02d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), path, compression="zstd")
        paths.append(path)
    return paths


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def true_jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def max_similarity(texts: list[str], n: int = 5) -> list[float]:
    """Per text, its largest exact n-gram Jaccard similarity with any other text (inverted index)."""
    sets = [shingles(text, n) for text in texts]
    postings: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for shingle in s:
            postings[shingle].append(i)
    best = [0.0] * len(texts)
    for i, s in enumerate(sets):
        shared = Counter(j for shingle in s for j in postings[shingle] if j != i)
        for j, common in shared.items():
            best[i] = max(best[i], common / (len(s) + len(sets[j]) - common))
    return best


def write_stage2_folder(folder: Path, ref_a, ref_b, n_shards: int, rows: int, config, rng,
                        word_range: tuple[int, int] = (1, 40)) -> tuple:
    """A dedup output folder as stages 1 and 2 leave it, for the edges ``(ref_a[i], ref_b[i])`` (refs as
    ``buckets.make_refs`` makes them): ``n_shards`` input shards of ``rows`` ids (``<shard>-<row>``) under
    ``folder/in``, stage 1's word counts drawn from ``word_range``, and the edges spread at random over every
    (slot, partition) edge file of ``config``. Returns ``(layout, shard names, input paths)``; for the
    clustering stage's tests and ``bench/components.py``."""
    layout, names, inputs = Layout(folder), [f"s{i:02d}" for i in range(n_shards)], []
    for shard in names:
        path = folder / "in" / f"{shard}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"{shard}-{row}" for row in range(rows)]}), path)
        inputs.append(path)
        save_npy(layout.shard_file(shard, "words"), rng.integers(*word_range, rows).astype(np.uint32))
    files = [layout.edges(slot, part) for slot in key_slots(config) for part in range(config.hash_partitions)]
    where = rng.integers(0, len(files), ref_a.size)
    for i, path in enumerate(files):
        edges = np.empty(int((where == i).sum()), dtype=EDGE_RECORD)
        edges["a"], edges["b"] = ref_a[where == i], ref_b[where == i]
        save_npy(path, edges)
    return layout, names, inputs
