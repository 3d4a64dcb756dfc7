"""The theory's main-task test loss for the runs of a results table (``mtl-lab report --theory``).

A results row (:func:`mtl_lab.sweeps.execute.run_row`: regime, seed, n_main, the task's
parameters as ``task_params`` and every config value under ``config.``) names everything a
prediction needs. :class:`TheoryPredictor` regenerates the run's task data from the same family,
parameters and seed (the family's generator: the float32 arrays the network trained on, without
touching the task cache), solves the regime's convex
program of :mod:`mtl_lab.theory.diagonal` and returns the mean squared error of the predicted
``beta*`` on the main task's test split: the same definition as the lab's ``test_loss_main``
(``mean((f(x) - y)^2)`` over the test samples, no factor 1/2).

Covered: diagonal networks (``model.kind: diagonal``) trained full-batch (the theory is that of
gradient flow), in the regimes

* ``stl``: :func:`~mtl_lab.theory.diagonal.stl_solution` from ``model.alpha`` (and
  ``model.head_init_scale``), exact for gradient flow;
* ``ptft`` with ``finetune.train: all``: :func:`~mtl_lab.theory.diagonal.ptft_exact_solution`
  from the trunk that the STL theory predicts pretraining leaves
  (:func:`~mtl_lab.theory.diagonal.stl_trunk` of the auxiliary task's ``stl_solution``), times
  ``finetune.rescale``, with the new head at γ (``finetune.head_init_scale``, times c when
  ``finetune.gamma_follows_rescale``), exact for gradient flow;
* ``mtl``: :func:`~mtl_lab.theory.diagonal.mtl_solution`, the ℓ1,2 heuristic of SCIENCE.md §4
  (any task weighting): not an exact limit, and trained networks can be far from it
  (tests/test_theory.py measures how far).

Everything else (ReLU networks, minibatch training, PT+LP, the ridge references, a PT+FT that
trains only its head) gets NaN with the reason, as do runs whose training data cannot be
interpolated (the theory describes interpolating solutions). The auxiliary task's solution is
computed once per (task, seed, model) and the task data once per (task, seed), whatever the
number of rows that use them.

Example (a row as a dict; the lab's rows hold many more ``config.*`` columns):
    >>> params = {"d": 12, "k_aux": 3, "k_main": 2, "overlap": 2, "n_aux": 6, "n_main": 4,
    ...           "n_test": 100}
    >>> row = {"regime": "stl", "seed": 0, "n_main": 4, "task_params": json.dumps(params),
    ...        "config.task.family": "sparse_linear", "config.model.kind": "diagonal",
    ...        "config.model.alpha": 1e-3}
    >>> predictor = TheoryPredictor()
    >>> loss = predictor.test_loss(row)
    >>> 0 < loss < 10
    True
    >>> predictor.reason({**row, "config.model.kind": "relu"})
    'model.kind relu: the theory covers diagonal networks'
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mtl_lab.config import ComparisonConfig, effective_gamma, flatten
from mtl_lab.errors import InputError
from mtl_lab.theory.diagonal import (
    InfeasibleError,
    NotConvergedError,
    mtl_solution,
    predicted_test_loss,
    ptft_exact_solution,
    stl_solution,
    stl_trunk,
)

__all__ = [
    "COLUMN",
    "COVERED_REGIMES",
    "FEASIBILITY_TOL",
    "NotCovered",
    "TheoryPredictions",
    "TheoryPredictor",
    "config_row",
    "predict_results",
]

COLUMN = "theory_test_loss_main"
COVERED_REGIMES = ("stl", "mtl", "ptft")
# the task data are float32: y = float32(x · beta) need not lie in the range of float32(x) when
# n >= d, by a relative ~1e-7; a gap above this bound means noise or a nonlinear teacher
FEASIBILITY_TOL = 1e-5


class NotCovered(InputError):  # noqa: N818 - reads as "the run is not covered"
    """A run the theory does not describe (the message says why)."""


def _clean(value: Any) -> Any:
    """None for a missing value (NaN or None), else the value itself."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


@dataclass(frozen=True)
class _Run:
    """What one row's prediction depends on, read off the row."""

    regime: str
    seed: int
    n_main: int
    family: str
    params: dict  # the family's parameters without n_main
    alpha: float
    head_init_scale: float | None
    rescale: float
    gamma: float

    @property
    def task_key(self) -> tuple:
        return (self.family, json.dumps(self.params, sort_keys=True), self.seed)

    @property
    def aux_key(self) -> tuple:
        return (*self.task_key, self.alpha, self.head_init_scale)


