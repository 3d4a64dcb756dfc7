"""One comparison = regimes × seeds × n_main values on one task (the ``mtl-lab run`` job).

:func:`run_comparison` takes a validated config and returns the results table (one flat row per
run). Runs are keyed by a hash of everything that determines them; a rerun with the same output
folder reuses finished runs instead of recomputing them. Runs of one regime and one seed train
together as one batched ensemble (their n_main values differ only by a prefix of the same inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

import tasks
from mtl_lab.checkpoints import save_network
from mtl_lab.config import REGIME_LABELS, ComparisonConfig, ConfigError, dump_config, flatten
from mtl_lab.data import TaskTensors
from mtl_lab.plots import plot_comparison
from mtl_lab.regimes import REGIME_FUNCTIONS, GroupContext, Member, PretrainStore
from mtl_lab.tracking import group_loggers, log_run_to_wandb, quiet_lightning

RESULTS_FILE = "results.parquet"
PER_RUN_KEYS = ("regimes", "seeds", "n_main", "name", "output_dir", "logging")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a comparison."""

    run_id: str
    regime: str
    seed: int
    n_main: int


def run_config(cfg: ComparisonConfig) -> dict:
    """The part of the config that determines every run (what the run hash covers)."""
    dumped = cfg.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k not in PER_RUN_KEYS}


def make_run_id(cfg: ComparisonConfig, regime: str, seed: int, n_main: int) -> str:
    payload = {"config": run_config(cfg), "regime": regime, "seed": seed, "n_main": n_main}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def plan_runs(cfg: ComparisonConfig) -> list[RunSpec]:
    """Every run of the comparison, regimes outermost."""
    return [RunSpec(make_run_id(cfg, r, s, n), r, s, n)
            for r in cfg.regimes for s in cfg.seeds for n in cfg.n_main]


def read_results(out_dir: Path) -> pd.DataFrame:
    """The results table of an output folder (empty if none); a corrupt file is an error."""
    path = out_dir / RESULTS_FILE
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except Exception as err:
        raise ConfigError(f"cannot read existing results {path}: {err}; move it away to start "
                          "afresh (nothing was overwritten)") from err


def write_results(out_dir: Path, table: pd.DataFrame) -> None:
    """Atomic write: a killed process never leaves a half-written results file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".results.", suffix=".parquet")
    os.close(fd)
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / RESULTS_FILE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_task(cfg: ComparisonConfig, seed: int, n_main: int) -> TaskTensors:
    """The task's tensors for one seed with n_main main-task training samples."""
    dd = tasks.build_task(cfg.task.family, cfg.task_params(n_main), seed,
                          cache_dir=cfg.task.cache_dir)
    return TaskTensors.from_dataset_dict(dd)


def comparison_table(results: pd.DataFrame, metric: str = "test_loss_main") -> pd.DataFrame:
    """Mean over seeds of ``metric`` per n_main (rows) and regime (columns)."""
    if results.empty:
        return pd.DataFrame()
    table = results.pivot_table(index="n_main", columns="regime_label", values=metric,
                                aggfunc="mean")
    order = [REGIME_LABELS[r] for r in REGIME_LABELS if REGIME_LABELS[r] in table.columns]
    return table[order]


def preflight(cfg: ComparisonConfig, out_dir: Path) -> tuple[pd.DataFrame, PretrainStore]:
    """Everything that can fail before compute: existing results and checkpoints must load."""
    existing = read_results(out_dir)
    store = PretrainStore(out_dir / "checkpoints")
    store.check()
    return existing, store


def run_comparison(cfg: ComparisonConfig, output_dir: str | Path | None = None,
                   progress: bool | None = None) -> pd.DataFrame:
    """Train every pending run of the comparison; return the table of this comparison's runs."""
    quiet_lightning()
    out_dir = Path(output_dir) if output_dir is not None else cfg.resolved_output_dir()
    progress = cfg.logging.progress if progress is None else progress
    existing, store = preflight(cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_config(cfg))
    runs = plan_runs(cfg)
    done = set(existing["run_id"]) if not existing.empty else set()
    pending = [r for r in runs if r.run_id not in done]
    groups: dict[tuple[str, int], list[RunSpec]] = defaultdict(list)
    for r in pending:
        groups[(r.regime, r.seed)].append(r)
    ctx = GroupContext(cfg, out_dir, progress, group_loggers(cfg, out_dir), store)
    table = existing
    bar = tqdm(total=len(runs), initial=len(runs) - len(pending), desc=cfg.name, unit="run",
               disable=not progress, dynamic_ncols=True)
    task_cache: dict[int, TaskTensors] = {}
    for (regime, seed), specs in groups.items():
        if seed not in task_cache:
            task_cache[seed] = load_task(cfg, seed, max(cfg.n_main))
        members = [Member(s.run_id, seed, task_cache[seed].with_main_prefix(s.n_main),
                          cfg.training.lr, cfg.finetune.rescale, cfg.finetune.head_init_scale)
                   for s in specs]
        bar.set_postfix_str(f"{REGIME_LABELS[regime]} seed {seed}")
        t0 = time.perf_counter()
        results = REGIME_FUNCTIONS[regime](members, ctx)
        wall = time.perf_counter() - t0
        rows = []
        for spec, res in zip(specs, results):
            row = _row(cfg, spec, res.metrics, wall, len(specs))
            if res.network is not None:
                save_network(res.network, out_dir / "checkpoints" / f"run-{spec.run_id}.pt",
                             run_id=spec.run_id, regime=regime)
            log_run_to_wandb(cfg, out_dir, row, res.history)
            rows.append(row)
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
        write_results(out_dir, table)
        bar.update(len(specs))
    bar.close()
    ids = {r.run_id for r in runs}
    mine = table[table["run_id"].isin(ids)].reset_index(drop=True)
    plot_comparison(mine, out_dir / "comparison.png", title=cfg.name)
    return mine


def _row(cfg: ComparisonConfig, spec: RunSpec, metrics: dict, wall: float, size: int) -> dict:
    return {
        "run_id": spec.run_id,
        "comparison": cfg.name,
        "regime": spec.regime,
        "regime_label": REGIME_LABELS[spec.regime],
        "seed": spec.seed,
        "n_main": spec.n_main,
        "task_params": json.dumps(cfg.task_params(spec.n_main), sort_keys=True),
        **{f"config.{k}": v for k, v in flatten(run_config(cfg)).items()},
        **metrics,
        "wall_time": wall / size,
        "group_size": size,
        "device": "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
        else "cpu",
    }
