"""A hook through which long-running flows report progress to whoever runs them.

The CLI installs a rich progress bar; under a Prefect worker nothing is installed
and progress goes to the flow's log only.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

ProgressCallback = Callable[[str, int, int], None]
_callback: ContextVar[ProgressCallback | None] = ContextVar("pretrain_progress", default=None)


def report_progress(stage: str, done: int, total: int) -> None:
    callback = _callback.get()
    if callback is not None:
        callback(stage, done, total)


@contextmanager
def progress_to(callback: ProgressCallback) -> Iterator[None]:
    token = _callback.set(callback)
    try:
        yield
    finally:
        _callback.reset(token)
