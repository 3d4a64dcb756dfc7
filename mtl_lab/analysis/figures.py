"""PNG figures for an analysed comparison: one per family of measures.

Each figure is built by a ``*_figure`` function that returns the matplotlib Figure (for tests and
notebooks) and saved by the function of the same family without the suffix. Line plots over
n_main ring the points that average over a run stopped at the step budget and cross those that
average over a diverged run (:mod:`mtl_lab.flags`). In a sweep folder, runs of different swept
settings are never pooled: a line (or bar) is a condition of :func:`~mtl_lab.analysis.diagnosis.
conditions` — a regime with every setting that varies among its runs — and when the trunk width
is swept, the reuse measures are also drawn against the width (:func:`reuse_width_figure`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mtl_lab.analysis.diagnosis import conditions
from mtl_lab.flags import flag_legend_handles, mark_flagged
from mtl_lab.plots import n_main_axis
from mtl_lab.regime_specs import REGIME_SPECS, colour_of
from mtl_lab.tables import fmt, sorted_values

LABEL_COLOURS = {"reused": "#2ca02c", "modified": "#ff7f0e", "new": "#d62728",
                 "unused": "#c7c7c7"}
FAMILIES = {
    "representation": ["pr", "pr_reference", "ensd_reference", "cka_reference"],
    "weights": ["weight_change", "conservation_drift", "conservation_drift_rel"],
    "norms": ["path_norm_l1", "path_norm_l2", "l1_main", "l12", "ptft_penalty", "f1_main",
              "group_norm"],
}
FAMILY_TITLES = {
    "representation": "representation (reference: the pretrained network for PT+FT, PT+LP and "
                      "ridge; the STL network for MTL)",
    "weights": "weight change and conservation laws, from where training started",
    "norms": "norms of the trained solution",
}
# metric -> (panel title, y-axis label: the quantity and what it measures)
METRIC_LABELS = {
    "share_reused": ("main task on reused units", "share of the main-task contribution"),
    "share_modified": ("main task on modified units", "share of the main-task contribution"),
    "share_new": ("main task on new units", "share of the main-task contribution"),
    "pr": ("dimensionality of the features", "participation ratio PR = (tr C)² / tr C²"),
    "pr_reference": ("dimensionality of the reference features",
                     "participation ratio PR of the reference"),
    "ensd_reference": ("dimensions shared with the reference",
                       "ENSD with reference (shared dimensions)"),
    "cka_reference": ("similarity to the reference", "linear CKA (unbiased) with reference"),
    "weight_change": ("relative weight change",
                      "‖W − W_start‖_F / ‖W_start‖_F, layer mean"),
    "conservation_drift": ("conservation-law drift (absolute)",
                           "max_j |Δh_j| (squared-weight units)"),
    "conservation_drift_rel": ("conservation-law drift (relative)",
                               "max_j |Δh_j| / max(‖θ_start‖², ‖θ_end‖²)"),
    "path_norm_l1": ("ℓ1 path-norm", "ℓ1 path-norm ‖Φ(θ)‖₁ (all heads)"),
    "path_norm_l2": ("ℓ2 path-norm", "ℓ2 path-norm ‖Φ(θ)‖₂ (all heads)"),
    "l1_main": ("ℓ1 norm of the main predictor", "‖β_main‖₁"),
    "l12": ("ℓ1,2 group norm of both tasks", "Σ_d √(β_aux,d² + β_main,d²)"),
    "ptft_penalty": ("PT+FT implicit penalty", "R_PTFT(β_main; β_aux, γ)"),
    "f1_main": ("F1 norm of the main task", "Σ_j ‖w_j‖·|v_main,j|"),
    "group_norm": ("group norm over task heads", "Σ_j ‖w_j‖·‖v_·,j‖₂"),
}


def metric_labels(metric: str) -> tuple[str, str]:
    """(panel title, y-axis label) of a metric; a readable fallback for unknown ones."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    name = metric.replace("_", " ")
    return name, name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _regimes(frame: pd.DataFrame) -> list[str]:
    """The labels of the registered regimes present in ``frame``, in the registry's order."""
    present = set(frame["regime_label"])
    return [s.label for s in REGIME_SPECS.values() if s.label in present]


