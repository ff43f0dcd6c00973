"""Which failures are worth retrying: transient infrastructure, never bad input."""

from __future__ import annotations

import ray.exceptions

TRANSIENT_RAY_ERRORS = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.RaySystemError,
    ray.exceptions.TaskUnschedulableError,
)


class TransientFetchError(Exception):
    """A failure worth retrying; ``retry_after`` is the server's requested delay in seconds.

    Defined here, in the ground package, so that ``is_transient_error`` can name it
    without importing the fetch code above it."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, without Ray's wrapper and remote traceback."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return exc.cause
    return exc


def describe_error(exc: BaseException) -> str:
    cause = root_cause(exc)
    return f"{type(cause).__name__}: {cause}"


def is_transient_error(exc: BaseException) -> bool:
    """True for network and worker failures; False for bad input, bad config, bugs."""
    exc = root_cause(exc)
    if isinstance(exc, TRANSIENT_RAY_ERRORS):
        return True
    return isinstance(exc, (TransientFetchError, ConnectionError, TimeoutError))
