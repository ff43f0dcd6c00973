"""Session-wide real services: one Prefect server (temporary SQLite) and one local Ray.

Environment is set before Prefect is imported so its settings pick it up.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="pretrain-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = os.path.join(_PREFECT_HOME, "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data sample not found: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect server for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (2 CPUs, small object store), on loopback only."""
    import ray

    from tasks.ray_runtime import start_local_ray

    start_local_ray(num_cpus=2, object_store_memory_mb=256)
    yield ray
    ray.shutdown()


@pytest.fixture
def services(prefect_server, ray_session):
    return prefect_server


@pytest.fixture(scope="session")
def ray_cluster():
    """One real two-node Ray cluster on loopback for the session (tests/ray_cluster.py: a head and one more
    raylet, 1 CPU each), started when a test first asks for it; clients join it through ``RAY_ADDRESS``
    with ``cluster.env``. A test that kills a node starts a cluster of its own."""
    from ray_cluster import loopback_cluster

    with loopback_cluster(nodes=2, cpus=1) as cluster:
        yield cluster


# ---------------------------------------------------------------- the fault ledger

_LEDGER = pytest.StashKey[list]()


@pytest.fixture
def ledger(request):
    """``ledger(fault, outcome, **counts)``: record a fault tried, its outcome and what was checked.

    Rows with the same fault and outcome (a parametrized test) are merged, their counts summed. The table
    is printed at the end of the session and written as JSON to $PRETRAIN_FAULT_LEDGER when set.
    """
    records = request.config.stash.setdefault(_LEDGER, [])
    return lambda fault, outcome, **counts: records.append({"fault": fault, "outcome": outcome, "counts": counts})


def _merged(records: list[dict]) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for record in records:
        row = rows.setdefault((record["fault"], record["outcome"]), {**record, "counts": {}})
        for name, value in record["counts"].items():
            row["counts"][name] = row["counts"].get(name, 0) + value
    return list(rows.values())


def pytest_terminal_summary(terminalreporter, config):
    rows = _merged(config.stash.get(_LEDGER, []))
    if not rows:
        return
    terminalreporter.write_sep("=", f"fault ledger: {len(rows)} faults")
    terminalreporter.write_line("| fault | outcome | counts |\n| --- | --- | --- |")
    for row in rows:
        counts = ", ".join(f"{name} {value:,}" for name, value in row["counts"].items())
        terminalreporter.write_line(f"| {row['fault']} | {row['outcome']} | {counts} |")
    if path := os.environ.get("PRETRAIN_FAULT_LEDGER"):
        Path(path).write_text(json.dumps(rows, indent=1) + "\n")
        terminalreporter.write_line(f"fault ledger written to {path}")
from parallel_fixtures import one_process_run, parallel_shards  # noqa: E402,F401  (session-wide, for tests/test_parallel_*.py)
