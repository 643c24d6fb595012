"""Position-bias statistics for PosIR-style evaluation.

Each query carries where its evidence sits in the relevant document:
``relpos = clip(((start + end) / 2) / char_length, 0, 1)``, and the document's
length bucket: Q1 ≤ 512 tokens, Q2 ≤ 1024, Q3 ≤ 1536, Q4 > 1536. Queries are
put into 20 equal relpos bins; a bin's score is the mean nDCG@10 of its
queries.

- bucket score: the mean over non-empty bins of the bin scores (so every
  position counts equally, however many queries landed there);
- PSI (position sensitivity index) = 1 − min bin score / max bin score:
  0 when every position is served equally, 1 when some position gets nothing;
- slope: least-squares slope of bin score against bin centre; positive means
  late evidence is found better (recency bias), negative early (primacy bias).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BINS = 20
BUCKETS = (("Q1", 512), ("Q2", 1024), ("Q3", 1536), ("Q4", None))


def relative_position(start: int, end: int, char_length: int) -> float:
    if char_length <= 0:
        raise ValueError("pos_char_length must be positive")
    return min(1.0, max(0.0, ((start + end) / 2) / char_length))


def length_bucket(token_length: int) -> str:
    for name, limit in BUCKETS:
        if limit is None or token_length <= limit:
            return name
    raise AssertionError("unreachable")


def bin_of(relpos: float, bins: int = BINS) -> int:
    return min(bins - 1, int(relpos * bins))


@dataclass(frozen=True)
class PositionCurve:
    centres: list[float]  # of non-empty bins
    scores: list[float]  # mean nDCG@10 per non-empty bin
    counts: list[int]

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else float("nan")

    @property
    def psi(self) -> float:
        if not self.scores:
            return float("nan")
        high = max(self.scores)
        return 0.0 if high == 0 else 1.0 - min(self.scores) / high

    @property
    def slope(self) -> float:
        n = len(self.scores)
        if n < 2:
            return float("nan")
        mx = sum(self.centres) / n
        my = sum(self.scores) / n
        sxx = sum((x - mx) ** 2 for x in self.centres)
        return sum((x - mx) * (y - my) for x, y in zip(self.centres, self.scores)) / sxx


def position_curve(points: Iterable[tuple[float, float]], bins: int = BINS) -> PositionCurve:
    """``points`` are ``(relpos, ndcg)`` pairs."""
    sums = [0.0] * bins
    counts = [0] * bins
    for relpos, value in points:
        b = bin_of(relpos, bins)
        sums[b] += value
        counts[b] += 1
    filled = [b for b in range(bins) if counts[b]]
    return PositionCurve(
        centres=[(b + 0.5) / bins for b in filled],
        scores=[sums[b] / counts[b] for b in filled],
        counts=[counts[b] for b in filled],
    )


def position_report(rows: Sequence[dict], bins: int = BINS) -> dict:
    """``rows`` have ``ndcg``, ``relpos`` and ``bucket``. Returns the overall
    and per-bucket mean, bucket score, PSI and slope, and the curves."""
    def describe(curve: PositionCurve, subset: Sequence[dict]) -> dict:
        return {
            "queries": len(subset),
            "mean_ndcg10": sum(r["ndcg"] for r in subset) / len(subset) if subset else float("nan"),
            "binned_ndcg10": curve.mean,
            "psi": curve.psi,
            "slope": curve.slope,
            "curve": {"centres": curve.centres, "scores": curve.scores, "counts": curve.counts},
        }

    report = {"overall": describe(position_curve(((r["relpos"], r["ndcg"]) for r in rows), bins), rows)}
    for name, _ in BUCKETS:
        subset = [r for r in rows if r["bucket"] == name]
        if subset:
            report[name] = describe(position_curve(((r["relpos"], r["ndcg"]) for r in subset), bins), subset)
    return report
