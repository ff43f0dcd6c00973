"""The validation loss of a causal LM on held-out text: what a data ablation compares besides the benchmarks.

Each arm's own validation split comes from its own data, so its loss says how well the model fits what it
was trained on, not which data is better. Held-out text that no arm trained on (the reference books, or the
demo reference for the local recipe) is tokenized once with the shared tokenizer, each document followed by
EOS as in the token shards, and every model is scored on the same tokens: the mean negative log-likelihood
per predicted token, in nats. The stream is cut into windows of ``seq_len + 1`` tokens that overlap by one,
so every token after the first is predicted exactly once, from the start of its window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks.quality.corpus import iter_corpus
from tasks.tokenize import eos_id, load_tokenizer


class HeldoutError(ValueError):
    """Held-out text that gives nothing to score."""


def heldout_tokens(specs: list[str], tokenizer_path: str | Path, eos_token: str) -> np.ndarray:
    """The held-out documents as one token stream (each followed by EOS), with the given tokenizer."""
    tokenizer = load_tokenizer(tokenizer_path)
    eos = eos_id(tokenizer, eos_token)
    documents = list(iter_corpus(specs))
    if not documents:
        raise HeldoutError(f"no held-out documents in {specs}")
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(documents, add_special_tokens=False):
        ids += encoding.ids
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def windows(tokens: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Windows of ``seq_len + 1`` tokens, each starting on the last token of the one before (the last one shorter)."""
    if len(tokens) < 2:
        raise HeldoutError(f"held-out text of {len(tokens)} token(s) has nothing to predict")
    return [tokens[start:start + seq_len + 1] for start in range(0, len(tokens) - 1, seq_len)]


@torch.no_grad()
def mean_loss(hf_dir: str | Path, tokens: np.ndarray, seq_len: int, batch_size: int = 16) -> dict:
    """``{"loss", "tokens"}``: the model's mean loss per predicted token (nats) over the held-out stream."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    chunks = windows(tokens, seq_len)
    for start in range(0, len(chunks), batch_size):
        for batch in _same_length(chunks[start:start + batch_size]):
            ids = torch.from_numpy(np.stack(batch))  # (B, T + 1)
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits.float()  # (B, T, V)
            losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
            total += float(losses)
            count += ids[:, 1:].numel()
    return {"loss": total / count, "tokens": count}


def _same_length(chunks: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The chunks grouped by length (only the stream's last window is shorter), so a batch needs no padding."""
    groups: dict[int, list[np.ndarray]] = {}
    for chunk in chunks:
        groups.setdefault(len(chunk), []).append(chunk)
    return list(groups.values())
