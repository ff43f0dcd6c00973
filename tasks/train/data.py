"""Deterministic, resumable batches of (x, y) from the packed token shards.

A split is one long token sequence (its ``.bin`` files end to end, see
``tasks.tokenize``). It is cut into windows of ``seq_len + 1`` tokens starting every
``seq_len`` tokens (window ``i`` starts at ``i x seq_len``; x is its first seq_len
tokens, y the last seq_len, so consecutive windows share one token and no target is
lost). Windows are visited in a random order per epoch, a permutation seeded by
(seed, epoch), and every sample ever drawn has a global number ``g``.

Optimizer steps, micro steps and ranks only decide which global numbers a rank reads:
micro step ``k`` takes samples ``k x micro x world .. (k+1) x micro x world - 1``, rank
``r`` the ``micro`` of them from ``k x micro x world + r x micro``. The position is
therefore one number, the samples consumed by all ranks; ``state_dict()`` returns it
with what must not change between save and resume (seed, seq_len, corpus size), and
a stream restored from it yields exactly the batches the saved run would have yielded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks.tokenize import TokenShards

STATE_VERSION = 1


class TokenWindows:
    """Windows of ``seq_len + 1`` tokens over one split, in a seeded order per epoch."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int, seed: int, shuffle: bool = True):
        shards = TokenShards.open(data_dir)
        self.view = shards.concat_view(split)
        self.vocab_size, self.eos_id = shards.vocab_size, shards.eos_id
        self.split, self.seq_len, self.seed, self.shuffle = split, seq_len, seed, shuffle
        self.tokens = len(self.view)
        self.windows = max(0, (self.tokens - 1) // seq_len)
        self._order: tuple[int, np.ndarray] | None = None

    def _window_of(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.windows)
        if not self.shuffle:
            return offset
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(self.windows))
        return int(self._order[1][offset])

    def sample(self, number: int) -> np.ndarray:
        """The ``seq_len + 1`` tokens of global sample ``number`` (any non-negative integer)."""
        if self.windows == 0:
            raise ValueError(f"split {self.split!r} has {self.tokens} tokens: not one window of "
                             f"seq_len {self.seq_len} + 1")
        start = self._window_of(number) * self.seq_len
        return self.view.read(start, self.seq_len + 1)

    def batch(self, numbers: range) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (len(numbers), seq_len) int64 for the given global sample numbers."""
        rows = np.stack([self.sample(n) for n in numbers]).astype(np.int64)  # (B, T + 1)
        tokens = torch.from_numpy(rows)
        return tokens[:, :-1], tokens[:, 1:]  # (B, T) each


class TrainStream:
    """One rank's micro batches of the train split, resumable from ``state_dict()``."""

    def __init__(self, windows: TokenWindows, micro_batch_size: int, rank: int, world_size: int):
        self.windows, self.micro, self.rank, self.world = windows, micro_batch_size, rank, world_size
        self.samples = 0  # consumed by all ranks together

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.samples + self.rank * self.micro
        self.samples += self.micro * self.world
        return self.windows.batch(range(first, first + self.micro))

    def state_dict(self) -> dict:
        w = self.windows
        return {"version": STATE_VERSION, "samples": self.samples, "seed": w.seed, "seq_len": w.seq_len,
                "split": w.split, "tokens": w.tokens}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        changed = [f"{key}: saved {state.get(key)!r}, now {mine[key]!r}"
                   for key in ("version", "seed", "seq_len", "split", "tokens") if state.get(key) != mine[key]]
        if changed:
            raise ValueError("cannot resume the data stream exactly; " + "; ".join(changed))
        self.samples = int(state["samples"])


def eval_batches(windows: TokenWindows, batches: int, micro_batch_size: int, rank: int, world_size: int):
    """The same ``batches`` micro batches of the (unshuffled) validation split on every call;
    together the ranks read ``batches x micro x world`` distinct windows (wrapping when fewer)."""
    for b in range(batches):
        first = (b * world_size + rank) * micro_batch_size
        yield windows.batch(range(first, first + micro_batch_size))
