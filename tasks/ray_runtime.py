"""Start or join Ray: an embedded local instance by default, a cluster by address."""

from __future__ import annotations

import os

import ray

import flows
import models
import pretrain
import tasks
from pretrain.config import RayConfig

LOOPBACK = "127.0.0.1"


def ray_address(cfg: RayConfig) -> str | None:
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


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
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            log_to_driver=False,
        )
    return True


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
