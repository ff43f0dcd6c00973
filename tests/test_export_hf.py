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
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "info.json", "model.safetensors"]
    assert json.loads((out / "info.json").read_text())["stage"] == "export-hf"  # what marks it as an export
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


# ---------------------------------------------------------------- a trained model, batched generation


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A tiny model trained a few steps on a real book tokenized by the real tokenize stage, exported."""
    from tiny_run import tiny_book_run

    root = tmp_path_factory.mktemp("trained-export")
    run_dir, model, losses, shards = tiny_book_run(root)
    out = export_hf(model, model.cfg, root / "hf", tokenizer_file=shards / "tokenizer.json", inputs=[run_dir])
    return out, model, losses


def greedy(model, ids: list[int], new_tokens: int, eos_id: int) -> list[int]:
    """Our model's greedy continuation, stopping after EOS."""
    out = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = logits_of(model, torch.tensor([ids + out]))
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == eos_id:
                break
    return out


def test_exported_tokenizer_declares_pad_pads_left_and_a_batch_of_two_prompts_generates(trained_export, ledger):
    out, ours, losses = trained_export
    assert losses[-1] < losses[0] - 0.5  # it did train
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = load_hf(out)
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert hf.config.pad_token_id == tok.pad_token_id and hf.config.eos_token_id == tok.eos_token_id
    assert tok.model_input_names == ["input_ids", "attention_mask"] and tok.padding_side == "left"
    one = tok("It is a truth universally acknowledged", return_tensors="pt")
    assert sorted(one) == ["attention_mask", "input_ids"]  # no token_type_ids for generate() to refuse
    hf.generate(**one, max_new_tokens=2, do_sample=False)

    prompts = ["It is a truth universally acknowledged, that a single man", "Mr. Darcy said"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    lengths = [len(tok(p).input_ids) for p in prompts]
    assert lengths[0] > lengths[1]
    assert batch.attention_mask[1].tolist() == [0] * (lengths[0] - lengths[1]) + [1] * lengths[1]  # padded left
    new = 8
    generated = hf.generate(**batch, max_new_tokens=new, do_sample=False)[:, batch.input_ids.shape[1]:]
    for row, prompt in zip(generated.tolist(), prompts):
        expected = greedy(ours, tok(prompt).input_ids, new, tok.eos_token_id)
        got = row[: len(expected)]
        assert got == expected, (prompt, got, expected)  # the padded prompt continues as it does alone
        assert all(t == tok.pad_token_id for t in row[len(expected):])
    ledger("the exported HF folder: no pad token, token_type_ids from the tokenizer, generate() on a batch",
           "pad <|pad|> declared, left padding, input_ids + attention_mask only; a batch of 2 prompts of "
           "different lengths generates what each prompt generates alone", prompts=len(prompts), new_tokens=new)


def test_exported_files_share_one_mode(trained_export, tmp_path):
    import stat

    out = trained_export[0]
    (tmp_path / "probe").write_text("x")  # what this process's umask gives a new file
    expected = stat.S_IMODE((tmp_path / "probe").stat().st_mode)
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in out.iterdir()}
    assert set(modes) >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "info.json"}
    assert set(modes.values()) == {oct(expected)}, modes
