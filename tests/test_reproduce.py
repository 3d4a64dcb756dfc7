"""compare_results: runs matched by configuration (not run id), a verdict that can fail."""

from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_raw

from mtl_lab import reproduce
from mtl_lab.reproduce import compare_results
from mtl_lab.results import read_results


def table(accelerator: str = "cpu", tag: str = "a") -> pd.DataFrame:
    """A synthetic results table: 4 regimes × 2 n_main at one seed, two overlaps, plus the
    bookkeeping columns a real table has."""
    rows = []
    for overlap in (0, 3):
        for regime in ("stl", "mtl", "ptft", "ptlp"):
            for n in (8, 32):
                converged = n == 8
                rows.append({
                    "run_id": f"{tag}-{regime}-{n}-{overlap}", "comparison": f"check-{tag}",
                    "regime": regime, "seed": 0, "n_main": n,
                    "config.task.params.overlap": overlap, "config.task.params.d": 60,
                    "config.task.cache_dir": None, "config.training.lr": 0.05,
                    "config.mtl.weights": None, "config.pretraining": None,
                    "config.task.params.correlation": [1.0, 0.0],
                    "config.trainer.accelerator": accelerator, "config.trainer.threads": "auto",
                    "test_loss_main": 0.1 / n + 0.001 * overlap,
                    "test_loss_aux": np.nan if regime == "stl" else 0.004,
                    "train_loss": 1e-4, "steps": 534 + n if converged else 3000,
                    "status": "converged" if converged else "budget",
                    "pretrain_steps": 800.0 if regime.startswith("pt") else np.nan,
                    "pretrain_status": "converged" if regime.startswith("pt") else None,
                    "wall_time": 0.3, "train_wall_time": 1.2, "threads": 1, "group_size": 8,
                    "device": accelerator, "wandb_id": None,
                })
    return pd.DataFrame(rows)


def other_device() -> pd.DataFrame:
    """The same runs from another device: trainer, run ids, bookkeeping differ; rows shuffled."""
    other = table("cuda", tag="b").sample(frac=1.0, random_state=0).reset_index(drop=True)
    return other.assign(wall_time=0.01, train_wall_time=0.05, threads=16, group_size=16,
                        wandb_id="xyz", **{"config.trainer.threads": 4})


def test_same_configurations_from_another_device_pass():
    result = compare_results(table(), other_device(), names=("cpu", "cuda"))
    assert result.passed, result.report()
    assert result.verdict == "PASS" and not result.reasons
    assert len(result.pairs) == 16
    assert set(result.pairs["run_id_cpu"]) == set(table()["run_id"])
    assert str(result).startswith("PASS cpu vs cuda: 16 of 16 runs")
    # the old check merged on run_id, which hashes trainer.accelerator: nothing in common
    assert table().merge(other_device(), on="run_id").empty


def test_differences_within_the_tolerances_pass():
    other = other_device()
    other.loc[0, "test_loss_main"] *= 1 + 5e-4
    other.loc[other["status"] == "converged", "steps"] += 2
    other["pretrain_steps"] += 2
    result = compare_results(table(), other)
    assert result.passed, result.report()
    assert result.max_step_difference == 2
    assert 4e-4 < result.max_relative_loss_difference < 6e-4


def only(result, text: str) -> str:
    """The single reason of a FAIL, checked to contain ``text``."""
    assert not result.passed and result.verdict == "FAIL"
    assert len(result.reasons) == 1, result.reasons
    assert text in result.reasons[0], result.reasons[0]
    assert result.report().startswith("FAIL") and text in result.report()
    return result.reasons[0]


def pick(frame: pd.DataFrame, regime: str, n: int, overlap: int = 3) -> pd.Index:
    return frame.index[(frame["regime"] == regime) & (frame["n_main"] == n)
                       & (frame["config.task.params.overlap"] == overlap)]


def test_a_test_loss_one_percent_off_fails_and_names_the_run():
    other = other_device()
    other.loc[pick(other, "ptft", 32), "test_loss_main"] *= 1.01
    reason = only(compare_results(table(), other), "test_loss_main")
    assert "ptft seed 0 n_main 32" in reason and "task.params.overlap=3" in reason
    assert "relative difference 9.9e-03 > rtol 1e-03" in reason


def test_an_auxiliary_loss_missing_on_one_side_fails():
    other = other_device()
    other.loc[pick(other, "mtl", 8), "test_loss_aux"] = np.nan
    only(compare_results(table(), other), "test_loss_aux 0.004 vs nan: missing on one side")


