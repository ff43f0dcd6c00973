"""Benchmark synthesis throughput: our batched, per-document seeded generation against a plain loop.

Both rephrase the same documents (paragraphs of a real book from ../shared/data) with the same
prompt, the same weights, in float32 on the same device, sampling at the same temperature and top_p
for the same number of new tokens:

* ours: ``tasks.synthesis.generate.Synthesizer`` (the object a Ray actor of ``pretrain synthesize``
  holds), left-padded batches of ``--batch-size``, each document seeded by its own generator;
* plain: what a user writes with transformers alone: for each document, tokenize the prompt and call
  ``model.generate(do_sample=True, ...)`` on that one sequence.

Measured in-process (no Prefect or Ray: their start-up is the same for any generation code). Two
models: the tiny model ``pretrain run`` trains, on a book (tests/tiny_run.py: context 64), and a larger
random-initialised LlamaForCausalLM (d_model 256 x 4 layers, context 256) with the same tokenizer,
where batching matters more. Prints docs/s for each and the ratio.

    .venv/bin/python bench/sources_synthesis.py [--documents 32] [--batch-size 8] [--max-new-tokens 32]
                                               [--threads 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tiny_run, train_fixtures, conftest: the test model, built the same way

import torch  # noqa: E402

from pretrain.config import SynthesizeConfig  # noqa: E402
from tasks.synthesis.generate import Synthesizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval import llama_folder  # noqa: E402  (bench/eval.py: a random Llama of a shape, with a tokenizer)

BOOK = REPO.parent / "shared" / "data" / "reference" / "en" / "Pride_and_Prejudice_JaneAusten.txt.gz"
TEMPLATE = "Rewrite: {text}\nRewritten:"


def book_paragraphs(n: int) -> list[str]:
    text = gzip.open(BOOK, "rt").read()
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) > 12]
    return paragraphs[100:100 + n]


def plain_loop(folder: Path, prompts: list[str], config: SynthesizeConfig) -> list[str]:
    """One document at a time, as a naive user writes it with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    torch.manual_seed(config.seed)
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=config.max_new_tokens, do_sample=True,
                                       temperature=config.temperature, top_p=config.top_p,
                                       pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(generated[0, ids.input_ids.shape[1]:], skip_special_tokens=True))
    return out


def prompts_for(synth: Synthesizer, documents: list[str]) -> list[str]:
    """The prompts ours builds (the document cut to fit), as text for the plain loop."""
    tokenizer = synth.model.tokenizer
    return [tokenizer.decode(synth.prompt.ids(text)[0], skip_special_tokens=True) for text in documents]


def measure(folder: Path, templates: Path, documents: list[str], args) -> dict:
    config = SynthesizeConfig(model=str(folder), template="bench", templates_dir=str(templates),
                              max_new_tokens=args.max_new_tokens, max_input_tokens=args.max_input_tokens,
                              batch_size=args.batch_size, backend="transformers", device="cpu")
    synth = Synthesizer(str(folder), config)
    pairs = [(f"doc-{i}", text) for i, text in enumerate(documents)]
    synth.generate(pairs[:2])  # warm-up
    started = time.perf_counter()
    ours = [generation for start in range(0, len(pairs), args.batch_size)
            for generation in synth.generate(pairs[start:start + args.batch_size])]
    ours_s = time.perf_counter() - started
    prompts = prompts_for(synth, documents)
    plain_loop(folder, prompts[:2], config)  # warm-up (and its load)
    started = time.perf_counter()
    plain = plain_loop(folder, prompts, config)
    plain_s = time.perf_counter() - started
    return {"model": str(folder), "documents": len(documents), "ours_docs_per_s": round(len(ours) / ours_s, 2),
            "plain_docs_per_s": round(len(plain) / plain_s, 2), "speedup": round(plain_s / ours_s, 2),
            "ours_tokens": sum(g.tokens for g in ours), "ours_s": round(ours_s, 2), "plain_s": round(plain_s, 2)}


def tiny_book_model(root: Path) -> Path:
    from tiny_run import tiny_book_run

    from flows.train import export_model

    run_dir, _, _, _ = tiny_book_run(root)
    return export_model(run_dir, json.loads((run_dir / "summary.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-input-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    documents = book_paragraphs(args.documents)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "templates").mkdir()
        (root / "templates" / "bench.txt").write_text(TEMPLATE)
        tiny = tiny_book_model(root / "tiny")
        large = llama_folder(root / "large", tiny, 256, 4, 256)
        small_args = argparse.Namespace(**{**vars(args), "max_new_tokens": min(args.max_new_tokens, 16),
                                           "max_input_tokens": 32})  # the tiny model's context is 64
        results = [measure(tiny, root / "templates", documents, small_args),
                   measure(large, root / "templates", documents, args)]
    for name, result in zip(("tiny (pretrain run's model)", "llama d256 x4"), results):
        print(f"{name}: {result['documents']} documents, ours {result['ours_docs_per_s']} docs/s "
              f"(batch {args.batch_size}), plain generate loop {result['plain_docs_per_s']} docs/s: "
              f"{result['speedup']}x")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "batch_size": args.batch_size,
                                         "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
