"""From configs to runs to batched groups.

A run is one (config, regime, seed, n_main), keyed by a hash of everything that determines it.
Runs that share a regime, a seed and every setting that fixes the network's shapes and the
training recipe form one group, trained as one batched ensemble; what may differ between its
members is what the engine handles per member: the task's targets and parameters (not its input
dimension or sizes), n_main, and the per-member values declared in
:data:`mtl_lab.config.MEMBER_KNOBS` (the learning rate, the PT+FT rescale factor c and head
scale γ).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from mtl_lab.config import OMITTED_AT_DEFAULT, ComparisonConfig, drop_member_knobs
from mtl_lab.regime_specs import REGIME_SPECS

PER_RUN_KEYS = ("regimes", "seeds", "n_main", "name", "output_dir", "logging")
INPUT_PARAMS = ("d", "n_aux", "n_test")  # task parameters that fix the inputs' shapes


def run_config(cfg: ComparisonConfig) -> dict:
    """The part of the config that determines every run (what the run hash covers)."""
    dumped = cfg.model_dump(mode="json")
    for speed_only in ("threads", "cuda_graphs"):  # how fast, not what: results do not change
        dumped["trainer"].pop(speed_only)
    for dotted, default in OMITTED_AT_DEFAULT.items():  # keys added later: same run ids
        section, key = dotted.split(".", 1)
        if dumped[section][key] == default:
            dumped[section].pop(key)
    return {k: v for k, v in dumped.items() if k not in PER_RUN_KEYS}


def make_run_id(cfg: ComparisonConfig, regime: str, seed: int, n_main: int) -> str:
    """sha256 of the run's resolved config, regime, seed and n_main (16 hex digits)."""
    payload = {"config": run_config(cfg), "regime": regime, "seed": seed, "n_main": n_main}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One training run: its config and its place in the comparison."""

    run_id: str
    regime: str
    seed: int
    n_main: int
    cfg: ComparisonConfig = field(compare=False, repr=False)
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # sweep case names


def runs_of(cfg: ComparisonConfig) -> list[RunSpec]:
    """Every run of one comparison config, regimes outermost."""
    return [RunSpec(make_run_id(cfg, r, s, n), r, s, n, cfg)
            for r in cfg.regimes for s in cfg.seeds for n in cfg.n_main]


def group_key(run: RunSpec) -> str:
    """Runs with the same key train together as one batched ensemble.

    A deep trunk (``model.kind`` resnet, vit) has no batched ensemble: each of its runs is its
    own Lightning fit, and a group is only what one worker trains in a row. Runs of a pretrained
    regime (PT+FT, PT+LP) group by seed, over every n_main and c, so that they share one
    pretraining without waiting on each other; the others group per n_main as well, so that
    ``--jobs`` workers share them out evenly. Every task parameter counts (they choose the
    images)."""
    shared = run_config(run.cfg)
    task = shared.pop("task")
    if run.cfg.deep:
        shared["task"] = task
        if not REGIME_SPECS[run.regime].pretrained:
            shared["n_main"] = run.n_main
    else:
        shared["task"] = {"family": task["family"], "cache_dir": task["cache_dir"],
                          **{k: task["params"].get(k) for k in INPUT_PARAMS}}
    drop_member_knobs(shared)
    return json.dumps({"regime": run.regime, "seed": run.seed, **shared}, sort_keys=True)


def group_runs(runs: Iterable[RunSpec]) -> list[list[RunSpec]]:
    """Partition runs into batched groups, in first-seen order, duplicates dropped."""
    groups: dict[str, list[RunSpec]] = defaultdict(list)
    seen: set[str] = set()
    for run in runs:
        if run.run_id not in seen:
            seen.add(run.run_id)
            groups[group_key(run)].append(run)
    return list(groups.values())
