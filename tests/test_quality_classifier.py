"""Quality classifier: books (reference prose) against web pages and web junk.

Trained once per module on 9 of the 12 English reference books against the main text of
3/4 of the extraction-dev pages plus generated web junk. Everything the acceptance test
scores is held out: prose from the 3 other books, navigation/footer text of the other
1/4 of the pages, and junk built from word pools and templates the training junk never used.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil

import lxml.html
import numpy as np
import pytest

from conftest import shared_data
from models import quality_classifier as qc
from pretrain.config import ClassifierConfig
from tasks.decode import decode_html
from tasks.extract import extract_text
from tasks.quality.corpus import iter_corpus

HELD_OUT_BOOKS = (  # a novel, essays, popular science: never trained on
    "Pride_and_Prejudice_JaneAusten", "The_Conduct_of_Life_RalphWaldoEmerson", "From_Newton_to_Einstein_BenjaminHarrow",
)
MAX_CHUNKS_PER_BOOK = 120  # evenly spaced, so one long book does not dominate
PAIRS_PER_KIND = 150

# Word pools and templates for generated web junk: one half for training, one half held out.
POOLS = {
    "train": {
        "nav": ["Home", "About us", "Contact", "Blog", "Shop", "Services", "Careers", "FAQ", "Login", "Register",
                "Sitemap", "News", "Events", "Support", "Pricing", "Gallery", "Team", "Locations"],
        "cookie": [
            "We use cookies to improve your experience on our website. By continuing to browse, you agree to our use of cookies.",
            "This site uses cookies. Accept all | Reject all | Cookie settings",
            "Cookies help us deliver our services. By using our services, you agree to our use of cookies. Learn more",
            "We and our partners store and access information on your device. Accept | Customize",
        ],
        "products": ["Wireless Headphones", "Running Shoes", "Coffee Maker", "Yoga Mat", "Smart Watch", "Desk Lamp",
                     "Backpack", "Water Bottle", "Phone Case", "Bluetooth Speaker", "Gaming Mouse", "Air Fryer"],
        "product_line": "{item} | ${price} | {stars} ({reviews} reviews) | Add to cart",
        "footer": "© {year} {brand} Inc. All rights reserved. Privacy Policy | Terms of Use | Imprint",
        "spam": ["cheap", "viagra", "casino", "bonus", "free spins", "online", "poker", "best price", "discount",
                 "pills", "weight loss", "crypto", "forex", "bet", "jackpot", "slots", "dating", "hot singles"],
    },
    "held_out": {
        "nav": ["Start", "Our story", "Get in touch", "Articles", "Store", "Solutions", "Jobs", "Help centre",
                "Sign in", "Create account", "Press", "Downloads", "Partners", "Resources", "Portfolio", "Newsletter",
                "Wishlist", "My account"],
        "cookie": [
            "Our website stores small text files on your device to personalise content and analyse traffic. Click OK to consent.",
            "Manage consent preferences: Strictly necessary, Performance, Targeting. Confirm my choices",
            "Privacy notice: this website and third parties use tracking technologies. Allow all | Only essential",
            "By clicking Agree you consent to the processing of your data for ads and analytics. Agree | Disagree",
        ],
        "products": ["Stainless Steel Cookware Set", "Kids Bicycle", "Memory Foam Pillow", "LED Strip Lights",
                     "Electric Toothbrush", "Camping Tent", "Hair Dryer", "Office Chair", "Robot Vacuum",
                     "Laptop Stand", "Garden Hose", "Winter Jacket"],
        "product_line": "SALE -{off}% {item} now only EUR {price} - in stock - ships in 24h - {stars}",
        "footer": "Copyright {year} {brand} GmbH | Legal notice | Data protection | Cookie preferences | Follow us",
        "spam": ["replica", "watches", "payday", "loans", "seo", "backlinks", "followers", "essay writing",
                 "cbd oil", "vpn", "crack", "download free", "torrent", "escort", "mortgage", "insurance quotes",
                 "cheap flights", "lose belly fat"],
    },
}
BRANDS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne"]


def _nav_doc(rng: random.Random, pool: dict) -> str:
    lines = rng.sample(pool["nav"], rng.randint(6, 12))
    lines.append(" > ".join(rng.sample(pool["nav"], 3)))
    lines.append(rng.choice(pool["cookie"]))
    lines.append(pool["footer"].format(year=rng.randint(2005, 2024), brand=rng.choice(BRANDS)))
    return "\n".join(lines)


def _cookie_doc(rng: random.Random, pool: dict) -> str:
    return "\n".join(rng.sample(pool["cookie"], 2) + rng.sample(pool["nav"], 4))


def _product_doc(rng: random.Random, pool: dict) -> str:
    lines = [pool["product_line"].format(
        item=rng.choice(pool["products"]), price=f"{rng.uniform(5, 400):.2f}", off=rng.randint(10, 70),
        stars="★" * rng.randint(2, 5), reviews=rng.randint(1, 3000),
    ) for _ in range(rng.randint(5, 15))]
    return "\n".join(rng.sample(pool["nav"], 5) + lines)


def _spam_doc(rng: random.Random, pool: dict) -> str:
    words = [rng.choice(pool["spam"]) for _ in range(rng.randint(30, 120))]
    separator = rng.choice([" ", ", ", " | ", " #"])
    return separator.join(words)


def _boilerplate_docs(rng: random.Random, pool: dict, n: int) -> list[str]:
    makers = [_nav_doc, _cookie_doc, _product_doc]
    return [makers[i % len(makers)](rng, pool) for i in range(n)]


def _nav_footer_text(html: str) -> str:
    """The text of a real page's <nav>/<footer> and menu/cookie elements: real boilerplate."""
    root = lxml.html.fromstring(html)
    for junk in root.xpath("//script | //style | //noscript"):
        junk.drop_tree()
    found, parts = set(), []
    for element in root.xpath("//nav | //footer | //*[contains(@class,'menu') or contains(@id,'menu') "
                              "or contains(@class,'cookie') or contains(@id,'cookie')]"):
        if not found.intersection(element.iterancestors()):
            found.add(element)
            parts.append("\n".join(t.strip() for t in element.itertext() if t.strip()))
    return "\n".join(parts)


