"""Log-likelihood of each choice's continuation given its context, batched.

Tokenization follows lm-eval's HF causal-LM class (``_encode_pair``): a trailing whitespace
of the context moves to the front of the continuation; the whole string is encoded and the
context's tokens are its prefix, so the continuation's tokens are those the model would see
in running text (a BPE merge across the boundary stays in the continuation). An empty
context is the EOS token. The input is left-truncated to ``max_length`` tokens: the last
``max_length + 1`` tokens without the final one, so every continuation token is predicted
from as much context as fits.

Batching: requests are sorted longest first (a batch pads to its first row, and the
lengths in it are close) and right-padded; causal attention never looks right, so the
padding changes no score and needs no mask. Scores are summed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tasks.evaluation.items import Item

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # input ids (B, T) -> logits (B, T, V)
Encode = Callable[[str], list[int]]


class EncodeError(ValueError):
    """A continuation the tokenizer cannot encode: no tokens, or unknown tokens."""


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation (lm-eval)."""
    stripped = context.rstrip()
    spaces = len(context) - len(stripped)
    if spaces:
        return stripped, context[len(stripped):] + continuation
    return context, continuation


def encode_pair(encode: Encode, context: str, continuation: str, eos_id: int,
                unk_id: int | None = None) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval makes them; see the module docstring."""
    context, continuation = split_pair(context, continuation)
    if context:
        whole, context_ids = encode(context + continuation), encode(context)
        continuation_ids = whole[len(context_ids):]
    else:
        context_ids, continuation_ids = [eos_id], encode(continuation)
    if not continuation_ids:
        raise EncodeError(f"the continuation {continuation!r} encodes to no tokens after its context")
    if unk_id is not None and unk_id in continuation_ids:
        raise EncodeError(f"the tokenizer cannot encode {continuation!r}: it gives the unknown token (id {unk_id})")
    return context_ids, continuation_ids


@dataclass(frozen=True)
class Request:
    item: int  # index into the items scored
    choice: int
    tokens: tuple[int, ...]  # the model's input: context + continuation, left-truncated, without the last token
    continuation: tuple[int, ...]  # the tokens scored: the last len(continuation) predictions


def build_requests(items: Sequence[Item], encode: Encode, max_length: int, eos_id: int,
                   unk_id: int | None = None) -> list[Request]:
    requests = []
    for i, item in enumerate(items):
        for choice, (context, continuation) in enumerate(item.requests):
            try:
                context_ids, continuation_ids = encode_pair(encode, context, continuation, eos_id, unk_id)
            except EncodeError as error:
                raise EncodeError(f"{item.task} item {item.doc_id}, choice {choice}: {error}") from None
            whole = (context_ids + continuation_ids)[-(max_length + 1):]
            scored = continuation_ids[-(len(whole) - 1):]  # a continuation longer than the window: its last tokens
            requests.append(Request(i, choice, tuple(whole[:-1]), tuple(scored)))
    return requests


@torch.no_grad()
def score_requests(logits_fn: LogitsFn, requests: Sequence[Request], batch_size: int, pad_id: int = 0,
                   device: torch.device | str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> list[float]:
    """The summed log-probability of each request's continuation, in the order given."""
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i].tokens), requests[i].tokens))
    scores = [0.0] * len(requests)
    for start in range(0, len(order), batch_size):
        batch = [requests[i] for i in order[start:start + batch_size]]
        width = len(batch[0].tokens)
        inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for row, request in enumerate(batch):
            inputs[row, :len(request.tokens)] = torch.tensor(request.tokens, dtype=torch.long)
        logits = logits_fn(inputs.to(device))
        for row, request in enumerate(batch):
            end, n = len(request.tokens), len(request.continuation)
            logprobs = torch.log_softmax(logits[row, end - n:end].float(), dim=-1)
            target = torch.tensor(request.continuation, dtype=torch.long, device=logprobs.device)
            scores[order[start + row]] = logprobs.gather(1, target[:, None]).sum().item()
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return scores


def score_items(logits_fn: LogitsFn, encode: Encode, items: Sequence[Item], max_length: int, batch_size: int,
                eos_id: int, pad_id: int | None = None, unk_id: int | None = None, device: torch.device | str = "cpu",
                progress: Callable[[int, int], None] | None = None) -> list[list[float]]:
    """Per item, per choice: the log-likelihood of the continuation given the context."""
    requests = build_requests(items, encode, max_length, eos_id, unk_id)
    scores = score_requests(logits_fn, requests, batch_size, eos_id if pad_id is None else pad_id, device, progress)
    return per_item(requests, scores, items)


def per_item(requests: Sequence[Request], scores: Sequence[float], items: Sequence[Item]) -> list[list[float]]:
    """The scores of ``items``' requests (in any order) regrouped: per item, per choice."""
    out: list[list[float]] = [[0.0] * len(item.requests) for item in items]
    for request, score in zip(requests, scores):
        out[request.item][request.choice] = score
    return out
