"""Write a trained model as a Hugging Face ``LlamaForCausalLM`` folder.

Our module names are HF's without the ``model.`` prefix (see models/transformer.py),
and our q/k projections already use HF's rotate_half RoPE layout, so export is a
rename: no permutation of weights. With tied embeddings ``lm_head.weight`` is left
out of the file, as ``save_pretrained`` does; transformers ties it back on load.

The folder is written under a temporary name beside ``out_dir`` and renamed into
place, so a reader never sees half an export.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from models.transformer import ffn_hidden
from pretrain.config import ModelConfig
from pretrain.provenance import replace_dir

EOS_TOKEN = "<|endoftext|>"
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DeepSpeed engine
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config(
    cfg: ModelConfig,
    dtype: torch.dtype = torch.float32,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict:
    """config.json of the LlamaForCausalLM with this shape."""
    dtype_name = _DTYPE_NAMES[dtype]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": ffn_hidden(cfg),
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads or cfg.n_heads,
        "head_dim": cfg.d_model // cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers < 5 reads rope_theta, >= 5 rope_parameters (and converts rope_theta).
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype_name,  # transformers < 5
        "dtype": dtype_name,  # transformers >= 5
        "use_cache": True,
    }


def hf_state_dict(state_dict: Mapping[str, torch.Tensor], cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """Our keys -> HF keys, cast to dtype, each tensor its own contiguous storage."""
    out = {}
    for key, tensor in state_dict.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        if key == "lm_head.weight":
            if cfg.tie_embeddings:
                continue
            hf_key = key
        else:
            hf_key = f"model.{key}"
        out[hf_key] = tensor.detach().to(device="cpu", dtype=dtype).contiguous().clone()
    _check_keys(out, cfg)
    return out


def _expected_keys(cfg: ModelConfig) -> set[str]:
    per_layer = [
        "input_layernorm.weight", "post_attention_layernorm.weight",
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    ]  # fmt: skip
    keys = {f"model.layers.{i}.{name}" for i in range(cfg.n_layers) for name in per_layer}
    keys |= {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_embeddings:
        keys.add("lm_head.weight")
    return keys


def _check_keys(hf_keys: Mapping[str, torch.Tensor], cfg: ModelConfig) -> None:
    expected = _expected_keys(cfg)
    missing, unexpected = sorted(expected - set(hf_keys)), sorted(set(hf_keys) - expected)
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match the config ({cfg.n_layers} layers, tie_embeddings="
            f"{cfg.tie_embeddings}): missing {missing[:5]}, unexpected {unexpected[:5]}"
            " (a ZeRO-3 state dict must be consolidated first)"
        )


def _write_tokenizer(folder: Path, tokenizer_file: Path, eos_token: str, max_seq_len: int) -> None:
    shutil.copyfile(tokenizer_file, folder / "tokenizer.json")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos_token,
        "model_max_length": max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": eos_token}, indent=2) + "\n")


def _token_id(tokenizer_file: Path, token: str) -> int | None:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).token_to_id(token)


def export_hf(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: Path,
    *,
    dtype: torch.dtype = torch.float32,
    tokenizer_file: Path | None = None,
    eos_token: str = EOS_TOKEN,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Path:
    """Write config.json and model.safetensors (and the tokenizer files when
    tokenizer_file is given) so ``LlamaForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)`` load it. Returns out_dir.

    eos_token_id defaults to the id of eos_token in the tokenizer, when there is one.
    """
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(_DTYPE_NAMES.values())}, got {dtype}")
    out_dir = Path(out_dir)
    state_dict = (
        model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    )
    tensors = hf_state_dict(state_dict, cfg, dtype)
    if tokenizer_file is not None and eos_token_id is None:
        eos_token_id = _token_id(Path(tokenizer_file), eos_token)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = hf_config(cfg, dtype, bos_token_id, eos_token_id)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer_file is not None:
            _write_tokenizer(tmp, Path(tokenizer_file), eos_token, cfg.max_seq_len)
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