def _shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def _book_chunks(path) -> list[str]:
    chunks = list(iter_corpus([str(path)]))
    step = max(1, len(chunks) / MAX_CHUNKS_PER_BOOK)
    return [chunks[int(i * step)] for i in range(min(len(chunks), MAX_CHUNKS_PER_BOOK))]


@pytest.fixture(scope="module")
def data():
    books = sorted(shared_data("reference", "en").glob("*.txt.gz"))
    pages = sorted(shared_data("extraction-dev", "html").glob("*.html.gz"))
    held_out_books = [b for b in books if b.name.removesuffix(".txt.gz") in HELD_OUT_BOOKS]
    assert len(held_out_books) == len(HELD_OUT_BOOKS), [b.name for b in books]
    train_pages = [p for i, p in enumerate(pages) if i % 4]
    held_out_pages = [p for i, p in enumerate(pages) if not i % 4]
    rng = random.Random(7)
    positives = [chunk for book in books if book not in held_out_books for chunk in _book_chunks(book)]
    web_text = [extract_text(decode_html(gzip.open(page).read()), "fast") for page in train_pages]
    negatives = web_text + _boilerplate_docs(rng, POOLS["train"], 240) + [
        _spam_doc(rng, POOLS["train"]) for _ in range(80)]
    prose = [chunk for book in held_out_books for chunk in _book_chunks(book)]
    real_nav = [_nav_footer_text(decode_html(gzip.open(page).read())) for page in held_out_pages]
    return {
        "positives": positives, "negatives": negatives,
        "sources": {"positives": [b.name for b in books if b not in held_out_books],
                    "negatives": {"extraction_dev_pages": [p.name for p in train_pages],
                                  "generated_junk": "POOLS['train'] in tests/test_quality_classifier.py"}},
        "prose": rng.sample(prose, PAIRS_PER_KIND),
        "real_nav": [t for t in real_nav if len(t) >= 100],
        "generated_boilerplate": _boilerplate_docs(rng, POOLS["held_out"], PAIRS_PER_KIND),
        "spam": [_spam_doc(rng, POOLS["held_out"]) for _ in range(PAIRS_PER_KIND)],
    }


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("quality") / "classifier"
    cfg = ClassifierConfig()
    metadata = qc.train_classifier(data["positives"], data["negatives"], model_dir, cfg, sources=data["sources"])
    print(f"\ntrained on {metadata['counts']} in {metadata['training_seconds']:.1f} s; "
          f"model.joblib {(model_dir / 'model.joblib').stat().st_size / 1e6:.2f} MB; metrics {metadata['metrics']}")
    return model_dir, metadata


