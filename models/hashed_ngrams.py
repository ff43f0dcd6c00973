"""The quality classifier's score, computed for a whole batch at once with numpy.

scikit-learn's ``HashingVectorizer`` makes every word and character n-gram a Python string and
hashes them one at a time: nearly all of the old scoring time (``bench/quality.py --part
classifier`` prints the profile). Here a chunk of documents is joined into one buffer in which
every n-gram is a span (byte offset, byte length), MurmurHash3 runs on all spans at once, and
the counts, L2 norms and dot product with the weights are done on arrays sorted one document
at a time. The tokens, n-grams, hashes, counts and the order of every floating-point sum are
those of the scikit-learn pipeline, so the scores are equal to the bit
(tests/test_hashed_ngrams.py and tests/test_quality_classifier.py compare them).

``HashedLinearModel.from_pipeline`` returns None for a pipeline with a setting not reproduced
here (another analyzer, ``binary``, ``alternate_sign``, stop words...): that one is scored by
scikit-learn itself.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["TOKEN_PATTERN", "HashedLinearModel", "murmurhash3_32"]

# Words, and each punctuation mark as its own token: "said ." and ", and" are useful bigrams.
TOKEN_PATTERN = r"(?u)\w+|[^\w\s]"

# Settings of a HashingVectorizer this module reproduces (ngram_range, n_features, analyzer
# and token_pattern are read from the vectorizer; everything else must be as here).
_SUPPORTED_PARAMS = dict(input="content", encoding="utf-8", decode_error="strict", strip_accents=None,
                         lowercase=True, preprocessor=None, tokenizer=None, stop_words=None, binary=False,
                         norm="l2", alternate_sign=False, dtype=np.float32)
_MAX_CHUNK_CHARS = 1 << 16  # characters per internal chunk: arrays of a few hundred KB stay in cache

_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)
_TAIL_MASK = np.array([0, 0xFF, 0xFFFF, 0xFFFFFF], dtype=np.uint32)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    """Rotate left by ``r`` bits, in place."""
    high = x >> np.uint32(32 - r)
    x <<= np.uint32(r)
    x |= high
    return x


def _mix_k1(k1: np.ndarray) -> np.ndarray:
    k1 *= _C1
    _rotl(k1, 15)
    k1 *= _C2
    return k1


def _words32(buffer: bytes) -> np.ndarray:
    """At every byte offset p of ``buffer`` (and one past its end), bytes p..p+3 as a little-endian uint32."""
    n = len(buffer) + 1
    padded = buffer + bytes(8)
    words = np.empty(n + 3, dtype=np.uint32)
    for shift in range(4):
        count = len(words[shift::4])
        words[shift::4] = np.frombuffer(padded, dtype="<u4", count=count, offset=shift)
    return words[:n]


def murmurhash3_32(words32: np.ndarray, starts: np.ndarray, lengths: np.ndarray | int) -> np.ndarray:
    """MurmurHash3 (x86, 32-bit, seed 0) of each span ``buffer[start:start + length]``, as int32.

    ``words32`` is ``_words32(buffer)``. Equal to ``sklearn.utils.murmurhash3_32(span, seed=0)``,
    the hash ``HashingVectorizer`` uses. Spans of one length (an int ``lengths``: a group of
    ASCII character n-grams) take a shorter path.
    """
    if isinstance(lengths, int):
        return _murmurhash3_one_length(words32, starts, lengths)
    if len(starts) and lengths.min() == lengths.max():
        return _murmurhash3_one_length(words32, starts, int(lengths[0]))
    h = np.zeros(len(starts), dtype=np.uint32)
    blocks = lengths >> 2
    rows = np.arange(len(starts))
    for k in range(int(blocks.max(initial=0))):
        rows = rows[blocks[rows] > k]  # the spans with a k-th block: fewer each round
        hk = h[rows]
        hk ^= _mix_k1(words32[starts[rows] + 4 * k])
        _rotl(hk, 13)
        hk *= np.uint32(5)
        hk += np.uint32(0xE6546B64)
        h[rows] = hk
    tail = words32[starts + (blocks << 2)]
    tail &= _TAIL_MASK[lengths & 3]  # a zero tail mixes in as nothing
    h ^= _mix_k1(tail)
    h ^= lengths.astype(np.uint32)
    return _finish(h)


def _murmurhash3_one_length(words32: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    def block(offset: int) -> np.ndarray:  # the 4 bytes at each span's start + offset
        return words32.take(starts + offset if offset else starts)

    h = None
    for k in range(length >> 2):
        k1 = _mix_k1(block(4 * k))
        if h is None:
            h = k1  # h starts at 0 (the seed): 0 ^ k1 is k1
        else:
            h ^= k1
        _rotl(h, 13)
        h *= np.uint32(5)
        h += np.uint32(0xE6546B64)
    if length & 3:
        tail = block(length & ~3)
        tail &= _TAIL_MASK[length & 3]
        tail = _mix_k1(tail)
        h = tail if h is None else h ^ tail
    if h is None:  # length 0
        h = np.zeros(len(starts), dtype=np.uint32)
    h ^= np.uint32(length)
    return _finish(h)


def _finish(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h.view(np.int32)


@dataclass(frozen=True)
class NgramSpans:
    """The n-grams of one feature block of a chunk of documents, one group per n.

    A group is (starts, lengths, bounds): the span of each n-gram in the buffer ``words32`` was
    made from, ordered by document (lengths: one int when all are equal), and where each
    document's n-grams begin: document d's are ``bounds[d]:bounds[d + 1]``.
    """

    words32: np.ndarray
    groups: list[tuple[np.ndarray, np.ndarray | int, list[int]]]

    def feature_indices(self, starts: np.ndarray, lengths: np.ndarray | int, n_features: int,
                        offset: int = 0) -> np.ndarray:
        """``offset + abs(hash) % n_features`` as uint32 (abs(-2**31) is 2**31, as scikit-learn defines it)."""
        indices = np.abs(murmurhash3_32(self.words32, starts, lengths)).view(np.uint32)
        if n_features & (n_features - 1) == 0:
            indices &= np.uint32(n_features - 1)
        else:
            indices %= np.uint32(n_features)
        if offset:
            indices += np.uint32(offset)
        return indices


def word_ngram_spans(lowered: Sequence[str], ngram_range: tuple[int, int]) -> NgramSpans:
    """Word n-grams as scikit-learn's ``analyzer="word"`` makes them (``TOKEN_PATTERN``): tokens joined by a space."""
    joined, counts = _joined_tokens(lowered)
    buffer = joined.encode("utf-8")
    spaces = np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == 0x20)  # no token holds a space
    token_count = len(spaces) + 1 if buffer else 0
    starts = np.concatenate([[0], spaces + 1])[:token_count]
    ends = np.concatenate([spaces, [len(buffer)]])[:token_count]
    token_docs = np.repeat(np.arange(len(lowered)), counts)
    doc_bounds = np.concatenate([[0], np.cumsum(counts)])  # in tokens
    groups = []
    for n in range(ngram_range[0], min(ngram_range[1], token_count) + 1):
        first, last = slice(0, token_count - n + 1), slice(n - 1, token_count)
        inside = np.flatnonzero(token_docs[first] == token_docs[last])  # not across two documents
        bounds = np.searchsorted(inside, doc_bounds).tolist()
        groups.append((starts[inside], ends[inside + n - 1] - starts[inside], bounds))
    return NgramSpans(_words32(buffer), groups)


