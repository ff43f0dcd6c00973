"""The GPU measurements of bench/gpu_check.sh, as one process that writes one JSON file.

    python bench/gpu_runs.py OUT_DIR [--steps 20] [--micro 16] [--only attention,mfu,fp8]

1. attention: forward + backward of each attention kernel at B16 H16 S2048 D64 in bf16: the
   flash_attn package's ``flash_attn_func`` (when it imports) and SDPA's cuDNN, flash and
   memory-efficient kernels; milliseconds per call, median of 10 after 3 warm-up calls.
2. mfu: the 350m model, bf16, ZeRO-3, seq 2048, through ``run_training`` (the launcher, as
   ``pretrain train`` runs it): median tokens/s and MFU after step 5, and the attention
   backend that ran (``summary.json``'s ``attention_backend``).
3. fp8: the 1b model for 50 steps in bf16 and with ``fp8`` (torchao float8, rowwise), same
   data and seed: the tokens/s ratio and the largest relative difference of the two loss
   curves. The tokens come from a seeded random bigram chain (each token has 8 likely
   successors), so the loss falls from ln(32000) and the curves say whether FP8 learns as
   bf16 does; uniform random tokens would keep both at ln(32000) and prove nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOCAB = 32_000


def attention_timings() -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from models.attention import flash_attn_installed

    shape = (16, 2048, 16, 64)  # B, S, H, D (flash layout)
    q, k, v = (torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def timed(fn) -> float:
        times = []
        for i in range(13):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn().sum().backward()
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end))
        return round(statistics.median(times), 3)

    out = {"shape": "B16 S2048 H16 D64 bf16, forward+backward, ms"}
    if flash_attn_installed():
        from flash_attn import flash_attn_func

        out["flash_attn"] = timed(lambda: flash_attn_func(q, k, v, causal=True))
    else:
        out["flash_attn"] = None
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                out[f"sdpa_{name.lower()}"] = timed(
                    lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
        except RuntimeError as error:
            out[f"sdpa_{name.lower()}"] = f"unavailable: {str(error)[:120]}"
    return out


def uniform_tokens(folder: Path, tokens: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    return write_tokens(folder, {split: rng.integers(1, VOCAB, n, dtype=np.uint16) for split, n in tokens.items()})


def bigram_tokens(folder: Path, tokens: dict[str, int], successors: int = 8) -> Path:
    """A seeded random chain: each token is followed by one of its ``successors`` fixed tokens."""
    rng = np.random.default_rng(0)
    table = rng.integers(1, VOCAB, (VOCAB, successors), dtype=np.int64)
    arrays = {}
    for split, n in tokens.items():
        picks = rng.integers(0, successors, n)
        out = np.empty(n, dtype=np.int64)
        out[0] = 1
        for i in range(1, n):  # ~1e7 steps: a few seconds
            out[i] = table[out[i - 1], picks[i]]
        arrays[split] = out.astype(np.uint16)
    return write_tokens(folder, arrays)


def write_tokens(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    splits = {}
    for split, array in arrays.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        array.tofile(folder / split / "synthetic.bin")
        splits[split] = [{"file": f"{split}/synthetic.bin", "tokens": int(array.size), "documents": 1}]
    index = {"format": 1, "dtype": "uint16", "vocab_size": VOCAB, "eos_id": 0, "tokenizer": "tokenizer.json",
             "splits": splits, "tokens": {k: v[0]["tokens"] for k, v in splits.items()}, "sources": {}, "seed": 0}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def train_run(data: Path, run: Path, **fields) -> dict:
    from pretrain.config import TrainConfig
    from tasks.train.launch import TrainingFailed, run_training

    cfg = TrainConfig(**{"data_dir": str(data), "output_dir": str(run), "seq_len": 2048, "grad_accum_steps": 1,
                         "warmup_steps": 5, "zero_stage": 3, "precision": "bf16", "num_procs": 1,
                         "checkpoint_every_steps": 10**6, "eval_every_steps": 10**6, "eval_batches": 1,
                         "eval_items": 0, **fields})
    lines: list[str] = []
    started = time.time()
    try:
        summary = run_training(cfg, log_callback=lines.append)
    except TrainingFailed as error:
        return {"failed": str(error)[-2000:], "last_lines": lines[-20:]}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    steady = [r for r in train if r["step"] > 5]
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    return {"median_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
            "median_mfu": round(statistics.median(mfu), 4) if mfu else None,
            "losses": [round(r["loss"], 5) for r in train], "fp8": summary.get("fp8"),
            "attention_backend": summary.get("attention_backend"), "wall_s": round(time.time() - started),
            "fp8_lines": [line for line in lines if "fp8" in line.lower()][:3]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=20, help="steps of the 350m MFU run")
    parser.add_argument("--micro", type=int, default=16, help="micro batch of the 350m MFU run")
    parser.add_argument("--fp8-steps", type=int, default=50)
    parser.add_argument("--fp8-micro", type=int, default=8)
    parser.add_argument("--only", default="attention,mfu,fp8")
    args = parser.parse_args()
    parts, results = args.only.split(","), {}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_results.json"

    def save(name: str, value) -> None:
        results[name] = value
        print(f"== {name}: {json.dumps(value, default=str)}", flush=True)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")  # after each part: a timeout keeps it

    if "attention" in parts:
        save("attention", attention_timings())
    if "mfu" in parts:
        data = uniform_tokens(args.out / "tokens-uniform", {"train": (args.steps + 2) * args.micro * 2049,
                                                            "val": 4 * 2049 * 4})
        save("mfu_350m", train_run(data, args.out / "run-350m", model_size="350m", micro_batch_size=args.micro,
                                   max_steps=args.steps))
    if "fp8" in parts:
        data = bigram_tokens(args.out / "tokens-bigram", {"train": (args.fp8_steps + 2) * args.fp8_micro * 2049,
                                                          "val": 4 * 2049 * 4})
        runs = {name: train_run(data, args.out / f"run-1b-{name}", model_size="1b", micro_batch_size=args.fp8_micro,
                                max_steps=args.fp8_steps, fp8=name == "fp8") for name in ("bf16", "fp8")}
        bf16, fp8 = runs["bf16"], runs["fp8"]
        compared = {}
        if "losses" in bf16 and "losses" in fp8:
            diffs = [abs(a - b) / b for a, b in zip(fp8["losses"], bf16["losses"])]
            compared = {"tokens_per_s_ratio": round(fp8["median_tokens_per_s"] / bf16["median_tokens_per_s"], 3),
                        "max_rel_loss_diff": round(max(diffs), 5), "first_loss": bf16["losses"][0],
                        "start_ln_vocab": round(math.log(VOCAB), 4)}
        save("fp8_1b", {**runs, "compared": compared})
    return 0


if __name__ == "__main__":
    sys.exit(main())
