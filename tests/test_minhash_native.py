"""MinHash signatures from the C loop (tasks/minhash.c) against the numpy version."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.dedup import minhash
from tasks.dedup.minhash import MERSENNE_61, signatures


def test_the_c_loop_is_built_and_in_use():
    assert minhash._minhash is not None, "tasks/_minhash is not built: run make setup"
    assert signatures.__defaults__[-1] is minhash._minhash


@pytest.mark.parametrize("trial", range(12))
def test_equal_signatures_to_numpy(trial):
    rng = np.random.default_rng(trial)
    n_docs = int(rng.integers(1, 200))
    lengths = rng.integers(1, 600, size=n_docs)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    shingles = rng.integers(0, 2**64, size=int(offsets[-1]), dtype=np.uint64)
    if trial == 0:  # the values next to p and the largest, where the folds wrap
        shingles[::3] = np.uint64(MERSENNE_61)
        shingles[1::3] = np.uint64(2**64 - 1)
        shingles[2::3] = np.uint64(MERSENNE_61 - 1)
    for num_perm, seed in ((112, 1), (1, 7), (256, 3)):
        expected = signatures(shingles, offsets, num_perm, seed, native=None)
        got = signatures(shingles, offsets, num_perm, seed)
        assert got.dtype == np.uint64 and got.shape == (n_docs, num_perm)
        assert np.array_equal(got, expected)
        assert got.max() < MERSENNE_61


def test_bad_offsets_are_an_error():
    out = np.zeros((2, 4), np.uint64)
    a = b = np.ones(4, np.uint64)
    with pytest.raises(ValueError, match="offsets"):
        minhash._minhash.signatures(np.zeros(3, np.uint64), np.array([0, 5, 3], np.int64), a, b, out)
    with pytest.raises(ValueError, match="shapes"):
        minhash._minhash.signatures(np.zeros(3, np.uint64), np.array([0, 3], np.int64), a, b, out)
    with pytest.raises(TypeError, match="offsets"):
        minhash._minhash.signatures(np.zeros(3, np.uint64), np.array([0, 1, 3], np.int32), a, b, out)
