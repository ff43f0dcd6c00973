"""Mixtures by token share: plan how many train tokens each source contributes, and which documents.

A mixture gives each source a share of the train tokens (``MixtureConfig``). Tokenize
realizes it in two passes over the shards:

1. each shard's train documents are tokenized and counted: one row per document
   (``source``, a hash of its key, its row in the shard, its tokens with EOS) goes into a
   small Parquet sidecar, ``mixture/<shard>.parquet``;
2. ``plan_mixture`` reads the sidecars and decides, per source, its target tokens
   (share x total), the whole passes over it and, for the rest of the budget, the documents
   taken once more in hash order, the last of them cut to the exact token count. Every
   shard's tokenize task then writes its train file from the same plan.

The realized share of every source is its target exactly (targets are whole tokens that
sum to the total), so the 1 % tolerance is met with room to spare. Validation documents
are never resampled: they keep the natural distribution.

A source present in the data without a share is refused (the shares sum to 1, so it has
no place; drop it upstream); so is a share for a source the data lacks, and a share that
would need more passes over a source than its ``max_epochs``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pretrain.config import MixtureConfig
from pretrain.provenance import part_path

SIDECAR_FOLDER = "mixture"
SIDECAR_SCHEMA = pa.schema([("source", pa.string()), ("hash", pa.uint64()), ("row", pa.int64()),
                            ("tokens", pa.int64())])

# A document's place in a source's sampling order: (hash of its key, shard name, row in the shard).
# The shard and row break ties between documents with the same key (exact duplicates).
Order = tuple[int, str, int]


def order_hash(seed: int, key: str) -> int:
    """A deterministic 64-bit number per (seed, document key), independent of the split's hash."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8,
                                          key=f"mixture:{seed}".encode()).digest(), "big")


def sidecar_path(output_dir: Path, shard: str) -> Path:
    return output_dir / SIDECAR_FOLDER / f"{shard}.parquet"


def write_sidecar(path: Path, rows: dict[str, list]) -> None:
    """The per-document counts of one shard, written atomically (``rows``: the schema's columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(path)
    try:
        pq.write_table(pa.Table.from_pydict(rows, schema=SIDECAR_SCHEMA), tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_sidecars(paths: dict[str, Path]) -> pa.Table:
    """Every shard's sidecar as one table with a ``shard`` column (``paths``: shard name -> file)."""
    tables = []
    for shard, path in sorted(paths.items()):
        table = pq.read_table(path)
        tables.append(table.append_column("shard", pa.array([shard] * table.num_rows, pa.string())))
    return pa.concat_tables(tables) if tables else SIDECAR_SCHEMA.empty_table().append_column(
        "shard", pa.array([], pa.string()))


# ---------------------------------------------------------------- checks before any work


def check_mixture_sources(shares: dict[str, float], present: Counter) -> None:
    """Every source in the data has a share and every share has documents; else a ValueError naming them."""
    listed = ", ".join(f"{source} ({n} documents)" for source, n in sorted(present.items())) or "none"
    missing = sorted(set(present) - set(shares))
    if missing:
        raise ValueError(f"mixture: the inputs have source(s) {missing} without a share; give every source a "
                         f"share (they sum to 1) or drop it upstream; the inputs' sources: {listed}")
    absent = sorted(set(shares) - set(present))
    if absent:
        raise ValueError(f"mixture: share(s) for source(s) {absent} that no input document has; "
                         f"the inputs' sources: {listed}")


def parse_source_numbers(specs: str | list[str], what: str) -> dict[str, float]:
    """``"cc=0.5,wikipedia=0.3"`` (or a list of such strings) to ``{"cc": 0.5, "wikipedia": 0.3}``."""
    values: dict[str, float] = {}
    for spec in [specs] if isinstance(specs, str) else specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            source, _, text = item.partition("=")
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not source.strip() or math.isnan(value):
                raise ValueError(f"{what}: expected source=number, got {item!r}")
            if source.strip() in values:
                raise ValueError(f"{what}: source {source.strip()!r} given twice")
            values[source.strip()] = value
    return values


# ---------------------------------------------------------------- the plan


def target_tokens(shares: dict[str, float], total: int) -> dict[str, int]:
    """Whole-token targets that sum to ``total`` (largest remainder; ties by source name)."""
    exact = {source: share * total for source, share in shares.items()}
    targets = {source: math.floor(value) for source, value in exact.items()}
    left = total - sum(targets.values())
    by_remainder = sorted(exact, key=lambda source: (-(exact[source] - targets[source]), source))
    for source in by_remainder[:left]:
        targets[source] += 1
    return targets


