"""The Ray the sweep runs on: a local one started for it, or an existing cluster it joins.

A local Ray binds 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) and starts no dashboard
unless asked; `address: auto` or HOST:PORT joins a cluster started with `ray start`, the
cluster launcher or KubeRay. What the pre-flight checks against the cluster Ray sees is in
search/preflight/.

A local Ray is carsweep's own choice, so Ray's announcements of its own defaults for it are
silenced (each where it is made, with the reason); Ray's warnings about a cluster the user
joins, and carsweep's own warnings, stay visible.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from carsweep.config.sweep import ClusterConfig
from carsweep.errors import UserError
from carsweep.interrupts import interrupts_held_back

# Ray >= 2.59 turns token authentication on for every new local cluster and logs a WARNING
# that it did ("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled
# to opt out", authentication_token_setup._warn_token_auth_enabled, called by ray.init when
# RAY_AUTH_MODE is unset). It announces Ray's default, not something the user did, on a cluster
# carsweep starts on loopback. Setting RAY_AUTH_MODE=token would say the same without the
# warning, but Ray reads it when `ray` is imported, before carsweep knows whether it will start
# a Ray or join one; so this logger is quieted during the local ray.init only.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"



def quiet_ray_environment() -> None:
    """Before Ray starts: loopback only, no usage stats, Tune's classic console table."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # so our CompactReporter is used
    # Checkpointing every epoch with num_to_keep=2 trips a warning meant for huge sweeps.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def bind_loopback_only() -> None:
    """Make the local Ray about to start bind 127.0.0.1, whenever ray was imported.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported, and while it is
    unset it turns the 127.0.0.1 asked of `ray.init` into the machine's network address: a
    `carsweep sweep` run from a shell that had not exported the variable opened Ray's ports on
    the network. The variable (set by quiet_ray_environment) reaches the processes Ray starts;
    the value this process read already is corrected here. Only for a local Ray: a driver
    joining a cluster must find its raylet at the node's real address."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextmanager
def ray_session(cluster: ClusterConfig) -> Iterator[None]:
    """Ray connected for the duration of the block; shut down after, if we started it, on
    every way out. Ctrl-C during the start or the shutdown takes effect once that is done: a
    start stopped halfway left Ray's agents running, which no shutdown could find."""
    quiet_ray_environment()
    if ray.is_initialized():
        yield  # a caller (a test, a notebook) owns this Ray
        return
    try:
        with interrupts_held_back():
            _start_or_join(cluster)
        yield
    finally:
        with interrupts_held_back():
            ray.shutdown()


def _start_or_join(cluster: ClusterConfig) -> None:
    try:
        if cluster.address is not None:
            check_address_answers(cluster.address)
            ray.init(address=cluster.address, logging_level=logging.WARNING)
        else:
            bind_loopback_only()
            with _logger_quieted(TOKEN_AUTH_LOGGER):
                ray.init(
                    # "local": a Ray of its own; with no address ray.init joins any Ray
                    # already running here (a `ray start`, another sweep) and shares its CPUs.
                    address="local",
                    _node_ip_address="127.0.0.1",  # a local Ray talks over loopback only
                    num_cpus=cluster.num_cpus,
                    log_to_driver=False,  # the progress table, not every trial's log lines
                    include_dashboard=cluster.dashboard,
                    dashboard_host=cluster.dashboard_host,
                    logging_level=logging.WARNING,
                )
    except ConnectionError as error:
        raise UserError(
            f"cannot join the Ray cluster at {cluster.address}: {error} (if the cluster uses "
            "token authentication, set RAY_AUTH_MODE=token and its token here: docs/cluster.md)"
        ) from None


@contextmanager
def _logger_quieted(name: str) -> Iterator[None]:
    """Only errors from logger `name` while the block runs; its own level again after."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def check_address_answers(address: str, timeout_s: float = 5.0) -> None:
    """HOST:PORT must accept a connection: ray.init retries a dead address for minutes."""
    if address == "auto":
        return  # Ray finds the local cluster itself and fails at once when there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"`cluster.address` = {address!r}: expected 'auto' or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(
            f"cannot join the Ray cluster at {address}: nothing answers there ({reason}); "
            "start one with `ray start --head` or give the head node's HOST:PORT"
        ) from None
