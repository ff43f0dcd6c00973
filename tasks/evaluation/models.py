"""The model an evaluation scores: a Hugging Face causal-LM folder, or a run folder of ours.

A run folder (``train_config.json`` and ``checkpoints/``) means its newest intact checkpoint,
consolidated and exported with ``models.export_hf`` into ``RUN/eval-export/step<N>/`` on first
use; the export is reused while the checkpoint it came from is unchanged (its ``client.json``'s
size and mtime, recorded in ``eval-source.json`` beside the weights). Any other folder is loaded
with ``AutoModelForCausalLM`` and ``AutoTokenizer`` from local files only: evaluation never
downloads. What the scorer needs is gathered in ``ScoringModel``: ``logits_fn`` (input ids ->
logits, no mask: the scorer right-pads), ``encode`` (no special tokens, as lm-eval's causal models
encode a request), the EOS, pad and unknown-token ids and the context length.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # torch is imported where a model is loaded: cli.common imports this module for its error
    import torch

    from tasks.evaluation.scorer import Encode, LogitsFn

EXPORT_FOLDER = "eval-export"  # under a run folder: one HF export per checkpoint scored
SOURCE_FILE = "eval-source.json"  # in an export: the checkpoint it was made from
DEFAULT_MAX_LENGTH = 2048  # lm-eval's, when neither the config nor the tokenizer says
SANE_MAX_LENGTH = 10_000_000  # tokenizers without a limit say 1e30
NO_LENGTH_LIMIT = int(1e30)  # transformers' VERY_LARGE_INTEGER
LENGTH_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")


class ModelLoadError(ValueError):
    """The model path cannot be evaluated: missing, not a causal LM, no tokenizer, no weights."""


@dataclass(frozen=True)
class ScoringModel:
    """What the scorer needs from a loaded model and its tokenizer."""

    name: str  # the path as given
    folder: Path  # the HF folder loaded (an export, for a run folder)
    logits_fn: LogitsFn
    encode: Encode
    eos_id: int
    pad_id: int
    unk_id: int | None
    max_length: int
    device: torch.device
    checkpoint: str | None = None  # the run's checkpoint tag, for a run folder
    parameters: int = 0


def is_run_folder(path: Path) -> bool:
    return (path / "train_config.json").is_file() and (path / "checkpoints").is_dir()


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(f"device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


def check_model_path(path: Path) -> None:
    """The quick checks, before any weights are read: the path exists, and is a run folder or a folder
    whose config.json names a causal LM."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {path} does not exist: give a Hugging Face causal-LM folder or a run folder")
    if not path.is_dir():
        raise ModelLoadError(f"model {path} is not a folder: give a Hugging Face causal-LM folder or a run folder")
    if not is_run_folder(path):
        check_causal_lm(path)


def check_causal_lm(folder: Path):
    """The folder's transformers config, when it describes a causal LM; else ModelLoadError saying why."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a causal language model folder (no config.json) and not a run "
                             "folder (no train_config.json and checkpoints/)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{folder}/config.json does not load as a transformers config: {error}") from None
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = config.architectures or []
    if architectures and not causal.intersection(architectures):
        raise ModelLoadError(f"{folder} is not a causal language model: its config.json names "
                             f"{', '.join(architectures)}, none of them a causal LM class (e.g. LlamaForCausalLM)")
    if not architectures and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{folder} is not a causal language model: model type {config.model_type!r} has no "
                             "causal-LM class in transformers")
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{folder} is an encoder-decoder model ({config.model_type}), not a causal LM")
    return config


def load_model(path: str | Path, device: str = "auto", dtype: torch.dtype | None = None,
               say: Callable[[str], None] = lambda line: None) -> ScoringModel:
    """The model at ``path`` (an HF causal-LM folder or a run folder), on ``device``, in ``dtype``
    (default float32: scores comparable across devices)."""
    import torch

    path = Path(path)
    check_model_path(path)
    checkpoint = None
    folder = path
    if is_run_folder(path):
        folder, checkpoint = exported_checkpoint(path, say)
    return load_hf_folder(folder, resolve_device(device), dtype or torch.float32, name=str(path),
                          checkpoint=checkpoint)


def load_hf_folder(folder: Path, device: torch.device, dtype: torch.dtype, name: str,
                   checkpoint: str | None = None) -> ScoringModel:
    from transformers import AutoModelForCausalLM

    config = check_causal_lm(folder)
    tokenizer = load_tokenizer(folder)
    try:
        with no_progress_bar():
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder} does not load as a causal LM: {error}") from None
    model.to(device).eval()
    eos_id = token_id(tokenizer.eos_token_id, config.eos_token_id)
    if eos_id is None:
        raise ModelLoadError(f"{folder}: neither the tokenizer nor config.json names an EOS token (scoring a choice "
                             "with an empty context starts from it)")

    def logits_fn(input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V); right padding needs no mask
        return model(input_ids=input_ids, use_cache=False).logits

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    pad_id = token_id(tokenizer.pad_token_id, config.pad_token_id)
    max_length = context_length(config, tokenizer)
    tokenizer.model_max_length = NO_LENGTH_LIMIT  # the scorer truncates; no "longer than the maximum" warning
    return ScoringModel(name=name, folder=folder, logits_fn=logits_fn, encode=encode, eos_id=eos_id,
                        pad_id=eos_id if pad_id is None else pad_id, unk_id=unknown_token_id(tokenizer),
                        max_length=max_length, device=device, checkpoint=checkpoint,
                        parameters=sum(p.numel() for p in model.parameters()))


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """transformers' "Loading weights" bar off while a model loads (the command has its own bar)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{folder} has no usable tokenizer (tokenizer.json / tokenizer_config.json): "
                             f"{error}") from None


