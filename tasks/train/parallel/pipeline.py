"""Pipeline parallel: DeepSpeed's ``PipelineModule`` over our Transformer, stage s holding
layers s x n/p .. (s+1) x n/p - 1 (the first stage also the embedding, the last the final norm
and the head), driven by ``PipelineEngine.train_batch`` (its ``TrainSchedule`` is 1F1B over the
step's ``grad_accum_steps`` micro batches) with ZeRO 0 or 1.

The pipe layers, in order (their index names the checkpoint's ``layer_XX-model_states.pt``):

    0          Embed        token ids (B, T) -> x (B, T, C)
    1 .. n     BlockPipe    x or (x, delta) -> (x, delta), delta the MLP output still to add
    n + 1      FinalNorm    (x, delta) -> norm(x + delta)
    n + 2      the head     h -> logits (B, T, V); with tied embeddings the Embed module again
                            (a ``TiedLayerSpec``: the last stage holds a copy, and the two stages'
                            gradients of it are summed before the step)

Between stages only tensors travel, so a block takes the stream ``x`` alone (the first block,
whose ``delta`` is None in the one-process model) or the pair, and recomputes RoPE's cos/sin
from T. The modules are those of the full Transformer built from the seed as a one-process run
builds it (``model_setup.seeded_model``), so the pipeline starts from the same weights; every
rank builds the whole model once, then keeps only its stage's layers (the memory of a full model
per rank at build time, released before training).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.transformer import Block, Transformer, kernel, num_params, rope_cos_sin
from pretrain.config import ModelConfig
from tasks.train.data import TokenWindows, TrainStream, eval_batches
from tasks.train.ds_config import build_optimizer
from tasks.train.errors import CheckpointDamaged
from tasks.train.model_setup import enable_fp8, seeded_model
from tasks.train.parallel.strategy import Strategy

TIED_KEY = "embed_tokens"
LAYER_FILE = re.compile(r"^layer_(\d+)-model_states\.pt$")


class _Parts:
    """The full model's modules, each handed once to the pipe layer that wraps it; what this stage
    does not build is let go with the full model."""

    def __init__(self, model: Transformer):
        self.modules = {"embed_tokens": model.embed_tokens, "norm": model.norm, "lm_head": model.lm_head,
                        **{f"layers.{i}": block for i, block in enumerate(model.layers)}}

    def take(self, name: str) -> nn.Module:
        return self.modules.pop(name)


class Embed(nn.Module):
    def __init__(self, parts: _Parts, max_seq_len: int):
        super().__init__()
        self.embed_tokens = parts.take("embed_tokens")
        self.max_seq_len = max_seq_len

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {idx.shape[1]} is over max_seq_len {self.max_seq_len}")
        return self.embed_tokens(idx)  # (B, T, C)


def tied_head(embed: Embed, h: torch.Tensor) -> torch.Tensor:
    """The output head that shares the token embedding's matrix: (B, T, C) -> (B, T, V)."""
    return F.linear(h, embed.embed_tokens.weight)


class BlockPipe(nn.Module):
    def __init__(self, parts: _Parts, index: int, cfg: ModelConfig):
        super().__init__()
        self.layer: Block = parts.take(f"layers.{index}")
        self.head_dim, self.rope_theta = cfg.d_model // cfg.n_heads, cfg.rope_theta

    def forward(self, inputs):
        x, delta = (inputs, None) if torch.is_tensor(inputs) else inputs  # (B, T, C) each
        cos, sin = rope_cos_sin(x.shape[1], self.head_dim, self.rope_theta, x.device)  # (T, D) each
        return self.layer(x, delta, cos, sin)


class FinalNorm(nn.Module):
    def __init__(self, parts: _Parts):
        super().__init__()
        self.norm = parts.take("norm")

    def forward(self, inputs) -> torch.Tensor:
        x, delta = inputs
        return self.norm(x, delta)[1]  # the last residual add, then the norm: (B, T, C)


class Head(nn.Module):
    def __init__(self, parts: _Parts):
        super().__init__()
        self.lm_head = parts.take("lm_head")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)  # (B, T, V)


