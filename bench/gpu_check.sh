#!/usr/bin/env bash
# Every GPU-specific check in one run, for a CUDA machine (the suite never needs one):
#   1. attention backend parity on CUDA (flash_attn if installed, SDPA, math) in bf16, and the
#      compiled fused functions against eager, with the time of each SDPA kernel at the 350m shape;
#   2. a short bf16 ZeRO-3 run of the ~350M model at sequence 2048 through our launcher
#      (synthetic token shards: throughput does not depend on the text), printing tokens/s and MFU,
#      then the same with the fused functions eager, and plain data parallel (ZeRO-0);
#      whether FP8 is available;
#   3. bench/train.py: our model against HF's LlamaForCausalLM, same DeepSpeed ZeRO-3 config.
# Usage (repo root):  bash bench/gpu_check.sh [STEPS] [MICRO_BATCH]
# Offline machines: put wheels for missing packages (pydantic, deepspeed, ...) in .gpu-wheels/ first.
set -uo pipefail
STEPS=${1:-20}
MICRO=${2:-16}
VARIANTS=${VARIANTS:-zero3,zero0,zero3-eager}
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
if [ -d .gpu-wheels ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site .gpu-wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu-site:.
else
  export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1 TORCH_LOGS=${TORCH_LOGS:-recompiles}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, importlib.util as u; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'flash_attn', u.find_spec('flash_attn') is not None, 'deepspeed', u.find_spec('deepspeed') is not None)"

echo "== 1. attention parity and fused functions (bf16, CUDA)"
$PY -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_transformer.py 2>&1 | tail -4
$PY - <<'PY'
import torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
q, k, v = (torch.randn(16, 16, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
    try:
        with sdpa_kernel(getattr(SDPBackend, name)):
            for i in range(13):
                if i == 3:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
            end.record(); torch.cuda.synchronize()
        print(f"sdpa {name}: {start.elapsed_time(end) / 10:.2f} ms fwd+bwd (B16 H16 S2048 D64)", flush=True)
    except Exception as error:
        print(f"sdpa {name}: unavailable ({type(error).__name__})", flush=True)
PY

echo "== 2. bf16 350m, seq 2048, micro batch $MICRO, $STEPS steps"
$PY - "$OUT" "$STEPS" "$MICRO" "$VARIANTS" <<'PY'
import json, sys, time
from pathlib import Path

import numpy as np

from models.sizes import model_config
from pretrain.config import TrainConfig
from tasks.train.launch import TrainingFailed, run_training

out, steps, micro = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
data = out / "tokens"
rng = np.random.default_rng(0)
splits = {}
for split, n in (("train", (steps + 2) * micro * 2049 * 2), ("val", 8 * 2049 * 4)):
    (data / split).mkdir(parents=True, exist_ok=True)
    rng.integers(1, 32000, n, dtype=np.uint16).tofile(data / split / "synthetic.bin")
    splits[split] = [{"file": f"{split}/synthetic.bin", "tokens": n, "documents": 1}]
index = {"format": 1, "dtype": "uint16", "vocab_size": 32000, "eos_id": 0, "tokenizer": "tokenizer.json",
         "splits": splits, "tokens": {k: v[0]["tokens"] for k, v in splits.items()}, "sources": {}, "seed": 0}
(data / "index.json").write_text(json.dumps(index))
eager = model_config("350m", vocab_size=32000, max_seq_len=2048, compile="off")
variants = {  # the defaults (fused functions compiled on CUDA), plain data parallel, the defaults eager
    "zero3": {"fp8": True},
    "zero0": {"zero_stage": 0},
    "zero3-eager": {"model": eager},
}
variants = {name: variants[name] for name in (sys.argv[4].split(",") if len(sys.argv) > 4 else variants)}
results = {}
for name, extra in variants.items():
    run = out / f"run-{name}"
    cfg = TrainConfig(**{"data_dir": str(data), "output_dir": str(run), "model_size": "350m", "seq_len": 2048,
                         "micro_batch_size": micro, "grad_accum_steps": 1, "max_steps": steps, "warmup_steps": 5,
                         "zero_stage": 3, "precision": "bf16", "num_procs": 1, "checkpoint_every_steps": 10**6,
                         "eval_every_steps": 10**6, "eval_batches": 1, **extra})
    started = time.time()
    lines = []
    try:
        summary = run_training(cfg, resume=False, log_callback=lines.append)
    except TrainingFailed as error:
        print(name, "FAILED", error, *lines[-15:], sep="\n", flush=True)
        continue
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r.get("tokens_per_s") and r.get("step", 0) > 5]
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    results[name] = {"median_tokens_per_s": round(float(np.median([r["tokens_per_s"] for r in steady]))),
                     "median_mfu": round(float(np.median(mfu)), 4) if mfu else None,
                     "final_loss": summary.get("final_loss"), "fp8": summary.get("fp8"),
                     "wall_s": round(time.time() - started), "flops_per_token": summary.get("flops_per_token"),
                     "tokens_per_s_by_step": [round(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")],
                     "recompile_log_lines": sum("ecompil" in line for line in lines)}
    print(name, json.dumps(results[name], default=str), next((l for l in lines if "fused functions" in l), ""),
          sep="\n  ", flush=True)
(out / "gpu_results.json").write_text(json.dumps(results, indent=2, default=str))
PY

echo "== 3. profile: ZeRO-3, 350m, the defaults"
$PY bench/train_profile.py --data "$OUT/tokens" --size 350m --seq-len 2048 --micro-batch "$MICRO" --rows 14 \
  2>&1 | grep -v -i "warn\|USDT\|return func" | cut -c1-150

echo "== 4. bench/train.py: ours vs HF LlamaForCausalLM, ZeRO-3 bf16, 350m, seq 2048, micro batch $MICRO"
$PY bench/train.py --size 350m --seq-len 2048 --micro-batch "$MICRO" --steps 10 --warmup 3 --rounds 1 \
  --procs 1 --zero-stage 3 --precision bf16 --data "$OUT/tokens" 2>&1 | tail -6
rm -rf "$OUT"/tokens "$OUT"/run-*/checkpoints
