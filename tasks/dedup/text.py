"""Text normalization, word hashing and shingling, vectorized over a batch of documents.

Normalization (what two texts must share to count as the same):

* lowercase (``str.lower``);
* every code point whose Unicode category is punctuation (P*), symbol (S*),
  separator (Z*), number (N*, so digits too) or other (C*: controls, format,
  private use, unassigned) is a word separator; letters (L*) and combining
  marks (M*) make up words. Runs of separators are one separator;
* scripts written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer,
  Myanmar, Tibetan) are split into single characters, each its own word, so a
  Chinese or Japanese document gets character n-gram shingles instead of one
  giant "word". Hangul is written with spaces and stays word-based.

No accent folding and no Unicode normalization form (NFKC) are applied.

Hashing: each word gets a 64-bit hash (a multilinear hash of its code points
with random per-position multipliers mod 2^64, then the murmur3 64-bit
finalizer); a shingle of ``n`` consecutive words gets a 64-bit hash that is a
position-weighted sum of its word hashes, finalized the same way. Everything
runs as numpy array operations over all documents of a batch at once; there is
no per-word Python code.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

SEPARATOR, WORD, OWN_WORD = 0, 1, 2
# Scripts written without spaces between words: each character is a word.
NO_SPACE_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # halfwidth Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B..H
)
MASK64 = (1 << 64) - 1
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
POSITIONS = 1024  # distinct per-position multipliers in a word; longer tokens wrap around
EMPTY_SHINGLE = np.uint64(0x9E3779B97F4A7C15)  # the one shingle of a document without words


_UNKNOWN = 255
# SEPARATOR, WORD or OWN_WORD per code point, filled in as code points are first seen: a
# process meets a few thousand distinct ones, and classifying all 1.1 million up front
# cost 1.3 s of every dedup worker's first batch.
_classes = np.full(0x110000, _UNKNOWN, np.uint8)


def _class_of(cp: int) -> int:
    if unicodedata.category(chr(cp))[0] not in "LM":
        return SEPARATOR
    for lo, hi in NO_SPACE_RANGES:
        if lo <= cp <= hi:
            return OWN_WORD
    return WORD


def char_classes(cps: np.ndarray) -> np.ndarray:
    """SEPARATOR, WORD or OWN_WORD for each code point of ``cps``."""
    kind = _classes[cps]
    unknown = kind == _UNKNOWN
    if unknown.any():
        new = np.unique(cps[unknown])
        _classes[new] = [_class_of(int(cp)) for cp in new]
        kind = _classes[cps]
    return kind


@lru_cache(maxsize=4)
def multipliers(count: int, salt: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers: part of the hash definition, not a run parameter."""
    rng = np.random.default_rng(0x5EED0000 + salt)
    return rng.integers(0, 1 << 63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer: every input bit affects every output bit."""
    h = h ^ (h >> _S33)
    h *= _FMIX1
    h ^= h >> _S33
    h *= _FMIX2
    h ^= h >> _S33
    return h


def words(text: str) -> list[str]:
    """The normalized words of ``text`` (the reference, non-vectorized tokenizer)."""
    lowered = text.lower()
    kinds = char_classes(np.array([ord(ch) for ch in lowered], dtype=np.int64))
    out: list[str] = []
    current: list[str] = []
    for ch, kind in zip(lowered, kinds):
        if kind != WORD and current:
            out.append("".join(current))
            current = []
        if kind == WORD:
            current.append(ch)
        elif kind == OWN_WORD:
            out.append(ch)
    if current:
        out.append("".join(current))
    return out


def normalize_text(text: str) -> str:
    """Normalized text: the words joined by single spaces."""
    return " ".join(words(text))


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the normalized words of every text.

    Returns ``(hashes, offsets)``: the words of text ``i`` are
    ``hashes[offsets[i]:offsets[i + 1]]``.
    """
    if not texts:
        return np.zeros(0, np.uint64), np.zeros(1, np.int64)
    lowered = [text.lower() for text in texts]
    # "\n" is a separator, so no word spans two documents.
    cps = np.frombuffer("\n".join(lowered).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    kind = char_classes(cps)
    is_word = kind != SEPARATOR
    own = kind == OWN_WORD
    prev_word = np.concatenate(([False], is_word[:-1]))
    prev_own = np.concatenate(([False], own[:-1]))
    starts_here = is_word & (~prev_word | own | prev_own)

    chars = np.flatnonzero(is_word)
    first = np.flatnonzero(starts_here[chars])  # index into `chars` of each word's first char
    word_of_char = np.cumsum(starts_here[chars]) - 1
    position = np.arange(chars.size) - first[word_of_char]
    terms = (cps[chars].astype(np.uint64) + np.uint64(1)) * multipliers(POSITIONS, 1)[position % POSITIONS]
    sums = np.add.reduceat(terms, first) if first.size else np.zeros(0, np.uint64)
    lengths = np.diff(np.append(first, chars.size)).astype(np.uint64)
    hashes = fmix64(sums ^ (lengths * multipliers(1, 2)[0]))

    doc_starts = np.cumsum([0] + [len(text) + 1 for text in lowered[:-1]])
    offsets = np.searchsorted(chars[first], doc_starts)
    return hashes, np.append(offsets, first.size).astype(np.int64)


def shingle_hashes(hashes: np.ndarray, offsets: np.ndarray, ngram_words: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every run of ``ngram_words`` consecutive words, per document.

    A document with fewer words than that is one shingle (all its words); one with
    no words is the single shingle EMPTY_SHINGLE. Returns ``(shingles, offsets)``
    laid out like ``word_hashes``.
    """
    n_words = np.diff(offsets)
    counts = np.where(n_words >= ngram_words, n_words - ngram_words + 1, 1)
    sh_offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    doc = np.repeat(np.arange(n_words.size), counts)
    start = offsets[:-1][doc] + (np.arange(sh_offsets[-1]) - sh_offsets[:-1][doc])
    width = np.minimum(n_words, ngram_words)[doc]
    padded = np.concatenate((hashes, np.zeros(ngram_words, np.uint64)))
    weights = multipliers(ngram_words, 3)
    acc = np.zeros(start.size, np.uint64)
    for j in range(ngram_words):
        acc += np.where(j < width, padded[start + j] * weights[j], np.uint64(0))
    shingles = fmix64(acc ^ (width.astype(np.uint64) * EMPTY_SHINGLE))
    shingles[width == 0] = EMPTY_SHINGLE
    return shingles, sh_offsets
