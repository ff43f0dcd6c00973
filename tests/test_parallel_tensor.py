"""Tensor parallel (parallel.tensor=2): two CPU ranks on gloo against the one-process run.

First, in-process: the split tiny model on 2 gloo ranks gives the whole model's loss and
gradients (the split matrices' gradients are the whole ones' slices, the global gradient
norm the whole model's). Then the layout run (ZeRO-3 over the data group, d = 1, to show
composition) with the one-process run's data and global batch: every step's loss within
1e-4 relative, half of every split matrix per rank, an exact resume, and an export whose
logits match the one-process export's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.transformer import Transformer, ffn_hidden
from parallel_fixtures import (assert_export_matches, assert_losses_match, assert_resumes_exactly, export_logits, layout_config)
from pretrain.config import ModelConfig, ParallelConfig
from tasks.train.launch import run_training
from tasks.train.parallel.tensor import SPLIT_DIM, split_dim

REPO = Path(__file__).resolve().parents[1]

TENSOR = 2
BENCH_ITEMS = 4  # in-loop benchmark items per task, scored by both tensor ranks at step 8 (after training)


# ---------------------------------------------------------------- in process: the split itself

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, compile="off")

# one tensor rank: the split model's loss, its gradients and the global norm as DeepSpeed's clipping
# computes it (split parameters summed over the group, replicated ones counted once)
SPLIT_RANK = """
import os, sys, torch, torch.distributed as dist
from models.transformer import Transformer
from pretrain.config import ModelConfig
from tasks.train.parallel.tensor import split_model
rank, size, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", rank=rank, world_size=size)
torch.manual_seed(0)
model = split_model(Transformer(ModelConfig(**{tiny})), rank, size, dist.group.WORLD)
idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
_, loss = model(idx, idx.roll(-1, dims=1))
loss.backward()
square = sum(p.grad.pow(2).sum() for p in model.parameters() if getattr(p, "tensor_model_parallel", False) or rank == 0)
dist.all_reduce(square)
torch.save({{"loss": loss.item(), "norm": square.sqrt().item(),
             "grads": {{n: p.grad for n, p in model.named_parameters()}}}}, out)
