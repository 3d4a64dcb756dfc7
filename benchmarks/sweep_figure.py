"""Paper-scale sweeps: the lab's wall time, and for the diagonal one the estimate for
one-process-per-run plain PyTorch loops, measured in one run.

``--family diagonal`` (default), Lippl & Lindsey's shared-vs-disjoint figure:
Sweep: d = 1000, k_aux = k_main = 40, n_aux = 1024, overlap ∈ {0, 20, 30, 40},
n_main ∈ {16, …, 512}, regimes STL / MTL / PT+FT / PT+LP, 2 seeds, α = γ = 1e-3, budget 1e5
steps, threshold 1e-10, the paper's learning rates (0.5 pretraining, 0.1 finetuning; the
pretraining budget can be raised to the paper's 1e6 with --pretrain-steps). The plain estimate
times a sample of the same runs, each in a fresh
process (benchmarks/plain_run.py), and scales it to the sweep's run count per regime.
Targets: the lab ≥ 10× faster than the estimate, and the full sweep under 30 minutes on 2 cores.

``--family relu``, the shared-features ReLU figure (SCIENCE.md §3): d = 15, one hidden layer of
1000 units, init scale 1e-3 (rich), m_aux = m_main = 6 teacher units, six correlation patterns
(all 1, all 0.9, all 0, and three halves: 1|0, 0.9|0, 1|0.9), n_main ∈ {16, …, 512},
n_aux = 1024, STL / MTL / PT+FT, 6 seeds, budget 1e5 full-batch steps, threshold 1e-8, lr 0.5
(finetuning) and 0.1 (pretraining): ~2e7 member-steps, a GPU job (target there: < 10 minutes).
``--quick`` is its CPU version: width 500, patterns all 1 and all 0, n_main ∈ {16, 64, 256},
n_aux 256, 1 seed, budget 5 000. No plain baseline is timed for this family.

python benchmarks/sweep_figure.py [--family diagonal|relu] [--quick] [--device cpu|cuda]
                                  [--jobs N | --executor ray]
  --quick: diagonal: budget 1e4, n_main ∈ {16, 64, 256}, 1 seed (a few minutes); relu: above
  --jobs N: the local executor with N worker processes (default 1: in-process)
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REGIMES = ["stl", "mtl", "ptft", "ptlp"]


def sweep_spec(budget: int, n_main: list[int], seeds: list[int], lr: float,
               pt_lr: float | None = None, pt_budget: int | None = None) -> dict:
    """The diagonal sweep; pretraining at ``pt_lr`` for ``pt_budget`` steps (default: as
    finetuning)."""
    pretraining = {"lr": pt_lr or lr, "max_steps": pt_budget or budget}
    return {
        "name": "paper-diagonal",
        "base": {
            "regimes": REGIMES, "seeds": seeds, "n_main": n_main,
            "task": {"family": "sparse_linear",
                     "params": {"d": 1000, "k_aux": 40, "k_main": 40, "overlap": 0,
                                "n_aux": 1024, "n_test": 10000}},
            "model": {"kind": "diagonal", "alpha": 1e-3},
            "training": {"lr": lr, "max_steps": budget, "loss_threshold": 1e-10,
                         "steps_per_call": 2000},
            "pretraining": pretraining,
            "finetune": {"head_init_scale": 1e-3},
            "logging": {"progress": False, "monitors": False},
        },
        "axes": {"task.params.overlap": [0, 20, 30, 40]},
    }


RELU_REGIMES = ["stl", "mtl", "ptft"]
RELU_PATTERNS = {"all 1": 1.0, "all 0.9": 0.9, "all 0": 0.0,
                 "1|0": [1.0] * 3 + [0.0] * 3, "0.9|0": [0.9] * 3 + [0.0] * 3,
                 "1|0.9": [1.0] * 3 + [0.9] * 3}


def relu_sweep_spec(quick: bool, device: str = "cpu") -> dict:
    """The shared-features ReLU sweep (paper scale, or the quick CPU version)."""
    patterns = ["all 1", "all 0"] if quick else list(RELU_PATTERNS)
    budget = 5_000 if quick else 100_000
    return {
        "name": "paper-relu" + ("-quick" if quick else ""),
        "base": {
            "regimes": RELU_REGIMES, "seeds": [0] if quick else list(range(6)),
            "n_main": [16, 64, 256] if quick else [16, 32, 64, 128, 256, 512],
            "task": {"family": "relu_units",
                     "params": {"d": 15, "m_aux": 6, "m_main": 6, "correlation": 1.0,
                                "n_aux": 256 if quick else 1024, "n_test": 10000}},
            "model": {"kind": "relu", "width": 500 if quick else 1000, "init_scale": 1e-3},
            "training": {"lr": 0.5, "max_steps": budget, "loss_threshold": 1e-8,
                         "steps_per_call": 500 if quick else 2000},
            "pretraining": {"lr": 0.1, "max_steps": budget, "loss_threshold": 1e-8,
                            "steps_per_call": 500 if quick else 2000},
            "finetune": {"head_init_scale": 1e-3},
            "logging": {"progress": False, "monitors": False},
            "trainer": {"accelerator": device},
        },
        "axes": {"task.params.correlation": [RELU_PATTERNS[p] for p in patterns]},
    }


def relu_main(args) -> None:
    """The ReLU sweep's wall time and throughput (member-steps per second)."""
    from mtl_lab.sweeps.run import plan_sweep, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(relu_sweep_spec(args.quick, args.device)))
        plan = plan_sweep(path)
        print(f"machine: {platform.machine()}, device {args.device}; {plan.describe()}",
              flush=True)
        t0 = time.perf_counter()
        results = run_sweep(path, Path(tmp) / "out", executor=args.executor, progress=True,
                            jobs=args.jobs)
        lab = time.perf_counter() - t0
    steps = int(results["steps"].sum() + results.get("pretrain_steps", 0).fillna(0).sum())
    print(f"\nlab: {len(results)} runs in {lab / 60:.1f} min ({lab:.0f} s); status: "
          f"{results['status'].value_counts().to_dict()}; {steps:,} member-steps "
          f"(pretraining counted per run that uses it) = {steps / lab:,.0f} member-steps/s")
    walls = results.groupby("regime")["train_wall_time"].sum()
    print("lab training wall time per regime (s, summed over groups): "
          + ", ".join(f"{r} {walls.get(r, 0):.0f}" for r in RELU_REGIMES))


