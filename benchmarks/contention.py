"""The quickstart on a busy machine: wall time idle and beside one and two CPU-bound processes.

It runs ``mtl-lab run configs/quickstart.yaml`` (a fresh output folder each time) with the lab's
default thread choice (``trainer.threads=auto``) and, for comparison in the same run, with as
many threads as the machine has cores (``trainer.threads=<cores>``: torch's default, what the lab
did before choosing threads itself). The busy processes are pure-Python loops that this script
starts before a timing and stops after it.

Verdict: auto beside one busy process must take ≤ 2× its idle time, and every run must give the
same results as the idle auto run (threads and load never change a number). Exits 1 otherwise.

Run: python benchmarks/contention.py [--config configs/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
TARGET = 2.0


@contextmanager
def busy(count: int):
    """``count`` CPU-bound processes for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    time.sleep(0.5 if procs else 0.0)  # let them reach the run queue
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def timed_run(config: Path, threads: str, out: Path) -> tuple[float, pd.DataFrame]:
    """Wall time of one ``mtl-lab run`` (process start included) and its results table."""
    command = [sys.executable, "-m", "mtl_lab.cli", "run", str(config),
               f"trainer.threads={threads}", "-o", str(out), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    seconds = time.perf_counter() - t0
    table = pd.read_parquet(out / "results.parquet").sort_values("run_id").reset_index(drop=True)
    return seconds, table


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cores} cores, "
          f"python {platform.python_version()}")
    times: dict[tuple[str, int], float] = {}
    reference = None
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        for n_busy in (0, 1, 2):
            for threads in ("auto", str(cores)):
                with busy(n_busy):
                    seconds, table = timed_run(Path(args.config), threads,
                                               Path(tmp) / f"{threads}-{n_busy}")
                times[(threads, n_busy)] = seconds
                if reference is None:
                    reference = table
                same = table["test_loss_main"].equals(reference["test_loss_main"])
                identical &= same
                print(f"  threads={threads:4s} busy processes={n_busy}: {seconds:6.1f} s"
                      f"{'' if same else '  RESULTS DIFFER from the idle auto run'}", flush=True)
    idle = times[("auto", 0)]
    print("\nratio to the idle auto run:")
    for (threads, n_busy), seconds in times.items():
        print(f"  threads={threads:4s} busy={n_busy}: {seconds / idle:5.2f}×")
    ratio = times[("auto", 1)] / idle
    ok = ratio <= TARGET and identical
    print(f"\nverdict: auto beside one busy process = {ratio:.2f}× idle (target ≤ {TARGET}×); "
          f"results identical across all runs: {identical} -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
