"""The experiment library (``configs/experiments/``): one sweep file per published finding at
the paper's settings (SCIENCE.md §3) and a quick variant of each, and three findings
(SCIENCE.md §4) shown as claims by the quick sweeps.

Every file is planned (validated, nothing trained); the quick variants' cost bound is capped so
that they stay CPU-sized. The claims run *reduced* quick sweeps, for CI time: the quick file's
base, axes and cases with fewer axis values, cases, regimes, seeds or n_main (never larger
sizes or other settings), written to a temporary sweep file and trained with
:func:`mtl_lab.sweeps.run.run_sweep`. Each claim compares means over seeds with a margin, not
with numbers copied from a run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from mtl_lab.analysis.diagnosis import sparsity_dependence
from mtl_lab.config import set_path
from mtl_lab.sweeps.run import plan_sweep, run_sweep

EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs" / "experiments"
FINDINGS = ("diagonal_shared", "diagonal_nested", "relu_shared", "relu_nested",
            "relu_correlation_magnitude", "init_scale", "width", "rescaling", "width_reuse")
QUICK_MAX_MEMBER_STEPS = 2_500_000  # full-batch budget × runs of a quick plan (a CPU's minutes)
BEATS = 0.8  # a winner's mean test loss is at most this fraction of the loser's


def _paths(name: str) -> tuple[Path, Path]:
    return EXPERIMENTS / f"{name}.yaml", EXPERIMENTS / f"{name}.quick.yaml"


def _cases(plan) -> dict[str, list[str]]:
    overrides = plan.spec.overrides
    return {axis: sorted(cases) if isinstance(cases, dict) else [str(c) for c in cases]
            for axis, cases in overrides.items()}


REAL_DATA = ("cifar100_split.yaml", "digits_split.yaml")  # the GPU run, its CPU companion
# (tested in tests/test_real_data.py: real data, not a quick variant of the same source)


def test_the_library_holds_a_paper_and_a_quick_file_per_finding():
    found = {p.name for p in EXPERIMENTS.glob("*.yaml")}
    assert found == {p.name for name in FINDINGS for p in _paths(name)} | set(REAL_DATA)
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        header = path.read_text().split("\nname:")[0]
        assert "Convention of configs/experiments/" in header, path


@pytest.mark.parametrize("name", FINDINGS)
def test_paper_and_quick_files_plan_with_the_same_axes_and_cases(name):
    paper_path, quick_path = _paths(name)
    paper, quick = plan_sweep(paper_path), plan_sweep(quick_path)
    assert list(quick.spec.axes) == list(paper.spec.axes)
    assert quick.spec.axes == paper.spec.axes  # same values too: only the sizes shrink
    assert _cases(quick) == _cases(paper)
    assert {r.regime for r in quick.runs} == {r.regime for r in paper.runs}
    assert quick.max_member_steps <= QUICK_MAX_MEMBER_STEPS
    assert quick.max_member_steps * 10 < paper.max_member_steps
    assert quick.spec.name == f"{paper.spec.name}-quick"


def _paper_configs(name: str):
    return [point.cfg for point in plan_sweep(_paths(name)[0]).points]


@pytest.mark.parametrize("name", ["diagonal_shared", "diagonal_nested"])
def test_diagonal_files_use_the_papers_settings(name):
    for cfg in _paper_configs(name):
        params = cfg.task.params
        assert (params["d"], params["k_aux"], params["n_aux"]) == (1000, 40, 1024)
        assert cfg.model.kind == "diagonal" and cfg.model.alpha == 1e-3
        assert cfg.pretraining.lr == 0.5 and cfg.training.lr == 0.1
        assert cfg.pretraining.loss_threshold == cfg.training.loss_threshold == 1e-10
        assert cfg.training.max_steps >= 100_000 and cfg.pretraining.max_steps >= 100_000
        assert len(cfg.seeds) == 6 and cfg.n_main == [16, 32, 64, 128, 256, 512]
        if name == "diagonal_shared":
            assert cfg.finetune.gamma == 1e-3
        else:  # the nested-rescaling pairing γ = c·10⁻³
            assert cfg.finetune.gamma == pytest.approx(cfg.finetune.rescale * 1e-3)
    overlaps = {cfg.task.params.get("overlap") for cfg in _paper_configs("diagonal_shared")}
    nested = {cfg.task.params["k_main"] for cfg in _paper_configs("diagonal_nested")}
    rescales = {cfg.finetune.rescale for cfg in _paper_configs("diagonal_nested")}
    assert overlaps == {0, 20, 30, 40} and nested == {5, 10, 20, 30, 40}
    assert {1.0, 0.1, 0.01} <= rescales


@pytest.mark.parametrize("name", ["relu_shared", "relu_nested", "relu_correlation_magnitude",
                                  "init_scale"])
def test_relu_files_use_the_papers_settings(name):
    scales = set()
    for cfg in _paper_configs(name):
        params = cfg.task.params
        assert (params["d"], params["m_aux"], params["n_aux"]) == (15, 6, 1024)
        assert (cfg.model.kind, cfg.model.width, cfg.model.depth) == ("relu", 1000, 1)
        assert len(cfg.seeds) == 6 and cfg.training.max_steps >= 100_000
        scales.add(cfg.model.init_scale)
    assert scales == ({1e-3, 1.0} if name == "init_scale" else {1e-3})


def _reduced(tmp_path: Path, name: str, base: dict | None = None, axes: dict | None = None,
             cases: dict[str, list[str]] | None = None) -> Path:
    """The quick sweep of ``name`` with some base keys, axis values and named cases replaced
    (``base`` by dotted key; ``axes`` by axis; ``cases``: the case names kept per axis)."""
    spec = yaml.safe_load(_paths(name)[1].read_text())
    for key, value in (base or {}).items():
        set_path(spec["base"], key, value)
    for axis, values in (axes or {}).items():
        assert axis in spec["axes"], axis
        spec["axes"][axis] = values
    for axis, keep in (cases or {}).items():
        spec["overrides"][axis] = {k: spec["overrides"][axis][k] for k in keep}
    spec["base"]["logging"] = {**spec["base"].get("logging", {}), "progress": False}
    path = tmp_path / f"{name}.reduced.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _mean_loss(rows: pd.DataFrame, by: list[str]) -> pd.Series:
    return rows.groupby(by)["test_loss_main"].mean()


def test_finding_1_shared_features_help_and_disjoint_ones_hurt(tmp_path):
    """Diagonal networks, overlap 40 of 40 vs 0, the two smallest n_main of the quick file,
    3 seeds (the quick file: 2 seeds, 5 sizes, 4 overlaps, also PT+LP and LP ridge)."""
    path = _reduced(tmp_path, "diagonal_shared",
                    base={"regimes": ["stl", "mtl", "ptft"], "seeds": [0, 1, 2],
                          "n_main": [16, 32]},
                    axes={"task.params.overlap": [0, 40]})
    rows = run_sweep(path, tmp_path / "out", progress=False)
    loss = _mean_loss(rows, ["config.task.params.overlap", "n_main", "regime"])
    for n in (16, 32):
        shared, disjoint = loss[40][n], loss[0][n]
        assert shared["mtl"] < BEATS * shared["stl"], (n, shared)
        assert shared["ptft"] < BEATS * shared["stl"], (n, shared)
        assert disjoint["stl"] < BEATS * disjoint["ptft"], (n, disjoint)
        assert disjoint["stl"] < BEATS * disjoint["mtl"], (n, disjoint)


def test_finding_4_rescaling_makes_ptft_depend_on_how_many_features_it_reuses(tmp_path):
    """Diagonal nested tasks, PT+FT with γ = c·10⁻³: the sparsity dependence S (decades of
    relative test loss between k_main = 40 and 5, mean over n_main) is at least a decade larger
    at c ≤ 0.1 than at c = 1. Reduced: k_main ∈ {5, 40}, n_main ∈ {32, 64}, the PT+FT cases."""
    path = _reduced(tmp_path, "diagonal_nested", base={"n_main": [32, 64]},
                    axes={"task.params.k_main": [5, 40]},
                    cases={"setting": ["ptft_c1", "ptft_c0.1", "ptft_c0.01"]})
    rows = run_sweep(path, tmp_path / "out", progress=False)
    assert set(rows["regime"]) == {"ptft"}
    assert set(rows["config.finetune.gamma_follows_rescale"]) == {True}
    s = {c: sparsity_dependence(part, "config.task.params.k_main")[0]
         for c, part in rows.groupby("config.finetune.rescale")}
    assert s[0.1] > s[1.0] + 1.0, s
    assert s[0.01] > s[1.0] + 1.0, s


def test_finding_3_ptft_but_not_mtl_benefits_from_correlated_features(tmp_path):
    """ReLU teacher with every main unit at ρ = 0.9 from an auxiliary unit: PT+FT beats MTL
    (and STL). Reduced: the all_0.9 pattern, n_main ∈ {64, 128}, 3 seeds, no ridge references
    or PT+LP (the quick file: six patterns, n_main 16–256, 2 seeds, six regimes)."""
    path = _reduced(tmp_path, "relu_shared",
                    base={"regimes": ["stl", "mtl", "ptft"], "seeds": [0, 1, 2],
                          "n_main": [64, 128]},
                    cases={"pattern": ["all_0.9"]})
    rows = run_sweep(path, tmp_path / "out", progress=False)
    loss = _mean_loss(rows, ["n_main", "regime"])
    for n in (64, 128):
        assert loss[n]["ptft"] < BEATS * loss[n]["mtl"], (n, loss[n])
        assert loss[n]["ptft"] < BEATS * loss[n]["stl"], (n, loss[n])


def test_the_width_file_crosses_the_input_dimension():
    """SCIENCE.md §7: widths below d, at d, at d + 4 and beyond, on a teacher whose two tasks
    together use every input direction (m_aux + m_main = d)."""
    widths = set()
    for cfg in _paper_configs("width"):
        params = cfg.task.params
        assert params["m_aux"] + params["m_main"] == params["d"]
        widths.add(cfg.model.width)
    d = _paper_configs("width")[0].task.params["d"]
    assert min(widths) < d and d in widths and d + 4 in widths and max(widths) > d + 4


def test_the_rescaling_quick_file_runs_and_reports_what_each_rescaling_did(tmp_path):
    """configs/experiments/rescaling.quick.yaml as written (issue 13: the rescaling experiment
    at quick scale in CI): every case trains, and the rows say how each rescaling moved the
    conserved h_j — ENorm to ≈ 0, c = 1 not at all, the path-conditioned one and c ≠ 1 away."""
    spec = yaml.safe_load(_paths("rescaling")[1].read_text())
    spec["base"]["logging"] = {**spec["base"].get("logging", {}), "progress": False}
    path = tmp_path / "rescaling.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    rows = run_sweep(path, tmp_path / "out", progress=False, jobs=2)
    assert len(rows) == len(plan_sweep(path).runs) == 42
    assert rows["test_loss_main"].notna().all() and rows["status"].ne("diverged").all()
    ptft = rows[rows["regime"] == "ptft"].groupby("sweep.case")
    before, start = ptft["h_abs_mean_pretrained"].mean(), ptft["h_abs_mean_start"].mean()
    assert start["enorm"] < 1e-3 * before["enorm"]
    assert start["c=1"] == pytest.approx(before["c=1"], rel=1e-2)
    for case in ("path_conditioned", "c=0.1", "c=10"):
        assert start[case] > 10 * before[case], case
    # the report draws one line per case: the runs without a per-neuron rescaling read as
    # rescaling=none (their run ids leave the key out), not as missing values dropped
    from mtl_lab.results import read_results
    from mtl_lab.tables import series

    lines = [s.label for s in series(read_results(tmp_path / "out")) if s.regime == "PT+FT"]
    assert len(lines) == 5 and sum("rescaling=none" in label for label in lines) == 3, lines
    # and shows what each rescaling did: steps to the threshold, |h| before and after
    from mtl_lab.sweeps.report import write_report

    page = write_report(read_results(tmp_path / "out"), tmp_path / "out").read_text()
    for figure in ("steps_vs_n.png", "conserved.png"):
        assert (tmp_path / "out" / "report" / "figures" / figure).stat().st_size > 10_000
        assert f"figures/{figure}" in page


def test_the_findings_script_reads_the_symmetry_studies_and_fails_when_they_do_not_hold(
        tmp_path, capsys):
    """benchmarks/findings.py on synthetic width and rescaling tables: a verdict each, exit 1
    when one fails, and an empty folder is a failure too."""
    import sys

    from mtl_lab.results import write_results

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from findings import main as findings

    def width_rows(mtl_fits_from: int) -> pd.DataFrame:
        return pd.DataFrame([{"regime": regime, "config.model.width": w, "seed": s,
                              "test_loss_main": 0.1, "train_loss": 1e-8 if w >= fits else 0.1}
                             for regime, fits in (("stl", 6), ("mtl", mtl_fits_from))
                             for w in (4, 6, 12) for s in (0, 1)])

    rescaling = pd.DataFrame([{"regime": "ptft", "sweep.case": case, "seed": s, "n_main": n,
                               "config.task.params.correlation": 1.0,
                               "test_loss_main": loss * (1 + 0.01 * s),
                               "h_abs_mean_pretrained": 1e-4, "h_abs_mean_start": h}
                              for case, loss, h in (("c=1", 0.1, 1e-4), ("enorm", 0.1, 1e-9),
                                                    ("path_conditioned", 0.05, 1e-2))
                              for s in (0, 1) for n in (16, 64)])
    write_results(tmp_path / "good" / "width", width_rows(12))
    write_results(tmp_path / "good" / "rescaling", rescaling)
    assert findings([str(tmp_path / "good")]) == 0
    out = capsys.readouterr().out
    assert "narrowest trunk that fits: mtl 12, stl 6" in out
    assert "path-conditioned below c = 1 in 4 of 4" in out and "2 of 2 findings" in out
    write_results(tmp_path / "bad" / "width", width_rows(6))
    write_results(tmp_path / "bad" / "rescaling",
                  rescaling.assign(h_abs_mean_start=1e-4))  # ENorm that did nothing
    assert findings([str(tmp_path / "bad")]) == 1
    assert "0 of 2 findings" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert findings([str(tmp_path / "empty")]) == 1
