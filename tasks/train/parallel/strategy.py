"""How a layout builds, feeds and steps the model: the base is data parallel with ZeRO.

``tasks.train.main`` drives every run through one ``Strategy``; a model-parallel kind
(``tensor.py``, ``sequence.py``, ``pipeline.py``) overrides only what it changes: how the
engine is built, which part of a batch a rank sees, how a step runs, what a rank holds.
Each rank reads the samples of its data-parallel index (``data_rank`` of ``data_world``):
the ranks of one model replica read the same ones.
"""

from __future__ import annotations

import torch

from pretrain.config import ModelConfig, TrainConfig
from tasks.train.data import TokenWindows, TrainStream, eval_batches
from tasks.train.ds_config import build_optimizer
from tasks.train.model_setup import build_model, enable_fp8, parameter_counts
from tasks.train.parallel.layout import Layout, process_groups


class Strategy:
    """Data parallel: every rank holds the whole model (ZeRO partitions it over all ranks)."""

    benchmarks_unsupported: str | None = None  # why in-loop benchmarks are not scored under this layout

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, layout: Layout, dist):
        self.cfg, self.model_cfg, self.layout, self.dist = cfg, model_cfg, layout, dist
        self.coords = layout.coords(dist.rank)
        self.groups = process_groups(layout, dist.rank)  # every rank makes every group, in the same order

    # ---------------------------------------------------------------- data
    @property
    def data_rank(self) -> int:
        return self.coords.data

    @property
    def data_world(self) -> int:
        return self.layout.data

    def stream(self, windows: TokenWindows) -> TrainStream:
        return TrainStream(windows, self.cfg.micro_batch_size, self.data_rank, self.data_world)

    # ---------------------------------------------------------------- engine
    def ds_config(self, config: dict) -> dict:
        """The DeepSpeed config for this layout (the base: unchanged)."""
        return config

    def build_engine(self, ds_config: dict, say) -> tuple[object, dict]:
        """(engine, fp8 record): the model built from the seed, as a one-process run builds it."""
        import deepspeed

        cfg = self.cfg
        model = build_model(self.model_cfg, ds_config, cfg.seed, cfg.zero_stage, cfg.zero3_leaf_layers)
        fp8 = enable_fp8(model, cfg, self.dist.device, say)
        engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, cfg), config=ds_config)
        return engine, fp8

    # ---------------------------------------------------------------- steps
    def loss(self, engine, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss of this rank's part of a micro batch; x, y (B, T) as read, on the CPU."""
        return engine(x.to(self.dist.device), y.to(self.dist.device))[1]

    def train_step(self, engine, stream: TrainStream, accum: int) -> float:
        """One optimizer step over ``accum`` micro batches; the mean loss over micro batches and replicas."""
        total = 0.0
        for _ in range(accum):
            x, y = stream.next_batch()  # (B, T) each
            loss = self.loss(engine, x, y)
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
            total += loss.item()
        return self.dist.mean(total / accum)

    @torch.no_grad()
    def evaluate(self, engine, windows: TokenWindows) -> float:
        cfg = self.cfg
        engine.eval()
        losses = [self.loss(engine, x, y).item() for x, y in
                  eval_batches(windows, cfg.eval_batches, cfg.micro_batch_size, self.data_rank, self.data_world)]
        engine.train()
        return self.dist.mean(sum(losses) / len(losses))

    def score_benchmarks(self, engine, bench) -> dict:
        from tasks.train.benchmarks import score

        return score(engine, bench, self.dist.device, self.data_rank, self.data_world, self.dist.gather)

    # ---------------------------------------------------------------- what a rank holds
    def parameter_counts(self, engine) -> dict:
        """{"local", "total", "resident"} parameter elements (see model_setup.parameter_counts)."""
        return parameter_counts(engine.module)

    def describe_rank(self) -> str:
        """One line of the start-up layout table: this rank's coordinates and what it holds."""
        c = self.coords
        return (f"rank {self.dist.rank}: data {c.data}/{self.layout.data}, tensor {c.tensor}/{self.layout.tensor}, "
                f"sequence {c.sequence}/{self.layout.sequence}, pipeline {c.pipeline}/{self.layout.pipeline}"
                f"{self.holds()}")

    def holds(self) -> str:
        """What this rank holds beyond its coordinates (', heads 0-1 of 4'); the base: the whole model."""
        return ", the whole model"

    def summary(self) -> dict:
        """Extra summary.json fields (the layout is recorded by main as "parallel")."""
        return {}
