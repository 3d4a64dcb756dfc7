"""Tables over results: never average two settings together, and show which runs did not finish.

A results table has one flat row per run (``mtl_lab.sweeps.execute.run_row``): identity columns
(regime, seed, n_main), every config value under a ``config.`` prefix, and the metrics. A table
of means must keep apart everything that differs between runs except the seed:

* the **swept columns** (:func:`swept_columns`: ``config.*`` columns with more than one value,
  bookkeeping such as output folders and logging left out) become index levels;
* PT+FT / PT+LP rows that differ in a ``config.finetune.*`` value become separate columns
  ("PT+FT (c=0.1)"), one :class:`Series` each;
* a regime whose rows do not vary a column (STL under a sweep of the rescale factor c) is
  independent of it: its rows count at every value of that column (:func:`select`).

:func:`mean_table` gives the numbers; :func:`marked_table` the same table as text with ``*`` on
means over a run stopped at the step budget and ``†`` over a diverged one (:mod:`mtl_lab.flags`).

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"regime_label": ["STL", "STL", "STL", "STL"], "n_main": [8, 8, 8, 8],
    ...                      "seed": [0, 1, 0, 1], "config.task.params.correlation": [1, 1, 0, 0],
    ...                      "test_loss_main": [1.0, 3.0, 10.0, 30.0],
    ...                      "status": ["converged", "converged", "budget", "converged"]})
    >>> mean_table(rows)["STL"].tolist()
    [20.0, 2.0]
    >>> marked_table(rows)["STL"].tolist()
    ['2.000e+01*', '2.000e+00']
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mtl_lab.flags import cell_mark
from mtl_lab.regime_specs import labels_in_order, labels_where

METRIC = "test_loss_main"
NOISE_COLUMNS = frozenset({
    "config.output_dir", "config.name", "config.regimes", "config.seeds", "config.seed",
    "config.n_main", "config.task.cache_dir",
})
NOISE_PREFIXES = ("config.logging.", "config.trainer.")
FINETUNE_LABELS = labels_where(finetunes=True)  # regimes whose finetune values are kept apart
SYMBOLS = {"config.finetune.rescale": "c", "config.finetune.head_init_scale": "γ"}


def is_noise(column: str) -> bool:
    """Bookkeeping columns (output folders, logging, devices) that vary without being an axis."""
    return column in NOISE_COLUMNS or column.startswith(NOISE_PREFIXES)


def n_values(values: pd.Series) -> int:
    """Distinct non-missing values, robust to unhashable cells (lists, dicts)."""
    values = values.dropna()
    try:
        return int(values.nunique())
    except TypeError:
        return int(values.astype(str).nunique())


def swept_columns(results: pd.DataFrame) -> list[str]:
    """The ``config.*`` columns with more than one distinct value: the sweep's axes."""
    return [c for c in results.columns
            if c.startswith("config.") and not is_noise(c) and n_values(results[c]) > 1]


def sort_key(value) -> tuple:
    """Numbers in numeric order before anything else in string order."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def sorted_values(values: pd.Series) -> list:
    """Sorted distinct non-missing values of a column."""
    return sorted(pd.unique(values.dropna()), key=sort_key)


def fmt(value) -> str:
    """A compact label for an axis value."""
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)


def short(column: str) -> str:
    """A short symbol for a column in legends, titles and index names (c, γ, correlation, …)."""
    return SYMBOLS.get(column, column.rsplit(".", 1)[-1])


def finite_rows(results: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Rows whose metric is a finite number (diverged runs are left out of every mean)."""
    values = pd.to_numeric(results[metric], errors="coerce").astype(float)
    keep = np.isfinite(values.to_numpy())
    return results.loc[keep].assign(**{metric: values[keep]})


def select(data: pd.DataFrame, column: str | None, value) -> pd.DataFrame:
    """Rows at ``column == value``, plus the rows of regimes that do not vary ``column``."""
    if column is None:
        return data
    varies = data.groupby("regime_label")[column].transform(lambda s: n_values(s) > 1)
    return data[(data[column] == value) | ~varies.astype(bool)]


def select_where(data: pd.DataFrame, fixed: dict | None) -> pd.DataFrame:
    """Apply :func:`select` for every ``column: value`` of ``fixed``."""
    for column, value in (fixed or {}).items():
        data = select(data, column, value)
    return data


def variant_columns(data: pd.DataFrame, exclude=()) -> list[str]:
    """``config.finetune.*`` columns that vary within the rows of finetuning regimes (PT+FT,
    PT+LP)."""
    rows = data[data["regime_label"].isin(FINETUNE_LABELS)]
    return [c for c in data.columns
            if c.startswith("config.finetune.") and c not in exclude and n_values(rows[c]) > 1]


def regime_order(labels) -> list[str]:
    """Regime labels in the canonical order of the regime registry, unknown ones last."""
    return labels_in_order(labels)


@dataclass(frozen=True)
class Series:
    """One line of a figure or column of a table: a regime, optionally at fixed finetuning
    values."""

    label: str
    regime: str
    where: tuple[tuple[str, object], ...]
    rank: int
    size: int


