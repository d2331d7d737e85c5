"""Connect to a Ray cluster for the big jobs (catalogue embedding, ensemble training), or start a local one.

Ray is an optional extra (``pip install 'enclip[scale]'``) imported only here and in the engines that use it. A
local cluster binds to 127.0.0.1 only, without the dashboard; an existing cluster is reached by its address
(``HOST:PORT`` of the head's GCS, as printed by ``ray start --head``). Ray's token authentication stays on: nodes
and drivers on one machine share the token in ``~/.ray/auth_token``; on several machines give every node the same
token (``RAY_AUTH_TOKEN``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from enclip.errors import EnclipError

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the embedding engine's dependency; fail early when the extra is missing)
    except ImportError as error:
        raise EnclipError("the Ray engine needs ray[data]: pip install 'enclip[scale]'") from error
    return ray


def _use_token_if_any() -> None:
    """Authenticate to an existing cluster with the token this machine holds (``~/.ray/auth_token`` or
    ``RAY_AUTH_TOKEN``): `ray start` turns token authentication on by default, but a driver connecting with
    ``ray.init(address=...)`` does not look for the token unless told to (``RAY_AUTH_MODE=token``)."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep a local cluster on 127.0.0.1. Ray replaces a loopback node address by the machine's reachable IP (and
    then listens on every interface) unless multi-node clusters are off, which is what this switch says."""
    from ray._private import ray_constants

    name, before = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, ray_constants.ENABLE_RAY_CLUSTER
    env_before = os.environ.get(name)
    os.environ[name] = "0"  # for the processes the cluster starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by ray's address resolution in this process
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if env_before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = env_before


def _start_local(ray, cpus: int, attempts: int = 2) -> None:
    """A new local cluster ("local": never one that `ray start` left running), tried twice: on a busy machine its
    GCS server sometimes misses Ray's start-up deadline, and a second start succeeds."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=cpus, _node_ip_address=LOCAL_HOST, include_dashboard=False,
                     log_to_driver=False)
            return
        except Exception as error:  # noqa: BLE001 - retried once, then reported by the caller
            ray.shutdown()
            if attempt == attempts:
                raise
            log.warning("Ray: the local cluster did not start (%s); trying again", error)


@contextmanager
def ray_session(address: str | None = None, cpus: int | None = None) -> Iterator[object]:
    """A connected Ray session, shut down on exit if this call opened it.

    ``address=None`` starts a local cluster on 127.0.0.1 with ``cpus`` CPUs (default: all of this machine's).
    Inside an already initialised Ray session (a test, a notebook), that session is used as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    with ExitStack() as stack:
        if not address or address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
            stack.enter_context(_loopback_only())
        try:
            if address:
                _use_token_if_any()
                ray.init(address=address, log_to_driver=False)
            else:
                _start_local(ray, cpus or os.cpu_count() or 1)
        except Exception as error:  # ConnectionError, RuntimeError, ValueError... depending on what is wrong
            raise EnclipError(f"cannot start or reach the Ray cluster {address or '(local)'}: {error}") from error
        stack.callback(ray.shutdown)
        log.info("Ray: %s with %s", address or "local cluster on 127.0.0.1", ray.cluster_resources())
        yield ray
