"""Uniform samples of streams too large to hold: reservoir sampling with a fixed seed."""

from __future__ import annotations

import random
from typing import Iterable, TypeVar

T = TypeVar("T")


def reservoir_sample(items: Iterable[T], max_items: int, seed: int = 0) -> list[T]:
    """Up to ``max_items`` items, each item of the stream equally likely; same seed, same sample."""
    rng = random.Random(seed)
    sample: list[T] = []
    for seen, item in enumerate(items):
        if len(sample) < max_items:
            sample.append(item)
        else:
            slot = rng.randrange(seen + 1)
            if slot < max_items:
                sample[slot] = item
    return sample
