"""Mixtures by token share: the planner on shards of very different sizes, checked on the written .bin files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from pretrain.config import MixtureConfig, TokenizeConfig
from tasks.mixture import parse_source_numbers, plan_mixture, read_sidecars, sidecar_path, target_tokens
from tasks.shards import ShardWriter
from tasks.tokenize import build_tokenizer, count_shard, load_tokenizer, tokenize_shard

SIZES = {"tiny": 1, "mid": 10, "big": 100}  # documents per source: 1 : 10 : 100


def real_texts(n: int) -> list[str]:
    from tasks.quality.corpus import iter_documents

    texts = []
    for text in iter_documents(shared_data("reference", "en", "Pride_and_Prejudice_JaneAusten.txt.gz")):
        texts.append(text[:1500])
        if len(texts) == n:
            return texts
    return texts


def write_sources(folder: Path) -> list[tuple[str, Path]]:
    """One Parquet shard per source, real text, 1 : 10 : 100 documents."""
    texts = iter(real_texts(sum(SIZES.values())))
    shards = []
    for source, n in SIZES.items():
        path = folder / f"{source}.parquet"
        with ShardWriter(path) as writer:
            for i in range(n):
                writer.write({"id": f"{source}-{i}", "source": source, "text": next(texts)})
        shards.append((source, path))
    return shards


def run_mixture(tmp: Path, shards, cfg: TokenizeConfig) -> tuple[dict, dict]:
    out = tmp / "out"
    build_tokenizer([p for _, p in shards], cfg, out)
    for name, path in shards:
        count_shard(path, sidecar_path(out, name), out / "tokenizer.json", cfg)
    plan = plan_mixture(read_sidecars({name: sidecar_path(out, name) for name, _ in shards}), cfg.mixture)
    reports = {name: tokenize_shard(path, out / "train" / f"{name}.bin", out / "val" / f"{name}.bin",
                                    out / "tokenizer.json", cfg, plan) for name, path in shards}
    return plan, reports


def shares_from_bins(out: Path, sources: list[str]) -> dict[str, float]:
    """Each source's share of the train tokens, counted in the .bin files (one shard per source)."""
    tokens = {s: len(np.fromfile(out / "train" / f"{s}.bin", dtype="<u2")) for s in sources}
    total = sum(tokens.values())
    return {s: n / total for s, n in tokens.items()}


def config(shares: dict, **mixture) -> TokenizeConfig:
    return TokenizeConfig(vocab_size=400, train_max_documents=200, val_fraction=0.0,
                          mixture=MixtureConfig(shares=shares, **mixture))


def test_three_sources_of_1_10_100_documents_reach_their_shares_in_the_written_files(tmp_path):
    shares = {"tiny": 0.2, "mid": 0.3, "big": 0.5}
    shards = write_sources(tmp_path / "in")
    cfg = config(shares, max_epochs={"tiny": 100.0, "mid": 10.0})
    plan, reports = run_mixture(tmp_path, shards, cfg)
    realized = shares_from_bins(tmp_path / "out", list(SIZES))
    for source, share in shares.items():
        assert abs(realized[source] - share) <= 0.01, (source, realized)
        assert abs(realized[source] - share) * plan["total_tokens"] <= 1  # exact up to a token of rounding
    assert plan["sources"]["tiny"]["epochs"] > 1 > plan["sources"]["big"]["epochs"]  # up- and down-sampled
    assert plan["sources"]["big"]["cut_tokens"] > 0  # the last document of the partial pass was cut
    written = sum(r["splits"]["train"]["tokens"] for r in reports.values())
    assert written == plan["total_tokens"] == sum(e["raw_tokens"] for e in plan["sources"].values())
    eos = 0
    for source in SIZES:  # every document of every file still ends with EOS
        ids = np.fromfile(tmp_path / "out" / "train" / f"{source}.bin", dtype="<u2")
        assert ids[-1] == eos


