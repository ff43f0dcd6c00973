"""The training entry point that the launcher runs in every process:

    python -m tasks.train.main --config RUN_DIR/train_config.json [--resume]

Every rank: init distributed (gloo on CPU, nccl on CUDA), seed, build the model
(allocated partitioned under ``deepspeed.zero.Init`` for ZeRO-3), our optimizer,
``deepspeed.initialize``, then the loop. Rank 0 writes RUN_DIR/metrics.jsonl (one JSON
object per line, ``kind`` train or eval), prints the same to the console, and at the
end writes RUN_DIR/summary.json and RUN_DIR/loss.png. An eval line has the validation loss
and, unless ``eval_items`` is 0, the in-loop benchmark scores (``tasks.train.benchmarks``).

Checkpoints: RUN_DIR/checkpoints/step<N>, every ``checkpoint_every_steps`` and at the
end, the newest ``keep_checkpoints`` kept. ``--resume`` continues from the newest intact one
(a newer one whose files do not match its manifest is skipped, with a line saying why):
model, optimizer, the data position and the step come back, and the learning rate is
a function of the step, so the resumed steps are those of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.scaling import PEAK_BF16_FLOPS
from models.transformer import compile_enabled, flops_per_token
from pretrain.config import ModelConfig, TrainConfig
from pretrain.provenance import atomic_write_text
from tasks.train.benchmarks import Benchmarks, console_line, load_benchmarks
from tasks.train.checkpoint import (
    COMPLETE_MARKER, CheckpointDamaged, checkpoint_root, file_sizes, newest_intact_checkpoint, prune_checkpoints,
    tag_for,
)
from tasks.train.data import TokenWindows, TrainStream
from tasks.train.ds_config import BatchPlan, batch_plan, deepspeed_config, lr_at, set_lr
from tasks.train.launch import RANK_ERRORS_DIR
from tasks.train.model_setup import build_model, enable_fp8, parameter_counts  # noqa: F401  (bench/train.py)
from tasks.train.parallel import check_layout, strategy_for
from tasks.train.parallel.strategy import Strategy
from tasks.train.preflight import TrainConfigError, resolve_model_config  # noqa: F401  (bench/train.py imports it here)

# Errors a rank raises that another attempt would raise again (a bad config, data or checkpoint):
# the launcher is told through RUN_DIR/rank_errors/ and does not retry them.
DETERMINISTIC_ERRORS = (TrainConfigError, CheckpointDamaged, ValueError, TypeError, KeyError, IndexError,
                        FileNotFoundError, NotImplementedError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="RUN_DIR/train_config.json (a TrainConfig)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; unused")
    return parser.parse_args(argv)


def load_train_config(path: str | Path) -> TrainConfig:
    return TrainConfig.model_validate_json(Path(path).read_text())


class Dist:
    """This process's place: rank, world size, device; collectives that work on gloo and nccl."""

    def __init__(self):
        import deepspeed
        import torch.distributed as dist

        self.cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"
        if self.cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        deepspeed.init_distributed(dist_backend="nccl" if self.cuda else "gloo")
        self.dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")

    def mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def gather(self, obj) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.dist.barrier()