def layer_specs(parts: _Parts, cfg: ModelConfig) -> list:
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if cfg.tie_embeddings:
        tied = dict(tied_weight_attr=["embed_tokens.weight"])
        embed = TiedLayerSpec(TIED_KEY, Embed, parts, cfg.max_seq_len, **tied)
        head = TiedLayerSpec(TIED_KEY, Embed, parts, cfg.max_seq_len, forward_fn=tied_head, **tied)
    else:
        embed, head = LayerSpec(Embed, parts, cfg.max_seq_len), LayerSpec(Head, parts)
    blocks = [LayerSpec(BlockPipe, parts, i, cfg) for i in range(cfg.n_layers)]
    return [embed, *blocks, LayerSpec(FinalNorm, parts), head]


def stage_bounds(n_layers: int, stages: int) -> list[int]:
    """Pipe layer index where each stage starts, and the end: n/p blocks per stage, the embedding on the
    first, the final norm and head on the last ([0, 3, 7] for 4 layers on 2 stages)."""
    per = n_layers // stages
    return [0] + [1 + per * s for s in range(1, stages)] + [n_layers + 3]


def stage_layers(n_layers: int, stages: int, stage: int) -> range:
    """The transformer layers (0-based) that ``stage`` holds."""
    per = n_layers // stages
    return range(stage * per, (stage + 1) * per)


def our_name(index: int, key: str, n_layers: int) -> str:
    """Our parameter name of ``key`` in pipe layer ``index``'s state dict."""
    if 1 <= index <= n_layers:
        return f"layers.{index - 1}.{key.removeprefix('layer.')}"
    return key  # embed_tokens.weight, norm.weight, lm_head.weight


def cross_entropy_loss(compile_mode: str):
    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, T, V = logits.shape
        return kernel("cross_entropy", compile_mode, logits.device)(logits.view(B * T, V), targets.reshape(B * T))

    return loss_fn


