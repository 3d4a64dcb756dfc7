"""The device check for a session that has a GPU: one short script, numbers to paste.

1. CUDA path: a small diagonal and a small ReLU sweep trained on the GPU give the CPU's results
   (same stopping step counts and test losses within rtol 1e-3; float32 on both).
2. The paper-scale diagonal sweep of ``sweep_figure.py`` (192 runs, budget 1e5), lab only, on
   the GPU, with ``--jobs`` worker processes sharing it; its wall time goes in
   benchmarks/README.md next to the CPU figures.

python benchmarks/gpu_check.py [--jobs 4] [--quick] [--device cpu]
  --quick: the quick sweep (48 runs, budget 1e4); --device cpu: rehearse the script on a CPU
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sweep_figure import sweep_spec  # noqa: E402

SMALL = {
    "diagonal": {"task": {"family": "sparse_linear",
                          "params": {"d": 60, "k_aux": 6, "k_main": 6, "overlap": 3,
                                     "n_aux": 128, "n_test": 500}},
                 "model": {"kind": "diagonal", "alpha": 0.01},
                 "training": {"lr": 0.05, "max_steps": 3000, "loss_threshold": 1e-6,
                              "steps_per_call": 500}},
    "relu": {"task": {"family": "relu_units",
                      "params": {"d": 5, "m_aux": 2, "m_main": 2, "correlation": 1.0,
                                 "n_aux": 64, "n_test": 200}},
             "model": {"kind": "relu", "width": 16, "init_scale": 0.5},
             "training": {"lr": 0.05, "max_steps": 1500, "loss_threshold": 1e-4,
                          "steps_per_call": 250}},
}


def _sweep(path: Path, base: dict, accelerator: str) -> Path:
    spec = {"name": f"check-{accelerator}",
            "base": {**base, "regimes": ["stl", "mtl", "ptft", "ptlp"], "seeds": [0],
                     "n_main": [8, 32], "trainer": {"accelerator": accelerator},
                     "logging": {"progress": False, "monitors": False}}}
    path.write_text(yaml.safe_dump(spec))
    return path


def cuda_path(device: str, tmp: Path) -> None:
    """Part 1: the same small sweeps on the CPU and on ``device``."""
    from mtl_lab.sweeps.run import run_sweep

    for kind, base in SMALL.items():
        tables = {}
        for acc in ("cpu", device):
            out = tmp / f"{kind}-{acc}"
            tables[acc] = run_sweep(_sweep(tmp / f"{kind}-{acc}.yaml", base, acc), out,
                                    progress=False)
        both = tables["cpu"].merge(tables[device], on="run_id", suffixes=("_cpu", "_dev"))
        rel = ((both["test_loss_main_dev"] - both["test_loss_main_cpu"]).abs()
               / both["test_loss_main_cpu"].abs()).max()
        same_steps = (both["steps_cpu"] == both["steps_dev"]).mean()
        verdict = "ok" if rel < 1e-3 and same_steps >= 0.75 else "CHECK"
        print(f"[{verdict}] {kind}: {len(both)} runs on {device} vs cpu: max relative test-loss "
              f"difference {rel:.2e}; same stopping step in {same_steps:.0%} of runs", flush=True)


def paper_sweep(quick: bool, jobs: int, device: str, tmp: Path) -> None:
    """Part 2: the lab's wall time for the paper-scale sweep on ``device``."""
    from mtl_lab.sweeps.run import run_sweep

    budget = 10_000 if quick else 100_000
    n_main = [16, 64, 256] if quick else [16, 32, 64, 128, 256, 512]
    spec = sweep_spec(budget, n_main, [0] if quick else [0, 1], 0.05)
    spec["base"]["trainer"] = {"accelerator": device}
    path = tmp / "paper.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    results = run_sweep(path, tmp / "paper", progress=True, jobs=jobs)
    wall = time.perf_counter() - t0
    walls = results.groupby("regime")["train_wall_time"].sum().round(1).to_dict()
    print(f"paper sweep ({'quick' if quick else 'paper scale'}) on {device}, {jobs} job(s): "
          f"{len(results)} runs in {wall / 60:.1f} min; status "
          f"{results['status'].value_counts().to_dict()}; training wall per regime (s) {walls}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; rehearse with --device cpu")
    name = (torch.cuda.get_device_name() if args.device == "cuda"
            else platform.processor() or platform.machine())
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    pd.set_option("display.width", 120)
    with tempfile.TemporaryDirectory() as tmp:
        cuda_path(args.device, Path(tmp))
        paper_sweep(args.quick, args.jobs, args.device, Path(tmp))


if __name__ == "__main__":
    main()
