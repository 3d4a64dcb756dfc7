"""What decides the device paths, tested without a device: the GPU's member budget, the clock
that waits for the device, and the paper-scale sweeps the device check runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtl_lab.config import TrainingConfig
from mtl_lab.regimes.base import ensemble_budget_mb, synchronized_clock
from mtl_lab.sweeps.run import plan_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from sweep_figure import relu_sweep_spec  # noqa: E402


def test_a_gpu_gets_half_its_free_memory_unless_the_config_says(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 16 * 2**30))
    cuda = torch.device("cuda")
    assert ensemble_budget_mb(TrainingConfig(), cuda) == 4096
    assert ensemble_budget_mb(TrainingConfig(max_ensemble_mb=64), cuda) == 64
    assert ensemble_budget_mb(TrainingConfig(), torch.device("cpu")) == 16.0


def test_the_clock_waits_for_the_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    synchronized_clock(torch.device("cpu"))
    assert calls == []
    synchronized_clock(torch.device("cuda"))
    assert calls == [torch.device("cuda")]


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "paper"])
def test_the_relu_paper_sweep_is_a_valid_sweep(tmp_path, quick):
    path = tmp_path / "relu.yaml"
    path.write_text(yaml.safe_dump(relu_sweep_spec(quick)))
    plan = plan_sweep(path)
    patterns = 2 if quick else 6
    seeds, sizes = (1, 3) if quick else (6, 6)
    assert len(plan.runs) == 3 * patterns * seeds * sizes
    # every correlation pattern and n_main of one regime and seed trains as one ensemble
    assert len(plan.groups) == 3 * seeds
