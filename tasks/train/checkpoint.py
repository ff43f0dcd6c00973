"""Checkpoint folders of a run: ``RUN_DIR/checkpoints/step<N>/`` (DeepSpeed's layout inside).

Listing and pruning go by the step number in the tag, not by mtime. A checkpoint
counts only when complete: DeepSpeed writes the ``latest`` file after every rank has
saved, and ``main`` writes ``client.json`` (step, data state) into the tag folder
after that, so a folder without ``client.json`` (a crash mid-save) is ignored.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

TAG_PATTERN = re.compile(r"^step(\d+)$")
COMPLETE_MARKER = "client.json"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step{step}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    found = []
    for folder in Path(root).glob("step*"):
        match = TAG_PATTERN.match(folder.name)
        if match and folder.is_dir() and (folder / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def newest_checkpoint(root: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (and incomplete ones older than
    the newest complete one); return what was deleted."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    complete = list_checkpoints(root)
    doomed = [folder for _, folder in complete[:-keep]]
    if complete:
        newest = complete[-1][0]
        complete_folders = {folder for _, folder in complete}
        for folder in Path(root).glob("step*"):
            match = TAG_PATTERN.match(folder.name)
            if match and folder not in complete_folders and int(match.group(1)) < newest:
                doomed.append(folder)
    for folder in doomed:
        shutil.rmtree(folder)
    return doomed


def consolidate_fp32(root: str | Path, tag: str | None = None) -> dict:
    """A consolidated fp32 state dict (parameter name -> full tensor) from a checkpoint, for
    export; ``tag`` defaults to the newest complete checkpoint. ZeRO 1-3 partitions are merged
    with DeepSpeed's zero_to_fp32; a ZeRO-0 checkpoint holds the whole module already."""
    import torch

    if tag is None:
        newest = newest_checkpoint(root)
        if newest is None:
            raise FileNotFoundError(f"no complete checkpoint under {root}")
        tag = newest[1].name
    folder = Path(root) / tag
    if not any(folder.glob("*optim_states.pt")):  # ZeRO-0: one mp_rank_00_model_states.pt
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {name: tensor.float() for name, tensor in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
