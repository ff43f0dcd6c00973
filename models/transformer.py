"""A Llama-style decoder-only transformer in plain PyTorch.

RMSNorm before each sub-layer, rotary position embeddings, SwiGLU MLP, optional
grouped-query attention, optional tied input/output embeddings. Module names are
those of Hugging Face's ``LlamaForCausalLM`` without its ``model.`` prefix
(``embed_tokens``, ``layers.N.self_attn.q_proj``, ..., ``norm``; ``lm_head`` as is),
so ``models/export_hf.py`` only renames keys, and RoPE follows HF's ``rotate_half``
convention so the exported model gives the same logits.

Shapes: B batch, T sequence, C d_model, H query heads, KV key/value heads,
D head dim (C // H), F SwiGLU width, V vocabulary.
Parallelism and DeepSpeed wrapping live elsewhere; this file knows nothing of them.

The elementwise work between the matmuls (RMSNorm with its residual add, RoPE on q
and k, the SwiGLU gate, the fp32 cross entropy) is written as plain functions of
tensors. With ``ModelConfig.compile`` (by default on CUDA) each is compiled by
``torch.compile`` into one fused kernel forward and one backward, instead of the
several full passes over the activations that eager PyTorch makes. Only these
functions are compiled, never a module, so DeepSpeed's ZeRO-3 hooks (which gather a
module's parameters as it is called) stay outside the compiled code.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.attention import attention
from pretrain.config import ModelConfig

INIT_STD = 0.02
FFN_MULTIPLE = 256


def ffn_hidden(cfg: ModelConfig) -> int:
    """SwiGLU width: ``cfg.ffn_hidden`` if set, else 8/3 x d_model rounded up to a multiple of 256.

    The 8/3 keeps the three SwiGLU matrices at the parameter count of a 4x GELU MLP
    (Llama-2-7B: d_model 4096 -> 11008).
    """
    if cfg.ffn_hidden is not None:
        return cfg.ffn_hidden
    hidden = int(8 * cfg.d_model / 3)
    return FFN_MULTIPLE * math.ceil(hidden / FFN_MULTIPLE)


def rope_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (T, D) in fp32 for positions start..start+T-1, laid out as HF Llama does:
    frequencies repeated twice."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    positions = torch.arange(start, start + seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)  # (T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) by position; cos/sin (T, D)."""
    cos = cos.to(x.dtype)[None, :, None, :]  # (1, T, 1, D)
    sin = sin.to(x.dtype)[None, :, None, :]
    return x * cos + _rotate_half(x) * sin


def _rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight, normalised in fp32 (HF LlamaRMSNorm's order of casts)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def _add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """(x + delta, rms_norm(x + delta)): the residual add fused with the next sub-layer's norm."""
    x = x + delta
    return x, _rms_norm(x, weight, eps)


def _swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy in fp32 over (N, V) logits; target -100 is ignored."""
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


_EAGER = {"rope_qk": _rope_qk, "rms_norm": _rms_norm, "add_rms_norm": _add_rms_norm,
          "swiglu": _swiglu, "cross_entropy": _cross_entropy}
_COMPILED: dict[str, object] = {}


def compile_enabled(mode: str, device: torch.device) -> bool:
    """Whether ``ModelConfig.compile`` = mode compiles the fused functions for tensors on device.

    "on" always does (a failure to compile is an error); "auto" does on CUDA when a probe
    compile works there, and otherwise warns once and stays eager."""
    if mode == "on":
        return True
    return mode == "auto" and device.type == "cuda" and _compile_works(device.type)


@functools.cache
def _compile_works(device_type: str) -> bool:
    """Compile and run (forward and backward) a small fused function once on device_type."""
    try:
        x = torch.randn(8, 32, device=device_type, requires_grad=True)
        probe = torch.compile(_swiglu, dynamic=False)
        probe(x, x).sum().backward()
        return True
    except Exception as error:  # no Triton, no C compiler, an unsupported GPU, ...
        warnings.warn(f"torch.compile does not work on {device_type} here ({type(error).__name__}: {error}); "
                      "the model's fused functions run eagerly (slower). Set model.compile='on' to see the error.",
                      stacklevel=2)
        return False


def kernel(name: str, mode: str, device: torch.device):
    """The function ``name``: compiled (once per process, shapes static) or eager."""
    if not compile_enabled(mode, device):
        return _EAGER[name]
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_EAGER[name], dynamic=False)
    return _COMPILED[name]