@dataclass
class _Data:
    """A task's splits as float64 arrays (the float32 values the lab trains on)."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]

    def main_train(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x["main_train"][:n], self.y["main_train"][:n]


class TheoryPredictor:
    """Theory-predicted main-task test losses of results rows, with caches for task data and
    auxiliary solutions (reuse one predictor for a whole table)."""

    def __init__(self) -> None:
        self._data: dict[tuple, _Data] = {}
        self._trunks: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------------- reading rows

    def reason(self, row: Mapping[str, Any]) -> str | None:
        """Why the theory does not cover this row's run, or None when it does (the data are not
        looked at: an infeasible interpolation shows only in :meth:`test_loss`)."""
        try:
            self._run(row)
        except NotCovered as err:
            return str(err)
        return None

    def _run(self, row: Mapping[str, Any]) -> _Run:
        get = lambda key: _clean(row.get(key))  # noqa: E731
        regime = get("regime")
        kind = get("config.model.kind") or "relu"
        if kind != "diagonal":
            raise NotCovered(f"model.kind {kind}: the theory covers diagonal networks")
        if regime not in COVERED_REGIMES:
            raise NotCovered(f"regime {regime}: the theory covers {', '.join(COVERED_REGIMES)}")
        modes = [("training", get("config.training.mode"))]
        if regime == "ptft":
            modes.append(("pretraining", get("config.pretraining.mode")))
            if (get("config.finetune.train") or "all") != "all":
                raise NotCovered("finetune.train head: PT+FT that trains only its head is not "
                                 "covered")
        for section, mode in modes:
            if mode not in (None, "full_batch"):
                raise NotCovered(f"{section}.mode {mode}: the theory is that of full-batch "
                                 "gradient descent (gradient flow)")
        family = get("config.task.family")
        if family is None:
            raise NotCovered("the row names no task family (config.task.family)")
        params = self._params(row)
        n_main = int(params.pop("n_main", get("n_main")))
        alpha = float(get("config.model.alpha") or 1e-3)
        head = get("config.model.head_init_scale")
        rescale = float(get("config.finetune.rescale") or 1.0)
        follows = get("config.finetune.gamma_follows_rescale")
        follows = str(follows).lower() in ("true", "1", "1.0") if follows is not None else False
        gamma = effective_gamma(get("config.finetune.head_init_scale") or 1e-3, rescale, follows)
        return _Run(regime, int(get("seed")), n_main, family, params, alpha,
                    None if head is None else float(head), rescale, gamma)

    @staticmethod
    def _params(row: Mapping[str, Any]) -> dict:
        """The family's parameters with n_main: ``task_params`` (JSON), else the
        ``config.task.params.*`` columns with the row's n_main."""
        text = _clean(row.get("task_params"))
        if text is not None:
            return dict(json.loads(text))
        prefix = "config.task.params."
        params = {k.removeprefix(prefix): _clean(v) for k, v in row.items()
                  if k.startswith(prefix) and _clean(v) is not None}
        params["n_main"] = int(row["n_main"])
        return params

    # ------------------------------------------------------------------------- data and caches

    def _task(self, run: _Run, n_main: int | None = None) -> _Data:
        """The task's arrays with at least ``n_main`` main training samples (built once per
        task and seed; a smaller n_main is a prefix of a larger one)."""
        n_main = n_main or run.n_main
        found = self._data.get(run.task_key)
        if found is not None and len(found.y["main_train"]) >= n_main:
            return found
        import tasks

        # the family's generator gives the arrays tasks.build_task stores (and the lab trains
        # on), without writing a dataset to the task cache
        params = tasks.validate_params(run.family, {**run.params, "n_main": n_main})
        splits = tasks.get_family(run.family).generate(params, run.seed)
        xs, ys = {}, {}
        for split in ("aux_train", "main_train", "main_test"):
            x, y = splits[split]
            xs[split] = np.asarray(x, dtype=np.float32).astype(np.float64).reshape(len(x), -1)
            ys[split] = np.asarray(y, dtype=np.float32).astype(np.float64).reshape(-1)
        self._data[run.task_key] = data = _Data(xs, ys)
        return data

    def _pretrained_trunk(self, run: _Run) -> tuple[np.ndarray, np.ndarray]:
        """The trunk the STL theory says pretraining on the auxiliary task leaves (cached)."""
        if run.aux_key not in self._trunks:
            data = self._task(run)
            aux = stl_solution(data.x["aux_train"], data.y["aux_train"], run.alpha,
                               run.head_init_scale, feasibility_tol=FEASIBILITY_TOL)
            self._trunks[run.aux_key] = stl_trunk(aux.beta, run.alpha, run.head_init_scale)
        return self._trunks[run.aux_key]

    # ------------------------------------------------------------------------- predictions

    def beta(self, row: Mapping[str, Any]) -> np.ndarray:
        """The theory's main-task predictor ``beta*`` for the row's run; raises
        :class:`NotCovered` when the theory does not describe the run."""
        run = self._run(row)
        data = self._task(run)
        X, y = data.main_train(run.n_main)
        try:
            if run.regime == "stl":
                sol = stl_solution(X, y, run.alpha, run.head_init_scale,
                                   feasibility_tol=FEASIBILITY_TOL)
            elif run.regime == "ptft":
                w_plus, w_minus = self._pretrained_trunk(run)
                sol = ptft_exact_solution(X, y, w_plus, w_minus, run.gamma, run.rescale,
                                          feasibility_tol=FEASIBILITY_TOL)
            else:
                sol = mtl_solution(data.x["aux_train"], data.y["aux_train"], X, y,
                                   feasibility_tol=FEASIBILITY_TOL)
        except InfeasibleError as err:
            raise NotCovered(f"no interpolating solution, so no implicit-bias prediction "
                             f"({err})") from err
        except NotConvergedError as err:
            raise NotCovered(f"the convex solver did not converge ({err})") from err
        return sol.beta

    def test_loss(self, row: Mapping[str, Any]) -> float:
        """The theory's ``test_loss_main`` for the row's run (:class:`NotCovered` if none)."""
        run = self._run(row)
        beta = self.beta(row)
        data = self._task(run)
        return predicted_test_loss(beta, data.x["main_test"], data.y["main_test"])

    def predict(self, results: pd.DataFrame) -> TheoryPredictions:
        """One prediction per row of a results table (NaN where not covered); the task data of
        a task and seed are built once, with the largest n_main any row needs."""
        rows = results.to_dict("records")
        runs: dict[int, _Run] = {}
        reasons: dict[int, str] = {}
        for i, row in enumerate(rows):
            try:
                runs[i] = self._run(row)
            except NotCovered as err:
                reasons[i] = str(err)
        largest: dict[tuple, _Run] = {}
        for run in runs.values():
            if run.task_key not in largest or run.n_main > largest[run.task_key].n_main:
                largest[run.task_key] = run
        for run in largest.values():
            with contextlib.suppress(ValueError, KeyError):  # reported per row below
                self._task(run)
        values = np.full(len(rows), np.nan)
        for i in runs:
            try:
                values[i] = self.test_loss(rows[i])
            except NotCovered as err:
                reasons[i] = str(err)
            except (ValueError, KeyError) as err:  # e.g. parameters this version rejects
                reasons[i] = (f"the task data could not be regenerated "
                              f"({type(err).__name__}: {err})")
        regimes = (results["regime"].astype(str).tolist() if "regime" in results
                   else ["?"] * len(rows))
        return TheoryPredictions(pd.Series(values, index=results.index, name=COLUMN),
                                 _notes(regimes, reasons))