class Log:
    """Rank 0 writes metrics.jsonl and the console; other ranks stay quiet."""

    def __init__(self, run_dir: Path, rank: int):
        self.path, self.on = run_dir / "metrics.jsonl", rank == 0

    def say(self, message: str) -> None:
        if self.on:
            print(message, flush=True)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (written before a crash, redone on resume)."""
        if self.on and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def record(self, **fields) -> None:
        if self.on:
            with self.path.open("a") as out:
                out.write(json.dumps(fields) + "\n")


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def train_step(engine, stream: TrainStream, accum: int, dist: Dist) -> float:
    """One data-parallel optimizer step (bench/train.py's entry; runs use ``Strategy.train_step``)."""
    total = 0.0
    for _ in range(accum):
        x, y = stream.next_batch()  # (B, T) each
        _, loss = engine(x.to(dist.device), y.to(dist.device))
        engine.backward(loss)
        engine.step()
        total += loss.item()
    return dist.mean(total / accum)


def eval_point(run: Setup, cfg: TrainConfig, step: int, dist: Dist, log: Log) -> tuple[float, dict | None]:
    """The validation loss and the in-loop benchmark scores (None when none are scored), recorded as
    the step's eval line."""
    val_loss = run.strategy.evaluate(run.engine, run.val_windows)
    started = time.perf_counter()
    scored = {} if run.benchmarks is None else run.strategy.score_benchmarks(run.engine, run.benchmarks)
    log.record(kind="eval", step=step, val_loss=val_loss, **scored)
    log.say(f"step {step} val_loss {val_loss:.4f}")
    if not scored:
        return val_loss, None
    log.say(f"{console_line(step, scored)} ({time.perf_counter() - started:.1f} s)")
    return val_loss, {"step": step, "tasks": scored["benchmarks"], "centered": scored["centered"]}


def save_checkpoint(engine, run_dir: Path, step: int, stream: TrainStream, cfg: TrainConfig, model_cfg: ModelConfig,
                    dist: Dist, log: Log, parallel: dict | None = None):
    root, tag = checkpoint_root(run_dir), tag_for(step)
    client = {"step": step, "data": stream.state_dict(), "config": cfg.model_dump(mode="json"),
              "parallel": parallel, "world_size": dist.world_size}
    if dist.rank == 0:
        (root / tag / COMPLETE_MARKER).unlink(missing_ok=True)  # an older save of this tag is no longer complete
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state=client)
    dist.barrier()
    if dist.rank == 0:
        manifest = {**client, "model": model_cfg.model_dump(mode="json"), "files": file_sizes(root / tag)}
        atomic_write_text(root / tag / COMPLETE_MARKER, json.dumps(manifest, indent=2) + "\n")  # written last
        removed = prune_checkpoints(root, cfg.keep_checkpoints)
        log.say(f"checkpoint {root / tag}" + (f" (removed {', '.join(p.name for p in removed)})" if removed else ""))
    dist.barrier()