class RMSNorm(nn.Module):
    """x / rms(x) * weight, normalised in fp32; with ``residual``, returns (x + residual, its norm)."""

    def __init__(self, dim: int, eps: float, compile_mode: str = "off"):
        super().__init__()
        self.eps = eps
        self.compile_mode = compile_mode
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return kernel("rms_norm", self.compile_mode, x.device)(x, self.weight, self.eps)
        return kernel("add_rms_norm", self.compile_mode, x.device)(x, residual, self.weight, self.eps)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.backend = cfg.attention
        self.compile_mode = cfg.compile
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.attend = attention  # attend(q, k, v, backend); a layout may put a distributed attention here

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, KV, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, KV, D)
        q, k = kernel("rope_qk", self.compile_mode, x.device)(q, k, cos, sin)
        y = self.attend(q, k, v, self.backend)  # (B, T, H, D)
        return self.o_proj(y.reshape(B, T, self.n_heads * self.head_dim))  # (B, T, C)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = ffn_hidden(cfg)
        self.compile_mode = cfg.compile
        self.gate_proj = nn.Linear(cfg.d_model, hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = kernel("swiglu", self.compile_mode, x.device)(self.gate_proj(x), self.up_proj(x))  # (B, T, F)
        return self.down_proj(gated)  # (B, T, C)


class Block(nn.Module):
    """One layer. It takes and returns the residual stream x and ``delta``, the previous
    layer's MLP output not yet added to it, so that the add runs fused with this layer's
    first norm (None for the first layer)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.compile)
        self.self_attn = SelfAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.compile)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if delta is None:
            h = self.input_layernorm(x)  # (B, T, C)
        else:
            x, h = self.input_layernorm(x, delta)  # x + delta, and its norm
        x, h = self.post_attention_layernorm(x, self.self_attn(h, cos, sin))  # (B, T, C) each
        return x, self.mlp(h)  # the stream, and the MLP output still to add


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.d_model // cfg.n_heads
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.compile)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.position_offset = 0  # position of idx's first token (a sequence-parallel rank's slice starts later)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def reset_parameters(self, gathered=None) -> None:
        """normal(0, 0.02); the projections that write into the residual stream (o_proj,
        down_proj) get 0.02 / sqrt(2 x n_layers) so the stream's variance does not grow
        with depth (GPT-2 / nanoGPT).

        ``gathered(params)``, when given, is a context manager that makes a module's
        partitioned parameters whole while they are set (DeepSpeed ZeRO-3's
        ``GatheredParameters``): one module at a time, so no rank ever holds the whole
        model. The modules are visited in the same order either way, so every ZeRO stage
        draws the same weights from the same seed."""
        residual_std = INIT_STD / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if not isinstance(module, (nn.Linear, nn.Embedding, RMSNorm)):
                continue
            with gathered([module.weight]) if gathered else contextlib.nullcontext():
                if isinstance(module, RMSNorm):
                    nn.init.ones_(module.weight)
                else:
                    std = residual_std if name.endswith(("o_proj", "down_proj")) else INIT_STD
                    nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross entropy over
        tokens when targets (B, T) are given (target -100 is ignored)."""
        B, T = idx.shape
        start = self.position_offset
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {start + T} is over max_seq_len {self.cfg.max_seq_len}")
        cos, sin = rope_cos_sin(T, self.head_dim, self.cfg.rope_theta, idx.device, start)  # (T, D) each
        x, delta = self.embed_tokens(idx), None  # (B, T, C)
        use_checkpoint = self.cfg.activation_checkpointing and torch.is_grad_enabled()
        for block in self.layers:
            if use_checkpoint:
                x, delta = checkpoint(block, x, delta, cos, sin, use_reentrant=False)
            else:
                x, delta = block(x, delta, cos, sin)  # (B, T, C) each
        _, h = self.norm(x, delta)  # the last residual add, and the final norm
        logits = self.lm_head(h)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = kernel("cross_entropy", self.cfg.compile, idx.device)(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss


def num_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Parameter count, a tied lm_head counted once. exclude_embeddings drops
    embed_tokens and an untied lm_head: the non-embedding N of scaling-law papers."""
    total = 0
    for name, param in model.named_parameters():  # shared parameters are listed once
        if exclude_embeddings and name.split(".")[-2] in ("embed_tokens", "lm_head"):
            continue
        total += param.numel()
    return total


def non_embedding_params(cfg: ModelConfig) -> int:
    """Parameters of the blocks and the final norm, from the shape alone."""
    head_dim = cfg.d_model // cfg.n_heads
    kv_dim = (cfg.n_kv_heads or cfg.n_heads) * head_dim
    attn = cfg.d_model * (cfg.d_model + 2 * kv_dim) + cfg.d_model * cfg.d_model
    mlp = 3 * cfg.d_model * ffn_hidden(cfg)
    norms = 2 * cfg.d_model
    return cfg.n_layers * (attn + mlp + norms) + cfg.d_model


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token, forward plus backward:

        6 * (N + V * d_model)  +  12 * n_layers * seq_len * d_model

    N is the non-embedding parameter count; each weight does one multiply-add (2 FLOPs)
    per token in the forward and twice that in the backward: 6. ``V * d_model`` is the
    output head's matmul, done whether or not it shares the embedding matrix (the
    embedding lookup itself is not a matmul): as in Megatron-LM's count (Narayanan et
    al. 2021, logit layer included) and nanoGPT's, whose N includes the tied token
    embedding. The last term is attention's QK^T and AV: 2 matmuls x 2 FLOPs x seq_len x
    d_model per layer forward, x3 with the backward, counting the full (non-causal)
    score matrix as PaLM's MFU (Chowdhery et al. 2022, appendix B) and nanoGPT do.
    """
    head = cfg.vocab_size * cfg.d_model
    return 6.0 * (non_embedding_params(cfg) + head) + 12.0 * cfg.n_layers * seq_len * cfg.d_model
