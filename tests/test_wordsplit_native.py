"""The filters' word scanner (tasks/wordsplit.c) against the token regex it replaces.

tokenize() must give the same words, token count and unspaced count as _TOKEN_RE's findall
on real pages and books, and on random strings built from the characters where the
regex's alternatives meet (URLs, abbreviations, inner dots, digit commas, apostrophes,
scripts without spaces, marks, Unicode whitespace, astral characters).
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from tasks.filters import text as T

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_the_scanner_is_built_and_in_use():
    assert T._NATIVE is not None, "tasks/_wordsplit is not built: run make setup"


def assert_same(text: str) -> None:
    expected = T.tokenize_with_regex(text)
    got = T.Tokens(*T._NATIVE.split(text))
    assert got == expected, text[:80]
    assert T._NATIVE.count_words(text) == len(expected.words)


def real_texts() -> list[str]:
    books = sorted((DATA / "reference").glob("*/*.txt.gz"))
    pages = sorted((DATA / "extraction-dev" / "html").glob("*.html.gz"))
    if not books or not pages:
        pytest.skip(f"real samples not found under {DATA} (see ../shared/data/README.md)")
    texts = []
    for book in books:
        text = gzip.decompress(book.read_bytes()).decode("utf-8")
        texts += [text[i : i + 20_000] for i in range(0, min(len(text), 400_000), 40_000)]
    for page in pages:  # raw HTML: markup, scripts, URLs, entities
        texts.append(gzip.decompress(page.read_bytes()).decode("utf-8", "replace")[:50_000])
    return texts


def test_same_tokens_on_real_text():
    texts = real_texts()
    for text in texts:
        assert_same(text)
    assert sum(len(T.tokenize_with_regex(t).words) for t in texts) > 500_000


PIECES = [
    "http://", "https://", "http:/", "https:", "htt", "example.com/a?b=c", ").", "!", "?", ")", "]", "}", ";",
    ":", ",", ".", "'", "\u2019", '"', "<", ">", "Mrs", "Mr", "Ms", "Dr", "St", "Prof", "etc", "vs", "Mlle",
    "Mme", "Capt", "word", "w", "3", "14", "1", "000", "\u0663", "\U0001fbf5", "x\u0301", "\u00ad", "\u200d",
    "\u200c", " ", "  ", "\n", "\t", "\u00a0", "\u3000", "\x1c", "\u2028", "中", "文", "タ", "ก", "\U00020001",
    "\U0001f600", "\U00010400", "_", "-", "—", "...", "éé", "ß", "İ", "\x00", "#", "@", "%",
]


def test_same_tokens_on_random_strings():
    rng = random.Random(5)
    for _ in range(6000):
        assert_same("".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 30))))


@pytest.mark.parametrize(
    "text",
    ["", " ", "Mrs. Smith", "Mrs.Smith", "Mr.", "St.Paul", "1,000,000.5", "1,a", "a,1", "don't", "'tis", "x''y",
     "see https://example.com/path).", "https://", "http://...", "e.g. this", "\u0663,\u0664", "3,\U0001fbf5"],
)
def test_same_tokens_on_edge_cases(text):
    assert_same(text)
