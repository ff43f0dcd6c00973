"""Synthetic documents: templates, per-document seeded batched generation, the synthesize flow and command.

The model is the one `pretrain run` exports: a tiny run of our Transformer trained on a real book
(tests/tiny_run.py), exported by ``flows.train.export_model``. Its context is 64 tokens, so the
flow tests use a short template of their own (the shipped ones do not fit, which is itself tested).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import shared_data
from typer.testing import CliRunner

from pretrain.config import RayConfig, SynthesizeConfig
from tasks.shards import ShardWriter
from tasks.synthesis.generate import Synthesizer, document_seed, nucleus
from tasks.synthesis.shard import SYNTHETIC_SCHEMA, synthesize_held, synthetic_id
from tasks.synthesis.templates import TemplateError, available, load_template

SHORT = "Rewrite: {text}\nRewritten:"


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """(run folder, its hf/ export)."""
    from tiny_run import tiny_book_run

    from flows.train import export_model

    run_dir, _, _, _ = tiny_book_run(tmp_path_factory.mktemp("synth-run"))
    return run_dir, export_model(run_dir, json.loads((run_dir / "summary.json").read_text()))


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("templates")
    (folder / "short.txt").write_text(SHORT + "\n")
    (folder / "twice.txt").write_text("{text} and {text}")
    return folder


def book_paragraphs(n: int) -> list[str]:
    text = gzip.open(shared_data("reference", "en", "Pride_and_Prejudice_JaneAusten.txt.gz"), "rt").read()
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) > 12]
    return paragraphs[100:100 + n]


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> Path:
    """Two shards of 3 book paragraphs each."""
    folder = tmp_path_factory.mktemp("docs")
    paragraphs = book_paragraphs(6)
    for shard in range(2):
        with ShardWriter(folder / f"shard-{shard:04d}.parquet") as writer:
            for i in range(3):
                writer.write({"id": f"doc-{shard}-{i}", "source": "web", "url": f"https://example.com/{shard}/{i}",
                              "lang": "en", "text": paragraphs[shard * 3 + i]})
    return folder


def settings(model: Path, templates: Path, **changes) -> SynthesizeConfig:
    return SynthesizeConfig(**{"model": str(model), "template": "short", "templates_dir": str(templates),
                               "max_new_tokens": 16, "batch_size": 2, **changes})


def rows(folder: Path) -> list[dict]:
    return [row for shard in sorted(folder.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


# ---------------------------------------------------------------- templates


def test_the_shipped_templates_load_by_name_and_an_unknown_name_lists_them(templates):
    assert available() == ["qa_pairs", "wikipedia_style"]
    for name in available():
        template = load_template(name)
        before, after = template.parts()
        assert template.text.count("{text}") == 1 and before.startswith("Below is a passage") and after.strip()
    assert load_template("qa_pairs").text.endswith("Question:")
    with pytest.raises(TemplateError, match=r"unknown template 'wiki': the templates shipped \(tasks/synthesis/"
                                            r"templates\) are qa_pairs, wikipedia_style"):
        load_template("wiki")
    with pytest.raises(TemplateError, match=f"unknown template 'wikipedia_style': the templates in {templates} "
                                            "are short, twice"):
        load_template("wikipedia_style", templates)
    with pytest.raises(TemplateError, match=r"must hold \{text\} exactly once.*2 time\(s\)"):
        load_template("twice", templates)
    short = load_template("short", templates)
    assert short.text == SHORT and short.fill("a {b}") == "Rewrite: a {b}\nRewritten:"


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    import torch

    scores = torch.log(torch.tensor([[0.1, 0.5, 0.3, 0.1]]))
    kept = torch.isfinite(nucleus(scores, 0.7))
    assert kept.tolist() == [[False, True, True, False]]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert torch.isfinite(nucleus(scores, 0.4)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(nucleus(scores, 1.0)).all()


# ---------------------------------------------------------------- generation


def test_a_documents_output_depends_on_its_seed_not_on_its_batch(exported_run, templates):
    synth = Synthesizer(str(exported_run[1]), settings(exported_run[1], templates))
    docs = [(f"d{i}", text) for i, text in enumerate(book_paragraphs(4))]
    together = synth.generate(docs)
    alone = [synth.generate([doc])[0] for doc in docs]
    reversed_batch = synth.generate(docs[::-1])[::-1]
    assert [g.text for g in together] == [g.text for g in alone] == [g.text for g in reversed_batch]
    assert all(g.tokens == 16 for g in together) and len({g.text for g in together}) == 4
    renamed = synth.generate([(f"other-{i}", text) for i, text in enumerate(book_paragraphs(4))])
    assert [g.text for g in renamed] != [g.text for g in together]  # the id seeds the document
    assert document_seed(0, "short", "d0") != document_seed(1, "short", "d0") != document_seed(0, "qa", "d0")


def test_the_prompt_is_cut_to_fit_and_a_template_too_long_for_the_context_is_refused(exported_run, templates):
    synth = Synthesizer(str(exported_run[1]), settings(exported_run[1], templates, max_input_tokens=16))
    assert synth.prompt.document_tokens == 16  # max_input_tokens is below the 64 - template - 16 room
    ids, cut = synth.prompt.ids(book_paragraphs(1)[0])
    assert cut and len(ids) == len(synth.prompt.before) + 16 + len(synth.prompt.after)
    assert synth.prompt.ids("Yes.") == (synth.prompt.before + synth.model.tokenizer.encode(
        "Yes.", add_special_tokens=False) + synth.prompt.after, False)
    with pytest.raises(ValueError, match=r"template wikipedia_style takes \d+ tokens and max_new_tokens is 16: no room "
                                         r"for the document in the model's context of 64 tokens"):
        Synthesizer(str(exported_run[1]), settings(exported_run[1], templates, template="wikipedia_style",
                                                   templates_dir=None))


def test_a_shard_gives_one_row_per_document_and_counts_empty_generations(exported_run, templates, documents,
                                                                           tmp_path):
    """Greedy decoding of the tiny model gives only whitespace: empty texts, written all the same."""
    synth = Synthesizer(str(exported_run[1]), settings(exported_run[1], templates, temperature=0))
    shard = documents / "shard-0000.parquet"
    report = synthesize_held(synth, shard, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema == SYNTHETIC_SCHEMA
    out = table.to_pylist()
    assert report["documents_in"] == report["documents"] == 3 and report["empty_generation"] == 3
    assert [row["parent_id"] for row in out] == ["doc-0-0", "doc-0-1", "doc-0-2"]
    assert [row["id"] for row in out] == [synthetic_id(f"doc-0-{i}", "short", 0) for i in range(3)]
    assert {(row["source"], row["template"], row["text"], row["lang"]) for row in out} == {
        ("synthetic", "short", "", "en")}
    assert [row["url"] for row in out] == [f"https://example.com/0/{i}" for i in range(3)]


# ---------------------------------------------------------------- the flow


def test_the_flow_is_reproducible_per_seed_and_a_rerun_recomputes_only_a_missing_shard(
        services, exported_run, templates, documents, tmp_path):
    from flows.synthesize import synthesize_flow

    ray = RayConfig(num_cpus=2)
    first = synthesize_flow(config=settings(exported_run[1], templates), input_dir=str(documents),
                            output_dir=str(tmp_path / "a"), ray_config=ray)
    written = rows(tmp_path / "a")
    assert first["documents_in"] == first["documents"] == len(written) == 6 and first["cache_hits"] == 0
    assert [row["parent_id"] for row in written] == [f"doc-{s}-{i}" for s in range(2) for i in range(3)]
    assert {row["template"] for row in written} == {"short"} and len({row["id"] for row in written}) == 6
    assert [load["models"] for load in first["model_loads"]] == [1, 1]  # once per actor, not per shard
    info = json.loads((tmp_path / "a" / "info.json").read_text())
    assert info["config"]["seed"] == 0 and info["config"]["max_new_tokens"] == 16 and info["template"] == "short"
    assert info["template_sha256"] == load_template("short", templates).sha256
    assert json.loads((tmp_path / "a" / "report.json").read_text())["documents"] == 6

    again = synthesize_flow(config=settings(exported_run[1], templates), input_dir=str(documents),
                            output_dir=str(tmp_path / "b"), ray_config=ray)
    assert again["cache_hits"] == 0 and rows(tmp_path / "b") == written
    reseeded = synthesize_flow(config=settings(exported_run[0], templates, seed=1), input_dir=str(documents),
                               output_dir=str(tmp_path / "c"), ray_config=ray)  # the run folder: its export
    other = rows(tmp_path / "c")
    assert [row["parent_id"] for row in other] == [row["parent_id"] for row in written]
    assert all(a["text"] != b["text"] and a["id"] != b["id"] for a, b in zip(other, written))
    assert (exported_run[0] / "eval-export" / "step8" / "model.safetensors").is_file()

    (tmp_path / "a" / "shard-0001.parquet").unlink()  # as if the run had been killed before writing it
    resumed = synthesize_flow(config=settings(exported_run[1], templates), input_dir=str(documents),
                              output_dir=str(tmp_path / "a"), ray_config=ray)
    assert resumed["cache_hits"] == 1 and resumed["documents"] == 6
    assert rows(tmp_path / "a") == written  # the same documents, none twice
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == [
        "info.json", "report.json", "shard-0000.parquet", "shard-0001.parquet"]


# ---------------------------------------------------------------- the command


def run_synthesize(*args: str):
    import cli.synthesize  # noqa: F401  (registers the command until cli/main.py imports it)
    from cli.main import app

    result = CliRunner().invoke(app, ["synthesize", *args])
    return result, " ".join(result.output.split())


def test_the_command_refuses_a_bad_model_template_or_input_before_starting(exported_run, templates, documents,
                                                                         tmp_path):
    out = str(tmp_path / "out")
    hf = str(exported_run[1])
    result, said = run_synthesize("--model", str(tmp_path / "nope"), "--input", str(documents), "--output", out)
    assert result.exit_code == 2 and f"model {tmp_path / 'nope'} does not exist" in said, said
    result, said = run_synthesize("--model", hf, "--input", str(documents), "--output", out, "--template", "wiki")
    assert result.exit_code == 2, said
    assert "unknown template 'wiki': the templates shipped (tasks/synthesis/templates) are qa_pairs, " \
           "wikipedia_style" in said
    (tmp_path / "empty").mkdir()
    result, said = run_synthesize("--model", hf, "--input", str(tmp_path / "empty"), "--output", out,
                                  "--template", "short", "--templates-dir", str(templates))
    assert result.exit_code == 2 and f"no Parquet shards (*.parquet) in {tmp_path / 'empty'}" in said, said
    result, said = run_synthesize("--model", hf, "--input", str(documents), "--output", out, "--temperature", "-1")
    assert result.exit_code == 2 and "synthesize.temperature" in said, said
    assert not Path(out).exists()


def test_the_command_writes_the_synthetic_shards(services, exported_run, templates, documents, tmp_path):
    out = tmp_path / "out"
    result, said = run_synthesize("--model", str(exported_run[1]), "--input", str(documents), "--output", str(out),
                                  "--template", "short", "--templates-dir", str(templates), "--max-new-tokens", "8",
                                  "--max-documents", "2", "--seed", "3", "--num-cpus", "2")
    assert result.exit_code == 0, said
    assert "wrote 4 synthetic documents from 4" in said
    written = rows(out)
    assert [row["parent_id"] for row in written] == ["doc-0-0", "doc-0-1", "doc-1-0", "doc-1-1"]
    assert all(row["id"] == synthetic_id(row["parent_id"], "short", 3) for row in written)
