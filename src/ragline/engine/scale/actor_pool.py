"""An ordered map over a pool of Ray actors: what a scaled-out build (passages
to encode) and a scaled-out run (a pipeline's batches) both do.

Each actor is made once, from its class and constructor arguments passed by
value (they are settings: a few hundred bytes), and keeps what it loaded
(models, indexes) for every call. Calls go to the actor with the fewest calls
unfinished, at most ``IN_FLIGHT`` each (one running, one queued, so an actor
never waits for the driver), and results come back in the order of the
inputs. The driver holds only the inputs in flight, so a corpus of any size
streams through.

An actor that dies (a crash, the OOM killer, a lost node) is restarted by Ray
and the calls it held are run again (``FAULT_TOLERANCE``): the output is
unchanged. An error a call raises is not retried (it would raise again); it
leaves the map as itself (``ray_session.readable_errors``).

Ray Data did this before, at a cost: its executor's start and per-block
bookkeeping (seconds of a build's fixed cost), pyarrow tables for rows, and
constructor arguments in the object store, which made Ray log an error line
for every actor ("max_restarts > 0 ... constructor arguments in the object
store") on every successful build.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ragline.engine.scale.ray_session import FAULT_TOLERANCE

IN_FLIGHT = 2
# Results held back behind a slow call, at most, per actor: a stalled actor
# (restarting, say) pauses the others rather than filling the driver's memory.
AHEAD = 8


@contextlib.contextmanager
def actor_pool(ray, actor_class: type, args: tuple, workers: int, resources: dict[str, Any],
               env: dict[str, str] | None = None) -> Iterator[list]:
    """``workers`` actors of ``actor_class(*args)``, each with ``resources``
    (``ray_session.actor_resources``) and ``env`` in its environment, spread
    over the cluster's nodes; killed after the block."""
    options = {**resources, **FAULT_TOLERANCE, "scheduling_strategy": "SPREAD"}  # one per node while nodes are free
    if env:
        options["runtime_env"] = {"env_vars": env}
    remote_class = ray.remote(**options)(actor_class)
    actors = [remote_class.remote(*args) for _ in range(workers)]
    try:
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def ordered_map(ray, actors: list, method: str, inputs: Iterable, send: Callable[[Any], Any] = lambda item: item
                ) -> Iterator[tuple[Any, Any]]:
    """``(input, actor.method(send(input)))`` for every input, in input order,
    the calls spread over ``actors``."""
    calls: deque[tuple[Any, Any, int]] = deque()  # (input, result ref, actor) in input order
    unfinished = [0] * len(actors)
    finished: set = set()

    def settle(wait: bool) -> None:
        """Note the calls that have finished; with ``wait``, wait for one."""
        refs = [ref for _, ref, _ in calls if ref not in finished]
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=1 if wait else len(refs), timeout=None if wait else 0)
        for ref in ready:
            finished.add(ref)
            unfinished[next(a for _, r, a in calls if r == ref)] -= 1

    def take() -> tuple[Any, Any]:
        item, ref, actor = calls.popleft()
        if ref not in finished:
            unfinished[actor] -= 1
        finished.discard(ref)
        return item, ray.get(ref)

    for item in inputs:
        settle(wait=False)
        while min(unfinished) >= IN_FLIGHT or len(calls) >= AHEAD * len(actors):
            if calls[0][1] in finished:
                yield take()
            else:
                settle(wait=True)
        actor = unfinished.index(min(unfinished))
        calls.append((item, getattr(actors[actor], method).remote(send(item)), actor))
        unfinished[actor] += 1
        while calls and calls[0][1] in finished:  # hand back what is done, keeping the driver's memory flat
            yield take()
    while calls:
        yield take()
