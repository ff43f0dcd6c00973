"""Checkpoint folders of a run: ``RUN_DIR/checkpoints/step<N>/`` (DeepSpeed's layout inside).

Listing and pruning go by the step number in the tag, not by mtime. A checkpoint
counts only when complete: DeepSpeed writes the ``latest`` file after every rank has
saved, and ``main`` writes ``client.json`` (step, data state) into the tag folder
after that, so a folder without ``client.json`` (a crash mid-save) is ignored.

``client.json`` is also the manifest: ``files`` maps every other file of the folder (as
rank 0 sees it) to its size in bytes at save time. A checkpoint whose files no longer
match (truncated, deleted) is damaged: resume skips it for the newest intact one, and
export names the file. Folders saved before the manifest existed have no ``files`` and
are taken as they are.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

from tasks.train.errors import CheckpointDamaged  # noqa: F401  (raised here; its callers import it here)

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


def file_sizes(folder: str | Path) -> dict[str, int]:
    """Size in bytes of every file under ``folder`` but the marker (paths relative, with /)."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): path.stat().st_size
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != COMPLETE_MARKER}


def damage(folder: str | Path) -> str | None:
    """Why a complete checkpoint folder cannot be used (None when its files match the manifest)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / COMPLETE_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError) as error:
        return f"{COMPLETE_MARKER} is unreadable ({error})"
    for name, size in (manifest or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{path} is {actual:,} bytes, the manifest says {size:,}"
    return None


def newest_intact_checkpoint(root: str | Path, say: Callable[[str], None] = print) -> tuple[int, Path] | None:
    """The newest complete checkpoint whose files match its manifest; each damaged newer one is skipped
    with a line through ``say`` naming it and the reason."""
    for step, folder in reversed(list_checkpoints(root)):
        reason = damage(folder)
        if reason is None:
            return step, folder
        say(f"skipping damaged checkpoint {folder.name}: {reason}")
    return None


def checkpoint_folder(root: str | Path, tag: str | None, say: Callable[[str], None] = lambda line: None) -> Path:
    """The folder of ``tag`` (default: the newest intact checkpoint, ``say`` told of each damaged newer
    one), checked against its manifest."""
    root = Path(root)
    if tag is None:
        newest = newest_intact_checkpoint(root, say=say)
        if newest is None:
            raise FileNotFoundError(f"no complete, undamaged checkpoint under {root}")
        return newest[1]
    folder = root / tag
    if not (folder / COMPLETE_MARKER).is_file():
        complete = ", ".join(f.name for _, f in list_checkpoints(root)) or "none"
        raise FileNotFoundError(f"no complete checkpoint {tag!r} under {root} (complete: {complete})")
    reason = damage(folder)
    if reason is not None:
        intact = [f.name for _, f in list_checkpoints(root) if damage(f) is None]
        raise CheckpointDamaged(f"checkpoint {tag} is damaged: {reason}; intact checkpoints: "
                                f"{', '.join(intact) or 'none'}")
    return folder


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


def saved_model_shape(folder: str | Path) -> dict | None:
    """The ModelConfig fields the checkpoint was saved with (None for folders saved before they were recorded)."""
    try:
        return json.loads((Path(folder) / COMPLETE_MARKER).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None


def consolidate_fp32(root: str | Path, tag: str | None = None) -> dict:
    """A consolidated fp32 state dict (parameter name -> full tensor) from a checkpoint, for
    export; ``tag`` defaults to the newest intact checkpoint. ZeRO 1-3 partitions are merged
    with DeepSpeed's zero_to_fp32; a ZeRO-0 checkpoint holds the whole module already."""
    import torch

    folder = checkpoint_folder(root, tag)
    from tasks.train.parallel import consolidate_fp32 as consolidate_split

    try:
        split = consolidate_split(folder, json.loads((folder / COMPLETE_MARKER).read_text()))
        if split is not None:  # saved under tensor or pipeline parallel: merged from its pieces
            return split
        if not any(folder.glob("*optim_states.pt")):  # ZeRO-0: one mp_rank_00_model_states.pt
            states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
            return {name: tensor.float() for name, tensor in states["module"].items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(root), tag=folder.name)
    except RuntimeError as error:  # e.g. "PytorchStreamReader failed reading zip archive", which names no file
        raise CheckpointDamaged(f"checkpoint {folder} does not load: {error}") from error
