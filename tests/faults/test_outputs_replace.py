"""Output folders that already hold something: a command replaces or removes only what it wrote.

- export-hf, quality train-perplexity and train-classifier write a folder as a whole: they
  replace an earlier output of the same command (its marker: info.json / model.json), an
  empty folder, or another with --force; never a folder that holds their input.
- The shard stages (ingest, filter, dedup, quality score, tokenize) keep in their folder exactly the shards
  of the last run: an earlier run's other shards are removed and reported, a foreign one
  stops the run and is kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import shared_data
from tiny_run import tiny_run
from train_fixtures import build_token_shards
from typer.testing import CliRunner

from cli.main import app
from pretrain.config import DedupConfig, FilterConfig, IngestConfig, QualityConfig, TokenizeConfig
from pretrain.outputs import OutputRefused
from tasks.demo import write_demo_data

pytestmark = pytest.mark.faults
BOOK = ("reference", "en", "Pride_and_Prejudice_JaneAusten.txt.gz")


def files_of(folder: Path) -> dict[str, int]:
    """Every file under ``folder``: relative path -> size."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def said(result, *parts: str) -> bool:
    """Each part appears in the CLI's output (whitespace ignored: rich wraps long lines)."""
    flat = "".join(result.output.split())
    return all("".join(part.split()) in flat for part in parts)


