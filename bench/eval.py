"""Benchmark scoring throughput: our batched scorer against a plain transformers loop.

Both score the same items with the same loaded weights, in float32 on the same device:

* ours: ``tasks.evaluation.models.load_model`` + ``tasks.evaluation.scorer.score_items`` (requests
  sorted by length, right-padded batches, one forward per batch);
* plain: what a user writes with transformers alone: for each choice, tokenize context and
  context + continuation, one forward of that one sequence under ``torch.no_grad``, sum the
  continuation's log-probabilities.

Two models: the small one (``runs/local/train/hf`` when ``pretrain run --recipe local`` has left it,
else a tiny LlamaForCausalLM built from a config), and a larger random-initialised shape (d_model 512
x 8 layers by default), where batching matters more. Both use the same tokenizer (the run's, else a
byte-level BPE trained here on the items' own text). Prints items/s for each and the ratio, and checks
that both choose the same answers.

    .venv/bin/python bench/eval.py [--items 60] [--tasks hellaswag,arc_easy,piqa] [--batch-size 32]
                                   [--device cpu] [--threads N] [--repeats 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tasks.evaluation.items import Item, load_items  # noqa: E402
from tasks.evaluation.metrics import chosen  # noqa: E402
from tasks.evaluation.models import load_model  # noqa: E402
from tasks.evaluation.scorer import score_items  # noqa: E402

LOCAL_RUN_EXPORT = REPO / "runs" / "local" / "train" / "hf"


def plain_loop(hf_model, tokenizer, items: list[Item], max_length: int, device: str) -> list[list[float]]:
    """One request at a time, as a naive user writes it with transformers."""
    out = []
    for item in items:
        scores = []
        for context, continuation in item.requests:
            context_ids = tokenizer(context, add_special_tokens=False).input_ids
            whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
            continuation_ids = whole[len(context_ids):]
            inputs = whole[-(max_length + 1):][:-1]
            n = min(len(continuation_ids), len(inputs))
            with torch.no_grad():
                logits = hf_model(torch.tensor([inputs], device=device)).logits[0, -n:]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            targets = torch.tensor(continuation_ids[-n:], device=device)
            scores.append(logprobs.gather(1, targets[:, None]).sum().item())
        out.append(scores)
    return out


def measure(folder: Path, items: list[Item], batch_size: int, device: str, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = load_model(folder, device=device)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    hf_model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.model_max_length = int(1e30)
    warm = items[:2]  # first-call costs (allocator, kernels) out of both timings
    score_items(model.logits_fn, model.encode, warm, model.max_length, batch_size, model.eos_id, model.pad_id,
                device=model.device)
    plain_loop(hf_model, tokenizer, warm, model.max_length, device)

    ours_s = plain_s = float("inf")
    for _ in range(repeats):  # alternated, the best of each: a shared machine's load drifts between runs
        started = time.perf_counter()
        ours = score_items(model.logits_fn, model.encode, items, model.max_length, batch_size, model.eos_id,
                           model.pad_id, model.unk_id, device=model.device)
        ours_s = min(ours_s, time.perf_counter() - started)
        started = time.perf_counter()
        plain = plain_loop(hf_model, tokenizer, items, model.max_length, device)
        plain_s = min(plain_s, time.perf_counter() - started)
    agree = sum(chosen(i, a) == chosen(i, b) for i, a, b in zip(items, ours, plain))
    worst = max(abs(x - y) / max(abs(y), 1e-9) for a, b in zip(ours, plain) for x, y in zip(a, b))
    return {"model": str(folder), "parameters": model.parameters, "max_length": model.max_length,
            "items": len(items), "requests": sum(len(i.requests) for i in items),
            "ours_items_per_s": round(len(items) / ours_s, 2), "plain_items_per_s": round(len(items) / plain_s, 2),
            "ratio": round(plain_s / ours_s, 2), "same_choices": f"{agree}/{len(items)}",
            "max_relative_difference": worst}


def tokenizer_folder(items: list[Item], root: Path) -> Path:
    """A folder with tokenizer files: the local run's export, else a byte-level BPE trained on the items."""
    if (LOCAL_RUN_EXPORT / "tokenizer.json").is_file():
        return LOCAL_RUN_EXPORT
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([c + k for item in items for c, k in item.requests], trainer)
    folder = root / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                            pad_token="<|pad|>").save_pretrained(folder)
    return folder


def llama_folder(out: Path, tokenizer_dir: Path, d_model: int, n_layers: int, max_length: int) -> Path:
    """A random-initialised LlamaForCausalLM of this shape with the tokenizer's files."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=4 * d_model,
                         num_hidden_layers=n_layers, num_attention_heads=max(1, d_model // 64),
                         max_position_embeddings=max_length, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=60, help="items per task")
    parser.add_argument("--tasks", default="hellaswag,arc_easy,piqa")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds, alternating; the best of each")
    parser.add_argument("--large", default="512x8", help="the larger shape, d_model x layers")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.disable_progress_bar()  # no "Loading weights" bars between the result lines
    items = [item for task in args.tasks.split(",") for item in load_items(task, args.items)]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        root = Path(tmp)
        tokenizers = tokenizer_folder(items, root)
        small = LOCAL_RUN_EXPORT if (LOCAL_RUN_EXPORT / "config.json").is_file() else \
            llama_folder(root / "small", tokenizers, 128, 4, 128)
        d_model, n_layers = (int(x) for x in args.large.split("x"))
        large = llama_folder(root / "large", tokenizers, d_model, n_layers, 512)
        for label, folder in (("small", small), (f"d{d_model}x{n_layers}", large)):
            result = {"shape": label, **measure(folder, items, args.batch_size, args.device, args.repeats)}
            results.append(result)
            print(f"{label:>10}: {result['parameters']:,} parameters, {result['items']} items "
                  f"({result['requests']} requests), context {result['max_length']}: ours "
                  f"{result['ours_items_per_s']} items/s, plain transformers loop {result['plain_items_per_s']} "
                  f"items/s, ratio {result['ratio']}x; same choices {result['same_choices']}, "
                  f"max relative difference {result['max_relative_difference']:.2e}", flush=True)
    meta = {"device": args.device, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "repeats": args.repeats,
            "tasks": args.tasks, "items_per_task": args.items}
    print(json.dumps(meta))
    if args.json:
        args.json.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
