"""A group's fixed cost against its per-step cost, on the CPU or a GPU, in one run.

A batched group (one regime, one seed) pays a fixed cost — data, Lightning's set-up of a fit,
evaluation, checkpoints, the results row — and then a cost per GD step. The script trains the
same one-member ReLU group (d = 15, width 1000, n_main 64, n_aux 1024: the paper's shapes) through
``train_group`` with a budget of 1 step and of ``--steps`` steps (loss threshold 0: every step is
taken), several times each, and reports

* fixed cost = the 1-step group's time, split into its parts (task data, the fits including
  Lightning's set-up, evaluation and checkpoint/row writing, read off the rows' wall times);
* per-step cost = (t(steps) − t(1)) / (steps − 1), and the steps at which they are equal.

Run: python benchmarks/group_cost.py [--device cpu|cuda] [--steps 2000] [--regime stl|mtl|ptft]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from mtl_lab.config import validate_config
from mtl_lab.sweeps.execute import train_group
from mtl_lab.sweeps.plan import group_runs, runs_of
from mtl_lab.tracking import quiet_lightning


def config(steps: int, regime: str, device: str):
    return validate_config({
        "name": "group-cost", "regimes": [regime], "seeds": [0], "n_main": [64],
        "task": {"family": "relu_units",
                 "params": {"d": 15, "m_aux": 6, "m_main": 6, "correlation": 1.0,
                            "n_aux": 1024, "n_test": 10000}},
        "model": {"kind": "relu", "width": 1000, "init_scale": 1e-3},
        "training": {"lr": 0.05, "max_steps": steps, "loss_threshold": 0.0,
                     "steps_per_call": min(steps, 1000)},
        "logging": {"progress": False, "monitors": False, "csv": False},
        "trainer": {"accelerator": device}})


def timed_group(steps: int, regime: str, device: str, out: Path) -> tuple[float, dict]:
    group = group_runs(runs_of(config(steps, regime, device)))[0]
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    rows = train_group(group, out)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, rows[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--regime", default="stl", choices=["stl", "mtl", "ptft"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_lightning()
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.machine()
    print(f"device {name}, torch {torch.__version__}, regime {args.regime}")
    with tempfile.TemporaryDirectory() as tmp:
        timed_group(1, args.regime, args.device, Path(tmp) / "warm")  # imports, caches, clocks
        best: dict[int, tuple[float, dict]] = {}
        for i in range(args.repeats):
            for steps in (1, args.steps):  # a fresh folder: pretraining is not reused
                wall, row = timed_group(steps, args.regime, args.device,
                                        Path(tmp) / f"{steps}-{i}")
                if steps not in best or wall < best[steps][0]:
                    best[steps] = (wall, row)
    fixed, row1 = best[1]
    long, _ = best[args.steps]
    per_step = (long - fixed) / (args.steps - 1)
    fits = float(row1["train_wall_time"]) + float(row1.get("pretrain_train_wall_time") or 0.0)
    print(f"group with 1 step: {fixed * 1e3:.0f} ms — of which the fit(s) (Lightning set-up "
          f"included) {fits * 1e3:.0f} ms; data, evaluation, checkpoint and row "
          f"{(fixed - fits) * 1e3:.0f} ms")
    print(f"group with {args.steps} steps: {long:.2f} s → {per_step * 1e6:.0f} µs per step "
          f"({1 / per_step:,.0f} steps/s)")
    print(f"the fixed cost equals {fixed / per_step:,.0f} steps of training")


if __name__ == "__main__":
    main()
