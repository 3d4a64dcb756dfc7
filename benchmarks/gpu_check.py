"""The device check: does the GPU give the CPU's results, and how long do the paper sweeps take?

1. Reproduction, per family (diagonal, ReLU): the same small sweep (STL, MTL, PT+FT, PT+LP;
   n_main 8 and 32; one seed) trains on the CPU and on the device. Run ids hash
   ``trainer.accelerator``, so the two tables are matched by configuration
   (:func:`mtl_lab.reproduce.compare_results`) and compared: test losses within rtol 1e-3,
   stopping steps within max(2, 1 %), statuses equal, every run matched. A verdict per family.
2. Wall time on the device of both paper sweeps: the diagonal shared-vs-disjoint sweep of
   ``sweep_figure.sweep_spec`` at paper scale (192 runs, budget 1e5), and the ReLU
   shared-features sweep of ``sweep_figure.relu_sweep_spec`` narrowed to correlations 1, 0.9, 0,
   n_main 16, 64, 256, 512, 2 seeds, budget 2e4 (72 runs; d 15, width 1000, m_aux 6, n_aux 1024,
   lr 0.5 / 0.1 for pretraining, as there).

Exit status 1 when a verdict fails; an error in a sweep also ends it non-zero. A paper sweep
stopped at its deadline is reported with the runs it finished and its time as a lower bound.

Sizing. An engine step dispatches about 83 PyTorch ops for either network at these shapes
(counted on the CPU, sub-ensembles and chunk bookkeeping included). On a GPU these ensembles are
launch-bound (the ReLU group, 12 members × 1 536 samples × width 1000, is ~2 GFLOP a step,
~40 µs of H100 time), so at 5–6 µs a launch a step costs ~0.5 ms whatever the ensemble size, and
a seed's whole group trains as one ensemble (half the free device memory). A sweep's engine steps
are then the sum over its fits of the longest member's steps. Diagonal: 2 seeds × (4 regimes + 1
pretraining) × ≤ 1e5 = 1e6 steps, ~8 min in one process, hence ``--jobs 4`` workers sharing the
GPU from 16 host cores: ~2–4 min if it interleaves them 2–4×. ReLU: 2 seeds × (STL, MTL,
pretraining, PT+FT) × 2e4 = 1.6e5 steps, ~80 s in one process. With ~1 min for part 1, 4–6 min in
all. Estimates: ``--limit-s`` (default 540) bounds the whole script; each paper sweep stops at its
deadline (60 % of the time left for the diagonal one, the rest for the ReLU one), keeping its
finished groups, so the script ends inside a 10-minute command even if they are wrong.

``--sweep FILE`` (repeatable) replaces part 2's two sweeps with sweep files (the experiment
library's, say), each run on the device as written except for ``--seeds N`` (keep the first N
seeds, to fit a device budget), no progress bars or monitors; the time left is shared equally
among the files still to run. ``--out DIR`` keeps each sweep's ``results.parquet`` (as
``<name>.parquet``) and ``config.yaml`` there.

``--device cpu`` rehearses it all on a CPU (~2 min on 2 cores): part 1 compares
``trainer.accelerator: cpu`` with ``auto`` (the CPU here, under other run ids), part 2 runs the
quick sweeps (diagonal: budget 1e4, n_main 16, 64, 256, one seed, 48 runs; ReLU:
``relu_sweep_spec(quick=True)``, 18 runs).

python benchmarks/gpu_check.py [--device cuda|cpu] [--jobs N] [--quick] [--limit-s S]
                               [--sweep FILE ... [--seeds N]] [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from mtl_lab.interrupts import Interrupted
from mtl_lab.reproduce import compare_results
from mtl_lab.results import read_results, uniform_columns

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sweep_figure import relu_sweep_spec, sweep_spec  # noqa: E402

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
RELU_BUDGET = 20_000
RELU_CORRELATIONS = [1.0, 0.9, 0.0]
RELU_N_MAIN = [16, 64, 256, 512]
RELU_SEEDS = [0, 1]


def clock(device: str) -> float:
    """perf_counter after the device has finished the work queued so far."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def warm_up(device: str) -> None:
    """Create the CUDA context and the cuBLAS handle before anything is timed."""
    if device == "cuda":
        a = torch.randn(2048, 2048, device="cuda")
        for _ in range(10):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()


