"""``mtl-lab analyze``: analyse a comparison folder, print the evidence, write figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_lab.analysis.diagnosis import diagnose
from mtl_lab.analysis.figures import analysis_figures
from mtl_lab.analysis.runs import analyze_run_dir
from mtl_lab.tables import sort_key, swept_columns

SUMMARY_COLUMNS = ["main_share_on_aux", "share_reused", "share_new", "cka_reference", "pr",
                   "weight_change", "conservation_drift", "path_norm_l1"]


def summary_table(analysis: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the headline measures per regime, n_main and every config value that
    varies between the runs (so that two task settings are never averaged together)."""
    cols = [c for c in SUMMARY_COLUMNS if c in analysis]
    varying = swept_columns(analysis)
    keys = analysis[varying].astype(str).rename(columns=lambda c: c.removeprefix("config."))
    frame = pd.concat([analysis[["regime_label", "n_main", *cols]], keys], axis=1)
    order = ["regime_label", *keys.columns, "n_main"]
    frame = frame.sort_values(order, key=lambda column: column.map(sort_key))  # 2 < 12 < 128
    return frame.groupby(order, dropna=False, sort=False)[cols].mean()


def analyze(run_dir: str | Path, progress: bool = True) -> dict:
    """Analyse ``run_dir``; returns the analysis table, unit tables, diagnosis and figures."""
    run_dir = Path(run_dir)
    analysis, units = analyze_run_dir(run_dir, progress=progress)
    figures = analysis_figures(analysis, units, run_dir)
    with pd.option_context("display.float_format", "{:.3g}".format, "display.width", 140):
        print("\nFeature reuse and representation (mean over seeds):")
        print(summary_table(analysis).to_string())
        try:
            diagnosis = diagnose(analysis)
        except ValueError as err:
            diagnosis = None
            print(f"\nRegime diagnosis skipped: {err}")
        else:
            diagnosis.to_parquet(run_dir / "diagnosis.parquet", index=False)
            print("\nRegime diagnosis (S = sparsity dependence in decades, U = reuse):")
            print(diagnosis[["condition", "label", "sparsity_dependence", "reuse",
                             "runs"]].to_string(index=False))
    print(f"\nWrote {run_dir}/analysis.parquet, units.parquet and "
          f"{len(figures)} figures in {run_dir}/figures")
    _log_to_wandb(run_dir, analysis, units, figures)
    return {"analysis": analysis, "units": units, "diagnosis": diagnosis, "figures": figures}


def _add_to_run_wandb(run_dir: Path, logging_cfg: dict, analysis: pd.DataFrame,
                      units: pd.DataFrame) -> None:
    """Each run's analyzer summary and per-unit table go to that run's own wandb run."""
    from mtl_lab.tracking import add_to_wandb_run

    measures = [c for c in analysis.columns if c not in set(units.columns) - {"run_id"}
                and not c.startswith("config.")]
    for row in analysis.to_dict("records"):
        if not isinstance(row.get("wandb_id"), str):
            continue
        summary = {f"analysis/{k}": v for k, v in row.items() if k in measures
                   and isinstance(v, int | float) and not isinstance(v, bool)}
        table = units[units["run_id"] == row["run_id"]].drop(columns="run_id")
        add_to_wandb_run(logging_cfg, run_dir, row["wandb_id"], summary, {"units": table})


def _log_to_wandb(run_dir: Path, analysis: pd.DataFrame, units: pd.DataFrame,
                  figures: list[Path]) -> None:
    """When the comparison logged to wandb, add one 'analysis' run to its group."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return
    cfg = yaml.safe_load(cfg_path.read_text())
    wb = (cfg.get("logging") or {}).get("wandb") or {}
    if not wb.get("enabled"):
        return
    from mtl_lab.tracking import log_figures_run

    _add_to_run_wandb(run_dir, cfg.get("logging") or {}, analysis, units)
    numeric = analysis.select_dtypes("number")
    table = pd.concat([analysis[["run_id", "regime", "seed", "n_main"]], numeric], axis=1)
    log_figures_run(wb, run_dir, cfg.get("name"), "analysis",
                    {"analysis": table.loc[:, ~table.columns.duplicated()]}, figures)
