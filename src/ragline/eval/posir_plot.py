"""Plots of retrieval quality against evidence position."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ragline.engine.optional import import_optional
from ragline.eval.posir_metrics import BUCKETS


def plot_position_bias(reports: Mapping[str, Mapping], path: Path, title: str = "nDCG@10 by evidence position") -> Path:
    """One panel per run (``reports`` maps a label to a position report), one
    line per length bucket."""
    import_optional("matplotlib", needed_for="plots").use("Agg")
    plt = import_optional("matplotlib.pyplot", needed_for="plots")
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4), sharey=True, squeeze=False)
    for ax, (label, report) in zip(axes[0], reports.items()):
        for bucket, _ in BUCKETS:
            if bucket in report:
                curve = report[bucket]["curve"]
                ax.plot(curve["centres"], curve["scores"], marker="o", markersize=3,
                        label=f"{bucket} (PSI {report[bucket]['psi']:.2f})")
        ax.set_title(label)
        ax.set_xlabel("relative evidence position")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("nDCG@10")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
