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

from mtl_lab.config import (
    ComparisonConfig,
    ConfigError,
    dump_config,
    flatten,
    read_yaml,
    validate_config,
)
from mtl_lab.plots import plot_comparison
from mtl_lab.results import CONFIG_FILE, SWEEP_FILE, read_results, write_results
from mtl_lab.sweeps.execute import execute, load_task, preflight
from mtl_lab.sweeps.plan import make_run_id, run_config, runs_of
from mtl_lab.tables import mean_table

__all__ = ["comparison_table", "load_task", "make_run_id", "read_results", "run_comparison",
           "run_config", "write_results"]


def comparison_table(results: pd.DataFrame, metric: str = "test_loss_main") -> pd.DataFrame:
    """Mean over seeds of ``metric``: rows n_main (and every config value that varies between
    the runs, so that two settings are never averaged), columns the regimes (PT+FT split by
    varying finetune values). See :mod:`mtl_lab.tables`; :func:`mtl_lab.tables.marked_table`
    gives the same table with the flags of budget-stopped and diverged runs."""
    return mean_table(results, metric)


def config_differences(old: ComparisonConfig, new: ComparisonConfig) -> dict[str, tuple]:
    """Settings that make two configs different experiments: every value that determines a run
    (what the run id hashes) and the name; not the lists of regimes, seeds and n_main, which
    only select runs of the same experiment, nor logging or output settings."""
    before = {"name": old.name, **flatten(run_config(old))}
    after = {"name": new.name, **flatten(run_config(new))}
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)}


def _union(first: list, second: list) -> list:
    return [*first, *(v for v in second if v not in first)]


def claim_folder(cfg: ComparisonConfig, out_dir: Path) -> ComparisonConfig:
    """Check that ``out_dir`` may take ``cfg``'s runs; return the config describing the folder.

    A comparison folder holds one configuration. A rerun with the same settings may add
    regimes, seeds or n_main values (the folder's ``config.yaml`` then lists all of them); a
    config that differs in anything else is refused, naming the keys, before anything is
    written or computed, as are sweep folders and folders of results without a config.
    """
    if (out_dir / SWEEP_FILE).is_file():
        raise ConfigError(f"{out_dir} holds a sweep ({SWEEP_FILE}); write this comparison to "
                          "another folder with -o/--output")
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        if not read_results(out_dir).empty:
            raise ConfigError(f"{out_dir} holds results but no {CONFIG_FILE}, so what they are "
                              "cannot be checked; write this comparison to another folder with "
                              "-o/--output")
        return cfg
    try:
        old = validate_config(read_yaml(path), str(path))
    except ConfigError as err:
        raise ConfigError(f"{out_dir} holds a {CONFIG_FILE} this version cannot read, so the "
                          f"folder cannot take more runs; use another folder ({err})") from err
    differences = config_differences(old, cfg)
    if differences:
        lines = "\n".join(f"  - {key}: {a!r} in the folder, {b!r} here"
                          for key, (a, b) in differences.items())
        hint = "-".join(f"{key.rsplit('.', 1)[-1]}{b}" for key, (_, b) in
                        list(differences.items())[:2])
        raise ConfigError(f"{out_dir} already holds comparison {old.name!r} with other settings "
                          f"(a folder holds one configuration):\n{lines}\nwrite this one to its "
                          f"own folder, e.g. -o {out_dir}-{hint}")
    return cfg.model_copy(update={"regimes": _union(old.regimes, cfg.regimes),
                                  "seeds": _union(old.seeds, cfg.seeds),
                                  "n_main": _union(old.n_main, cfg.n_main)})


def run_comparison(cfg: ComparisonConfig, output_dir: str | Path | None = None,
                   progress: bool | None = None) -> pd.DataFrame:
    """Train every pending run of the comparison; return the table of this comparison's runs.

    The output folder must be new or hold the same configuration (:func:`claim_folder`)."""
    out_dir = Path(output_dir) if output_dir is not None else cfg.resolved_output_dir()
    progress = cfg.logging.progress if progress is None else progress
    folder_cfg = claim_folder(cfg, out_dir)
    preflight(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(dump_config(folder_cfg))
    results = execute(runs_of(cfg), out_dir, "local", progress=progress, description=cfg.name)
    plot_comparison(results, out_dir / "comparison.png", title=cfg.name)
    return results