def _pair_fraction(better: np.ndarray, worse: np.ndarray) -> float:
    """Share of pairs (every good doc with every bad doc) where the good one scores higher."""
    return float((better[:, None] > worse[None, :]).mean())


def test_held_out_prose_outscores_boilerplate_spam_and_shuffled_prose(data, trained):
    classifier = qc.QualityClassifier.load(trained[0])
    prose = classifier.score(data["prose"])
    boilerplate_docs = data["real_nav"] + data["generated_boilerplate"]
    boilerplate = classifier.score(boilerplate_docs)
    spam = classifier.score(data["spam"])
    shuffled = classifier.score([_shuffled(text, random.Random(i)) for i, text in enumerate(data["prose"])])
    real_nav = boilerplate[: len(data["real_nav"])]

    fractions = {
        "boilerplate": _pair_fraction(prose, boilerplate),
        "  of which real nav/footer text": _pair_fraction(prose, real_nav),
        "keyword_spam": _pair_fraction(prose, spam),
        "shuffled_same_text": float(np.mean(prose > shuffled)),  # each chunk against its own shuffle
    }
    print(f"\nprose beats ... ({len(prose)} held-out chunks; boilerplate {len(boilerplate)} "
          f"of which {len(real_nav)} real; spam {len(spam)}; shuffled {len(shuffled)} matched pairs)")
    for kind, fraction in fractions.items():
        print(f"  {kind:34s} {fraction:.3f}")
    print(f"  median score: prose {np.median(prose):.3f}, boilerplate {np.median(boilerplate):.3f}, "
          f"spam {np.median(spam):.3f}, shuffled {np.median(shuffled):.3f}")
    assert len(boilerplate) >= 100 and len(spam) >= 100 and len(shuffled) >= 100
    assert fractions["boilerplate"] >= 0.9, fractions
    assert fractions["keyword_spam"] >= 0.9, fractions
    # Unigram and char_wb features are blind to word order: only word bigrams see the
    # shuffle, so this bound is lower than the others.
    assert fractions["shuffled_same_text"] >= 0.8, fractions


def test_model_json_has_held_out_metrics(trained):
    model_dir, returned = trained
    saved = json.loads((model_dir / "model.json").read_text())
    assert saved == json.loads(json.dumps(returned, default=str))
    assert saved["format_version"] == qc.FORMAT_VERSION and saved["sources"]["positives"]
    metrics, counts = saved["metrics"], saved["counts"]
    assert metrics["roc_auc"] > 0.9, metrics
    assert metrics["precision_at_keep_rate"] > 0.8, metrics
    assert 0 <= metrics["precision_at_10pct_keep"] <= 1 and 0 <= metrics["accuracy"] <= 1
    assert counts["test_positives"] + counts["train_positives"] == counts["positives"]
    held_out_share = (counts["test_positives"] + counts["test_negatives"]) / (counts["positives"] + counts["negatives"])
    assert abs(held_out_share - saved["config"]["test_fraction"]) < 0.01
    assert sorted(p for p in model_dir.parent.iterdir()) == [model_dir]  # no temporary folder left behind


def test_save_load_round_trip_gives_identical_scores(data, trained, tmp_path):
    first = qc.QualityClassifier.load(trained[0])
    copy = first.save(tmp_path / "copy")
    second = qc.QualityClassifier.load(copy)
    texts = data["prose"][:20] + data["spam"][:20]
    assert np.array_equal(first.score(texts), second.score(texts))
    assert second.metadata == first.metadata


