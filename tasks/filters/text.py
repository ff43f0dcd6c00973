"""Text utilities shared by the quality filters: words, lines, paragraphs, n-grams.

Words
-----
``tokenize`` splits a text the way the Gopher/FineWeb rules expect: a *token* is a
word or a run of punctuation / symbols, and a *word* is a token made of letters,
digits and combining marks. Punctuation is split off words ("end." is "end" +
"."), as the word tokenizers behind FineWeb's thresholds do (datatrove with
spaCy / NLTK), so ratios over tokens keep their meaning. A run of adjacent
marks is one token ('."', '...', '--', '!—'); '_' is a mark. Special cases:

* a word may hold inner dots and digit-group commas ("e.g", "example.com",
  "3.14", "1,000"), a few title abbreviations keep their dot ("Mrs.", "St.")
  and an http(s) URL is one word;
* an apostrophe followed by letters, right after a word, is its own word ("don't" -> "don", "'t"; "It's" ->
  "It", "'s"), so a contraction counts as two words;
* combining marks belong to the word (Devanagari, Hebrew points, decomposed
  accents), unlike Python's ``\\w``, and so do soft hyphens and zero-width
  (non-)joiners;
* scripts written without spaces between words (Han, hiragana, katakana,
  Thai, Lao, Khmer, Myanmar) give one word per character. A Chinese word is
  about 1.5 characters, so counts stay within a small factor of real word
  counts and a Chinese page is not "too short" just because it has no spaces.
  ``Tokens.n_unspaced`` says how many words came from such scripts, for rules
  (mean word length) that only make sense for space-separated words.

Everything is a few precompiled regular expressions run by ``re`` in C (the token
regex as a hand-written scanner, tasks/wordsplit.c, when built); the
results of the last two texts are cached, because the two Gopher filters (and
FineWeb, when C4 left the text as it was) tokenize the same text.

N-grams
-------
``NGrams`` hashes the word n-grams of a document to 64-bit integers with numpy
(a rolling polynomial hash over the words' hashes), so the repetition statistics of
Gopher (Rae et al. 2021, table A1) need one sort per n instead of a Python loop
over joined strings. Only the n-grams that can matter are sorted:
counts can only shrink as n grows, which gives cheap upper bounds.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from itertools import filterfalse

import numpy as np

# Scripts written without spaces between words: one word per character.
# Thai, Lao, Myanmar, Khmer, hiragana + katakana, katakana phonetic extensions,
# CJK extension A, CJK unified ideographs, CJK compatibility ideographs,
# half-width katakana, CJK extensions B..H (planes 2 and 3).
UNSPACED_RANGES = (
    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF), (0x31F0, 0x31FF),
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x323AF),
)

# Sentence-final marks of many scripts (Latin, CJK full and half width, Devanagari
# danda, Arabic/Urdu, Armenian, Ethiopic, Myanmar, Khmer, Tibetan, interrobangs).
TERMINAL_PUNCTUATION = tuple(".!?。！？｡．।॥؟۔։።፧။។៕‼⁇⁈⁉‽⸮")


def _class(ranges) -> str:
    """A regex character class body for inclusive code point ranges."""
    parts = []
    for lo, hi in ranges:
        parts.append(re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}")
    return "".join(parts)


def _word_char_ranges() -> list[tuple[int, int]]:
    """BMP letters, marks and numbers outside the unspaced scripts, plus the SMP.

    Built from the Unicode database once at import (about 0.05 s). Supplementary
    planes are one coarse range (historic scripts, mathematical letters) minus
    the emoji and symbol blocks from U+1F000: ``re`` tests ranges above U+FFFF one
    by one, so a precise list there would slow every match down several times.
    """
    unspaced = bytearray(0x10000)
    for lo, hi in UNSPACED_RANGES:
        if lo < 0x10000:
            unspaced[lo:hi + 1] = b"\x01" * (hi + 1 - lo)
    ranges, start = [], None
    for code in range(0x10000):
        is_word = not unspaced[code] and unicodedata.category(chr(code))[0] in "LMN"
        if is_word and start is None:
            start = code
        elif not is_word and start is not None:
            ranges.append((start, code - 1))
            start = None
    if start is not None:
        ranges.append((start, 0xFFFF))
    ranges.append((0x10000, 0x1EFFF))
    # invisible joiners that sit inside words: soft hyphen, zero-width (non-)joiner
    return sorted(ranges + [(0x00AD, 0x00AD), (0x200C, 0x200D)])


_WORD_RANGES = _word_char_ranges()
_W = _class(_WORD_RANGES)
_U = _class(UNSPACED_RANGES)
_ABBREVIATIONS = ("Mrs", "Mr", "Ms", "Dr", "St", "Mt", "Jr", "Sr", "Prof", "Rev", "Gen", "Gov", "Sen", "Col",
                  "Capt", "Lt", "Sgt", "Mme", "Mlle", "vs", "etc")
_ABBREVIATION = (  # the lookahead on first letters is only a fast path
    f"(?=[{''.join(sorted({a[0] for a in _ABBREVIATIONS}))}])(?:{'|'.join(_ABBREVIATIONS)})\\.(?![{_W}])"
)
_WORD = (
    r"https?://[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]"  # a URL is one word
    rf"|{_ABBREVIATION}"  # "Mrs." keeps its dot
    rf"|[{_W}]+(?:(?:\.|(?<=\d),(?=\d))[{_W}]+)*"  # word with inner dots / digit-group commas
    rf"|(?<=[{_W}])['’][{_W}]+"  # apostrophe suffix: 's, 't, 'll
    rf"|[{_U}]"  # one character of a script without spaces
)  # the URL and the abbreviations must come before the plain word they start with
# One match per token: group 1 is the word, or "" for a punctuation/symbol token.
_TOKEN_RE = re.compile(rf"({_WORD})|[^\s{_W}{_U}]+")
_UNSPACED_RE = re.compile(rf"[{_U}]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_PARAGRAPH_BREAK_RE = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Tokens:
    """Words of a text and its token count (words plus punctuation/symbol tokens)."""

    words: tuple[str, ...]
    n_tokens: int
    n_unspaced: int  # words that are single characters of scripts without spaces


def _load_native():
    """tasks._wordsplit (tasks/wordsplit.c, built by make setup): _TOKEN_RE as a scanner, with
    its character classes from the same ranges; the same tokens, about 5x faster."""
    try:
        from tasks import _wordsplit
    except ImportError:
        return None
    table = np.zeros(0x110000, np.uint8)
    for lo, hi in _WORD_RANGES:
        table[lo : hi + 1] |= 1
    for lo, hi in UNSPACED_RANGES:
        table[lo : hi + 1] |= 2
    _wordsplit.configure(table.tobytes(), _ABBREVIATIONS)
    return _wordsplit


_NATIVE = _load_native()


@lru_cache(maxsize=2)
def tokenize(text: str) -> Tokens:
    """Words and token counts of ``text`` (cached for the last two texts)."""
    if _NATIVE is not None:
        return Tokens(*_NATIVE.split(text))
    return tokenize_with_regex(text)


def tokenize_with_regex(text: str) -> Tokens:
    """What tokenize returns, from _TOKEN_RE itself (the definition, and the fallback)."""
    matches = _TOKEN_RE.findall(text)
    words = tuple(filter(None, matches))
    n_unspaced = 0 if text.isascii() else len(_UNSPACED_RE.findall(text))
    return Tokens(words, len(matches), n_unspaced)


def count_words(text: str) -> int:
    """Number of words, uncached (for short pieces such as lines)."""
    if _NATIVE is not None:
        return _NATIVE.count_words(text)
    return len(list(filter(None, _TOKEN_RE.findall(text))))


def has_unspaced_script(text: str) -> bool:
    return not text.isascii() and _UNSPACED_RE.search(text) is not None


def count_words_with_letter(words_: tuple[str, ...] | list[str]) -> int:
    """Words holding at least one letter (of any script)."""
    not_all_letters = list(filterfalse(str.isalpha, words_))
    return len(words_) - len(not_all_letters) + len(list(filter(_LETTER_RE.search, not_all_letters)))


def split_lines(text: str) -> list[str]:
    """Non-blank lines, stripped of surrounding whitespace (any Unicode line break)."""
    return [line for line in map(str.strip, text.splitlines()) if line]


def split_paragraphs(text: str) -> list[str]:
    """Blocks separated by blank lines (a line of only whitespace counts as blank)."""
    stripped = text.strip()
    if not stripped:
        return []
    return [para.strip() for para in _PARAGRAPH_BREAK_RE.split(stripped)]


def duplicate_stats(items: list[str]) -> tuple[int, int]:
    """(items equal to an earlier item, their total characters)."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items, dup_chars


