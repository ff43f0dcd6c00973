"""The parallel layout without launching: where each rank sits, and the layouts refused before
launch with the factor named (issue 16, acceptance 4; the CLI's exit 2 for them is in
tests/faults/test_train_checks.py)."""

from __future__ import annotations

import pytest

from models.sizes import model_config
from pretrain.config import ParallelConfig, TrainConfig
from tasks.train.ds_config import BatchConfigError, batch_plan
from tasks.train.parallel.layout import Layout, LayoutError, check_layout

TINY = model_config("tiny", vocab_size=1024, max_seq_len=2048)  # 4 layers, 4 heads, d 128, ffn 512


def train(**fields) -> TrainConfig:
    parallel = {k: fields.pop(k) for k in ("tensor", "sequence", "pipeline") if k in fields}
    return TrainConfig(seq_len=fields.pop("seq_len", 2048), parallel=ParallelConfig(**parallel), **fields)


def test_ranks_run_tensor_fastest_then_sequence_data_pipeline():
    layout = Layout(tensor=2, sequence=1, pipeline=2, data=2)
    assert layout.world == 8 and layout.model_parallel == 4
    coords = [layout.coords(rank) for rank in range(8)]
    assert [(c.tensor, c.data, c.pipeline) for c in coords] == [
        (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    assert all(layout.rank_of(c.tensor, c.sequence, c.data, c.pipeline) == r for r, c in enumerate(coords))
    assert layout.groups("tensor") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.groups("data") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.groups("pipeline") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.group_of("data", 5) == [5, 7]
    with pytest.raises(ValueError, match="rank 8 is outside a world of 8"):
        layout.coords(8)


@pytest.mark.parametrize("kind", ["tensor", "sequence", "pipeline"])
def test_a_fitting_layout_derives_the_data_parallel_size(kind):
    extra = {"grad_accum_steps": 2, "zero_stage": 1} if kind == "pipeline" else {}
    layout = check_layout(train(**{kind: 2}, **extra), 8, TINY)
    assert layout.as_dict() == {"tensor": 1, "sequence": 1, "pipeline": 1, **{kind: 2}, "data": 4}
    assert layout.kind == kind


REFUSED = {
    "tensor 3, 4 heads": (dict(tensor=3), 3, "parallel.tensor 3 does not divide the attention heads (model.n_heads) 4"),
    "tensor 4, 2 kv heads": (dict(tensor=4), 4, "parallel.tensor 4 does not divide the key/value heads"),
    "pipeline over layers": (dict(pipeline=8, grad_accum_steps=8, zero_stage=1), 8,
                             "parallel.pipeline 8 is more stages than the model's layers (model.n_layers 4)"),
    "pipeline 3, 4 layers": (dict(pipeline=3, grad_accum_steps=3, zero_stage=1), 3,
                             "parallel.pipeline 3 does not divide the layers (model.n_layers 4)"),
    "pipeline, 1 micro batch": (dict(pipeline=2, zero_stage=1), 2,
                                "needs at least as many micro batches per step: grad_accum_steps is 1"),
    "pipeline, zero 3": (dict(pipeline=2, grad_accum_steps=2), 2, "parallel.pipeline 2 needs zero_stage 0 or 1"),
    "sequence 2, seq_len 255": (dict(sequence=2, seq_len=255), 2, "parallel.sequence 2 does not divide seq_len 255"),
    "sequence 8, 4 heads": (dict(sequence=8), 8, "parallel.sequence 8 does not divide the attention heads"),
    "world 6, tensor 4": (dict(tensor=4), 6, "world size 6 is not a multiple of parallel.tensor 4"),
    "tensor with pipeline": (dict(tensor=2, pipeline=2, grad_accum_steps=2, zero_stage=1), 4,
                             "parallel.tensor 2 with parallel.pipeline 2: one model-parallel kind at a time"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_layout_that_cannot_work_is_refused_naming_the_factor(case):
    fields, world, message = REFUSED[case]
    model = TINY.model_copy(update={"n_kv_heads": 2}) if "kv heads" in case else TINY
    with pytest.raises(LayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_layout(train(**fields), world, model)


def test_the_batch_counts_data_parallel_replicas_not_ranks():
    plan = batch_plan(train(tensor=2, micro_batch_size=2, grad_accum_steps=2), 4)
    assert (plan.world_size, plan.model_parallel, plan.global_batch_size, plan.tokens_per_step) == (2, 2, 8, 16384)
    assert "x data-parallel size 2 (world 4 / 2 ranks per model)" in plan.describe()
    with pytest.raises(BatchConfigError, match="micro_batch_size 2 x grad_accum_steps 2 x data-parallel size 2 = 8"):
        batch_plan(train(tensor=2, micro_batch_size=2, grad_accum_steps=2, global_batch_size=16), 4)
    with pytest.raises(LayoutError, match="world size 3 is not a multiple"):
        batch_plan(train(tensor=2), 3)