def plain_seconds(regime: str, overlap: int, n_main: int, seed: int, budget: int,
                  lr: float, pt_lr: float, pt_budget: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "plain_run.py"), regime, str(overlap),
                    str(n_main), str(seed), str(budget), "1e-10", str(lr), str(pt_lr),
                    str(pt_budget)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.1, help="finetuning lr (paper: 0.1)")
    parser.add_argument("--pretrain-lr", type=float, default=0.5, help="paper: 0.5")
    parser.add_argument("--pretrain-steps", type=float, default=None,
                        help="pretraining budget (default: the finetuning budget; paper: 1e6)")
    parser.add_argument("--family", default="diagonal", choices=["diagonal", "relu"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.family == "relu":
        relu_main(args)
        return
    budget = 10_000 if args.quick else 100_000
    n_main = [16, 64, 256] if args.quick else [16, 32, 64, 128, 256, 512]
    seeds = [0] if args.quick else [0, 1]
    from mtl_lab.sweeps.run import plan_sweep, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        pt_budget = int(args.pretrain_steps or budget)
        path.write_text(yaml.safe_dump(sweep_spec(budget, n_main, seeds, args.lr,
                                                  args.pretrain_lr, pt_budget)))
        plan = plan_sweep(path)
        print(f"machine: {platform.machine()}; {plan.describe()}", flush=True)
        t0 = time.perf_counter()
        results = run_sweep(path, Path(tmp) / "out", executor=args.executor, progress=True,
                            jobs=args.jobs)
        lab = time.perf_counter() - t0
        per_regime = results.groupby("regime").size().to_dict()
        # the plain baseline on a sample of the same runs: per regime, the two corners
        corners = [(0, min(n_main)), (40, max(n_main))]
        sample = {r: sum(plain_seconds(r, o, n, 0, budget, args.lr, args.pretrain_lr,
                                       pt_budget) for o, n in corners) / 2
                  for r in REGIMES}
    estimate = sum(sample[r] * per_regime.get(r, 0) for r in REGIMES)
    how = "ray" if args.executor == "ray" else f"local, {args.jobs} job(s)"
    print(f"\nlab ({how}): {len(results)} runs in {lab / 60:.1f} min; status: "
          f"{results['status'].value_counts().to_dict()}")
    walls = results.groupby("regime")["train_wall_time"].sum()
    print("lab training wall time per regime (s, summed over groups): "
          + ", ".join(f"{r} {walls.get(r, 0):.0f}" for r in REGIMES))
    print("plain one-process-per-run sample (s/run): "
          + ", ".join(f"{r} {s:.1f}" for r, s in sample.items()))
    print(f"plain estimate: {estimate / 60:.1f} min → the lab is {estimate / lab:.1f}× faster "
          "(target ≥ 10×); lab under 30 min: " + ("yes" if lab < 1800 else "no"))


if __name__ == "__main__":
    main()
