"""Do two results tables agree? Runs matched by what they computed, not by their run ids.

A run id hashes the whole resolved config, ``trainer.accelerator`` included, so the same run on
the CPU and on a GPU has two ids: tables from two devices must be matched by configuration.
:func:`compare_results` pairs the rows of two results tables (one flat row per run, as
:mod:`mtl_lab.sweeps.execute` writes them) by ``regime``, ``seed``, ``n_main`` and every
``config.*`` value except those under ``ignore`` (the trainer section: where and with how many
threads a run trained, not what it computed; and the task cache folder: where a task is stored,
not what it is). Bookkeeping columns (run id, wall times, device, threads, wandb id, group size,
comparison name) are never part of the match. A missing config column reads as a missing value.

It then compares every matched pair:

* test losses (``test_loss_main``, ``test_loss_aux``): ``|a - b| <= rtol * max(|a|, |b|) + atol``,
  both NaN counting as equal (STL has no auxiliary loss). Default rtol 1e-3: float32 on both
  sides, reductions in another order on another device; the same bound the executors are held to
  (tests/test_sweeps.py).
* step counts (``steps``, ``pretrain_steps``): ``|a - b| <= max(step_atol, step_rtol * max(a,
  b))``, default ``max(2, 1%)``. A run stops at the first step whose loss is below the
  threshold; near the end, gradient descent lowers the loss by a factor (1 - r) per step, so a
  relative difference e in the loss moves that step by about e / r steps. With e around 1e-5
  (float32 drift over thousands of steps) and r of 1e-3 to 1e-2 per step, that is a few steps;
  a longer run that crosses plateaus (rich regime: escape times grow like log(1 / perturbation))
  may move by a fraction of its length, hence the 1%. A run that spent its budget has exactly
  ``max_steps`` on both sides.
* statuses (``status``, ``pretrain_status``): equal.

A compared column absent from both tables is skipped (a sweep without PT+FT has no pretraining
columns), except ``test_loss_main``, ``steps`` and ``status``, which must be there.

The verdict is FAIL when any pair disagrees, when any row of either table has no counterpart,
when a configuration appears twice in one table (the match would be a guess), when a compared
column is missing, or when nothing matched at all: an empty comparison proves nothing.

Example:
    >>> import pandas as pd
    >>> cpu = pd.DataFrame({"regime": ["stl", "mtl"], "seed": 0, "n_main": 8,
    ...                     "config.training.lr": 0.05, "config.trainer.accelerator": "cpu",
    ...                     "run_id": ["a1", "b1"], "test_loss_main": [0.20, 0.05],
    ...                     "steps": [534, 1500], "status": ["converged", "budget"]})
    >>> gpu = cpu.assign(**{"config.trainer.accelerator": "cuda", "run_id": ["a2", "b2"],
    ...                     "test_loss_main": [0.20001, 0.05], "steps": [535, 1500]})
    >>> print(compare_results(cpu, gpu, names=("cpu", "cuda")))
    PASS cpu vs cuda: 2 of 2 runs matched by configuration; all agree
      max relative test-loss difference 5.0e-05 (rtol 1e-03), max step difference 1 (max(2, 1%))
    >>> result = compare_results(cpu, gpu.assign(test_loss_main=[0.202, 0.05]))
    >>> result.passed
    False
    >>> print(result.reasons[0])
    stl seed 0 n_main 8: test_loss_main 0.2 vs 0.202: relative difference 9.9e-03 > rtol 1e-03
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

KEY_COLUMNS = ("regime", "seed", "n_main")
IGNORED = ("config.trainer.", "config.task.cache_dir")
LOSS_COLUMNS = ("test_loss_main", "test_loss_aux")
STEP_COLUMNS = ("steps", "pretrain_steps")
EXACT_COLUMNS = ("status", "pretrain_status")
REQUIRED = ("test_loss_main", "steps", "status")


@dataclass(frozen=True)
class Mismatch:
    """One disagreement in a matched pair: which run, which column, both values and why."""

    run: str
    column: str
    reference: Any
    other: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.run}: {self.reason}"


@dataclass
class Comparison:
    """The outcome of :func:`compare_results`.

    ``pairs``: one row per matched run, the key columns then ``<column>_<name>`` for the run id
    and every compared column of both sides. ``unmatched``: per side name, its rows without a
    counterpart (whole rows). ``mismatches``: the disagreements of matched pairs. ``problems``:
    what is wrong with the tables as a whole (nothing matched, a duplicated configuration, a
    missing column). ``notes``: hints that fail nothing by themselves (config values that differ
    between the unmatched rows of both sides).
    """

    names: tuple[str, str]
    pairs: pd.DataFrame
    unmatched: dict[str, pd.DataFrame]
    mismatches: list[Mismatch]
    problems: list[str]
    notes: list[str] = field(default_factory=list)
    loss_tolerance: str = ""
    step_tolerance: str = ""
    max_relative_loss_difference: float = float("nan")
    max_step_difference: float = float("nan")
    varying: list[str] = field(default_factory=list)  # config columns that vary between runs

    @property
    def passed(self) -> bool:
        return not (self.problems or self.mismatches
                    or any(len(rows) for rows in self.unmatched.values()))

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def reasons(self) -> list[str]:
        """Every reason for a FAIL, one line each (empty when it passed)."""
        lines = list(self.problems) + [str(m) for m in self.mismatches]
        for side, other in (self.names, self.names[::-1]):
            lines += [f"unmatched in {side}: {run} has no run with this configuration in {other}"
                      for run in _describe_rows(self.unmatched[side], self.varying)]
        return lines

    def report(self, limit: int = 10) -> str:
        """A short text: the verdict and counts, the largest differences against their
        tolerances, then (on a FAIL) at most ``limit`` reasons and the notes."""
        a, b = self.names
        matched = len(self.pairs)
        if self.passed:
            lines = [f"PASS {a} vs {b}: {matched} of {matched} runs matched by configuration; "
                     "all agree"]
        else:
            lines = [f"FAIL {a} vs {b}: {matched} runs matched by configuration, "
                     f"{len(self.mismatches)} disagreement(s); unmatched: "
                     f"{len(self.unmatched[a])} in {a}, {len(self.unmatched[b])} in {b}"]
        if matched:
            lines.append("  max relative test-loss difference "
                         f"{self.max_relative_loss_difference:.1e} ({self.loss_tolerance}), "
                         "max step difference "
                         f"{self.max_step_difference:.0f} ({self.step_tolerance})")
        reasons = self.reasons
        lines += [f"  - {r}" for r in reasons[:limit]]
        if len(reasons) > limit:
            lines.append(f"  … and {len(reasons) - limit} more")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def compare_results(reference: pd.DataFrame, other: pd.DataFrame, *, rtol: float = 1e-3,
                    atol: float = 0.0, step_atol: int = 2, step_rtol: float = 0.01,
                    ignore: Sequence[str] = IGNORED, losses: Sequence[str] = LOSS_COLUMNS,
                    steps: Sequence[str] = STEP_COLUMNS, exact: Sequence[str] = EXACT_COLUMNS,
                    names: tuple[str, str] = ("reference", "other")) -> Comparison:
    """Match the runs of two results tables by configuration and compare their outcomes.

    ``ignore``: config column prefixes left out of the match (default: the trainer section and
    the task cache folder). ``losses`` are compared to ``rtol``/``atol``, ``steps`` to
    ``max(step_atol, step_rtol * max(a, b))``, ``exact`` for equality; the tolerances are
    explained in the module docstring. ``names`` label the two sides in the report.
    """
    if names[0] == names[1]:
        raise ValueError(f"the two sides need different names, got {names!r}")
    tables = dict(zip(names, (reference, other)))
    for side, table in tables.items():
        missing = [c for c in KEY_COLUMNS if c not in table.columns]
        if len(table) and missing:
            raise ValueError(f"{side}: not a results table, no column(s) {missing}")
    config = sorted({c for t in tables.values() for c in t.columns
                     if c.startswith("config.") and not c.startswith(tuple(ignore))})
    key_columns = [*KEY_COLUMNS, *config]
    keys = {side: [_key(row, key_columns) for _, row in table.iterrows()]
            for side, table in tables.items()}
    problems: list[str] = []

    compared = _compared_columns(tables, (*losses, *steps, *exact), problems)
    varying = [c for c in config if len({k[key_columns.index(c)] for ks in keys.values()
                                         for k in ks}) > 1]
    positions = {side: _positions(ks) for side, ks in keys.items()}
    for side in names:
        for key, rows in positions[side].items():
            if len(rows) > 1:
                problems.append(f"ambiguous: {len(rows)} runs in {side} have the configuration "
                                f"of {_describe(dict(zip(key_columns, key)), varying)}")
    a, b = names
    shared = [k for k in positions[a] if k in positions[b]]
    pairs = [(positions[a][k][0], positions[b][k][0]) for k in shared
             if len(positions[a][k]) == 1 and len(positions[b][k]) == 1]
    unmatched = {side: tables[side].iloc[[i for k, rows in positions[side].items()
                                          if k not in positions[other_side] for i in rows]]
                 for side, other_side in (names, names[::-1])}
    if not pairs:
        empty = [side for side, t in tables.items() if not len(t)]
        problems.insert(0, "nothing matched: " + (f"{' and '.join(empty)} empty" if empty else
                                                 "no configuration is in both tables"))

    mismatches: list[Mismatch] = []
    loss_diff, step_diff = [], []
    rows = []
    for i, j in pairs:
        left, right = tables[a].iloc[i], tables[b].iloc[j]
        run = _describe(left, varying)
        for column in compared:
            x, y = left[column], right[column]
            if column in losses:
                reason, diff = _compare_loss(column, x, y, rtol, atol)
                loss_diff.append(diff)
            elif column in steps:
                reason, diff = _compare_steps(column, x, y, step_atol, step_rtol)
                step_diff.append(diff)
            else:
                reason = None if _same(x, y) else f"{column} {x} vs {y}"
            if reason:
                mismatches.append(Mismatch(run, column, x, y, reason))
        row = {c: left[c] if c in left.index else None for c in key_columns}
        for column in ("run_id", *compared):
            for side, value in ((a, left), (b, right)):
                row[f"{column}_{side}"] = value.get(column)
        rows.append(row)

    return Comparison(
        names=(a, b), pairs=pd.DataFrame(rows), unmatched=unmatched, mismatches=mismatches,
        problems=problems, notes=_unmatched_notes(unmatched, positions, key_columns, names),
        loss_tolerance=f"rtol {rtol:.0e}" + (f" + atol {atol:.0e}" if atol else ""),
        step_tolerance=f"max({step_atol}, {step_rtol:.0%})",
        max_relative_loss_difference=_nanmax(loss_diff), max_step_difference=_nanmax(step_diff),
        varying=varying)


def _compared_columns(tables: dict[str, pd.DataFrame], columns: Sequence[str],
                      problems: list[str]) -> list[str]:
    """The compared columns present in both tables; a missing one is a problem (see above)."""
    if not all(len(t) for t in tables.values()):
        return [c for c in columns if all(c in t.columns for t in tables.values())]
    found = []
    for column in columns:
        lacking = [side for side, t in tables.items() if column not in t.columns]
        if not lacking:
            found.append(column)
        elif len(lacking) == 1 or column in REQUIRED:
            problems.append(f"column {column!r} missing from {' and '.join(lacking)}")
    return found


def _missing(column: str, x: float, y: float, spec: str) -> tuple[str | None, float]:
    """The outcome when a value is missing (NaN) on one side or both (equal when both)."""
    if math.isnan(x) and math.isnan(y):
        return None, float("nan")
    return f"{column} {x:{spec}} vs {y:{spec}}: missing on one side", float("inf")


def _compare_loss(column: str, x: Any, y: Any, rtol: float, atol: float
                  ) -> tuple[str | None, float]:
    x, y = _number(x), _number(y)
    if math.isnan(x) or math.isnan(y):
        return _missing(column, x, y, ".4g")
    scale = max(abs(x), abs(y))
    relative = abs(x - y) / scale if scale else 0.0
    if abs(x - y) <= rtol * scale + atol:
        return None, relative
    return (f"{column} {x:.4g} vs {y:.4g}: relative difference {relative:.1e} > rtol {rtol:.0e}"
            + (f" (+ atol {atol:.0e})" if atol else "")), relative


def _compare_steps(column: str, x: Any, y: Any, step_atol: int, step_rtol: float
                   ) -> tuple[str | None, float]:
    x, y = _number(x), _number(y)
    if math.isnan(x) or math.isnan(y):
        return _missing(column, x, y, ".0f")
    allowed = max(step_atol, step_rtol * max(abs(x), abs(y)))
    if abs(x - y) <= allowed:
        return None, abs(x - y)
    return (f"{column} {x:.0f} vs {y:.0f}: differ by {abs(x - y):.0f} > {allowed:.0f} "
            f"(max({step_atol}, {step_rtol:.0%}))"), abs(x - y)


def _canonical(value: Any) -> Any:
    """A hashable form of a table cell in which equal configurations are equal: a missing value
    (None, NaN, NA) is None, a number is a float, arrays/lists/tuples (parquet reads lists back
    as arrays) are tuples, mappings are sorted item tuples."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray | list | tuple):
        return tuple(_canonical(v) for v in value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return None if math.isnan(value) else float(value)
    return value


def _key(row: pd.Series, columns: Sequence[str]) -> tuple:
    return tuple(_canonical(row[c]) if c in row.index else None for c in columns)


def _same(x: Any, y: Any) -> bool:
    return _canonical(x) == _canonical(y)


def _number(value: Any) -> float:
    value = _canonical(value)
    return float("nan") if value is None else float(value)


def _positions(keys: list[tuple]) -> dict[tuple, list[int]]:
    found: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        found.setdefault(key, []).append(i)
    return found


def _describe(row: Any, varying: Sequence[str]) -> str:
    """``ptft seed 0 n_main 8`` plus the config values that vary between the runs compared."""
    text = f"{row['regime']} seed {_show(row['seed'])} n_main {_show(row['n_main'])}"
    extra = [f"{c.removeprefix('config.')}={_show(row.get(c))}" for c in varying]
    return text + (f" ({', '.join(extra)})" if extra else "")


def _describe_rows(rows: pd.DataFrame, varying: Sequence[str]) -> list[str]:
    return [_describe(row, [c for c in varying if c in rows.columns])
            for _, row in rows.iterrows()]


def _show(value: Any) -> str:
    value = _canonical(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _unmatched_notes(unmatched: dict[str, pd.DataFrame],
                     positions: dict[str, dict[tuple, list[int]]], key_columns: list[str],
                     names: tuple[str, str]) -> list[str]:
    """Where both sides have unmatched rows: the key columns whose values differ between them
    (e.g. a training setting that is not the same on both sides)."""
    a, b = names
    if not (len(unmatched[a]) and len(unmatched[b])):
        return []
    values = {side: [k for k in positions[side] if k not in positions[other]]
              for side, other in (names, names[::-1])}
    notes = []
    for index, column in enumerate(key_columns):
        left = {k[index] for k in values[a]}
        right = {k[index] for k in values[b]}
        if left != right:
            notes.append(f"{column} differs between the unmatched runs: {a} "
                         f"{_values(left)}, {b} {_values(right)}")
    return notes


def _values(values: set) -> str:
    shown = sorted(_show(v) for v in values)
    return "{" + ", ".join(shown[:5]) + (", …" if len(shown) > 5 else "") + "}"


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else float("nan")
