"""Code versions, content-derived keys and the info.json every output folder gets."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pretrain import __version__


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def code_version(*module_names: str) -> str:
    """The package version plus a hash of the named modules' source files.

    A change to any listed module changes the version, so cached results computed by
    older code are not reused (Prefect's TASK_SOURCE would only see the task body).
    """
    digest = hashlib.sha256(__version__.encode())
    for name in sorted(module_names):
        module = importlib.import_module(name)
        digest.update(Path(module.__file__).read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_info_json(folder: Path, *, stage: str, code: str, config: dict, inputs: list[str], **extra: Any) -> Path:
    """Record what produced a folder: stage, code version, config and inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "stage": stage,
        "code_version": code,
        "config": config,
        "inputs": inputs,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    path = folder / "info.json"
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return path


def replace_dir(new: Path, target: Path) -> None:
    """Put a finished folder ``new`` at ``target``; an existing ``target`` is moved aside
    first and removed after, so readers never see a half-written folder."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
