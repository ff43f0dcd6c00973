"""Byte-level BPE tokenizer and packed token shards, the training data format.

Layout of a tokenize output folder::

    tokenizer.json                 the tokenizer (trained here, or a copy of the given one)
    train/<shard>.bin              token ids, little-endian uint16 (vocab <= 65535) or uint32,
    val/<shard>.bin                every document followed by the EOS id, documents packed back to back
    index.json                     dtype, vocab size, EOS id, each file's tokens and documents, sources
    mixture/<shard>.parquet        with a mixture only: each train document's tokens (``tasks.mixture``)

The split is per document and depends only on its id (its text when there is no
id) and the seed. Mixture weights act on train documents only, so validation
keeps the natural distribution: weight 2.5 writes a document twice, plus a third
time for about half of the documents (chosen by hash); 0.3 keeps about 30 %.
Repeated copies are appended after the shard's first pass, not next to the
original. A mixture (``tokenize.mixture``, exclusive with weights) sets each source's share
of the train tokens instead; ``tasks.mixture`` plans it. ``TokenShards`` reads the folder
back for training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrain.config import TokenizeConfig, weight_problems
from pretrain.paths import parquet_files
from pretrain.provenance import atomic_write_bytes, atomic_write_text, part_path
from tasks.mixture import copies_in_plan, mixture_record, order_hash, parse_source_numbers, write_sidecar
from tasks.sampling import reservoir_sample
from tasks.shards import AtomicOutput

INDEX_FORMAT = 1
TOKENIZER_FILE = "tokenizer.json"
INDEX_FILE = "index.json"
PAD_TOKEN = "<|pad|>"
SPLITS = ("train", "val")
UNKNOWN_SOURCE = "unknown"
BATCH_ROWS = 1000
UINT16_MAX_VOCAB = 65535


class Document(NamedTuple):
    key: str  # what the split and the weight sampling hash: the id, else the text
    source: str
    text: str | None


# ---------------------------------------------------------------- inputs


def input_shards(input_dirs: list[str]) -> list[tuple[str, Path]]:
    """(output name, path) of every ``*.parquet`` in the folders; a name clash is resolved by the folder name."""
    paths: list[Path] = []
    for folder in input_dirs:
        paths += parquet_files(folder)
    stems = Counter(path.stem for path in paths)
    named = [(path.stem if stems[path.stem] == 1 else f"{path.parent.name}-{path.stem}", path) for path in paths]
    clashes = sorted(name for name, n in Counter(name for name, _ in named).items() if n > 1)
    if clashes:
        raise ValueError(f"input shards would share output names {clashes}; rename the shards or their folders")
    return named


def read_documents(path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[list[Document]]:
    """Batches of documents of one shard: ``text`` is required, ``id`` and ``source`` are optional."""
    shard = pq.ParquetFile(path)
    names = shard.schema_arrow.names
    if "text" not in names:
        raise ValueError(f"{path}: no `text` column (has {names})")
    columns = [c for c in ("text", "id", "source") if c in names]
    for batch in shard.iter_batches(batch_size=batch_rows, columns=columns):
        rows = batch.to_pydict()
        texts = rows["text"]
        ids = rows.get("id", [None] * len(texts))
        sources = rows.get("source", [None] * len(texts))
        yield [Document(key=doc_id or text or "", source=source or UNKNOWN_SOURCE, text=text)
               for text, doc_id, source in zip(texts, ids, sources)]


def sample_texts(paths: Iterable[Path], max_documents: int, seed: int) -> list[str]:
    """Up to ``max_documents`` non-empty texts drawn uniformly from the shards (reservoir sampling)."""
    def texts():
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["text"]):
                yield from (text for text in batch.column(0).to_pylist() if text)

    return reservoir_sample(texts(), max_documents, seed)


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int, eos_token: str) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): every byte has a token, so any text round-trips; EOS is id 0."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    return Tokenizer.from_file(str(path))


def eos_id(tokenizer: Tokenizer, eos_token: str) -> int:
    token_id = tokenizer.token_to_id(eos_token)
    if token_id is None:
        specials = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        raise ValueError(f"tokenizer has no EOS token {eos_token!r} (its added tokens: {specials}); "
                         f"set tokenize.eos_token")
    return token_id


def id_space(tokenizer: Tokenizer) -> int:
    """Largest token id + 1: what an embedding table must hold (``vocab_size`` in index.json)."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


