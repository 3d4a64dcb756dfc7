"""``mtl-lab sweep``: plan a sweep file, print the plan, train it with an executor."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import yaml

from mtl_lab.config import ConfigError
from mtl_lab.regime_specs import REGIME_SPECS
from mtl_lab.results import CONFIG_FILE, SWEEP_FILE, read_results
from mtl_lab.sweeps.execute import check_executor, execute, preflight
from mtl_lab.sweeps.plan import RunSpec, group_runs, runs_of
from mtl_lab.sweeps.spec import SweepPoint, SweepSpec, load_sweep

LOGGING_FILE = "logging.yaml"  # the sweep's logging settings, read back by `mtl-lab report`


@dataclass
class SweepPlan:
    """What a sweep will train: its points, runs (deduplicated) and batched groups."""

    spec: SweepSpec
    points: list[SweepPoint]
    runs: list[RunSpec]
    groups: list[list[RunSpec]]

    @property
    def max_member_steps(self) -> int:
        """Upper bound on gradient steps over all runs (restarts and pretraining excluded)."""
        return sum(r.cfg.training.max_steps for r in self.runs)

    def cost_lines(self) -> list[str]:
        """The cost bound in the units each kind of run trains in: full-batch steps for the
        batched engine, epochs of minibatches for deep (Lightning) fits."""
        engine = [r for r in self.runs if not r.cfg.deep]
        deep = [r for r in self.runs if r.cfg.deep]
        lines = []
        if engine:
            steps = sum(r.cfg.training.max_steps for r in engine)
            lines.append(f"cost bound: ≤ {steps:,} member gradient steps (full-batch budget × "
                         "runs, before early stopping)")
        if deep:
            epochs = sum(r.cfg.training.epochs for r in deep)
            seeds = len({(r.seed, r.cfg.task.model_dump_json(), r.cfg.model.model_dump_json(),
                          r.cfg.pretraining_or_training.model_dump_json()) for r in deep
                         if REGIME_SPECS[r.regime].pretrained})  # what a pretraining depends on
            lines.append(f"cost: {len(deep)} deep fits, {epochs:,} epochs of minibatches in all "
                         f"(each fit also capped at training.max_steps), plus {seeds} "
                         "pretraining fit(s) shared by the PT+FT/PT+LP runs")
        return lines

    def describe(self, done: set[str] | frozenset = frozenset()) -> str:
        """A human-readable plan: counts, groups and the cost bound."""
        todo = [g for g in self.groups if any(r.run_id not in done for r in g)]
        finished = len(set(done) & {r.run_id for r in self.runs})
        lines = [f"sweep {self.spec.name!r}: {len(self.points)} point(s), {len(self.runs)} "
                 f"run(s) in {len(self.groups)} batched group(s); {finished} already finished",
                 *self.cost_lines()]
        for g in todo[:20]:
            first = g[0]
            label = REGIME_SPECS[first.regime].label
            lines.append(f"  - {label:9s} seed {first.seed}: {len(g)} runs "
                         f"(n_main {sorted({r.n_main for r in g})})")
        if len(todo) > 20:
            lines.append(f"  … and {len(todo) - 20} more groups")
        return "\n".join(lines)


def plan_sweep(path: str | Path) -> SweepPlan:
    """Validate and expand a sweep file into runs and groups (no compute)."""
    spec, points = load_sweep(path)
    order: list[str] = []
    found: dict[str, RunSpec] = {}
    names: dict[str, dict[str, set[str]]] = {}  # run → override axis → case names
    for point in points:
        for run in runs_of(point.cfg):
            if run.run_id not in found:
                order.append(run.run_id)
                found[run.run_id] = run
            for axis, name in point.labels.items():
                names.setdefault(run.run_id, {}).setdefault(axis, set()).add(name)
    runs = [replace(found[r], labels=tuple(sorted(
        (axis, "|".join(sorted(cases))) for axis, cases in names.get(r, {}).items())))
            for r in order]
    return SweepPlan(spec, points, runs, group_runs(runs))


def sweep_dir(plan: SweepPlan, output: str | Path | None = None) -> Path:
    return Path(output or plan.spec.output_dir or f"runs/{plan.spec.name}")


def run_sweep(path: str | Path, output: str | Path | None = None, executor: str = "local",
              address: str | None = None, progress: bool = True, jobs: int = 1
              ) -> pd.DataFrame:
    """Train every pending run of a sweep file; return the sweep's results table.

    ``jobs`` > 1 trains that many groups at once in local worker processes (executor local).
    """
    check_executor(executor, jobs)
    plan = plan_sweep(path)
    out = sweep_dir(plan, output)
    spec_text = yaml.safe_dump(plan.spec.model_dump(mode="json"), sort_keys=False)
    claim_sweep_folder(out, spec_text)
    preflight(out)  # an unreadable results file or checkpoint stops us before anything is written
    out.mkdir(parents=True, exist_ok=True)
    logging = plan.points[0].cfg.logging.model_dump(mode="json") if plan.points else {}
    (out / LOGGING_FILE).write_text(yaml.safe_dump(logging, sort_keys=False))
    (out / SWEEP_FILE).write_text(spec_text)
    return execute(plan.runs, out, executor, address, progress, description=plan.spec.name,
                   jobs=jobs)


def claim_sweep_folder(out: Path, spec_text: str) -> None:
    """A sweep folder may take a sweep's runs; a comparison folder may not (it holds one
    configuration). A sweep file that differs from the folder's ``sweep.yaml`` (more axis
    values, say) adds its runs beside the earlier ones — every table groups by each config value
    that varies, so nothing is averaged across settings — and the earlier file is kept as
    ``sweep.<k>.yaml``."""
    if (out / CONFIG_FILE).is_file() and not (out / SWEEP_FILE).is_file():
        raise ConfigError(f"{out} holds a comparison ({CONFIG_FILE}), not a sweep; write the "
                          "sweep to another folder with -o/--output")
    old = out / SWEEP_FILE
    if old.is_file() and old.read_text() != spec_text:
        k = 1
        while (out / f"sweep.{k}.yaml").exists():
            k += 1
        old.rename(out / f"sweep.{k}.yaml")


def folder_logging(folder: str | Path) -> dict:
    """The logging settings a sweep folder (``logging.yaml``) or a comparison folder (the
    ``logging`` section of ``config.yaml``) was trained with; {} when neither file exists."""
    folder = Path(folder)
    if (folder / LOGGING_FILE).is_file():
        return yaml.safe_load((folder / LOGGING_FILE).read_text()) or {}
    if (folder / CONFIG_FILE).is_file():
        return (yaml.safe_load((folder / CONFIG_FILE).read_text()) or {}).get("logging") or {}
    return {}


def results_table(folder: str | Path) -> pd.DataFrame:
    """The results store of a sweep or comparison folder (one row per run)."""
    return read_results(Path(folder))


def results_dataset(folder: str | Path):
    """The results store as a Hugging Face ``datasets.Dataset``."""
    import datasets

    return datasets.Dataset.from_pandas(results_table(folder), preserve_index=False)