def test_scores_are_the_scikit_learn_pipelines_to_the_bit(data, trained):
    """QualityClassifier.score runs models.hashed_ngrams; the saved pipeline's predict_proba is the reference."""
    classifier = qc.QualityClassifier.load(trained[0])
    assert classifier.fast is not None
    texts = data["prose"] + data["real_nav"] + data["generated_boilerplate"] + data["spam"] + data["negatives"][:100]
    expected = classifier.pipeline.predict_proba([text[:classifier.max_chars] for text in texts])[:, 1]
    assert np.array_equal(classifier.score(texts), expected)


def test_degenerate_texts_score_without_crashing(trained):
    classifier = qc.QualityClassifier.load(trained[0])
    scores = classifier.score(["", "   \n", None, "!!! ### $$$ ... ---", "€ ★★★", "a", "The end."])
    assert scores.shape == (7,) and scores.dtype == np.float64
    assert np.all((scores >= 0) & (scores <= 1))
    assert list(scores[:5]) == [qc.EMPTY_TEXT_SCORE] * 5  # no letter or digit: defined score
    assert classifier.score([]).shape == (0,)
    long_text = "word " * 100_000
    assert classifier.score([long_text])[0] == classifier.score([long_text[: classifier.max_chars]])[0]


def test_missing_model_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        qc.QualityClassifier.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    assert "pretrain quality train-classifier --positive" in str(error.value)
    assert f"--output {tmp_path / 'nowhere'}" in str(error.value)


def test_incompatible_saved_models_are_refused(trained, tmp_path):
    for field, value, message in [("format_version", 999, "format version 999"),
                                  ("sklearn_version", "0.24.2", "scikit-learn 0.24.2")]:
        copy = tmp_path / field
        shutil.copytree(trained[0], copy)
        meta = json.loads((copy / "model.json").read_text())
        meta[field] = value
        (copy / "model.json").write_text(json.dumps(meta))
        with pytest.raises(qc.IncompatibleModelError, match=message):
            qc.QualityClassifier.load(copy)


def test_too_few_or_empty_class_is_a_clear_error(tmp_path):
    cfg = ClassifierConfig(n_features=1024, char_ngrams=None)
    prose = [f"Sentence number {i} is plain prose about the sea." for i in range(30)]
    with pytest.raises(ValueError, match=r"30 positive and 0 negative"):
        qc.train_classifier(prose, [], tmp_path / "m", cfg)
    with pytest.raises(ValueError, match=r"30 positive and 9 negative"):
        qc.train_classifier(prose, ["Home | Shop | Login"] * 9 + ["", "***"], tmp_path / "m", cfg)
    assert not (tmp_path / "m").exists()


def test_small_training_run_reports_counts_and_reloads(tmp_path):
    cfg = ClassifierConfig(n_features=4096, char_ngrams=None, epochs=5)
    prose = [f"She walked to the harbour on day {i}, and the boats were already out at sea." for i in range(20)]
    junk = [f"Home | Shop | Cart ({i}) | Login | Sign up | Sale {i}% off" for i in range(20)]
    metadata = qc.train_classifier(prose, junk, tmp_path / "m", cfg, sources={"positives": ["inline"]})
    assert metadata["counts"]["test_positives"] == 4 and metadata["counts"]["test_negatives"] == 4
    loaded = qc.QualityClassifier.load(tmp_path / "m")
    assert loaded.metadata["sources"] == {"positives": ["inline"]}
    assert loaded.score(prose[:1])[0] > loaded.score(junk[:1])[0]


def test_load_cached_reads_each_model_once(trained):
    qc._load_cached.cache_clear()
    before, folder = qc.load_count(), str(trained[0].resolve())
    loads_before = qc.LOADS[folder]
    first = qc.load_cached(trained[0])
    again = qc.load_cached(str(trained[0]))
    assert first is again
    assert qc.load_count() == before + 1 and qc.LOADS[folder] == loads_before + 1
