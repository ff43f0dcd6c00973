"""Training: unit tests of the config, schedule and data stream, then distributed runs
(real DeepSpeed, two CPU processes on gloo, launched by ``run_training``) on token
shards of real books made by the real tokenize stage.

The distributed runs share one reference run (ZeRO-3, fp32, 80 steps) so the file
stays within a few minutes: it is the loss-falls run, the uninterrupted run the resumed
one is compared with, and the ZeRO-3 side of the ZeRO-3 vs ZeRO-0 comparison. fp32
makes the comparisons exact on CPU (seen: resumed steps bit-identical, ZeRO-0 vs
ZeRO-3 identical for 5 steps); bf16 runs differ by ~0.6% between stages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_data
from pretrain.config import TrainConfig
from tasks.train.checkpoint import consolidate_fp32, list_checkpoints, prune_checkpoints
from tasks.train.data import TokenWindows, TrainStream, eval_batches
from tasks.train.ds_config import BatchConfigError, batch_plan, deepspeed_config, lr_at, param_groups
from tasks.train.launch import launch_command, run_training
from train_fixtures import build_token_shards

BOOKS = ("Pride_and_Prejudice_JaneAusten", "Great_Expectations_CharlesDickens", "Anne-of-Green-Gables")
STEPS = 80
RESUME_AT = 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    books = [shared_data("reference", "en", f"{name}.txt.gz") for name in BOOKS]
    return build_token_shards(books, tmp_path_factory.mktemp("train") / "shards", vocab_size=1024)


def run_config(shards: Path, output_dir: Path, **overrides) -> TrainConfig:
    fields = dict(data_dir=str(shards), output_dir=str(output_dir), model_size="tiny", seq_len=128,
                  micro_batch_size=4, num_procs=2, max_steps=STEPS, lr=3e-3, warmup_steps=5, precision="fp32",
                  zero_stage=3, checkpoint_every_steps=20, keep_checkpoints=2, eval_every_steps=40, eval_batches=4,
                  param_persistence_threshold=10 * 128)  # only the RMSNorm gains (128) stay whole
    return TrainConfig(**{**fields, **overrides})


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def eval_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"]


def png_width(path: Path) -> int:
    import matplotlib.image

    return matplotlib.image.imread(path).shape[1]


def quiet(lines: list[str]):
    return lines.append


@pytest.fixture(scope="module")
def reference_run(shards, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("reference")
    summary = run_training(run_config(shards, run_dir), log_callback=quiet([]))
    return run_dir, summary


# ---------------------------------------------------------------- unit


def test_batch_arithmetic_error_names_every_factor():
    cfg = TrainConfig(micro_batch_size=4, grad_accum_steps=2, global_batch_size=64, seq_len=512)
    with pytest.raises(BatchConfigError) as error:
        batch_plan(cfg, world_size=2)
    message = str(error.value)
    for factor in ("global_batch_size 64", "micro_batch_size 4", "grad_accum_steps 2", "world_size 2", "= 16"):
        assert factor in message
    assert "grad_accum_steps=8 would match" in message
    plan = batch_plan(cfg.model_copy(update={"grad_accum_steps": 8}), world_size=2)
    assert (plan.global_batch_size, plan.tokens_per_step) == (64, 64 * 512)
    assert "32,768 tokens per step" in plan.describe()


def test_run_training_checks_batch_before_launching(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), micro_batch_size=3, num_procs=2, global_batch_size=8)
    with pytest.raises(BatchConfigError, match="not a multiple of micro_batch_size x world_size = 6"):
        run_training(cfg, log_callback=quiet([]))
    assert not (tmp_path / "run").exists()


def test_run_training_checks_batch_against_the_hostfile_slots(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nworker-0 slots=8\nworker-1 slots=8\n")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), micro_batch_size=4, global_batch_size=32,
                      hostfile=str(hostfile))
    with pytest.raises(BatchConfigError, match="world_size 16"):  # 2 x 8 slots, not num_procs 1
        run_training(cfg, log_callback=quiet([]))
    with pytest.raises(FileNotFoundError, match="train.hostfile: no hostfile at"):
        run_training(cfg.model_copy(update={"hostfile": str(tmp_path / "missing")}), log_callback=quiet([]))
    assert not (tmp_path / "run").exists()


def test_deepspeed_config_keys():
    from models.sizes import model_config

    model = model_config("tiny", 1024, 128)
    cfg = TrainConfig(micro_batch_size=2, grad_accum_steps=3, zero_stage=3, precision="bf16", grad_clip=0.5,
                      offload_optimizer=True, offload_params=True)
    ds = deepspeed_config(cfg, world_size=4, model=model)
    batch = ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    assert batch == (24, 2, 3)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True} and "fp16" not in ds
    zero = ds["zero_optimization"]
    assert {"stage", "overlap_comm", "contiguous_gradients", "reduce_bucket_size", "stage3_prefetch_bucket_size",
            "stage3_param_persistence_threshold", "stage3_gather_16bit_weights_on_model_save",
            "offload_optimizer", "offload_param"} <= set(zero)
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert "optimizer" not in ds and "scheduler" not in ds  # ours, not DeepSpeed's
    fp16 = deepspeed_config(cfg.model_copy(update={"precision": "fp16"}), 4, model)["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0  # dynamic loss scaling
    zero1 = deepspeed_config(TrainConfig(zero_stage=1), 1, model)["zero_optimization"]
    assert zero1["stage"] == 1 and "stage3_prefetch_bucket_size" not in zero1 and "offload_optimizer" not in zero1
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        deepspeed_config(TrainConfig(zero_stage=2, offload_params=True), 1, model)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.55e-3)  # half way down the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    values = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_weight_decay_groups():
    from models.sizes import model_config
    from models.transformer import Transformer

    model = Transformer(model_config("tiny", 256, 64))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.embed_tokens.weight for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_launch_command_cpu_and_cuda(tmp_path):
    cfg = TrainConfig(num_procs=2)
    cpu = launch_command(cfg, tmp_path / "c.json", resume=True, cuda=False)
    assert cpu.argv[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in cpu.argv
    assert cpu.argv[-4:] == ["tasks.train.main", "--config", str(tmp_path / "c.json"), "--resume"]
    assert cpu.env["DS_ACCELERATOR"] == "cpu" and cpu.backend == "gloo"
    gpu = launch_command(cfg, tmp_path / "c.json", resume=False, cuda=True)
    assert gpu.argv[1:3] == ["-m", "deepspeed.launcher.runner"] and gpu.backend == "nccl"
    assert gpu.argv[gpu.argv.index("--num_gpus") + 1] == "2" and "--module" in gpu.argv
    multi = launch_command(cfg.model_copy(update={"hostfile": "/etc/hosts.ds"}), tmp_path / "c.json", False, cuda=True)
    assert multi.argv[multi.argv.index("--hostfile") + 1] == "/etc/hosts.ds" and "--num_gpus" not in multi.argv


def test_stream_is_deterministic_sharded_and_resumable(shards):
    windows = TokenWindows(shards, "train", seq_len=64, seed=3)
    ranks = [TrainStream(windows, micro_batch_size=2, rank=r, world_size=2) for r in range(2)]
    first = [[s.next_batch() for _ in range(6)] for s in ranks]
    x0, y0 = first[0][0]
    assert x0.shape == (2, 64) and x0.dtype == torch.int64
    assert torch.equal(x0[:, 1:], y0[:, :-1])  # y is x shifted by one token
    assert not torch.equal(first[0][0][0], first[1][0][0])  # the ranks read different samples
    saved = ranks[0].state_dict()
    assert saved["samples"] == 6 * 2 * 2
    expected = [ranks[0].next_batch() for _ in range(3)]
    restored = TrainStream(TokenWindows(shards, "train", seq_len=64, seed=3), 2, rank=0, world_size=2)
    restored.load_state_dict(saved)
    for (x, y), (ex, ey) in zip((restored.next_batch() for _ in range(3)), expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    other_seed = TrainStream(TokenWindows(shards, "train", seq_len=64, seed=4), 2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="seed: saved 3, now 4"):
        other_seed.load_state_dict(saved)


def test_one_epoch_visits_every_window_once(shards):
    windows = TokenWindows(shards, "train", seq_len=4096, seed=0)
    starts = [windows._window_of(n) for n in range(windows.windows)]
    assert sorted(starts) == list(range(windows.windows))
    assert [windows._window_of(n) for n in range(windows.windows, 2 * windows.windows)] != starts


def test_prune_keeps_newest_complete(tmp_path):
    for step in (5, 10, 15, 20):
        (tmp_path / f"step{step}").mkdir()
        if step != 20:
            (tmp_path / f"step{step}" / "client.json").write_text("{}")
    removed = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step5"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 15]
    assert (tmp_path / "step20").exists()  # incomplete but newer than the newest complete: maybe being written


def test_ranks_share_the_benchmark_batches_and_score_as_one_rank(shards):
    """Each rank scores its turn of the batches; together they score every request once, as one rank
    would, and every rank makes the same number of forward calls (ZeRO-3 gathers collectively)."""
    from models.sizes import model_config
    from models.transformer import Transformer
    from tasks.evaluation.scorer import score_requests
    from tasks.train.benchmarks import load_benchmarks, shares

    cfg = TrainConfig(data_dir=str(shards), seq_len=128, micro_batch_size=1, eval_items=6)
    bench = load_benchmarks(cfg, 128, eos_id=0, static_shapes=False)
    assert [len(items) for items in bench.items.values()] == [6, 6, 6]
    assert len(bench.requests) == 6 * 4 + 6 * 4 + 6 * 2 and bench.rows == 4  # 4 x 128 tokens / 128 per row
    torch.manual_seed(0)
    model = Transformer(model_config("tiny", 1024, 128)).eval()
    logits = lambda x: model(x)[0]  # noqa: E731
    whole = score_requests(logits, bench.requests, bench.rows, bench.pad_id)
    for world_size in (2, 3, 20):
        parts = [shares(bench, rank, world_size) for rank in range(world_size)]
        scored = sorted(i for mine, _ in parts for i in mine)
        assert scored == list(range(len(bench.requests)))  # every request once
        forwards = {-(-len(mine) // bench.rows) + extra for mine, extra in parts}
        assert forwards == {-(-15 // world_size)}  # 60 requests in 15 batches, dealt out in turn
        for mine, _ in parts:
            values = score_requests(logits, [bench.requests[i] for i in mine], bench.rows, bench.pad_id)
            assert values == [whole[i] for i in mine]


# ---------------------------------------------------------------- distributed (2 CPU ranks, gloo)


def unigram_entropy(shards: Path) -> float:
    tokens = TokenWindows(shards, "train", 128, 0).view.read(0, TokenWindows(shards, "train", 128, 0).tokens)
    counts = np.bincount(tokens).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_zero3_loss_falls_and_parameters_are_partitioned(reference_run, shards):
    run_dir, summary = reference_run
    losses = [loss for _, loss in sorted(train_losses(run_dir).items())]
    assert len(losses) == STEPS and summary["completed"] and summary["steps"] == STEPS
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"loss first-5 mean {first:.3f}, last-5 mean {last:.3f}, val {summary['val_loss']:.3f}")
    assert last < first - 1.0
    # better than knowing only token frequencies: under the unigram entropy of the train split
    assert summary["val_loss"] < unigram_entropy(shards) - 0.2
    partition = summary["param_partition"]
    total, local = partition["total"], partition["local_per_rank"]
    print(f"parameters {total:,}; held per rank {local}")
    assert len(local) == 2
    for held in local:  # each rank's ZeRO-3 partitions: half, plus at most one padding element per tensor
        assert total / 2 <= held <= total / 2 + 64 and held < total
    # between steps a rank keeps whole only the parameters under the persistence threshold:
    # the 2 x 4 + 1 RMSNorm gains of 128; every matrix is released to its partition
    assert partition["resident_per_rank"] == [9 * 128, 9 * 128]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    assert all(m["mfu"] is None and m["flops_per_s"] > 0 and m["grad_norm"] is not None for m in train)
    assert train[-1]["tokens"] == STEPS * 8 * 128
    assert [m["step"] for m in metrics if m["kind"] == "eval"] == [40, 80]
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [60, 80]


def test_in_loop_benchmarks_are_recorded_at_every_eval_point(reference_run, shards):
    """Each eval line scores the first eval_items items of each eval_tasks task; the summary keeps the last."""
    from tasks.evaluation.items import load_items, primary_metric, random_baseline
    from tasks.evaluation.metrics import centered

    run_dir, summary = reference_run
    cfg = run_config(shards, run_dir)
    assert cfg.eval_tasks == ["hellaswag", "arc_easy", "piqa"] and cfg.eval_items == 32  # the defaults
    evals = eval_records(run_dir)
    assert [r["step"] for r in evals] == [40, 80]
    for record in evals:
        benchmarks = record["benchmarks"]
        assert list(benchmarks) == cfg.eval_tasks
        for metrics in benchmarks.values():
            assert set(metrics) == {"accuracy", "accuracy_per_char", "items"} and metrics["items"] == 32
            for name in ("accuracy", "accuracy_per_char"):
                assert 0 <= metrics[name] <= 1 and (metrics[name] * 32).is_integer()  # hits out of 32 items
        full = {task: {**m, "random": random_baseline(load_items(task, 32)), "primary_metric": primary_metric(task)}
                for task, m in benchmarks.items()}
        assert record["centered"] == pytest.approx(centered(full), abs=1e-12)
    print("in-loop benchmarks:", {r["step"]: {t: m["accuracy"] for t, m in r["benchmarks"].items()} for r in evals})
    last = evals[-1]
    assert summary["benchmarks"] == {"step": 80, "tasks": last["benchmarks"], "centered": last["centered"]}
    log = (run_dir / "train.log").read_text()
    shown = " ".join(f"{task} {m['accuracy']:.3f}" for task, m in last["benchmarks"].items())
    assert f"step 80 benchmarks {shown} centred {last['centered']:.3f}" in log
    assert "in-loop benchmarks: hellaswag 32, arc_easy 32, piqa 32 items" in log
    assert png_width(run_dir / "loss.png") == 1200  # two panels: the losses, the benchmark accuracies


def test_consolidated_checkpoint_reproduces_the_in_loop_benchmarks(reference_run, shards):
    """The step-80 eval line is the score of the same fixed items: the merged model, scored outside the
    training engine, gives the same accuracies."""
    from models.transformer import Transformer
    from pretrain.config import ModelConfig
    from tasks.train.benchmarks import load_benchmarks, score
    from tasks.train.data import TokenWindows

    run_dir, summary = reference_run
    model = Transformer(ModelConfig(**summary["model"]))
    model.load_state_dict(consolidate_fp32(run_dir / "checkpoints"))
    cfg = run_config(shards, run_dir)
    eos = TokenWindows(shards, "train", cfg.seq_len, cfg.seed).eos_id
    bench = load_benchmarks(cfg, model.cfg.max_seq_len, eos, static_shapes=False)
    assert [item.doc_id for item in bench.items["piqa"]] == list(range(32))  # the first 32, in file order
    again = score(model, bench, torch.device("cpu"))
    assert again["benchmarks"] == eval_records(run_dir)[-1]["benchmarks"]
    padded = score(model, load_benchmarks(cfg, model.cfg.max_seq_len, eos, static_shapes=True), torch.device("cpu"))
    assert padded == again  # padding every batch to one shape (compiled models) changes no score


def test_consolidated_checkpoint_reproduces_val_loss(reference_run, shards):
    """Export path: merge the ZeRO-3 partitions, load into a plain model, same val loss."""
    from models.transformer import Transformer
    from pretrain.config import ModelConfig

    run_dir, summary = reference_run
    state = consolidate_fp32(run_dir / "checkpoints")
    model = Transformer(ModelConfig(**summary["model"]))
    model.load_state_dict(state)
    cfg = run_config(shards, run_dir)
    val = TokenWindows(shards, "val", cfg.seq_len, cfg.seed, shuffle=False)
    with torch.no_grad():
        losses = [model(x, y)[1].item() for rank in range(2)
                  for x, y in eval_batches(val, cfg.eval_batches, cfg.micro_batch_size, rank, 2)]
    assert sum(losses) / len(losses) == pytest.approx(summary["val_loss"], rel=1e-5)


def test_resume_after_stop_repeats_the_uninterrupted_run(reference_run, shards, tmp_path):
    reference_dir, reference = reference_run
    run_dir = tmp_path / "resumed"
    cfg = run_config(shards, run_dir, stop_after_steps=RESUME_AT)
    stopped = run_training(cfg, log_callback=quiet([]))
    assert stopped == {"completed": False, "run_dir": str(run_dir)}
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [20, 40]
    lines: list[str] = []
    resumed = run_training(cfg, resume=True, log_callback=quiet(lines))  # --resume ignores stop_after_steps
    assert any(f"resumed from {run_dir / 'checkpoints' / 'step40'} at step 40" in line for line in lines)
    expected, got = train_losses(reference_dir), train_losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    diffs = [abs(got[s] - expected[s]) / abs(expected[s]) for s in range(RESUME_AT + 1, STEPS + 1)]
    print(f"resumed steps {RESUME_AT + 1}..{STEPS}: max relative loss difference {max(diffs):.3g}")
    assert max(diffs) <= 1e-5
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)
    # the eval lines are per step: the resumed run has one per eval point, scoring as the uninterrupted run
    assert [r["step"] for r in eval_records(run_dir)] == [40, 80]
    assert ([{task: m["accuracy"] for task, m in r["benchmarks"].items()} for r in eval_records(run_dir)] ==
            [{task: m["accuracy"] for task, m in r["benchmarks"].items()} for r in eval_records(reference_dir)])


def test_zero3_and_zero0_give_the_same_losses(reference_run, shards, tmp_path):
    reference_dir, _ = reference_run
    run_dir = tmp_path / "zero0"
    run_training(run_config(shards, run_dir, zero_stage=0, stop_after_steps=5), log_callback=quiet([]))
    zero3, zero0 = train_losses(reference_dir), train_losses(run_dir)
    assert sorted(zero0) == [1, 2, 3, 4, 5]
    diffs = [abs(zero0[s] - zero3[s]) / abs(zero3[s]) for s in range(1, 6)]
    print(f"ZeRO-0 vs ZeRO-3, steps 1..5: max relative loss difference {max(diffs):.3g}")
    assert max(diffs) <= 1e-5
    assert zero3[5] < zero3[1] - 0.2  # the steps compared did train
    assert math.isclose(zero0[1], math.log(1024), rel_tol=0.02)  # initialised as the model intends (std 0.02)


@pytest.mark.integration
def test_flow_retries_a_stopped_run_by_resuming(prefect_server, shards, tmp_path):
    """The first attempt stops at step 4 (stop_after_steps); the task's retry resumes to step 8."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train import train_flow

    run_dir = tmp_path / "flow"
    cfg = run_config(shards, run_dir, max_steps=8, stop_after_steps=4, checkpoint_every_steps=4, eval_every_steps=8,
                     eval_items=0)
    summary = train_flow(config=cfg)
    assert summary["completed"] and summary["steps"] == 8
    # eval_items 0: the validation loss alone, no benchmark scores, a one-panel plot
    assert [sorted(r) for r in eval_records(run_dir)] == [["kind", "step", "val_loss"]]
    assert summary["benchmarks"] is None and "benchmarks" not in (run_dir / "train.log").read_text()
    assert png_width(run_dir / "loss.png") == 700
    log = (run_dir / "train.log").read_text()
    assert "stopping after step 4" in log and f"resumed from {run_dir / 'checkpoints' / 'step4'} at step 4" in log
    assert sorted(train_losses(run_dir)) == list(range(1, 9))
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-loss", "train-summary"])))}
    assert keys == {"train-loss", "train-summary"}
