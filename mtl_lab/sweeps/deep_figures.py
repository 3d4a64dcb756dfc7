"""Figures of real-data, deep-trunk sweeps (``configs/experiments/digits_split.yaml``,
``cifar100_split.yaml``) from their results table, for the sweep report.

* :func:`accuracy_vs_n` — main-task test accuracy against n_main, one line per regime (PT+FT and
  PT+LP split by their finetuning values, c), mean ± s.e.m. over seeds, a panel per trunk when
  the table holds several (findings 1 and 4 on real data);
* :func:`layer_measure_vs_rescale` — a layer-wise representation measure between the pretrained
  and the finetuned network (``layer.<name>.<measure>`` columns: ENSD by default, or ``pr_b``,
  the finetuned network's participation ratio, ``cka``, …) against the rescale factor c, one line
  per layer from input (dark) to output (light), a panel per n_main and a row per trunk (finding
  5: with c < 1 a ResNet's PR drops while its ENSD with the pretrained representation stays
  close to it);
* :func:`layer_table` — the numbers behind the second figure; :func:`deep_figures` — both
  figures for a table, where its columns allow them.

Each figure function saves a PNG at ``path`` and returns the path.

Example:
    >>> rows = pd.DataFrame({"regime_label": ["PT+FT"] * 4, "seed": [0, 1, 0, 1],
    ...                      "n_main": [10] * 4, "config.finetune.rescale": [0.5, 0.5, 1.0, 1.0],
    ...                      "layer.stem.ensd": [2.0, 4.0, 5.0, 5.0],
    ...                      "layer.pool.ensd": [1.0, 1.0, 2.0, 2.0]})
    >>> layer_columns(rows)
    {'stem': ['ensd'], 'pool': ['ensd']}
    >>> layer_table(rows)["mean"].tolist()
    [3.0, 1.0, 5.0, 2.0]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtl_lab.plots import n_main_axis
from mtl_lab.plots import pyplot as _pyplot
from mtl_lab.plots import save_figure as _save
from mtl_lab.regime_specs import colour_of, label_of
from mtl_lab.tables import Series, finite_rows, fmt, select, series, series_rows, sorted_values

RESCALE = "config.finetune.rescale"
TRUNK_COLUMNS = ("sweep.trunk", "config.model.kind")  # what tells the trunks of a table apart
MEASURE_NAMES = {"ensd": "ENSD(pretrained, finetuned)", "cka": "CKA(pretrained, finetuned)",
                 "pr_a": "PR of the pretrained network", "pr_b": "PR of the finetuned network"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")






def layer_columns(results: pd.DataFrame) -> dict[str, list[str]]:
    """The layers of the ``layer.<name>.<measure>`` columns that hold a value, input to output,
    each with its measures. The order is the rows' ``layers`` column (their names, input to
    output) where the table has one, else the columns' order. Layer names may hold dots (a
    ViT's ``blocks.0``)."""
    found: dict[str, list[str]] = {}
    for column in results.columns:
        if column.startswith("layer.") and column.count(".") >= 2 \
                and results[column].notna().any():
            name, measure = column.removeprefix("layer.").rsplit(".", 1)
            found.setdefault(name, []).append(measure)
    order: list[str] = []
    if "layers" in results.columns:
        for names in results["layers"].dropna().unique():
            order += [n for n in str(names).split(",") if n not in order]
    ranked = [n for n in order if n in found] + [n for n in found if n not in order]
    return {name: found[name] for name in ranked}


def trunk_column(results: pd.DataFrame) -> str | None:
    """The column that tells the table's trunks apart, when it holds more than one."""
    for column in TRUNK_COLUMNS:
        if column in results.columns and results[column].dropna().nunique() > 1:
            return column
    return None