dist.barrier()
dist.destroy_process_group()  # exiting with gloo's threads alive can abort the process
"""


def test_split_model_gives_the_whole_models_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    whole = Transformer(ModelConfig(**TINY))
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    _, loss = whole(idx, idx.roll(-1, dims=1))
    loss.backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in whole.parameters())).item()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "PYTHONPATH": str(REPO)}
    script = SPLIT_RANK.format(tiny=TINY)
    ranks = [subprocess.Popen([sys.executable, "-c", script, str(r), str(TENSOR), str(tmp_path / f"{r}.pt")],
                              env=env, cwd=REPO) for r in range(TENSOR)]
    assert [p.wait(timeout=300) for p in ranks] == [0] * TENSOR
    for rank in range(TENSOR):
        out = torch.load(tmp_path / f"{rank}.pt")
        assert abs(out["loss"] - loss.item()) <= 1e-6 * loss.item()
        assert abs(out["norm"] - norm) <= 1e-5 * norm, (out["norm"], norm)
        for name, param in whole.named_parameters():
            dim = split_dim(name)
            expected = param.grad if dim is None else param.grad.chunk(TENSOR, dim)[rank]
            assert out["grads"][name].shape == expected.shape, name
            torch.testing.assert_close(out["grads"][name], expected, rtol=1e-4, atol=1e-7, msg=name)


# ---------------------------------------------------------------- the layout run

def split_counts(model: ModelConfig, tensor: int) -> tuple[int, int]:
    """(replicated, split) parameter elements of the whole model, from its shape."""
    c, head_dim = model.d_model, model.d_model // model.n_heads
    kv = (model.n_kv_heads or model.n_heads) * head_dim
    per_layer = {"q_proj": c * c, "k_proj": c * kv, "v_proj": c * kv, "o_proj": c * c,
                 "gate_proj": c * ffn_hidden(model), "up_proj": c * ffn_hidden(model),
                 "down_proj": ffn_hidden(model) * c}
    assert set(per_layer) == set(SPLIT_DIM)
    replicated = model.vocab_size * c * (1 if model.tie_embeddings else 2) + model.n_layers * 2 * c + c
    return replicated, model.n_layers * sum(per_layer.values())


@pytest.fixture(scope="module")
def tensor_config(parallel_shards, tmp_path_factory):
    return layout_config(parallel_shards, tmp_path_factory.mktemp("tensor2"), num_procs=2,
                         parallel=ParallelConfig(tensor=TENSOR), zero_stage=3, eval_items=BENCH_ITEMS)


@pytest.fixture(scope="module")
def tensor_run(tensor_config):
    lines = []
    summary = run_training(tensor_config, log_callback=lines.append)
    assert summary["completed"], lines[-20:]
    return tensor_config.output_dir, summary, lines


def test_tensor2_matches_one_process(tensor_run, one_process_run):
    run_dir, summary, lines = tensor_run
    ref_dir, ref_summary = one_process_run
    diffs = assert_losses_match(Path(run_dir), ref_dir)
    print(f"max relative loss difference: {max(diffs.values()):.2e}")
    assert summary["parallel"] == {"tensor": 2, "sequence": 1, "pipeline": 1, "data": 1}
    model = ModelConfig.model_validate(summary["model"])
    replicated, split = split_counts(model, TENSOR)
    assert split % TENSOR == 0
    partition = summary["param_partition"]
    assert partition["total"] == replicated + split == ref_summary["param_partition"]["total"]
    assert partition["local_per_rank"] == [replicated + split // TENSOR] * TENSOR  # ZeRO-3 over d = 1: all of it
    heads, width = model.n_heads // TENSOR, ffn_hidden(model) // TENSOR
    for rank in range(TENSOR):
        assert any(f"rank {rank}:" in line and f"heads {rank * heads}-{(rank + 1) * heads - 1} of {model.n_heads}"
                   in line and f"MLP columns {rank * width}-{(rank + 1) * width - 1}" in line for line in lines)
    grad_norms = [json.loads(line)["grad_norm"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
                  if '"train"' in line]
    ref_norms = [json.loads(line)["grad_norm"] for line in (ref_dir / "metrics.jsonl").read_text().splitlines()
                 if '"train"' in line]
    assert max(ref_norms) > 1.0  # clipping (grad_clip 1.0) acted, on the global norm each rank computed
    norm_diff = max(abs(mine - ref) / ref for mine, ref in zip(grad_norms, ref_norms, strict=True))
    print(f"max relative grad-norm difference: {norm_diff:.2e}")
    assert norm_diff <= 1e-4, (grad_norms, ref_norms)


def test_tensor2_resumes_exactly(tensor_run, tensor_config, tmp_path):
    assert_resumes_exactly(Path(tensor_run[0]), tensor_config, tmp_path / "resumed")


def test_tensor2_export_matches_one_process(tensor_run, one_process_run, parallel_shards):
    run_dir, ref_dir = Path(tensor_run[0]), one_process_run[0]
    assert_export_matches(run_dir, ref_dir, parallel_shards)


class _Scorer:
    """The exported HF model as ``benchmarks.score`` calls an engine."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids):
        return (self.model(input_ids).logits,)

    def eval(self):
        pass

    def train(self):
        pass


def test_tensor2_benchmarks_score_as_the_whole_model(tensor_run, tensor_config, parallel_shards):
    """The in-loop scores of the tensor-parallel run (the base's score_benchmarks, both ranks scoring the
    same items) equal the scores of its exported whole model on the same items."""
    from transformers import LlamaForCausalLM

    from tasks.train.benchmarks import load_benchmarks, score
    from tasks.train.data import TokenWindows

    run_dir, summary, _ = tensor_run
    export_logits(Path(run_dir), parallel_shards)  # writes RUN_DIR/hf-test
    model = LlamaForCausalLM.from_pretrained(Path(run_dir) / "hf-test", torch_dtype=torch.float32).eval()
    eos_id = TokenWindows(parallel_shards, "train", tensor_config.seq_len, seed=0).eos_id
    bench = load_benchmarks(tensor_config, model.config.max_position_embeddings, eos_id, static_shapes=False)
    with torch.no_grad():
        expected = score(_Scorer(model), bench, torch.device("cpu"))
    assert summary["benchmarks"]["step"] == 8
    assert summary["benchmarks"]["tasks"] == expected["benchmarks"]
    assert all(task["items"] == BENCH_ITEMS for task in expected["benchmarks"].values())
