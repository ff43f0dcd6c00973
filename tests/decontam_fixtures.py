"""Documents for the decontamination tests and bench/decontaminate.py: clean real text and planted items.

Clean documents are paragraph chunks of the English books in ../shared/data/reference/en (hard-wrapped
lines joined, consecutive paragraphs grouped until a chunk holds at least ``min_chars``, a chunk closed
before a paragraph would take it past ``max_chars``); those of 1-3 KB are taken evenly across the books.
A planted document is one HellaSwag item's gold context and continuation, the text the model is scored
on, between two stretches of book text (filler chunks, none of them a clean document, so no clean
document's text is repeated in a planted one).

``contamination`` is acceptance 2's training half (bench/decontaminate.py --part train, and a short
version in the suite): a tiny model trained with and without the planted items, scored on them.
"""

from __future__ import annotations

import gzip
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.evaluation.items import Item, load_items

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


# ---------------------------------------------------------------- training and scoring (acceptance 2)


@dataclass(frozen=True)
class Training:
    """How the contamination experiment trains: the tiny shape (``shape`` overrides its fields), in-process
    AdamW steps on windows of ``seq_len`` tokens (tests/tiny_run.py's loop), on ``device``."""

    steps: int = 600
    seq_len: int = 64
    batch: int = 16
    lr: float = 3e-3
    vocab_size: int = 1024
    shape: dict = field(default_factory=lambda: {"n_layers": 2, "d_model": 64, "n_heads": 2})
    device: str = "cpu"
    seed: int = 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train_tiny(shards: Path, training: Training):
    """The model after ``training.steps`` steps on the train split; (model, train tokens and final loss)."""
    import torch

    from models.sizes import model_config
    from models.transformer import Transformer
    from tasks.train.data import TokenWindows

    windows = TokenWindows(shards, "train", training.seq_len, seed=training.seed)
    torch.manual_seed(training.seed)
    model = Transformer(model_config("tiny", windows.vocab_size, training.seq_len, **training.shape))
    model = model.to(training.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=0.0)
    losses = []
    for step in range(training.steps):
        x, y = windows.batch(range(step * training.batch, (step + 1) * training.batch))
        _, loss = model(x.to(training.device), y.to(training.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), {"train_tokens": windows.tokens, "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 3)}


def score(model, shards: Path, items: list[Item], training: Training) -> dict:
    """The items' metrics (tasks.evaluation.metrics) from the scorer, with the shards' tokenizer."""
    import torch

    from tasks.evaluation.metrics import task_metrics
    from tasks.evaluation.scorer import score_items
    from tasks.tokenize import load_tokenizer
    from tasks.train.data import TokenShards

    tokenizer = load_tokenizer(shards / "tokenizer.json")
    with torch.no_grad():
        lls = score_items(lambda ids: model(ids)[0], lambda text: tokenizer.encode(text).ids, items,
                          max_length=training.seq_len, batch_size=32, eos_id=TokenShards.open(shards).eos_id,
                          device=training.device)
    return {key: round(value, 3) if isinstance(value, float) else value
            for key, value in task_metrics(items, lls).items()}


def contamination(work: Path, books: Path, clean: int, repeats: int, training: Training, num_cpus: int = 2) -> dict:
    """Train on 200 HellaSwag items' gold text (``repeats`` copies each, by the tokenize stage's mixture
    weight) plus ``clean`` book chunks and score the items; decontaminate the corpus (the real flow),
    tokenize what is left with the same tokenizer, train the same model the same steps, score again."""
    from flows.decontaminate import decontaminate_flow
    from flows.tokenize import tokenize_flow
    from pretrain.config import DecontaminateConfig, RayConfig, TokenizeConfig

    items = load_items("hellaswag", limit=200)
    clean_docs, _ = clean_and_filler(books, clean=clean, filler=0)
    planted = [{"id": f"planted:{item.doc_id}", "source": "planted", "text": gold_text(item)} for item in items]
    write_shards(clean_docs + planted, work / "corpus", shards=2)
    ray = RayConfig(num_cpus=num_cpus)
    base = TokenizeConfig(vocab_size=training.vocab_size, val_fraction=0.0, train_max_documents=5000, seed=0)
    tokenize_flow(config=base.model_copy(update={"weights": {"planted": float(repeats)}}),
                  input_dirs=[str(work / "corpus")], output_dir=str(work / "tokens"), ray_config=ray)
    results = {"items": len(items), "clean_documents": len(clean_docs), "repeats": repeats,
               "training": {**training.__dict__}}
    log(f"tokenized; training {training.steps} steps on the contaminated corpus")
    model, trained = train_tiny(work / "tokens", training)
    results["contaminated"] = {**trained, **score(model, work / "tokens", items, training)}
    log(f"contaminated: {results['contaminated']}")

    summary = decontaminate_flow(config=DecontaminateConfig(), input_dir=str(work / "corpus"),
                                 output_dir=str(work / "decontaminated"), ray_config=ray)
    results["decontaminate"] = {key: summary[key] for key in ("documents_in", "documents_kept", "dropped")}
    tokenize_flow(config=base.model_copy(update={"tokenizer": str(work / "tokens" / "tokenizer.json")}),
                  input_dirs=[str(work / "decontaminated")], output_dir=str(work / "tokens-clean"), ray_config=ray)
    log(f"decontaminated and tokenized; training {training.steps} steps on what is left")
    model, trained = train_tiny(work / "tokens-clean", training)
    results["decontaminated"] = {**trained, **score(model, work / "tokens-clean", items, training)}
    log(f"decontaminated: {results['decontaminated']}")
    return results
