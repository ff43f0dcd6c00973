"""FP8 and the attention backend as a run reports them, on a machine without CUDA (the GPU side is
bench/gpu_check.sh): FP8 asked for falls back to the run's precision with the reason said and
recorded; the attention backend that runs is named."""

from __future__ import annotations

import torch

from models.attention import flash_attn_import_error
from models.sizes import model_config
from models.transformer import Transformer
from pretrain.config import TrainConfig
from tasks.train.main import attention_backend
from tasks.train.model_setup import enable_fp8, fp8_unavailable_reason

TINY = model_config("tiny", vocab_size=256, max_seq_len=64)


def test_fp8_on_cpu_falls_back_to_bf16_saying_why():
    said: list[str] = []
    model = Transformer(TINY)
    before = {name: type(module) for name, module in model.named_modules()}
    record = enable_fp8(model, TrainConfig(fp8=True), torch.device("cpu"), said.append)
    assert record == {"requested": True, "enabled": False, "recipe": "rowwise",
                      "reason": "not running on CUDA (device cpu)"}
    assert said == ["fp8 requested but not used: not running on CUDA (device cpu); training continues in bf16"]
    assert {name: type(module) for name, module in model.named_modules()} == before  # no layer converted


def test_fp8_not_asked_for_says_nothing():
    said: list[str] = []
    assert enable_fp8(Transformer(TINY), TrainConfig(), torch.device("cpu"), said.append) == {
        "requested": False, "enabled": False, "recipe": None, "reason": None}
    assert said == []
    assert fp8_unavailable_reason(TrainConfig(fp8=True, fp8_recipe="tensorwise"), torch.device("cpu")) == \
        "not running on CUDA (device cpu)"


def test_the_attention_backend_that_runs_is_named():
    assert attention_backend(TINY, TrainConfig(precision="bf16"), torch.device("cpu")) == "sdpa"
    assert attention_backend(TINY.model_copy(update={"attention": "math"}), TrainConfig(), torch.device("cpu")) == "math"
    reason = flash_attn_import_error()
    assert reason is None or "flash_attn package" in reason
