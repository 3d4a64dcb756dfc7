"""The `mtl-lab run` job end to end: output folder, resume, determinism, bad state, wandb."""

import glob

import pandas as pd
import pytest
import yaml

from mtl_lab import regimes
from mtl_lab.checkpoints import CheckpointError
from mtl_lab.cli import main
from mtl_lab.comparison import comparison_table, run_comparison
from mtl_lab.config import ConfigError, validate_config
from mtl_lab.sweeps import execute
from mtl_lab.tracking import read_wandb_history
from tests.conftest import tiny_raw

FAST = {"regimes": ["stl", "ptft"], "training.max_steps": 300}


def _cfg(**changes):
    return validate_config(tiny_raw(**{**FAST, **changes}))


def test_output_folder_and_results_table(tmp_path):
    cfg = _cfg()
    out = tmp_path / "out"
    results = run_comparison(cfg, out)
    assert len(results) == 2 * 1 * 2  # regimes × seeds × n_main
    on_disk = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(on_disk, results)
    for col in ["regime", "seed", "n_main", "train_loss", "test_loss_main", "test_loss_aux",
                "steps", "final_lr", "wall_time", "config.model.width", "config.training.lr",
                "config.task.params.d", "status", "run_id"]:
        assert col in results.columns, col
    assert results["config.model.width"].eq(16).all()
    # cheap analyzer summaries ride along in every row
    assert results["pr"].between(1, 16).all() and (results["path_norm_l1"] > 0).all()
    assert results.loc[results.regime == "ptft", "main_share_on_aux"].between(0, 1).all()
    assert results.loc[results.regime == "stl", "test_loss_aux"].isna().all()
    assert results.loc[results.regime == "ptft", "pretrain_steps"].gt(0).all()
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["width"] == 16
    assert len(glob.glob(str(out / "checkpoints" / "run-*.pt"))) == 4
    assert len(glob.glob(str(out / "checkpoints" / "pretrain-*.pt"))) == 1
    assert glob.glob(str(out / "logs" / "*" / "version_0" / "metrics.csv"))
    assert (out / "comparison.png").stat().st_size > 5000  # a real figure, not an empty file
    table = comparison_table(results)
    assert list(table.columns) == ["STL", "PT+FT"] and list(table.index) == [8, 32]


def test_rerun_reuses_finished_runs_and_is_deterministic(tmp_path, monkeypatch):
    cfg = _cfg()
    first = run_comparison(cfg, tmp_path / "a")

    def boom(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(regimes, "REGIME_FUNCTIONS", {r: boom for r in cfg.regimes})
    again = run_comparison(cfg, tmp_path / "a")
    pd.testing.assert_frame_equal(first, again)
    monkeypatch.undo()
    fresh = run_comparison(cfg, tmp_path / "b")
    pd.testing.assert_series_equal(first["test_loss_main"], fresh["test_loss_main"])
    # extending the comparison trains only the new runs
    more = run_comparison(_cfg(n_main=[8, 32, 16]), tmp_path / "a")
    assert len(more) == 6
    merged = more.merge(first, on="run_id", suffixes=("", "_old"))
    assert (merged["test_loss_main"] == merged["test_loss_main_old"]).all()


def test_corrupt_results_is_an_error_and_left_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.parquet").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="results.parquet"):
        run_comparison(_cfg(), out)
    assert (out / "results.parquet").read_bytes() == b"garbage"


def test_corrupt_pretrained_checkpoint_is_an_error_before_compute(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "pretrain-abc.pt").write_bytes(b"\x00broken")
    monkeypatch.setattr(execute, "load_task", lambda *a: pytest.fail("computed"))
    with pytest.raises(CheckpointError, match="pretrain-abc.pt"):
        run_comparison(_cfg(), out)


def test_cli_run_prints_the_comparison_table(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(**FAST)))
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "STL" in out and "PT+FT" in out and "results.parquet" in out
    assert main(["run", str(path), "--print-config", "seeds=[5]"]) == 0
    assert "- 5" in capsys.readouterr().out


def test_wandb_offline_runs_hold_the_logged_metrics(tmp_path):
    cfg = _cfg(**{"regimes": ["stl"], "n_main": [8], "logging.wandb": {"enabled": True}})
    results = run_comparison(cfg, tmp_path / "out")
    files = glob.glob(str(tmp_path / "out" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1  # one wandb run per training run
    history, summary = read_wandb_history(files[0])
    assert summary["test_loss_main"] == pytest.approx(results["test_loss_main"].iloc[0])
    assert summary["regime"] == "stl" if "regime" in summary else True
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert losses and losses[-1] == pytest.approx(results["train_loss"].iloc[0], rel=1e-6)


def test_tensorboard_logger_writes_event_files(tmp_path):
    cfg = _cfg(**{"regimes": ["stl"], "n_main": [8], "logging.tensorboard": True})
    run_comparison(cfg, tmp_path / "out")
    assert glob.glob(str(tmp_path / "out" / "tensorboard" / "*" / "*" / "events.out.tfevents.*"))
