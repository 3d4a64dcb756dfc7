"""What the user reads and where results go: one configuration per comparison folder, tables that
never average two settings, flags for unfinished runs, clear errors, fast help, file modes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.collections import PathCollection

from mtl_lab.cli import main
from mtl_lab.comparison import run_comparison
from mtl_lab.config import ConfigError, validate_config
from mtl_lab.plots import comparison_figure
from mtl_lab.sweeps.report import write_report
from tests.conftest import tiny_raw
from tests.test_report import synthetic

ROOT = Path(__file__).resolve().parent.parent
FAST = {"regimes": ["stl"], "seeds": [0], "n_main": [8], "training.max_steps": 300}


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------- one folder, one config


def test_a_second_configuration_is_refused_and_nothing_is_touched(tmp_path):
    out = tmp_path / "cmp"
    run_comparison(validate_config(tiny_raw(**FAST)), out, progress=False)
    before = _snapshot(out)
    other = validate_config(tiny_raw(**FAST, **{"model.width": 32, "training.lr": 0.02}))
    with pytest.raises(ConfigError) as err:
        run_comparison(other, out, progress=False)
    message = str(err.value)
    assert "model.width: 16 in the folder, 32 here" in message
    assert "training.lr: 0.05 in the folder, 0.02 here" in message
    assert "-o" in message
    assert _snapshot(out) == before  # config.yaml, results and figure untouched


def test_more_seeds_and_regimes_extend_the_same_configuration(tmp_path):
    out = tmp_path / "cmp"
    run_comparison(validate_config(tiny_raw(**FAST)), out, progress=False)
    more = validate_config(tiny_raw(**{**FAST, "seeds": [0, 1], "regimes": ["stl", "mtl"]}))
    rows = run_comparison(more, out, progress=False)
    assert len(rows) == 4
    folder_cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert folder_cfg["seeds"] == [0, 1] and folder_cfg["regimes"] == ["stl", "mtl"]


def test_sweep_and_comparison_folders_do_not_mix(tmp_path, capsys):
    cfg_path = _write(tmp_path / "c.yaml", tiny_raw(**FAST))
    sweep_path = _write(tmp_path / "s.yaml", {"name": "s", "base": tiny_raw(**FAST),
                                              "axes": {"seeds": [[0], [1]]}})
    assert main(["run", str(cfg_path), "-o", str(tmp_path / "cmp"), "--no-progress"]) == 0
    assert main(["sweep", str(sweep_path), "-o", str(tmp_path / "cmp"), "--no-progress"]) == 2
    assert "holds a comparison" in capsys.readouterr().err
    assert main(["sweep", str(sweep_path), "-o", str(tmp_path / "swp"), "--no-progress"]) == 0
    assert main(["run", str(cfg_path), "-o", str(tmp_path / "swp"), "--no-progress"]) == 2
    assert "holds a sweep" in capsys.readouterr().err


# ----------------------------------------------------------------------------- tables


def _two_settings() -> pd.DataFrame:
    """STL at n_main = 8 under correlation 1 (loss 1) and 0 (loss 100), two seeds each."""
    rows = [{"run_id": f"{c}-{s}", "regime": "stl", "regime_label": "STL", "seed": s,
             "n_main": 8, "config.task.params.correlation": c, "test_loss_main": loss,
             "status": "converged"} for c, loss in ((1.0, 1.0), (0.0, 100.0)) for s in (0, 1)]
    return pd.DataFrame(rows)


def test_results_never_average_over_a_swept_parameter(tmp_path, capsys):
    out = tmp_path / "mixed"
    out.mkdir()
    _two_settings().to_parquet(out / "results.parquet")
    assert main(["results", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "correlation" in printed
    assert "1.000e+00" in printed and "1.000e+02" in printed
    assert "5.050e+01" not in printed  # the mean of both settings


def test_printed_table_flags_runs_stopped_at_the_budget(tmp_path, capsys):
    raw = tiny_raw(**{**FAST, "training.max_steps": 20, "training.steps_per_call": 10})
    path = _write(tmp_path / "c.yaml", raw)
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "e-0" in printed.split("STL", 1)[1] and "*" in printed
    assert "1 of 1 runs stopped at the step budget" in printed


def test_report_table_and_figures_carry_the_flags(tmp_path):
    results = synthetic()
    results.loc[results.index[:3], "status"] = "budget"
    page = write_report(results, tmp_path).read_text()
    assert "3 of" in page and "stopped at the step budget" in page
    assert "e+" in page or "e-" in page
    assert "*</td>" in page


def test_comparison_figure_says_sem_and_rings_flagged_points():
    results = synthetic(("stl",))
    results = results[(results[["config.task.params.overlap", "config.task.params.k_main"]]
                       == [0, 1]).all(axis=1)]
    results.loc[results["n_main"] == 8, "status"] = "budget"
    fig = comparison_figure(results)
    ax = fig.axes[0]
    assert "s.e.m." in ax.get_ylabel() and "s.e.m." in ax.get_title()
    rings = [c for c in ax.collections if isinstance(c, PathCollection)
             and len(c.get_offsets()) and (c.get_facecolors().size == 0
                                           or c.get_facecolors()[:, 3].max() == 0)]
    assert rings and rings[0].get_offsets()[0][0] == 8
    assert any("step budget" in t.get_text() for t in ax.get_legend().get_texts())


# ----------------------------------------------------------------------------- errors


def test_an_invalid_override_is_reported_against_the_override(capsys):
    code = main(["config", str(ROOT / "configs" / "quickstart.yaml"), "training.lr=abc"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid override" in err and "'training.lr=abc'" in err
    assert "quickstart.yaml" not in err.split("\n")[0]


def test_the_wrong_kind_of_file_names_the_right_command(tmp_path, capsys):
    sweep = _write(tmp_path / "s.yaml", {"base": tiny_raw(), "axes": {"seeds": [[0]]}})
    assert main(["run", str(sweep)]) == 2
    assert f"run it with `mtl-lab sweep {sweep}`" in capsys.readouterr().err
    config = _write(tmp_path / "c.yaml", tiny_raw())
    assert main(["sweep", str(config)]) == 2
    assert f"run it with `mtl-lab run {config}`" in capsys.readouterr().err


# ----------------------------------------------------------------------------- files and speed


def test_results_file_has_the_same_mode_as_the_other_files(tmp_path):
    out = tmp_path / "out"
    run_comparison(validate_config(tiny_raw(**FAST)), out, progress=False)
    mode = (out / "results.parquet").stat().st_mode & 0o777
    assert mode == (out / "config.yaml").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["sweep", "--help"],
                                  ["config", "configs/quickstart.yaml"], ["families"]])
def test_help_config_and_validation_do_not_load_torch(argv):
    code = ("import sys\nfrom mtl_lab.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'lightning', 'datasets', 'pandas') "
            "if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]


def test_families_lists_the_real_data_family(capsys):
    from mtl_lab.cli import main

    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert "relu_units:" in out and "sparse_linear:" in out
    assert "class_split (real images; model.kind resnet or vit): source, n_main" in out


def test_a_closed_pipe_ends_the_command_quietly():
    """`mtl-lab … | head`: when the reader goes away the command stops with the shell's SIGPIPE
    status and no traceback (the first line was read, then the pipe closed)."""
    script = ("import sys, mtl_lab.cli as cli\n"
              "def spam(args):\n"
              "    for i in range(200000):\n"
              "        print('line', i)\n"
              "    return 0\n"
              "cli._cmd_families = spam\n"
              "sys.exit(cli.main(['families']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141
    assert b"Traceback" not in proc.stderr.read()
