"""Ulysses sequence parallelism on two CPU ranks (gloo), with ZeRO-3: each rank takes half of every
2048-token sequence; the losses, the resume and the export equal the one-process run's, and each rank's
activations (measured: bytes saved for backward in one micro batch) are about half of one process's."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from parallel_fixtures import (LOSS_RTOL, SEQ_LEN, STEPS, assert_export_matches, assert_losses_match, assert_resumes_exactly, layout_config)
from pretrain.config import ModelConfig, ParallelConfig
from tasks.train.checkpoint import checkpoint_root
from tasks.train.launch import run_training

SEQUENCE, WORLD = 2, 2


def _config(shards, out):
    return layout_config(shards, out, num_procs=WORLD, parallel=ParallelConfig(sequence=SEQUENCE), zero_stage=3)


@pytest.fixture(scope="module")
def sequence_run(parallel_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sequence2")
    lines: list[str] = []
    summary = run_training(_config(parallel_shards, run_dir), log_callback=lines.append)
    assert summary["completed"], lines[-20:]
    return run_dir, summary, lines


def test_sequence2_matches_one_process(sequence_run, one_process_run):
    run_dir, summary, lines = sequence_run
    ref_dir, ref_summary = one_process_run
    diffs = assert_losses_match(run_dir, ref_dir)
    print(f"max relative loss difference over {STEPS} steps: {max(diffs.values()):.2e}")
    # AdamW hardly sees the scale of the gradient: the gradient norm is what shows DeepSpeed's averaging over
    # d x s ranks gives the full-sequence mean's gradient (a factor s off would show here)
    norms, ref_norms = _grad_norms(run_dir), _grad_norms(ref_dir)
    assert max(abs(norms[s] - ref_norms[s]) / ref_norms[s] for s in ref_norms) <= LOSS_RTOL, (norms, ref_norms)
    assert abs(summary["val_loss"] - ref_summary["val_loss"]) <= LOSS_RTOL * ref_summary["val_loss"]
    assert summary["parallel"] == {"tensor": 1, "sequence": SEQUENCE, "pipeline": 1, "data": 1}
    # the parameters are replicated; ZeRO-3 partitions each over all d x s = 2 ranks (ceil of numel / 2 each)
    model = ModelConfig.model_validate(summary["model"])
    shapes = _parameter_shapes(model)
    total = sum(math.prod(shape) for shape in shapes)
    partition = sum(math.ceil(math.prod(shape) / WORLD) for shape in shapes)
    assert summary["param_partition"]["total"] == ref_summary["param_partition"]["total"] == total
    assert summary["param_partition"]["local_per_rank"] == [partition] * WORLD
    assert "rank 0: data 0/1, tensor 0/1, sequence 0/2, pipeline 0/1, tokens 0-1023 of 2048" in "\n".join(lines)
    assert "rank 1: data 0/1, tensor 0/1, sequence 1/2, pipeline 0/1, tokens 1024-2047 of 2048" in "\n".join(lines)


def _grad_norms(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["grad_norm"] for r in records if r["kind"] == "train"}


def _parameter_shapes(model: ModelConfig) -> list[tuple[int, ...]]:
    """Every parameter's shape, from the model config alone (a tied lm_head once)."""
    c, v, hd = model.d_model, model.vocab_size, model.d_model // model.n_heads
    kv = (model.n_kv_heads or model.n_heads) * hd
    from models.transformer import ffn_hidden

    f = ffn_hidden(model)
    layer = [(c,), (c, c), (kv, c), (kv, c), (c, c), (c,), (f, c), (f, c), (c, f)]
    return [(v, c)] + layer * model.n_layers + [(c,)] + ([] if model.tie_embeddings else [(v, c)])


