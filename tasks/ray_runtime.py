"""Start or join Ray: an embedded local instance by default, a cluster by address."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
from typing import Iterator

import ray
from ray._private import ray_constants

from pretrain.config import RayConfig

LOOPBACK = "127.0.0.1"
REACH_TIMEOUT_S = 10.0  # a cluster head on the network answers a TCP connect in well under that
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


# Ray runs a task that its memory monitor killed again and again, forever by default (task_oom_retries
# -1, a budget apart from max_retries): one input that always exhausts memory stalled the whole run.
# With a bound the task fails with OutOfMemoryError and its file is reported failed. The owner of a task
# (this driver) reads the budget from its environment when Ray starts; RAY_task_oom_retries overrides it.
MAX_OOM_RETRIES = 3
# The packages a cluster's workers need, shipped as py_modules. Named, not imported: this module is below
# flows and must not import it (a package folder is found without running it).
SHIPPED_PACKAGES = ("pretrain", "tasks", "flows", "models")


def _bound_oom_retries() -> None:
    os.environ.setdefault("RAY_task_oom_retries", str(MAX_OOM_RETRIES))


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


class _TokenAuthOnNotice(logging.Filter):
    """Drops Ray's start-up notice that token auth is on (it is meant to be: README, Security); a notice that
    it is off, and every other record, passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _quiet_token_auth_notice() -> None:
    auth_logger = logging.getLogger(TOKEN_AUTH_LOGGER)
    if not any(isinstance(f, _TokenAuthOnNotice) for f in auth_logger.filters):
        auth_logger.addFilter(_TokenAuthOnNotice())


def start_local_ray(num_cpus: int | None, object_store_memory_mb: int) -> None:
    """A new embedded single-node Ray that listens on loopback only, without a dashboard.

    ``address="local"``: never join a cluster that happens to run on this machine (``ray start`` and
    ``ray.cluster_utils`` write /tmp/ray/ray_current_cluster, which a bare ``ray.init`` would join, and then
    refuse ``object_store_memory``). A cluster is used only when an address is configured.
    """
    _quiet_token_auth_notice()
    _bound_oom_retries()
    with _loopback_node_ip():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory_mb * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            log_to_driver=False,
        )


class RayUnreachable(RuntimeError):
    """The configured Ray cluster does not answer."""


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail within ``timeout_s`` when nothing listens at a ``host:port`` (or ``ray://host:port``) address.

    ``ray.init`` retries a GCS that does not answer without end; this probe bounds the wait for the
    common cases (a wrong port, a stopped cluster). ``auto`` and other forms are left to Ray.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise RayUnreachable(f"Ray cluster at {address} does not answer ({error}); check --ray-address, "
                             "RAY_ADDRESS or ray.address, or leave them unset for a local instance") from error


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` (or ``ray://host:port``) address names this machine's loopback."""
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


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
        check_reachable(address)
        _bound_oom_retries()
        # A cluster on this machine's loopback (tests; one-machine clusters): Ray 2.60 would swap 127.0.0.1 for
        # the host's routable address on the client side too and retry a GCS that is not there, without end.
        keep_loopback = _loopback_node_ip() if is_loopback(address) else contextlib.nullcontext()
        with keep_loopback:
            ray.init(
                address=address,
                runtime_env={"py_modules": [package_folder(name) for name in SHIPPED_PACKAGES]},
                log_to_driver=False,
            )
    else:
        start_local_ray(cfg.num_cpus, cfg.object_store_memory_mb)
    return True


def package_folder(name: str) -> str:
    """The folder of a top-level package, as Ray ships a package module object (its one ``__path__`` entry)."""
    [folder] = importlib.util.find_spec(name).submodule_search_locations
    return folder


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
