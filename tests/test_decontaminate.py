"""Decontamination: word normalization, the n-gram index, matching, drop and cut, the flow and the command.

Unit tests use hand-made items (``build_index(..., items=...)``) and tiny strings; the flow tests run
the real flow (Prefect, Ray actors holding the index, the shard runner) on real Parquet of book
chunks with real HellaSwag items planted in them; acceptance 2's detection half (recall of 200
planted items, false positives on 2,000 clean book chunks) is ``test_planted_items_are_found_and_clean_books_kept``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_data
from decontam_fixtures import clean_and_filler, gold_text, planted_documents, write_shards
from prefect import flow
from typer.testing import CliRunner

from cli.main import app
from flows.decontaminate import STAGE, decontaminate_flow, run_in_pipeline
from flows.runner import StageFailed
from flows.stage import Pipeline
from pretrain.config import EVAL_TASKS, DecontaminateConfig, PipelineConfig, RayConfig
from tasks.evaluation.decontam import (
    build_index, cut_spans, decontaminate_shard, load_index, merge_reports, normalize, prefix_hashes, save_index,
    saved_fingerprint, window_hashes, word_spans, words,
)
from tasks.evaluation.items import Item, load_items

FIFTEEN = "the quick brown fox jumps over the lazy dog while seven tired cats sleep soundly"  # 15 words
FOX = ("The quick brown fox jumps over", " the lazy dog while seven tired cats sleep soundly")  # its request
CONTAMINATED = "Intro words here. " + FIFTEEN + ". " + "Plenty of other words follow here. " * 8


def item(task: str, doc_id: int, context: str, continuation: str) -> Item:
    return Item(task=task, doc_id=doc_id, requests=((context, continuation), (context, " something else")), gold=0)


def index_of(items: list[Item], ngram: int = 13, tasks: tuple[str, ...] | None = None):
    by_task: dict[str, list[Item]] = {}
    for entry in items:
        by_task.setdefault(entry.task, []).append(entry)
    return build_index(list(tasks or by_task), ngram, items=by_task)


# ---------------------------------------------------------------- words


def test_words_are_lower_case_without_punctuation():
    assert words("Don't STOP -- believing! Well-known_x, Café.") == ["dont", "stop", "believing", "wellknownx",
                                                                      "café"]
    assert normalize("A\tB\n") == "a\tb\n"
    assert words("... -- !!") == []


@pytest.mark.parametrize("text", ["Don't STOP -- believing!", "  lead\tand trail  ", "— a — b —",
                                  "ΟΔΟΣ. İx y_z", "", "...", "one\u00a0two\u2003three"])
def test_word_spans_give_the_same_words_at_their_places(text):
    spans = word_spans(text)
    assert [w for start, end in spans for w in words(text[start:end])] == words(text)
    assert len(spans) == len(words(text))


def test_a_window_hash_depends_on_the_words_not_where_they_are():
    values = np.arange(1, 30, dtype=np.uint64) * np.uint64(0x9E3779B1)
    ids = np.array([5, 6, 7, 1, 2, 5, 6, 7])
    prefix = prefix_hashes(values[ids])
    hashes = window_hashes(prefix, np.arange(6), 3)
    assert hashes[0] == hashes[5] and len(set(hashes.tolist())) == 5  # 567 twice, 671 712 125 256 once


# ---------------------------------------------------------------- the index


def test_index_holds_each_items_windows_once_and_short_items_whole():
    index = index_of([item("hellaswag", 1, *FOX),
                      item("piqa", 7, "Goal: a bucket\nAnswer:", " can hold paint"),
                      item("piqa", 8, "Goal: again again again again again again again again again again again "
                                      "again again again\nAnswer:", " again")])
    described = index.describe()
    assert described["items"] == {"hellaswag": 1, "piqa": 2}
    assert sorted(index.lengths) == [5, 13]  # "a bucket can hold paint": 5 words, matched whole
    assert len(index.lengths[13][0]) == 3 + 1  # 15 words: 3 windows; 15 x "again": one window, once
    assert len(index.lengths[5][0]) == 1 and described["short_item_lengths"] == [5]
    assert described["vocabulary"] == 14 + 6  # the first item's 15 words ("the" twice), a bucket can hold paint again


def test_template_labels_are_not_item_words():
    index = index_of([item("csqa", 3, "Question: Where do adults use glue sticks?\nAnswer:", " office")])
    assert set(index.vocabulary) == {"where", "do", "adults", "use", "glue", "sticks", "office"}


def test_bad_ngram_is_refused():
    with pytest.raises(ValueError, match="ngram must be at least 1, got 0"):
        build_index(["hellaswag"], 0, items={"hellaswag": []})


def test_a_saved_index_loads_memory_mapped_and_matches_the_same(tmp_path):
    index = index_of([item("hellaswag", 1, *FOX),
                      item("piqa", 7, "Goal: a bucket\nAnswer:", " can hold paint")])
    save_index(index, tmp_path / "index", fingerprint="abc")
    assert saved_fingerprint(tmp_path / "index") == "abc" and saved_fingerprint(tmp_path / "none") is None
    loaded = load_index(tmp_path / "index")
    assert isinstance(loaded.lengths[13][0], np.memmap) and loaded.vocabulary == index.vocabulary
    assert loaded.items == index.items and loaded.describe() == index.describe()
    texts = [FIFTEEN, "so a bucket can hold paint", "nothing here"]
    assert loaded.match(texts) == index.match(texts)


# ---------------------------------------------------------------- matching


def fox_index(ngram: int = 13):
    return index_of([item("hellaswag", 1, *FOX)], ngram)


def test_a_document_with_thirteen_item_words_in_a_row_matches_whatever_its_case_and_punctuation():
    index = fox_index()
    matches = index.match([
        "Before. THE QUICK, brown fox -- jumps over the lazy dog; while seven tired cats? After.",  # words 1-13
        "the quick brown fox jumps over the lazy dog while seven tired",  # 12 words
        "the quick brown fox jumps over the lazy dog while seven tired cats sleep soundly",  # all 3 windows
        "unrelated text entirely",
    ])
    assert matches[0].windows == {"hellaswag": 1} and matches[0].spans == [(1, 14)]
    assert [index.items[i].doc_id for i in matches[0].items] == [1]
    assert matches[1] is None and matches[3] is None
    assert matches[2].windows == {"hellaswag": 3} and matches[2].spans == [(0, 13), (1, 14), (2, 15)]


def test_long_texts_are_matched_in_bounded_batches_with_the_same_result(monkeypatch):
    from tasks.evaluation import decontam

    texts = ["filler words " * 40, CONTAMINATED, "x" * 50, FIFTEEN, ""]
    whole = fox_index().match(texts)
    monkeypatch.setattr(decontam, "MAX_BATCH_CHARS", 100)  # one or two texts a batch
    assert fox_index().match(texts) == whole and [m is not None for m in whole] == [False, True, False, True, False]


def test_windows_do_not_run_across_documents_of_a_batch():
    first, second = FIFTEEN.split()[:7], FIFTEEN.split()[7:]
    assert fox_index().match([" ".join(first), " ".join(second)]) == [None, None]


def test_a_short_item_matches_only_whole():
    index = index_of([item("piqa", 7, "Goal: a bucket\nAnswer:", " can hold paint")])
    found, partial = index.match(["Well, a bucket can hold paint, they say.", "a bucket can hold water"])
    assert found.windows == {"piqa": 1} and found.spans == [(1, 6)] and partial is None


def test_the_reason_is_the_task_with_most_windows_ties_to_the_first_listed():
    items = [item("hellaswag", 1, *FOX),
             item("arc_easy", 2, "Question: one two three four five six seven eight nine ten eleven twelve "
                                 "thirteen\nAnswer:", " fourteen")]
    index = index_of(items, tasks=("arc_easy", "hellaswag"))
    more_fox, one_each = index.match([FIFTEEN + " and one two three four five six seven eight nine ten eleven twelve "
                                      "thirteen", "the quick brown fox jumps over the lazy dog while seven tired cats "
                                                  "one two three four five six seven eight nine ten eleven twelve "
                                                  "thirteen"])
    assert more_fox.windows == {"hellaswag": 3, "arc_easy": 1} and more_fox.task(index.tasks) == "hellaswag"
    assert one_each.windows == {"hellaswag": 1, "arc_easy": 1} and one_each.task(index.tasks) == "arc_easy"


def test_cut_removes_the_matched_words_and_keeps_the_rest():
    text = "Keep this start. The quick brown fox, jumps over the lazy dog while seven tired cats sleep soundly! " \
           "And keep this end."
    match = fox_index().match([text])[0]
    assert cut_spans(text, match.spans) == "Keep this start. And keep this end."
    assert cut_spans("a b c d", [(1, 2), (2, 3)]) == "a d"


def test_real_hellaswag_items_are_found_in_running_text():
    items = load_items("hellaswag", limit=20)
    index = build_index(["hellaswag"])
    texts = [f"Some words first.\n{gold_text(entry)}\nAnd then more words." for entry in items]
    matches = index.match(texts)
    assert all(matches)
    assert [{index.items[i].doc_id for i in match.items} >= {entry.doc_id} for match, entry in zip(matches, items)] \
        == [True] * 20
    assert index.match(["A man is sitting on a roof. He is happy."]) == [None]


# ---------------------------------------------------------------- one shard


def shard(path: Path, texts: list[str]) -> Path:
    rows = [{"id": f"d{i}", "url": f"https://example.org/{i}", "text": text} for i, text in enumerate(texts)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_shard_drop_counts_reasons_and_matched_items(tmp_path):
    source = shard(tmp_path / "in.parquet", ["clean text " * 30, CONTAMINATED, FIFTEEN, "more clean text"])
    report = decontaminate_shard(fox_index(), source, tmp_path / "out.parquet", "drop")
    assert (report["documents_in"], report["documents_kept"], report["documents_cut"]) == (4, 2, 0)
    assert report["dropped"] == {"contaminated_hellaswag": 2}
    assert report["matched_items"] == {"hellaswag": {1: 2}}
    kept = pq.read_table(tmp_path / "out.parquet")
    assert kept.column("id").to_pylist() == ["d0", "d3"] and kept.schema.names == ["id", "url", "text"]


def test_shard_cut_keeps_the_rest_and_drops_what_is_too_short(tmp_path):
    source = shard(tmp_path / "in.parquet", [CONTAMINATED, FIFTEEN, "clean"])
    report = decontaminate_shard(fox_index(), source, tmp_path / "out.parquet", "cut", min_remaining_chars=100)
    assert (report["documents_kept"], report["documents_cut"], report["words_cut"]) == (2, 1, 15)
    assert report["dropped"] == {"contaminated_hellaswag": 1}  # FIFTEEN alone: nothing left
    texts = pq.read_table(tmp_path / "out.parquet").column("text").to_pylist()
    assert texts == ["Intro words here. " + ("Plenty of other words follow here. " * 8).strip(), "clean"]
    merged = merge_reports([report, report])
    assert merged["documents_in"] == 6 and merged["matched_items"] == {"hellaswag": {1: 4}}


def test_a_bad_action_or_shard_is_refused(tmp_path):
    with pytest.raises(ValueError, match="action must be 'drop' or 'cut', got 'erase'"):
        decontaminate_shard(fox_index(), tmp_path / "x.parquet", tmp_path / "y.parquet", "erase")
    pq.write_table(pa.table({"body": ["no text column"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"needs column\(s\) \['text'\]"):
        decontaminate_shard(fox_index(), tmp_path / "bad.parquet", tmp_path / "y.parquet")
    assert not (tmp_path / "y.parquet").exists()


# ---------------------------------------------------------------- the flow


@pytest.fixture(scope="module")
def books_with_items(tmp_path_factory):
    """Two shards: 60 clean book chunks and 10 chunks with a HellaSwag item's gold text planted in each."""
    clean, filler = clean_and_filler(shared_data("reference", "en"), clean=60, filler=11)
    planted = planted_documents(load_items("hellaswag", limit=10), filler)
    folder = tmp_path_factory.mktemp("decontaminate-input")
    write_shards(clean + planted, folder, shards=2)
    return folder, planted