def test_sequence2_holds_half_the_sequence(sequence_run):
    """Measured in the first training micro batch of each rank, and here for one process: the tokens
    entering layer 0 and the bytes saved for backward (parameters excluded). Under Ulysses attention holds
    the full sequence for half of the heads, so the ratio is still about one half."""
    from models.transformer import Transformer
    from tasks.train.parallel.sequence import measure_activations

    run_dir, summary, _ = sequence_run
    measured = summary["activations"]
    assert measured["sequence_tokens"] == SEQ_LEN
    assert measured["tokens_per_rank"] == [SEQ_LEN // SEQUENCE] * WORLD
    model_cfg = ModelConfig.model_validate(summary["model"])
    torch.manual_seed(0)
    model = Transformer(model_cfg)
    x = torch.randint(0, model_cfg.vocab_size, (measured["micro_batch_size"], SEQ_LEN))
    _, one = measure_activations(model, lambda: model(x, x)[1])
    assert one["tokens"] == SEQ_LEN
    ratios = [saved / one["saved_bytes"] for saved in measured["saved_bytes_per_rank"]]
    print(f"saved bytes per rank {measured['saved_bytes_per_rank']}, one process {one['saved_bytes']}, "
          f"ratios {[round(r, 4) for r in ratios]}")
    assert all(0.45 <= ratio <= 0.55 for ratio in ratios), ratios


def test_sequence2_resumes_exactly(sequence_run, parallel_shards, tmp_path):
    run_dir, _, _ = sequence_run
    assert_resumes_exactly(run_dir, _config(parallel_shards, run_dir), tmp_path / "resumed")


def test_sequence2_export_matches_one_process(sequence_run, one_process_run, parallel_shards):
    run_dir, _, _ = sequence_run
    ref_dir, _ = one_process_run
    manifest = json.loads(next(checkpoint_root(run_dir).glob("step*/client.json")).read_text())
    assert manifest["parallel"]["sequence"] == SEQUENCE
    assert_export_matches(run_dir, ref_dir, parallel_shards)


def test_position_offset_starts_the_rope_tables_later():
    """A slice starting at position p gets rows p.. of the full sequence's RoPE tables; past max_seq_len is refused."""
    from models.sizes import model_config
    from models.transformer import Transformer, rope_cos_sin

    cos, sin = rope_cos_sin(SEQ_LEN, 32, 10000.0, torch.device("cpu"))
    half_cos, half_sin = rope_cos_sin(SEQ_LEN // 2, 32, 10000.0, torch.device("cpu"), start=SEQ_LEN // 2)
    assert torch.equal(half_cos, cos[SEQ_LEN // 2:]) and torch.equal(half_sin, sin[SEQ_LEN // 2:])
    model = Transformer(model_config("tiny", 64, max_seq_len=16))
    model.position_offset = 8
    assert model(torch.zeros(1, 8, dtype=torch.long))[0].shape == (1, 8, 64)
    with pytest.raises(ValueError, match="sequence length 17 is over max_seq_len 16"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_resuming_under_another_layout_is_refused_naming_both(one_process_run, parallel_shards, tmp_path):
    """The one-process run's checkpoints, resumed with sequence=2: refused before anything loads, not retried."""
    from tasks.train.launch import TrainingRejected, run_training

    ref_dir, _ = one_process_run
    shutil.copytree(ref_dir, tmp_path / "run")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    cfg = layout_config(parallel_shards, tmp_path / "run", num_procs=2, parallel=ParallelConfig(sequence=2),
                        zero_stage=1)
    with pytest.raises(TrainingRejected) as refused:
        run_training(cfg, resume=True, log_callback=lambda line: None)
    assert ("saved under the layout {'tensor': 1, 'sequence': 1, 'pipeline': 1, 'data': 1}; this run's is "
            "{'tensor': 1, 'sequence': 2, 'pipeline': 1, 'data': 1}") in str(refused.value)
    log = (tmp_path / "run" / "train.log").read_text()
    assert sum(line.startswith("launch (") for line in log.splitlines()) == 2  # the reference's launch, and this one
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics  # nothing of the reference run lost
