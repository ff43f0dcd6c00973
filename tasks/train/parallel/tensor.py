"""Tensor parallel (Megatron-style): each rank of a tensor group holds a slice of every layer's matrices.

Attention is split by heads: q/k/v by output rows (each rank computes its own heads), o_proj
by input columns (each rank's heads feed only its own slice). The SwiGLU MLP likewise: gate
and up by output rows, down by input columns. So each sub-layer needs one all-reduce forward
(summing the row-parallel partial outputs, ``_ReduceFromTensorGroup``) and one backward
(summing the gradients that flow into the column-parallel inputs, ``_CopyToTensorGroup``).
The embedding (tied to lm_head), the norms and lm_head are replicated: their gradients come
out identical on every rank of the group, so nothing more is exchanged for them.

ZeRO partitions and averages over the data-parallel group only: ``deepspeed.initialize`` gets
an ``mpu`` (``TensorParallelUnit``). Split parameters carry ``tensor_model_parallel = True``,
which DeepSpeed's grad-norm code (``runtime.utils.is_model_parallel_parameter``, ZeRO 1-3)
reads: their squared norms are summed over the tensor group, the replicated ones counted
once (on tensor rank 0), so gradient clipping sees the one-process run's global norm.

Every rank builds the whole model from the seed (as a one-process run does), then keeps its
slices: the parameters match the one-process run's exactly, at the cost of one full model
per rank at build time.

DeepSpeed AutoTP (``"tensor_parallel": {"autotp_size": N}``) is not used: in training mode it makes
lm_head a vocab-split column layer, cutting the weight it shares with embed_tokens (the tie breaks),
and it reads head counts from an HF ``model.config`` (ours has none), so SelfAttention's views break.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from models.transformer import Block, ffn_hidden
from tasks.train.ds_config import build_optimizer
from tasks.train.model_setup import enable_fp8, parameter_counts, seeded_model
from tasks.train.parallel.strategy import Strategy

# how each split matrix is cut: 0 = by output rows (column-parallel), 1 = by input columns (row-parallel)
SPLIT_DIM = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "gate_proj": 0, "up_proj": 0, "o_proj": 1, "down_proj": 1}


def split_dim(name: str) -> int | None:
    """The dim a parameter (``layers.0.self_attn.q_proj.weight``) is split along; None if replicated."""
    parts = name.split(".")
    return SPLIT_DIM.get(parts[-2]) if len(parts) >= 2 else None


# ---------------------------------------------------------------- the two collectives

class _CopyToTensorGroup(torch.autograd.Function):
    """Before column-parallel layers: identity forward, all-reduce (sum) of the input's gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorGroup(torch.autograd.Function):
    """After row-parallel layers: all-reduce (sum) of the partial outputs forward, identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def split_model(model: nn.Module, rank: int, size: int, group) -> nn.Module:
    """Keep this tensor rank's slices of every block's matrices (in place) and hook the collectives
    around attention and the MLP. Parameter names stay those of the whole model."""
    for block in model.layers:
        for sub in (block.self_attn, block.mlp):
            for name, linear in sub.named_children():
                if name not in SPLIT_DIM:
                    continue
                piece = linear.weight.data.chunk(size, dim=SPLIT_DIM[name])[rank].clone()
                linear.weight = nn.Parameter(piece)
                linear.weight.tensor_model_parallel = True
                linear.out_features, linear.in_features = piece.shape
            # SelfAttention.forward(x, cos, sin) and MLP.forward(x) each end in their row-parallel layer
            sub.register_forward_pre_hook(lambda _, args: (_CopyToTensorGroup.apply(args[0], group), *args[1:]))
            sub.register_forward_hook(lambda _, args, out: _ReduceFromTensorGroup.apply(out, group))
        block.self_attn.n_heads //= size
        block.self_attn.n_kv_heads //= size
    return model


class TensorParallelUnit:
    """The ``mpu`` DeepSpeed asks for its groups: the model-parallel group is the tensor group, ZeRO's is
    the data group. The methods are those this build calls (runtime/engine.py, runtime/utils.py,
    runtime/zero/, utils/groups.py); no ``initialize_sequence_parallel``, which would make DeepSpeed
    ignore the mpu's data group."""

    def __init__(self, tensor_group, data_group):
        self.tensor_group, self.data_group = tensor_group, data_group

    def get_model_parallel_group(self):
        return self.tensor_group

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(self.tensor_group)

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(self.tensor_group)

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    def get_tensor_model_parallel_src_rank(self) -> int:
        return dist.get_global_rank(self.tensor_group, 0)

    def get_data_parallel_group(self):
        return self.data_group

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(self.data_group)

    def get_data_parallel_world_size(self) -> int:
        return dist.get_world_size(self.data_group)

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(self.data_group)


