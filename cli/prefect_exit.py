"""A quiet, complete end for commands that ran on Prefect's temporary server.

With no PREFECT_API_URL, Prefect starts a server in a subprocess for the command and
sends it SIGTERM at interpreter exit. Its task-run recorder writes one event per
transaction by default, so a flow of a few hundred tasks leaves a backlog at exit: the
write in progress is cancelled ("Error flushing 1 events ... CancelledError" tracebacks
after a successful command) and the rest of the backlog is never recorded. Here the
temporary server's recorder writes in batches, it gets longer to start, and the command waits (bounded) until
what it ran is recorded before stopping the server itself.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from typing import Callable

# Read by a server this process starts, never by a server elsewhere.
TEMPORARY_SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",  # seconds; the recorder rounds down
    # Prefect's 20 s was seen to run out on a busy 2-core machine (a first start migrates the database)
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
SETTLE_BOUND_S = 10.0
QUIET_FOR_S = 1.5  # longer than one flush interval: a write that was due has happened
POLL_S = 0.25


def quiet_temporary_server() -> Callable[[], None]:
    """Call at a command's start; call what it returns at the command's end."""
    added = _batch_temporary_recorder()
    started_at = datetime.now(timezone.utc)

    def settle() -> None:
        try:
            settle_temporary_server(started_at)
        finally:
            for name in added:  # later servers of this process (a test session's) get Prefect's defaults
                os.environ.pop(name, None)

    return settle


def _batch_temporary_recorder() -> list[str]:
    """Set before Prefect starts a server; a user's own values win. Returns the names set."""
    if "prefect.settings" in sys.modules and not uses_temporary_server():
        return []  # this process already talks to a server that is not its own (a test harness's, say)
    added = [name for name in TEMPORARY_SERVER_ENV if name not in os.environ]
    os.environ.update({name: TEMPORARY_SERVER_ENV[name] for name in added})
    return added


def uses_temporary_server() -> bool:
    """True when no API is configured, so the command's first flow starts a temporary server."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url is None


def settle_temporary_server(started_at: datetime) -> None:
    """Send what the command logged and emitted, wait until its task runs are recorded, stop the server."""
    if "prefect.server.api.server" not in sys.modules or not uses_temporary_server():
        return  # no flow ran, or it ran on a server that outlives the command
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if not server.running:
        return
    _drain_client_workers()
    _wait_until_recorded(server.api_url, started_at)
    server.stop()


def _drain_client_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=SETTLE_BOUND_S)


def _wait_until_recorded(api_url: str, started_at: datetime) -> None:
    """Poll the count of task runs that ended since the command started until it holds still for QUIET_FOR_S."""
    deadline = time.monotonic() + SETTLE_BOUND_S
    last_count, quiet_since = None, time.monotonic()
    while time.monotonic() < deadline:
        count = _ended_task_runs(api_url, started_at)
        if count != last_count:
            last_count, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_FOR_S:
            return
        time.sleep(POLL_S)


def _ended_task_runs(api_url: str, started_at: datetime) -> int | None:
    import httpx

    query = {"task_runs": {"end_time": {"after_": started_at.isoformat()}}}
    try:
        response = httpx.post(f"{api_url}/task_runs/count", json=query, timeout=5.0)
        response.raise_for_status()
        return int(response.json())
    except (httpx.HTTPError, ValueError):
        return None  # a server that does not answer is not waited for beyond QUIET_FOR_S
