"""Where a training step's time goes: torch.profiler over a few steps of one process.

Builds the run exactly as ``tasks.train.main`` does (DeepSpeed engine, our optimizer,
the run's data), trains ``--warmup`` untimed steps (compiles happen there), then
profiles ``--steps`` steps and prints the ops with the most device time and the most
host time, the tokens/s of every step, and how many times torch.compile recompiled.

    python bench/train_profile.py --data TOKENS_DIR [--size 350m --seq-len 2048 --micro-batch 16
                                  --zero-stage 3 --compile auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="token shards folder (pretrain tokenize output)")
    parser.add_argument("--size", default="350m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--zero-stage", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29533"}.items():
        os.environ.setdefault(key, value)

    import torch
    import torch._dynamo
    from torch.profiler import ProfilerActivity, profile

    from models.sizes import model_config
    from pretrain.config import TrainConfig
    from tasks.train.data import TokenWindows
    from tasks.train.main import Dist, Log, set_up, train_step

    vocab = TokenWindows(args.data, "train", args.seq_len, 0).vocab_size
    model = model_config(args.size, vocab_size=vocab, max_seq_len=args.seq_len, compile=args.compile)
    with tempfile.TemporaryDirectory(prefix="train-profile-") as tmp:
        cfg = TrainConfig(data_dir=args.data, output_dir=tmp, model=model, seq_len=args.seq_len,
                          micro_batch_size=args.micro_batch, zero_stage=args.zero_stage, precision=args.precision,
                          max_steps=args.warmup + args.steps)
        dist = Dist()
        run = set_up(cfg, Path(tmp), dist, Log(Path(tmp), dist.rank))
        rates = []

        def step() -> None:
            started = time.perf_counter()
            train_step(run.engine, run.stream, run.plan.grad_accum_steps, dist)
            rates.append(round(run.plan.tokens_per_step / (time.perf_counter() - started)))

        for _ in range(args.warmup):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dist.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
    device_key = "self_device_time_total" if dist.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages()
    print(f"{args.size} ZeRO-{args.zero_stage} {args.precision} compile={args.compile}, "
          f"{run.plan.tokens_per_step:,} tokens/step; tokens/s per step: {rates}")
    print(f"recompiles: {torch._dynamo.utils.counters['stats'].get('unique_graphs', 0)} graphs, "
          f"{dict(torch._dynamo.utils.counters['recompiles'])}")
    print(table.table(sort_by=device_key, row_limit=args.rows, max_name_column_width=60))
    if dist.device.type == "cuda":
        print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows // 2, max_name_column_width=60))
    dist.dist.destroy_process_group()


if __name__ == "__main__":
    main()
