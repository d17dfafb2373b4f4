"""The paper's Figure 6: every run's score per configuration, one panel per metric.

matplotlib is imported here only (the `experiments` extra), so `import nucseg` never needs it.
"""
from __future__ import annotations

from pathlib import Path

from nucseg.experiments.plan import METRIC_LABELS, METRICS


def plot_runs(rows: dict, path, title: str) -> Path:
    """Dots: one per run; bar: the mean over runs. Rows that did not run are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucseg.io import atomic_path

    ran = [r for r in rows.values() if r["status"] == "run"]
    if not ran:
        raise ValueError("no configuration was run: nothing to plot")
    width = max(8.0, 2.2 * len(METRICS) + 0.25 * len(METRICS) * len(ran))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(width, 4.2), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        for x, row in enumerate(ran):
            values = [100 * run["mean"][metric] for run in row["runs"].values()
                      if run["mean"][metric] is not None]
            offsets = [0.0] if len(values) < 2 else [
                -0.15 + 0.3 * i / (len(values) - 1) for i in range(len(values))]
            ax.scatter([x + o for o in offsets], values, s=16, color="tab:blue", zorder=3)
            if values:
                mean = sum(values) / len(values)
                ax.hlines(mean, x - 0.3, x + 0.3, color="black", linewidth=1.5, zorder=2)
        ax.set_title(METRIC_LABELS[metric])
        ax.set_xticks(range(len(ran)))
        ax.set_xticklabels([r["label"] for r in ran], rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(ran) - 0.4)
        ax.grid(axis="y", linewidth=0.3)
    axes[0][0].set_ylabel("score (%)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