def _natural(name: str) -> list:
    """Sort key reading the numbers in a name as numbers (width=16 before width=128)."""
    return [(0, float(part), "") if i % 2 else (1, 0.0, part)
            for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", name))]


LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _conditions(frame: pd.DataFrame, exclude=()) -> list[tuple[str, pd.DataFrame, dict]]:
    """(name, runs, line style) per condition, regimes in the registry's order; the conditions
    of one regime share its colour and differ in line style and marker."""
    named = frame.assign(_condition=conditions(frame, exclude))
    out = []
    for label in _regimes(frame):
        rows = named[named["regime_label"] == label]
        names = sorted(rows["_condition"].unique(), key=_natural)
        for rank, name in enumerate(names):
            out.append((name, rows[rows["_condition"] == name],
                        {"color": colour_of(label), "linestyle": LINESTYLES[rank % 4],
                         "marker": MARKERS[rank % len(MARKERS)]}))
    return out


def metric_figure(analysis: pd.DataFrame, metrics: list[str], title: str):
    """One panel per metric: mean over seeds vs n_main, one line per regime; a shared legend
    with every regime drawn in any panel and the marks of flagged runs."""
    plt = _plt()
    metrics = [m for m in metrics if m in analysis and analysis[m].notna().any()]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.8 * max(1, len(metrics)), 3.6),
                             squeeze=False, layout="constrained")
    handles: dict[str, object] = {}
    lines = _conditions(analysis)
    for ax, metric in zip(axes[0], metrics):
        for name, rows, style in lines:
            means = rows.groupby("n_main")[metric].mean().dropna()
            if means.empty:
                continue
            (line,) = ax.plot(means.index, means.values, label=name, **style)
            handles.setdefault(name, line)
            mark_flagged(ax, rows, "n_main", means, style["color"])
        n_main_axis(ax, analysis["n_main"])
        panel_title, ylabel = metric_labels(metric)
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(True, alpha=0.3)
    if not metrics:
        axes[0][0].text(0.5, 0.5, "no run has these measures", ha="center", va="center",
                        transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
    legend = [handles[name] for name, _, _ in lines if name in handles]
    legend += flag_legend_handles(analysis)
    if legend:
        fig.legend(handles=legend, loc="outside lower center", frameon=False, fontsize=8,
                   ncol=min(len(legend), 6))
    fig.suptitle(title, fontsize=10)
    return fig


def metric_panels(analysis: pd.DataFrame, metrics: list[str], path: Path, title: str) -> Path:
    """:func:`metric_figure`, saved to ``path``."""
    return _save(metric_figure(analysis, metrics, title), path)


def reuse_figure(analysis: pd.DataFrame):
    """Share of the main task's contribution by unit label, per regime and n_main (runs with no
    main head, i.e. ridge references, have no shares and are left out)."""
    plt = _plt()
    cols = [f"share_{k}" for k in LABEL_COLOURS]
    frame = analysis.dropna(subset=[c for c in cols if c in analysis], how="all")
    frame = frame.assign(_condition=conditions(frame)) if not frame.empty else frame
    means = frame.reindex(columns=["_condition", "n_main", *cols]).groupby(
        ["_condition", "n_main"])[cols].mean()
    order = [(name, n) for name, _, _ in (_conditions(frame) if not frame.empty else [])
             for n in sorted(frame["n_main"].unique()) if (name, n) in means.index]
    rotate = len(order) > 8
    longest = max((len(name) for name, _ in order), default=0)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(order) + 2),
                                    3.6 + (0.07 * longest if rotate else 0.0)),
                           layout="constrained")
    bottom = [0.0] * len(order)
    for col, (label, colour) in zip(cols, LABEL_COLOURS.items()):
        values = [float(means.loc[key, col]) for key in order]
        ax.bar(range(len(order)), values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(order)), [f"{r}\nn={n}" for r, n in order], fontsize=7,
                  rotation=90 if rotate else 0)
    ax.set_ylabel("share of main-task contribution")
    ax.set_title("which units carry the main task")
    fig.legend(frameon=False, fontsize=8, ncol=4, loc="outside lower center")
    return fig


WIDTH = "config.model.width"
WIDTH_MEASURES = ("share_reused", "share_modified", "share_new", "pr")