def plan_mixture(documents: pa.Table, mixture: MixtureConfig) -> dict:
    """The plan every shard's tokenize task follows (JSON-ready), from the train documents' counts.

    Per source: ``passes`` whole passes, then the documents ordered before ``cut_at``
    (an ``Order``) once more, and the document at ``cut_at`` cut to ``cut_tokens``.
    """
    raw = _raw_tokens(documents)
    total = mixture.total_tokens or sum(raw.get(source, 0) for source in mixture.shares)
    targets = target_tokens(mixture.shares, total)
    check_epochs(mixture, raw, targets)
    sources = {}
    for source in sorted(mixture.shares):
        passes, rest = divmod(targets[source], raw[source])
        cut_at, cut_tokens = _cut(documents, source, rest)
        sources[source] = {"share": mixture.shares[source], "raw_tokens": raw[source],
                           "target_tokens": targets[source], "epochs": targets[source] / raw[source],
                           "passes": passes, "cut_at": cut_at, "cut_tokens": cut_tokens}
    return {"total_tokens": total, "sources": sources}


def _raw_tokens(documents: pa.Table) -> dict[str, int]:
    sources = documents.column("source").to_numpy(zero_copy_only=False)
    tokens = documents.column("tokens").to_numpy()
    return {str(source): int(tokens[sources == source].sum()) for source in np.unique(sources)}


def check_epochs(mixture: MixtureConfig, raw: dict[str, int], targets: dict[str, int]) -> None:
    """Refuse a share that needs more passes over its source than allowed, naming every such source."""
    problems = []
    for source in sorted(mixture.shares):
        share, have, allowed = mixture.shares[source], raw.get(source, 0), mixture.epochs_allowed(source)
        if have == 0:
            problems.append(f"source {source!r} (share {share:g}) has no train tokens")
            continue
        epochs = targets[source] / have
        if epochs > allowed:
            problems.append(f"source {source!r} with share {share:g} needs {epochs:.3g} epochs "
                            f"({targets[source]:,} of its {have:,} train tokens), more than its max_epochs {allowed:g}")
    if problems:
        raise ValueError("mixture: " + "; ".join(problems) + "; lower the share, raise mixture.max_epochs for "
                         "the source, or lower mixture.total_tokens")


def _cut(documents: pa.Table, source: str, budget: int) -> tuple[list | None, int]:
    """Where the partial pass over a source stops: the documents in order until ``budget`` tokens, the
    last one cut. (None, 0) when no partial pass is needed."""
    if budget == 0:
        return None, 0
    mine = documents.filter(pc.equal(documents.column("source"), source))
    hashes, shards = mine.column("hash").to_numpy(), mine.column("shard").to_numpy(zero_copy_only=False)
    rows, tokens = mine.column("row").to_numpy(), mine.column("tokens").to_numpy()
    shard_codes = np.unique(shards, return_inverse=True)[1]  # codes in name order
    order = np.lexsort((rows, shard_codes, hashes))  # by hash, then shard, then row
    before = np.cumsum(tokens[order]) - tokens[order]  # tokens taken before each document
    last = int(np.searchsorted(before, budget, side="left")) - 1  # the document the budget ends in
    doc = order[last]
    return [int(hashes[doc]), str(shards[doc]), int(rows[doc])], int(budget - before[last])


def copies_in_plan(plan: dict, source: str, order: Order) -> tuple[int, int]:
    """(whole copies, tokens of a cut copy) of one train document under the plan."""
    entry = plan["sources"][source]
    if entry["cut_at"] is None:
        return entry["passes"], 0
    cut_at = tuple(entry["cut_at"])
    if order < cut_at:
        return entry["passes"] + 1, 0
    return entry["passes"], entry["cut_tokens"] if order == cut_at else 0


def mixture_record(plan: dict, train_tokens: dict[str, int]) -> dict:
    """index.json's ``mixture``: target and realized shares, epochs, from the tokens actually written."""
    total = sum(train_tokens.values())
    sources = plan["sources"]
    return {
        "target": {source: entry["share"] for source, entry in sources.items()},
        "realized": {source: train_tokens.get(source, 0) / total if total else 0.0 for source in sources},
        "epochs": {source: train_tokens.get(source, 0) / entry["raw_tokens"] for source, entry in sources.items()},
        "tokens": {source: train_tokens.get(source, 0) for source in sources},
        "raw_tokens": {source: entry["raw_tokens"] for source, entry in sources.items()},
        "total_tokens": total,
        "planned_tokens": plan["total_tokens"],
    }
