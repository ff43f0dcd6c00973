"""Data that is ordinary but unusual, or values that are wrong, in dedup, tokenize and the quality models.

Issue 12, items 4, 5, 11 (truncated lm.binary), 13 (unknown weight source, vocabulary
larger than the data supports, a classifier that cannot separate its classes) and
14 (repeated document ids in dedup).
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_data
from test_dedup import run_stages  # the four dedup stages as plain functions
from typer.testing import CliRunner

from cli.main import app
from pretrain.config import ClassifierConfig, ConfigError, DedupConfig, TokenizeConfig, validate_config
from tasks.dedup.clusters import choose_kept, connected_components, unique_pairs

pytestmark = pytest.mark.faults
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def words_text(rng: random.Random, n_words: int) -> str:
    return " ".join("".join(rng.choices(_LETTERS, k=rng.randint(3, 8))) for _ in range(n_words))


def write_shard(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("url", pa.string()), ("text", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def doc(doc_id: str, text: str, source: str = "web") -> dict:
    return {"id": doc_id, "source": source, "url": f"https://e.org/{doc_id}", "text": text}


def book_rows(n_books: int = 6, words: int = 3000) -> list[dict]:
    """The first ``words`` words of each real English book (past the first 2,000), one document per book."""
    books = sorted(shared_data("reference", "en").glob("*.txt.gz"))[:n_books]
    rows = []
    for path in books:
        text = " ".join(gzip.decompress(path.read_bytes()).decode("utf-8").split()[2000:2000 + words])
        rows.append(doc(path.name.removesuffix(".txt.gz"), text, source="books"))
    return rows


# ---------------------------------------------------------------- item 5: dedup without duplicates


def test_cluster_steps_accept_an_empty_edge_list(ledger):
    empty = np.zeros(0, np.uint64)
    low, high, kind = unique_pairs(empty, empty, np.zeros(0, np.uint8))
    assert low.size == high.size == kind.size == 0
    nodes, root = connected_components(empty, empty)
    assert nodes.size == root.size == 0
    assert choose_kept(root, np.zeros(0, np.uint32), nodes).size == 0
    ledger("dedup: unique_pairs / choose_kept on an empty edge list (data without duplicates)",
           "empty result, no IndexError", edges=0)


def distinct_cases(name: str, folder: Path) -> list[Path]:
    rng = random.Random(3)
    if name == "one_document":
        return [write_shard(folder / "a.parquet", [doc("d0", words_text(rng, 200))])]
    if name == "two_distinct_documents":
        return [write_shard(folder / "a.parquet", [doc("d0", words_text(rng, 200)), doc("d1", words_text(rng, 200))])]
    if name == "a_zero_row_shard":
        return [write_shard(folder / "a.parquet", []), write_shard(folder / "b.parquet", [doc("d0", words_text(rng, 50))])]
    assert name == "six_distinct_books"
    rows = book_rows()
    return [write_shard(folder / "a.parquet", rows[:3]), write_shard(folder / "b.parquet", rows[3:])]


@pytest.mark.parametrize("case", ["one_document", "two_distinct_documents", "a_zero_row_shard", "six_distinct_books"])
def test_dedup_stages_keep_every_document_of_data_without_duplicates(case, tmp_path, ledger):
    inputs = distinct_cases(case, tmp_path / "in")
    config = DedupConfig(hash_partitions=2, threshold=0.5)
    summary, reports = run_stages(inputs, tmp_path / "out", config)
    documents = sum(pq.ParquetFile(p).metadata.num_rows for p in inputs)
    assert summary["clusters"] == 0 and summary["clustered_documents"] == 0 and summary["largest"] == []
    assert sum(r["kept"] for r in reports) == sum(r["documents"] for r in reports) == documents
    for path in inputs:
        out = pq.read_table(tmp_path / "out" / path.name)
        assert out.column("id").to_pylist() == pq.read_table(path).column("id").to_pylist()
        assert out.column("dup_cluster").null_count == out.num_rows
    ledger("dedup: data without duplicates (1 doc, 2 distinct, a 0-row shard, 6 distinct books)",
           "every document kept, 0 clusters (was IndexError in unique_pairs)", documents=documents)


@pytest.mark.integration
def test_ingest_filter_dedup_of_the_common_crawl_sample_runs_through(services, tmp_path, ledger):
    from flows.dedup import dedup_flow
    from flows.filter import filter_flow
    from flows.ingest import ingest_flow
    from pretrain.config import FilterConfig, IngestConfig

    cc = shared_data("cc")
    warcs = [str(cc / name) for name in ("CC-MAIN-2020-34-sample.warc.gz", "CC-MAIN-2022-05-mini.warc.gz")]
    ingest_flow(config=IngestConfig(inputs=warcs), output_dir=str(tmp_path / "ingest"))
    filtered = filter_flow(config=FilterConfig(), input_dir=str(tmp_path / "ingest"), output_dir=str(tmp_path / "f"))
    summary = dedup_flow(config=DedupConfig(), input_dir=str(tmp_path / "f"), output_dir=str(tmp_path / "d"))
    assert summary["documents_in"] == filtered["documents_kept"] > 0
    assert summary["documents_kept"] + sum(summary["dropped"].values()) == summary["documents_in"]
    assert json.loads((tmp_path / "d" / "report.json").read_text())["documents_in"] == summary["documents_in"]
    ledger("dedup after ingest + filter of ../shared/data/cc (the README's first flow)",
           "runs through, documents in = kept + dropped", documents=summary["documents_in"],
           kept=summary["documents_kept"])


# ---------------------------------------------------------------- item 14b: repeated ids


@pytest.mark.integration
def test_dedup_refuses_repeated_document_ids_naming_shards_and_an_id(services, tmp_path, ledger):
    rng = random.Random(4)
    texts = [words_text(rng, 120) for _ in range(6)]
    write_shard(tmp_path / "in" / "s0.parquet", [doc("same", texts[0]), doc("x1", texts[1]), doc("x2", texts[2])])
    write_shard(tmp_path / "in" / "s1.parquet", [doc("same", texts[3]), doc("x3", texts[4]), doc("x2", texts[5])])
    result = CliRunner().invoke(app, ["dedup", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "d"),
                                      "--partitions", "2"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "error:" in message and "Traceback" not in result.output
    assert "2 document id(s) occur more than once" in message
    assert "'same' in s0 row 0, s1 row 0" in message and "'x2' in s0 row 2, s1 row 2" in message
    assert not list((tmp_path / "d").glob("*.parquet"))  # nothing written under a name that would be ambiguous
    ledger("dedup: document ids repeated across shards (2 ids, 4 documents)",
           "exit 2 naming the shards, rows and ids; no shard written (was: clusters named alike)",
           documents=6, repeated_ids=2)


# ---------------------------------------------------------------- item 4 and 13: tokenize values


def invoke_tokenize(input_dir: Path, output: Path, *options: str):
    return CliRunner().invoke(app, ["tokenize", "--input", str(input_dir), "--output", str(output), *options])


@pytest.fixture
def web_and_books(tmp_path) -> Path:
    rng = random.Random(5)
    write_shard(tmp_path / "in" / "web.parquet", [doc(f"w{i}", words_text(rng, 100)) for i in range(40)])
    write_shard(tmp_path / "in" / "books.parquet", book_rows(3, words=2000))
    return tmp_path / "in"


@pytest.mark.parametrize("weight", ["1e9", "101", "inf"])
def test_tokenize_refuses_an_unbounded_weight_before_writing(weight, web_and_books, tmp_path, ledger):
    result = invoke_tokenize(web_and_books, tmp_path / "t", "--weights", f"web={weight}")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "mixture weights must be between 0 and 100" in message and "epochs" in message
    assert not (tmp_path / "t").exists()
    with pytest.raises(ConfigError, match="tokenize.weights"):
        validate_config(TokenizeConfig, {"weights": {"web": float(weight)}}, prefix="tokenize.")
    ledger("tokenize --weights web=1e9 / 101 / inf", "exit 2: weights must be between 0 and 100 (why: epochs); "
           "nothing written (was: 23 GB of .part files)", runs=1)


def test_free_space_check_gives_both_numbers(tmp_path, ledger):
    from tasks.tokenize import check_free_space, free_bytes

    free = free_bytes(tmp_path)
    check_free_space(tmp_path, free // 2)
    with pytest.raises(ValueError, match=r"would write about .* GB, but .* GB free") as info:
        check_free_space(tmp_path / "new", free + 10**12)
    assert f"{free + 10**12:,} > " in str(info.value)
    ledger("tokenize: estimated output larger than the free disk", "error before writing, with both sizes",
           checks=2)


@pytest.mark.integration
def test_tokenize_estimate_tracks_the_output_and_unknown_sources_are_refused(services, web_and_books, tmp_path,
                                                                              ledger):
    from flows.tokenize import tokenize_flow
    from tasks.tokenize import bytes_per_token, estimated_tokens, survey_shard

    result = invoke_tokenize(web_and_books, tmp_path / "t", "--weights", "wikipedia=2,web=2")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "weights name source(s) ['wikipedia'] that no input document has" in message
    assert "the inputs' sources: books (3 documents), web (40 documents)" in message
    assert not (tmp_path / "t").exists()

    cfg = TokenizeConfig(vocab_size=2000, train_max_documents=100, val_fraction=0.1, weights={"web": 3.0})
    summary = tokenize_flow(config=cfg, input_dirs=[str(web_and_books)], output_dir=str(tmp_path / "ok"))
    shards = sorted(web_and_books.glob("*.parquet"))
    estimate = estimated_tokens([survey_shard(p) for p in shards], cfg,
                                bytes_per_token(tmp_path / "ok" / "tokenizer.json", shards))
    written = summary["tokens"]["train"] + summary["tokens"]["val"]
    assert 0.8 < estimate / written < 1.25, (estimate, written)
    ledger("tokenize --weights wikipedia=2 (no such source in the input)",
           "exit 2 naming it and listing the sources present (was: ignored)", runs=1)
    ledger("tokenize: output size estimate (text bytes / measured bytes per token x weights)",
           "within 25 % of the tokens written", tokens_written=written, tokens_estimated=estimate)


@pytest.mark.integration
def test_a_vocabulary_larger_than_the_data_supports_warns_and_is_recorded(services, web_and_books, tmp_path, ledger):
    with pytest.raises(ConfigError, match="tokenize.vocab_size"):
        validate_config(TokenizeConfig, {"vocab_size": 10_000_000}, prefix="tokenize.")
    result = invoke_tokenize(web_and_books, tmp_path / "big", "--vocab-size", "10000000")
    assert result.exit_code == 2 and "tokenize.vocab_size" in result.output, result.output

    result = invoke_tokenize(web_and_books, tmp_path / "t", "--vocab-size", "200000")
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "t" / "index.json").read_text())
    trained = index["vocab_size"]
    assert trained < 200_000 and index["requested_vocab_size"] == 200_000
    message = " ".join(result.output.split())
    assert f"warning: vocab_size 200,000 requested, but the 43 sampled documents support only {trained:,}" in message
    ledger("tokenize --vocab-size 10000000 / 200000 on 43 documents",
           "10M: exit 2 naming tokenize.vocab_size (at most 1,000,000); 200k: warning with requested and trained "
           "size, index.json records both (was: silently smaller)", trained_vocab=trained)


# ---------------------------------------------------------------- item 13: a classifier that cannot separate


def prose_and_web(n: int = 40) -> tuple[list[str], list[str]]:
    rng = random.Random(6)
    prose = [f"She walked to the harbour on day {i}, and the boats were already out at sea. " * 3 for i in range(n)]
    web = [f"Home | Shop | Cart ({i}) | Login | Sign up | Sale {rng.randint(1, 90)}% off | Contact" for i in range(n)]
    return prose, web


def test_a_classifier_refuses_the_same_texts_as_positives_and_negatives(tmp_path, ledger):
    from models.quality_classifier import train_classifier

    cfg = ClassifierConfig(n_features=4096, char_ngrams=None, epochs=5)
    prose, web = prose_and_web()
    with pytest.raises(ValueError, match=r"40 of the 40 positive texts \(100%\) are also negatives"):
        train_classifier(prose, prose, tmp_path / "m", cfg)
    with pytest.raises(ValueError, match=r"30 of the 40 positive texts \(75%\) are also negatives"):
        train_classifier(prose, prose[:30] + web[:10], tmp_path / "m", cfg)
    assert not (tmp_path / "m").exists()
    metadata = train_classifier(prose, prose[:2] + web, tmp_path / "m", cfg)  # a little overlap is only counted
    assert metadata["counts"]["shared_texts"] == 2
    ledger("train-classifier: positives and negatives share their texts (100 %, 75 %)",
           "error naming the overlap, no model written; 5 % overlap is trained and counted", checks=3)


def test_a_classifier_below_the_roc_floor_is_refused(tmp_path, ledger):
    from models.quality_classifier import train_classifier

    from tasks.quality.corpus import iter_corpus

    chunks = []  # 100 passages of every English book, alternately positive and negative: nothing to learn
    for book in sorted(shared_data("reference", "en").glob("*.txt.gz")):
        chunks += list(iter_corpus([str(book)]))[5:105]
    positives, negatives = chunks[0::2], chunks[1::2]
    cfg = ClassifierConfig(n_features=4096, char_ngrams=None, epochs=5)
    with pytest.raises(ValueError, match=r"held-out ROC-AUC 0\.\d+ is below min_roc_auc 0.6") as info:
        train_classifier(positives, negatives, tmp_path / "m", cfg)
    auc = float(str(info.value).split("ROC-AUC ")[1].split()[0])
    assert auc < 0.6 and not (tmp_path / "m").exists()
    lenient = cfg.model_copy(update={"min_roc_auc": 0.0})
    trained = train_classifier(positives, negatives, tmp_path / "m", lenient)
    assert trained["metrics"]["roc_auc"] == pytest.approx(auc, abs=5e-4)
    ledger("train-classifier: alternate passages of the same books as positives and negatives",
           "error giving the ROC-AUC and min_roc_auc 0.6, no model written", roc_auc_x100=round(100 * auc))


@pytest.mark.integration
def test_train_classifier_with_one_folder_as_both_classes_exits_2(services, tmp_path, ledger):
    prose, _ = prose_and_web()
    write_shard(tmp_path / "docs" / "a.parquet", [doc(f"p{i}", text) for i, text in enumerate(prose)])
    result = CliRunner().invoke(app, ["quality", "train-classifier", "--positive", str(tmp_path / "docs"),
                                      "--negative", str(tmp_path / "docs" / "a.parquet"), "--output", str(tmp_path / "m")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "error:" in message and "given as both positives and negatives" in message and "a.parquet" in message
    assert not (tmp_path / "m").exists()
    ledger("quality train-classifier --positive D --negative D/a.parquet (the same file)",
           "exit 2 naming the file given as both (was: ROC 0.16, rc 0)", runs=1)


# ---------------------------------------------------------------- item 11: a truncated lm.binary


@pytest.fixture(scope="module")
def small_perplexity_model(tmp_path_factory) -> Path:
    from tasks.quality.perplexity import train_perplexity_model
    from pretrain.config import PerplexityConfig

    book = sorted(shared_data("reference", "en").glob("*.txt.gz"))[0]
    cfg = PerplexityConfig(order=3, vocab_size=1000, max_train_chars=200_000, lmplz_memory="64M")
    return train_perplexity_model([str(book)], tmp_path_factory.mktemp("ppl") / "en", cfg)


def truncated_copy(model: Path, folder: Path) -> tuple[Path, int, int]:
    broken = folder / "broken"
    shutil.copytree(model, broken)
    size = (broken / "lm.binary").stat().st_size
    with open(broken / "lm.binary", "r+b") as handle:
        handle.truncate(size // 2)
    return broken, size, size // 2


def test_a_truncated_lm_binary_is_named_with_both_sizes_and_the_retrain_command(small_perplexity_model, tmp_path,
                                                                                 ledger):
    from models.perplexity import PerplexityModel, PerplexityModelError

    broken, size, half = truncated_copy(small_perplexity_model, tmp_path)
    with pytest.raises(PerplexityModelError) as info:
        PerplexityModel.load(broken)
    message = str(info.value)
    assert f"{broken / 'lm.binary'}: {half:,} bytes, model.json records {size:,}" in message
    assert f"pretrain quality train-perplexity --reference" in message and f"--output {broken}" in message
    ledger("perplexity model: lm.binary truncated to half", "load fails naming the file, both sizes and the "
           "train-perplexity command", bytes_expected=size, bytes_found=half)


@pytest.mark.integration
def test_quality_score_with_a_truncated_lm_binary_exits_2_before_scoring(services, small_perplexity_model, tmp_path,
                                                                         ledger):
    broken, size, half = truncated_copy(small_perplexity_model, tmp_path)
    prose, _ = prose_and_web(5)
    write_shard(tmp_path / "in" / "a.parquet", [doc(f"p{i}", text) for i, text in enumerate(prose)])
    result = CliRunner().invoke(app, ["quality", "score", "--input", str(tmp_path / "in"), "--output",
                                      str(tmp_path / "out"), "--perplexity-model", str(broken)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"lm.binary: {half:,} bytes, model.json records {size:,}" in message
    assert "Scorer" not in result.output and "RayActorError" not in result.output  # no actor ever loaded it
    assert not (tmp_path / "out" / "kept").exists()
    ledger("quality score --perplexity-model M with M/lm.binary truncated", "exit 2 before any actor starts, "
           "naming the file and both sizes (was: 643 lines of actor retries)", bytes_expected=size, bytes_found=half)
