"""PNG figures for an analysed comparison: one per family of measures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_lab.config import REGIME_LABELS
from mtl_lab.plots import REGIME_COLOURS, n_main_axis

LABEL_COLOURS = {"reused": "#2ca02c", "modified": "#ff7f0e", "new": "#d62728",
                 "unused": "#c7c7c7"}
FAMILIES = {
    "representation": ["pr", "pr_reference", "ensd_reference", "cka_reference"],
    "weights": ["weight_change", "conservation_drift"],
    "norms": ["path_norm_l1", "path_norm_l2", "l1_main", "l12", "ptft_penalty", "f1_main",
              "group_norm"],
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _regimes(frame: pd.DataFrame) -> list[str]:
    return [v for v in REGIME_LABELS.values() if v in set(frame["regime_label"])]


def metric_panels(analysis: pd.DataFrame, metrics: list[str], path: Path, title: str) -> Path:
    """One panel per metric: mean over seeds vs n_main, one line per regime."""
    plt = _plt()
    metrics = [m for m in metrics if m in analysis and analysis[m].notna().any()]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.6 * max(1, len(metrics)), 3.2),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        means = analysis.groupby(["regime_label", "n_main"])[metric].mean()
        for label in _regimes(analysis):
            if label in means.index.get_level_values(0):
                part = means.loc[label].dropna()
                ax.plot(part.index, part.values, marker="o", label=label,
                        color=REGIME_COLOURS[label])
        n_main_axis(ax, analysis["n_main"])
        ax.set_title(metric.replace("_", " "))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reuse_bars(analysis: pd.DataFrame, path: Path) -> Path:
    """Share of the main task's contribution by unit label, per regime and n_main."""
    plt = _plt()
    cols = [f"share_{k}" for k in LABEL_COLOURS]
    means = analysis.groupby(["regime_label", "n_main"])[cols].mean()
    order = [(r, n) for r in _regimes(analysis) for n in sorted(analysis["n_main"].unique())
             if (r, n) in means.index]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(order) + 2), 3.6))
    bottom = [0.0] * len(order)
    for col, (label, colour) in zip(cols, LABEL_COLOURS.items()):
        values = [float(means.loc[key, col]) for key in order]
        ax.bar(range(len(order)), values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(order)), [f"{r}\nn={n}" for r, n in order], fontsize=7)
    ax.set_ylabel("share of main-task contribution")
    ax.set_title("which units carry the main task")
    ax.legend(frameon=False, fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def unit_scatter(analysis: pd.DataFrame, units: pd.DataFrame, path: Path) -> Path:
    """Per unit: auxiliary vs main contribution, coloured by label (largest n_main, seed 0)."""
    plt = _plt()
    regimes = _regimes(analysis)
    fig, axes = plt.subplots(1, len(regimes), figsize=(3.3 * len(regimes), 3.2), squeeze=False)
    for ax, label in zip(axes[0], regimes):
        runs = analysis[analysis["regime_label"] == label].sort_values(["n_main", "seed"])
        run_id = runs.iloc[-1]["run_id"]
        table = units[units["run_id"] == run_id]
        aux = next((c for c in ("pretrained_contrib_aux", "contrib_aux")
                    if c in table and table[c].notna().any()), None)
        x = table[aux] if aux else table["contrib_main"] * 0.0  # STL: no auxiliary task
        for name, colour in LABEL_COLOURS.items():
            part = table["label"] == name
            if part.any():
                ax.scatter(x[part], table.loc[part, "contrib_main"], s=10, color=colour,
                           label=name)
        ax.set_xlabel("auxiliary contribution")
        ax.set_ylabel("main contribution")
        ax.set_title(f"{label} (n={runs.iloc[-1]['n_main']})", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analysis_figures(analysis: pd.DataFrame, units: pd.DataFrame, out_dir: Path) -> list[Path]:
    """All figures of ``mtl-lab analyze``, under out_dir/figures."""
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [reuse_bars(analysis, folder / "reuse.png"),
             unit_scatter(analysis, units, folder / "units.png")]
    for name, metrics in FAMILIES.items():
        paths.append(metric_panels(analysis, metrics, folder / f"{name}.png", name))
    return paths
