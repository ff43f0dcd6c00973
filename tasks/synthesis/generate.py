"""Batched generation with per-document seeds, on a model loaded once per Ray actor (``Synthesizer``).

The model is a Hugging Face causal-LM folder, loaded from local files only (a run folder is
exported first, by the flow: ``tasks.evaluation.models.exported_checkpoint``). A document's
prompt is its template around the document cut to ``max_input_tokens`` (and to what the model's
context leaves after the template and ``max_new_tokens``); its output is the generated tokens up
to the first EOS, decoded, the prompt stripped.

Seeding: transformers' ``generate`` draws from one global generator for the whole batch, so a
document's sample would depend on its batch neighbours. Instead each document gets its own
``torch.Generator`` seeded from (seed, template, document id), and sampling is the Gumbel-max
trick inside a logits processor: argmax(logits / temperature + Gumbel noise), over the top-p
nucleus, is a draw from the softmax of the nucleus, and greedy decoding then picks it. The
noise of a row comes from its own generator, one draw per step, so a document's output depends
on (seed, document id, model, template, settings), not on its batch or actor, up to the
floating-point differences of batched kernels (a padded batch computes the same logits to
~1e-6, which can flip a near-tie). Temperature 0 is plain greedy decoding.

vLLM (``backend`` vllm, or auto with vLLM importable and CUDA available) takes the same prompt
token ids and a per-request ``SamplingParams.seed``; that path is not tested here (no vLLM, no GPU).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pretrain.config import SynthesizeConfig
from pretrain.provenance import stable_hash
from tasks.synthesis.templates import Template, load_template

LOADS = {"models": 0}  # models this process loaded (asked of every actor at the end of a run)


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # generated, up to the EOS
    truncated: bool  # the document was cut to fit the prompt


def document_seed(seed: int, template: str, document_id: str) -> int:
    """The seed of one document's generator: the run's seed, the template and the document alone."""
    return int(stable_hash("synthesize", seed, template, document_id), 16) & (2**63 - 1)


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"synthesize.device {device}: no CUDA device is available (use cpu, or leave it unset)")
    return device


def choose_backend(config: SynthesizeConfig) -> str:
    """transformers or vllm: auto takes vLLM when it is installed and a GPU is there."""
    if config.backend != "auto":
        return config.backend
    import torch

    vllm = importlib.util.find_spec("vllm") is not None
    on_gpu = torch.cuda.is_available() and (config.device is None or config.device.startswith("cuda"))
    return "vllm" if vllm and on_gpu else "transformers"


class Synthesizer:
    """One Ray actor's model and tokenizer (``ShardJob.holder``): loaded when the actor starts."""

    def __init__(self, model_dir: str, config: SynthesizeConfig, gpu_share: float = 1.0):
        self.config = config
        self.template = load_template(config.template, config.templates_dir)
        self.backend = choose_backend(config)
        self.model = load_causal_lm(Path(model_dir), resolve_device(config.device), weights=self.backend != "vllm")
        self.prompt = PromptBuilder(self.model.tokenizer, self.template, config, self.model.max_length)
        self.vllm = VllmEngine(model_dir, config, gpu_share) if self.backend == "vllm" else None

    def generate(self, documents: list[tuple[str, str]]) -> list[Generation]:
        """(document id, text) pairs -> their generations, in order."""
        prompts = [self.prompt.ids(text) for _, text in documents]
        seeds = [document_seed(self.config.seed, self.template.name, doc_id) for doc_id, _ in documents]
        engine = self.vllm or self.model
        outputs = engine.generate([ids for ids, _ in prompts], seeds, self.config)
        return [Generation(text=self.model.decode(tokens), tokens=len(tokens), truncated=truncated)
                for tokens, (_, truncated) in zip(outputs, prompts)]


def model_loads(synthesizer: Synthesizer) -> dict:
    """How often this actor's process loaded a model."""
    return {"pid": os.getpid(), "models": LOADS["models"]}


# ---------------------------------------------------------------- prompts


class PromptBuilder:
    """Token ids of template(document), the document cut to fit."""

    def __init__(self, tokenizer, template: Template, config: SynthesizeConfig, context: int):
        before, after = template.parts()
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.before = bos + tokenizer.encode(before, add_special_tokens=False)
        self.after = tokenizer.encode(after, add_special_tokens=False)
        self.tokenizer = tokenizer
        room = context - len(self.before) - len(self.after) - config.max_new_tokens
        self.document_tokens = min(config.max_input_tokens, room)
        if self.document_tokens < 1:
            raise ValueError(f"template {template.name} takes {len(self.before) + len(self.after)} tokens and "
                             f"max_new_tokens is {config.max_new_tokens}: no room for the document in the model's "
                             f"context of {context} tokens (lower max_new_tokens or shorten the template)")

    def ids(self, text: str) -> tuple[list[int], bool]:
        """(prompt ids, whether the document was cut)."""
        document = self.tokenizer.encode(text, add_special_tokens=False)
        cut = document[:self.document_tokens]
        return self.before + cut + self.after, len(cut) < len(document)


