"""Shared fixtures: a private task cache, offline wandb, quiet Lightning, small configs."""

from __future__ import annotations

import os

import pytest
import torch

from mtl_lab.config import set_path, validate_config
from mtl_lab.tracking import quiet_lightning

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
quiet_lightning()


@pytest.fixture(autouse=True)
def _task_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MTL_LAB_CACHE", str(tmp_path_factory.getbasetemp() / "task-cache"))


def tiny_raw(**changes) -> dict:
    """A fast ReLU comparison config as a raw mapping."""
    raw = {
        "name": "tiny",
        "regimes": ["stl", "mtl", "ptft", "ptlp"],
        "seeds": [0],
        "n_main": [8, 32],
        "task": {"family": "relu_units",
                 "params": {"d": 5, "m_aux": 2, "m_main": 2, "correlation": 1.0,
                            "n_aux": 64, "n_test": 200}},
        "model": {"kind": "relu", "width": 16, "init_scale": 0.5},
        "training": {"lr": 0.05, "max_steps": 1500, "loss_threshold": 1e-4,
                     "steps_per_call": 250},
        "logging": {"progress": False},
    }
    for key, value in changes.items():
        set_path(raw, key, value)
    return raw


@pytest.fixture
def tiny_cfg():
    return validate_config(tiny_raw(), "tiny.yaml")