class PipelineParallel(Strategy):
    """Stage ``coords.pipeline`` of ``layout.pipeline`` holds ``n_layers / pipeline`` layers; the first and
    last stages read the micro batches (ids to the first, targets to the last)."""

    benchmarks_unsupported = ("the pipeline engine runs only whole micro batches through its schedule "
                              "(train_batch / eval_batch, the loss on the last stage); scoring benchmark "
                              "items needs each item's logits, which it does not return to every rank")

    def ds_config(self, config: dict) -> dict:
        """DeepSpeed's pipeline section; its data-parallel size is ours (world / pipeline), so
        train_batch_size = micro x accum x data stays as given."""
        expected = self.cfg.micro_batch_size * self.cfg.grad_accum_steps * self.layout.data
        if config["train_batch_size"] != expected:
            raise ValueError(f"train_batch_size {config['train_batch_size']} != micro_batch_size "
                             f"{self.cfg.micro_batch_size} x grad_accum_steps {self.cfg.grad_accum_steps} x "
                             f"data-parallel size {self.layout.data} = {expected}")
        pipeline = {"stages": self.layout.pipeline, "partition": "type:BlockPipe",
                    "seed_layers": False, "pipe_partitioned": False, "grad_partitioned": False,
                    "activation_checkpoint_interval": 1 if self.model_cfg.activation_checkpointing else 0,
                    "use_reentrant": False}
        return {**config, "pipeline": pipeline}

    def build_engine(self, ds_config: dict, say) -> tuple[object, dict]:
        import deepspeed
        from deepspeed.pipe import PipelineModule

        cfg, model_cfg, stages = self.cfg, self.model_cfg, self.layout.pipeline
        model = seeded_model(model_cfg, cfg.seed)
        fp8 = enable_fp8(model, cfg, self.dist.device, say)
        self.total_params = num_params(model)
        parts = _Parts(model)
        pipe = PipelineModule(layer_specs(parts, model_cfg), num_stages=stages,
                              loss_fn=cross_entropy_loss(model_cfg.compile), partition_method="type:BlockPipe",
                              activation_checkpoint_interval=ds_config["pipeline"]["activation_checkpoint_interval"],
                              checkpointable_layers=["BlockPipe"])
        parts.modules.clear()
        del model
        wanted = stage_bounds(model_cfg.n_layers, stages)
        if [int(b) for b in pipe.parts] != wanted:
            raise RuntimeError(f"DeepSpeed partitioned the pipe layers at {list(pipe.parts)}, not {wanted}")
        engine, *_ = deepspeed.initialize(model=pipe, optimizer=build_optimizer(pipe, cfg), config=ds_config)
        return engine, fp8

    def train_step(self, engine, stream: TrainStream, accum: int) -> float:
        """One 1F1B step over ``accum`` micro batches; train_batch's loss is the mean over micro batches and
        data replicas, broadcast from the last stage to every stage."""
        if accum != engine.micro_batches:
            raise ValueError(f"{accum} micro batches asked, the pipeline engine is set for {engine.micro_batches}")
        batches = [stream.next_batch() for _ in range(accum)]  # every rank reads them, so all keep one position
        return engine.train_batch(iter(batches)).item()

    @torch.no_grad()
    def evaluate(self, engine, windows: TokenWindows) -> float:
        cfg = self.cfg
        batches = list(eval_batches(windows, cfg.eval_batches, cfg.micro_batch_size, self.data_rank,
                                    self.data_world))
        return engine.eval_batch(iter(batches), num_micro_batches=len(batches)).item()

    def parameter_counts(self, engine) -> dict:
        """local: this stage's parameter elements (the last stage's copy of a tied embedding included);
        total: the full model's, a tied embedding once."""
        local = sum(param.numel() for param in engine.module.parameters())
        return {"local": local, "total": self.total_params, "resident": local}

    def holds(self) -> str:
        stage, stages = self.coords.pipeline, self.layout.pipeline
        layers = stage_layers(self.model_cfg.n_layers, stages, stage)
        held = f", layers {layers[0]}-{layers[-1]}"
        if stage == 0:
            held += " + embedding"
        if stage == stages - 1:
            held += " + final norm + " + ("head (tied: a copy of the embedding)" if self.model_cfg.tie_embeddings
                                         else "lm_head")
        return held

    def summary(self) -> dict:
        n, stages = self.model_cfg.n_layers, self.layout.pipeline
        return {"pipeline": {"schedule": "1F1B", "micro_batches": self.cfg.grad_accum_steps,
                             "layers_per_stage": [list(stage_layers(n, stages, s)) for s in range(stages)]}}


def consolidate_fp32(folder, manifest: dict) -> dict:
    """The full fp32 state dict, our parameter names, from a pipeline checkpoint's layer files (a tied
    embedding is saved once, by the first stage, and named lm_head.weight too, as a one-process
    checkpoint consolidates). The layer files hold the module's weights as trained:
    fp32 in an fp32 run; in a bf16 run they are the bf16 weights (the fp32 master copies are in the
    optimizer files), upcast here."""
    cfg = ModelConfig.model_validate(manifest["model"])
    state = {}
    for path in sorted(Path(folder).iterdir()):
        match = LAYER_FILE.match(path.name)
        if match:
            for key, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
                state[our_name(int(match.group(1)), key, cfg.n_layers)] = tensor.float()
    if cfg.tie_embeddings and "embed_tokens.weight" in state:
        state["lm_head.weight"] = state["embed_tokens.weight"]  # one tensor under both names, as zero_to_fp32 gives
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in Transformer(cfg).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointDamaged(f"pipeline checkpoint {folder}: layer files miss {missing[:5]} and have "
                                f"unexpected {unexpected[:5]} for a {cfg.n_layers}-layer model")
    wrong = [f"{name} {tuple(state[name].shape)} (want {shape})" for name, shape in expected.items()
             if tuple(state[name].shape) != shape]
    if wrong:
        raise CheckpointDamaged(f"pipeline checkpoint {folder}: shapes differ: {wrong[:5]}")
    return state
