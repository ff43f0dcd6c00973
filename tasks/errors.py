"""Which failures are worth retrying: transient infrastructure, never bad input."""

from __future__ import annotations

import ray.exceptions

from tasks.fetch import TransientFetchError

TRANSIENT_RAY_ERRORS = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.RaySystemError,
    ray.exceptions.TaskUnschedulableError,
)


def is_transient_error(exc: BaseException) -> bool:
    """True for network and worker failures; False for bad input, bad config, bugs."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        exc = exc.cause
    if isinstance(exc, TRANSIENT_RAY_ERRORS):
        return True
    return isinstance(exc, (TransientFetchError, ConnectionError, TimeoutError))
