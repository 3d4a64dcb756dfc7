"""Figures of a comparison: test loss vs n_main per regime (mean ± s.e.m. over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_lab.config import REGIME_LABELS

REGIME_COLOURS = {
    "STL": "#4d4d4d",
    "MTL": "#1f77b4",
    "PT+FT": "#d62728",
    "PT+LP": "#ff7f0e",
    "LP ridge": "#9467bd",
    "NTK ridge": "#2ca02c",
}


def n_main_axis(ax, values) -> None:
    """A log₂ n_main axis ticked at the sizes actually run."""
    sizes = sorted({int(v) for v in values})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("main-task training samples n_main")


def plot_comparison(results: pd.DataFrame, path: str | Path,
                    metric: str = "test_loss_main", title: str | None = None) -> Path:
    """Log–log plot of ``metric`` against n_main, one line per regime, error bars = s.e.m."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = results.groupby(["regime_label", "n_main"])[metric].agg(["mean", "sem", "count"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label in [v for v in REGIME_LABELS.values() if v in stats.index.get_level_values(0)]:
        part = stats.loc[label]
        ax.errorbar(part.index, part["mean"], yerr=part["sem"].fillna(0.0), marker="o",
                    capsize=3, label=label, color=REGIME_COLOURS[label])
    n_main_axis(ax, stats.index.get_level_values(1))
    ax.set_yscale("log")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (MSE)")
    seeds = int(stats["count"].max()) if len(stats) else 0
    ax.set_title(title or f"mean ± s.e.m. over {seeds} seed(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