def small_spec(base: dict, accelerator: str) -> dict:
    return {"name": f"check-{accelerator}",
            "base": {**base, "regimes": ["stl", "mtl", "ptft", "ptlp"], "seeds": [0],
                     "n_main": [8, 32], "trainer": {"accelerator": accelerator},
                     "logging": {"progress": False, "monitors": False}}}


def reproduction(device: str, tmp: Path) -> dict[str, bool]:
    """Part 1: the small sweeps on the CPU and on ``device``, matched and compared."""
    from mtl_lab.sweeps.run import run_sweep

    # on a CPU rehearsal the other side is `auto` (the CPU here): other run ids, same compute
    other = device if device == "cuda" else ("auto" if not torch.cuda.is_available() else "cpu")
    passed = {}
    for kind, base in SMALL.items():
        tables, walls = {}, {}
        for acc in ("cpu", other):
            path = tmp / f"{kind}-{acc}.yaml"
            path.write_text(yaml.safe_dump(small_spec(base, acc)))
            t0 = clock(device)
            tables[acc] = run_sweep(path, tmp / f"{kind}-{acc}", progress=False)
            walls[acc] = clock(device) - t0
        result = compare_results(tables["cpu"], tables[other], names=("cpu", other))
        passed[kind] = result.passed
        times = ", ".join(f"{acc} {wall:.1f} s" for acc, wall in walls.items())
        print(f"[{result.verdict}] {kind} ({len(tables['cpu'])} runs; {times})\n{result}",
              flush=True)
    return passed


def diagonal_spec(quick: bool, device: str) -> dict:
    if quick:
        spec = sweep_spec(10_000, [16, 64, 256], [0], 0.1, 0.5)
    else:
        spec = sweep_spec(100_000, [16, 32, 64, 128, 256, 512], [0, 1], 0.1, 0.5)
    spec["base"]["trainer"] = {"accelerator": device}
    return spec


def relu_spec(quick: bool, device: str) -> dict:
    """The shared-features ReLU sweep, narrowed (above) unless quick."""
    spec = relu_sweep_spec(quick, device)
    if not quick:
        base = spec["base"]
        spec["name"] = "paper-relu-check"
        spec["axes"] = {"task.params.correlation": RELU_CORRELATIONS}
        base["n_main"], base["seeds"] = RELU_N_MAIN, RELU_SEEDS
        for recipe in ("training", "pretraining"):
            base[recipe]["max_steps"] = RELU_BUDGET
    return spec


def file_spec(path: Path, device: str, seeds: int | None) -> dict:
    """A sweep file as run by part 2: on ``device``, quiet, optionally fewer seeds."""
    spec = yaml.safe_load(Path(path).read_text())
    base = spec["base"]
    base["trainer"] = {**base.get("trainer", {}), "accelerator": device}
    base["logging"] = {**base.get("logging", {}), "progress": False, "monitors": False}
    if seeds is not None:
        if seeds < 1:
            raise SystemExit(f"--seeds must be >= 1, got {seeds}")
        base["seeds"] = list(base["seeds"])[:seeds]
        spec["name"] = f"{spec['name']}-{seeds}seeds"
    return spec


