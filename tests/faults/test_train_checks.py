"""Training input that cannot work, and a damaged checkpoint (issue 12, items 9, 10 and the
validation half of 13).

Bad data or model settings are found by ``pretrain train`` before any launcher starts: exit 2
with the cause, no run folder written. A rank that fails on such an error anyway is not
retried. A checkpoint whose files no longer match the sizes recorded at save time is skipped
by ``--resume`` (with a line naming it) and refused by ``export-hf --tag`` (naming the file),
and a failed start leaves summary.json and metrics.jsonl as they were.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import shared_data
from train_fixtures import build_token_shards
from typer.testing import CliRunner

from cli.main import app
from pretrain.config import TrainConfig
from tasks.train.checkpoint import COMPLETE_MARKER, list_checkpoints
from tasks.train.launch import run_training

pytestmark = [pytest.mark.faults, pytest.mark.integration]

STEPS, CHECKPOINT_EVERY = 6, 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    book = shared_data("reference", "en", "Pride_and_Prejudice_JaneAusten.txt.gz")
    return build_token_shards([book], tmp_path_factory.mktemp("checks") / "shards", vocab_size=512)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    """One short document: a handful of tokens; the default val_fraction holds out none of it."""
    root = tmp_path_factory.mktemp("tiny")
    text = root / "tiny.txt.gz"
    text.write_bytes(gzip.compress(b"Truth, known"))
    return build_token_shards([text], root / "shards", vocab_size=256, val_fraction=0.01)


def invoke(*args: str):
    """The CLI's result, its output with rich's line wrapping undone."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "1000"})
    result.flat = " ".join(result.output.split())
    return result


def train_cli(*args: str):
    return invoke("train", *args)


def launches(run_dir: Path) -> int:
    log = run_dir / "train.log"
    return sum(line.startswith("launch (") for line in log.read_text().splitlines()) if log.is_file() else 0


BAD_RUNS = {
    "empty_token_folder": ([], "no index.json in"),
    "13_token_data_set": ([], "not one window of seq_len 256 + 1"),
    "seq_len_100000000": (["--set", "train.seq_len=100000000"], "seq_len 100,000,000 is over 131,072"),
    "model_size_huge": (["--model", "huge"], "unknown model size 'huge'"),
    "model_vocab_size_10": (["--set", "train.model.vocab_size=10"],
                            "model.vocab_size 10 is smaller than the data's vocabulary"),
    "tensor_3_with_4_heads": (["--num-procs", "3", "--set", "train.parallel.tensor=3"],
                              "parallel.tensor 3 does not divide the attention heads (model.n_heads) 4"),
    "pipeline_8_with_4_layers": (["--num-procs", "8", "--set", "train.parallel.pipeline=8", "--set",
                                  "train.zero_stage=1", "--set", "train.grad_accum_steps=8"],
                                 "parallel.pipeline 8 is more stages than the model's layers (model.n_layers 4)"),
    "seq_len_255_with_sequence_2": (["--num-procs", "2", "--set", "train.parallel.sequence=2", "--set",
                                     "train.seq_len=255"], "parallel.sequence 2 does not divide seq_len 255"),
    "num_procs_3_with_tensor_2": (["--num-procs", "3", "--set", "train.parallel.tensor=2"],
                                  "world size 3 is not a multiple of parallel.tensor 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_training_input_exits_2_before_launching(case, prefect_server, shards, tiny_shards, tmp_path, ledger):
    data = {"empty_token_folder": tmp_path / "empty", "13_token_data_set": tiny_shards}.get(case, shards)
    (tmp_path / "empty").mkdir()
    run_dir = tmp_path / "run"
    extra, cause = BAD_RUNS[case]
    result = train_cli("--data", str(data), "--output", str(run_dir), "--max-steps", "2", *extra)
    assert result.exit_code == 2, result.output[-3000:]
    assert "error:" in result.flat and cause in result.flat, result.output[-3000:]
    assert "ChildFailedError" not in result.flat and "Traceback" not in result.flat
    assert not run_dir.exists()  # nothing launched, nothing written: no train.log, metrics or checkpoints
    if case == "13_token_data_set":
        tokens = json.loads((tiny_shards / "index.json").read_text())["tokens"]["train"]
        assert f"has {tokens} tokens" in result.flat
    ledger("`pretrain train` on an empty token folder, 13 tokens, seq_len=100000000, model_size=huge, "
           "model.vocab_size=10; layouts: tensor=3 with 4 heads, pipeline=8 over 4 layers, sequence=2 with seq_len 255, "
           "tensor=2 on 3 processes", "rc 2 before launch, the cause named; no launcher, no retries",
           runs=1, launches=launches(run_dir))


def test_no_validation_tokens_is_a_warning_that_says_why(prefect_server, shards, tiny_shards, tmp_path, ledger):
    from flows.tokenize import empty_validation
    from pretrain.config import TokenizeConfig

    index = json.loads((tiny_shards / "index.json").read_text())
    assert index["tokens"]["val"] == 0  # the default val_fraction held out none of the one document
    said = empty_validation(index, TokenizeConfig(val_fraction=0.01))
    assert said is not None and "held out none of the 1 documents" in said and "no validation loss" in said
    assert empty_validation(json.loads((shards / "index.json").read_text()), TokenizeConfig()) is None

    result = train_cli("--data", str(tiny_shards), "--output", str(tmp_path / "run"), "--max-steps", "1",
                       "--num-procs", "1", "--set", "train.seq_len=8", "--set", "train.zero_stage=0",
                       "--set", "train.precision=fp32")
    assert result.exit_code == 0, result.output[-3000:]
    assert "warning:" in result.flat and "no validation loss will be computed" in result.flat
    assert "validation loss None" not in result.flat
    assert "no validation loss (the val split has 0 tokens, not one window of seq_len 8 + 1)" in result.flat
    ledger("training data with 0 validation tokens (the default val_fraction held out no document)",
           "tokenize and train warn: no validation loss, and why; the result line says so instead of 'None'",
           warnings=2)


def run_config(shards: Path, run_dir: Path, **overrides) -> TrainConfig:
    fields = dict(data_dir=str(shards), output_dir=str(run_dir), model_size="tiny", seq_len=64, micro_batch_size=2,
                  num_procs=2, max_steps=STEPS, lr=3e-3, warmup_steps=1, precision="fp32", zero_stage=3,
                  checkpoint_every_steps=CHECKPOINT_EVERY, keep_checkpoints=3, eval_every_steps=STEPS,
                  eval_batches=1)
    return TrainConfig(**{**fields, **overrides})


def recipe_for(cfg: TrainConfig, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"train": cfg.model_dump(mode="json", exclude_none=True)}))
    return path


