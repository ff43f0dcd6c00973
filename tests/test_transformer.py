"""The transformer, its attention backends and its size arithmetic (CPU; one GPU test)."""

from __future__ import annotations

import math

import pytest
import torch

from models.attention import attention, flash_attn_installed, resolve_backend
from models.sizes import MODEL_SIZES, model_config
from models.transformer import Transformer, ffn_hidden, flops_per_token, non_embedding_params, num_params
from pretrain.config import ModelConfig

VOCAB = 256


def tiny_cfg(**overrides) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, max_seq_len=64, attention="math")
    return ModelConfig(**{**fields, **overrides})


def qkv(B=2, S=17, H=4, KV=4, D=16, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, S, H, D, generator=g).to(device, dtype)
    k = torch.randn(B, S, KV, D, generator=g).to(device, dtype)
    v = torch.randn(B, S, KV, D, generator=g).to(device, dtype)
    return q, k, v


def test_forward_shapes_and_loss_near_uniform():
    torch.manual_seed(0)
    model = Transformer(tiny_cfg())
    idx = torch.randint(0, VOCAB, (3, 20))
    logits, loss = model(idx)
    assert logits.shape == (3, 20, VOCAB) and loss is None
    _, loss = model(idx, torch.randint(0, VOCAB, (3, 20)))
    assert loss.shape == () and abs(loss.item() - math.log(VOCAB)) < 0.1


