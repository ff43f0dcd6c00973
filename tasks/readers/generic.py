"""Reader stub: filled in by its owner (see tasks/readers/__init__.py for the interface)."""

from __future__ import annotations

DEFAULT_SOURCE = None
REASONS: tuple[str, ...] = ()


def read(path, part, cfg, counts):
    raise NotImplementedError("generic reader")