def token_id(*candidates) -> int | None:
    """The first id given; a list (several EOS ids in config.json) gives its first."""
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return None


def unknown_token_id(tokenizer) -> int | None:
    """The id a tokenizer without byte fallback gives to text outside its vocabulary (None for byte-level BPE)."""
    if tokenizer.unk_token_id is not None:
        return tokenizer.unk_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    unk = getattr(getattr(backend, "model", None), "unk_token", None) if backend is not None else None
    return backend.token_to_id(unk) if unk else None


def context_length(config, tokenizer) -> int:
    """The model's context length as lm-eval finds it: the config's, else the tokenizer's, else 2048."""
    for field in LENGTH_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and 0 < value < SANE_MAX_LENGTH:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < SANE_MAX_LENGTH:
        return value
    return DEFAULT_MAX_LENGTH


# ---------------------------------------------------------------- a run folder: its newest checkpoint, exported


def exported_checkpoint(run_dir: Path, say: Callable[[str], None]) -> tuple[Path, str]:
    """(the HF export of the run's newest intact checkpoint, its tag); exported now unless an export of
    that same checkpoint is there."""
    from tasks.train.checkpoint import COMPLETE_MARKER, checkpoint_root, newest_intact_checkpoint

    newest = newest_intact_checkpoint(checkpoint_root(run_dir), say=say)
    if newest is None:
        raise ModelLoadError(f"run folder {run_dir} has no complete, undamaged checkpoint to evaluate")
    _, checkpoint = newest
    out = run_dir / EXPORT_FOLDER / checkpoint.name
    source = checkpoint_identity(checkpoint / COMPLETE_MARKER)
    if (out / SOURCE_FILE).is_file() and json.loads((out / SOURCE_FILE).read_text()) == source:
        return out, checkpoint.name
    say(f"exporting {checkpoint} to {out}")
    export_checkpoint(run_dir, checkpoint, out)
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
    return out, checkpoint.name


def checkpoint_identity(marker: Path) -> dict:
    stat = marker.stat()
    return {"checkpoint": str(marker.parent.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def export_checkpoint(run_dir: Path, checkpoint: Path, out: Path) -> Path:
    """Consolidate ``checkpoint`` and write it as an HF folder with the run's tokenizer (``flows.train``'s export)."""
    from models.export_hf import export_hf
    from pretrain.config import ModelConfig, TrainConfig
    from tasks.train.checkpoint import consolidate_fp32, saved_model_shape

    cfg = TrainConfig.model_validate_json((run_dir / "train_config.json").read_text())
    tokenizer = Path(cfg.data_dir) / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelLoadError(f"run folder {run_dir}: its tokenizer {tokenizer} (train.data_dir) is gone; the model "
                             "cannot be evaluated without it")
    summary_path = run_dir / "summary.json"
    shape = saved_model_shape(checkpoint) or (json.loads(summary_path.read_text()).get("model")
                                              if summary_path.is_file() else None)
    if shape is None:
        raise ModelLoadError(f"no model shape in {checkpoint / 'client.json'} or {summary_path}")
    try:
        state = consolidate_fp32(checkpoint.parent, checkpoint.name)
    except (FileNotFoundError, ValueError) as error:
        raise ModelLoadError(f"run folder {run_dir}: {error}") from None
    return export_hf(state, ModelConfig.model_validate(shape), out, tokenizer_file=tokenizer,
                     inputs=[run_dir, checkpoint])
