"""Integration: train both quality models through their flows, score a few thousand documents on Ray."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_data
from typer.testing import CliRunner

from flows.quality import score_flow, train_classifier_flow, train_perplexity_flow
from flows.runner import StageFailed
from cli.main import app
from pretrain.config import ClassifierConfig, PerplexityConfig, QualityConfig
from tasks.decode import decode_html
from tasks.extract import extract_text
from tasks.quality.corpus import iter_corpus

pytestmark = pytest.mark.integration
TRAIN_BOOKS = ["Great_Expectations_CharlesDickens", "French_Revolution_ThomasCarlyle", "My_Man_Jeeves_PGWodehouse",
               "Anne-of-Green-Gables", "Collected_Speeches_FrederickDouglass"]
HELD_OUT_BOOKS = ["Pride_and_Prejudice_JaneAusten", "The_Conduct_of_Life_RalphWaldoEmerson", "2701-0"]
JUNK = ["Home | About us | Contact | Privacy policy | Login | Cart | Newsletter | Sitemap",
        "buy cheap watches best price cheap watches online discount watches buy now free shipping",
        "Accept all cookies. We use cookies to improve your experience. Manage preferences.",
        "@@@ ### $$$ %%% ^^^ &&& *** ((( ))) !!! ??? ...", "", "   "]


def web_texts(limit: int) -> list[str]:
    folder = shared_data("extraction-dev", "html")
    texts = []
    for path in sorted(folder.glob("*.html.gz"))[:limit]:
        texts.append(extract_text(decode_html(gzip.decompress(path.read_bytes())), "fast"))
    return [t for t in texts if t.strip()]


def write_shards(folder: Path, texts: list[str], n_shards: int, lang: str = "en") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(n_shards):
        part = texts[shard::n_shards]
        table = pa.table({"id": [f"{shard}-{i}" for i in range(len(part))], "text": part,
                          "lang": [lang] * len(part)})
        paths.append(folder / f"shard-{shard:02d}.parquet")
        pq.write_table(table, paths[-1])
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-models")
    books = shared_data("reference", "en")
    train = [str(books / f"{name}.txt.gz") for name in TRAIN_BOOKS]
    ppl_cfg = PerplexityConfig(order=4, vocab_size=4000, max_train_chars=2_500_000)
    train_perplexity_flow(reference=train, output_dir=str(root / "ppl"), config=ppl_cfg)
    negatives = root / "web"
    write_shards(negatives, web_texts(180) + JUNK[:3] * 20, 1)
    train_classifier_flow(positive=train, negative=[str(negatives)], output_dir=str(root / "clf"),
                          config=ClassifierConfig(n_features=2**18), max_documents=600)
    return root


@pytest.fixture(scope="module")
def scoring_input(tmp_path_factory):
    books = shared_data("reference", "en")
    prose = [doc for name in HELD_OUT_BOOKS for doc in iter_corpus([str(books / f"{name}.txt.gz")])]
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(doc.split(), len(doc.split()))) for doc in prose[:500]]
    texts = prose + shuffled + web_texts(237) + JUNK * 50
    rng.shuffle(texts)
    folder = tmp_path_factory.mktemp("quality-input")
    write_shards(folder, texts, 4)
    return folder, len(texts)


def test_scoring_few_thousand_documents_one_model_load_per_worker(services, models, scoring_input, tmp_path):
    folder, n_docs = scoring_input
    assert n_docs >= 1500
    cfg = QualityConfig(perplexity_model=str(models / "ppl"), classifier_model=str(models / "clf"), keep_fraction=0.5)
    summary = score_flow(config=cfg, input_dir=str(folder), output_dir=str(tmp_path / "q"))

    assert summary["documents_in"] == n_docs and summary["failed"] == []
    loads = summary["model_loads"]
    assert len(loads) == 2 and len({entry["pid"] for entry in loads}) == 2  # two actors, two worker processes
    assert all(entry["perplexity"] == 1 and entry["classifier"] == 1 for entry in loads)

    scored = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "q" / "scored").glob("*.parquet"))])
    kept = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "q" / "kept").glob("*.parquet"))])
    assert scored.num_rows == n_docs
    assert kept.num_rows == summary["documents_kept"]
    assert abs(kept.num_rows / n_docs - 0.5) < 0.02  # the top half by quality_score
    threshold = summary["cutoffs"]["min_quality"]
    assert min(kept.column("quality_score").to_pylist()) >= threshold

    buckets = summary["buckets"]
    scored_ppl = [p for p in scored.column("perplexity").to_pylist() if p is not None]
    assert abs(buckets["head"] / len(scored_ppl) - 0.30) < 0.02
    assert abs(buckets["middle"] / len(scored_ppl) - 0.30) < 0.02
    rows = scored.to_pylist()
    for text in ("", "   ", JUNK[3]):  # empty and symbols-only: no perplexity, bucket none
        row = next(r for r in rows if r["text"] == text)
        assert row["perplexity"] is None and row["ppl_bucket"] == "none"
        assert 0.0 <= row["quality_score"] <= 1.0
    assert (tmp_path / "q" / "perplexity_histogram.png").stat().st_size > 1000
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["documents_kept"] == kept.num_rows

    again = score_flow(config=cfg, input_dir=str(folder), output_dir=str(tmp_path / "q"))
    assert again["cache_hits"] == 4


def test_max_perplexity_rule_and_other_language_documents(services, models, tmp_path):
    books = shared_data("reference")
    french = [doc for doc in iter_corpus([str(next((books / "fr").glob("*.txt.gz")))])][:40]
    english = [doc for doc in iter_corpus([str(books / "en" / f"{HELD_OUT_BOOKS[0]}.txt.gz")])][:40]
    write_shards(tmp_path / "en", english + ["", "*** ###"], 1)
    write_shards(tmp_path / "fr", french, 1, lang="fr")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("en", "fr"):
        (tmp_path / name / "shard-00.parquet").rename(folder / f"{name}.parquet")
    cfg = QualityConfig(perplexity_model=str(models / "ppl"), max_perplexity=1e9)
    summary = score_flow(config=cfg, input_dir=str(folder), output_dir=str(tmp_path / "q"))
    assert summary["buckets"]["other_language"] == len(french)  # an English model does not judge French
    assert summary["notes"]["not_scored_other_language"] == len(french)
    assert summary["dropped"] == {"unscorable_text": 2}
    assert summary["documents_kept"] == len(english) + len(french)


def test_missing_model_is_a_clear_error(services, scoring_input, tmp_path):
    folder, _ = scoring_input
    result = CliRunner().invoke(app, ["quality", "score", "--input", str(folder), "--output", str(tmp_path / "q"),
                                      "--perplexity-model", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no perplexity model" in result.output and "train-perplexity" in result.output
    both = CliRunner().invoke(app, ["quality", "score", "--input", str(folder), "--output", str(tmp_path / "q"),
                                    "--keep-fraction", "0.5", "--max-perplexity", "300"])
    assert both.exit_code == 2 and "at most one of" in both.output


def test_apply_is_one_cached_task_per_shard_and_a_failed_one_is_listed(services, models, tmp_path):
    """The keep pass runs through the shard runner like the scoring: a rerun rewrites nothing, a
    deleted kept shard is written again alone, and a shard whose scores no longer match it fails
    by name (StageFailed, report.json) while the other shard is still written."""
    books = shared_data("reference", "en")
    english = [doc for doc in iter_corpus([str(books / f"{HELD_OUT_BOOKS[0]}.txt.gz")])][:60]
    folder, out = tmp_path / "in", tmp_path / "q"
    write_shards(folder, english, 2)
    cfg = QualityConfig(perplexity_model=str(models / "ppl"), max_perplexity=1e9)
    first = score_flow(config=cfg, input_dir=str(folder), output_dir=str(out))
    written = lambda: {f"{part}/{p.name}": p.stat().st_mtime_ns  # noqa: E731
                       for part in ("scored", "kept") for p in (out / part).glob("*.parquet")}
    before = written()
    assert len(before) == 4

    (out / "kept" / "shard-00.parquet").unlink()
    second = score_flow(config=cfg, input_dir=str(folder), output_dir=str(out))
    after = written()
    assert second["cache_hits"] == 2 and second["documents_kept"] == first["documents_kept"]
    assert second["reports"] == first["reports"]
    assert {name for name in before if after[name] != before[name]} == {"scored/shard-00.parquet",
                                                                        "kept/shard-00.parquet"}

    scores = out / ".scores" / "shard-01.parquet"
    pq.write_table(pq.read_table(scores).slice(0, 1), scores)
    with pytest.raises(StageFailed, match=r"^1 of 2 shards failed: \S+/shard-01\.parquet \(ValueError: .* has 1 rows "
                                          rf"for {len(english[1::2])} in ") as failed:
        score_flow(config=cfg, input_dir=str(folder), output_dir=str(out))
    assert failed.value.stage == "quality"
    report = json.loads((out / "report.json").read_text())
    assert [Path(f["input"]).name for f in report["failed"]] == ["shard-01.parquet"]
    assert report["shards"] == 2 and report["documents_in"] == len(english[0::2])


def test_the_training_tasks_key_on_everything_their_work_imports():
    """The train-perplexity and train-classifier keys take the code version of their work's module,
    which covers the corpus reader and sampler (a hand-kept list once missed them) and the model."""
    from flows.quality import train_classifier_task, train_perplexity_task
    from pretrain.codegraph import module_closure

    reader = {"tasks.quality.corpus", "tasks.sampling"}
    for task, model in ((train_perplexity_task, "models.perplexity"),
                        (train_classifier_task, "models.quality_classifier")):
        work = task.cache_key_fn.work
        assert reader | {model, work.__module__} <= set(module_closure(work.__module__)), task.name
