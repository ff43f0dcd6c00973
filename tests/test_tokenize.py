"""Tokenizer and packed token shards: unit tests on tiny shards, one integration test of the flow."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_data

from pretrain.config import TokenizeConfig
from tasks.tokenize import (
    TokenShards, build_index, build_tokenizer, check_weights, copies_of, input_shards, load_tokenizer,
    parse_weights, token_dtype, tokenize_shard, train_tokenizer, write_index,
)

WORDS = ("the of and to in is was for on that with as by at from river stone light house garden winter "
         "letter morning quiet window market sailor").split()


def synthetic_docs(n: int, seed: int = 0, sources: tuple[str, ...] = ("web",)) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"doc-{i}", "source": sources[i % len(sources)],
             "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "."} for i in range(n)]


def write_shard(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_tokenizer(folder: Path, shards: list[Path], **config) -> tuple[dict, TokenizeConfig]:
    cfg = TokenizeConfig(vocab_size=400, train_max_documents=200, **config)
    return build_tokenizer(shards, cfg, folder), cfg


def tokenize(shard: Path, out: Path, cfg: TokenizeConfig) -> dict:
    name = shard.stem
    return tokenize_shard(shard, out / "train" / f"{name}.bin", out / "val" / f"{name}.bin",
                          out / "tokenizer.json", cfg)


def documents_of(tokens: np.ndarray, eos: int) -> list[list[int]]:
    """Split a packed token file at EOS; the file must end with one."""
    assert len(tokens) == 0 or tokens[-1] == eos
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e].tolist() for s, e in zip(starts, ends)]


@pytest.fixture
def shard(tmp_path) -> Path:
    return write_shard(tmp_path / "in" / "s0.parquet", synthetic_docs(300, sources=("a", "b")))


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_ascii_and_non_ascii_text():
    corpus = [row["text"] for row in synthetic_docs(200)] + ["我们去公园散步。东京是一个大城市。"] * 5
    tokenizer = train_tokenizer(corpus, vocab_size=500, eos_token="<|endoftext|>")
    assert tokenizer.token_to_id("<|endoftext|>") == 0 and tokenizer.token_to_id("<|pad|>") == 1
    for text in ("The river was quiet.\n\n  Tabs\tand  spaces  ",
                 "naïve café, Ærø — «quoted» ½",
                 "我们去公园散步。北京欢迎你！",
                 "emoji 🎉🚀 and a family 👨‍👩‍👧 and Zalgo z̷̢a̸l̶g̵o"):
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text
    trained_words = tokenizer.encode("the river and the stone").ids
    assert len(trained_words) <= 5  # merges were learned: whole words, not bytes


def test_trained_tokenizer_file_reloads_and_small_vocab_packs_as_uint16(tmp_path, shard):
    meta, cfg = make_tokenizer(tmp_path / "out", [shard])
    assert meta["eos_id"] == 0 and meta["vocab_size"] <= 400 and meta["documents_sampled"] == 200
    assert token_dtype(meta["vocab_size"]) == np.uint16
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    reloaded = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert reloaded.get_vocab_size() == meta["vocab_size"] and reloaded.token_to_id("<|endoftext|>") == 0
    assert reloaded.decode(reloaded.encode("the garden 🌷").ids) == "the garden 🌷"
    report = tokenize(shard, tmp_path / "out", cfg)
    size = (tmp_path / "out" / "train" / "s0.bin").stat().st_size
    assert size == 2 * report["splits"]["train"]["tokens"] > 0


def test_given_tokenizer_is_copied_and_must_have_the_eos_token(tmp_path, shard):
    meta, _ = make_tokenizer(tmp_path / "first", [shard])
    given = tmp_path / "first" / "tokenizer.json"
    copy = build_tokenizer([shard], TokenizeConfig(tokenizer=str(given)), tmp_path / "second")
    assert copy["sha256"] == meta["sha256"] and copy["documents_sampled"] == 0
    assert (tmp_path / "second" / "tokenizer.json").read_bytes() == given.read_bytes()
    with pytest.raises(ValueError, match="no EOS token '</s>'"):
        build_tokenizer([shard], TokenizeConfig(tokenizer=str(given), eos_token="</s>"), tmp_path / "third")


# ---------------------------------------------------------------- packing and split


def test_every_document_ends_with_eos_and_decodes_to_its_text(tmp_path):
    rows = synthetic_docs(50) + [{"id": "tricky", "source": "web", "text": "a literal <|endoftext|> in text"},
                                 {"id": "empty", "source": "web", "text": ""},
                                 {"id": "cjk", "source": "web", "text": "東京は大きい 🎉"}]
    shard = write_shard(tmp_path / "in" / "s0.parquet", rows)
    out = tmp_path / "out"
    meta, cfg = make_tokenizer(out, [shard], val_fraction=0.2)
    report = tokenize(shard, out, cfg)
    assert report["documents"] == 52 and report["dropped"] == {"empty_text": 1}
    tokenizer = load_tokenizer(out / "tokenizer.json")
    decoded = []
    for split in ("train", "val"):
        tokens = np.fromfile(out / split / "s0.bin", dtype="<u2")
        docs = documents_of(tokens, meta["eos_id"])
        assert int((tokens == meta["eos_id"]).sum()) == len(docs) == report["splits"][split]["documents"]
        decoded += [tokenizer.decode(ids) for ids in docs]
    assert sorted(decoded) == sorted(row["text"] for row in rows if row["text"])
    assert report["splits"]["val"]["documents"] > 0


def test_split_is_deterministic_and_depends_on_the_seed(tmp_path, shard):
    meta, cfg = make_tokenizer(tmp_path / "a", [shard], val_fraction=0.3)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer.json").write_bytes((tmp_path / "a" / "tokenizer.json").read_bytes())
    first, second = tokenize(shard, tmp_path / "a", cfg), tokenize(shard, tmp_path / "b", cfg)
    assert first["splits"] == second["splits"]
    for split in ("train", "val"):
        assert (tmp_path / "a" / split / "s0.bin").read_bytes() == (tmp_path / "b" / split / "s0.bin").read_bytes()
    reseeded = tokenize(shard, tmp_path / "b", cfg.model_copy(update={"seed": 1}))
    assert (tmp_path / "a" / "val" / "s0.bin").read_bytes() != (tmp_path / "b" / "val" / "s0.bin").read_bytes()
    assert reseeded["documents"] == first["documents"]


def test_val_fraction_is_respected_on_a_thousand_documents(tmp_path):
    shard = write_shard(tmp_path / "in" / "s0.parquet", synthetic_docs(1000, seed=3))
    meta, cfg = make_tokenizer(tmp_path / "out", [shard], val_fraction=0.2)
    report = tokenize(shard, tmp_path / "out", cfg)
    val, train = report["splits"]["val"]["documents"], report["splits"]["train"]["documents"]
    assert val + train == 1000
    assert 150 <= val <= 250, val  # binomial(1000, 0.2): sd ~ 13
    none = tokenize(shard, tmp_path / "out", cfg.model_copy(update={"val_fraction": 0.0}))
    assert none["splits"]["val"] == {"file": "val/s0.bin", "tokens": 0, "documents": 0}


def test_mixture_weights_repeat_and_downsample_train_documents(tmp_path):
    shard = write_shard(tmp_path / "in" / "s0.parquet", synthetic_docs(1200, sources=("double", "half", "plain")))
    meta, cfg = make_tokenizer(tmp_path / "out", [shard], val_fraction=0.1,
                               weights={"double": 2.0, "half": 0.5})
    report = tokenize(shard, tmp_path / "out", cfg)
    sources = report["sources"]
    assert sources["double"]["tokens"] == 2 * sources["double"]["raw_tokens"]
    assert sources["plain"]["tokens"] == sources["plain"]["raw_tokens"]
    assert 0.4 < sources["half"]["tokens"] / sources["half"]["raw_tokens"] < 0.6
    assert sum(s["tokens"] for s in sources.values()) == report["splits"]["train"]["tokens"]
    assert sum(s["train_documents"] for s in sources.values()) == report["splits"]["train"]["documents"]
    assert sources["half"]["val_documents"] > 0  # validation is not weighted

    tokenizer = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    tokens = np.fromfile(tmp_path / "out" / "train" / "s0.bin", dtype="<u2")
    texts = Counter(tokenizer.decode(ids) for ids in documents_of(tokens, meta["eos_id"]))
    by_text = {row["text"]: row for row in synthetic_docs(1200, sources=("double", "half", "plain"))}
    expected_copies = {"double": 2, "plain": 1}
    for text, count in texts.items():
        row = by_text[text]
        want = expected_copies.get(row["source"]) or copies_of(row["id"], cfg.seed, 0.5)
        assert count == want, (row, count)
    assert copies_of("x", 0, 2.5) in (2, 3) and copies_of("x", 0, 0.0) == 0


def test_weights_parse_from_the_command_line_form_and_negative_ones_are_rejected():
    assert parse_weights("web=1, books=2.5") == {"web": 1.0, "books": 2.5}
    assert parse_weights(["web=0.5", "code=3"]) == {"web": 0.5, "code": 3.0}
    for bad in ("web", "web=x", "=2", "web=nan"):
        with pytest.raises(ValueError, match="expected source=number"):
            parse_weights(bad)
    with pytest.raises(ValueError, match="'bad': -1.0"):
        check_weights({"good": 1.0, "bad": -1.0})


def test_input_shards_with_the_same_name_in_two_folders_get_distinct_names(tmp_path):
    for folder in ("crawl-a", "crawl-b"):
        write_shard(tmp_path / folder / "part-0.parquet", synthetic_docs(2))
    names = [name for name, _ in input_shards([str(tmp_path / "crawl-a"), str(tmp_path / "crawl-b")])]
    assert names == ["crawl-a-part-0", "crawl-b-part-0"]
    with pytest.raises(FileNotFoundError):
        input_shards([str(tmp_path / "nothing-here")])


# ---------------------------------------------------------------- index and reader


def test_index_matches_files_and_reader_concatenates_shards(tmp_path):
    shards = [write_shard(tmp_path / "in" / f"s{i}.parquet", synthetic_docs(200, seed=i, sources=("a", "b")))
              for i in range(3)]
    out = tmp_path / "out"
    meta, cfg = make_tokenizer(out, shards, val_fraction=0.1, weights={"b": 3.0})
    index = build_index([tokenize(shard, out, cfg) for shard in shards], meta, cfg)
    write_index(out, index)

    data = TokenShards.open(out)
    assert (data.dtype, data.vocab_size, data.eos_id) == (np.dtype("<u2"), meta["vocab_size"], 0)
    assert json.loads((out / "index.json").read_text())["dtype"] == "uint16"
    for split in ("train", "val"):
        files = data.split(split)
        assert len(files) == 3
        assert data.total_tokens(split) == sum(len(f) for f in files) == sum(
            (out / e["file"]).stat().st_size // 2 for e in index["splits"][split])
        assert index["documents"][split] == sum(int((f == 0).sum()) for f in files)
    assert index["sources"]["b"]["weight"] == 3.0 and index["sources"]["b"]["tokens"] == 3 * index["sources"]["b"][
        "raw_tokens"]

    view = data.concat_view("train")
    first = len(data.split("train")[0])
    assert view.locate(0) == (0, 0) and view.locate(first) == (1, 0) and view.locate(first - 1) == (0, first - 1)
    assert view.locate(len(view) - 1) == (2, len(data.split("train")[2]) - 1)
    everything = np.concatenate(data.split("train"))
    assert np.array_equal(view.read(first - 5, 10), everything[first - 5:first + 5])
    with pytest.raises(IndexError):
        view.locate(len(view))

    with open(out / "train" / "s1.bin", "r+b") as handle:  # a truncated file is caught at open
        handle.truncate(10)
    with pytest.raises(ValueError, match="s1.bin: 10 bytes"):
        TokenShards.open(out)


# ---------------------------------------------------------------- integration: the Prefect flow on Ray


def book_shards(folder: Path, docs_per_book: int = 60) -> list[Path]:
    from tasks.quality.corpus import iter_documents

    books = {"austen": "Pride_and_Prejudice_JaneAusten.txt.gz", "dickens": "Great_Expectations_CharlesDickens.txt.gz"}
    shards = []
    for source, name in books.items():
        texts = []
        for text in iter_documents(shared_data("reference", "en", name)):
            texts.append(text)
            if len(texts) == docs_per_book:
                break
        rows = [{"id": f"{source}-{i}", "source": source, "text": text} for i, text in enumerate(texts)]
        shards.append(write_shard(folder / f"{source}.parquet", rows))
    return shards


@pytest.mark.integration
def test_tokenize_flow_on_real_text_writes_a_consistent_index_and_reruns_from_cache(services, tmp_path):
    from flows.tokenize import tokenize_flow

    shards = book_shards(tmp_path / "in")
    out = tmp_path / "tokens"
    cfg = TokenizeConfig(vocab_size=1000, train_max_documents=100, val_fraction=0.1, weights={"dickens": 2.0})
    first = tokenize_flow(config=cfg, input_dirs=[str(tmp_path / "in")], output_dir=str(out))
    assert first["failed"] == [] and first["cache_hits"] == 0 and not first["tokenizer"]["cached"]
    assert first["documents"] == 120

    index = json.loads((out / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["eos_id"] == 0 and index["tokens"] == first["tokens"]
    assert index["sources"]["dickens"]["tokens"] == 2 * index["sources"]["dickens"]["raw_tokens"]
    assert index["sources"]["austen"]["documents"] == 60
    data = TokenShards.open(out)
    assert data.total_tokens("train") == sum(len(f) for f in data.split("train")) > 10_000
    assert {p.name for p in (out / "train").glob("*.bin")} == {"austen.bin", "dickens.bin"}
    tokenizer = load_tokenizer(data.tokenizer_path)
    austen_train = documents_of(np.asarray(data.split("train")[0]), data.eos_id)
    austen_texts = set(pq.read_table(shards[0]).column("text").to_pylist())
    assert all(tokenizer.decode(ids) in austen_texts for ids in austen_train)
    assert (out / "info.json").is_file() and json.loads((out / "report.json").read_text())["shards_written"] == 2

    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*.bin")}
    second = tokenize_flow(config=cfg, input_dirs=[str(tmp_path / "in")], output_dir=str(out))
    assert second["cache_hits"] == 2 and second["tokenizer"]["cached"]
    assert json.loads((out / "index.json").read_text()) == index
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.bin")} == before  # nothing rewritten

    (out / "val" / "dickens.bin").unlink()  # a missing output is recomputed, the other shard stays cached
    third = tokenize_flow(config=cfg, input_dirs=[str(tmp_path / "in")], output_dir=str(out))
    assert third["cache_hits"] == 1 and third["tokens"] == index["tokens"]


@pytest.mark.integration
def test_a_tokenizer_error_on_ray_is_raised_as_the_work_raised_it_and_the_cli_exits_2(services, tmp_path, shard):
    """The tokenizer is a Ray task of the shard runner; its bad input still ends the run at once with the
    work's own exception and message (no Ray wrapper, no traceback), before any shard is tokenized."""
    from typer.testing import CliRunner

    from cli.main import app
    from flows.tokenize import tokenize_flow

    make_tokenizer(tmp_path / "given", [shard])
    given = tmp_path / "given" / "tokenizer.json"
    cfg = TokenizeConfig(tokenizer=str(given), eos_token="</s>")
    with pytest.raises(ValueError, match="tokenizer has no EOS token '</s>'") as info:
        tokenize_flow(config=cfg, input_dirs=[str(shard.parent)], output_dir=str(tmp_path / "out"))
    assert type(info.value) is ValueError
    assert not (tmp_path / "out" / "train").exists() and not (tmp_path / "out" / "index.json").exists()

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: local\ntokenize:\n  eos_token: '</s>'\n")
    result = CliRunner().invoke(app, ["tokenize", "--input", str(shard.parent), "--output", str(tmp_path / "cli"),
                                      "--tokenizer", str(given), "--config", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "tokenizer has no EOS token '</s>'" in result.output and "Traceback" not in result.output
