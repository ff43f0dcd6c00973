"""TrainConfig -> the DeepSpeed config dict, the optimizer and the learning-rate schedule.

The DeepSpeed JSON is generated here and nowhere else (never hand-edited). The
optimizer is ours, not DeepSpeed's ``"optimizer"`` section, and so is the schedule:
``lr_at(step)`` is written into the optimizer's param groups before every step, so a
resumed run gets the same learning rates from the step number alone.

Weight decay: matrices (every parameter with 2 or more dimensions: the projections,
and the token embedding, which is also the output head when tied) are decayed, as in
GPT-3 and nanoGPT; 1-D parameters (RMSNorm gains, biases) are not. Under ZeRO-3 a
parameter's local tensor is a flat partition, so the shape is read from ``ds_shape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pretrain.config import ModelConfig, TrainConfig

STEPS_PER_PRINT = 10**9  # we print our own metrics; keep DeepSpeed's step logging quiet


class BatchConfigError(ValueError):
    """micro batch x accumulation x world size does not give the global batch."""


@dataclass(frozen=True)
class BatchPlan:
    micro_batch_size: int
    grad_accum_steps: int
    world_size: int  # data-parallel replicas: the ranks / (tensor x sequence x pipeline)
    seq_len: int
    model_parallel: int = 1  # ranks per replica

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def describe(self) -> str:
        replicas = (f"world_size {self.world_size}" if self.model_parallel == 1 else
                    f"data-parallel size {self.world_size} (world {self.world_size * self.model_parallel} / "
                    f"{self.model_parallel} ranks per model)")
        return (f"global batch {self.global_batch_size} sequences = micro_batch_size {self.micro_batch_size}"
                f" x grad_accum_steps {self.grad_accum_steps} x {replicas};"
                f" x seq_len {self.seq_len} = {self.tokens_per_step:,} tokens per step")


def batch_plan(cfg: TrainConfig, world_size: int) -> BatchPlan:
    """Check micro x accum x data-parallel size = global batch (when a global batch is given); name every factor.

    The data-parallel size is world_size / (tensor x sequence x pipeline): the ranks that split one
    model read the same sequences."""
    from tasks.train.parallel.layout import data_parallel_size

    data = data_parallel_size(cfg, world_size)
    replicas = "world_size" if data == world_size else "data-parallel size"
    plan = BatchPlan(cfg.micro_batch_size, cfg.grad_accum_steps, data, cfg.seq_len, world_size // data)
    wanted = cfg.global_batch_size
    if wanted is not None and wanted != plan.global_batch_size:
        per_step = cfg.micro_batch_size * data
        hint = (f"; grad_accum_steps={wanted // per_step} would match" if wanted % per_step == 0
                else f"; {wanted} is not a multiple of micro_batch_size x {replicas} = {per_step}")
        raise BatchConfigError(
            f"global_batch_size {wanted} != micro_batch_size {cfg.micro_batch_size} x grad_accum_steps "
            f"{cfg.grad_accum_steps} x {replicas} {data} = {plan.global_batch_size} sequences "
            f"(seq_len {cfg.seq_len}){hint}")
    return plan


def _zero_section(cfg: TrainConfig, model: ModelConfig) -> dict:
    zero: dict = {
        "stage": cfg.zero_stage,
        "overlap_comm": cfg.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": cfg.reduce_bucket_size,
    }
    if cfg.zero_stage == 3:
        zero.update({
            # Prefetch several layers ahead and keep vectors and small matrices whole (see
            # TrainConfig for the measurement behind the defaults).
            "stage3_prefetch_bucket_size": cfg.prefetch_bucket_size,
            "stage3_param_persistence_threshold": cfg.param_persistence_threshold,
            "stage3_gather_16bit_weights_on_model_save": True,
        })
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    elif cfg.offload_params:
        raise ValueError(f"offload_params needs zero_stage 3 (got zero_stage {cfg.zero_stage})")
    if cfg.offload_optimizer:
        if cfg.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3 (got 0)")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return zero


def _precision_section(precision: str) -> dict:
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp16":
        # loss_scale 0 = dynamic: start at 2**16, halve on overflow, double after 1000 clean steps
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                         "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}}
    return {}


def deepspeed_config(cfg: TrainConfig, world_size: int, model: ModelConfig) -> dict:
    """The DeepSpeed config dict of a run (raises BatchConfigError on inconsistent batch sizes)."""
    plan = batch_plan(cfg, world_size)
    return {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum_steps,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": _zero_section(cfg, model),
        **_precision_section(cfg.precision),
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }


# ---------------------------------------------------------------- optimizer and schedule


def _shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", param.shape))  # ZeRO-3: the full shape, not the partition's


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decayed, vectors (norm gains, biases) not."""
    decay, no_decay = [], []
    for param in model.parameters():  # a tied parameter is listed once
        if param.requires_grad:
            (decay if len(_shape(param)) >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over our param groups; DeepSpeed's CPU Adam (AdamW mode) when the optimizer is offloaded."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=cfg.betas, adamw_mode=True)
    # The fused CUDA kernel does the whole update in a few launches; CPU keeps the default.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8, fused=torch.cuda.is_available())


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup_steps``, then
    cosine from ``lr`` down to ``lr x min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
