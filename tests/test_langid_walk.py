"""Language id with the C feature walk (tasks/langid_walk.c) against py3langid's own code.

The C walk and the float32 weights must not change a single score: the same (language,
probability) as py3langid, bit for bit, on real pages and books and on odd inputs.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tasks import langid

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def reference():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def test_the_c_walk_is_built_and_in_use():
    assert type(langid._identifier()).__name__ == "Identifier", "tasks/_langid_walk is not built: run make setup"


ODD = ["", " ", "!!!", "123 456", "x" * 3000, "日本語のテキストです。", "\ud800 lone surrogate", "ÀÉÎ ÕÜ",
       "Ein kurzer Satz. A short sentence.", "\x00\x01\x02", "Привет, как дела?", "🙂" * 50]


def sample_texts() -> list[str]:
    books = sorted((DATA / "reference").glob("*/*.txt.gz"))
    if not books:
        pytest.skip(f"reference books not found under {DATA / 'reference'} (see ../shared/data/README.md)")
    texts = []
    for book in books:
        text = gzip.decompress(book.read_bytes()).decode("utf-8")
        texts += [text[i : i + 1500] for i in range(0, min(len(text), 200_000), 9_000)]
    return texts


def test_scores_equal_py3langid_bit_for_bit():
    ours, theirs = langid._identifier(), reference()
    texts = sample_texts() + ODD
    for text in texts:
        assert ours.classify(text) == theirs.classify(text), text[:60]
        assert ours._decide(text).tobytes() == theirs._decide(text).tobytes(), text[:60]
    assert len({ours.classify(t)[0] for t in texts}) >= 3  # English, French and more were seen


def test_visit_counts_equal_and_in_first_visit_order():
    from py3langid.langid import visit_counts as python_walk

    from tasks._langid_walk import visit_counts

    ours = langid._identifier()
    ours.classify("warm up")  # builds the walk's arrays
    for text in sample_texts()[:40] + ODD:
        encoded = ours._encode(text)
        expected = python_walk(ours.tk_nextmove, ours._rowbase, ours.tk_output, encoded)
        got = visit_counts(ours.tk_nextmove, ours._walk_rowbase, ours._walk_output, encoded)
        assert (got is None) == (expected is None)
        if got is not None:
            assert list(got.items()) == list(expected.items())


def test_a_wrong_model_array_is_an_error_not_a_crash():
    import numpy as np

    from tasks._langid_walk import visit_counts

    with pytest.raises(TypeError, match="rowbase"):
        visit_counts(np.zeros(256, np.uint32), np.zeros(1, np.int32), np.zeros(1, np.int32), b"a")
    with pytest.raises(ValueError, match="out of range"):
        visit_counts(np.full(256, 5, np.uint32), np.zeros(1, np.int64), np.zeros(2, np.int32), b"ab")
