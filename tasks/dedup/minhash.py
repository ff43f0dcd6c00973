"""MinHash signatures and LSH band keys, vectorized with numpy.

Permutations are the textbook universal family h(x) = (a*x + b) mod p with the
Mersenne prime p = 2^61 - 1, a in [1, p), b in [0, p), drawn from ``seed``.
The arithmetic is exact: a*x needs up to 122 bits, so ``mulmod61`` splits both
factors into 32-bit halves, multiplies the halves (each product fits in 64
bits) and folds the high parts back using 2^61 = 1 (mod p). (datatrove and
datasketch compute ``(a*x + b) % p`` in uint64 and let a*x wrap mod 2^64
first, which is no longer the universal family.) Shingle hashes are reduced
mod p before hashing, so every signature value is in [0, p).

A signature is ``bands * rows_per_band`` minima. Band ``i`` of a document is
its rows ``[i*r, (i+1)*r)``; its LSH key is a 64-bit hash of those values (a
keyed linear combination mod 2^64, finalized with fmix64), so two documents
share a band key exactly when they share the band's rows (up to 2^-64
collisions). Two documents with Jaccard similarity s become candidates with
probability 1 - (1 - s^r)^b (``candidate_probability``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tasks.dedup.text import fmix64, multipliers

MERSENNE_61 = (1 << 61) - 1
_P = np.uint64(MERSENNE_61)
_M32 = np.uint64(0xFFFFFFFF)
_M29 = np.uint64((1 << 29) - 1)
_S3, _S29, _S32, _S61 = (np.uint64(s) for s in (3, 29, 32, 61))
SHINGLES_PER_CHUNK = 256  # rows of the (shingles x permutations) work arrays: 4 x 230 KB, cache-sized


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``a`` and ``b`` of each permutation, shape (num_perm,), uint64."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE_61, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE_61, size=num_perm, dtype=np.uint64)
    return a, b


def mod61(x: np.ndarray) -> np.ndarray:
    """x mod (2^61 - 1) for any uint64 array."""
    r = (x & _P) + (x >> _S61)
    return np.where(r >= _P, r - _P, r)


def mulmod61(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(a * x) mod (2^61 - 1), exact, for uint64 arrays with a, x < 2^61 (broadcasting)."""
    a_lo, a_hi = a & _M32, a >> _S32  # a_hi < 2^29
    x_lo, x_hi = x & _M32, x >> _S32
    low = a_lo * x_lo  # < 2^64
    mid = a_hi * x_lo + a_lo * x_hi  # < 2^62
    high = a_hi * x_hi  # < 2^58
    # a*x = high*2^64 + mid*2^32 + low, and 2^64 = 2^3, 2^61 = 1 (mod p)
    total = (high << _S3) + (mid >> _S29) + ((mid & _M29) << _S32) + (low & _P) + (low >> _S61)
    return mod61(total)


class _Workspace:
    """Preallocated (chunk x permutations) buffers, so the hot loop allocates nothing."""

    def __init__(self, rows: int, num_perm: int):
        self.low, self.mid, self.acc, self.tmp = (np.empty((rows, num_perm), np.uint64) for _ in range(4))

    def views(self, rows: int):
        return self.low[:rows], self.mid[:rows], self.acc[:rows], self.tmp[:rows]


def _permute_chunk(x: np.ndarray, a: np.ndarray, b: np.ndarray, work: _Workspace) -> np.ndarray:
    """(a*x + b) mod p for a chunk of shingles x < p, shape (len(x), K); mulmod61 done in place."""
    low, mid, acc, tmp = work.views(x.size)
    x_lo, x_hi = (x & _M32)[:, None], (x >> _S32)[:, None]
    a_lo, a_hi = (a & _M32)[None, :], (a >> _S32)[None, :]
    np.multiply(x_lo, a_lo, out=low)
    np.multiply(x_lo, a_hi, out=mid)
    np.multiply(x_hi, a_lo, out=tmp)
    mid += tmp
    np.multiply(x_hi, a_hi, out=acc)
    acc <<= _S3
    np.right_shift(mid, _S29, out=tmp)
    acc += tmp
    mid &= _M29
    mid <<= _S32
    acc += mid
    np.right_shift(low, _S61, out=tmp)
    acc += tmp
    low &= _P
    acc += low
    acc += b[None, :]  # acc < 2^63 here
    np.right_shift(acc, _S61, out=tmp)
    acc &= _P
    acc += tmp  # now < p + 4
    np.subtract(acc, _P, out=tmp)  # wraps to a huge value unless acc >= p
    np.minimum(acc, tmp, out=acc)
    return acc


try:
    from tasks import _minhash  # tasks/minhash.c, built by make setup
except ImportError:
    _minhash = None


def signatures(shingles: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, native=_minhash) -> np.ndarray:
    """MinHash signatures, shape (docs, num_perm), uint64 values in [0, 2^61 - 1).

    ``shingles[offsets[i]:offsets[i+1]]`` are the shingle hashes of document i;
    every document must have at least one (``shingle_hashes`` guarantees it).
    ``native``: the C loop (tasks/minhash.c, the same values, several times faster) or
    None for numpy, which works in chunks of shingles so memory does not grow with
    document size.
    """
    a, b = permutations(num_perm, seed)
    n_docs = offsets.size - 1
    sig = np.full((n_docs, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    if native is not None:
        native.signatures(np.ascontiguousarray(shingles, dtype=np.uint64),
                          np.ascontiguousarray(offsets, dtype=np.int64), a, b, sig)
        return sig
    x = mod61(shingles)
    doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
    work = _Workspace(min(SHINGLES_PER_CHUNK, max(x.size, 1)), num_perm)
    for lo in range(0, x.size, SHINGLES_PER_CHUNK):
        hi = min(lo + SHINGLES_PER_CHUNK, x.size)
        values = _permute_chunk(x[lo:hi], a, b, work)
        docs = doc_of[lo:hi]
        cuts = np.flatnonzero(np.concatenate(([True], docs[1:] != docs[:-1])))
        mins = np.minimum.reduceat(values, cuts, axis=0)
        sig[docs[cuts]] = np.minimum(sig[docs[cuts]], mins)
    return sig


def band_keys(sig: np.ndarray, bands: int, rows_per_band: int) -> np.ndarray:
    """LSH keys, shape (docs, bands), uint64: one hash of each band's rows."""
    n_docs = sig.shape[0]
    rows = sig[:, : bands * rows_per_band].reshape(n_docs, bands, rows_per_band)
    weights = multipliers(rows_per_band, 4)
    acc = (rows * weights[None, None, :]).sum(axis=2, dtype=np.uint64)
    band_salt = multipliers(bands, 5)
    return fmix64(acc ^ band_salt[None, :])


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature values: an unbiased estimate of Jaccard similarity."""
    return (sig_a == sig_b).mean(axis=-1)


def candidate_probability(similarity: float, bands: int, rows_per_band: int) -> float:
    """Chance that two documents with this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - similarity**rows_per_band) ** bands
