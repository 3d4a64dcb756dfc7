"""Thread choice: small steps and busy machines get one thread; the count never changes results."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtl_lab.comparison import run_comparison
from mtl_lab.config import ConfigError, validate_config
from mtl_lab.engine import threads
from tests.conftest import tiny_raw

BIG_WORK = 1e12  # a step so large that only the cap and the free cores limit the threads


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11])  # utime, in clock ticks


@pytest.fixture
def one_busy_process():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    end = time.monotonic() + 10
    while time.monotonic() < end:  # until it is past start-up and spinning
        time.sleep(0.1)
        if Path(f"/proc/{proc.pid}").is_dir() and _cpu_ticks(proc.pid) > 20:
            break
    yield proc
    proc.kill()
    proc.wait()


def test_small_steps_use_one_thread():
    assert threads.auto_threads(threads.MIN_FLOPS_PER_THREAD * 0.9) == 1


def test_threads_never_exceed_the_process_share(monkeypatch):
    threads.set_process_cap(1)
    try:
        assert threads.auto_threads(BIG_WORK) == 1
    finally:
        threads.set_process_cap(None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.auto_threads(BIG_WORK) == 1


@pytest.mark.skipif(threads.usable_cores() < 2, reason="needs two cores")
def test_a_busy_process_is_seen_and_its_core_left_alone(one_busy_process):
    assert threads.busy_elsewhere() >= 1
    assert threads.auto_threads(BIG_WORK) <= threads.usable_cores() - 1


@pytest.mark.skipif(threads.usable_cores() < 2, reason="needs two cores")
def test_a_fit_beside_a_busy_process_leaves_its_core_alone(tmp_path, one_busy_process):
    # enough work per step that an idle machine would get a second thread
    raw = tiny_raw(regimes=["stl"], n_main=[512], **{"model.width": 1024,
                                                      "training.max_steps": 200})
    cfg = validate_config(raw)
    weights = 1024 * 5 + 1024  # trunk (width × d) and head
    assert threads.step_flops([torch.empty(weights)], 512) > 4 * threads.MIN_FLOPS_PER_THREAD
    before = torch.get_num_threads()
    rows = run_comparison(cfg, tmp_path / "busy", progress=False)
    assert (rows["threads"] <= threads.usable_cores() - 1).all()
    assert torch.get_num_threads() == before  # restored after the fit


def test_thread_count_changes_no_result_and_no_run_id(tmp_path):
    one = run_comparison(validate_config(tiny_raw(**{"trainer.threads": 1})), tmp_path / "one",
                         progress=False)
    two = run_comparison(validate_config(tiny_raw(**{"trainer.threads": 2})), tmp_path / "two",
                         progress=False)
    assert list(one["run_id"]) == list(two["run_id"])
    assert one["test_loss_main"].tolist() == two["test_loss_main"].tolist()
    assert set(one["threads"]) == {1} and set(two["threads"]) == {2}


@pytest.mark.parametrize("value", [0, "two", 1.5])
def test_bad_thread_settings_are_refused(value):
    with pytest.raises(ConfigError, match="trainer.threads"):
        validate_config(tiny_raw(**{"trainer.threads": value}))


@pytest.mark.parametrize("samples, busy", [
    ([1, 0, 1, 1, 0], 1),  # a spinning process missed by two samples is still busy
    ([0, 0, 1, 0, 0], 0),  # a process flickering through the run queue is not
])
def test_busy_cores_are_the_median_of_the_samples(monkeypatch, samples, busy):
    seen = iter(samples)
    monkeypatch.setattr(threads, "_running_now", lambda: next(seen))
    assert threads.busy_elsewhere(samples=len(samples), gap_s=0.0) == busy