@pytest.mark.integration
def test_flow_drops_planted_documents_and_reruns_from_cache(services, books_with_items, tmp_path):
    folder, planted = books_with_items
    out = tmp_path / "out"
    config = DecontaminateConfig(tasks=["hellaswag", "piqa"])
    summary = decontaminate_flow(config=config, input_dir=str(folder), output_dir=str(out),
                                 ray_config=RayConfig(num_cpus=2))
    assert (summary["documents_in"], summary["documents_kept"], summary["documents"]) == (70, 60, 60)
    assert summary["dropped"] == {"contaminated_hellaswag": 10}
    report = json.loads((out / "report.json").read_text())
    matched = report["matched_items"]["hellaswag"]
    assert {int(doc_id) for doc_id in matched} >= {int(doc["id"].rsplit(":", 1)[1]) for doc in planted}
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    kept_ids = {i for p in out.glob("*.parquet") for i in pq.read_table(p).column("id").to_pylist()}
    assert len(kept_ids) == 60 and not any(i.startswith("planted:") for i in kept_ids)
    info = json.loads((out / "info.json").read_text())
    assert info["stage"] == "decontaminate" and info["index"]["tasks"] == ["hellaswag", "piqa"]
    assert info["index"]["items"] == {"hellaswag": 10042, "piqa": 1838}

    saved = (out / ".index" / "hashes-13.npy").stat().st_mtime_ns
    again = decontaminate_flow(config=config, input_dir=str(folder), output_dir=str(out),
                               ray_config=RayConfig(num_cpus=2))
    assert again["cache_hits"] == 2 and again["dropped"] == summary["dropped"]
    assert (out / ".index" / "hashes-13.npy").stat().st_mtime_ns == saved  # the index was not rebuilt

    cut = decontaminate_flow(config=config.model_copy(update={"action": "cut"}), input_dir=str(folder),
                             output_dir=str(out), ray_config=RayConfig(num_cpus=2))
    assert cut["cache_hits"] == 0 and cut["documents_kept"] == 70 and cut["documents_cut"] == 10
    texts = [t for p in sorted(out.glob("*.parquet")) for t in pq.read_table(p).column("text").to_pylist()]
    assert not any(gold_text(entry).strip() in t for entry in load_items("hellaswag", limit=10) for t in texts)


