"""Named model shapes. Each is a dict of ``ModelConfig`` fields; the vocabulary and
context length come from the tokenizer and the run, so ``model_config`` adds them.

Non-embedding parameters (blocks only; add vocab x d_model, twice when untied):

    tiny    ~1.1M    4 x 128, for CPU tests
    small   ~10.6M   6 x 384
    125m    ~85M     12 x 768, GPT-2 small / GPT-3 125M shape (~124M with a 50k vocab)
    350m    ~308M    24 x 1024, GPT-3 350M shape (~350M with embeddings)
    1b      ~0.99B   22 x 2048, GQA 16/4 heads, TinyLlama-like
    7b      ~6.5B    32 x 4096, Llama-2-7B shape (ffn 11008, untied; ~6.7B with a 32k vocab)
"""

from __future__ import annotations

from typing import Any

from pretrain.config import ModelConfig

MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n_layers": 4, "d_model": 128, "n_heads": 4},
    "small": {"n_layers": 6, "d_model": 384, "n_heads": 6},
    "125m": {"n_layers": 12, "d_model": 768, "n_heads": 12},
    "350m": {"n_layers": 24, "d_model": 1024, "n_heads": 16},
    "1b": {"n_layers": 22, "d_model": 2048, "n_heads": 16, "n_kv_heads": 4},
    "7b": {"n_layers": 32, "d_model": 4096, "n_heads": 32, "tie_embeddings": False},
}


def model_config(size: str, vocab_size: int, max_seq_len: int, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named size; overrides replace any of its fields."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; known sizes: {', '.join(MODEL_SIZES)}")
    fields = {**MODEL_SIZES[size], "vocab_size": vocab_size, "max_seq_len": max_seq_len, **overrides}
    return ModelConfig(**fields)
