"""In-loop benchmark evaluation: a small fixed set of benchmark items scored at every eval point.

At set-up every rank loads the first ``eval_items`` items of each of ``eval_tasks`` and encodes
their requests once, with the run's own tokenizer (``data_dir/tokenizer.json``, no special tokens
added, as ``tasks.evaluation.scorer`` expects). At each eval point the training engine scores them
in eval mode (``tasks.evaluation.scorer.score_requests``: all tasks' requests in one pool, longest
first, right-padded), so the numbers follow the model as it trains, OLMo-style, next to the
validation loss. The items are the same at every step, so the curves compare.

The ranks share the work: the batches are dealt out in turn and the scores all-gathered, so a run
on W ranks scores in about 1/W of the time. Under ZeRO-3 a forward gathers the parameters
collectively, so every rank makes the same number of forward calls (one with a batch fewer
repeats one). Only rank 0 records. When the model's fused functions are compiled (static shapes),
every batch is padded to one shape, so the in-loop scoring compiles once and not once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pretrain.config import TrainConfig
from tasks.evaluation.items import EvalDataMissing, Item, load_items
from tasks.evaluation.metrics import centered, task_metrics
from tasks.evaluation.scorer import Request, build_requests, per_item, score_requests
from tasks.train.preflight import TrainConfigError

MAX_ROWS = 64  # sequences per scoring forward, at most
MICRO_BATCHES_PER_FORWARD = 4  # a scoring forward takes up to the tokens of this many training micro batches
RECORDED = ("accuracy", "accuracy_per_char", "items")  # what an eval line keeps per task


@dataclass
class Benchmarks:
    """The fixed items of each task and their encoded requests, pooled in task order."""

    items: dict[str, list[Item]]
    requests: list[Request]
    spans: dict[str, tuple[int, int]]  # task -> its slice of ``requests``
    rows: int  # sequences per forward
    width: int | None  # every batch padded to (rows, width) when shapes must be static; None: as the scorer pads
    pad_id: int

    def describe(self) -> str:
        counts = ", ".join(f"{task} {len(items)}" for task, items in self.items.items())
        return (f"in-loop benchmarks: {counts} items ({len(self.requests)} requests, {self.rows} per forward"
                f"{'' if self.width is None else f', padded to {self.width} tokens'})")


def encoder(data_dir: str | Path):
    """(encode, unk_id, pad_id) of the run's tokenizer, encoding text as the tokenize stage does."""
    from tokenizers import Tokenizer

    from tasks.tokenize import PAD_TOKEN, TOKENIZER_FILE

    path = Path(data_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise TrainConfigError(f"in-loop benchmarks need the run's tokenizer: no {path} (set train.eval_items=0 "
                               f"to train without them)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.encode_special_tokens = True  # as tasks.tokenize encodes the training text
    unk = getattr(tokenizer.model, "unk_token", None)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return encode, tokenizer.token_to_id(unk) if unk else None, tokenizer.token_to_id(PAD_TOKEN)


def load_benchmarks(cfg: TrainConfig, max_length: int, eos_id: int, static_shapes: bool) -> Benchmarks | None:
    """The items and requests scored in the loop; None when ``eval_items`` is 0 or ``eval_tasks`` empty."""
    if not cfg.eval_items or not cfg.eval_tasks:
        return None
    try:
        items = {task: load_items(task, cfg.eval_items) for task in cfg.eval_tasks}
    except EvalDataMissing as error:
        raise TrainConfigError(f"train.eval_tasks: {error}; or set train.eval_items=0") from error
    encode, unk_id, pad_id = encoder(cfg.data_dir)
    requests: list[Request] = []
    spans = {}
    for task, task_items in items.items():
        start = len(requests)
        requests += build_requests(task_items, encode, max_length, eos_id, unk_id)
        spans[task] = (start, len(requests))
    longest = max(len(request.tokens) for request in requests)
    # a few training micro batches' tokens: they fit, as a scoring forward keeps no activations for backward
    rows = max(1, min(MAX_ROWS, MICRO_BATCHES_PER_FORWARD * cfg.micro_batch_size * cfg.seq_len // longest))
    return Benchmarks(items, requests, spans, rows, longest if static_shapes else None,
                      eos_id if pad_id is None else pad_id)


def fixed_shape(logits_fn, rows: int, width: int, pad_id: int):
    """``logits_fn`` on inputs padded to (rows, width), cut back to the input's shape (causal: the
    padding after a row changes none of its logits)."""
    def padded(input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        full = torch.full((rows, width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
        full[:batch, :length] = input_ids
        return logits_fn(full)[:batch, :length]
    return padded


def shares(bench: Benchmarks, rank: int, world_size: int) -> tuple[list[int], int]:
    """This rank's requests (indices) and how many extra forwards it makes to match the busiest rank.

    The requests are cut into batches as the scorer cuts them (longest first, ``rows`` each) and
    the batches dealt out in turn, so a rank's share sorts into exactly those batches again and a
    score does not depend on the number of ranks; under ZeRO-3 every rank must make the same number
    of forward calls, so a rank with one batch fewer repeats one (and discards its logits).
    """
    requests = bench.requests
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i].tokens), requests[i].tokens))
    batches = [order[start:start + bench.rows] for start in range(0, len(order), bench.rows)]
    mine = batches[rank::world_size]
    return [i for batch in mine for i in batch], -(-len(batches) // world_size) - len(mine)


@torch.no_grad()
def score(engine, bench: Benchmarks, device: torch.device, rank: int = 0, world_size: int = 1,
          gather: Callable[[object], list] = lambda obj: [obj]) -> dict:
    """``{"benchmarks": {task: {accuracy, accuracy_per_char, items}}, "centered": x}`` for the model now.

    With several ranks each scores its share of the batches (``shares``) and ``gather`` (an
    all-gather of Python objects) brings every score to every rank."""
    def logits_fn(input_ids: torch.Tensor) -> torch.Tensor:
        return engine(input_ids)[0]  # (B, T, V)

    if bench.width is not None:
        logits_fn = fixed_shape(logits_fn, bench.rows, bench.width, bench.pad_id)
    mine, extra = shares(bench, rank, world_size)
    engine.eval()
    try:
        values = score_requests(logits_fn, [bench.requests[i] for i in mine], bench.rows, bench.pad_id, device)
        for _ in range(extra):
            logits_fn(torch.tensor([bench.requests[0].tokens], dtype=torch.long, device=device))
    finally:
        engine.train()
    scores = [0.0] * len(bench.requests)
    for part in gather(dict(zip(mine, values))):
        for i, value in part.items():
            scores[i] = value
    metrics = {}
    for task, task_items in bench.items.items():
        start, end = bench.spans[task]
        metrics[task] = task_metrics(task_items, per_item(bench.requests[start:end], scores[start:end], task_items))
    return {"benchmarks": {task: {key: m[key] for key in RECORDED} for task, m in metrics.items()},
            "centered": centered(metrics)}


def console_line(step: int, result: dict) -> str:
    """``step 20 benchmarks hellaswag 0.250 arc_easy 0.281 piqa 0.531 centred 0.012``"""
    tasks = " ".join(f"{task} {m['accuracy']:.3f}" for task, m in result["benchmarks"].items())
    return f"step {step} benchmarks {tasks} centred {result['centered']:.3f}"