def test_longer_than_max_seq_len_is_an_error():
    model = Transformer(tiny_cfg(max_seq_len=16))
    with pytest.raises(ValueError, match="max_seq_len 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_tiny_model_overfits_a_sequence():
    torch.manual_seed(0)
    model = Transformer(tiny_cfg(attention="sdpa"))
    seq = torch.randint(0, VOCAB, (1, 33))
    idx, targets = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(50):
        _, loss = model(idx, targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.0 and loss.item() < 0.5, (first, loss.item())


def test_causal_outputs_do_not_see_the_future():
    torch.manual_seed(0)
    model = Transformer(tiny_cfg()).eval()
    idx = torch.randint(0, VOCAB, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % VOCAB
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-3)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_sdpa_matches_math(kv_heads):
    q, k, v = qkv(KV=kv_heads)
    out_math = attention(q, k, v, "math")
    out_sdpa = attention(q, k, v, "sdpa")
    assert out_math.shape == q.shape
    torch.testing.assert_close(out_sdpa, out_math, atol=1e-5, rtol=1e-5)


def test_math_is_causal_softmax_attention_written_out():
    """Position 0 attends only to itself (output = v[0]); GQA head h reads kv head h // 2."""
    q, k, v = qkv(S=5, H=4, KV=2)
    out = attention(q, k, v, "math")
    torch.testing.assert_close(out[:, 0], v[:, 0].repeat_interleave(2, dim=1))
    last = torch.softmax(q[0, -1, 3] @ k[0, :, 1].T / 4.0, dim=-1) @ v[0, :, 1]  # head 3 -> kv 1
    torch.testing.assert_close(out[0, -1, 3], last, atol=1e-5, rtol=1e-5)


def test_model_backends_agree_with_gqa():
    torch.manual_seed(0)
    math_model = Transformer(tiny_cfg(n_kv_heads=2, attention="math")).eval()
    sdpa_model = Transformer(tiny_cfg(n_kv_heads=2, attention="sdpa")).eval()
    sdpa_model.load_state_dict(math_model.state_dict())
    idx = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(sdpa_model(idx)[0], math_model(idx)[0], atol=1e-5, rtol=1e-5)


def test_auto_resolves_to_sdpa_on_cpu():
    assert resolve_backend("auto", "cpu", torch.float32) == "sdpa"
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "sdpa"
    assert resolve_backend("math", "cpu", torch.float32) == "math"


def test_flash_attn_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="flash_attn.*(not installed|only on CUDA)"):
        resolve_backend("flash_attn", "cpu", torch.bfloat16)
    q, k, v = qkv(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="flash_attn"):
        attention(q, k, v, "flash_attn")
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", "cpu", torch.float32)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = Transformer(tiny_cfg(attention="sdpa"))
    ckpt = Transformer(tiny_cfg(attention="sdpa", activation_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    idx, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    for model in (plain, ckpt):
        model(idx, targets)[1].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_compiled_kernels_match_eager():
    """compile="on": norms, RoPE, SwiGLU and the loss run as torch.compile'd fused
    functions (the default on CUDA); same loss and gradients as eager, with GQA."""
    torch.manual_seed(0)
    eager = Transformer(tiny_cfg(n_kv_heads=2, attention="sdpa", compile="off"))
    fused = Transformer(tiny_cfg(n_kv_heads=2, attention="sdpa", compile="on"))
    fused.load_state_dict(eager.state_dict())
    idx, targets = torch.randint(0, VOCAB, (2, 32)), torch.randint(0, VOCAB, (2, 32))
    losses = []
    for model in (eager, fused):
        loss = model(idx, targets)[1]
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(VOCAB)) < 0.5
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for (name, a), (_, b) in zip(eager.named_parameters(), fused.named_parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0, name
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_tied_embeddings_and_init():
    torch.manual_seed(0)
    cfg = tiny_cfg(n_layers=8, d_model=128)
    tied = Transformer(cfg)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert torch.allclose(tied.layers[0].input_layernorm.weight, torch.ones(128))
    assert abs(tied.layers[0].self_attn.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(tied.layers[0].mlp.down_proj.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 x 8)
    untied = Transformer(tiny_cfg(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_num_params_counts_tied_weights_once():
    cfg = tiny_cfg()  # d 64, 4 heads, ffn 256, 2 layers
    per_layer = 4 * 64 * 64 + 3 * 64 * 256 + 2 * 64
    non_embedding = 2 * per_layer + 64
    assert ffn_hidden(cfg) == 256
    assert non_embedding_params(cfg) == non_embedding
    assert num_params(Transformer(cfg), exclude_embeddings=True) == non_embedding
    assert num_params(Transformer(cfg)) == non_embedding + VOCAB * 64
    untied = tiny_cfg(tie_embeddings=False, n_kv_heads=2)
    assert num_params(Transformer(untied)) == non_embedding_params(untied) + 2 * VOCAB * 64
    assert num_params(Transformer(untied), exclude_embeddings=True) == non_embedding_params(untied)


def test_ffn_hidden_rule():
    assert ffn_hidden(tiny_cfg(d_model=4096, n_heads=32)) == 11008  # Llama-2-7B
    assert ffn_hidden(tiny_cfg(d_model=768)) == 2048
    assert ffn_hidden(tiny_cfg(ffn_hidden=100)) == 100


def test_flops_per_token_for_a_known_shape():
    # 125m shape: N = 12 x (4 x 768^2 + 3 x 768 x 2048 + 2 x 768) + 768 = 84,953,856
    cfg = model_config("125m", vocab_size=50_304, max_seq_len=2048)
    assert non_embedding_params(cfg) == 84_953_856
    # plus the output head's matmul, 6 x 50,304 x 768 = 231,800,832
    expected = 6 * (84_953_856 + 50_304 * 768) + 12 * 12 * 2048 * 768
    assert flops_per_token(cfg, seq_len=2048) == expected == 968_016_384
    assert flops_per_token(cfg, seq_len=1024) < expected


def test_model_sizes():
    counts = {name: non_embedding_params(model_config(name, 32_000, 2048)) for name in MODEL_SIZES}
    assert 0.8e6 < counts["tiny"] < 2e6
    assert 8e6 < counts["small"] < 13e6
    assert 0.3e9 < counts["350m"] + 32_000 * 1024 < 0.4e9
    assert 0.9e9 < counts["1b"] < 1.3e9
    seven = model_config("7b", 32_000, 4096)
    assert (seven.n_layers, seven.d_model, seven.n_heads, ffn_hidden(seven)) == (32, 4096, 32, 11008)
    assert 6.5e9 < counts["7b"] + 2 * 32_000 * 4096 < 7e9
    assert model_config("tiny", 100, 32, n_layers=1).n_layers == 1
    with pytest.raises(ValueError, match="known sizes: tiny, small, 125m"):
        model_config("13b", 32_000, 2048)


def test_tiny_size_runs_a_step():
    cfg = model_config("tiny", vocab_size=512, max_seq_len=32)
    model = Transformer(cfg)
    assert 1e6 < num_params(model) < 2e6
    _, loss = model(torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32)))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_gpu_backends_agree_in_bf16(kv_heads):
    q, k, v = qkv(B=2, S=256, H=8, KV=kv_heads, D=64, dtype=torch.bfloat16, device="cuda")
    reference = attention(q, k, v, "math").float()
    backends = ["sdpa"] + (["flash_attn"] if flash_attn_installed() else [])
    assert resolve_backend("auto", "cuda", torch.bfloat16) == ("flash_attn" if flash_attn_installed() else "sdpa")
    for backend in backends:
        out = attention(q, k, v, backend)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2, msg=backend)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_model_auto_matches_math_in_bf16():
    torch.manual_seed(0)
    # auto: flash_attn or SDPA, and the compiled fused functions; the reference is eager math
    ref = Transformer(tiny_cfg(n_kv_heads=2, attention="math", compile="off")).cuda().to(torch.bfloat16)
    auto = Transformer(tiny_cfg(n_kv_heads=2, attention="auto")).cuda().to(torch.bfloat16)
    auto.load_state_dict(ref.state_dict())
    idx = torch.randint(0, VOCAB, (2, 64), device="cuda")
    targets = torch.randint(0, VOCAB, (2, 64), device="cuda")
    outputs = []
    for model in (ref, auto):
        logits, loss = model(idx, targets)
        loss.backward()
        outputs.append((logits.float(), loss.item(), model.lm_head.weight.grad.float()))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=5e-2, rtol=5e-2)
    assert outputs[1][1] == pytest.approx(outputs[0][1], rel=1e-2)
    torch.testing.assert_close(outputs[1][2], outputs[0][2], atol=5e-2, rtol=5e-2)
