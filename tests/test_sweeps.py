"""Sweeps: expansion and validation, batching across points, kill-and-resume, Ray == local."""

import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from mtl_lab.cli import main
from mtl_lab.config import ConfigError, validate_config
from mtl_lab.sweeps.run import plan_sweep, results_dataset, run_sweep
from mtl_lab.sweeps.spec import SweepSpec, expand
from tests.conftest import tiny_raw


def _sweep_file(tmp_path, name="s.yaml", **spec):
    spec.setdefault("base", tiny_raw(**{"training.max_steps": 300, "regimes": ["stl", "ptft"]}))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expansion_crosses_axes_zips_and_overrides():
    spec = SweepSpec.model_validate({
        "base": tiny_raw(),
        "axes": {"task.params.correlation": [1.0, 0.5, 0.0]},
        "zip": [{"finetune.rescale": [1.0, 0.1], "finetune.head_init_scale": [1e-3, 1e-2]}],
        "overrides": {"setting": [{"regimes": ["stl"]}, {"regimes": ["ptft"], "model.width": 8}]},
    })
    points = expand(spec)
    assert len(points) == 3 * 2 * 2
    pairs = {(p.cfg.finetune.rescale, p.cfg.finetune.head_init_scale) for p in points}
    assert pairs == {(1.0, 1e-3), (0.1, 1e-2)}  # zipped, not crossed
    assert {p.cfg.model.width for p in points if p.cfg.regimes == ["ptft"]} == {8}
    assert {p.cfg.model.width for p in points if p.cfg.regimes == ["stl"]} == {16}


@pytest.mark.parametrize("spec,message", [
    ({"axes": {"model.widht": [4, 8]}}, r"point 0 .*model\.widht.*unknown key"),
    ({"axes": {"model.width": []}}, r"axis 'model\.width' is empty"),
    ({"axes": {"model.width": [8, -1]}}, r"point 1 \(model\.width=-1\).*model\.width"),
    ({"axes": {"task.params.overlap": [1]}}, r"task\.params\.overlap"),
    ({"zip": [{"seeds": [[0], [1]], "n_main": [[8]]}]}, r"equal, non-zero lengths"),
    ({"axis": {"seeds": [[0]]}}, r"axis: unknown key"),
])
def test_bad_sweep_files_fail_before_compute(tmp_path, spec, message):
    path = _sweep_file(tmp_path, "bad.yaml", **spec)
    with pytest.raises(ConfigError, match=f"(?s){message}") as err:
        plan_sweep(path)
    assert "bad.yaml" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_runs_of_different_points_batch_together(tmp_path):
    path = _sweep_file(tmp_path, axes={"task.params.correlation": [1.0, 0.0],
                                       "training.lr": [0.05, 0.02],
                                       "seeds": [[0], [1]]})
    plan = plan_sweep(path)
    assert len(plan.runs) == 2 * 2 * 2 * 2 * 2  # corr × lr × seed × regime × n_main
    sizes = sorted(len(g) for g in plan.groups)
    assert sizes == [8, 8, 8, 8]  # one group per (regime, seed): targets and lr vary inside
    other = _sweep_file(tmp_path, "w.yaml", axes={"model.width": [8, 16]})
    assert len(plan_sweep(other).groups) == 4  # different shapes never share a group


def _slow_sweep(tmp_path, name):
    base = tiny_raw(**{"regimes": ["stl", "mtl"], "seeds": [0], "n_main": [8, 32],
                       "training.max_steps": 2500, "training.loss_threshold": 0.0})
    return _sweep_file(tmp_path, name, base=base, axes={"seeds": [[0], [1], [2]]})


def test_killed_sweep_resumes_without_losing_or_changing_runs(tmp_path):
    path = _slow_sweep(tmp_path, "kill.yaml")
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mtl_lab.cli", "sweep", str(path), "-o",
                             str(out), "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    rows_at_kill = 0
    while time.time() < deadline and proc.poll() is None:
        if (out / "results.parquet").exists():
            rows_at_kill = len(pd.read_parquet(out / "results.parquet"))
            if rows_at_kill:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < rows_at_kill < 12, "the sweep must be killed part-way"
    resumed = run_sweep(path, out, progress=False)
    fresh = run_sweep(path, tmp_path / "fresh", progress=False)
    assert len(resumed) == len(fresh) == 12 and resumed["run_id"].is_unique
    merged = resumed.merge(fresh, on="run_id", suffixes=("", "_fresh"))
    assert len(merged) == 12
    pd.testing.assert_series_equal(merged["test_loss_main"], merged["test_loss_main_fresh"],
                                   check_names=False, rtol=1e-6)


def _same_results_with_step_bars(tmp_path, capfd, bar: str, **executor) -> None:
    """A two-seed sweep run with ``executor`` settings equals the in-process one (rtol 1e-3:
    thread counts change low-order bits), and its workers' step bars reach the terminal."""
    path = _sweep_file(tmp_path, axes={"seeds": [[0], [1]]})
    local = run_sweep(path, tmp_path / "local", progress=False)
    capfd.readouterr()
    other = run_sweep(path, tmp_path / "other", progress=True, **executor)
    shown = capfd.readouterr().err
    assert re.search(bar, shown), shown[-2000:]
    merged = local.merge(other, on="run_id", suffixes=("", "_other"))
    assert len(merged) == len(local) == len(other) == 8
    for col in ("test_loss_main", "train_loss", "steps"):
        pd.testing.assert_series_equal(merged[col], merged[f"{col}_other"], check_names=False,
                                       rtol=1e-3)


