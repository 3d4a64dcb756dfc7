"""Flags for runs that did not finish as the theory assumes: stopped at the step budget, diverged.

Full-batch GD is a proxy for gradient flow *run to convergence* (SCIENCE.md §1): a run that hit
``max_steps`` before its loss fell below ``loss_threshold``, or that diverged after every lr
restart, is not the interpolating solution the implicit-bias theory talks about. Every printed
table and every figure marks such runs so that a reader never mistakes them for converged ones:

* tables: a cell averaging over at least one budget-stopped run gets ``*``, over a diverged one
  ``†`` (both when both), and :func:`flags_note` prints what the marks mean and how many runs;
* figures: :func:`mark_flagged` draws an open ring around a budget-stopped point and a cross on a
  diverged one, and :func:`flag_legend_handles` gives their legend entries.

The status of a run is the ``status`` column of the results table (``converged``, ``budget``,
``diverged``; ``closed_form`` for ridge references, ``epochs`` for minibatch runs, which have no
convergence criterion). The pretraining of PT+FT / PT+LP runs has its own ``pretrain_status``.

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"status": ["converged", "budget", "diverged", "budget"]})
    >>> cell_mark(rows["status"]), flag_counts(rows)
    ('*†', {'budget': 2, 'diverged': 1})
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

BUDGET, DIVERGED = "budget", "diverged"
MARKS = {BUDGET: "*", DIVERGED: "†"}
MEANINGS = {BUDGET: "stopped at the step budget (training.max_steps) before the loss threshold",
            DIVERGED: "diverged (NaN or loss above the limit after every lr restart)"}
PRETRAINING = {BUDGET: "stopped at its step budget", DIVERGED: "diverged"}
RING = {"marker": "o", "s": 110, "facecolors": "none", "linewidths": 1.3, "zorder": 4}
CROSS = {"marker": "x", "s": 70, "linewidths": 1.6, "zorder": 5}


def _statuses(values: Iterable) -> set[str]:
    return {str(v) for v in values if isinstance(v, str)}


def cell_mark(statuses: Iterable) -> str:
    """``*`` if any run stopped at the budget, ``†`` if any diverged (``*†`` for both)."""
    present = _statuses(statuses)
    return "".join(mark for status, mark in MARKS.items() if status in present)


def flag_counts(results: pd.DataFrame, column: str = "status") -> dict[str, int]:
    """How many runs carry each flag (only flags that occur)."""
    if column not in results:
        return {}
    counts = results[column].value_counts()
    return {status: int(counts[status]) for status in MARKS if status in counts.index}


def flags_note(results: pd.DataFrame) -> str:
    """The footnote under a table: what each mark means, with counts (empty if nothing flagged).

    Pretraining that stopped at its budget is reported too (it is shared by PT+FT, PT+LP and the
    ridge references of a seed, so it is counted per run that used it).
    """
    lines = []
    total = len(results)
    for status, count in flag_counts(results).items():
        lines.append(f"{MARKS[status]} {count} of {total} runs {MEANINGS[status]}")
    for status, count in flag_counts(results, "pretrain_status").items():
        lines.append(f"  ({count} runs start from a pretraining that {PRETRAINING[status]})")
    return "\n".join(lines)


def point_flags(rows: pd.DataFrame, x: str, column: str = "status") -> pd.DataFrame:
    """Per value of ``x``: whether any of its rows stopped at the budget / diverged."""
    if column not in rows:
        index = pd.Index(sorted(rows[x].unique()), name=x)
        return pd.DataFrame({BUDGET: False, DIVERGED: False}, index=index)
    status = rows[column].astype(str)
    flags = pd.DataFrame({x: rows[x], BUDGET: status == BUDGET, DIVERGED: status == DIVERGED})
    return flags.groupby(x)[[BUDGET, DIVERGED]].any().sort_index()


def mark_flagged(ax, rows: pd.DataFrame, x: str, means: pd.Series, color) -> None:
    """Ring the plotted points (``means``, indexed by x) where a run stopped at the budget and
    cross those where one diverged."""
    flags = point_flags(rows, x).reindex(means.index, fill_value=False)
    for status, style in ((BUDGET, RING), (DIVERGED, CROSS)):
        hit = flags[status].to_numpy(dtype=bool) & means.notna().to_numpy()
        if hit.any():
            key = "edgecolors" if status == BUDGET else "color"
            ax.scatter(means.index[hit], means.to_numpy()[hit], **{**style, key: color})


def flag_legend_handles(results: pd.DataFrame) -> list:
    """Legend entries explaining the marks that occur in ``results`` (none if nothing flagged)."""
    from matplotlib.lines import Line2D

    counts = flag_counts(results)
    handles = []
    if BUDGET in counts:
        handles.append(Line2D([], [], marker="o", markersize=9, markerfacecolor="none",
                              markeredgecolor="black", linestyle="none",
                              label=f"some runs stopped at step budget ({counts[BUDGET]})"))
    if DIVERGED in counts:
        handles.append(Line2D([], [], marker="x", markersize=8, color="black", linestyle="none",
                              label=f"some runs diverged ({counts[DIVERGED]})"))
    return handles
