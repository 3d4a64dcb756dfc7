"""Cost of the training-time analyzers (issue 3 target: < 10 % of training time at the default
frequency), measured in one run: the same full-batch training with monitors off, at the default
frequency (every 10 Lightning steps) and at every Lightning step (the worst case).

Run: python benchmarks/monitors.py
"""

from __future__ import annotations

import platform
import time

import torch

from mtl_lab.analysis.callbacks import monitors_for
from mtl_lab.config import validate_config
from mtl_lab.data import make_term
from mtl_lab.engine.memory import keep_freed_memory
from mtl_lab.models import ReLUNetwork
from mtl_lab.regimes.base import GroupContext, fit
from mtl_lab.tracking import quiet_lightning


def train_seconds(monitors: bool, every: int, width: int, steps: int, k: int) -> float:
    """Seconds of one training run (Lightning fit included)."""
    cfg = validate_config({
        "regimes": ["mtl"], "seeds": [0], "n_main": [1],
        "task": {"family": "sparse_linear",
                 "params": {"d": 2, "k_aux": 1, "k_main": 1, "overlap": 0, "n_aux": 1}},
        "training": {"lr": 1e-3, "max_steps": steps, "loss_threshold": 0.0,
                     "steps_per_call": 500, "max_ensemble_mb": 1e9},
        "logging": {"csv": True, "progress": False, "monitors": monitors,
                    "monitor_every": every},
        "trainer": {"accelerator": "cpu"}})
    ctx = GroupContext(cfg, progress=False, monitors=monitors_for(cfg.logging))
    x = torch.randn(512, 15)
    y = torch.relu(x[:, :3]).sum(1)
    coef = torch.full((k,), 1 / 512)
    terms = [make_term("aux", [x] * k, [y] * k, coef), make_term("main", [x] * k, [-y] * k, coef)]

    def run() -> None:
        net = ReLUNetwork(15, width, 1, ("aux", "main"), list(range(k)))
        fit(net, terms, ["trunk", "heads"], torch.full((k,), 1e-3), cfg.training, ctx, "m")

    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def main() -> None:
    quiet_lightning()
    keep_freed_memory()
    print(f"machine: {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    variants = {"off": (False, 10), "default": (True, 10), "every step": (True, 1)}
    for width, k in ((1000, 1), (64, 8)):
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(3):  # interleaved repeats: machine noise hits every variant alike
            for name, (on, every) in variants.items():
                best[name] = min(best[name], train_seconds(on, every, width, 6000, k))
        base = best["off"]
        print(f"ReLU width {width}, K={k}, 6000 steps (500 per Lightning step): "
              f"off {base:.2f} s; default (every 10) {100 * (best['default'] / base - 1):+.1f} %;"
              f" every Lightning step {100 * (best['every step'] / base - 1):+.1f} %"
              "  (target < 10 %)")


if __name__ == "__main__":
    main()
