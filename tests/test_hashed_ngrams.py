"""models.hashed_ngrams: the numpy scorer gives the scikit-learn pipeline's scores to the bit."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32 as sklearn_murmurhash

from models import hashed_ngrams as hn
from models.quality_classifier import QualityClassifier, build_pipeline
from pretrain.config import ClassifierConfig

# Characters that trip tokenizers: accents, final sigma, a combining mark, CJK, an astral emoji,
# no-break and other Unicode spaces, separators that str.split() splits on, underscore, digits.
ALPHABET = "abcxyzABC019_.,;'\"-éßΣσςÅ\u0301中文€★\U0001F600 \u00a0\u2009\u3000\t\n\r\x0b\x0c\x1c\x85\u2028"


def _texts(rng: random.Random, n: int, max_len: int = 60) -> list[str]:
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


PROSE = [
    "It was the best of times, it was the worst of times; it was the age of wisdom.",
    "ΟΔΟΣ and ΣΟΦΟΣ: final sigma — lower-cased at the end of a word. Naïve café, façade, Zürich!",
    "Home | Shop | Cart (3) | Login | Sign up | Sale 40% off\n\n\n   © 2024 Acme Inc.",
    "a I ab cd x y z " * 5,
    "supercalifragilisticexpialidocious_" * 40 + " end",  # a long token: many 4-byte blocks
    "日本語のテキストと English mixed 😀 text with emoji 🎉🎉.",
]


def _fitted(cfg: ClassifierConfig, texts: list[str]):
    pipeline = build_pipeline(cfg)
    return pipeline.fit(texts, np.array([i % 2 for i in range(len(texts))]))


def test_murmurhash_equals_scikit_learns_for_mixed_and_single_length_spans():
    rng = random.Random(1)
    strings = _texts(rng, 2000, 40) + ["", "a", "ab", "abc", "abcd", "abcde", "é", "😀😀"]
    encoded = [s.encode("utf-8") for s in strings]
    buffer = b"".join(encoded)
    lengths = np.array([len(e) for e in encoded])
    starts = np.cumsum(lengths) - lengths
    words32 = hn._words32(buffer)
    expected = np.array([sklearn_murmurhash(e, seed=0) for e in encoded], dtype=np.int32)
    assert np.array_equal(hn.murmurhash3_32(words32, starts, lengths), expected)
    for length in (1, 3, 4, 5, 8, 9):  # the one-length path, as ASCII character n-grams take
        starts = np.arange(0, len(buffer) - length, 7)
        spans = [buffer[s:s + length] for s in starts]
        got = hn.murmurhash3_32(words32, starts, np.full(len(starts), length))
        assert np.array_equal(got, np.array([sklearn_murmurhash(s, seed=0) for s in spans], dtype=np.int32)), length


def test_tokens_are_the_regexs_tokens_for_any_characters():
    rng = random.Random(2)
    bmp = [chr(cp) for cp in range(0x10000) if not 0xD800 <= cp < 0xE000]
    texts = ["".join(rng.choice(bmp) for _ in range(200)) for _ in range(40)] + _texts(rng, 200) + ["", "  ", "x"]
    pattern = re.compile(hn.TOKEN_PATTERN)
    joined, counts = hn._joined_tokens(texts)
    per_doc = [pattern.findall(text) for text in texts]
    assert joined == " ".join(" ".join(tokens) for tokens in per_doc if tokens)
    assert counts.tolist() == [len(tokens) for tokens in per_doc]


@pytest.mark.parametrize("cfg", [
    ClassifierConfig(n_features=2**12),
    ClassifierConfig(n_features=2**12, char_ngrams=None),
    ClassifierConfig(n_features=5000, word_ngrams=(1, 3), char_ngrams=(2, 6)),  # not a power of two
    ClassifierConfig(n_features=2**12, word_ngrams=(2, 2), char_ngrams=(5, 7)),  # padded words under 5 chars: whole
], ids=["default", "words-only", "wide-ranges", "short-words"])
def test_decision_is_bit_equal_to_the_pipeline(cfg):
    rng = random.Random(3)
    texts = PROSE + _texts(rng, 300)
    pipeline = _fitted(cfg, texts)
    fast = hn.HashedLinearModel.from_pipeline(pipeline)
    assert fast is not None
    scored = [t for t in texts if re.search(r"\w", t)]
    assert np.array_equal(fast.decision(scored), pipeline.decision_function(scored))


def test_chunks_split_a_batch_without_changing_scores(monkeypatch):
    texts = PROSE * 20
    pipeline = _fitted(ClassifierConfig(n_features=2**12), texts)
    fast = hn.HashedLinearModel.from_pipeline(pipeline)
    whole = fast.decision(texts)
    monkeypatch.setattr(hn, "_MAX_CHUNK_CHARS", 100)  # about one document per chunk
    assert len(hn._chunks(texts)) > 50
    assert np.array_equal(fast.decision(texts), whole)
    assert np.array_equal(whole, pipeline.decision_function(texts))
    assert fast.decision([]).shape == (0,)
    no_words = ["", " \n\t", "\u3000"]
    assert np.array_equal(fast.decision(no_words), pipeline.decision_function(no_words))
    assert np.array_equal(fast.decision(no_words + texts[:3]), pipeline.decision_function(no_words + texts[:3]))


@pytest.mark.parametrize("change", [
    {"binary": True}, {"alternate_sign": True}, {"norm": "l1"}, {"strip_accents": "unicode"},
    {"lowercase": False}, {"token_pattern": r"(?u)\b\w\w+\b"}, {"analyzer": "char", "token_pattern": None},
])
def test_settings_it_does_not_reproduce_are_scored_by_scikit_learn(change):
    texts = PROSE * 4
    pipeline = _fitted(ClassifierConfig(n_features=2**12), texts)
    words = pipeline["features"].transformer_list[0][1]
    pipeline["features"].transformer_list[0] = ("words", HashingVectorizer(**{**words.get_params(), **change}))
    pipeline["features"].transformer_list[0][1].fit(texts)
    assert hn.HashedLinearModel.from_pipeline(pipeline) is None
    classifier = QualityClassifier(pipeline, {"config": {"max_chars_per_doc": 20_000}})
    assert classifier.fast is None
    expected = pipeline.predict_proba(texts)[:, 1]
    assert np.array_equal(classifier.score(texts), expected)
