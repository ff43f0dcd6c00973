#!/usr/bin/env bash
# Every GPU-specific check in one run, for a CUDA machine (the suite never needs one):
#   1. the GPU tests (attention backend parity on CUDA: flash_attn if it imports, SDPA, math; the
#      compiled fused functions against eager);
#   2. bench/gpu_runs.py: attention kernels' forward+backward times (flash_attn against SDPA's),
#      350m bf16 ZeRO-3 tokens/s and MFU with the attention backend that ran, and 1b FP8
#      (torchao float8, rowwise) against bf16: tokens/s and the first 50 steps' losses;
#      everything in $OUT/gpu_results.json, copied to bench/results/gpu-<date>.json;
#   3. (FULL=1) a profile of the 350m step and bench/train.py, ours against HF's Llama.
# Usage (repo root):  bash bench/gpu_check.sh [STEPS] [MICRO_BATCH]
# Offline machines: put wheels for missing packages (flash-attn, torchao, pydantic, deepspeed, ...) in
# .gpu-wheels/ first; they are installed into /tmp/gpu-site and put first on PYTHONPATH.
set -uo pipefail
STEPS=${1:-20}
MICRO=${2:-16}
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
'flash_attn', u.find_spec('flash_attn') is not None, 'torchao', u.find_spec('torchao') is not None,
'deepspeed', u.find_spec('deepspeed') is not None)"
$PY -c "from models.attention import flash_attn_import_error as e; print('flash_attn import:', e() or 'ok')"

echo "== 1. GPU tests (attention parity, fused functions)"
$PY -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_transformer.py 2>&1 | tail -4

echo "== 2. attention timings, 350m MFU ($STEPS steps, micro $MICRO), 1b FP8 vs bf16"
$PY bench/gpu_runs.py "$OUT" --steps "$STEPS" --micro "$MICRO" --only "${ONLY:-attention,mfu,fp8}"
mkdir -p bench/results && cp "$OUT/gpu_results.json" "bench/results/gpu-$(date +%Y-%m-%d).json" && \
  echo "results: bench/results/gpu-$(date +%Y-%m-%d).json"
[ "${FULL:-0}" = 1 ] || { rm -rf "$OUT"/tokens-* "$OUT"/run-*/checkpoints; exit 0; }
echo "== 3. profile: ZeRO-3, 350m, the defaults"
$PY bench/train_profile.py --data "$OUT/tokens-uniform" --size 350m --seq-len 2048 --micro-batch "$MICRO" --rows 14 \
  2>&1 | grep -v -i "warn\|USDT\|return func" | cut -c1-150

echo "== 4. bench/train.py: ours vs HF LlamaForCausalLM, ZeRO-3 bf16, 350m, seq 2048, micro batch $MICRO"
$PY bench/train.py --size 350m --seq-len 2048 --micro-batch "$MICRO" --steps 10 --warmup 3 --rounds 1 \
  --procs 1 --zero-stage 3 --precision bf16 --data "$OUT/tokens-uniform" 2>&1 | tail -6
rm -rf "$OUT"/tokens-* "$OUT"/run-*/checkpoints