def truncate_a_file(folder: Path) -> Path:
    victim = sorted(folder.glob("*model_states.pt"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


def test_damaged_newest_checkpoint_is_skipped_and_records_survive(prefect_server, shards, tmp_path, ledger):
    run_dir = tmp_path / "run"
    cfg = run_config(shards, run_dir)
    first = run_training(cfg, log_callback=[].append)
    assert first["completed"] and [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [2, 4, 6]
    records = {name: (run_dir / name).read_bytes() for name in ("summary.json", "metrics.jsonl")}
    victim = truncate_a_file(run_dir / "checkpoints" / "step6")

    bad_tag = invoke("export-hf", "--run", str(run_dir), "--tag", "step6",
                                       "--output", str(tmp_path / "hf6"))
    assert bad_tag.exit_code == 2, bad_tag.output[-3000:]
    assert "checkpoint step6 is damaged" in bad_tag.flat and victim.name in bad_tag.flat
    assert "intact checkpoints: step2, step4" in bad_tag.flat and "Traceback" not in bad_tag.flat
    default = invoke("export-hf", "--run", str(run_dir), "--output", str(tmp_path / "hf"))
    assert default.exit_code == 0, default.output[-3000:]
    assert "skipping damaged checkpoint step6" in default.flat
    assert (tmp_path / "hf" / "model.safetensors").is_file()

    # a start that fails in the ranks on a deterministic error (the data order changed): one launch, rc 2
    reseeded = recipe_for(cfg.model_copy(update={"seed": 1}), tmp_path / "reseeded.yaml")
    before = launches(run_dir)
    failed = train_cli("--config", str(reseeded), "--resume")
    assert failed.exit_code == 2, failed.output[-3000:]
    assert "cannot resume the data stream exactly" in failed.flat and "seed: saved 0, now 1" in failed.flat
    assert launches(run_dir) - before == 1  # not retried
    assert {name: (run_dir / name).read_bytes() for name in records} == records  # the run's records kept
    assert "skipping damaged checkpoint step6" in (run_dir / "train.log").read_text()

    before = launches(run_dir)
    resumed = train_cli("--config", str(recipe_for(cfg, tmp_path / "recipe.yaml")), "--resume")
    assert resumed.exit_code == 0, resumed.output[-3000:]
    log = (run_dir / "train.log").read_text()
    assert f"skipping damaged checkpoint step6: {victim} is" in log and "the manifest says" in log
    assert f"resumed from {run_dir / 'checkpoints' / 'step4'} at step 4" in log
    assert launches(run_dir) - before == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == STEPS
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))
    manifest = json.loads((run_dir / "checkpoints" / "step6" / COMPLETE_MARKER).read_text())
    assert manifest["files"][victim.name] == victim.stat().st_size  # step6 saved again, whole
    again = invoke("export-hf", "--run", str(run_dir), "--tag", "step6",
                                     "--output", str(tmp_path / "hf6"))
    assert again.exit_code == 0, again.output[-3000:]
    ledger("a file of the newest checkpoint truncated, then `export-hf --tag` it, `--resume`",
           "export-hf rc 2 naming the file; resume skips it (says so) for the newest intact one; "
           "a failed start keeps summary.json and metrics.jsonl and is not retried",
           checkpoints_skipped=1, resumed_at_step=4, launches_of_failed_start=1)
