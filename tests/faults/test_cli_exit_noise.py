"""A successful command on Prefect's temporary server (no PREFECT_API_URL) ends quietly and completely.

The command runs in its own process with a fresh PREFECT_HOME, so Prefect starts (and at the end stops)
a server for it alone. A flow of a few hundred quick tasks is what used to leave the server's task-run
recorder with a backlog at exit: ERROR "Error flushing 1 events" with CancelledError tracebacks on
stderr after rc 0, and most task runs never recorded.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

pytestmark = pytest.mark.faults

N_TASKS = 200

# The `pretrain` app with one more command: a flow of N quick tasks, through the CLI's own exit path.
PROBE = textwrap.dedent("""
    from prefect import flow, task

    from cli.main import app


    @task
    def one(i: int) -> int:
        return i


    @flow
    def many(n: int) -> int:
        return sum(future.result() for future in [one.submit(i) for i in range(n)])


    @app.command("probe")
    def probe(n: int) -> None:
        print("sum", many(n))


    app()
""")


def _run_on_temporary_server(tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {key: value for key, value in os.environ.items()
           if key != "PREFECT_API_URL" and not key.startswith("PREFECT_SERVER_SERVICES_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(REPO),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    return subprocess.run([sys.executable, str(script), "probe", str(N_TASKS)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _recorded_task_runs(prefect_home) -> dict[str, int]:
    """What the temporary server left in its database: task runs by state type."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return dict(db.execute("SELECT state_type, count(*) FROM task_run GROUP BY state_type").fetchall())


def test_a_temporary_server_stops_without_flush_tracebacks(tmp_path, ledger):
    run = _run_on_temporary_server(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"sum {N_TASKS * (N_TASKS - 1) // 2}" in run.stdout
    for noise in ("Traceback", "Error flushing", "CancelledError"):
        assert noise not in run.stderr, f"{noise!r} in a successful command's stderr:\n{run.stderr[-3000:]}"
    recorded = _recorded_task_runs(tmp_path / "prefect-home")  # the temporary server's own database
    assert recorded == {"COMPLETED": N_TASKS}
    ledger(f"a successful command on the temporary Prefect server (a flow of {N_TASKS} tasks)",
           "rc 0, no flush tracebacks, every task run recorded (was: 'Error flushing 1 events' + "
           "CancelledError tracebacks, about 10 of 200 task runs recorded)",
           task_runs_recorded=recorded["COMPLETED"])