def test_the_cut_document_is_the_prefix_of_a_real_document(tmp_path):
    shards = write_sources(tmp_path / "in")
    cfg = config({"tiny": 0.1, "mid": 0.2, "big": 0.7}, max_epochs={"tiny": 100.0})
    plan, _ = run_mixture(tmp_path, shards, cfg)
    tokenizer = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    ids = np.fromfile(tmp_path / "out" / "train" / "big.bin", dtype="<u2").tolist()
    cut = plan["sources"]["big"]["cut_tokens"]
    piece = ids[-cut:]
    assert piece[-1] == 0
    import pyarrow.parquet as pq
    texts = pq.read_table(shards[2][1]).column("text").to_pylist()
    assert any(text.startswith(tokenizer.decode(piece[:-1])) for text in texts)


def test_a_share_needing_more_epochs_than_allowed_is_refused_naming_the_source(tmp_path):
    shards = write_sources(tmp_path / "in")
    with pytest.raises(ValueError, match=r"source 'tiny' with share 0\.2 needs [\d.]+ epochs .* max_epochs 4"):
        run_mixture(tmp_path, shards, config({"tiny": 0.2, "mid": 0.3, "big": 0.5}))
    assert not (tmp_path / "out" / "train").exists()  # refused before any token file


def test_same_input_gives_the_same_bytes(tmp_path):
    shards = write_sources(tmp_path / "in")
    cfg = config({"tiny": 0.2, "mid": 0.3, "big": 0.5}, max_epochs={"tiny": 100.0, "mid": 10.0})
    run_mixture(tmp_path / "a", shards, cfg)
    run_mixture(tmp_path / "b", shards, cfg)
    for source in SIZES:
        assert (tmp_path / "a/out/train" / f"{source}.bin").read_bytes() == \
               (tmp_path / "b/out/train" / f"{source}.bin").read_bytes()


def test_targets_sum_to_the_total_and_specs_parse():
    assert sum(target_tokens({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 1000).values()) == 1000
    assert parse_source_numbers("cc=0.5, wikipedia=0.5", "--mixture") == {"cc": 0.5, "wikipedia": 0.5}
    with pytest.raises(ValueError, match="expected source=number, got 'cc'"):
        parse_source_numbers("cc", "--mixture")


def test_cli_refuses_a_bad_mixture_spec_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    for spec, message in (("cc=half", "expected source=number"), ("cc=0.5,wiki=0.4", "sum to 1")):
        result = CliRunner().invoke(app, ["tokenize", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                                          "--mixture", spec])
        assert result.exit_code == 2, result.output
        assert message in result.output


@pytest.mark.integration
def test_tokenize_flow_records_the_mixture_in_index_json_as_the_bins_hold_it(services, tmp_path):
    from flows.tokenize import tokenize_flow

    write_sources(tmp_path / "in")
    shares = {"tiny": 0.25, "mid": 0.25, "big": 0.5}
    cfg = TokenizeConfig(vocab_size=400, train_max_documents=200, val_fraction=0.05,
                         mixture=MixtureConfig(shares=shares, max_epochs={"tiny": 200.0, "mid": 20.0}))
    out = tmp_path / "tokens"
    summary = tokenize_flow(config=cfg, input_dirs=[str(tmp_path / "in")], output_dir=str(out))
    index = json.loads((out / "index.json").read_text())
    record = index["mixture"]
    assert record["target"] == shares and summary["mixture"] == record
    assert json.loads((out / "report.json").read_text())["mixture"] == record
    from_bins = shares_from_bins(out, list(SIZES))
    for source, share in shares.items():
        assert abs(from_bins[source] - share) <= 0.01
        assert record["realized"][source] == pytest.approx(from_bins[source])
        assert record["epochs"][source] == pytest.approx(record["tokens"][source] / record["raw_tokens"][source])
    assert record["total_tokens"] == index["tokens"]["train"]
