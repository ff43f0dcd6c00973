"""The shared parts of the parallel-layout tests (tests/test_parallel_*.py).

One one-process run (``one_process_run``, session-wide) is the reference every layout is
compared with: the tiny model (4 layers, 4 heads, d 128) on token shards of real books, 8
steps at seq_len 2048, micro batch 2 x 2 accumulation steps (a pipeline of 2 stages needs
2 micro batches per step), fp32 so that the comparisons are exact up to the order of sums,
ZeRO-1 (the highest stage the pipeline engine runs; in fp32 every ZeRO stage gives the
same losses). A layout run changes only ``num_procs`` and ``parallel`` (and may change
``zero_stage``): the same data, the same global batch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_data
from pretrain.config import TrainConfig
from tasks.train.checkpoint import checkpoint_root, consolidate_fp32
from tasks.train.launch import run_training
from train_fixtures import build_token_shards

BOOKS = ("Pride_and_Prejudice_JaneAusten", "Great_Expectations_CharlesDickens", "Anne-of-Green-Gables")
STEPS, SEQ_LEN = 8, 2048
LOSS_RTOL = 1e-4  # the bound for a layout against one process, per step
LOGITS_ATOL = 1e-3  # exported models' logits against the one-process export


@pytest.fixture(scope="session")
def parallel_shards(tmp_path_factory) -> Path:
    books = [shared_data("reference", "en", f"{name}.txt.gz") for name in BOOKS]
    return build_token_shards(books, tmp_path_factory.mktemp("parallel") / "shards", vocab_size=1024)


def layout_config(shards: Path, output_dir: Path, **overrides) -> TrainConfig:
    fields = dict(data_dir=str(shards), output_dir=str(output_dir), model_size="tiny", seq_len=SEQ_LEN,
                  micro_batch_size=2, grad_accum_steps=2, num_procs=1, max_steps=STEPS, lr=3e-3, warmup_steps=2,
                  precision="fp32", zero_stage=1, checkpoint_every_steps=4, keep_checkpoints=3,
                  eval_every_steps=STEPS, eval_batches=1, eval_items=0)
    return TrainConfig(**{**fields, **overrides})


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.fixture(scope="session")
def one_process_run(parallel_shards, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("one-process")
    summary = run_training(layout_config(parallel_shards, run_dir), log_callback=lambda line: None)
    assert summary["completed"] and summary["parallel"] == {"tensor": 1, "sequence": 1, "pipeline": 1, "data": 1}
    return run_dir, summary


def assert_losses_match(run_dir: Path, reference_dir: Path, rtol: float = LOSS_RTOL) -> dict[int, float]:
    """Every step's loss within rtol of the reference's; returns the relative differences."""
    mine, ref = train_losses(run_dir), train_losses(reference_dir)
    assert sorted(mine) == sorted(ref) == list(range(1, STEPS + 1))
    diffs = {step: abs(mine[step] - ref[step]) / abs(ref[step]) for step in ref}
    assert max(diffs.values()) <= rtol, {step: (mine[step], ref[step]) for step in ref}
    assert ref[STEPS] < ref[1] - 0.5, ref  # it trained: the comparison is of a moving model
    return diffs


def assert_resumes_exactly(run_dir: Path, config: TrainConfig, dest: Path, at_step: int = 4) -> dict:
    """Copy ``run_dir`` as it was after ``at_step`` (later checkpoints dropped) to ``dest``, ``--resume`` it to
    the end, and check every resumed step's loss equals the uninterrupted run's exactly (the same ops in the
    same order after the reload); returns the resumed run's summary."""
    shutil.copytree(run_dir, dest)
    for folder in checkpoint_root(dest).glob("step*"):
        if int(folder.name.removeprefix("step")) > at_step:
            shutil.rmtree(folder)
    (dest / "summary.json").unlink()
    summary = run_training(config.model_copy(update={"output_dir": str(dest)}), resume=True,
                           log_callback=lambda line: None)
    assert summary["completed"]
    resumed, uninterrupted = train_losses(dest), train_losses(run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    later = range(at_step + 1, STEPS + 1)
    assert {s: resumed[s] for s in later} == {s: uninterrupted[s] for s in later}
    return summary


def assert_export_matches(run_dir: Path, reference_dir: Path, shards: Path) -> float:
    """The run's consolidated checkpoint has the reference's names and shapes, and its HF export's logits
    are within LOGITS_ATOL of the reference export's; returns the largest difference."""
    mine, ref = consolidate_fp32(checkpoint_root(run_dir)), consolidate_fp32(checkpoint_root(reference_dir))
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    diff = (export_logits(run_dir, shards) - export_logits(reference_dir, shards)).abs().max().item()
    print(f"max abs logits difference against the one-process export: {diff:.2e}")
    assert diff <= LOGITS_ATOL
    return diff


def export_logits(run_dir: Path, shards: Path, tokens: int = 256) -> torch.Tensor:
    """Logits of the run's HF export (consolidated from its newest checkpoint, loaded with transformers)
    on the first ``tokens`` tokens of the val split."""
    from transformers import LlamaForCausalLM

    from models.export_hf import export_hf
    from pretrain.config import ModelConfig
    from tasks.train.data import TokenWindows

    summary = json.loads((run_dir / "summary.json").read_text())
    out = export_hf(consolidate_fp32(checkpoint_root(run_dir)), ModelConfig.model_validate(summary["model"]),
                    run_dir / "hf-test", force=True)
    model = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    ids = TokenWindows(shards, "val", tokens, seed=0, shuffle=False).sample(0)[:tokens].astype(np.int64)
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0]
