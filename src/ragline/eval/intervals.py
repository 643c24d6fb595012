"""How sure a mean over questions is, and whether one run beats another.

- ``bootstrap_interval``: the percentile bootstrap 95% interval of a mean —
  the questions resampled with replacement, the 2.5th and 97.5th
  percentiles of the resampled means. A fixed seed makes a report
  reproducible to the digit.
- ``paired_comparison``: two runs on the same questions. Their difference is
  judged per question, so what every method finds easy or hard cancels: the
  interval is the bootstrap of the mean per-question difference, and the
  exact sign test asks whether B beats A on more questions than a coin would
  (ties dropped), without assuming anything about the size of differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
METHOD = f"{LEVEL:.0%} percentile bootstrap over questions ({RESAMPLES} resamples, seed {SEED})"
# Resampled indices drawn at once: bounds memory (8 bytes each) on large sets.
_DRAWS_AT_ONCE = 1 << 22


def bootstrap_interval(values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = SEED) -> tuple[float, float] | None:
    """(low, high) of the mean of ``values``; None for no values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    rows = max(1, _DRAWS_AT_ONCE // x.size)
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        means[start: start + count] = x[rng.integers(0, x.size, size=(count, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap_interval(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES,
                              level: float = LEVEL, seed: int = SEED) -> tuple[float, float] | None:
    """The interval of the mean difference B − A, resampling questions (pairs)."""
    return bootstrap_interval(_differences(a, b), resamples, level, seed)


def sign_test(differences: Sequence[float]) -> float:
    """Exact two-sided sign test p-value; zero differences (ties) are dropped."""
    d = np.asarray(differences, dtype=np.float64)
    positive, negative = int((d > 0).sum()), int((d < 0).sum())
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(positive, negative) + 1))
    # Exact integers up to the one division: fine for any number of questions.
    return min(1.0, 2 * tail / 2 ** n)


def paired_comparison(a: Sequence[float], b: Sequence[float], higher_is_better: bool | None = True) -> dict[str, Any]:
    """Means, mean difference B − A with its paired interval, sign-test p and
    B's wins, ties and losses (a win is B better; with no known direction,
    ``higher_is_better=None``, a win is B higher)."""
    d = _differences(a, b)
    better = d if higher_is_better in (True, None) else -d
    return {
        "n": int(d.size),
        "mean_a": float(np.mean(a)) if d.size else None,
        "mean_b": float(np.mean(b)) if d.size else None,
        "difference": float(d.mean()) if d.size else None,
        "interval": paired_bootstrap_interval(a, b),
        "p": sign_test(d),
        "wins": int((better > 0).sum()),
        "ties": int((better == 0).sum()),
        "losses": int((better < 0).sum()),
    }


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    return b - a