_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the rolling hash below is a bijection per step


class NGrams:
    """Word n-grams of one document as 64-bit hashes, for repetition statistics.

    The hash of the n-gram at position i is a polynomial over the words'
    Python hashes (SipHash), wrapping at 2**64; two different n-grams share a
    hash with odds of about 2**-64 (string hashes are salted per process, so
    only such a collision could make two runs differ).

    The character length of an n-gram is the sum of its words' lengths (the
    separators between words are not counted). Call ``top_chars`` and
    ``duplicate_chars`` with increasing n: the most frequent n-gram's count
    can only shrink as n grows, and once an n has no repeated n-gram no larger
    n has one, which lets both skip their sort.
    """

    def __init__(self, words_: tuple[str, ...] | list[str]):
        self.n_words = len(words_)
        self._unigrams = np.fromiter(map(hash, words_), dtype=np.int64, count=self.n_words).view(np.uint64)
        self._lengths = np.fromiter(map(len, words_), dtype=np.int64, count=self.n_words)
        self._char_offsets = np.concatenate(([0], np.cumsum(self._lengths)))  # chars before word i
        self._hashes = {1: self._unigrams}
        self._count_bound = (1, self.n_words)  # (n, c): no k-gram with k >= n occurs more than c times

    def hashes(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at each position (length n_words - n + 1)."""
        if n in self._hashes:
            return self._hashes[n]
        below = max(k for k in self._hashes if k < n)
        h = self._hashes[below]
        for k in range(below + 1, n + 1):
            h = h[:-1] * _MULTIPLIER + self._unigrams[k - 1:]
            self._hashes[k] = h
        return h

    def max_chars(self, n: int) -> int:
        """Characters of the longest n-gram."""
        if self.n_words < n:
            return 0
        offsets = self._char_offsets
        return int((offsets[n:] - offsets[:-n]).max())

    def max_count_bound(self, n: int) -> int:
        """An upper bound on how often any n-gram occurs."""
        known_n, count = self._count_bound
        return count if known_n <= n else self.n_words

    def _note_max_count(self, n: int, count: int) -> None:
        if n >= self._count_bound[0] and count <= self._count_bound[1]:
            self._count_bound = (n, count)

    def top_chars(self, n: int) -> int:
        """Count of the most frequent n-gram times its characters (0 if no n-grams).

        Among equally frequent n-grams the longest counts, so ties do not
        depend on hash order.
        """
        if self.n_words < n:
            return 0
        h = self.hashes(n)
        order = np.argsort(h)
        ordered = h[order]
        run_starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        run_lengths = np.diff(np.append(run_starts, len(ordered)))
        best = int(run_lengths.max())
        self._note_max_count(n, best)
        if best == 1:
            return self.max_chars(n)
        positions = order[run_starts[run_lengths == best]]  # one occurrence of each top n-gram
        offsets = self._char_offsets
        return best * int((offsets[positions + n] - offsets[positions]).max())

    def top_chars_bound(self, n: int) -> int:
        """A cheap upper bound on ``top_chars(n)``."""
        return self.max_count_bound(n) * self.max_chars(n)

    def duplicate_chars(self, n: int) -> int:
        """Characters of the words covered by an n-gram that already occurred earlier.

        Each word counts once however many repeated n-grams cover it; the first
        occurrence of a repeated n-gram is not counted, only its repeats.
        """
        if self.n_words < n or self.max_count_bound(n) == 1:
            return 0
        h = self.hashes(n)
        ordered = np.sort(h)
        repeated_values = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(repeated_values) == 0:
            self._note_max_count(n, 1)
            return 0
        candidates = np.flatnonzero(np.isin(h, repeated_values))  # every occurrence, in text order
        _, first = np.unique(h[candidates], return_index=True)
        is_repeat = np.ones(len(candidates), dtype=bool)
        is_repeat[first] = False
        repeats = candidates[is_repeat]
        starts = np.zeros(self.n_words + 1, dtype=np.int32)
        starts[repeats] += 1
        starts[repeats + n] -= 1
        covered = np.cumsum(starts[:-1]) > 0
        return int(self._lengths[covered].sum())
