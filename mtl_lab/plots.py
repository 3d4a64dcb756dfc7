"""Figures of a comparison: test loss vs n_main per regime (mean ± s.e.m. over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_lab.regime_specs import REGIME_SPECS


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG (creating the folder) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def loss_unit(results: pd.DataFrame) -> str:
    """What a table's test losses measure: cross-entropy for the real-image (classification)
    family, the mean squared error for the teacher–student ones."""
    family = results.get("config.task.family")
    classifying = family is not None and family.eq("class_split").any()
    return "cross-entropy" if classifying else "MSE"


def n_main_axis(ax, values) -> None:
    """A log₂ n_main axis ticked at the sizes actually run."""
    sizes = sorted({int(v) for v in values})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("main-task training samples n_main")


def plot_comparison(results: pd.DataFrame, path: str | Path,
                    metric: str = "test_loss_main", title: str | None = None) -> Path:
    """:func:`comparison_figure` saved as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = comparison_figure(results, metric, title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def comparison_figure(results: pd.DataFrame, metric: str = "test_loss_main",
                      title: str | None = None):
    """Log–log plot of ``metric`` against n_main, one line per regime: mean over seeds, error
    bars = standard error of the mean (s.e.m.); a ring marks a mean over a run that stopped at
    the step budget, a cross one over a diverged run (left out of the mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtl_lab.flags import flag_legend_handles, mark_flagged

    finite = results[pd.to_numeric(results[metric], errors="coerce").notna()]
    stats = finite.groupby(["regime_label", "n_main"])[metric].agg(["mean", "sem", "count"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    present = set(stats.index.get_level_values(0))
    for spec in [s for s in REGIME_SPECS.values() if s.label in present]:
        part = stats.loc[spec.label]
        ax.errorbar(part.index, part["mean"], yerr=part["sem"].fillna(0.0), marker="o",
                    capsize=3, label=spec.label, color=spec.colour)
        mark_flagged(ax, results[results["regime_label"] == spec.label], "n_main", part["mean"],
                     spec.colour)
    n_main_axis(ax, results["n_main"])
    ax.set_yscale("log")
    unit = loss_unit(results) if "loss" in metric else "accuracy"
    ax.set_ylabel(f"{metric.replace('_', ' ')} ({unit}), mean ± s.e.m.")
    seeds = int(stats["count"].max()) if len(stats) else 0
    subtitle = f"mean ± s.e.m. over {seeds} seed(s)"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + flag_legend_handles(results), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
