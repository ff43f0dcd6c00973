"""Start or join Ray: an embedded local instance by default, a cluster by address."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import ray
from ray._private import ray_constants

import flows
import models
import pretrain
import tasks
from pretrain.config import RayConfig

LOOPBACK = "127.0.0.1"


def ray_address(cfg: RayConfig) -> str | None:
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """Make ``_node_ip_address=127.0.0.1`` stick while a local instance starts.

    Ray 2.60's ``ray.init`` replaces a loopback node address with the machine's
    routable one (``services.resolve_ip_for_localhost``) unless Ray clusters are
    disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once at import into
    ``ray_constants.ENABLE_RAY_CLUSTER``). With the routable address the GCS,
    raylet, workers, dashboard agent, runtime-env agent and autoscaler monitor
    listen on all interfaces (seen: ``::``, ``0.0.0.0`` and the host's address).
    With 127.0.0.1 every one of them binds to loopback; tests/test_security.py
    lists the sockets and fails if that ever changes.
    """
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def start_local_ray(num_cpus: int | None, object_store_memory_mb: int) -> None:
    """An embedded single-node Ray that listens on loopback only, without a dashboard."""
    with _loopback_node_ip():
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=object_store_memory_mb * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            log_to_driver=False,
        )


def ensure_ray(cfg: RayConfig) -> bool:
    """Initialise Ray unless it already is; True when this call started it.

    Local instances bind to loopback, run no dashboard and get a bounded object
    store. A cluster gets our packages shipped as ``py_modules`` so its workers
    run this code version (third-party packages come from the cluster image).
    """
    if ray.is_initialized():
        return False
    address = ray_address(cfg)
    if address:
        ray.init(
            address=address,
            runtime_env={"py_modules": [pretrain, tasks, flows, models]},
            log_to_driver=False,
        )
    else:
        start_local_ray(cfg.num_cpus, cfg.object_store_memory_mb)
    return True


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
