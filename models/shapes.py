"""The model config of our family closest to a parameter count: what a scaling plan's N becomes.

A named size of ``models.sizes`` when one is near, else a generated ``LAYERSxWIDTH`` shape;
``shape_mismatch`` says when no config of the family is that N's model.
"""

from __future__ import annotations

import math
from typing import Any

from models.scaling import DEFAULT_ASPECT_RATIO, check_positive, shape_for_params
from models.sizes import MODEL_SIZES, model_config
from pretrain.config import ModelConfig


def total_params(model_cfg) -> int:
    """Parameters with embeddings (counted once when tied), from the shape alone."""
    from models.transformer import non_embedding_params  # here, not at the top: it imports torch

    embeddings = model_cfg.vocab_size * model_cfg.d_model * (1 if model_cfg.tie_embeddings else 2)
    return non_embedding_params(model_cfg) + embeddings


NAMED_SIZE_TOLERANCE = 0.10  # a named size within 10% of the target is preferred over a generated shape


def _generated_shapes(n_params: float, vocab_size: int, seq_len: int, aspect_ratio: float):
    """Shapes with head dim 64 (128 from d_model 2048), widths near ``aspect_ratio`` (x1/4 to x4),
    and the layer count that brings the total closest to ``n_params``."""
    _, width = shape_for_params(n_params, aspect_ratio)
    for d_model in range(64, 16385, 64):
        head_dim = 64 if d_model < 2048 else 128
        if d_model % head_dim or not width / 2.5 <= d_model <= width * 2.5:
            continue
        probe = ModelConfig(vocab_size=vocab_size, n_layers=1, d_model=d_model, n_heads=d_model // head_dim,
                            max_seq_len=seq_len)
        per_layer = total_params(probe.model_copy(update={"n_layers": 2})) - total_params(probe)
        layers = max(1, round((n_params - (total_params(probe) - per_layer)) / per_layer))
        if layers <= 256:
            yield f"{layers}x{d_model}", probe.model_copy(update={"n_layers": layers})


def closest_model_shape(n_params: float, vocab_size: int = 32_000, seq_len: int = 2048,
                        aspect_ratio: float = DEFAULT_ASPECT_RATIO) -> tuple[str, Any]:
    """(name, ModelConfig) of our model family closest to ``n_params`` (with embeddings).

    A named size of ``models.sizes`` within 10% of ``n_params`` wins (the closest one).
    Otherwise a generated shape ``LAYERSxWIDTH`` (head dim 64, 128 from d_model 2048)
    minimising |log(params / n_params)| plus 0.05 per octave that its d_model / n_layers
    is away from ``aspect_ratio``.
    """
    check_positive(n_params, "n_params")

    def error(cfg) -> float:
        return abs(math.log(total_params(cfg) / n_params))

    named = min(((name, model_config(name, vocab_size, seq_len)) for name in MODEL_SIZES), key=lambda x: error(x[1]))
    if error(named[1]) <= math.log(1 + NAMED_SIZE_TOLERANCE):
        return named
    generated = list(_generated_shapes(n_params, vocab_size, seq_len, aspect_ratio)) + [named]
    return min(generated, key=lambda item: error(item[1])
               + 0.05 * abs(math.log2(item[1].d_model / item[1].n_layers / aspect_ratio)))


SHAPE_TOLERANCE = 0.25  # a config more than 25% away from the planned N is not that plan's model


def shape_mismatch(n_params: float, name: str, shape) -> str | None:
    """Why the closest config does not fit a planned N (past either end of the family), or None."""
    params = total_params(shape)
    if abs(math.log(params / n_params)) <= math.log(1 + SHAPE_TOLERANCE):
        return None
    if n_params > params:
        return (f"the plan's N {n_params:.4g} exceeds the largest config ({name}, {params:.4g} parameters; generated "
                f"shapes stop at 256 layers x d_model 16384): no config is proposed")
    return (f"the plan's N {n_params:.4g} is below the smallest config at vocabulary {shape.vocab_size:,} ({name}, "
            f"{params:.4g} parameters with its embeddings): no config is proposed")
