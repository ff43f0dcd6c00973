"""Write a trained model as a Hugging Face ``LlamaForCausalLM`` folder.

Our module names are HF's without the ``model.`` prefix (see models/transformer.py),
and our q/k projections already use HF's rotate_half RoPE layout, so export is a
rename: no permutation of weights. With tied embeddings ``lm_head.weight`` is left
out of the file, as ``save_pretrained`` does; transformers ties it back on load.

The folder is written under a temporary name beside ``out_dir`` and renamed into
place, so a reader never sees half an export. It replaces only an earlier export (its
``info.json`` says ``"stage": "export-hf"``) or an empty folder, unless forced, and never
a folder that holds the export's input (``pretrain.outputs.check_replaceable``).

The tokenizer files declare ``<|pad|>`` as the pad token when the tokenizer has it, pad on
the left (batched generation continues each prompt from its last token) and return only
``input_ids`` and ``attention_mask``, the inputs ``LlamaForCausalLM`` takes.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from models.transformer import ffn_hidden
from pretrain.config import ModelConfig
from pretrain.outputs import check_replaceable, json_field_is
from pretrain.provenance import code_version, replace_dir, write_info_json

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"  # tasks.tokenize.PAD_TOKEN
COMMAND = "export-hf"
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]  # no token_type_ids: LlamaForCausalLM takes none
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DeepSpeed engine
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config(
    cfg: ModelConfig,
    dtype: torch.dtype = torch.float32,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
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
        "pad_token_id": pad_token_id,
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


def _write_tokenizer(folder: Path, tokenizer_file: Path, eos_token: str, pad_token: str | None,
                     max_seq_len: int) -> None:
    shutil.copyfile(tokenizer_file, folder / "tokenizer.json")
    special = {"eos_token": eos_token, **({"pad_token": pad_token} if pad_token else {})}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": max_seq_len,
        "padding_side": "left",
        "model_input_names": MODEL_INPUT_NAMES,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _token_id(tokenizer_file: Path, token: str) -> int | None:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).token_to_id(token)


def is_export(folder: Path) -> bool:
    """True for a folder this module wrote (its info.json names the export-hf stage)."""
    return json_field_is(Path(folder) / "info.json", "stage", COMMAND)


def check_output(out_dir: Path, inputs: Iterable[Path | str] = (), force: bool = False) -> None:
    """Raise OutputRefused unless an export may replace ``out_dir`` (see the module docstring)."""
    check_replaceable(Path(out_dir), COMMAND, is_export, inputs, force, marker="info.json")


def _save_weights(tensors: dict, folder: Path, like: Path) -> None:
    """model.safetensors, with the permissions of ``like`` (safetensors creates its file 0600)."""
    path = folder / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, stat.S_IMODE(like.stat().st_mode))


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
    inputs: Iterable[Path | str] = (),
    force: bool = False,
) -> Path:
    """Write config.json and model.safetensors (and the tokenizer files when
    tokenizer_file is given) so ``LlamaForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)`` load it, and info.json. Returns out_dir.

    eos_token_id defaults to the id of eos_token in the tokenizer, when there is one.
    ``inputs``: what the export was made from (a run folder, its checkpoint): recorded, and
    never replaced; ``force`` replaces a non-empty folder that is not an earlier export.
    """
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(_DTYPE_NAMES.values())}, got {dtype}")
    out_dir = Path(out_dir)
    inputs = [str(path) for path in inputs] + ([str(tokenizer_file)] if tokenizer_file is not None else [])
    check_output(out_dir, inputs, force)
    state_dict = (
        model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    )
    tensors = hf_state_dict(state_dict, cfg, dtype)
    if tokenizer_file is not None and eos_token_id is None:
        eos_token_id = _token_id(Path(tokenizer_file), eos_token)
    pad_token_id = _token_id(Path(tokenizer_file), PAD_TOKEN) if tokenizer_file is not None else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        config = hf_config(cfg, dtype, bos_token_id, eos_token_id, pad_token_id)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _save_weights(tensors, tmp, like=tmp / "config.json")
        if tokenizer_file is not None:
            pad_token = PAD_TOKEN if pad_token_id is not None else None
            _write_tokenizer(tmp, Path(tokenizer_file), eos_token, pad_token, cfg.max_seq_len)
        write_info_json(tmp, stage=COMMAND, code=code_version("models.export_hf"), config=cfg.model_dump(),
                        inputs=inputs, dtype=_DTYPE_NAMES[dtype])
        check_output(out_dir, inputs, force)  # again: the folder may have been filled meanwhile
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
