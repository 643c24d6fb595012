"""A Ray session for one scaled-out command, and what every ragline job on
Ray shares: actor resources, fault tolerance, and errors a user can read.

Ray is imported here, only when a command asks for it (``--ray``), so ragline
without Ray never loads it. ``ray_session(address)`` connects — ``auto``:
Ray's own rule (``RAY_ADDRESS``, else the cluster last started on this
machine, else a new local instance); ``local``: always a new local instance;
else a cluster's ``host:port`` — and disconnects afterwards. A caller that
connected already (a test, a notebook) keeps its session as it is.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from ragline.engine.errors import InputError, RaglineError
from ragline.engine.optional import import_optional

log = logging.getLogger(__name__)

# A worker that dies (a crash, the OOM killer, a lost node) is restarted this
# many times, and the batch it held is retried on it; the output is unchanged.
FAULT_TOLERANCE = {"max_restarts": 3, "max_task_retries": 3}
_CONNECT_TIMEOUT_S = 5.0
# Ray's crash handler takes SIGSEGV, which the JVM (Lucene, for BM25) raises
# and handles itself as a matter of course: with both in one process, Ray's
# handler turns a routine JVM signal into a crash. Ray reads this when
# imported, and its local processes inherit it.
JVM_SAFE = {"RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def import_ray():
    for name, value in JVM_SAFE.items():
        os.environ.setdefault(name, value)
    return import_optional("ray", needed_for="--ray")


@contextlib.contextmanager
def ray_session(address: str = "auto") -> Iterator[Any]:
    """The ``ray`` module, connected to the cluster at ``address`` for the block."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_address(address)
    faulthandler_was_on = faulthandler.is_enabled()
    auth_log = logging.getLogger(_RAY_AUTH_LOGGER)
    auth_log.addFilter(_secure_default_notice)
    try:
        ray.init(address=None if address == "auto" else address, include_dashboard=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot connect to Ray at {address!r}: {_first_line(err)}") from None
    finally:
        # Ray's driver turns Python's faulthandler on, whose SIGSEGV handler then
        # runs before the JVM's (BM25 runs Lucene in this process). The JVM
        # raises SIGSEGV on purpose (implicit null checks, safepoints): the
        # faulthandler printed "Fatal Python error" and re-raised it with kill(),
        # which the JVM then took for a real crash (exit 134 on a 1,400-document
        # build). Off again, it restores the JVM's handler.
        if not faulthandler_was_on and faulthandler.is_enabled():
            faulthandler.disable()
        auth_log.removeFilter(_secure_default_notice)
    log.info("connected to Ray: %s", _describe(ray.cluster_resources()))
    try:
        yield ray
    finally:
        ray.shutdown()


# A new local Ray instance turns token authentication on, and says so as a
# warning on every start (it is a notice, with the way to opt out): ragline
# keeps the secure default and drops the notice. Ray's warning that
# authentication is *off* still shows.
_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _secure_default_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def check_address(address: str) -> None:
    """Fail in seconds, in one line, where Ray would retry a wrong address for
    minutes; commands that work long before they connect call it first."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    if not address or address == "local" or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address!r}: give auto, local, or the head node's HOST:PORT (port 6379 by default)")
    if not 1 <= int(port) <= 65535:
        raise InputError(f"--ray {address!r}: {port} is not a port (1 to 65535)")
    try:
        with socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise InputError(f"cannot reach a Ray cluster at {address} ({err.strerror or err}); "
                         "is its head node running (`ray start --head` prints the address)?") from None


def actor_resources(gpus_per_actor: int) -> dict[str, Any]:
    """What each actor of a pool asks Ray for: its GPUs where it runs on GPUs,
    else one CPU slot (its torch then runs on one thread: Ray sets
    OMP_NUM_THREADS to the slots it gives)."""
    if gpus_per_actor:
        return {"num_gpus": gpus_per_actor, "num_cpus": 1}
    return {"num_cpus": 1}


def cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def default_workers(ray, gpus_per_actor: int) -> int:
    """One actor per GPU (or per group of ``gpus_per_actor``), else one per CPU slot."""
    resources = ray.cluster_resources()
    if gpus_per_actor:
        return max(1, int(resources.get("GPU", 0)) // gpus_per_actor)
    return max(1, int(resources.get("CPU", 1)))


@contextlib.contextmanager
def readable_errors() -> Iterator[None]:
    """A ragline error raised in a Ray task (a bad corpus line, a bad setting)
    leaves the block as itself, without the remote traceback Ray wraps it in,
    so the command prints it in one line."""
    try:
        yield
    except Exception as error:
        readable = user_error(error)
        if readable is None or readable is error:
            raise
        raise readable from None


def user_error(error: BaseException) -> RaglineError | None:
    """The ragline error (a bad corpus line, a bad setting) that a Ray task
    raised, without the remote traceback Ray wraps around it; None when the
    failure is not one."""
    from ray.exceptions import RayError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RaglineError) and not isinstance(current, RayError):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{int(resources.get(kind, 0))} {kind}" for kind in ("CPU", "GPU"))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
