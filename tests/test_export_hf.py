"""Export to a Hugging Face LlamaForCausalLM folder, loaded back with real transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.export_hf import export_hf
from models.transformer import Transformer
from pretrain.config import ModelConfig

transformers = pytest.importorskip("transformers")

VOCAB = 300


def make_model(**overrides) -> tuple[Transformer, ModelConfig]:
    fields = dict(
        vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, max_seq_len=64,
        rope_theta=500_000.0, norm_eps=1e-6, attention="sdpa",
    )  # fmt: skip
    cfg = ModelConfig(**{**fields, **overrides})
    torch.manual_seed(0)
    return Transformer(cfg).eval(), cfg


def load_hf(folder: Path):
    model, info = transformers.LlamaForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def logits_of(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits


@pytest.mark.parametrize(
    "tie, kv_heads",
    [(True, None), (False, None), (True, 2), (False, 1)],
    ids=["tied", "untied", "tied-gqa", "untied-mqa"],
)
def test_hf_model_loads_and_gives_our_logits(tmp_path, tie, kv_heads):
    ours, cfg = make_model(tie_embeddings=tie, n_kv_heads=kv_heads)
    out = export_hf(ours, cfg, tmp_path / "hf")
    hf = load_hf(out)
    assert hf.config.num_key_value_heads == (kv_heads or 4)
    assert hf.config.tie_word_embeddings is tie
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) is tie
    idx = torch.randint(0, VOCAB, (2, 40))
    torch.testing.assert_close(logits_of(hf, idx), logits_of(ours, idx), atol=1e-4, rtol=1e-4)


def test_wrong_rope_theta_would_be_caught(tmp_path):
    """The logits comparison is sensitive to RoPE: a config with another theta disagrees."""
    ours, cfg = make_model()
    export_hf(ours, cfg.model_copy(update={"rope_theta": 10_000.0}), tmp_path / "hf")
    idx = torch.randint(0, VOCAB, (1, 40))
    assert (logits_of(load_hf(tmp_path / "hf"), idx) - logits_of(ours, idx)).abs().max() > 1e-3


def test_files_keys_and_dtype(tmp_path):
    ours, cfg = make_model(tie_embeddings=True)
    export_hf(ours.state_dict(), cfg, tmp_path / "hf", dtype=torch.bfloat16)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (64, 256, 2)
    assert (config["rope_theta"], config["rms_norm_eps"], config["max_position_embeddings"]) == (500_000.0, 1e-6, 64)
    assert config["torch_dtype"] == "bfloat16"
    with safe_open(tmp_path / "hf" / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert "lm_head.weight" not in keys and "model.layers.1.mlp.down_proj.weight" in keys
    assert len(keys) == 2 * 9 + 2
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.dtype == torch.bfloat16


def test_wrapped_state_dict_prefixes_are_stripped(tmp_path):
    ours, cfg = make_model(tie_embeddings=False)
    wrapped = {f"module._orig_mod.{k}": v for k, v in ours.state_dict().items()}
    hf = load_hf(export_hf(wrapped, cfg, tmp_path / "hf"))
    idx = torch.randint(0, VOCAB, (1, 16))
    torch.testing.assert_close(logits_of(hf, idx), logits_of(ours, idx), atol=1e-4, rtol=1e-4)


def test_export_replaces_atomically_and_rejects_a_wrong_config(tmp_path):
    ours, cfg = make_model()
    out = tmp_path / "hf"
    export_hf(ours, cfg, out)
    (out / "stale.txt").write_text("from an older export")
    export_hf(ours, cfg, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match=r"missing \['model.layers.2"):
        export_hf(ours, cfg.model_copy(update={"n_layers": 3}), tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp folders, no partial export


def test_tokenizer_files_load_with_auto_tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))

    ours, cfg = make_model(vocab_size=tok.get_vocab_size())
    out = export_hf(ours, cfg, tmp_path / "hf", tokenizer_file=tmp_path / "tokenizer.json")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == 1
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 1
    ids = hf_tok("the lazy fox").input_ids
    assert ids == tok.encode("the lazy fox").ids and hf_tok.decode(ids) == "the lazy fox"
    assert load_hf(out).config.eos_token_id == 1
