"""Training throughput: our Transformer against Hugging Face's LlamaForCausalLM of the same shape.

One launch of N ranks (two CPU processes on gloo by default, as the tests use; on a
CUDA machine, one per GPU). In each rank, for every round, each model in turn is built
(under zero.Init for ZeRO-3), wrapped by ``deepspeed.initialize`` with the same
generated DeepSpeed config and our AdamW param groups, and trained for the same steps
on the same batches (the train stream restarted at sample 0). The first
``--warmup`` steps of a block are not timed. Both losses are cross entropy of the
logits against the same shifted targets (HF's logits, our loss), so the work is equal.
The HF config is built from our ModelConfig: same widths, heads, SwiGLU width, RMSNorm
eps, RoPE theta, tied embeddings, no biases, SDPA attention.

Data: token shards of three reference books, tokenized by the real tokenize stage
into a temporary folder (or ``--data DIR``).

    .venv/bin/python bench/train.py [--size small --seq-len 256 --micro-batch 4 --steps 20 --procs 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
DATA = REPO.parent / "shared" / "data"
BOOKS = ("Pride_and_Prejudice_JaneAusten", "Great_Expectations_CharlesDickens", "Anne-of-Green-Gables")


def hf_llama(model_cfg):
    """LlamaForCausalLM with our model's shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.transformer import ffn_hidden

    config = LlamaConfig(
        vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.d_model, intermediate_size=ffn_hidden(model_cfg),
        num_hidden_layers=model_cfg.n_layers, num_attention_heads=model_cfg.n_heads,
        num_key_value_heads=model_cfg.n_kv_heads or model_cfg.n_heads, max_position_embeddings=model_cfg.max_seq_len,
        rms_norm_eps=model_cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": model_cfg.rope_theta},
        tie_word_embeddings=model_cfg.tie_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
        use_cache=False, initializer_range=0.02,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


class HFLoss(torch.nn.Module):
    """(idx, targets) -> (logits, loss), as our model's forward, around the HF model."""

    def __init__(self, model_cfg):
        super().__init__()
        self.model = hf_llama(model_cfg)

    def forward(self, idx, targets):
        import torch.nn.functional as F

        logits = self.model(input_ids=idx).logits  # (B, T, V)
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def worker(config_path: str, steps: int, warmup: int, rounds: int, order: tuple[str, ...]) -> None:
    import deepspeed

    from tasks.train.data import TokenWindows, TrainStream
    from tasks.train.ds_config import batch_plan, build_optimizer, deepspeed_config, set_lr
    from tasks.train.main import Dist, build_model, load_train_config, resolve_model_config, train_step

    cfg = load_train_config(config_path)
    dist = Dist()
    plan = batch_plan(cfg, dist.world_size)
    windows = TokenWindows(cfg.data_dir, "train", cfg.seq_len, cfg.seed)
    model_cfg = resolve_model_config(cfg, windows.vocab_size)
    ds_config = deepspeed_config(cfg, dist.world_size, model_cfg)

    def build(name: str):
        if name == "ours":
            return build_model(model_cfg, ds_config, cfg.seed, cfg.zero_stage)
        import torch._dynamo  # noqa: F401  (see build_model)

        torch.manual_seed(cfg.seed)
        with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=cfg.zero_stage == 3):
            model = HFLoss(model_cfg)
        # HF's init, like ours, ran on empty ZeRO-3 partitions: run its _init_weights again, gathered
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0,
                                               enabled=cfg.zero_stage == 3):
            model.model.apply(model.model._init_weights)
        if cfg.zero_stage == 3 and cfg.zero3_leaf_layers:  # the same ZeRO-3 granularity as ours
            from deepspeed.utils import set_z3_leaf_modules
            from transformers.models.llama.modeling_llama import LlamaDecoderLayer

            set_z3_leaf_modules(model, [LlamaDecoderLayer])
        return model

    results: dict[str, list[float]] = {"ours": [], "hf": []}
    losses: dict[str, list[float]] = {"ours": [], "hf": []}
    for _ in range(rounds):
        for name in order:
            model = build(name)
            engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, cfg), config=ds_config)
            set_lr(engine.optimizer, cfg.lr)
            stream = TrainStream(windows, cfg.micro_batch_size, dist.rank, dist.world_size)
            trace = []
            for step in range(warmup + steps):
                if step == warmup:
                    dist.barrier()
                    started = time.perf_counter()
                trace.append(train_step(engine, stream, plan.grad_accum_steps, dist))
            seconds = time.perf_counter() - started
            results[name].append(steps * plan.tokens_per_step / seconds)
            losses[name] = trace
            engine.destroy()
            del engine, model
    if dist.rank == 0:
        print(json.dumps({"tokens_per_s": results, "losses": losses, "plan": plan.describe()}))
    dist.barrier()
    dist.dist.destroy_process_group()