class _Deadline:
    """Raise Interrupted(SIGALRM) in the main thread after ``seconds`` (the executor then stops
    its workers and keeps every finished group)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> _Deadline:
        self.previous = signal.signal(signal.SIGALRM, self._raise)
        signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1.0))
        return self

    def __exit__(self, *exc) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise Interrupted(signum)


def paper_sweep(label: str, spec: dict, jobs: int, device: str, tmp: Path, deadline: float,
                progress: bool, out: Path | None = None) -> float:
    """Part 2: one paper sweep's wall time on ``device``; returns the seconds it took."""
    from mtl_lab.sweeps.run import plan_sweep, run_sweep

    path = tmp / f"{label}.yaml"
    path.write_text(yaml.safe_dump(spec))
    total = len(plan_sweep(path).runs)
    cut = None
    t0 = clock(device)
    try:
        with _Deadline(deadline):
            results = run_sweep(path, tmp / label, progress=progress, jobs=jobs)
    except Interrupted as stop:
        cut = stop
        results = read_results(tmp / label)
    wall = clock(device) - t0
    runs = len(results)
    if out is not None and runs:
        out.mkdir(parents=True, exist_ok=True)
        uniform_columns(results).to_parquet(out / f"{label}.parquet")
        (out / f"{label}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if not runs:
        print(f"{label}: no run finished in {wall:.0f} s (deadline {deadline:.0f} s)", flush=True)
        return wall
    pretrain = results["pretrain_steps"].fillna(0).sum() if "pretrain_steps" in results else 0
    steps = int(results["steps"].sum() + pretrain)
    walls = results.groupby("regime")["train_wall_time"].sum().round(0).astype(int).to_dict()
    head = (f"{label}: CUT at its {deadline:.0f} s deadline (a lower bound): {runs} of {total} "
            f"runs finished in {wall:.0f} s" if cut else
            f"{label}: {runs} runs in {wall / 60:.1f} min ({wall:.0f} s)")
    print(f"{head} on {device} with {jobs} job(s); status "
          f"{results['status'].value_counts().to_dict()}; {steps:,} member-steps (pretraining "
          f"counted per run that uses it) = {steps / wall:,.0f}/s; training wall per regime (s, "
          f"summed over groups) {walls}", flush=True)
    return wall


def main() -> int:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes for the paper sweeps (default: 4 cuda, 2 cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="the quick paper sweeps (always on with --device cpu)")
    parser.add_argument("--limit-s", type=float, default=540.0,
                        help="the whole script's time limit (paper sweeps stop at deadlines)")
    parser.add_argument("--progress", action="store_true", help="progress bars for part 2")
    parser.add_argument("--sweep", action="append", type=Path, default=[],
                        help="a sweep file for part 2 instead of the built-in sweeps (repeatable)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="with --sweep: keep only the first N seeds of each file")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep each part-2 sweep's results here (<name>.parquet)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; rehearse with --device cpu")
    quick = args.quick or args.device == "cpu"
    for path in args.sweep:
        if not path.is_file():
            raise SystemExit(f"--sweep {path}: no such file")
    if args.seeds is not None and not args.sweep:
        raise SystemExit("--seeds applies to --sweep files only")
    jobs = args.jobs or (4 if args.device == "cuda" else 2)
    name = (torch.cuda.get_device_name() if args.device == "cuda"
            else platform.processor() or platform.machine())
    print(f"device: {args.device} ({name}); torch {torch.__version__}; paper sweeps "
          f"{'quick' if quick else 'paper scale'}, {jobs} job(s); limit {args.limit_s:.0f} s",
          flush=True)
    pd.set_option("display.width", 120)
    warm_up(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = clock(args.device)
        passed = reproduction(args.device, Path(tmp))
        print(f"part 1: {clock(args.device) - t0:.0f} s", flush=True)
        if args.sweep:
            sweeps = [(path.name.removesuffix(".yaml"), file_spec(path, args.device, args.seeds))
                      for path in args.sweep]
            shares = [1 / (len(sweeps) - i) for i in range(len(sweeps))]
        else:
            sweeps = [("paper-diagonal", diagonal_spec(quick, args.device)),
                      ("paper-relu", relu_spec(quick, args.device))]
            shares = [0.6, 1.0]
        for (label, spec), share in zip(sweeps, shares, strict=True):
            left = args.limit_s - (time.perf_counter() - start)
            paper_sweep(label, spec, jobs, args.device, Path(tmp), share * left, args.progress,
                        args.out)
    verdicts = ", ".join(f"{kind} {'PASS' if ok else 'FAIL'}" for kind, ok in passed.items())
    ok = all(passed.values())
    print(f"verdicts: {verdicts}; total {(time.perf_counter() - start) / 60:.1f} min; "
          f"exit {0 if ok else 1}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
