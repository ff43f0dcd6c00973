"""Code versions, content-derived keys and the info.json every output folder gets."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, ContextManager, Iterator

from pretrain import __version__
from pretrain.codegraph import closure_files, package_data


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def code_version(*module_names: str) -> str:
    """The package version plus a hash of the named modules, every project module they import and
    the data files shipped in those modules' packages.

    The import closure is computed from the source (``pretrain.codegraph``), so a change to any
    module a stage runs changes the version and cached results computed by older code are not
    reused (Prefect's TASK_SOURCE would only see the task body; a hand-kept list goes stale).
    Files are re-read on every call, so an edit made while a process runs is seen.
    """
    modules = closure_files(*module_names)
    digest = hashlib.sha256(__version__.encode())
    for name, path in [*modules.items(), *package_data(modules).items()]:
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def part_path(path: Path) -> Path:
    """Where a file is written before it is complete (``.NAME.<pid>-<random>.part``: never
    matched by the reader's patterns, and swept as a ``.*.part`` leftover by the output lock).

    The name is unique per writer, so two runs writing the same file at once (a rerun
    racing a killed run's surviving worker) cannot corrupt each other: each renames a
    complete file into place.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    tmp = part_path(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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


def exclusive_lock(path: Path, label: str, busy: Callable[[str], Exception]) -> ContextManager[None]:
    """An exclusive, non-blocking ``flock`` on ``path``, held for a with-block.

    The file is opened here, so an unwritable place raises OSError before any
    with-block. Entering takes the lock and writes who holds it (``label``, pid, host,
    since when) into the file; when another process holds it, entering raises
    ``busy(that holder's line)`` instead. The kernel drops the lock when the holding
    process ends, however it ends, so a killed run leaves no stale lock (and Linux's
    NFS client maps flock to NFSv4 byte-range locks, so a shared folder is covered).
    """
    return _held(open(path, "a+"), label, busy)


@contextlib.contextmanager
def _held(handle: IO[str], label: str, busy: Callable[[str], Exception]) -> Iterator[None]:
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise busy(handle.read().strip() or "holder not recorded yet") from None
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{label}, pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # free again: nobody is named
    finally:
        handle.close()  # closing releases the lock

