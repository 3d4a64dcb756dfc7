"""Real signals to real processes: SIGTERM keeps what finished and exits 143; workers of a
``--jobs`` sweep never outlive their parent, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import tiny_raw

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir() or sys.platform != "linux",
                                reason="reads the process tree from /proc")

# Groups that take a few seconds each: no loss threshold is reached before max_steps.
SLOW = {"training.max_steps": 40_000, "training.loss_threshold": 0.0,
        "training.steps_per_call": 500, "logging.csv": False, "logging.monitors": False}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen([sys.executable, "-m", "mtl_lab.cli", *args, "--no-progress"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sigterm_to_run_keeps_finished_groups_and_exits_143(tmp_path):
    raw = tiny_raw(regimes=["stl", "mtl"], seeds=[0, 1, 2], n_main=[8], **SLOW)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    proc = start(["run", "c.yaml", "-o", str(out)], tmp_path)
    try:
        wait_for(lambda: (out / "results.parquet").exists() or proc.poll() is not None, 120,
                 "the first finished group")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    saved = pd.read_parquet(out / "results.parquet")
    assert 1 <= len(saved) < 6
    assert "interrupted by SIGTERM" in stderr
    assert f"{len(saved)} of 6 runs are saved" in stderr
    assert "cut short:" in stderr and "Traceback" not in stderr


def _sweep(tmp_path: Path) -> Path:
    base = tiny_raw(regimes=["stl", "mtl"], n_main=[8], **SLOW)
    spec = {"name": "sig", "base": base, "axes": {"seeds": [[0], [1], [2], [3]]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "s.yaml"


def _training_workers(proc: subprocess.Popen) -> set[int]:
    """Wait until the sweep has two worker processes, then give them time to start a group."""
    workers: set[int] = set()

    def two_workers() -> bool:
        workers.clear()
        workers.update(p for p in descendants(proc.pid)
                       if "spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(
                           errors="replace"))
        return len(workers) >= 2 or proc.poll() is not None

    wait_for(two_workers, 120, "two worker processes")
    assert proc.poll() is None, proc.communicate()[1]
    time.sleep(6)  # torch imported, a group training
    return descendants(proc.pid)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sweep_workers_end_with_their_parent(tmp_path, how):
    proc = start(["sweep", str(_sweep(tmp_path)), "--jobs", "2", "-o", str(tmp_path / "out")],
                 tmp_path)
    family: set[int] = set()
    try:
        family = _training_workers(proc)
        assert family, "the sweep started no processes"
        proc.send_signal(how)
        _, stderr = proc.communicate(timeout=60)
        wait_for(lambda: not any(alive(p) for p in family), 15,
                 f"processes {sorted(p for p in family if alive(p))} to end")
    finally:
        proc.kill()
        for pid in family | descendants(proc.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    if how == signal.SIGTERM:
        assert proc.returncode == 143, stderr
        assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
        assert "leaked" not in stderr  # no semaphore left to the resource tracker
    else:
        assert proc.returncode == -signal.SIGKILL