def test_ray_executor_gives_the_local_results(tmp_path, capfd):
    pytest.importorskip("ray")
    _same_results_with_step_bars(tmp_path, capfd, r"STL seed 1 \(\d runs\) stl: .*\d+/300 .*step",
                                 executor="ray")


def test_local_worker_processes_give_the_sequential_results(tmp_path, capfd):
    """--jobs 2 trains groups in two spawned worker processes (one thread each), whose step
    progress shows as one bar per group in the launching process."""
    _same_results_with_step_bars(tmp_path, capfd,
                                 r"PT\+FT seed 1 \(\d runs\) ptft: .*\d+/300 .*step", jobs=2)
    path = tmp_path / "s.yaml"
    with pytest.raises(ConfigError, match="jobs"):
        run_sweep(path, tmp_path / "bad", progress=False, jobs=0)
    with pytest.raises(ConfigError, match="jobs is for the local executor"):
        run_sweep(path, tmp_path / "bad", progress=False, jobs=2, executor="ray")
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_groups_start_longest_first():
    from mtl_lab.sweeps.execute import longest_first
    from mtl_lab.sweeps.plan import group_runs, runs_of

    cfg = validate_config(tiny_raw(**{"regimes": ["stl", "mtl"], "n_main": [8, 32]}))
    groups = longest_first(group_runs(runs_of(cfg)))
    assert [g[0].regime for g in groups] == ["mtl", "stl"]  # aux + main samples per step


def test_results_export_and_dataset(tmp_path, capsys):
    path = _sweep_file(tmp_path)
    run_sweep(path, tmp_path / "out", progress=False)
    assert main(["results", str(tmp_path / "out"), "--csv", str(tmp_path / "r.csv")]) == 0
    table = pd.read_csv(tmp_path / "r.csv")
    assert len(table) == 4 and {"regime", "test_loss_main", "config.model.width"} <= set(table)
    ds = results_dataset(tmp_path / "out")
    assert ds.num_rows == 4 and "test_loss_main" in ds.column_names
    assert main(["sweep", str(path), "-o", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "4 already finished" in capsys.readouterr().out


def test_sweep_and_report_reproduce_shared_vs_disjoint(tmp_path):
    """Finding 1 as a sweep: a report whose figures are written and whose numbers agree."""
    base = tiny_raw(**{"regimes": ["stl", "mtl", "ptft"], "seeds": [0, 1], "n_main": [8, 16],
                       "training.max_steps": 1500})
    path = _sweep_file(tmp_path, base=base, axes={"task.params.correlation": [1.0, 0.0]})
    results = run_sweep(path, tmp_path / "out", progress=False)
    assert main(["report", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "report" / "index.html").read_text()
    figures = list((tmp_path / "out" / "report" / "figures").glob("*.png"))
    assert len(figures) >= 3
    for png in figures:
        assert png.stat().st_size > 5000 and png.name in html
    means = results.groupby(["config.task.params.correlation", "regime"])["test_loss_main"].mean()
    assert means[1.0]["ptft"] < means[1.0]["stl"] and means[1.0]["mtl"] < means[1.0]["stl"]


def test_report_logs_its_figures_and_table_to_wandb(tmp_path):
    """A sweep that logged to wandb gets its report logged too (offline), as one 'report' run;
    --wandb does it for a sweep that did not."""
    from mtl_lab.tracking import read_wandb_history

    base = tiny_raw(**{"regimes": ["stl", "ptft"], "training.max_steps": 300,
                       "logging.wandb": {"enabled": True}})
    run_sweep(_sweep_file(tmp_path, base=base), tmp_path / "logged", progress=False)
    run_sweep(_sweep_file(tmp_path, name="plain.yaml"), tmp_path / "plain", progress=False)
    assert not (tmp_path / "plain" / "wandb").exists()
    assert main(["report", str(tmp_path / "logged")]) == 0
    assert main(["report", str(tmp_path / "plain"), "--wandb"]) == 0
    for folder in ("logged", "plain"):
        training = set(pd.read_parquet(tmp_path / folder / "results.parquet")
                       .get("wandb_id", pd.Series(dtype=str)).dropna())
        (report_run,) = [p for p in (tmp_path / folder / "wandb").glob("offline-run-*")
                         if p.name.split("-")[3] not in training]
        history, _ = read_wandb_history(next(report_run.glob("run-*.wandb")))
        logged = set().union(*history)
        figures = list((tmp_path / folder / "report" / "figures").glob("*.png"))
        assert figures and all(f"figures/{png.stem}/_type" in logged for png in figures)
        assert "results/_type" in logged


def test_a_sweep_mixing_scalar_and_list_settings_stores_its_results(tmp_path):
    """Correlation patterns (relu_shared): one case sets a number, another a list per unit. The
    results table holds both (Parquet takes one type per column), survives a resumed run, and
    each row keeps the case it belongs to."""
    base = tiny_raw(**{"training.max_steps": 100, "regimes": ["stl"], "n_main": [8]})
    path = _sweep_file(tmp_path, base=base, overrides={"pattern": {
        "all_1": {"task.params.correlation": 1.0},
        "mixed": {"task.params.correlation": [1.0, 0.0]}}})
    rows = run_sweep(path, tmp_path / "out", progress=False)
    assert sorted(rows["sweep.pattern"]) == ["all_1", "mixed"]
    stored = pd.read_parquet(tmp_path / "out" / "results.parquet")
    by_case = dict(zip(stored["sweep.pattern"], stored["config.task.params.correlation"],
                       strict=True))
    assert by_case == {"all_1": "1.0", "mixed": "[1.0, 0.0]"}
    again = run_sweep(path, tmp_path / "out", progress=False)  # resumes: nothing retrained
    assert len(again) == 2 and set(again["run_id"]) == set(rows["run_id"])
