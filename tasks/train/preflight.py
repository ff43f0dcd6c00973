"""What can be checked in the launching process, before any rank starts.

A bad run config or data folder fails here with one message (the CLI prints it and
exits 2) instead of in every rank, behind the launcher's ChildFailedError. The checks
repeat what the ranks would find: the data folder's index.json, one window of
``seq_len + 1`` tokens in the train split (the data stream wraps around, so one is
enough for any batch and world size), the model shape and the vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from models.sizes import model_config
from pretrain.config import ModelConfig, TrainConfig
from tasks.tokenize import TokenShards

MAX_SEQ_LEN = 131_072  # tokens per sequence; past this one sequence's attention does not fit a device


class TrainConfigError(ValueError):
    """The run cannot start as configured: its data or its model shape is wrong. Not transient."""


@dataclass
class Preflight:
    """What the checks found: the model shape, the windows per split, and warnings to show."""

    model: ModelConfig
    windows: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def resolve_model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """The run's model shape: ``cfg.model`` or the named size, fitted to the data's vocabulary."""
    if cfg.model is not None:
        model = cfg.model
        if model.vocab_size < vocab_size:
            raise TrainConfigError(f"model.vocab_size {model.vocab_size} is smaller than the data's vocabulary "
                                   f"{vocab_size} (index.json vocab_size); token ids up to {vocab_size - 1} occur")
    elif cfg.model_size:
        try:
            model = model_config(cfg.model_size, vocab_size=vocab_size, max_seq_len=cfg.seq_len)
        except ValueError as error:
            raise TrainConfigError(f"model_size: {error}") from error
    else:
        raise TrainConfigError("set model_size or model")
    if model.max_seq_len < cfg.seq_len:
        raise TrainConfigError(f"seq_len {cfg.seq_len} is over the model's max_seq_len {model.max_seq_len}")
    return model


def open_index(data_dir: str | Path) -> dict:
    """index.json of a tokenize output folder, with a message naming what is missing or unreadable."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise TrainConfigError(f"data_dir {folder}: no such folder (give the output of `pretrain tokenize`)")
    path = folder / "index.json"
    if not path.is_file():
        raise TrainConfigError(f"no index.json in {folder} (is it the output of a finished `pretrain tokenize`?)")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TrainConfigError(f"{path} is not readable JSON: {error}") from error
    missing = [key for key in ("vocab_size", "tokens", "splits", "dtype", "eos_id") if key not in index] \
        if isinstance(index, dict) else ["all keys"]
    if missing:
        raise TrainConfigError(f"{path} lacks {', '.join(missing)}; tokenize the data again")
    return index


def check_token_files(data_dir: str | Path) -> None:
    """The ``.bin`` files index.json lists exist with the sizes it gives (as the ranks will check)."""
    try:
        TokenShards.open(data_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TrainConfigError(f"token data in {data_dir}: {error}") from error


def split_windows(tokens: int, seq_len: int) -> int:
    """Windows of ``seq_len + 1`` tokens starting every ``seq_len`` (as tasks.train.data cuts them)."""
    return max(0, (tokens - 1) // seq_len)


def check_run(cfg: TrainConfig) -> Preflight:
    """Every check that needs no rank; raises TrainConfigError naming the cause."""
    if not cfg.data_dir:
        raise TrainConfigError("no token data: set data_dir (the output of `pretrain tokenize`)")
    if cfg.seq_len > MAX_SEQ_LEN:
        raise TrainConfigError(f"seq_len {cfg.seq_len:,} is over {MAX_SEQ_LEN:,}, the longest sequence "
                               "this trainer runs")
    index = open_index(cfg.data_dir)
    check_token_files(cfg.data_dir)
    model = resolve_model_config(cfg, int(index["vocab_size"]))
    tokens = {split: int(index["tokens"].get(split, 0)) for split in ("train", "val")}
    windows = {split: split_windows(n, cfg.seq_len) for split, n in tokens.items()}
    if windows["train"] == 0:
        raise TrainConfigError(f"the train split of {cfg.data_dir} has {tokens['train']:,} tokens: not one "
                               f"window of seq_len {cfg.seq_len:,} + 1; lower seq_len or tokenize more data")
    found = Preflight(model, windows)
    if windows["val"] == 0:
        found.warnings.append(
            f"no validation loss will be computed: the val split of {cfg.data_dir} has {tokens['val']:,} tokens, "
            f"not one window of seq_len {cfg.seq_len:,} + 1 (tokenized with val_fraction "
            f"{index.get('val_fraction')}; tokenize again with a larger val_fraction, or lower seq_len)")
    return found
