"""Building the model of a run: the Transformer under ZeRO-3's partitioned allocation, its parameter
counts, and FP8 (torchao float8) where the GPU has it. Shared by every parallel layout
(``tasks.train.parallel``) and by bench/train.py."""

from __future__ import annotations

import importlib.util

import torch

from models.transformer import Block, Transformer
from pretrain.config import ModelConfig, TrainConfig


def fp8_unavailable_reason(cfg: TrainConfig, device: torch.device) -> str | None:
    """None when FP8 training (torchao float8) can run here, else why not."""
    if device.type != "cuda":
        return f"not running on CUDA (device {device.type})"
    capability = torch.cuda.get_device_capability(device)
    if capability < (9, 0):
        return f"compute capability {capability[0]}.{capability[1]} < 9.0 (needs Hopper or newer)"
    if cfg.precision != "bf16":
        return f"fp8 matmuls run inside bf16 training; precision is {cfg.precision}"
    if importlib.util.find_spec("torchao") is None:
        te = importlib.util.find_spec("transformer_engine") is not None
        return ("torchao is not importable" + (" (transformer_engine is, but this trainer converts "
                                               "Linear layers with torchao only)" if te else ""))
    return None


def _fp8_filter(module: torch.nn.Module, name: str) -> bool:
    # the output head stays in bf16 (as in torchao's and torchtitan's recipes); fp8 GEMMs need dims % 16
    return name != "lm_head" and all(d % 16 == 0 for d in getattr(module, "ds_shape", module.weight.shape))


def build_model(model_cfg: ModelConfig, ds_config: dict, seed: int, zero_stage: int,
                leaf_layers: bool = True) -> torch.nn.Module:
    """The Transformer, allocated partitioned under zero.Init for ZeRO-3.

    zero.Init partitions each submodule's parameters as soon as its own __init__ returns,
    so an init that the parent module runs afterwards (Transformer.reset_parameters) sees
    empty partitions and changes nothing. The weights are therefore initialized again
    here, from the seed, each module's parameters gathered in turn (a layer at a time,
    never the whole model): every ZeRO stage starts from the same weights.

    ``leaf_layers``: ZeRO-3 then treats each transformer layer as one unit, gathering and
    releasing its parameters together (on one H200, 350m: its per-module hooks made the
    step host-bound at 75-100k tokens/s while the GPU was busy for 158 ms of each step).
    """
    if zero_stage != 3:
        return seeded_model(model_cfg, seed)
    import deepspeed
    import torch._dynamo  # noqa: F401  imported inside zero.Init (which patches Tensor.__new__) it fails to load

    torch.manual_seed(seed)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = Transformer(model_cfg)
    torch.manual_seed(seed)
    model.reset_parameters(lambda params: deepspeed.zero.GatheredParameters(params, modifier_rank=0))
    if leaf_layers:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, [Block])
    return model


def seeded_model(model_cfg: ModelConfig, seed: int) -> Transformer:
    """The whole Transformer with the weights every run draws from ``seed`` (build_model's ZeRO 0-2 path).

    The model-parallel layouts build it whole, then split it: a disabled zero.Init would still
    check the batch against every rank counted as data parallel, so they start here."""
    torch.manual_seed(seed)
    model = Transformer(model_cfg)
    torch.manual_seed(seed)
    model.reset_parameters()
    return model


def parameter_counts(model: torch.nn.Module) -> dict:
    """Parameter elements of the model (total), of this rank's ZeRO-3 partitions (local; all
    of them without ZeRO-3), and held whole between steps (resident: under ZeRO-3 only the
    parameters under ``param_persistence_threshold``; call outside forward/backward)."""
    local = total = resident = 0
    for param in model.parameters():  # a tied parameter is listed once
        total += getattr(param, "ds_numel", param.numel())
        local += param.ds_tensor.numel() if hasattr(param, "ds_tensor") else param.numel()
        resident += param.data.numel()  # 0 for a released ZeRO-3 parameter
    return {"local": local, "total": total, "resident": resident}


def enable_fp8(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, say) -> dict:
    """Convert the Linear layers to torchao float8 training (``cfg.fp8_recipe`` scaling) where that can run.

    Where it cannot, the run continues in ``cfg.precision`` and says why: a line through ``say``
    (the console and train.log) and ``summary.json``'s ``fp8`` record, ``{"requested", "enabled",
    "recipe", "reason"}``."""
    fp8 = {"requested": cfg.fp8, "enabled": False, "recipe": cfg.fp8_recipe if cfg.fp8 else None, "reason": None}
    if not cfg.fp8:
        return fp8
    fp8["reason"] = fp8_unavailable_reason(cfg, device)
    if fp8["reason"] is not None:
        say(f"fp8 requested but not used: {fp8['reason']}; training continues in {cfg.precision}")
        return fp8
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(cfg.fp8_recipe),
                               module_filter_fn=_fp8_filter)
    say(f"fp8: torchao float8 training ({cfg.fp8_recipe} scaling) on the Linear layers (lm_head in bf16)")
    return {**fp8, "enabled": True}