def test_a_changed_status_fails():
    other = other_device()
    other.loc[pick(other, "stl", 32), "status"] = "diverged"
    reason = only(compare_results(table(), other), "status budget vs diverged")
    assert reason.startswith("stl seed 0 n_main 32")


def test_steps_beyond_the_tolerance_fail():
    other = other_device()
    other.loc[pick(other, "mtl", 8), "steps"] += 30  # 572 → 602: more than max(2, 1 %) = 6
    only(compare_results(table(), other), "steps 542 vs 572: differ by 30 > 6")
    other = other_device()
    other.loc[pick(other, "ptlp", 8), "pretrain_steps"] += 9
    only(compare_results(table(), other), "pretrain_steps 800 vs 809")


def test_a_dropped_row_fails_as_unmatched_on_that_side():
    other = other_device()
    other = other.drop(pick(other, "mtl", 32, overlap=0))
    result = compare_results(table(), other, names=("cpu", "cuda"))
    reason = only(result, "unmatched in cpu: mtl seed 0 n_main 32")
    assert "no run with this configuration in cuda" in reason
    assert len(result.unmatched["cpu"]) == 1 and result.unmatched["cuda"].empty
    assert len(result.pairs) == 15


def test_a_config_difference_outside_the_trainer_section_is_unmatched_and_named():
    other = other_device().assign(**{"config.training.lr": 0.1})
    result = compare_results(table(), other)
    assert not result.passed and result.pairs.empty
    assert "nothing matched: no configuration is in both tables" in result.reasons
    assert len(result.reasons) == 1 + 16 + 16
    assert any("config.training.lr differs between the unmatched runs: reference {0.05}, "
               "other {0.1}" in note for note in result.notes)


@pytest.mark.parametrize("sides", ["both", "reference", "other"])
def test_an_empty_comparison_fails(sides):
    left = pd.DataFrame() if sides in ("both", "reference") else table()
    right = pd.DataFrame() if sides in ("both", "other") else table()
    result = compare_results(left, right)
    assert not result.passed and result.pairs.empty
    assert result.reasons[0].startswith("nothing matched")
    assert str(result).startswith("FAIL reference vs other: 0 runs matched")


def test_a_configuration_twice_in_one_table_is_ambiguous():
    doubled = pd.concat([table(), table().iloc[[0]]], ignore_index=True)
    only(compare_results(doubled, other_device()), "ambiguous: 2 runs in reference")


def test_a_required_column_missing_fails():
    only(compare_results(table(), other_device().drop(columns="status")),
         "column 'status' missing from other")
    # optional columns absent from both sides are skipped
    assert compare_results(table().drop(columns=["pretrain_steps", "test_loss_aux"]),
                           other_device().drop(columns=["pretrain_steps", "test_loss_aux"])
                           ).passed


def test_keys_compare_values_not_types():
    # parquet reads lists back as arrays, and a column with a missing value turns int to float
    other = other_device()
    other["config.task.params.correlation"] = [np.array([1.0, 0.0])] * len(other)
    other["config.task.params.d"] = other["config.task.params.d"].astype(float)
    other["config.task.cache_dir"] = np.nan
    assert compare_results(table(), other).passed


def test_the_doctest_and_no_torch():
    assert doctest.testmod(reproduce).failed == 0
    code = "import sys, mtl_lab.reproduce; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_real_sweep_against_its_table_from_another_trainer(tmp_path):
    """One tiny real sweep; the other side is its table as another accelerator would label it
    (other run ids, trainer and bookkeeping), read back from parquet: PASS; a 1 % change: FAIL."""
    from mtl_lab.sweeps.run import run_sweep

    base = tiny_raw(regimes=["stl", "ptft"], **{"trainer.accelerator": "cpu"})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "reproduce", "base": base}))
    run_sweep(path, tmp_path / "out", progress=False)
    cpu = read_results(tmp_path / "out")
    assert len(cpu) == 4 and "config.trainer.accelerator" in cpu.columns
    gpu = cpu.assign(run_id=cpu["run_id"] + "x", wall_time=0.0, train_wall_time=0.0,
                     device="cuda", **{"config.trainer.accelerator": "cuda"})
    assert cpu.merge(gpu, on="run_id").empty
    assert compare_results(cpu, gpu.iloc[::-1]).passed
    gpu.loc[0, "test_loss_main"] *= 1.01
    only(compare_results(cpu, gpu), "test_loss_main")