def series(data: pd.DataFrame, exclude=()) -> list[Series]:
    """One per regime, PT+FT/PT+LP split by their varying finetune values."""
    columns = variant_columns(data, exclude)
    out: list[Series] = []
    for regime in regime_order(data["regime_label"].unique()):
        combos = _combos(data[data["regime_label"] == regime], columns, regime)
        for rank, fixed in enumerate(combos):
            extra = ", ".join(f"{short(c)}={fmt(v)}" for c, v in fixed)
            label = f"{regime} ({extra})" if extra else regime
            out.append(Series(label, regime, fixed, rank, len(combos)))
    return out


def _combos(rows: pd.DataFrame, columns: list[str], regime: str) -> list[tuple]:
    """The distinct finetune-value combinations of one regime's rows (one empty one otherwise)."""
    if regime not in FINETUNE_LABELS or not columns:
        return [()]
    keys = rows[columns].dropna().drop_duplicates().itertuples(index=False, name=None)
    combos = [tuple(zip(columns, key)) for key in keys]
    return sorted(combos, key=lambda combo: [sort_key(v) for _, v in combo])


def series_rows(data: pd.DataFrame, line: Series) -> pd.DataFrame:
    """The rows of one line."""
    rows = data[data["regime_label"] == line.regime]
    for column, value in line.where:
        rows = rows[rows[column] == value]
    return rows


def index_columns(results: pd.DataFrame) -> list[str]:
    """The swept columns that become index levels of a table (finetune variants are columns)."""
    variants = set(variant_columns(results))
    return [c for c in swept_columns(results) if c not in variants]


def _cells(results: pd.DataFrame, metric: str):
    """(index tuple, series label, mean over finite rows, mark over all rows) of every cell."""
    levels = index_columns(results)
    values = [sorted_values(results[c]) for c in levels]
    finite = finite_rows(results, metric)
    for combo in itertools.product(*values):
        fixed = dict(zip(levels, combo))
        rows_all, rows_finite = select_where(results, fixed), select_where(finite, fixed)
        for line in series(results, exclude=levels):
            part_all = series_rows(rows_all, line)
            if part_all.empty:
                continue
            part = series_rows(rows_finite, line)
            for n in sorted(part_all["n_main"].unique()):
                at_n = part_all[part_all["n_main"] == n]
                mean = part.loc[part["n_main"] == n, metric].mean()
                mark = cell_mark(at_n["status"]) if "status" in at_n else ""
                yield (*combo, n), line.label, mean, mark


def _frame(cells: dict, results: pd.DataFrame) -> pd.DataFrame:
    levels = [short(c) for c in index_columns(results)] + ["n_main"]
    if not cells:
        return pd.DataFrame()
    frame = pd.Series(cells).unstack(level=-1)
    frame.index.names = levels
    order = [s.label for s in series(results, exclude=index_columns(results))]
    return frame[[label for label in order if label in frame.columns]]


def mean_table(results: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Mean of ``metric`` over seeds: one row per combination of swept values and n_main, one
    column per regime (PT+FT split by finetune values). Diverged runs (no finite metric) are
    left out of the means; empty results give an empty frame."""
    if results.empty:
        return pd.DataFrame()
    return _frame({(*k, col): mean for k, col, mean, _ in _cells(results, metric)}, results)


def marked_table(results: pd.DataFrame, metric: str = METRIC, digits: int = 3) -> pd.DataFrame:
    """:func:`mean_table` as text, each mean followed by the marks of its runs (``*`` budget,
    ``†`` diverged; a cell of only diverged runs reads ``–†``)."""
    if results.empty:
        return pd.DataFrame()
    cells = {}
    for key, col, mean, mark in _cells(results, metric):
        text = f"{mean:.{digits}e}" if np.isfinite(mean) else "–"
        cells[(*key, col)] = text + mark
    return _frame(cells, results).fillna("")


RELATIVE_SUFFIX = "_rel_stl"


def relative_to_stl(results: pd.DataFrame, metric: str = METRIC,
                    baseline: str = "STL") -> pd.Series:
    """``metric`` divided by the baseline regime's mean ``metric`` at its smallest n_main, within
    the same swept setting — the normalisation of the paper's figures. NaN where the setting has
    no finite baseline run. Regimes that do not vary a swept column share the baseline of each of
    its values (:func:`select`); a row is normalised by the first setting it belongs to.

    Example:
        >>> rows = pd.DataFrame({"regime_label": ["STL", "STL", "MTL"], "n_main": [8, 32, 8],
        ...                      "seed": [0, 0, 0], "test_loss_main": [2.0, 1.0, 0.5]})
        >>> relative_to_stl(rows).tolist()
        [1.0, 0.5, 0.25]
    """
    out = pd.Series(float("nan"), index=results.index, name=f"{metric}{RELATIVE_SUFFIX}")
    levels = index_columns(results)
    finite = finite_rows(results, metric)
    values = pd.to_numeric(results[metric], errors="coerce")
    for combo in itertools.product(*[sorted_values(results[c]) for c in levels]):
        fixed = dict(zip(levels, combo))
        base = select_where(finite, fixed)
        base = base[base["regime_label"] == baseline]
        if base.empty:
            continue
        reference = base.loc[base["n_main"] == base["n_main"].min(), metric].mean()
        rows = select_where(results, fixed).index
        todo = rows[out.loc[rows].isna().to_numpy()]
        out.loc[todo] = values.loc[todo] / reference
    return out


def with_relative_to_stl(results: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """The table with a ``<metric>_rel_stl`` column (see :func:`relative_to_stl`)."""
    column = relative_to_stl(results, metric)
    return results.assign(**{column.name: column})