def build_tokenizer(shard_paths: list[Path], config: TokenizeConfig, output_dir: Path) -> dict:
    """Train (on a sample of the shards) or load the tokenizer and write ``OUTPUT/tokenizer.json``."""
    if config.tokenizer:
        data = Path(config.tokenizer).read_bytes()
        tokenizer, sampled = load_tokenizer(config.tokenizer), 0
    else:
        texts = sample_texts(shard_paths, config.train_max_documents, config.seed)
        if not texts:
            raise ValueError("the input shards hold no text to train a tokenizer on")
        tokenizer, sampled = train_tokenizer(texts, config.vocab_size, config.eos_token), len(texts)
        data = tokenizer.to_str().encode("utf-8")
    eos = eos_id(tokenizer, config.eos_token)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output_dir / TOKENIZER_FILE, data)
    return {"source": config.tokenizer or "trained", "documents_sampled": sampled, "vocab_size": id_space(tokenizer),
            "requested_vocab_size": None if config.tokenizer else config.vocab_size,
            "eos_id": eos, "eos_token": config.eos_token, "sha256": hashlib.sha256(data).hexdigest()}


def vocab_shortfall(tokenizer_meta: dict) -> str | None:
    """A warning when the sample supported fewer tokens than asked for (BPE stops when no pair repeats)."""
    requested, trained = tokenizer_meta.get("requested_vocab_size"), tokenizer_meta["vocab_size"]
    if requested is None or trained >= requested:
        return None
    return (f"vocab_size {requested:,} requested, but the {tokenizer_meta['documents_sampled']:,} sampled documents "
            f"support only {trained:,} tokens: the tokenizer has {trained:,} (recorded in index.json); "
            f"give more text or a vocab_size of at most {trained:,}")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- split and weights