# ---------------------------------------------------------------- transformers


class SeededSampler:
    """A logits processor that samples with the Gumbel-max trick, each row from its own generator."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):  # scores: (B, V) float32
        import torch

        scores = nucleus(scores / self.temperature, self.top_p)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])  # (B, V)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        return scores + gumbel.to(scores.device)


def nucleus(scores, top_p: float):
    """``scores`` with the tokens outside the top-p nucleus at -inf (the most likely one always kept)."""
    if top_p >= 1:
        return scores
    ordered, order = scores.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    outside = (probs.cumsum(dim=-1) - probs) > top_p  # (B, V), sorted order
    return scores.masked_fill(outside.scatter(-1, order, outside), float("-inf"))


@dataclass
class CausalLM:
    model: object | None  # None when vLLM generates
    tokenizer: object
    eos_id: int
    pad_id: int
    max_length: int
    device: str

    def generate(self, prompts: list[list[int]], seeds: list[int], config: SynthesizeConfig) -> list[list[int]]:
        """New token ids per prompt (up to, not including, the first EOS): one left-padded batch."""
        import torch
        from transformers import LogitsProcessorList

        width = max(len(ids) for ids in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        processors = LogitsProcessorList([SeededSampler(seeds, config.temperature, config.top_p)]
                                         if config.temperature > 0 else [])
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=config.max_new_tokens,
                                      do_sample=False, logits_processor=processors, pad_token_id=self.pad_id,
                                      eos_token_id=self.eos_id, num_beams=1, top_k=None, top_p=None,
                                      temperature=None)
        return [until_eos(row.tolist(), self.eos_id) for row in out[:, width:]]

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


def load_causal_lm(folder: Path, device: str, weights: bool = True) -> CausalLM:
    """The HF causal LM in ``folder`` (local files only) on ``device``, in float32 on CPU, bfloat16 on CUDA;
    without ``weights``, its tokenizer and settings only (vLLM loads the weights itself)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.evaluation.models import (
        NO_LENGTH_LIMIT, ModelLoadError, check_causal_lm, context_length, load_tokenizer, no_progress_bar, token_id,
    )

    config = check_causal_lm(folder)
    tokenizer = load_tokenizer(folder)
    model = None
    if weights:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        try:
            with no_progress_bar():
                model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{folder} does not load as a causal LM: {error}") from None
        model = model.to(device).eval()
        LOADS["models"] += 1
    eos_id = token_id(tokenizer.eos_token_id, config.eos_token_id)
    if eos_id is None:
        raise ModelLoadError(f"{folder}: neither the tokenizer nor config.json names an EOS token (where a "
                             "generation ends)")
    pad_id = token_id(tokenizer.pad_token_id, config.pad_token_id)
    max_length = context_length(config, tokenizer)
    tokenizer.model_max_length = NO_LENGTH_LIMIT  # the prompt builder cuts; no "longer than the maximum" warning
    return CausalLM(model=model, tokenizer=tokenizer, eos_id=eos_id,
                    pad_id=eos_id if pad_id is None else pad_id, max_length=max_length, device=device)


# ---------------------------------------------------------------- vLLM (untested here)


class VllmEngine:
    """The same prompts through vLLM, one ``SamplingParams`` (with the document's seed) per prompt."""

    def __init__(self, model_dir: str, config: SynthesizeConfig, gpu_share: float):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ValueError(f"synthesize.backend vllm: vLLM does not import ({error}); use backend "
                             "transformers or auto") from None
        # several actors may share a GPU: each takes its share of vLLM's default 0.9 of the memory
        self.llm = LLM(model=model_dir, seed=config.seed, dtype="auto", gpu_memory_utilization=0.9 * gpu_share)
        LOADS["models"] += 1

    def generate(self, prompts: list[list[int]], seeds: list[int], config: SynthesizeConfig) -> list[list[int]]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=config.temperature, top_p=config.top_p if config.temperature > 0 else 1,
                                 max_tokens=config.max_new_tokens, seed=seed) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        eos_id = self.llm.get_tokenizer().eos_token_id
        return [until_eos(list(output.outputs[0].token_ids), eos_id) for output in outputs]
