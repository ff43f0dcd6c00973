"""CCNet-style perplexity model: real lmplz, build_binary, kenlm and sentencepiece.

One small English model (Gutenberg books, Pride and Prejudice held out) is trained
once per module; the error-path tests train on tiny text written here.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import kenlm
import pytest
import sentencepiece as spm
from conftest import shared_data

from models.perplexity import (
    KENLM_BIN_ENV,
    LM_BINARY,
    LOADS,
    MODEL_JSON,
    SP_MODEL,
    KenLMError,
    KenLMToolsMissing,
    PerplexityModel,
    PerplexityModelError,
    PerplexityTrainingError,
    bucket,
    load_cached,
    normalize,
    percentile_cutoffs,
    resolve_cutoffs,
)
from pretrain.config import PerplexityConfig
from tasks.quality.corpus import iter_corpus
from tasks.quality.perplexity import train_perplexity_model

HELD_OUT = "Pride_and_Prejudice_JaneAusten.txt.gz"
SMALL_EN = PerplexityConfig(order=5, vocab_size=4000, max_train_chars=2_500_000, lmplz_memory="256M")
TINY = PerplexityConfig(order=3, vocab_size=8000, max_train_chars=1000, lmplz_memory="64M")

# Our own sentences, with accents, digits and unicode punctuation to normalize.
SENTENCES = [
    "The old captain walked slowly along the harbour, thinking of the sea.",
    "She said, \u201cI shall write to you in March, 1851,\u201d and smiled.",
    "Caf\u00e9 owners in the na\u00efve town paid 40 francs \u2014 nearly all they had.",
    "It was a dark and stormy night; the rain fell in torrents.",
    "Whether it was the weather or the wine, nobody could say\u2026",
]

TINY_TEXT = "\n\n".join([
    "The cat sat on the mat and looked at the dog.",
    "A dog ran across the field after a red ball.",
    "Birds sang in the trees while the sun went down.",
    "The children played in the garden until dinner time.",
] * 5)


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> Path:
    books = shared_data("reference", "en")
    files = [str(path) for path in sorted(books.glob("*.txt.gz")) if path.name != HELD_OUT]
    out = tmp_path_factory.mktemp("ppl") / "en"
    return train_perplexity_model(files, out, SMALL_EN, corpus_id="gutenberg-en-minus-pride")


@pytest.fixture(scope="module")
def model(english) -> PerplexityModel:
    return PerplexityModel.load(english)


@pytest.fixture(scope="module")
def held_out_chunks() -> list[str]:
    book = shared_data("reference", "en", HELD_OUT)
    chunks = list(iter_corpus([str(book)]))
    return chunks[2:122]     # past the Gutenberg header: 120 chunks of about 3,000 chars


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT)
    return path


# --------------------------------------------------------------------------- normalize

def test_normalize_case_accents_digits_punctuation():
    assert normalize("Caf\u00e9 NA\u00cfVE \u00c9cole \u0130stanbul") == "cafe naive ecole istanbul"
    assert normalize("In 1851, 42 ships; \uff11\uff12 and \u0661\u0662") == "in 0000, 00 ships; 00 and 00"
    assert normalize("\u201cYes,\u201d she said \u2014 \u2018no\u2019\u2026") == "\"yes,\" she said - 'no'..."
    assert normalize("\u00abBonjour\u00bb\uff01 \u300c\u5f15\u7528\u300d\u3002") == "\"bonjour\"! \"\u5f15\u7528\"."
    assert normalize("\u2022 item \u00bfqu\u00e9? \u00a1s\u00ed!") == "item que? si!"


def test_normalize_whitespace_lines_and_invisibles():
    text = "  Hello\u00a0\u00a0 world \t!\r\n\n\n second\u200b line\u00ad \u3000\n   \n"
    assert normalize(text) == "hello world !\nsecond line"
    assert normalize("") == ""
    assert normalize(" \n\t\n") == ""


def test_normalize_is_idempotent():
    for sentence in SENTENCES + [TINY_TEXT]:
        once = normalize(sentence)
        assert normalize(once) == once


# --------------------------------------------------------------------------- acceptance 2

def test_perplexity_agrees_with_kenlm_module(english, model):
    sp = spm.SentencePieceProcessor(model_file=str(english / SP_MODEL))
    lm = kenlm.Model(str(english / LM_BINARY))
    for raw in SENTENCES:
        line = normalize(raw)
        sentence = " ".join(sp.encode(line, out_type=str))
        expected = lm.score(sentence, bos=True, eos=True)
        tokens = len(list(lm.full_scores(sentence, bos=True, eos=True)))   # KenLM's own count
        assert tokens == len(sentence.split()) + 1
        log10, n = model.sentence_log10(line)
        assert n == tokens
        assert math.isclose(log10, expected, rel_tol=1e-9)
        assert math.isclose(model.perplexity(raw), 10 ** (-expected / tokens), rel_tol=1e-9)
        print(f"log10={expected:.4f} tokens={tokens} ppl={10 ** (-expected / tokens):.1f}  {line[:50]}")


def test_multi_line_document_is_formula_over_line_sums(english, model):
    sp = spm.SentencePieceProcessor(model_file=str(english / SP_MODEL))
    lm = kenlm.Model(str(english / LM_BINARY))
    document = "\n\n".join(SENTENCES)
    scores = []
    for raw in SENTENCES:
        sentence = " ".join(sp.encode(normalize(raw), out_type=str))
        scores.append((lm.score(sentence, bos=True, eos=True), len(sentence.split()) + 1))
    expected = 10 ** (-sum(s for s, _ in scores) / sum(n for _, n in scores))
    assert math.isclose(model.perplexity(document), expected, rel_tol=1e-9)
    per_line = model.paragraph_perplexities(document)
    assert len(per_line) == len(SENTENCES)
    for got, (log10, n) in zip(per_line, scores):
        assert math.isclose(got, 10 ** (-log10 / n), rel_tol=1e-9)
    assert min(per_line) < model.perplexity(document) < max(per_line)


# --------------------------------------------------------------------------- held-out prose vs junk

NAV = ["Home", "About us", "Contact", "Privacy policy", "Login", "Cart", "Sign up", "FAQ", "Sitemap",
       "Terms of use", "Careers", "Blog", "Newsletter", "My account", "Checkout", "Shipping & returns",
       "Cookie settings", "\u00a9 2024 Acme Inc. All rights reserved", "Follow us", "Search"]
SPAM = ["cheap", "viagra", "buy", "online", "best", "price", "casino", "bonus", "free", "shipping", "loans",
        "fast", "discount", "pills", "replica", "watches", "win", "money", "crypto", "seo", "backlinks",
        "followers", "deal", "sale", "top", "2024", "click", "here", "now", "offer"]


def _boilerplate(rng: random.Random) -> str:
    return "\n".join(" | ".join(rng.sample(NAV, rng.randint(5, 10))) for _ in range(rng.randint(3, 8)))


def _keyword_spam(rng: random.Random) -> str:
    return "\n".join(" ".join(rng.choice(SPAM) for _ in range(rng.randint(20, 60))) for _ in range(5))


def _shuffled_words(text: str, rng: random.Random) -> str:
    lines = []
    for line in text.split("\n"):
        words = line.split()
        rng.shuffle(words)
        lines.append(" ".join(words))
    return "\n".join(lines)


def test_held_out_prose_beats_boilerplate_spam_and_shuffled(model, held_out_chunks):
    rng = random.Random(7)
    wins: dict[str, list[bool]] = {"boilerplate": [], "keyword_spam": [], "shuffled": []}
    prose_ppl = []
    for chunk in held_out_chunks:
        prose = model.perplexity(chunk)
        prose_ppl.append(prose)
        junk = {"boilerplate": _boilerplate(rng), "keyword_spam": _keyword_spam(rng),
                "shuffled": _shuffled_words(chunk, rng)}
        for kind, text in junk.items():
            wins[kind].append(prose < model.perplexity(text))
    pairs = [won for results in wins.values() for won in results]
    fraction = sum(pairs) / len(pairs)
    detail = ", ".join(f"{kind} {sum(r)}/{len(r)}" for kind, r in wins.items())
    prose_ppl.sort()
    print(f"held-out prose wins {sum(pairs)}/{len(pairs)} pairs = {fraction:.3f} ({detail}); "
          f"prose perplexity median {prose_ppl[len(prose_ppl) // 2]:.0f}")
    assert len(pairs) >= 300
    assert fraction >= 0.9, detail
    for kind, results in wins.items():
        assert sum(results) / len(results) >= 0.8, f"{kind}: {detail}"


def test_percentile_buckets_on_real_scores(model, held_out_chunks):
    scores = [model.perplexity(chunk) for chunk in held_out_chunks] + [model.perplexity("### ***"), None]
    cutoffs = percentile_cutoffs(scores, 30, 60)
    buckets = [bucket(score, cutoffs) for score in scores]
    assert buckets.count("none") == 2
    assert buckets.count("head") == pytest.approx(0.3 * len(held_out_chunks), abs=2)
    assert buckets.count("middle") == pytest.approx(0.3 * len(held_out_chunks), abs=2)
    assert buckets.count("tail") == pytest.approx(0.4 * len(held_out_chunks), abs=2)


# --------------------------------------------------------------------------- no score, bad folders

@pytest.mark.parametrize("text", ["", "   \n\n\t ", "!!! ### *** ... ---", "12 345 6789",
                                  "\u2022 \u2014 \u2026 \u00a9 \u00bf"])
def test_text_without_letters_has_no_score(model, text):
    assert model.perplexity(text) is None
    assert bucket(model.perplexity(text), (340.0, 520.0)) == "none"


def test_paragraph_perplexities_of_empty_text(model):
    assert model.paragraph_perplexities("") == []
    assert model.paragraph_perplexities("\n \n") == []


def test_missing_model_folder_names_path_and_fix(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError) as info:
        PerplexityModel.load(missing)
    assert str(missing) in str(info.value) and "train-perplexity" in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_cached(missing)


def test_folder_without_lm_binary(english, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in (SP_MODEL, MODEL_JSON):
        shutil.copy(english / name, partial / name)
    with pytest.raises(FileNotFoundError, match=LM_BINARY):
        PerplexityModel.load(partial)


def _copy_with(english: Path, target: Path, name: str, content: bytes) -> Path:
    shutil.copytree(english, target)
    (target / name).write_bytes(content)
    return target


def test_corrupt_files_give_clear_errors(english, tmp_path):
    cases = {
        LM_BINARY: b"not a kenlm model\n",
        SP_MODEL: b"not a sentencepiece model",
        MODEL_JSON: b"{ half written",
    }
    for name, content in cases.items():
        broken = _copy_with(english, tmp_path / f"broken-{name}", name, content)
        with pytest.raises(PerplexityModelError, match="model"):
            PerplexityModel.load(broken)
    info = json.loads((english / MODEL_JSON).read_text())
    future = _copy_with(english, tmp_path / "future", MODEL_JSON, json.dumps({**info, "format_version": 99}).encode())
    with pytest.raises(PerplexityModelError, match="format_version 99"):
        PerplexityModel.load(future)


def test_model_json_records_training(english, model):
    info = json.loads((english / MODEL_JSON).read_text())
    assert info["lang"] == model.lang == "en"
    assert info["order"] == model.order == 5
    assert info["vocab_size"] == 4000 and info["requested_vocab_size"] == 4000
    assert 2_500_000 <= info["training_chars"] < 2_500_000 + 100_000
    assert info["training_lines"] > 1000 and info["training_tokens"] > info["training_chars"] / 10
    assert info["corpus"]["id"] == "gutenberg-en-minus-pride"
    assert not any(HELD_OUT in path for path in info["corpus"]["files"])
    assert info["code_version"] and info["created_at"]
    assert sorted(path.name for path in english.iterdir()) == [LM_BINARY, MODEL_JSON, SP_MODEL]
    size_mb = sum(path.stat().st_size for path in english.iterdir()) / 1e6
    print(f"test model: {size_mb:.1f} MB, {info['training_tokens']} tokens")


def test_other_language_model_records_its_lang(tmp_path, model):
    candide = shared_data("reference", "fr", "Candide.txt.gz")
    cfg = PerplexityConfig(lang="fr", order=3, vocab_size=1000, max_train_chars=150_000, lmplz_memory="64M")
    french = PerplexityModel.load(train_perplexity_model([str(candide)], tmp_path / "fr", cfg))
    assert french.lang == "fr" and french.order == 3
    assert json.loads((tmp_path / "fr" / MODEL_JSON).read_text())["lang"] == "fr"
    french_text = "Il faut cultiver notre jardin, dit le philosophe, et tout est au mieux dans ce monde."
    english_text = SENTENCES[0]
    assert french.perplexity(french_text) < french.perplexity(english_text)
    assert model.perplexity(english_text) < model.perplexity(french_text)


# --------------------------------------------------------------------------- training errors

def test_missing_lmplz_is_a_clear_error(tiny_corpus, tmp_path, monkeypatch):
    out = tmp_path / "model"
    with pytest.raises(KenLMToolsMissing, match="make setup") as info:
        train_perplexity_model([str(tiny_corpus)], out, TINY, kenlm_bin_dir=tmp_path / "no-kenlm")
    assert "lmplz" in str(info.value) and "build_kenlm.sh" in str(info.value)
    monkeypatch.setenv(KENLM_BIN_ENV, str(tmp_path / "also-missing"))
    with pytest.raises(KenLMToolsMissing, match=KENLM_BIN_ENV):
        train_perplexity_model([str(tiny_corpus)], out, TINY)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny.txt"]   # nothing half-made


def test_lmplz_failure_carries_its_stderr(tiny_corpus, tmp_path):
    bad = TINY.model_copy(update={"lmplz_memory": "lots"})
    with pytest.raises(KenLMError, match="lmplz failed") as info:
        train_perplexity_model([str(tiny_corpus)], tmp_path / "model", bad)
    assert "lots" in str(info.value).split("stderr tail")[1]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny.txt"]


def test_small_corpus_lowers_vocab_with_a_note(tiny_corpus, tmp_path, caplog):
    caplog.set_level("WARNING", logger="models.perplexity")
    out = train_perplexity_model([str(tiny_corpus)], tmp_path / "model", TINY)
    info = json.loads((out / MODEL_JSON).read_text())
    assert info["requested_vocab_size"] == 8000 and 0 < info["vocab_size"] < 8000
    assert "too small for vocab_size=8000" in caplog.text
    assert PerplexityModel.load(out).perplexity("The cat sat on the mat.") > 0


def test_corpus_without_letters_is_refused(tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_text("### *** 123\n\n--- 456 !!!\n")
    with pytest.raises(PerplexityTrainingError, match="no text with letters"):
        train_perplexity_model([str(junk)], tmp_path / "model", TINY)
    assert not (tmp_path / "model").exists()


def test_retraining_replaces_the_folder_and_the_cached_model(tiny_corpus, tmp_path):
    out = tmp_path / "model"
    train_perplexity_model([str(tiny_corpus)], out, TINY.model_copy(update={"order": 2}))
    first = load_cached(out)
    assert load_cached(out) is first and load_cached(str(out)) is first
    assert LOADS[str(out.resolve())] == 1 and first.order == 2
    train_perplexity_model([str(tiny_corpus)], out, TINY)
    second = load_cached(out)
    assert second is not first and second.order == 3
    assert LOADS[str(out.resolve())] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "tiny.txt"]


# --------------------------------------------------------------------------- cut-offs

def test_percentile_cutoffs():
    values = list(range(101)) + [None, float("nan")]
    assert percentile_cutoffs(values, 30, 60) == (30.0, 60.0)
    assert percentile_cutoffs([5.0], 30, 60) == (5.0, 5.0)
    with pytest.raises(ValueError, match="no perplexity values"):
        percentile_cutoffs([None, float("nan")], 30, 60)
    with pytest.raises(ValueError, match="head_pct < middle_pct"):
        percentile_cutoffs(values, 60, 30)


def test_bucket_with_ccnet_english_cutoffs():
    cutoffs = (340.0, 520.0)
    assert [bucket(p, cutoffs) for p in (12.0, 339.9, 340.0, 519.9, 520.0, 5000.0)] == \
        ["head", "head", "middle", "middle", "tail", "tail"]
    assert bucket(None, cutoffs) == "none" and bucket(float("nan"), cutoffs) == "none"


def test_resolve_cutoffs_fixed_or_percentiles():
    values = [float(v) for v in range(101)]
    assert resolve_cutoffs(PerplexityConfig(cutoffs=(340, 520)), values) == (340.0, 520.0)
    assert resolve_cutoffs(PerplexityConfig(head_percentile=10, middle_percentile=90), values) == (10.0, 90.0)