def unit_hash(purpose: str, seed: int, key: str) -> float:
    """A deterministic number in [0, 1) per (purpose, seed, document key)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=f"{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(key: str, seed: int, val_fraction: float) -> str:
    return "val" if unit_hash("split", seed, key) < val_fraction else "train"


def copies_of(key: str, seed: int, weight: float) -> int:
    """How often a train document is written: the weight's integer part, plus one with the fraction's chance."""
    whole = math.floor(weight)
    return whole + (unit_hash("weight", seed, key) < weight - whole)


def parse_weights(specs: str | list[str]) -> dict[str, float]:
    """``"web=1,books=2.5"`` (or a list of such strings) to ``{"web": 1.0, "books": 2.5}``."""
    weights = parse_source_numbers(specs, "weights")
    check_weights(weights)
    return weights


def check_weights(weights: dict[str, float]) -> None:
    if problem := weight_problems(weights):
        raise ValueError(problem)


def shard_sources(path: Path) -> Counter:
    """Documents per ``source`` of one shard (reads only that column; no column: all ``unknown``)."""
    shard = pq.ParquetFile(path)
    if "source" not in shard.schema_arrow.names:
        return Counter({UNKNOWN_SOURCE: shard.metadata.num_rows})
    counts: Counter = Counter()
    for batch in shard.iter_batches(batch_size=100_000, columns=["source"]):
        for entry in pc.value_counts(batch.column(0)).to_pylist():
            counts[entry["values"] or UNKNOWN_SOURCE] += entry["counts"]
    return counts


def check_weight_sources(weights: dict[str, float], present: Counter) -> None:
    """A weight for a source that no input document has would be silently ignored: refuse it."""
    unknown = sorted(set(weights) - set(present))
    if unknown:
        listed = ", ".join(f"{source} ({n} documents)" for source, n in sorted(present.items())) or "none"
        raise ValueError(f"weights name source(s) {unknown} that no input document has; "
                         f"the inputs' sources: {listed}")


# ---------------------------------------------------------------- output size


class ShardSurvey(NamedTuple):
    documents: int
    text_bytes: int  # from the Parquet metadata: the text column's uncompressed size, less its length prefixes
    sources: Counter


def survey_shard(path: Path) -> ShardSurvey:
    metadata = pq.ParquetFile(path).metadata
    text = metadata.schema.to_arrow_schema().get_field_index("text")
    chunk_bytes = sum(metadata.row_group(g).column(text).total_uncompressed_size for g in range(metadata.num_row_groups))
    return ShardSurvey(metadata.num_rows, max(0, chunk_bytes - 4 * metadata.num_rows), shard_sources(path))


def bytes_per_token(tokenizer_path: Path, shard_paths: list[Path], max_documents: int = 200) -> float:
    """UTF-8 bytes of text per token (EOS included) on the first documents of the shards."""
    tokenizer = load_tokenizer(tokenizer_path)
    texts: list[str] = []
    for path in shard_paths:
        texts += [doc.text for doc in next(read_documents(path, batch_rows=max_documents), []) if doc.text]
        if len(texts) >= max_documents:
            break
    texts = texts[:max_documents]
    tokens = sum(len(e.ids) + 1 for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / tokens if tokens else 1.0


def estimated_tokens(surveys: list[ShardSurvey], config: TokenizeConfig, text_per_token: float) -> int:
    """Tokens all shards will write: raw tokens x (val share + train share x the shard's mean weight)."""
    total = 0.0
    for survey in surveys:
        if not survey.documents:
            continue
        raw = survey.text_bytes / text_per_token + survey.documents  # + one EOS per document
        weight = sum(n * config.weights.get(source, 1.0) for source, n in survey.sources.items()) / survey.documents
        total += raw * (config.val_fraction + (1 - config.val_fraction) * weight)
    return math.ceil(total)


def free_bytes(folder: Path) -> int:
    """Free space where ``folder`` is (or will be), plus the token files it holds (a rerun replaces them)."""
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    replaced = sum(p.stat().st_size for split in SPLITS for p in (folder / split).glob("*.bin")) \
        if folder.is_dir() else 0
    return shutil.disk_usage(existing).free + replaced


def check_free_space(folder: Path, needed: int, how: str = "") -> None:
    """Refuse to start writing what cannot fit: the error gives both numbers."""
    free = free_bytes(folder)
    if needed > free:
        raise ValueError(f"tokenize would write about {needed / 1e9:.2f} GB{how}, but {folder} has "
                         f"{free / 1e9:.2f} GB free ({needed:,} > {free:,} bytes); lower the weights or free space")


# ---------------------------------------------------------------- packed shards


class PackedWriter(AtomicOutput):
    """Appends token ids to a temporary file; ``commit`` renames it into place."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.tokens = self.documents = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = part_path(path)
        self._handle = open(self._tmp, "wb")

    def write(self, ids: list[int], documents: int) -> None:
        np.asarray(ids, dtype=self.dtype).tofile(self._handle)
        self.tokens += len(ids)
        self.documents += documents

    def repeat(self, spans: list[tuple[int, int, int]]) -> None:
        """Append extra copies of written documents, given as (start, length, copies), one pass per copy."""
        self._handle.flush()
        for copy in range(1, max((copies for _, _, copies in spans), default=1)):
            for start, length, copies in spans:
                if copies > copy:
                    ids = np.fromfile(self._tmp, dtype=self.dtype, count=length, offset=start * self.dtype.itemsize)
                    ids.tofile(self._handle)
                    self.tokens += length
                    self.documents += 1
            self._handle.flush()

    def commit(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._handle.close()
        self._tmp.unlink(missing_ok=True)


def open_tokenizer(tokenizer_path: Path, config: TokenizeConfig) -> tuple[Tokenizer, int, np.dtype]:
    """The tokenizer as the shard tasks use it, its EOS id and the token files' dtype."""
    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text, not a boundary
    return tokenizer, eos_id(tokenizer, config.eos_token), token_dtype(id_space(tokenizer))


def encoded_documents(in_path: Path, tokenizer: Tokenizer, eos: int,
                      dropped: Counter) -> Iterator[list[tuple[int, Document, list[int]]]]:
    """Batches of (row in the shard, document, its ids ending with EOS); empty texts are counted in ``dropped``."""
    row = 0
    for batch in read_documents(in_path):
        docs = [(row + i, doc) for i, doc in enumerate(batch) if doc.text]
        row += len(batch)
        dropped["empty_text"] += len(batch) - len(docs)
        encodings = tokenizer.encode_batch_fast([doc.text for _, doc in docs], add_special_tokens=False)
        yield [(r, doc, encoding.ids + [eos]) for (r, doc), encoding in zip(docs, encodings)]


def count_shard(in_path: Path, sidecar: Path, tokenizer_path: Path, config: TokenizeConfig) -> dict:
    """A mixture's first pass over one shard: each train document's (source, order hash, row, tokens)
    into the ``sidecar`` Parquet file (``tasks.mixture``); returns the tokens per source."""
    tokenizer, eos, _ = open_tokenizer(tokenizer_path, config)
    columns: dict[str, list] = {"source": [], "hash": [], "row": [], "tokens": []}
    sources: dict[str, Counter] = defaultdict(Counter)
    dropped: Counter = Counter()
    for batch in encoded_documents(in_path, tokenizer, eos, dropped):
        for row, doc, ids in batch:
            counts = sources[doc.source]
            if split_of(doc.key, config.seed, config.val_fraction) == "val":
                counts["val_tokens"] += len(ids)
                continue
            counts["train_documents"] += 1
            counts["raw_tokens"] += len(ids)
            for name, value in zip(columns, (doc.source, order_hash(config.seed, doc.key), row, len(ids))):
                columns[name].append(value)
    write_sidecar(sidecar, columns)
    return {"shard": sidecar.stem, "sources": {source: dict(counts) for source, counts in sorted(sources.items())}}


def tokenize_shard(in_path: Path, train_path: Path, val_path: Path, tokenizer_path: Path,
                   config: TokenizeConfig, plan: dict | None = None) -> dict:
    """Tokenize one Parquet shard into its train and val ``.bin`` files; return the counts.

    Train documents are repeated or dropped by the mixture ``plan`` (``tasks.mixture``) when one
    is given, else by ``config.weights``. A document's repeated copies follow the shard's first
    pass; the cut copies of a plan come last.
    """
    check_weights(config.weights)
    started = time.perf_counter()
    tokenizer, eos, dtype = open_tokenizer(tokenizer_path, config)
    shard = train_path.stem

    def train_copies(row: int, doc: Document) -> tuple[int, int]:
        if plan is None:
            return copies_of(doc.key, config.seed, config.weights.get(doc.source, 1.0)), 0
        return copies_in_plan(plan, doc.source, (order_hash(config.seed, doc.key), shard, row))

    sources: dict[str, Counter] = defaultdict(Counter)
    dropped: Counter = Counter()
    repeats: list[tuple[int, int, int]] = []
    cuts: list[list[int]] = []
    with PackedWriter(train_path, dtype) as train, PackedWriter(val_path, dtype) as val:
        for batch in encoded_documents(in_path, tokenizer, eos, dropped):
            train_ids: list[int] = []
            val_ids: list[int] = []
            train_docs = val_docs = 0
            for row, doc, ids in batch:
                counts = sources[doc.source]
                counts["documents"] += 1
                if split_of(doc.key, config.seed, config.val_fraction) == "val":
                    val_ids += ids
                    val_docs += 1
                    counts["val_documents"] += 1
                    counts["val_tokens"] += len(ids)
                    continue
                copies, cut = train_copies(row, doc)
                counts["raw_tokens"] += len(ids)
                counts["train_documents"] += copies + (cut > 0)
                counts["tokens"] += copies * len(ids) + cut
                if cut:
                    cuts.append(ids[:cut - 1] + [eos])  # the document's first tokens, still ending with EOS
                if copies:
                    if copies > 1:
                        repeats.append((train.tokens + len(train_ids), len(ids), copies))
                    train_ids += ids
                    train_docs += 1
            train.write(train_ids, train_docs)
            val.write(val_ids, val_docs)
        train.repeat(repeats)
        for ids in cuts:
            train.write(ids, 1)
    return {
        "shard": train_path.stem,
        "input": str(in_path),
        "documents": sum(c["documents"] for c in sources.values()),
        "dropped": {reason: n for reason, n in dropped.items() if n},
        "splits": {name: {"file": f"{name}/{path.name}", "tokens": writer.tokens, "documents": writer.documents}
                   for name, path, writer in (("train", train_path, train), ("val", val_path, val))},
        "sources": {source: dict(counts) for source, counts in sorted(sources.items())},
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---------------------------------------------------------------- index


def build_index(reports: list[dict], tokenizer_meta: dict, config: TokenizeConfig, plan: dict | None = None) -> dict:
    """index.json from the shard reports; files without tokens are left out (they cannot be memory-mapped).

    With a mixture ``plan``, ``mixture`` records the target and realized shares and epochs, and a
    source's ``weight`` is its realized epochs."""
    reports = sorted(reports, key=lambda r: r["shard"])
    splits = {name: [r["splits"][name] for r in reports if r["splits"][name]["tokens"]] for name in SPLITS}
    sources: dict[str, Counter] = defaultdict(Counter)
    for report in reports:
        for source, counts in report["sources"].items():
            sources[source].update(counts)
    mixture = mixture_record(plan, {source: counts["tokens"] for source, counts in sources.items()}) if plan else None
    weights = mixture["epochs"] if mixture else config.weights
    index = {
        "format": INDEX_FORMAT,
        "dtype": token_dtype(tokenizer_meta["vocab_size"]).name,
        "vocab_size": tokenizer_meta["vocab_size"],
        "requested_vocab_size": tokenizer_meta.get("requested_vocab_size"),
        "eos_id": tokenizer_meta["eos_id"],
        "tokenizer": TOKENIZER_FILE,
        "tokenizer_sha256": tokenizer_meta["sha256"],
        "splits": splits,
        "tokens": {name: sum(entry["tokens"] for entry in files) for name, files in splits.items()},
        "documents": {name: sum(entry["documents"] for entry in files) for name, files in splits.items()},
        "sources": {source: {"documents": counts["documents"], "tokens": counts["tokens"],
                             "weight": weights.get(source, 1.0), "raw_tokens": counts["raw_tokens"],
                             "train_documents": counts["train_documents"], "val_tokens": counts["val_tokens"]}
                    for source, counts in sorted(sources.items())},
        "seed": config.seed,
        "val_fraction": config.val_fraction,
    }
    if mixture:
        index["mixture"] = mixture
    return index


def write_index(output_dir: Path, index: dict) -> Path:
    path = output_dir / INDEX_FILE
    atomic_write_text(path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------- reader


class ConcatView:
    """The files of one split as one token sequence: a global offset maps to (file, offset)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.starts = np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, position: int) -> tuple[int, int]:
        if not 0 <= position < len(self):
            raise IndexError(f"token {position} outside 0..{len(self) - 1}")
        shard = int(np.searchsorted(self.starts, position, side="right")) - 1
        return shard, position - int(self.starts[shard])

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens from global offset ``start``, across file boundaries."""
        if length < 0 or start + length > len(self):
            raise IndexError(f"tokens {start}..{start + length} outside 0..{len(self)}")
        parts = []
        while length > 0:
            shard, offset = self.locate(start)
            part = self.arrays[shard][offset:offset + length]
            parts.append(part)
            start, length = start + len(part), length - len(part)
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.arrays[0].dtype if self.arrays else "<u2")


class TokenShards:
    """A tokenize output folder, read-only: index metadata and memory-mapped token files."""

    def __init__(self, folder: Path, index: dict):
        self.folder, self.index = folder, index
        self.dtype = np.dtype(index["dtype"]).newbyteorder("<")
        self.vocab_size: int = index["vocab_size"]
        self.eos_id: int = index["eos_id"]
        self._maps: dict[str, list[np.memmap]] = {}

    @classmethod
    def open(cls, folder: str | Path) -> TokenShards:
        folder = Path(folder)
        path = folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {INDEX_FILE} in {folder} (is the tokenize stage complete?)")
        index = json.loads(path.read_text())
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path}: format {index.get('format')!r}, this reader knows {INDEX_FORMAT}")
        shards = cls(folder, index)
        shards._check_sizes()
        return shards

    def _check_sizes(self) -> None:
        for name, files in self.index["splits"].items():
            for entry in files:
                size = (self.folder / entry["file"]).stat().st_size
                if size != entry["tokens"] * self.dtype.itemsize:
                    raise ValueError(f"{self.folder / entry['file']}: {size} bytes, index.json says "
                                     f"{entry['tokens']} tokens x {self.dtype.itemsize} bytes")

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / self.index["tokenizer"]

    @property
    def sources(self) -> dict:
        return self.index["sources"]

    def split(self, name: str) -> list[np.memmap]:
        if name not in self.index["splits"]:
            raise KeyError(f"no split {name!r}; splits: {sorted(self.index['splits'])}")
        if name not in self._maps:
            self._maps[name] = [np.memmap(self.folder / entry["file"], dtype=self.dtype, mode="r")
                                for entry in self.index["splits"][name]]
        return self._maps[name]

    def total_tokens(self, split: str) -> int:
        return self.index["tokens"][split]

    def concat_view(self, split: str) -> ConcatView:
        return ConcatView(self.split(split))