def _notes(regimes: list[str], reasons: Mapping[int, str]) -> list[str]:
    """One line per reason: how many runs it hit, of which regimes."""
    by_reason: dict[str, list[int]] = {}
    for i, reason in reasons.items():
        by_reason.setdefault(reason, []).append(i)
    notes = []
    for reason, hits in by_reason.items():
        names = ", ".join(sorted({regimes[i] for i in hits}))
        notes.append(f"{reason} ({len(hits)} run{'s' if len(hits) != 1 else ''}: {names})")
    return notes


@dataclass
class TheoryPredictions:
    """``values``: the predicted ``test_loss_main`` per row (index of the results table, NaN
    where not covered); ``notes``: why the other rows are not covered, one line per reason."""

    values: pd.Series
    notes: list[str] = field(default_factory=list)

    @property
    def covered(self) -> int:
        return int(np.isfinite(self.values.to_numpy()).sum())


def predict_results(results: pd.DataFrame, predictor: TheoryPredictor | None = None,
                    require: bool = True) -> TheoryPredictions:
    """:meth:`TheoryPredictor.predict` for a results table. With ``require``, a table without
    any diagonal run raises :class:`~mtl_lab.errors.InputError` (nothing to predict)."""
    if require:
        kinds = results.get("config.model.kind")
        if kinds is None or not (kinds == "diagonal").any():
            found = sorted(set(kinds.dropna().astype(str))) if kinds is not None else []
            raise InputError("the theory predicts diagonal networks, and this table has no "
                             "diagonal runs (model.kind: "
                             f"{', '.join(found) or 'not recorded'})")
    return (predictor or TheoryPredictor()).predict(results)


def config_row(cfg: ComparisonConfig, regime: str, seed: int, n_main: int) -> dict[str, Any]:
    """A results-row-like mapping of one run of a config, for :class:`TheoryPredictor` before
    (or without) training it.

    >>> from mtl_lab.config import validate_config
    >>> cfg = validate_config({"regimes": ["stl"], "seeds": [0], "n_main": [4],
    ...     "task": {"family": "sparse_linear", "params": {"d": 8, "k_aux": 2, "k_main": 2,
    ...              "overlap": 1, "n_aux": 4}}, "model": {"kind": "diagonal"}})
    >>> row = config_row(cfg, "stl", 0, 4)
    >>> row["config.model.kind"], json.loads(row["task_params"])["n_main"]
    ('diagonal', 4)
    """
    flat = flatten(cfg.model_dump(mode="json"))
    return {"regime": regime, "seed": int(seed), "n_main": int(n_main),
            "task_params": json.dumps(cfg.task_params(n_main), sort_keys=True),
            **{f"config.{k}": v for k, v in flat.items()}}
