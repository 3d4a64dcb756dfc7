"""One comparison = regimes × seeds × n_main values on one task (the ``mtl-lab run`` job).

:func:`run_comparison` takes a validated config and returns the results table (one flat row per
run). It is the one-point case of a sweep (:mod:`mtl_lab.sweeps`): runs are keyed by a hash of
everything that determines them, a rerun with the same output folder reuses finished runs, and
runs of one regime and one seed train together as one batched ensemble (their n_main values
differ only by a prefix of the same inputs).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_lab.config import REGIME_LABELS, ComparisonConfig, dump_config
from mtl_lab.plots import plot_comparison
from mtl_lab.sweeps.execute import execute, load_task, preflight, read_results, write_results
from mtl_lab.sweeps.plan import make_run_id, run_config, runs_of

__all__ = ["comparison_table", "load_task", "make_run_id", "read_results", "run_comparison",
           "run_config", "write_results"]


def comparison_table(results: pd.DataFrame, metric: str = "test_loss_main") -> pd.DataFrame:
    """Mean over seeds of ``metric`` per n_main (rows) and regime (columns)."""
    if results.empty:
        return pd.DataFrame()
    table = results.pivot_table(index="n_main", columns="regime_label", values=metric,
                                aggfunc="mean")
    order = [REGIME_LABELS[r] for r in REGIME_LABELS if REGIME_LABELS[r] in table.columns]
    return table[order]


def run_comparison(cfg: ComparisonConfig, output_dir: str | Path | None = None,
                   progress: bool | None = None) -> pd.DataFrame:
    """Train every pending run of the comparison; return the table of this comparison's runs."""
    out_dir = Path(output_dir) if output_dir is not None else cfg.resolved_output_dir()
    progress = cfg.logging.progress if progress is None else progress
    preflight(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))
    results = execute(runs_of(cfg), out_dir, "local", progress=progress, description=cfg.name)
    plot_comparison(results, out_dir / "comparison.png", title=cfg.name)
    return results