def reuse_width_figure(analysis: pd.DataFrame):
    """Feature reuse vs trunk width (SCIENCE.md §7): the shares of the main task's contribution
    on reused, modified and new units and the participation ratio, mean over seeds, a line per
    condition (every other swept setting kept apart), a row of panels per n_main."""
    plt = _plt()
    measures = [m for m in WIDTH_MEASURES if m in analysis and analysis[m].notna().any()]
    ns = sorted_values(analysis["n_main"])
    fig, axes = plt.subplots(len(ns), len(measures), squeeze=False, layout="constrained",
                             figsize=(3.4 * len(measures), 2.8 * len(ns) + 0.8))
    lines = _conditions(analysis, exclude=[WIDTH])
    widths = sorted_values(analysis[WIDTH])
    handles: dict[str, object] = {}
    for n, panels in zip(ns, axes):
        for ax, measure in zip(panels, measures):
            for name, rows, style in lines:
                means = rows[rows["n_main"] == n].groupby(WIDTH)[measure].mean().dropna()
                if not means.empty:
                    (line,) = ax.plot(means.index, means.values, label=name, **style)
                    handles.setdefault(name, line)
            ax.set_xscale("log")
            ax.set_xticks(widths, [fmt(w) for w in widths], fontsize=7)
            ax.minorticks_off()
            title, ylabel = metric_labels(measure)
            ax.set_title(f"{title}, n_main = {fmt(n)}", fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("trunk width")
    fig.legend(handles=list(handles.values()), loc="outside lower center", frameon=False,
               fontsize=8, ncol=min(len(handles), 4))
    fig.suptitle("feature reuse vs trunk width", fontsize=10)
    return fig


def reuse_bars(analysis: pd.DataFrame, path: Path) -> Path:
    """:func:`reuse_figure`, saved to ``path``."""
    return _save(reuse_figure(analysis), path)


def _has_main(units: pd.DataFrame, run_id) -> bool:
    table = units[units["run_id"] == run_id]
    return "contrib_main" in table and bool(table["contrib_main"].notna().any())


def unit_figure(analysis: pd.DataFrame, units: pd.DataFrame):
    """Per unit: auxiliary vs main contribution, coloured by label (largest n_main, first seed),
    one panel per regime that has a main head; one figure legend covers every label drawn."""
    plt = _plt()
    panels = []
    for label in _regimes(analysis):
        runs = analysis[analysis["regime_label"] == label].sort_values(["n_main", "seed"])
        runs = runs[[_has_main(units, r) for r in runs["run_id"]]]
        if not runs.empty:
            panels.append((label, runs.iloc[-1]))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.3 * max(1, len(panels)), 3.4),
                             squeeze=False, layout="constrained")
    drawn: dict[str, object] = {}
    for ax, (label, run) in zip(axes[0], panels):
        table = units[units["run_id"] == run["run_id"]]
        aux = next((c for c in ("pretrained_contrib_aux", "contrib_aux")
                    if c in table and table[c].notna().any()), None)
        x = table[aux] if aux else table["contrib_main"] * 0.0  # STL: no auxiliary task
        for name, colour in LABEL_COLOURS.items():
            part = table["label"] == name
            if part.any():
                drawn[name] = ax.scatter(x[part], table.loc[part, "contrib_main"], s=10,
                                         color=colour, label=name)
        ax.set_xlabel("auxiliary contribution")
        ax.set_ylabel("main contribution")
        ax.set_title(f"{label} (n={run['n_main']})", fontsize=9)
        ax.grid(True, alpha=0.3)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no run has a main head", ha="center", va="center",
                        transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
    if drawn:
        fig.legend(handles=[drawn[k] for k in LABEL_COLOURS if k in drawn], title="unit label",
                   loc="outside right center", frameon=False, fontsize=8, title_fontsize=8)
    return fig


def unit_scatter(analysis: pd.DataFrame, units: pd.DataFrame, path: Path) -> Path:
    """:func:`unit_figure`, saved to ``path``."""
    return _save(unit_figure(analysis, units), path)


def analysis_figures(analysis: pd.DataFrame, units: pd.DataFrame, out_dir: Path) -> list[Path]:
    """All figures of ``mtl-lab analyze``, under out_dir/figures."""
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [reuse_bars(analysis, folder / "reuse.png"),
             unit_scatter(analysis, units, folder / "units.png")]
    for name, metrics in FAMILIES.items():
        paths.append(metric_panels(analysis, metrics, folder / f"{name}.png",
                                   FAMILY_TITLES[name]))
    if WIDTH in analysis and analysis[WIDTH].nunique() > 1:
        paths.append(_save(reuse_width_figure(analysis), folder / "reuse_vs_width.png"))
    return paths