@pytest.mark.integration
def test_flow_lists_a_bad_shard_and_refuses_a_folder_without_shards(services, tmp_path):
    folder = tmp_path / "in"
    shard(folder.mkdir() or folder / "good.parquet", [CONTAMINATED])
    pq.write_table(pa.table({"body": ["no text"]}), folder / "bad.parquet")
    with pytest.raises(StageFailed, match=r"1 of 2 shards failed: .*bad.parquet.*needs column\(s\) \['text'\]"):
        decontaminate_flow(config=DecontaminateConfig(tasks=["hellaswag"]), input_dir=str(folder),
                           output_dir=str(tmp_path / "out"), ray_config=RayConfig(num_cpus=2))
    assert (tmp_path / "out" / "good.parquet").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        decontaminate_flow(config=DecontaminateConfig(tasks=["hellaswag"]), input_dir=str(tmp_path / "empty"),
                           output_dir=str(tmp_path / "out2"))


def test_a_disabled_stage_is_skipped_and_passes_its_input_on(prefect_server, tmp_path):
    recipe = PipelineConfig(decontaminate=DecontaminateConfig(enabled=False))
    pipeline = Pipeline(recipe=recipe, root=tmp_path, folders={"decontaminate": tmp_path / "decontaminate"},
                        input_dir=tmp_path / "quality" / "kept")

    @flow
    def run_it() -> dict:
        return run_in_pipeline(pipeline)

    result = run_it()
    assert result == {"skipped": "decontaminate.enabled is false"}
    assert STAGE.next_input(pipeline, result) == tmp_path / "quality" / "kept"
    assert STAGE.next_input(pipeline, {"documents": 3}) == tmp_path / "decontaminate"
    assert STAGE.config_of(pipeline) == {"decontaminate": recipe.decontaminate, "items": None}
    assert set(STAGE.reasons) == {f"contaminated_{task}" for task in EVAL_TASKS}
    assert "tasks.evaluation.decontam" in STAGE.code_modules


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize("tasks, message", [
    ("", "decontaminate.tasks is empty: name at least one of hellaswag, arc_easy"),
    ("hellaswag,nope", "unknown task(s) 'nope'; the known tasks are hellaswag, arc_easy, arc_challenge"),
])
def test_command_refuses_an_empty_or_unknown_task_list(tmp_path, tasks, message):
    result = CliRunner().invoke(app, ["decontaminate", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                                      "--tasks", tasks])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.integration