def _joined_tokens(lowered: Sequence[str]) -> tuple[str, np.ndarray]:
    """All documents' ``TOKEN_PATTERN`` tokens joined by single spaces, and the tokens per document.

    The pattern's tokens are runs of word characters and single characters that are neither word
    nor space, so classifying every character (``_char_classes``) finds them without the regex.
    """
    text = "\n".join(lowered)  # a space character: no token crosses two documents
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    classes = _char_classes(points)
    word, other = classes == _WORD, classes == _OTHER
    starts = np.flatnonzero(other | (word & ~np.concatenate([[False], word[:-1]])))
    ends = np.flatnonzero(other | (word & ~np.concatenate([word[1:], [False]]))) + 1
    lengths = ends - starts
    doc_starts = np.cumsum([0] + [len(t) + 1 for t in lowered[:-1]])
    counts = np.bincount(np.searchsorted(doc_starts, starts, side="right") - 1, minlength=len(lowered))
    if not len(starts):
        return "", counts
    token_of_char = np.repeat(np.arange(len(starts)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.full(int(lengths.sum()) + len(starts) - 1, 0x20, dtype=np.uint32)
    out[np.arange(len(within)) + token_of_char] = points[starts[token_of_char] + within]
    return out.tobytes().decode("utf-32-le", "surrogatepass"), counts


_SPACE, _WORD, _OTHER = 0, 1, 2
_BMP = 0x10000


@functools.cache
def _bmp_classes() -> np.ndarray:
    """The class of every code point below 0x10000, as the regex module sees it (``\\s``, ``\\w``)."""
    every = "".join(map(chr, range(_BMP)))
    classes = np.full(_BMP, _OTHER, dtype=np.uint8)
    classes[[m.start() for m in re.finditer(r"(?u)\w", every)]] = _WORD
    classes[[m.start() for m in re.finditer(r"(?u)\s", every)]] = _SPACE
    return classes


def _class_of(cp: int) -> int:
    char = chr(cp)
    return _SPACE if re.fullmatch(r"(?u)\s", char) else _WORD if re.fullmatch(r"(?u)\w", char) else _OTHER


def _char_classes(points: np.ndarray) -> np.ndarray:
    table = _bmp_classes()
    classes = table[np.minimum(points, _BMP - 1)]
    astral = np.flatnonzero(points >= _BMP)
    if len(astral):
        classes[astral] = [_class_of(int(cp)) for cp in points[astral]]
    return classes


def char_wb_spans(lowered: Sequence[str], ngram_range: tuple[int, int]) -> NgramSpans:
    """Character n-grams inside space-padded words, as scikit-learn's ``analyzer="char_wb"`` makes them.

    The documents' words are joined by single spaces, so a padded word " w " is the span from
    one space to the next and neighbouring words share a space (hence ``min_n >= 2``).
    """
    min_n, max_n = ngram_range
    joined = [" ".join(text.split()) for text in lowered]
    if not any(joined):
        return NgramSpans(_words32(b""), [])
    text = " " + " ".join(j for j in joined if j) + " "
    buffer = text.encode("utf-8")
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if len(buffer) == len(text):  # ASCII: a character is a byte
        char_bytes = None
        is_space = raw == 0x20
    else:
        char_bytes = np.append(np.flatnonzero((raw & 0xC0) != 0x80), len(buffer))
        is_space = raw[char_bytes[:-1]] == 0x20
    spaces = np.flatnonzero(is_space).astype(np.int32)
    # Every character but the final space starts n-grams; room: characters after it up to its word's closing space.
    closing_space = spaces[np.cumsum(is_space[:-1], dtype=np.int32)]
    room = closing_space - np.arange(len(closing_space), dtype=np.int32)
    doc_bounds = np.cumsum([0] + [len(j) + 1 if j else 0 for j in joined])  # in characters
    leading_space = is_space[:-1]
    groups = []
    for n in range(min_n, max_n + 1):
        fits = room >= n - 1
        if n == min_n > 3:  # a padded word (3 characters or more) shorter than min_n is one n-gram, all of it
            starts = np.flatnonzero(fits | (leading_space & (room < n - 1)))
            lengths = np.where(fits[starts], n, room[starts] + 1)
        else:
            starts, lengths = np.flatnonzero(fits), n
        bounds = np.searchsorted(starts, doc_bounds).tolist()
        if char_bytes is not None:
            starts, lengths = char_bytes[starts], char_bytes[starts + lengths] - char_bytes[starts]
        groups.append((starts, lengths, bounds))
    return NgramSpans(_words32(buffer), groups)


def _chunks(texts: Sequence[str]) -> list[slice]:
    bounds, size, start = [], 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= _MAX_CHUNK_CHARS:
            bounds.append(slice(start, i + 1))
            start, size = i + 1, 0
    if start < len(texts):
        bounds.append(slice(start, len(texts)))
    return bounds


@dataclass(frozen=True)
class HashedLinearModel:
    """Hashed word n-grams (and char_wb n-grams), each block L2-normalised, and a linear model on them."""

    n_features: int
    word_ngrams: tuple[int, int]
    char_ngrams: tuple[int, int] | None
    coef: np.ndarray  # (blocks * n_features,): the words block, then the chars block
    intercept: float

    @classmethod
    def from_pipeline(cls, pipeline) -> HashedLinearModel | None:
        """The model of ``build_pipeline``'s pipeline once fitted; None for any setting not reproduced here."""
        union, model = pipeline["features"], pipeline["model"]
        names = [name for name, _ in union.transformer_list]
        if names not in (["words"], ["words", "chars"]) or union.transformer_weights is not None:
            return None
        vectorizers = [vectorizer for _, vectorizer in union.transformer_list]
        if any(not _reproducible(v) for v in vectorizers) or len({v.n_features for v in vectorizers}) != 1:
            return None
        words, chars = vectorizers[0], (vectorizers[1] if len(vectorizers) == 2 else None)
        if words.analyzer != "word" or words.token_pattern != TOKEN_PATTERN:
            return None
        if chars is not None and (chars.analyzer != "char_wb" or chars.ngram_range[0] < 2):
            return None
        coef = np.asarray(getattr(model, "coef_", np.zeros((0, 0))))
        width = words.n_features * len(vectorizers)
        if list(getattr(model, "classes_", [])) != [0, 1] or coef.shape != (1, width) or width >= 2**32:
            return None
        return cls(n_features=words.n_features,
                   word_ngrams=tuple(words.ngram_range), char_ngrams=tuple(chars.ngram_range) if chars else None,
                   coef=coef[0], intercept=float(model.intercept_[0]))

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        """The linear model's decision value per text (the pipeline's ``decision_function``)."""
        out = np.empty(len(texts), dtype=np.float64)
        for chunk in _chunks(texts):
            out[chunk] = self._decision(texts[chunk])
        return out

    def _decision(self, texts: Sequence[str]) -> np.ndarray:
        lowered = [text.lower() for text in texts]
        blocks = [word_ngram_spans(lowered, self.word_ngrams)]
        if self.char_ngrams is not None:
            blocks.append(char_wb_spans(lowered, self.char_ngrams))
        parts = []  # (columns, document bounds) per n-gram group; a column is the block's offset + feature index
        for b, spans in enumerate(blocks):
            for starts, lengths, bounds in spans.groups:
                parts.append((spans.feature_indices(starts, lengths, self.n_features, b * self.n_features), bounds))
        if not parts:  # no document holds a word: every row of the feature matrix is empty
            return np.full(len(texts), self.intercept)
        row_starts = np.zeros(len(texts) + 1, dtype=np.int64)
        for _, bounds in parts:
            row_starts[1:] += np.diff(bounds)
        row_starts = np.cumsum(row_starts)
        columns = np.empty(int(row_starts[-1]), dtype=np.uint32)
        # Sorted one document at a time (small sorts are much faster than one big one): then the
        # entries of a document are in the order of a CSR row with sorted indices.
        for d in range(len(texts)):
            row = columns[row_starts[d]:row_starts[d + 1]]
            np.concatenate([c[bounds[d]:bounds[d + 1]] for c, bounds in parts], out=row)
            row.sort()
        first = np.ones(len(columns), dtype=bool)  # the first entry of each (document, column)
        first[1:] = columns[1:] != columns[:-1]
        first[row_starts[:-1][row_starts[:-1] < len(columns)]] = True
        firsts = np.flatnonzero(first)
        counts = np.diff(np.append(firsts, len(columns))).astype(np.float32)
        docs = np.repeat(np.arange(len(texts)), np.diff(np.searchsorted(firsts, row_starts)))
        columns = columns[firsts]
        norm_rows = docs * len(blocks)  # one L2 norm per document and block
        if len(blocks) == 2:
            norm_rows += columns >= self.n_features
        squares = np.bincount(norm_rows, weights=(counts * counts).astype(np.float64),
                              minlength=len(texts) * len(blocks))
        values = (counts.astype(np.float64) / np.sqrt(squares)[norm_rows]).astype(np.float32)
        # The sum of a CSR matrix-vector product: in the weights' type (float32 as SGD fits it), in order.
        dtype = np.result_type(np.float32, self.coef.dtype)
        dot = np.zeros(len(texts), dtype=dtype)
        np.add.at(dot, docs, values.astype(dtype) * self.coef[columns])
        return dot.astype(np.float64) + self.intercept


def _reproducible(vectorizer) -> bool:
    params = vectorizer.get_params()
    return all(params.get(name) == value for name, value in _SUPPORTED_PARAMS.items())
