"""SIGKILL at a chosen step of a folder swap (``engine/atomic.py``), for the
crash tests of builds and updates. A test's child process calls
``install(step, out)`` and then writes ``out``; the process kills itself
(no clean-up of any kind) when the write reaches ``step``:

- ``before_swap``: the new folder is complete, nothing is swapped yet;
- ``between_renames``: the old folder has been moved aside, the new one is
  not yet in place (only where the swap takes two renames: ``exchange=False``);
- ``before_removing_the_old``: the new folder is in place, the old one not yet removed.
"""

from __future__ import annotations

import os
import signal


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(step: str, out: str, exchange: bool = True) -> None:
    from ragline.engine import atomic

    out = str(out)
    real_replace, real_rmtree, real_swap = os.replace, atomic.shutil.rmtree, atomic._swap_into_place
    seen = {"swapping": False, "moved_the_old_away": False}

    def replace(a, b):  # watch only the renames of the output folder itself
        if step == "between_renames" and str(b) == out and seen["moved_the_old_away"]:
            die()
        seen["moved_the_old_away"] = seen["moved_the_old_away"] or str(a) == out
        return real_replace(a, b)

    def rmtree(path, **kwargs):
        if step == "before_removing_the_old" and seen["swapping"]:
            die()
        return real_rmtree(path, **kwargs)

    def swap(tmp, path):
        if step == "before_swap":
            die()
        seen["swapping"] = True
        return real_swap(tmp, path)

    atomic.os.replace = replace
    atomic.shutil.rmtree = rmtree
    atomic._swap_into_place = swap
    if not exchange:
        atomic._exchange = lambda a, b: False
