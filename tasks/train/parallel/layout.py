"""Where each rank sits in a run's layout, and the checks that a layout fits the model.

A run of W ranks is a grid of tensor (t) x sequence (s) x data (d) x pipeline (p) ranks,
d = W / (t x s x p). Rank numbers run tensor fastest, then sequence, then data, then
pipeline:

    rank = ((pipeline_index x d + data_index) x s + sequence_index) x t + tensor_index

so a tensor group (the ranks that split one layer's matrices, the busiest talkers) is a
block of neighbouring ranks, on one node when t divides the GPUs per node, and the
pipeline stages are the outermost blocks, as DeepSpeed's PipelineModule numbers them
(its ``PipeDataParallelTopology``: pipe outer, data inner).

``check_layout`` runs in the launching process before any rank starts (and again in every
rank); a layout that cannot work fails with a message naming the factor and the number it
must divide.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.transformer import ffn_hidden
from pretrain.config import ModelConfig, TrainConfig
from tasks.train.preflight import TrainConfigError

AXES = ("tensor", "sequence", "data", "pipeline")  # fastest first


class LayoutError(TrainConfigError):
    """The parallel layout does not fit the world size, the model or the batch."""


@dataclass(frozen=True)
class Coords:
    tensor: int
    sequence: int
    data: int
    pipeline: int


@dataclass(frozen=True)
class Layout:
    tensor: int = 1
    sequence: int = 1
    pipeline: int = 1
    data: int = 1

    @property
    def world(self) -> int:
        return self.tensor * self.sequence * self.pipeline * self.data

    @property
    def model_parallel(self) -> int:
        return self.tensor * self.sequence * self.pipeline

    @property
    def kind(self) -> str:
        """"tensor", "sequence", "pipeline", or "data" when the model is not split."""
        return next((axis for axis in ("tensor", "sequence", "pipeline") if getattr(self, axis) > 1), "data")

    def sizes(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in AXES}

    def as_dict(self) -> dict[str, int]:
        """As recorded in summary.json and each checkpoint's manifest."""
        return {"tensor": self.tensor, "sequence": self.sequence, "pipeline": self.pipeline, "data": self.data}

    def coords(self, rank: int) -> Coords:
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside a world of {self.world}")
        t, rest = rank % self.tensor, rank // self.tensor
        s, rest = rest % self.sequence, rest // self.sequence
        d, p = rest % self.data, rest // self.data
        return Coords(t, s, d, p)

    def rank_of(self, tensor: int = 0, sequence: int = 0, data: int = 0, pipeline: int = 0) -> int:
        return ((pipeline * self.data + data) * self.sequence + sequence) * self.tensor + tensor

    def groups(self, axis: str) -> list[list[int]]:
        """Every group of ranks that differ only along ``axis``, each in axis order, the groups in rank order
        of their first member."""
        if axis not in AXES:
            raise ValueError(f"unknown axis {axis!r}; one of {AXES}")
        found: dict[tuple, list[int]] = {}
        for rank in range(self.world):
            c = self.coords(rank)
            key = tuple(getattr(c, other) for other in AXES if other != axis)
            found.setdefault(key, []).append(rank)
        return list(found.values())

    def group_of(self, axis: str, rank: int) -> list[int]:
        return next(group for group in self.groups(axis) if rank in group)

    def describe(self) -> str:
        return (f"layout tensor {self.tensor} x sequence {self.sequence} x pipeline {self.pipeline} "
                f"x data {self.data} = {self.world} ranks")


def data_parallel_size(cfg: TrainConfig, world: int) -> int:
    """world / (tensor x sequence x pipeline), or a LayoutError naming the factors."""
    p = cfg.parallel
    if world % p.model_parallel:
        raise LayoutError(
            f"world size {world} is not a multiple of parallel.tensor {p.tensor} x parallel.sequence "
            f"{p.sequence} x parallel.pipeline {p.pipeline} = {p.model_parallel} (the data-parallel size is "
            f"world / that product; set num_procs to a multiple of {p.model_parallel})")
    return world // p.model_parallel


def check_layout(cfg: TrainConfig, world: int, model: ModelConfig) -> Layout:
    """The run's Layout; raises LayoutError naming the factor that does not fit."""
    p = cfg.parallel
    layout = Layout(p.tensor, p.sequence, p.pipeline, data_parallel_size(cfg, world))
    split = [f"parallel.{axis} {getattr(p, axis)}" for axis in ("tensor", "sequence", "pipeline")
             if getattr(p, axis) > 1]
    if len(split) > 1:
        raise LayoutError(f"{' with '.join(split)}: one model-parallel kind at a time is supported (each with "
                          "data parallel); combining them is not built yet")
    heads, kv = model.n_heads, model.n_kv_heads or model.n_heads
    if p.tensor > 1:
        for what, count in (("attention heads (model.n_heads)", heads), ("key/value heads (model.n_kv_heads)", kv),
                            ("MLP width (ffn_hidden)", ffn_hidden(model))):
            if count % p.tensor:
                raise LayoutError(f"parallel.tensor {p.tensor} does not divide the {what} {count}: each tensor "
                                  "rank takes an equal share")
    if p.sequence > 1:
        if cfg.seq_len % p.sequence:
            raise LayoutError(f"parallel.sequence {p.sequence} does not divide seq_len {cfg.seq_len}: each "
                              "sequence rank holds an equal slice of every sequence")
        for what, count in (("attention heads (model.n_heads)", heads), ("key/value heads (model.n_kv_heads)", kv)):
            if count % p.sequence:
                raise LayoutError(f"parallel.sequence {p.sequence} does not divide the {what} {count}: Ulysses "
                                  "gives each sequence rank an equal share of the heads inside attention")
    if p.pipeline > 1:
        if p.pipeline > model.n_layers:
            raise LayoutError(f"parallel.pipeline {p.pipeline} is more stages than the model's layers (model.n_layers "
                              f"{model.n_layers}): each stage needs at least one layer")
        if model.n_layers % p.pipeline:
            raise LayoutError(f"parallel.pipeline {p.pipeline} does not divide the layers (model.n_layers "
                              f"{model.n_layers}): each stage holds an equal number of layers")
        if cfg.grad_accum_steps < p.pipeline:
            raise LayoutError(f"parallel.pipeline {p.pipeline} needs at least as many micro batches per step: "
                              f"grad_accum_steps is {cfg.grad_accum_steps} (set it to {p.pipeline} or more; "
                              "more micro batches make the pipeline's idle bubble smaller)")
        if cfg.zero_stage > 1:
            raise LayoutError(f"parallel.pipeline {p.pipeline} needs zero_stage 0 or 1 (DeepSpeed's pipeline "
                              f"engine does not run ZeRO 2 or 3); zero_stage is {cfg.zero_stage}")
    return layout


def process_groups(layout: Layout, rank: int) -> dict[str, object]:
    """This rank's torch.distributed group along each axis (None where the axis has size 1).

    ``new_group`` must be called by every rank for every group, in the same order, so every
    group of every axis is made here and only this rank's kept."""
    import torch.distributed as dist

    mine: dict[str, object] = {}
    for axis in AXES:
        mine[axis] = None
        if getattr(layout, axis) == 1:
            continue
        for ranks in layout.groups(axis):
            group = dist.new_group(ranks)
            if rank in ranks:
                mine[axis] = group
    return mine