def cli(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def a_folder_of_mine(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


# ---------------------------------------------------------------- folders replaced as a whole


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-run")
    shards = build_token_shards([shared_data(*BOOK)], root / "shards", vocab_size=512)
    return tiny_run(shards, root / "run", steps=4)[0]


def test_export_hf_replaces_only_an_earlier_export_and_never_the_run(run_dir, tmp_path, ledger):
    run_before = files_of(run_dir)
    mine = a_folder_of_mine(tmp_path / "mine")
    refused = cli("export-hf", "--run", run_dir, "--output", mine)
    assert refused.exit_code == 2, refused.output
    assert said(refused, "error:", str(mine), "not an earlier export-hf output", "--force")
    assert "Traceback" not in refused.output
    assert files_of(mine) == {"notes.txt": 9, "sub/data.csv": 8}

    for target in (run_dir, run_dir / "checkpoints", run_dir.parent):  # the run, its checkpoints, the run's parent
        for extra in ([], ["--force"]):
            result = cli("export-hf", "--run", run_dir, "--output", target, *extra)
            assert result.exit_code == 2 and said(result, "holds this command's input", "even with --force"), \
                (target, extra, result.output)
    assert files_of(run_dir) == run_before

    fresh = tmp_path / "hf"
    for attempt in range(2):  # a new folder, then the earlier export replaced
        result = cli("export-hf", "--run", run_dir, "--output", fresh)
        assert result.exit_code == 0, result.output
    assert json.loads((fresh / "info.json").read_text())["stage"] == "export-hf"
    forced = cli("export-hf", "--run", run_dir, "--output", mine, "--force")
    assert forced.exit_code == 0, forced.output
    assert sorted(files_of(mine)) == sorted(files_of(fresh))
    assert files_of(run_dir) == run_before
    ledger("export-hf --output: a folder of other files; the run folder, its checkpoints, its parent (with and "
           "without --force)", "exit 2 naming the folder and --force (the input: refused even with --force); "
           "nothing deleted; an earlier export is replaced, --force replaces another folder",
           refused=1 + 6, replaced=2)


@pytest.fixture
def reference(tmp_path) -> Path:
    folder = tmp_path / "reference"
    folder.mkdir()
    shutil.copy(shared_data(*BOOK), folder / "book.txt.gz")
    return folder


def test_train_perplexity_refuses_a_folder_it_did_not_write_and_its_reference(services, reference, tmp_path, ledger):
    mine = a_folder_of_mine(tmp_path / "mine")
    refused = cli("quality", "train-perplexity", "--reference", reference, "--output", mine, "--vocab-size", 200,
                  "--order", 2)
    assert refused.exit_code == 2, refused.output
    assert said(refused, "error:", str(mine), "not an earlier train-perplexity", "--force"), refused.output
    assert files_of(mine) == {"notes.txt": 9, "sub/data.csv": 8}
    for target in (reference, tmp_path):
        result = cli("quality", "train-perplexity", "--reference", reference / "book.txt.gz", "--output", target,
                     "--force")
        assert result.exit_code == 2 and said(result, "holds this command's input"), result.output
    assert sorted(files_of(reference)) == ["book.txt.gz"]
    forced = cli("quality", "train-perplexity", "--reference", reference, "--output", mine, "--vocab-size", 200,
                 "--order", 2, "--force")
    assert forced.exit_code == 0, forced.output
    assert sorted(files_of(mine)) == ["lm.binary", "model.json", "sp.model"]
    again = cli("quality", "train-perplexity", "--reference", reference, "--output", mine, "--vocab-size", 300,
                "--order", 2)
    assert again.exit_code == 0, again.output  # an earlier model is replaced without --force
    assert json.loads((mine / "model.json").read_text())["requested_vocab_size"] == 300
    ledger("quality train-perplexity --output: a folder of other files; the reference folder or its parent",
           "exit 2 naming the folder and --force (the reference: refused even with --force); nothing deleted",
           refused=3, replaced=2)


def test_train_classifier_refuses_a_folder_it_did_not_write_and_its_inputs(services, reference, tmp_path, ledger):
    web = tmp_path / "web"
    web.mkdir()
    (web / "pages.jsonl").write_text("".join(json.dumps({"text": f"Buy now {i}! Click here, best deals."}) + "\n"
                                             for i in range(40)))
    mine = a_folder_of_mine(tmp_path / "mine")
    refused = cli("quality", "train-classifier", "--positive", reference, "--negative", web, "--output", mine)
    assert refused.exit_code == 2, refused.output
    assert said(refused, "error:", str(mine), "not an earlier train-classifier", "--force"), refused.output
    assert files_of(mine) == {"notes.txt": 9, "sub/data.csv": 8}
    for target in (web, reference):
        result = cli("quality", "train-classifier", "--positive", reference, "--negative", web, "--output", target,
                     "--force")
        assert result.exit_code == 2 and said(result, "holds this command's input"), result.output
    assert sorted(files_of(web)) == ["pages.jsonl"] and sorted(files_of(reference)) == ["book.txt.gz"]
    forced = cli("quality", "train-classifier", "--positive", reference, "--negative", web, "--output", mine,
                 "--force", "--max-documents", 200)
    assert forced.exit_code == 0, forced.output
    assert sorted(files_of(mine)) == ["model.joblib", "model.json"]
    ledger("quality train-classifier --output: a folder of other files; the positive or negative folder",
           "exit 2 naming the folder and --force (an input: refused even with --force); nothing deleted",
           refused=3, replaced=1)


# ---------------------------------------------------------------- shard stages


@pytest.fixture(scope="module")
def warcs(tmp_path_factory) -> tuple[Path, Path]:
    """Two input folders: demo files 0 and 1, and demo file 2."""
    root = tmp_path_factory.mktemp("warcs")
    paths = write_demo_data(root / "all", n_files=3, articles_per_file=12)
    first, second = root / "first", root / "second"
    for folder, chosen in ((first, paths[:2]), (second, paths[2:])):
        folder.mkdir()
        for path in chosen:
            shutil.copy(path, folder / path.name)
    return first, second


def shards_in(folder: Path, pattern: str = "*.parquet") -> list[str]:
    return sorted(p.name for p in folder.glob(pattern))


def test_ingest_twice_into_one_folder_keeps_only_the_second_runs_shards(services, warcs, tmp_path, ledger):
    first, second = warcs
    out = tmp_path / "ingest"
    assert cli("ingest", "--input", first, "--output", out).exit_code == 0
    assert shards_in(out) == ["demo-00000.parquet", "demo-00001.parquet"]
    result = cli("ingest", "--input", second, "--output", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert shards_in(out) == ["demo-00002.parquet"] == [Path(s["shard"]).name for s in report["shards"]]
    assert report["stale_removed"] == ["demo-00000.parquet", "demo-00001.parquet"]

    shutil.copy(out / "demo-00002.parquet", out / "mine.parquet")  # a shard no ingest run wrote
    foreign = cli("ingest", "--input", first, "--output", out)
    assert foreign.exit_code == 2 and said(foreign, "error:", str(out), "mine.parquet", "no earlier ingest run"), \
        foreign.output
    assert shards_in(out) == ["demo-00002.parquet", "mine.parquet"]  # nothing removed, nothing written
    ledger("ingest --output D twice with different inputs; then a foreign *.parquet in D",
           "D holds only the second run's shards (the first run's listed as stale_removed); a foreign shard: "
           "exit 2 naming it, nothing removed", stale_removed=2, foreign_kept=1)


@pytest.fixture(scope="module")
def ingested(prefect_server, ray_session, warcs, tmp_path_factory) -> tuple[Path, Path]:
    from flows.ingest import ingest_flow

    root = tmp_path_factory.mktemp("ingested")
    for name, folder in zip(("first", "second"), warcs):
        ingest_flow(config=IngestConfig(inputs=[str(folder)]), output_dir=str(root / name))
    return root / "first", root / "second"


@pytest.fixture(scope="module")
def classifier(prefect_server, tmp_path_factory) -> Path:
    from flows.quality import train_classifier_flow

    root = tmp_path_factory.mktemp("classifier")
    (root / "web.jsonl").write_text("".join(json.dumps({"text": f"Buy now {i}! Click here, best deals."}) + "\n"
                                            for i in range(40)))
    train_classifier_flow(positive=[str(shared_data(*BOOK))], negative=[str(root / "web.jsonl")],
                          output_dir=str(root / "model"), max_documents=200)
    return root / "model"


def test_filter_dedup_quality_and_tokenize_reruns_on_other_input_leave_only_their_shards(services, ingested, classifier,
                                                                                         tmp_path, ledger):
    from flows.dedup import dedup_flow
    from flows.filter import filter_flow
    from flows.quality import score_flow
    from flows.tokenize import tokenize_flow

    first, second = ingested
    scoring = QualityConfig(classifier_model=str(classifier), keep_fraction=0.5)
    stages = {
        "filter": lambda source, out: filter_flow(config=FilterConfig(), input_dir=str(source), output_dir=str(out)),
        "dedup": lambda source, out: dedup_flow(config=DedupConfig(hash_partitions=1), input_dir=str(source),
                                                output_dir=str(out)),
        "quality": lambda source, out: score_flow(config=scoring, input_dir=str(source), output_dir=str(out)),
        "tokenize": lambda source, out: tokenize_flow(config=TokenizeConfig(vocab_size=300), input_dirs=[str(source)],
                                                      output_dir=str(out)),
    }
    patterns = {"filter": ("*.parquet", "removed/*/*.parquet"), "dedup": ("*.parquet", "dedup/clusters/*.parquet"),
                "quality": ("scored/*.parquet", "kept/*.parquet", ".scores/*.parquet"),
                "tokenize": ("train/*.bin", "val/*.bin")}
    removed = 0
    for stage, run in stages.items():
        out = tmp_path / stage
        run(first, out)
        summary = run(second, out)
        names = {Path(p).stem for pattern in patterns[stage] for p in out.glob(pattern)}
        assert names == {"demo-00002"}, (stage, names)
        assert summary["stale_removed"] and all("demo-0000" in p for p in summary["stale_removed"]), summary
        assert json.loads((out / "report.json").read_text())["stale_removed"] == summary["stale_removed"]
        removed += len(summary["stale_removed"])

    foreign = tmp_path / "tokenize" / "train" / "mine.bin"
    foreign.write_bytes(b"\0\0")
    with pytest.raises(OutputRefused, match=r"tokenize: output folder .* holds 1 file\(s\) .*train/mine.bin"):
        stages["tokenize"](second, tmp_path / "tokenize")
    assert foreign.read_bytes() == b"\0\0"  # a file tokenize did not write is never deleted
    ledger("filter, dedup, quality score, tokenize rerun into their folder on other input; a foreign .bin in "
           "the token folder",
           "each folder holds only the new run's shards (stale ones removed and reported); the foreign file "
           "stops tokenize (OutputRefused) and is kept", stages=len(stages), stale_removed=removed, foreign_kept=1)
