"""Causal self-attention kernels behind one function.

Every backend takes and returns the flash-attn layout:

    q: (B, S, H, D)    k, v: (B, S, KV, D) with H % KV == 0    ->    out: (B, S, H, D)

Grouped-query attention: query head ``h`` reads key/value head ``h // (H // KV)``
(the grouping of Hugging Face's ``repeat_kv``, flash-attn and SDPA's ``enable_gqa``).
The scale is ``1 / sqrt(D)`` and position ``i`` sees positions ``0..i``.

Backends:
  flash_attn  flash-attn 2 ``flash_attn_func``; CUDA, fp16/bf16, D <= 256.
  sdpa        ``torch.nn.functional.scaled_dot_product_attention``. On CUDA we ask for its
              kernels in the order cuDNN, flash, memory-efficient, math (the first that
              supports the inputs runs): on an H200, at B16 H16 S2048 D64 in bf16, cuDNN's
              forward and backward took 1.61 ms against 2.38 ms for SDPA's flash kernel
              (bench/gpu_check.sh). PyTorch's own default order puts flash first.
  math        softmax(Q K^T / sqrt(D) + causal mask) V written out, accumulated in fp32;
              the reference the others are tested against.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash_attn", "sdpa", "math")
_HALF_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256


@functools.cache
def flash_attn_import_error() -> str | None:
    """None when the flash_attn package imports; else why not (absent, or built for another torch/CUDA)."""
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash_attn package is not installed (pip install 'flash-attn>=2.6', extra 'gpu')"
    try:
        from flash_attn import flash_attn_func  # noqa: F401  (its CUDA extension loads here)
    except (ImportError, OSError) as error:  # e.g. an undefined symbol: a wheel built for another torch
        return f"the flash_attn package is installed but does not import ({type(error).__name__}: {error})"
    return None


def flash_attn_installed() -> bool:
    return flash_attn_import_error() is None


def _sdpa_available() -> bool:
    return hasattr(F, "scaled_dot_product_attention")


def _flash_unavailable_reason(device: torch.device, dtype: torch.dtype, head_dim: int | None) -> str | None:
    if flash_attn_import_error() is not None:
        return flash_attn_import_error()
    if device.type != "cuda":
        return f"it runs only on CUDA, and the tensors are on {device.type}"
    if dtype not in _HALF_DTYPES:
        return f"it needs float16 or bfloat16 tensors, got {dtype} (train with bf16/fp16 precision)"
    if head_dim is not None and head_dim > FLASH_MAX_HEAD_DIM:
        return f"head dim {head_dim} is over its limit of {FLASH_MAX_HEAD_DIM}"
    return None


def resolve_backend(
    requested: str, device: torch.device | str, dtype: torch.dtype, head_dim: int | None = None
) -> str:
    """The backend that will run: ``auto`` picks flash_attn, else sdpa, else math.

    An explicitly requested backend that cannot run here raises ``ValueError`` saying why.
    """
    device = torch.device(device)
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {list(BACKENDS)}")
    if requested == "auto":
        if _flash_unavailable_reason(device, dtype, head_dim) is None:
            return "flash_attn"
        return "sdpa" if _sdpa_available() else "math"
    if requested == "flash_attn":
        reason = _flash_unavailable_reason(device, dtype, head_dim)
        if reason is not None:
            raise ValueError(f"attention backend 'flash_attn' was requested but cannot run: {reason}")
    if requested == "sdpa" and not _sdpa_available():
        raise ValueError(
            f"attention backend 'sdpa' was requested but torch {torch.__version__} "
            "has no scaled_dot_product_attention"
        )
    return requested


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"expected q (B, S, H, D) and k, v (B, S, KV, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")


def _flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, dropout_p=0.0, causal=True)  # (B, S, H, D)


@functools.cache
def _cuda_sdpa_order():
    from torch.nn.attention import SDPBackend

    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH]


def _sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, D), (B, KV, S, D)
    gqa = q.shape[1] != k.shape[1]
    if q.is_cuda:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(_cuda_sdpa_order(), set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # (B, H, S, D)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # (B, H, S, D)
    return out.transpose(1, 2)  # (B, S, H, D)


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    B, S, H, D = q.shape
    group = H // k.shape[2]
    k = k.repeat_interleave(group, dim=2)  # (B, S, H, D)
    v = v.repeat_interleave(group, dim=2)  # (B, S, H, D)
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, S, D) fp32
    scores = qf @ kf.transpose(-2, -1) / math.sqrt(D)  # (B, H, S, S)
    future = torch.ones(S, S, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    out = scores.softmax(dim=-1) @ vf  # (B, H, S, D)
    return out.transpose(1, 2).to(q.dtype)  # (B, S, H, D)


_KERNELS = {"flash_attn": _flash_attention, "sdpa": _sdpa_attention, "math": _math_attention}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Causal self-attention: q (B, S, H, D), k/v (B, S, KV, D) -> (B, S, H, D)."""
    _check_shapes(q, k, v)
    backend = resolve_backend(backend, q.device, q.dtype, q.shape[-1])
    return _KERNELS[backend](q, k, v)