def test_command_writes_kept_shards_and_reports(services, books_with_items, tmp_path):
    folder, _ = books_with_items
    result = CliRunner().invoke(app, ["decontaminate", "--input", str(folder), "--output", str(tmp_path / "o"),
                                      "--tasks", "hellaswag", "winogrande", "--num-cpus", "2"])
    assert result.exit_code == 0, result.output
    assert "kept 60 of 70 documents" in result.output and "contaminated_hellaswag: 10" in result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    matched = report["matched_items"]["hellaswag"]  # neighbouring HellaSwag items share a context
    assert len(matched) >= 10 and "winogrande" not in report["matched_items"]
    assert f"hellaswag: {len(matched)} item(s) matched (the most, doc_id" in " ".join(result.output.split())
    missing = CliRunner().invoke(app, ["decontaminate", "--input", str(tmp_path / "nowhere"), "--output",
                                       str(tmp_path / "o2"), "--tasks", "hellaswag"])
    assert missing.exit_code == 2 and "nowhere" in missing.output


# ---------------------------------------------------------------- acceptance 2, detection


@pytest.mark.integration
def test_planted_items_are_found_and_clean_books_kept(services, tmp_path):
    """200 HellaSwag items planted in book text are all removed; of 2,000 clean book chunks at most 10 go."""
    clean, filler = clean_and_filler(shared_data("reference", "en"), clean=2000, filler=201)
    planted = planted_documents(load_items("hellaswag", limit=200), filler)
    write_shards(clean + planted, tmp_path / "in", shards=4)
    summary = decontaminate_flow(config=DecontaminateConfig(), input_dir=str(tmp_path / "in"),
                                 output_dir=str(tmp_path / "out"), ray_config=RayConfig(num_cpus=2))
    kept = {i for p in (tmp_path / "out").glob("*.parquet") for i in pq.read_table(p).column("id").to_pylist()}
    recall = sum(doc["id"] not in kept for doc in planted) / len(planted)
    clean_dropped = sum(doc["id"] not in kept for doc in clean)
    print(f"recall {recall:.3f} of {len(planted)} planted; {clean_dropped} of {len(clean)} clean dropped; "
          f"dropped {summary['dropped']}")
    assert recall >= 0.99
    assert clean_dropped <= 10
    assert summary["documents_in"] == 2200 and summary["dropped"].get("contaminated_hellaswag", 0) >= 198