def build_shards(folder: Path) -> Path:
    from train_fixtures import build_token_shards

    books = [DATA / "reference" / "en" / f"{name}.txt.gz" for name in BOOKS]
    missing = [b for b in books if not b.is_file()]
    if missing:
        sys.exit(f"reference books not found: {missing} (see ../shared/data/README.md)")
    return build_token_shards(books, folder / "shards", vocab_size=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="ours, hf, ours, hf, ...: alternate to share noise")
    parser.add_argument("--hf-first", action="store_true", help="run HF before ours in each round")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--data", help="token shards folder (default: tokenize three reference books)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    args = parser.parse_args()
    if args.worker:
        order = ("hf", "ours") if args.hf_first else ("ours", "hf")
        return worker(args.worker, args.steps, args.warmup, args.rounds, order)

    from pretrain.config import TrainConfig
    from tasks.train.launch import launch_command, write_run_config

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = Path(args.data) if args.data else build_shards(Path(tmp))
        cfg = TrainConfig(data_dir=str(data), output_dir=str(Path(tmp) / "run"), model_size=args.size,
                          seq_len=args.seq_len, micro_batch_size=args.micro_batch, num_procs=args.procs,
                          zero_stage=args.zero_stage, precision=args.precision, max_steps=args.steps)
        config_path = write_run_config(cfg)
        launch = launch_command(cfg, config_path, resume=False)
        entry = launch.argv.index("tasks.train.main")  # swap the entry point for this script's worker
        argv = launch.argv[:entry - 1] + [__file__, "--worker", str(config_path), "--steps", str(args.steps),
                                          "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
        argv += ["--hf-first"] if args.hf_first else []
        out = subprocess.run(argv, env=launch.env, cwd=REPO, capture_output=True, text=True)
        result = next((json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")), None)
        if out.returncode != 0 or result is None:
            sys.exit(f"bench failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    ours, hf = (sum(result["tokens_per_s"][k]) / len(result["tokens_per_s"][k]) for k in ("ours", "hf"))
    print(f"{args.size}, {args.procs} x {launch.backend} ranks, ZeRO-{args.zero_stage}, {args.precision}; "
          f"{result['plan']}; {args.steps} timed steps x {args.rounds} rounds")
    print(f"ours: {ours:,.0f} tokens/s  (rounds {[round(v) for v in result['tokens_per_s']['ours']]})")
    print(f"HF LlamaForCausalLM: {hf:,.0f} tokens/s  (rounds {[round(v) for v in result['tokens_per_s']['hf']]})")
    print(f"ratio ours/HF: {ours / hf:.3f}")
    print(f"loss first/last step: ours {result['losses']['ours'][0]:.3f} -> {result['losses']['ours'][-1]:.3f}, "
          f"HF {result['losses']['hf'][0]:.3f} -> {result['losses']['hf'][-1]:.3f}")


if __name__ == "__main__":
    main()
