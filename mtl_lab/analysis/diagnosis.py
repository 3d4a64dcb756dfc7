"""Regime diagnosis: is a training regime lazy, rich, or in nested feature selection?

Input: an analysed comparison whose main tasks vary in how many auxiliary features they use
(nested tasks: ``k_main`` for ``sparse_linear``, ``m_main`` for ``relu_units``) and in n_main.
For every condition (a regime, and for PT+FT / PT+LP its rescale factor c) two numbers decide:

* **sparsity dependence** S — how much harder a main task that uses more auxiliary features is:
  S = mean over n_main of log₁₀( L̃(k_max) / L̃(k_min) ), in decades, where
  L̃ = max(L_test / L_null, solved_fraction) is the test loss relative to predicting zero
  (L_null = mean y²), floored so that tasks solved to within ``solved_fraction`` count alike —
  without the floor, the ratio between two nearly-solved tasks would read as sparsity dependence;
* **reuse** U — the share of the main task's contribution carried by auxiliary features
  (``main_share_on_aux`` of the per-unit table, averaged over runs; 0 for STL by construction).

The rule (thresholds in :class:`DiagnosisRule`):

* U < reuse_threshold → **rich** (features learned anew; little reuse);
* U ≥ reuse_threshold and S < sensitivity_threshold → **lazy** (reuses the pretrained features,
  performance insensitive to how many of them the main task uses);
* U ≥ reuse_threshold and S ≥ sensitivity_threshold → **nested feature selection** (reuses a
  sparse subset of the auxiliary features; performance strongly sparsity-dependent).

The ridge references (LP ridge, NTK ridge) regress on frozen features: they are lazy by
construction and are labelled so, not judged by the rule (they have no reuse measure).

A condition is a regime with its finetuning values (c always, and every other ``finetune.*``
key that varies, e.g. ``rescaling``) and any other swept setting that varies within that regime's
runs (a task's correlation, a learning rate): runs of different settings are never pooled. When
the main tasks do not vary in k_main or m_main, S cannot be measured: reuse still separates rich
from the rest, which is labelled "reuses (lazy or nested: sweep m_main to tell)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.tables import fmt, n_values, short, swept_columns

SPARSITY_COLUMNS = ("config.task.params.k_main", "config.task.params.m_main")


@dataclass(frozen=True)
class DiagnosisRule:
    """sensitivity_threshold: decades of test-loss ratio between the densest and the sparsest
    main task above which a regime counts as strongly sparsity-dependent (2 = the sparse task is
    learned 100× better: in the nested and rich regimes the sparse task is solved almost exactly
    from few samples while in the lazy regime all tasks in the pretrained subspace cost alike);
    reuse_threshold: main-task contribution share on auxiliary features above which it counts as
    reusing them; solved_fraction: relative test loss below which a task counts as solved."""

    sensitivity_threshold: float = 2.0
    reuse_threshold: float = 0.5
    solved_fraction: float = 1e-3


def sparsity_column(analysis: pd.DataFrame) -> str:
    """The config column that counts the auxiliary features the main task uses."""
    for col in SPARSITY_COLUMNS:
        if col in analysis and analysis[col].nunique() > 1:
            return col
    raise ValueError("regime diagnosis needs main tasks that differ in k_main or m_main "
                     "(run a sweep over them into one folder: `mtl-lab sweep`)")


def _rank(column: str) -> int:
    """finetune values first, then the task's, then the rest (training, model)."""
    for rank, prefix in enumerate(("config.finetune.", "config.task.")):
        if column.startswith(prefix):
            return rank
    return 2


def conditions(analysis: pd.DataFrame, exclude=()) -> pd.Series:
    """The condition of every run (module docstring), e.g. ``PT+FT (c=1, rescaling=enorm,
    correlation=0.9)``. Columns in ``exclude`` (the sparsity axis) are not part of it, nor is a
    column that the ones before it determine (c = 10's learning rate 0.005 when only c = 10 has
    it: the condition reads ``c=10``, not ``c=10, lr=0.005``)."""
    swept = sorted((c for c in swept_columns(analysis) if c not in set(exclude)), key=_rank)
    out = pd.Series("", index=analysis.index, dtype=object)
    for label, rows in analysis.groupby("regime_label", sort=False):
        keep: list[str] = []
        if REGIME_SPECS[rows["regime"].iloc[0]].finetunes and "config.finetune.rescale" in rows:
            keep.append("config.finetune.rescale")
        for column in swept:
            if column in keep or n_values(rows[column]) < 2:
                continue
            determined = bool(keep) and rows[column].astype(str).groupby(
                [rows[c].astype(str) for c in keep]).nunique().max() < 2
            if not determined:
                keep.append(column)
        for index, values in zip(rows.index, rows[keep].itertuples(index=False), strict=True):
            parts = ", ".join(f"{short(c)}={fmt(v)}" for c, v in zip(keep, values, strict=True))
            out[index] = f"{label} ({parts})" if parts else label
    return out


def sparsity_dependence(runs: pd.DataFrame, column: str, solved_fraction: float = 1e-3
                        ) -> tuple[float, dict]:
    """S in decades, and the mean relative test loss per (n_main, sparsity) behind it."""
    null = runs.get("null_loss_main", 1.0)
    relative = (runs["test_loss_main"] / null).clip(lower=solved_fraction)
    means = relative.groupby([runs["n_main"], runs[column]]).mean()
    per_n = []
    for _, part in means.groupby(level=0):
        part = part.droplevel(0).sort_index()
        if len(part) >= 2 and part.iloc[0] > 0:
            per_n.append(math.log10(part.iloc[-1] / part.iloc[0]))
    evidence = {f"rel_loss[n={n},{column.split('.')[-1]}={k}]": float(v) for (n, k), v in
                means.items()}
    return (float(np.mean(per_n)) if per_n else float("nan")), evidence


def diagnose(analysis: pd.DataFrame, rule: DiagnosisRule = DiagnosisRule()) -> pd.DataFrame:
    """One row per condition: label, S, U and the losses behind them (S is NaN, and the label
    says so, when k_main / m_main does not vary)."""
    try:
        column = sparsity_column(analysis)
    except ValueError:
        column = None
    frame = analysis.assign(condition=conditions(analysis, exclude=[column] if column else []))
    rows = []
    for condition, runs in frame.groupby("condition", sort=False):
        s, evidence = (sparsity_dependence(runs, column, rule.solved_fraction) if column
                       else (float("nan"), {}))
        spec = REGIME_SPECS[runs["regime"].iloc[0]]
        reuse = 0.0 if not spec.sees_aux else float(  # nothing auxiliary to reuse
            runs.get("main_share_on_aux", pd.Series([float("nan")])).mean())
        if spec.kernel_reference:
            label = "lazy (kernel reference)"  # fixed features by construction: no reuse measure
        elif math.isnan(reuse):
            label = "n/a (no reuse measure)"
        elif reuse < rule.reuse_threshold:
            label = "rich"
        elif column is None:
            label = "reuses (lazy or nested: sweep m_main to tell)"
        elif s >= rule.sensitivity_threshold:
            label = "nested feature selection"
        else:
            label = "lazy"
        rows.append({"condition": condition, "regime": runs["regime"].iloc[0], "label": label,
                     "sparsity_dependence": s, "reuse": reuse, "runs": len(runs), **evidence})
    return pd.DataFrame(rows)
