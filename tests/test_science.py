"""SCIENCE.md finding 1 at test scale, as orderings of mean test loss over seeds:
with shared features both MTL and PT+FT beat STL at small n_main; with disjoint features STL
beats PT+FT (and MTL). Checked on both task families and both model networks."""

import pytest

from mtl_lab.comparison import run_comparison
from mtl_lab.config import validate_config

SEEDS = [0, 1, 2]


def _mean_test_loss(tmp_path, family, params, model, training):
    raw = {"name": "science", "regimes": ["stl", "mtl", "ptft"], "seeds": SEEDS,
           "n_main": [8], "task": {"family": family, "params": params}, "model": model,
           "training": training, "logging": {"progress": False}}
    results = run_comparison(validate_config(raw), tmp_path / family)
    return results.groupby("regime")["test_loss_main"].mean()


SPARSE = ("sparse_linear", {"d": 40, "k_aux": 6, "k_main": 6, "n_aux": 128, "n_test": 1000},
          {"kind": "diagonal", "alpha": 0.01},
          {"lr": 0.1, "max_steps": 5000, "loss_threshold": 1e-6, "steps_per_call": 500})
RELU = ("relu_units", {"d": 6, "m_aux": 3, "m_main": 3, "n_aux": 128, "n_test": 1000},
        {"kind": "relu", "width": 32, "init_scale": 0.1},
        {"lr": 0.05, "max_steps": 3000, "loss_threshold": 1e-5, "steps_per_call": 500})


@pytest.mark.parametrize("setup,shared,disjoint", [
    (SPARSE, {"overlap": 6}, {"overlap": 0}),
    (RELU, {"correlation": 1.0}, {"correlation": 0.0}),
], ids=["diagonal-sparse_linear", "relu-relu_units"])
def test_shared_features_help_and_disjoint_features_hurt(tmp_path, setup, shared, disjoint):
    family, params, model, training = setup
    with_shared = _mean_test_loss(tmp_path / "shared", family, {**params, **shared}, model,
                                  training)
    assert with_shared["mtl"] < with_shared["stl"]
    assert with_shared["ptft"] < with_shared["stl"]
    with_disjoint = _mean_test_loss(tmp_path / "disjoint", family, {**params, **disjoint},
                                    model, training)
    assert with_disjoint["stl"] < with_disjoint["ptft"]
    assert with_disjoint["stl"] < with_disjoint["mtl"]