def _seed_stats(rows: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean and s.e.m. over seeds of ``value`` per ``keys``."""
    if "seed" in rows.columns:
        rows = rows.groupby([*keys, "seed"], as_index=False, dropna=False)[value].mean()
    return rows.groupby(keys, dropna=False)[value].agg(["mean", "sem", "count"])


def layer_table(results: pd.DataFrame, measure: str = "ensd", regime: str = "PT+FT"
                ) -> pd.DataFrame:
    """Mean, s.e.m. and count over seeds of ``layer.<layer>.<measure>`` for the rows of
    ``regime``, per (trunk, n_main, c, layer); ``depth`` is the layer's place in its trunk,
    input (0) to output."""
    rows = results[results["regime_label"] == label_of(regime)]
    trunk = trunk_column(results)
    keys = [k for k in (trunk, "n_main", RESCALE) if k is not None and k in rows.columns]
    seed = ["seed"] if "seed" in rows.columns else []
    frames = []
    for _, part in (rows.groupby(trunk, sort=False) if trunk else [(None, rows)]):
        layers = [name for name, found in layer_columns(part).items() if measure in found]
        for depth, layer in enumerate(layers):
            column = f"layer.{layer}.{measure}"
            values = part[[*keys, *seed, column]].copy()
            values[column] = pd.to_numeric(values[column], errors="coerce")
            values = values.dropna(subset=[column])
            if not values.empty:
                stats = _seed_stats(values, keys, column).reset_index()
                frames.append(stats.assign(layer=layer, depth=depth))
    columns = [*keys, "layer", "depth", "mean", "sem", "count"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns].sort_values(
        [*keys, "depth"], kind="stable").reset_index(drop=True)


def layer_measure_vs_rescale(results: pd.DataFrame, path: str | Path, measure: str = "ensd",
                             regime: str = "PT+FT") -> Path:
    """``measure`` per layer against the rescale factor c (module docstring)."""
    plt = _pyplot()
    table = layer_table(results, measure, regime)
    if table.empty:
        raise ValueError(f"no layer.<name>.{measure} values for {label_of(regime)} in the table")
    trunk = trunk_column(results)
    trunks = sorted_values(table[trunk]) if trunk else [None]
    sizes = sorted_values(table["n_main"])
    fig, axes = plt.subplots(len(trunks), len(sizes), figsize=(3.2 * len(sizes) + 1.6,
                                                                 3.0 * len(trunks)),
                             squeeze=False, sharex=True)
    cmap = plt.get_cmap("viridis")
    for i, name in enumerate(trunks):
        part = table if trunk is None else table[table[trunk] == name]
        depths = max(int(part["depth"].max()), 1) if not part.empty else 1
        for j, n in enumerate(sizes):
            ax = axes[i][j]
            cell = part[part["n_main"] == n]
            for layer, line in cell.groupby("layer", sort=False):
                line = line.sort_values(RESCALE)
                ax.errorbar(line[RESCALE], line["mean"], yerr=line["sem"].fillna(0.0),
                            marker="o", markersize=3, capsize=2, label=layer,
                            color=cmap(0.9 * int(line["depth"].iloc[0]) / depths))
            ax.set_xscale("log", base=2)
            ax.grid(True, which="both", alpha=0.3)
            where = f"{fmt(name)}, " if trunk else ""
            ax.set_title(f"{where}n_main = {fmt(n)}", fontsize=9)
            if i == len(trunks) - 1:
                ax.set_xlabel("trunk rescale factor c")
            if j == 0:
                ax.set_ylabel(MEASURE_NAMES.get(measure, measure), fontsize=9)
        handles, labels = axes[i][0].get_legend_handles_labels()
        if handles:
            axes[i][-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
                               frameon=False, fontsize=8, title="layer")
    fig.suptitle(f"{label_of(regime)}: {MEASURE_NAMES.get(measure, measure)} per layer, "
                 "mean ± s.e.m. over seeds", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _style(line: Series) -> dict:
    """Colour by regime; finetuning variants (c) of a regime in lighter shades, other markers."""
    from matplotlib.colors import to_rgb

    base = np.array(to_rgb(colour_of(line.regime)))
    mix = 0.6 * line.rank / max(line.size - 1, 1) if line.size > 1 else 0.0
    return {"color": tuple(base + (1.0 - base) * mix),
            "marker": MARKERS[line.rank % len(MARKERS)],
            "linestyle": LINESTYLES[line.rank % len(LINESTYLES)]}


def accuracy_vs_n(results: pd.DataFrame, path: str | Path, metric: str = "test_acc_main"
                  ) -> Path:
    """``metric`` (main-task test accuracy) against n_main per regime, mean ± s.e.m. over
    seeds; a panel per trunk when the table holds several."""
    plt = _pyplot()
    data = finite_rows(results, metric)
    if data.empty:
        raise ValueError(f"no finite {metric} values in the table")
    trunk = trunk_column(data)
    panels = sorted_values(data[trunk]) if trunk else [None]
    lines = series(data, exclude={trunk} if trunk else ())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels) + 1.8, 3.6),
                             sharey=True, squeeze=False)
    for ax, value in zip(axes[0], panels):
        panel = select(data, trunk, value) if trunk else data
        for line in lines:
            rows = series_rows(panel, line)
            if rows.empty:
                continue
            stats = _seed_stats(rows, ["n_main"], metric)
            ax.errorbar(stats.index, stats["mean"], yerr=stats["sem"].fillna(0.0), capsize=3,
                        markersize=4, label=line.label, **_style(line))
        n_main_axis(ax, data["n_main"])
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{fmt(value)}" if trunk else "all runs", fontsize=10)
    axes[0][0].set_ylabel(f"{metric.replace('_', ' ')}, mean ± s.e.m.")
    handles: dict = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def deep_figures(results: pd.DataFrame, folder: str | Path) -> list[Path]:
    """The figures a table allows, as PNGs in ``folder``: ``accuracy_vs_n.png`` when it has
    accuracies, ``ensd_vs_rescale.png`` and ``pr_vs_rescale.png`` when PT+FT rows hold layer
    measures."""
    folder = Path(folder)
    made = []
    if "test_acc_main" in results.columns and results["test_acc_main"].notna().any():
        made.append(accuracy_vs_n(results, folder / "accuracy_vs_n.png"))
    for measure, name in (("ensd", "ensd_vs_rescale.png"), ("pr_b", "pr_vs_rescale.png")):
        if not layer_table(results, measure).empty and RESCALE in results.columns:
            made.append(layer_measure_vs_rescale(results, folder / name, measure))
    return made
