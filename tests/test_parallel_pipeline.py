"""Pipeline parallelism on two CPU ranks (gloo): DeepSpeed's PipelineModule over our layers, two stages of
two layers each, 1F1B over the step's two micro batches, ZeRO-1. The losses, the resume and the export
equal the one-process run's; each stage holds its layers (the last also a copy of the tied embedding)."""

from __future__ import annotations

import pytest
import torch

from parallel_fixtures import (LOSS_RTOL, STEPS, assert_export_matches, assert_losses_match, assert_resumes_exactly, layout_config)
from pretrain.config import ModelConfig, ParallelConfig
from tasks.train.checkpoint import checkpoint_root
from tasks.train.launch import run_training

PIPELINE, WORLD = 2, 2


def _config(shards, out):
    return layout_config(shards, out, num_procs=WORLD, parallel=ParallelConfig(pipeline=PIPELINE))


@pytest.fixture(scope="module")
def pipeline_run(parallel_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline2")
    lines: list[str] = []
    summary = run_training(_config(parallel_shards, run_dir), log_callback=lines.append)
    assert summary["completed"], lines[-20:]
    return run_dir, summary, lines


def _layer_params(model: ModelConfig) -> int:
    from models.transformer import ffn_hidden

    c, kv = model.d_model, (model.n_kv_heads or model.n_heads) * (model.d_model // model.n_heads)
    return 2 * c + c * c + 2 * kv * c + c * c + 3 * ffn_hidden(model) * c


def test_pipeline2_matches_one_process(pipeline_run, one_process_run):
    run_dir, summary, lines = pipeline_run
    ref_dir, ref_summary = one_process_run
    diffs = assert_losses_match(run_dir, ref_dir)
    print(f"max relative loss difference over {STEPS} steps: {max(diffs.values()):.2e}")
    assert abs(summary["val_loss"] - ref_summary["val_loss"]) <= LOSS_RTOL * ref_summary["val_loss"]
    assert summary["parallel"] == {"tensor": 1, "sequence": 1, "pipeline": PIPELINE, "data": 1}
    model = ModelConfig.model_validate(summary["model"])
    assert model.n_layers == 4 and model.tie_embeddings
    embedding, layer, per_stage = model.vocab_size * model.d_model, _layer_params(model), model.n_layers // PIPELINE
    total = embedding + model.n_layers * layer + model.d_model  # the tied head once
    assert summary["param_partition"]["total"] == ref_summary["param_partition"]["total"] == total
    # stage 0: the embedding and layers 0-1; stage 1: layers 2-3, the final norm, its copy of the tied embedding
    assert summary["param_partition"]["local_per_rank"] == [embedding + per_stage * layer,
                                                            per_stage * layer + model.d_model + embedding]
    assert summary["pipeline"]["layers_per_stage"] == [[0, 1], [2, 3]]
    text = "\n".join(lines)
    assert "rank 0: data 0/1, tensor 0/1, sequence 0/1, pipeline 0/2, layers 0-1 + embedding" in text
    assert "rank 1: data 0/1, tensor 0/1, sequence 0/1, pipeline 1/2, layers 2-3 + final norm + head" in text


def test_pipeline2_resumes_exactly(pipeline_run, parallel_shards, tmp_path):
    """The same ops in the same order after the reload, so the resumed steps are equal, not just close."""
    run_dir, _, _ = pipeline_run
    assert_resumes_exactly(run_dir, _config(parallel_shards, run_dir), tmp_path / "resumed")


def test_pipeline2_export_matches_one_process(pipeline_run, one_process_run, parallel_shards):
    run_dir, _, _ = pipeline_run
    ref_dir, _ = one_process_run
    folder = checkpoint_root(run_dir) / f"step{STEPS}"
    # layers 0..5 (embedding, 4 blocks, final norm); the tied head is the embedding, saved once by stage 0
    assert sorted(p.name for p in folder.glob("layer_*")) == [f"layer_{i:02d}-model_states.pt" for i in range(6)]
    assert_export_matches(run_dir, ref_dir, parallel_shards)


@pytest.mark.parametrize("tied", [True, False])
def test_pipe_layers_compose_to_the_model(tied):
    """The pipe layers, run in order on one process, give the Transformer's logits and loss exactly; an
    untied model keeps its own lm_head."""
    from models.transformer import Transformer
    from tasks.train.model_setup import seeded_model
    from tasks.train.parallel.pipeline import (Embed, Head, _Parts, cross_entropy_loss, layer_specs,
                                               tied_head)

    cfg = ModelConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=4, max_seq_len=16, tie_embeddings=tied,
                      compile="off")
    reference, model = seeded_model(cfg, seed=3), seeded_model(cfg, seed=3)
    assert isinstance(reference, Transformer) and (reference.lm_head.weight is reference.embed_tokens.weight) == tied
    specs = layer_specs(_Parts(model), cfg)
    embed = specs[0].build()
    layers = [embed] + [spec.build() for spec in specs[1:-1]]
    head = (lambda h: tied_head(embed, h)) if tied else specs[-1].build()
    assert isinstance(embed, Embed) and (tied or isinstance(head, Head))
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    y = torch.randint(0, cfg.vocab_size, (2, 16))
    out = x
    for layer in layers:
        out = layer(out)
    logits = head(out)
    ref_logits, ref_loss = reference(x, y)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(cross_entropy_loss("off")(logits, y), ref_loss)
    held = sum(p.numel() for module in layers + ([] if tied else [head]) for p in module.parameters())
    assert held == sum(p.numel() for p in reference.parameters())


def test_stage_bounds_and_names():
    from tasks.train.parallel.pipeline import our_name, stage_bounds, stage_layers

    assert stage_bounds(4, 2) == [0, 3, 7]  # embedding + layers 0-1 | layers 2-3 + norm + head
    assert stage_bounds(8, 4) == [0, 3, 5, 7, 11]
    assert list(stage_layers(8, 4, 2)) == [4, 5]
    assert our_name(0, "embed_tokens.weight", 4) == "embed_tokens.weight"
    assert our_name(3, "layer.self_attn.q_proj.weight", 4) == "layers.2.self_attn.q_proj.weight"
    assert our_name(5, "norm.weight", 4) == "norm.weight"
    assert our_name(6, "lm_head.weight", 4) == "lm_head.weight"
