"""Sweep report: figures and a self-contained HTML page for a results table of many runs.

The input is the flat results table (one row per training run, config values flattened under a
``config.`` prefix; see :func:`mtl_lab.sweeps.execute.run_row`). :func:`write_report` finds the
swept axes, draws the figures into ``<out_dir>/report/figures/`` and writes
``<out_dir>/report/index.html``.

Regime-specific axes. A regime whose rows do not vary a column (e.g. STL rows under a sweep of the
PT+FT rescale factor c, which either repeat one value or leave it empty) is treated as independent
of that column: its rows count at every value of it (as a reference line, or as the denominator
of a ratio map). PT+FT / PT+LP rows that differ in a ``config.finetune.*`` value are drawn as
separate lines ("PT+FT (c=0.1)") rather than averaged together.

Theory. With ``theory=True`` (``mtl-lab report --theory``) every run the implicit-bias theory
covers (diagonal networks in STL, PT+FT and MTL: :mod:`mtl_lab.theory.predict`) gets a
``theory_test_loss_main`` column, the loss-vs-n figure draws the theory's mean as a dashed line
per regime, the page gets a table of trained against predicted losses and a note naming what the
theory does not cover, and ``report/theory.csv`` keeps the numbers per run.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_lab.flags import cell_mark, flag_legend_handles, flags_note, mark_flagged
from mtl_lab.plots import loss_unit, n_main_axis
from mtl_lab.plots import pyplot as _pyplot
from mtl_lab.plots import save_figure as _save
from mtl_lab.regime_specs import REGIME_SPECS, colour_of, label_of
from mtl_lab.tables import (
    METRIC,
    RELATIVE_SUFFIX,
    Series,
    finite_rows,
    fmt,
    marked_table,
    mean_table,
    regime_order,
    select,
    select_where,
    series,
    series_rows,
    short,
    sort_key,
    sorted_values,
    swept_columns,
    variant_columns,
    with_relative_to_stl,
)

SPARSITY_NAMES = ("k_main", "m_main")
AXIS_NAMES = {
    "n_main": "main-task training samples n_main",
    "config.finetune.rescale": "PT+FT trunk rescale factor c",
    "config.finetune.head_init_scale": "PT+FT head init scale γ",
    "config.task.params.k_main": "aux features used by the main task k_main",
    "config.task.params.m_main": "aux features used by the main task m_main",
    "config.task.params.overlap": "feature overlap",
    "config.task.params.correlation": "aux–main correlation",
    "config.model.init_scale": "init scale",
    "config.model.width": "width (units)",
    "config.training.lr": "learning rate",
}
PTFT, MTL, STL = (REGIME_SPECS[name].label for name in ("ptft", "mtl", "stl"))
RATIO_DENOMINATORS = (MTL, STL)  # the report's PT+FT ratio maps
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
MAX_PANELS = 4


# ----------------------------------------------------------------------------- labels


def _name(column: str | None) -> str:
    """A readable axis label for a column."""
    if column is None:
        return ""
    if column in AXIS_NAMES:
        return AXIS_NAMES[column]
    return column.removeprefix("config.").replace("task.params.", "")



# ----------------------------------------------------------------------------- drawing helpers




def _style(line: Series) -> dict:
    """Colour by regime; finetune variants of a regime differ in shade, line style and marker."""
    from matplotlib.colors import to_rgb

    base = np.array(to_rgb(colour_of(line.regime)))
    mix = 0.55 * line.rank / max(line.size - 1, 1) if line.size > 1 else 0.0
    colour = tuple(base + (1.0 - base) * mix)
    return {"color": colour, "linestyle": LINESTYLES[line.rank % len(LINESTYLES)],
            "marker": MARKERS[line.rank % len(MARKERS)]}


def _draw_lines(ax, data: pd.DataFrame, x: str, lines: list[Series], metric: str,
                everything: pd.DataFrame) -> None:
    """Mean ± s.e.m. of ``metric`` against ``x`` for every line with data in this panel (from
    the finite rows ``data``); points over a budget-stopped or diverged run among
    ``everything`` (the same panel's rows, diverged ones included) are ringed or crossed."""
    for line in lines:
        rows = series_rows(data, line)
        if rows.empty:
            continue
        stats = _seed_stats(rows, x, metric)
        style = _style(line)
        ax.errorbar(stats.index, stats["mean"], yerr=stats["sem"].fillna(0.0), capsize=3,
                    markersize=4, label=line.label, **style)
        mark_flagged(ax, series_rows(everything, line), x, stats["mean"], style["color"])


def _seed_stats(rows: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Mean and s.e.m. over seeds per x (each seed first averaged over the other axes)."""
    if "seed" in rows.columns:
        rows = rows.groupby([x, "seed"], as_index=False)[metric].mean()
    return rows.groupby(x)[metric].agg(["mean", "sem"]).sort_index()


def _loss_axis(ax, metric: str, unit: str = "MSE") -> None:
    """A log-scaled loss axis with grid; ``unit``: what the loss measures (:func:`loss_unit`)."""
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if metric.endswith(RELATIVE_SUFFIX):
        base = metric.removesuffix(RELATIVE_SUFFIX).replace("_", " ")
        ax.set_ylabel(f"{base} / STL's at the smallest n_main")
    elif metric == "steps":
        ax.set_ylabel("gradient steps to the loss threshold")
    else:
        ax.set_ylabel(f"{metric.replace('_', ' ')} ({unit})")




def _legend(fig, axes, results: pd.DataFrame) -> None:
    """One legend for the whole figure, right of the panels, without duplicate labels, with the
    meaning of the rings and crosses on flagged points."""
    handles: dict = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    for handle in flag_legend_handles(results):
        handles.setdefault(handle.get_label(), handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False)


def _pick(values: list, k: int = MAX_PANELS) -> list:
    """At most ``k`` values, evenly spread, always including the smallest and the largest."""
    if len(values) <= k:
        return values
    return [values[i] for i in sorted(set(np.linspace(0, len(values) - 1, k).round().astype(int)))]


# ----------------------------------------------------------------------------- figures


def loss_vs_n(results: pd.DataFrame, facet: str | None, path: str | Path,
              metric: str = METRIC, theory: str | None = None) -> Path:
    """Log–log test loss vs n_main per regime (mean ± s.e.m. over seeds), a panel per facet;
    with ``theory`` (a column of predicted losses), each line's mean prediction dashed beside
    it."""
    plt = _pyplot()
    data = finite_rows(results, metric)
    panels = sorted_values(data[facet]) if facet else [None]
    lines = series(data, exclude={facet})
    predicted = finite_rows(results, theory) if theory else None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.8),
                             sharey=True, squeeze=False)
    for ax, value in zip(axes[0], panels):
        _draw_lines(ax, select(data, facet, value), "n_main", lines, metric,
                    select(results, facet, value))
        if predicted is not None:
            _draw_theory(ax, select(predicted, facet, value), "n_main", lines, theory)
        n_main_axis(ax, data["n_main"])
        _loss_axis(ax, metric, loss_unit(results))
        ax.set_title(f"{short(facet)} = {fmt(value)}" if facet else "all runs")
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    _legend(fig, axes, results)
    fig.tight_layout()
    return _save(fig, path)


WIDTH = "config.model.width"
WIDTH_METRICS = ("train_loss", METRIC)


def loss_vs_width(results: pd.DataFrame, facet: str | None, path: str | Path) -> Path:
    """Training loss (the fit's approximation error; MTL's is its joint objective) and main-task
    test loss vs the trunk width (log–log), mean ± s.e.m. over seeds, a line per regime: a row
    of panels per n_main (and per ``facet`` value), a column per loss."""
    plt = _pyplot()
    rows = [(value, n) for value in (sorted_values(results[facet]) if facet else [None])
            for n in sorted_values(results["n_main"])]
    lines = series(finite_rows(results), exclude={facet, WIDTH})
    fig, axes = plt.subplots(len(rows), len(WIDTH_METRICS), squeeze=False, sharex=True,
                             figsize=(3.8 * len(WIDTH_METRICS) + 0.6, 3.0 * len(rows) + 0.4))
    widths = sorted_values(results[WIDTH])
    for (value, n), panels in zip(rows, axes):
        part = select(results[results["n_main"] == n], facet, value)
        for ax, metric in zip(panels, WIDTH_METRICS):
            _draw_lines(ax, finite_rows(part, metric), WIDTH, lines, metric, part)
            ax.set_xscale("log")
            ax.set_xticks(widths, [fmt(w) for w in widths])
            ax.minorticks_off()
            _loss_axis(ax, metric, loss_unit(results))
            where = f"{short(facet)} = {fmt(value)}, " if facet else ""
            ax.set_title(f"{where}n_main = {fmt(n)}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("trunk width")
    _legend(fig, axes, results)
    fig.tight_layout()
    return _save(fig, path)


H_BEFORE, H_AFTER = "h_abs_mean_pretrained", "h_abs_mean_start"


def conservation_figure(results: pd.DataFrame, facet: str | None, path: str | Path) -> Path:
    """Mean |h_j| (h_j = ‖in_j‖² − ‖out_j‖², the conserved quantities of SCIENCE.md §6) of the
    pretrained network and of the finetuning start, per PT+FT setting (mean over its runs): what
    each rescaling did to the quantities that finetuning then conserves. A panel per facet."""
    plt = _pyplot()
    data = results[np.isfinite(pd.to_numeric(results.get(H_AFTER), errors="coerce")
                               .astype(float))]
    panels = sorted_values(data[facet]) if facet else [None]
    lines = series(data, exclude={facet})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 0.6, 3.8),
                             sharey=True, squeeze=False)
    for ax, value in zip(axes[0], panels):
        part = select(data, facet, value)
        for x, line in enumerate(lines):
            rows = series_rows(part, line)
            if rows.empty:
                continue
            before, after = float(rows[H_BEFORE].mean()), float(rows[H_AFTER].mean())
            colour = _style(line)["color"]
            ax.plot([x, x], [before, after], color=colour, linewidth=1.5)
            ax.scatter([x], [before], color=colour, marker="o", facecolor="white", zorder=3,
                       label="pretrained" if x == 0 else None)
            ax.scatter([x], [after], color=colour, marker="v", zorder=3,
                       label="where finetuning starts" if x == 0 else None)
        names = [line.label.removeprefix(line.regime).strip(" ()") or line.label
                 for line in lines]  # every line is PT+FT: its settings say which
        ax.set_xticks(range(len(lines)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.set_title(f"{short(facet)} = {fmt(value)}" if facet else "all runs")
    axes[0][0].set_ylabel("PT+FT: mean |h_j| over hidden units")
    _legend(fig, axes, data.iloc[0:0])
    fig.tight_layout()
    return _save(fig, path)


THEORY_DASHES = (0, (5, 3))


def _draw_theory(ax, data: pd.DataFrame, x: str, lines: list[Series], column: str) -> None:
    """The mean over seeds of the predicted loss ``column`` of every line, dashed, no markers."""
    for line in lines:
        rows = series_rows(data, line)
        if rows.empty:
            continue
        stats = _seed_stats(rows, x, column)
        ax.plot(stats.index, stats["mean"], color=_style(line)["color"],
                linestyle=THEORY_DASHES, linewidth=1.4, label=f"{line.label}: theory")


def relative_map(results: pd.DataFrame, numerator: str = "ptft", denominator: str = "mtl", *,
                 x: str, y: str | None, path: str | Path, where: dict | None = None,
                 metric: str = METRIC) -> pd.DataFrame:
    """Heat map of log₂(mean loss of ``numerator`` / mean loss of ``denominator``) over x × y.

    ``numerator``/``denominator`` are regime labels ("PT+FT") or keys ("ptft"); ``where`` fixes
    other columns (e.g. ``{"config.finetune.rescale": 0.1}``). Returns the plotted matrix
    (index: y values, columns: x values; NaN where a cell lacks runs of either regime).
    """
    numerator, denominator = label_of(numerator), label_of(denominator)
    everything = select_where(results, where)
    data = select_where(finite_rows(results, metric), where)
    matrix = _log_ratio(data, numerator, denominator, x, y, metric)
    marks = _ratio_marks(everything, matrix, numerator, denominator, x, y)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * matrix.shape[1] + 2.8, 0.7 * matrix.shape[0] + 1.8))
    note = "\n* / †: a run in the cell stopped at the step budget / diverged" if (
        marks.to_numpy() != "").any() else ""
    _heat(fig, ax, matrix, f"$\\log_2$({numerator} loss / {denominator} loss)\n"
                           f"< 0: {numerator} better" + note, marks)
    ax.set_xlabel(_name(x))
    ax.set_ylabel(_name(y) if y else "")
    fixed = ", ".join(f"{short(c)}={fmt(v)}" for c, v in (where or {}).items())
    ax.set_title(f"{numerator} vs {denominator}, mean {metric.replace('_', ' ')}"
                 + (f" ({fixed})" if fixed else ""))
    fig.tight_layout()
    _save(fig, path)
    return matrix


def _log_ratio(data: pd.DataFrame, numerator: str, denominator: str, x: str, y: str | None,
               metric: str) -> pd.DataFrame:
    """log₂ of the ratio of mean losses, cell by cell (NaN where either side has no run)."""
    xs = sorted_values(data[x])
    ys = sorted_values(data[y]) if y else ["all"]
    matrix = pd.DataFrame(np.nan, index=pd.Index(ys, name=y or ""),
                          columns=pd.Index(xs, name=x), dtype=float)
    for yv in ys:
        rows = select(data, y, yv) if y else data
        for xv in xs:
            cell = select(rows, x, xv)
            top = cell.loc[cell["regime_label"] == numerator, metric].mean()
            bottom = cell.loc[cell["regime_label"] == denominator, metric].mean()
            if top > 0 and bottom > 0:
                matrix.loc[yv, xv] = np.log2(top / bottom)
    return matrix


def _ratio_marks(everything: pd.DataFrame, matrix: pd.DataFrame, numerator: str,
                 denominator: str, x: str, y: str | None) -> pd.DataFrame:
    """Per cell of a ratio map, the flags (``*``, ``†``) of the runs of either regime in it."""
    marks = pd.DataFrame("", index=matrix.index, columns=matrix.columns)
    both = everything[everything["regime_label"].isin([numerator, denominator])]
    for yv in matrix.index:
        rows = select(both, y, yv) if y else both
        for xv in matrix.columns:
            cell = select(rows, x, xv)
            marks.loc[yv, xv] = cell_mark(cell["status"]) if "status" in cell else ""
    return marks


def _heat(fig, ax, matrix: pd.DataFrame, label: str, marks: pd.DataFrame | None = None) -> None:
    """A diverging heat map centred at 0 with annotated cells (and their flags) and a labelled
    colour bar."""
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = max(float(np.abs(finite).max()) if finite.size else 0.0, 0.5)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                      aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        text = (f"{value:+.2f}" if np.isfinite(value) else "–") + (
            marks.iat[i, j] if marks is not None else "")
        dark = np.isfinite(value) and abs(value) > 0.6 * vmax
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="white" if dark else "black")
    ax.set_xticks(range(values.shape[1]), [fmt(v) for v in matrix.columns])
    ax.set_yticks(range(values.shape[0]), [fmt(v) for v in matrix.index])
    fig.colorbar(image, ax=ax).set_label(label)


def sparsity_dependence(results: pd.DataFrame, sparsity_col: str, path: str | Path,
                        row: str | None = None, metric: str = METRIC) -> Path:
    """Test loss vs the number of aux features the main task uses, a line per PT+FT factor c.

    One column of panels per n_main (at most four, always including the smallest), one row per
    value of ``row`` if given; STL/MTL are drawn as references. Log loss axis.
    """
    plt = _pyplot()
    data = finite_rows(results, metric)
    sizes = _pick(sorted_values(data["n_main"]))
    rows = sorted_values(data[row]) if row else [None]
    lines = series(data, exclude={sparsity_col, row})
    fig, axes = plt.subplots(len(rows), len(sizes), sharey=True, squeeze=False,
                             figsize=(3.4 * len(sizes) + 0.6, 3.0 * len(rows) + 0.6))
    for i, rv in enumerate(rows):
        for j, n in enumerate(sizes):
            ax = axes[i][j]
            _draw_lines(ax, select(select(data, row, rv), "n_main", n), sparsity_col, lines,
                        metric, select(select(results, row, rv), "n_main", n))
            _sparsity_axis(ax, data[sparsity_col], sparsity_col, metric, first=j == 0)
            ax.set_title(f"n_main = {int(n)}" + (f", {short(row)} = {fmt(rv)}" if row else ""))
    _legend(fig, axes, results)
    fig.tight_layout()
    return _save(fig, path)


def _sparsity_axis(ax, values: pd.Series, column: str, metric: str, first: bool) -> None:
    """x ticked at the sparsity levels run, log loss axis (labelled on the first column)."""
    ticks = [v for v in sorted_values(values) if sort_key(v)[0] == 0]
    ax.set_xticks(ticks, [fmt(v) for v in ticks])
    ax.set_xlabel(_name(column))
    _loss_axis(ax, metric)
    if not first:
        ax.set_ylabel("")


# ----------------------------------------------------------------------------- report


@dataclass
class Item:
    """One entry of the report: a figure with its caption, or a note when it was skipped."""

    caption: str
    file: str | None = None


def choose_facet(axes: list[str]) -> str | None:
    """The first swept task (then finetune, then other) column that is not a seed."""
    usable = [a for a in axes if not a.rsplit(".", 1)[-1].startswith("seed")]
    for prefix in ("config.task.", "config.finetune.", "config."):
        for axis in usable:
            if axis.startswith(prefix):
                return axis
    return None


def sparsity_column(axes: list[str]) -> str | None:
    """The swept k_main / m_main column, if any."""
    return next((a for a in axes if a.rsplit(".", 1)[-1] in SPARSITY_NAMES), None)


def write_report(results: pd.DataFrame, out_dir: str | Path, title: str = "Sweep report",
                 wandb: dict | None = None, theory: bool = False) -> Path:
    """Write ``out_dir/report/figures/*.png`` and ``out_dir/report/index.html``; return the page.

    With ``wandb`` settings that are enabled (``{"enabled": True, "mode": "offline", ...}``, the
    ``logging.wandb`` section of a config), the figures and the results table also go to one
    wandb run (job type 'report', grouped under ``title``). With ``theory``, the implicit-bias
    theory's predicted test loss joins the table, the loss-vs-n figure (dashed) and the page,
    and ``report/theory.csv`` (module docstring); a table without diagonal runs raises
    :class:`~mtl_lab.errors.InputError` before anything is written.
    """
    section = ""
    if theory:
        from mtl_lab.theory.predict import COLUMN, predict_results

        predictions = predict_results(results)
        results = results.assign(**{COLUMN: predictions.values})
    root = Path(out_dir) / "report"
    figures = root / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    if theory:
        section = _theory_section(results, predictions.notes, root)
    axes = swept_columns(results)
    facet = choose_facet(axes)
    items = [_loss_item(results, facet, figures, COLUMN if theory else None),
             _relative_item(results, facet, figures)]
    items += _ratio_items(results, facet, figures)
    items.append(_sparsity_item(results, axes, facet, figures))
    items += _rescaling_items(results, facet, figures)
    items += _width_items(results, axes, figures)
    items += _deep_items(results, figures)
    data = finite_rows(results)
    page = root / "index.html"
    page.write_text(_html(title, results, data, axes, items, section), encoding="utf-8")
    if wandb and wandb.get("enabled"):
        from mtl_lab.tracking import log_figures_run

        ids = [c for c in ("run_id", "regime", "seed", "n_main") if c in results]
        table = pd.concat([results[ids], results.select_dtypes("number")], axis=1)
        log_figures_run(wandb, Path(out_dir), title, "report",
                        {"results": table.loc[:, ~table.columns.duplicated()]},
                        [root / it.file for it in items if it.file])
    return page


THEORY_FILE = "theory.csv"


def theory_table(results: pd.DataFrame, column: str = "theory_test_loss_main",
                 metric: str = METRIC) -> pd.DataFrame:
    """Mean trained ``metric`` and mean predicted ``column`` over seeds, and their ratio, for
    the rows with a prediction: rows as in :func:`mtl_lab.tables.mean_table`, columns
    (regime line, ``trained`` / ``theory`` / ``theory / trained``)."""
    values = pd.to_numeric(results[column], errors="coerce").to_numpy(dtype=float)
    covered = results[np.isfinite(values)]
    if covered.empty:
        return pd.DataFrame()
    trained, predicted = mean_table(covered, metric), mean_table(covered, column)
    parts = {}
    for label in trained.columns:
        parts[(label, "trained")] = trained[label]
        parts[(label, "theory")] = predicted[label]
        parts[(label, "theory / trained")] = predicted[label] / trained[label]
    return pd.DataFrame(parts)


def _theory_section(results: pd.DataFrame, notes: list[str], root: Path) -> str:
    """The page's theory section (and ``report/theory.csv``)."""
    from mtl_lab.theory.predict import COLUMN

    keep = [c for c in ("run_id", "regime", "seed", "n_main", METRIC, COLUMN) if c in results]
    results[keep].to_csv(root / THEORY_FILE, index=False)
    esc = html.escape
    covered = int(np.isfinite(results[COLUMN].to_numpy(dtype=float)).sum())
    regimes = regime_order(set(results.loc[results[COLUMN].notna(), "regime_label"]))
    text = (f"<p>{covered} of {len(results)} runs have a theory prediction: the test loss of the "
            "interpolating solution of least implicit penalty (SCIENCE.md §4) on the run's own "
            "task data. STL and PT+FT are the exact gradient-flow limits of diagonal networks "
            "(trained networks differ by the step size's discretisation, a few per cent of "
            "their solution at step 0.05); MTL's ℓ1,2 norm is a heuristic that trained networks "
            "need not follow (on the tests' problem trained MTL networks ended some 40 % "
            "(relative) away from its minimiser). Per run: "
            f"<code>report/{THEORY_FILE}</code>.</p>")
    if notes:
        text += ("<p class='note'>Not covered:</p><ul class='note'>"
                 + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    table = theory_table(results, COLUMN)
    shown = (table.map(lambda v: f"{v:.3e}" if np.isfinite(v) else "–").to_html(border=0)
             if not table.empty else "<p>no run could be predicted</p>")
    covered_note = f" ({', '.join(regimes)})" if regimes else ""
    return (f"<h2>Theory vs trained{esc(covered_note)}</h2>" + text
            + f"<p>Mean {esc(METRIC.replace('_', ' '))} over seeds, trained and predicted.</p>"
            + shown)


def _averaged(axes: list[str], shown: set) -> str:
    """Caption suffix naming the swept axes a figure averages over."""
    rest = [short(a) for a in axes if a not in shown]
    return f" Averaged over the other swept axes: {', '.join(rest)}." if rest else ""


DEEP_CAPTIONS = {
    "accuracy_vs_n.png": "Real data: main-task test accuracy vs n_main per regime (PT+FT one line "
                         "per rescale factor c), mean ± s.e.m. over seeds.",
    "ensd_vs_rescale.png": "Real data: ENSD between the pretrained and the finetuned network on "
                           "the main task's test images vs the rescale factor c, one line per "
                           "layer (SCIENCE.md §5; finding 5: the finetuned representation stays "
                           "in a subspace shared with the pretrained one).",
    "pr_vs_rescale.png": "Real data: participation ratio of the finetuned network's features vs c, "
                         "one line per layer (finding 5: a collapse shows as a drop).",
}


def _width_items(results: pd.DataFrame, axes: list[str], figures: Path) -> list[Item]:
    """Where the trunk width is swept (SCIENCE.md §7): the losses vs width."""
    if WIDTH not in axes or finite_rows(results).empty:
        return []
    facet = choose_facet([a for a in axes if a != WIDTH])
    loss_vs_width(results, facet, figures / "loss_vs_width.png")
    return [Item("Training loss (the approximation error of the fit; for MTL the joint objective "
                 "of both tasks) and main-task test loss vs the trunk width, mean ± s.e.m. over "
                 "seeds, a row per n_main" + (f" and {_name(facet)}" if facet else "") + ". A "
                 "regime's training loss reaches the threshold from the width its features "
                 "need." + _FLAGS_CAPTION, "figures/loss_vs_width.png")]


def _rescaling_items(results: pd.DataFrame, facet: str | None, figures: Path) -> list[Item]:
    """Where PT+FT rows report the conserved quantities (ReLU trunks): steps to the threshold vs
    n_main, and |h| before and after the rescaling of the pretrained network."""
    if H_AFTER not in results or not np.isfinite(
            pd.to_numeric(results[H_AFTER], errors="coerce").astype(float)).any():
        return []
    loss_vs_n(results, facet, figures / "steps_vs_n.png", metric="steps")
    conservation_figure(results, facet, figures / "conserved.png")
    return [Item("Gradient steps to the loss threshold vs n_main, mean ± s.e.m. over seeds (a "
                 "run stopped by the budget counts its budget)." + _FLAGS_CAPTION,
                 "figures/steps_vs_n.png"),
            Item("The conserved quantities h_j = ‖in_j‖² − ‖out_j‖² (SCIENCE.md §6), mean |h_j| "
                 "over hidden units: of the pretrained network (circle) and where finetuning "
                 "starts, after the setting's rescaling (triangle); mean over runs. ENorm sets "
                 "them to 0, the constant c moves them because it scales the trunk and not the "
                 "heads.", "figures/conserved.png")]


def _deep_items(results: pd.DataFrame, figures: Path) -> list[Item]:
    """The real-data figures (accuracy, layer-wise ENSD and PR vs c) where the table has them."""
    from mtl_lab.sweeps.deep_figures import deep_figures

    return [Item(DEEP_CAPTIONS[path.name], f"figures/{path.name}")
            for path in deep_figures(results, figures)]


def _loss_item(results: pd.DataFrame, facet: str | None, figures: Path,
               theory: str | None = None) -> Item:
    """Figure 1: loss vs n_main (with the theory's prediction dashed, if ``theory``)."""
    data = finite_rows(results)
    if data.empty:
        return Item("Loss vs n_main skipped: no run has a finite test loss.")
    loss_vs_n(results, facet, figures / "loss_vs_n.png", theory=theory)
    shown = {facet, *variant_columns(data, {facet})}
    dashed = (" Dashed: the implicit-bias theory's prediction for the same runs (mean over "
              "seeds; see 'Theory vs trained').") if theory else ""
    return Item("Main-task test loss vs n_main (log–log), mean ± s.e.m. over seeds"
                + (f", one panel per {_name(facet)}." if facet else ".") + dashed
                + _FLAGS_CAPTION + _averaged(swept_columns(data), shown), "figures/loss_vs_n.png")


def _relative_item(results: pd.DataFrame, facet: str | None, figures: Path) -> Item:
    """Figure 1b: the loss divided by STL's at the smallest n_main (the paper's normalisation)."""
    relative = with_relative_to_stl(results)
    column = f"{METRIC}{RELATIVE_SUFFIX}"
    if finite_rows(relative, column).empty:
        return Item("Loss relative to STL skipped: no STL run with a finite test loss.")
    loss_vs_n(relative, facet, figures / "loss_relative_to_stl.png", metric=column)
    return Item("Main-task test loss divided by STL's mean test loss at the smallest n_main of the "
                "same setting (the paper's normalisation), mean ± s.e.m. over seeds."
                + _FLAGS_CAPTION, "figures/loss_relative_to_stl.png")


def _ratio_items(results: pd.DataFrame, facet: str | None, figures: Path) -> list[Item]:
    """Figure 2: PT+FT/MTL and PT+FT/STL log-ratio maps, one per PT+FT finetune setting."""
    data = finite_rows(results)
    present = set(data["regime_label"]) if not data.empty else set()
    items = []
    for denominator in RATIO_DENOMINATORS:
        missing = [r for r in (PTFT, denominator) if r not in present]
        if missing:
            items.append(Item(f"{PTFT} / {denominator} ratio map skipped: the table has no "
                              f"{' or '.join(missing)} runs with a finite test loss (regimes "
                              f"present: {', '.join(regime_order(present)) or 'none'})."))
            continue
        items += _ratio_maps(results, denominator, facet, figures)
    return items


def _ratio_maps(results: pd.DataFrame, denominator: str, facet: str | None,
                figures: Path) -> list[Item]:
    """One PT+FT / denominator map per combination of varying finetune values."""
    data = finite_rows(results)
    lines = [s for s in series(data, exclude={facet}) if s.regime == PTFT]
    items = []
    for line in lines:
        where = dict(line.where)
        name = f"ratio_ptft_{denominator.lower()}{_slug(where)}.png"
        relative_map(results, PTFT, denominator, x="n_main", y=facet, path=figures / name,
                     where=where)
        shown = {facet, *where}
        items.append(Item(f"log₂ of the mean main-task test loss of {line.label} over that of "
                          f"{denominator}, per n_main" + (f" and {_name(facet)}" if facet else "")
                          + f"; blue: {PTFT} better, red: worse. * / † after a value: a run "
                          "in that cell stopped at the step budget / diverged."
                          + _averaged(swept_columns(data), shown), f"figures/{name}"))
    return items


def _slug(where: dict) -> str:
    """A file-name suffix for fixed finetune values, e.g. ``_c0.1``."""
    text = "".join(f"_{short(c)}{fmt(v)}" for c, v in where.items())
    return re.sub(r"[^A-Za-z0-9._+-]", "", text.replace("γ", "gamma"))


def _sparsity_item(results: pd.DataFrame, axes: list[str], facet: str | None,
                   figures: Path) -> Item:
    """Figure 3: loss vs main-task sparsity, when k_main or m_main is swept."""
    column = sparsity_column(axes)
    if column is None:
        return Item("Sparsity plot skipped: neither k_main nor m_main is swept.")
    data = finite_rows(results)
    if data.empty:
        return Item("Sparsity plot skipped: no run has a finite test loss.")
    row = facet if facet != column else None
    sparsity_dependence(results, column, figures / "sparsity.png", row=row)
    shown = {column, row, *variant_columns(data, {column, row})}
    return Item(f"Main-task test loss vs {_name(column)} (log loss), a line per PT+FT setting "
                "with STL/MTL as references, a panel per n_main"
                + (f" (rows: {_name(row)})" if row else "") + ". A loss that grows with the "
                "number of features used reveals nested feature selection." + _FLAGS_CAPTION
                + _averaged(swept_columns(data), shown), "figures/sparsity.png")


_FLAGS_CAPTION = (" A ring marks a mean over a run that stopped at the step budget, a cross one "
                  "over a run that diverged.")


def _counts(results: pd.DataFrame, data: pd.DataFrame) -> str:
    """Runs per regime (and per status), with how many lacked a finite test loss."""
    keys = ["regime_label"] + (["status"] if "status" in results.columns else [])
    counts = results.groupby(keys, dropna=False).size().rename("runs").reset_index()
    dropped = len(results) - len(data)
    note = f"<p>{len(results)} runs in total"
    note += f"; {dropped} without a finite test loss are left out of every mean.</p>" \
        if dropped else ".</p>"
    return note + counts.to_html(index=False, border=0)


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;}"
       "table{border-collapse:collapse;margin:0.5em 0;}td,th{padding:2px 8px;"
       "border-bottom:1px solid #ddd;text-align:right;}figure{margin:1.5em 0;}"
       "img{max-width:100%;}figcaption,.note{color:#444;font-size:0.95em;}")


def _html(title: str, results: pd.DataFrame, data: pd.DataFrame, axes: list[str],
          items: list[Item], section: str = "") -> str:
    """The report page (inline CSS, figures referenced relative to the page); ``section``: extra
    HTML after the table of means (the theory's)."""
    esc = html.escape
    axis_list = "".join(f"<li><code>{esc(a)}</code>: "
                        f"{esc(', '.join(fmt(v) for v in sorted_values(results[a])))}</li>"
                        for a in axes) or "<li>none (a single configuration)</li>"
    note = flags_note(results)
    table = (marked_table(results).to_html(border=0) if not results.empty
             else "<p>no data</p>") + (f"<pre class='note'>{esc(note)}</pre>" if note else "")
    body = [f"<h1>{esc(title)}</h1>", "<h2>Swept axes</h2>", f"<ul>{axis_list}</ul>",
            "<h2>Runs</h2>", _counts(results, data),
            f"<h2>Mean {esc(METRIC.replace('_', ' '))} per swept setting × regime</h2>", table,
            section, "<h2>Figures</h2>", *(_item_html(i) for i in items)]
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _item_html(item: Item) -> str:
    """A figure block, or a paragraph noting why a figure was skipped."""
    if item.file is None:
        return f"<p class='note'>{html.escape(item.caption)}</p>"
    return (f"<figure><img src='{html.escape(item.file)}' alt='{html.escape(item.caption)}'>"
            f"<figcaption>{html.escape(item.caption)}</figcaption></figure>")