def _singleton_data_group(world: int, rank: int):
    """A one-rank group per rank (every rank makes all of them, in order): the data group when d = 1."""
    mine = None
    for r in range(world):
        group = dist.new_group([r])
        if r == rank:
            mine = group
    return mine


class TensorParallel(Strategy):
    """Tensor parallel over the tensor group, ZeRO over the data group; the TP ranks of a replica read
    the same samples (the base's ``data_rank``) and score the same benchmark items."""

    def __init__(self, cfg, model_cfg, layout, dist_):
        super().__init__(cfg, model_cfg, layout, dist_)
        self.tensor_group = self.groups["tensor"]
        self.data_group = self.groups["data"] or _singleton_data_group(layout.world, dist_.rank)

    def build_engine(self, ds_config: dict, say) -> tuple[object, dict]:
        import deepspeed

        cfg, t = self.cfg, self.layout.tensor
        model = seeded_model(self.model_cfg, cfg.seed)
        split_model(model, self.coords.tensor, t, self.tensor_group)
        if cfg.zero_stage == 3 and cfg.zero3_leaf_layers:
            from deepspeed.utils import set_z3_leaf_modules

            set_z3_leaf_modules(model, [Block])
        fp8 = enable_fp8(model, cfg, self.dist.device, say)
        engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, cfg), config=ds_config,
                                          mpu=TensorParallelUnit(self.tensor_group, self.data_group))
        return engine, fp8

    def parameter_counts(self, engine) -> dict:
        """local and resident: this rank's elements; total: the whole model's (split ones x tensor size)."""
        total = 0
        for param in engine.module.parameters():  # a tied parameter is listed once
            pieces = self.layout.tensor if getattr(param, "tensor_model_parallel", False) else 1
            total += getattr(param, "ds_numel", param.numel()) * pieces
        return {**parameter_counts(engine.module), "total": total}

    def holds(self) -> str:
        t, r, m = self.layout.tensor, self.coords.tensor, self.model_cfg
        heads, width = m.n_heads // t, ffn_hidden(m) // t
        return (f", heads {r * heads}-{(r + 1) * heads - 1} of {m.n_heads}, "
                f"MLP columns {r * width}-{(r + 1) * width - 1} of {ffn_hidden(m)}")


# ---------------------------------------------------------------- consolidation

def _rank_state_dict(folder: Path, mp: int) -> dict:
    """The fp32 state dict of tensor rank ``mp``'s slices: its files staged (symlinked) as mp rank 00."""
    tag = f"mp_rank_{mp:02d}"
    if not any(folder.glob("*optim_states.pt")):  # ZeRO-0: the module as saved
        states = torch.load(folder / f"{tag}_model_states.pt", map_location="cpu", weights_only=False)
        return {name: tensor.float() for name, tensor in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with tempfile.TemporaryDirectory(prefix="tp-consolidate-") as tmp:
        staged = Path(tmp) / folder.name
        staged.mkdir()
        for path in folder.glob(f"*{tag}_*.pt"):
            os.symlink(path.resolve(), staged / path.name.replace(tag, "mp_rank_00"))
        return get_fp32_state_dict_from_zero_checkpoint(tmp, tag=folder.name)


def consolidate_fp32(folder, manifest: dict) -> dict:
    """The whole model's fp32 state dict from a checkpoint saved under tensor parallel: each tensor
    rank's slices consolidated (ZeRO 0-3), the column splits joined along dim 0, the row splits along
    dim 1, the replicated parameters taken from tensor rank 0 (ZeRO-3 is in the suite; ZeRO 0 and 1 were
    checked once by hand: the one-process keys and shapes, losses within 4e-8 relative)."""
    folder = Path(folder)
    pieces = [_rank_state_dict(folder, mp) for mp in range(manifest["parallel"]["tensor"])]
    merged = {}
    for name, tensor in pieces[0].items():
        dim = split_dim(name)
        merged[name] = tensor if dim is None else torch.cat([piece[name] for piece in pieces], dim=dim)
    return merged