def resume(engine, run_dir: Path, stream: TrainStream, dist: Dist, log: Log, parallel: dict | None = None) -> int:
    """Load the newest intact checkpoint (skipping, with a line each, damaged newer ones); return its step
    (0 when there is none). A checkpoint saved under another parallel layout is refused, naming both."""
    newest = newest_intact_checkpoint(checkpoint_root(run_dir), say=log.say) if dist.rank == 0 else None
    newest = dist.gather(newest[0] if newest else None)[0]  # every rank loads rank 0's choice
    if newest is None:
        log.say("resume: no complete checkpoint, starting from step 0")
        return 0
    folder = checkpoint_root(run_dir) / tag_for(newest)
    saved = json.loads((folder / COMPLETE_MARKER).read_text()).get("parallel") or {}
    if parallel is not None and saved and saved != parallel:
        raise TrainConfigError(f"checkpoint {folder} was saved under the layout {saved}; this run's is {parallel}. "
                                "Resume with the same parallel settings and number of processes")
    try:
        _, client = engine.load_checkpoint(str(checkpoint_root(run_dir)), tag=tag_for(newest))
    except RuntimeError as error:  # torch names no file ("PytorchStreamReader failed reading zip archive")
        raise CheckpointDamaged(f"checkpoint {folder} does not load: {error} (move the folder aside to resume "
                                f"from the one before it)") from error
    if client is None or client.get("step") != newest:
        raise CheckpointDamaged(f"checkpoint {folder} did not load (client state {client!r})")
    stream.load_state_dict(client["data"])
    log.truncate_after(newest)
    log.say(f"resumed from {folder} at step {newest}")
    return newest


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    benchmarks = benchmark_curves(records)
    fig, axes = plt.subplots(1, 2 if benchmarks else 1, figsize=(12 if benchmarks else 7, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    if benchmarks:
        plot_benchmarks(axes[0][1], benchmarks)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def benchmark_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Per in-loop benchmark task, its (step, accuracy) at each eval point."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in (r for r in records if r["kind"] == "eval"):
        for task, metrics in record.get("benchmarks", {}).items():
            curves.setdefault(task, []).append((record["step"], metrics["accuracy"]))
    return curves


def plot_benchmarks(ax, curves: dict[str, list[tuple[int, float]]]) -> None:
    for task, points in curves.items():
        ax.plot(*zip(*points), "o-", label=f"{task} ({points[-1][1]:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (in-loop items)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


@dataclass
class Setup:
    engine: object
    plan: BatchPlan
    model_cfg: ModelConfig
    stream: TrainStream
    val_windows: TokenWindows
    fp8: dict
    counts: list[dict]  # per rank: parameter elements held locally, and the total
    benchmarks: Benchmarks | None  # the in-loop benchmark items; None: none scored
    strategy: Strategy  # how the run's parallel layout builds, feeds and steps the model


def set_up(cfg: TrainConfig, run_dir: Path, dist: Dist, log: Log) -> Setup:
    plan = batch_plan(cfg, dist.world_size)
    log.say(plan.describe())
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_windows = TokenWindows(cfg.data_dir, "train", cfg.seq_len, cfg.seed)
    val_windows = TokenWindows(cfg.data_dir, "val", cfg.seq_len, cfg.seed, shuffle=False)
    model_cfg = resolve_model_config(cfg, train_windows.vocab_size)
    layout = check_layout(cfg, dist.world_size, model_cfg)
    strategy = strategy_for(layout)(cfg, model_cfg, layout, dist)
    log.say(layout.describe())
    for line in dist.gather(strategy.describe_rank()):
        log.say(f"  {line}")
    ds_config = strategy.ds_config(deepspeed_config(cfg, dist.world_size, model_cfg))
    if dist.rank == 0:
        atomic_write_text(run_dir / "ds_config.json", json.dumps(ds_config, indent=2) + "\n")
    engine, fp8 = strategy.build_engine(ds_config, log.say)
    counts = dist.gather(strategy.parameter_counts(engine))
    stream = strategy.stream(train_windows)
    benchmarks = load_benchmarks(cfg, model_cfg.max_seq_len, train_windows.eos_id,
                                 static_shapes=compile_enabled(model_cfg.compile, dist.device))
    if benchmarks is not None and strategy.benchmarks_unsupported:
        log.say(f"in-loop benchmarks not scored: {strategy.benchmarks_unsupported}")
        benchmarks = None
    if benchmarks is not None:
        log.say(benchmarks.describe())
    return Setup(engine, plan, model_cfg, stream, val_windows, fp8, counts, benchmarks, strategy)


def attention_backend(model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device) -> str:
    """The attention kernel the run's layers call: model.attention resolved for the device and the
    activations' dtype (bf16/fp16 under those precisions, else fp32)."""
    from models.attention import resolve_backend

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
    return resolve_backend(model_cfg.attention, device, dtype, model_cfg.d_model // model_cfg.n_heads)


def write_summary(run: Setup, cfg: TrainConfig, run_dir: Path, step: int, loss, val_loss, benchmarks: dict | None,
                  flops_token: float, dist: Dist, log: Log) -> dict:
    counts = dist.gather(run.strategy.parameter_counts(run.engine))  # after training: persistent ones are gathered
    summary = {
        "completed": True, "steps": step, "tokens": step * run.plan.tokens_per_step, "final_loss": loss,
        "val_loss": val_loss, "val_tokens": run.val_windows.tokens, "params": run.counts[0]["total"],
        "flops_per_token": flops_token,
        "model": run.model_cfg.model_dump(mode="json"), "world_size": dist.world_size,
        "device": dist.device.type, "zero_stage": cfg.zero_stage, "precision": cfg.precision, "fp8": run.fp8,
        "attention_backend": attention_backend(run.model_cfg, cfg, dist.device),
        "batch": run.plan.describe(), "parallel": run.strategy.layout.as_dict(), **run.strategy.summary(),
        "param_partition": {"local_per_rank": [c["local"] for c in counts],
                            "resident_per_rank": [c["resident"] for c in counts], "total": counts[0]["total"]},
        "checkpoint": str(checkpoint_root(run_dir) / tag_for(step)),
        "benchmarks": benchmarks,  # the last eval point's in-loop scores: {"step", "tasks", "centered"}
    }
    if dist.rank == 0:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_losses(log.path, run_dir / "loss.png")
        log.say(f"done: {step} steps, loss {loss}, val_loss {val_loss}; {run_dir / 'summary.json'}")
    return summary


def train(cfg: TrainConfig, run_dir: Path, resume_run: bool) -> dict | None:
    """Train to max_steps; the summary, or None when stopped early by stop_after_steps."""
    dist = Dist()
    log = Log(run_dir, dist.rank)
    run = set_up(cfg, run_dir, dist, log)
    engine, plan = run.engine, run.plan
    parallel = run.strategy.layout.as_dict()
    step = resume(engine, run_dir, run.stream, dist, log, parallel) if resume_run else 0
    if not resume_run:
        log.truncate_after(0)
    flops_token, peak = flops_per_token(run.model_cfg, cfg.seq_len), peak_flops(dist.device)
    log.say(f"model {run.counts[0]['total']:,} parameters, {flops_token:,.0f} training FLOPs/token; "
            f"rank 0 holds {run.counts[0]['local']:,}; zero stage {cfg.zero_stage}, {cfg.precision}, "
            f"{dist.world_size} x {dist.device.type}; attention "
            f"{attention_backend(run.model_cfg, cfg, dist.device)}; fused functions "
            f"{'compiled' if compile_enabled(run.model_cfg.compile, dist.device) else 'eager'}")
    loss = val_loss = benchmarks = None
    while step < cfg.max_steps:
        lr = lr_at(step, cfg)
        set_lr(engine.optimizer, lr)
        started = time.perf_counter()
        loss = run.strategy.train_step(engine, run.stream, plan.grad_accum_steps)
        tokens_per_s = plan.tokens_per_step / (time.perf_counter() - started)
        step += 1
        flops_per_s = flops_token * tokens_per_s
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        mfu = flops_per_s / (peak * dist.world_size) if peak else None
        log.record(kind="train", step=step, loss=loss, lr=lr, tokens=step * plan.tokens_per_step,
                   tokens_per_s=tokens_per_s, flops_per_s=flops_per_s, mfu=mfu, grad_norm=grad_norm)
        log.say(f"step {step}/{cfg.max_steps} loss {loss:.4f} lr {lr:.3e} tok/s {tokens_per_s:,.0f} "
                f"flop/s {flops_per_s:.3e} mfu {'-' if mfu is None else format(mfu, '.1%')} "
                f"grad_norm {'-' if grad_norm is None else format(grad_norm, '.3f')}")
        if run.val_windows.windows and (step % cfg.eval_every_steps == 0 or step == cfg.max_steps):
            val_loss, benchmarks = eval_point(run, cfg, step, dist, log)
        if step % cfg.checkpoint_every_steps == 0 or step == cfg.max_steps:
            save_checkpoint(engine, run_dir, step, run.stream, cfg, run.model_cfg, dist, log, parallel)
        if cfg.stop_after_steps is not None and not resume_run and cfg.stop_after_steps <= step < cfg.max_steps:
            log.say(f"stopping after step {step} (stop_after_steps), as a crash would")
            return None
    return write_summary(run, cfg, run_dir, step, loss, val_loss, benchmarks, flops_token, dist, log)


def record_rank_error(run_dir: Path, error: BaseException) -> None:
    """RUN_DIR/rank_errors/rank<R>.json: the error and whether another attempt would meet it again."""
    rank = os.environ.get("RANK", "0")
    record = {"rank": int(rank), "type": type(error).__name__, "message": str(error),
              "deterministic": isinstance(error, DETERMINISTIC_ERRORS)}
    folder = run_dir / RANK_ERRORS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"rank{rank}.json", json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_train_config(args.config)
    run_dir = Path(cfg.output_dir).resolve()
    try:
        train(cfg, run_dir, args.resume)
    except Exception as error:
        record_rank_error(run_dir, error)
        raise
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()  # exiting with gloo's threads alive can abort the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
