"""`mtl-lab analyze` on folders with ridge references, missing folders, its figures and summary."""

import math

import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from mtl_lab.analysis.figures import (
    FAMILIES,
    LABEL_COLOURS,
    METRIC_LABELS,
    metric_figure,
    unit_figure,
)
from mtl_lab.analysis.report import analyze, summary_table
from mtl_lab.cli import main
from mtl_lab.comparison import run_comparison
from mtl_lab.config import ConfigError, validate_config
from tests.conftest import tiny_raw

RIDGE_CONFIGS = {
    "diagonal": {"task": {"family": "sparse_linear",
                          "params": {"d": 10, "k_aux": 3, "k_main": 2, "nested": True,
                                     "n_aux": 32, "n_test": 100}},
                 "model": {"kind": "diagonal", "alpha": 0.1}},
    "relu": {"model": {"kind": "relu", "width": 8, "init_scale": 0.5}},
}


@pytest.fixture(scope="module", params=sorted(RIDGE_CONFIGS))
def ridge_folder(request, tmp_path_factory):
    """A tiny comparison of every gradient regime and both ridge references."""
    out = tmp_path_factory.mktemp(f"ridge-{request.param}")
    raw = tiny_raw(**{"regimes": ["stl", "mtl", "ptft", "lp_ridge", "ntk_ridge"],
                      "n_main": [8, 16],
                      "training": {"lr": 0.05, "max_steps": 200, "loss_threshold": 1e-4,
                                   "steps_per_call": 100},
                      **RIDGE_CONFIGS[request.param]})
    run_comparison(validate_config(raw), out)
    return out


def test_analyze_handles_ridge_runs(ridge_folder, capsys):
    assert main(["analyze", str(ridge_folder), "--no-progress"]) == 0
    assert "LP ridge" in capsys.readouterr().out
    results = pd.read_parquet(ridge_folder / "results.parquet")
    analysis = pd.read_parquet(ridge_folder / "analysis.parquet")
    assert sorted(analysis["run_id"]) == sorted(results["run_id"])  # one row per run
    ridge = analysis[analysis["regime"].isin(["lp_ridge", "ntk_ridge"])]
    assert len(ridge) == 4
    # representation measures of the pretrained features the kernel uses
    for col in ("pr", "pr_reference", "ensd_reference", "cka_reference", "test_loss_main"):
        assert ridge[col].notna().all(), col
    lp = ridge[ridge["regime"] == "lp_ridge"]
    assert lp["cka_reference"].to_numpy() == pytest.approx(1.0)  # h(x) is the reference itself
    assert lp["pr"].to_numpy() == pytest.approx(lp["pr_reference"].to_numpy())
    # no trained main head, no gradient-trained solution: NaN, not made-up numbers
    for col in ("main_share_on_aux", "share_reused", "weight_change", "conservation_drift",
                "path_norm_l1"):
        assert ridge[col].isna().all(), col
    trained = analysis[~analysis.index.isin(ridge.index)]
    assert trained[["main_share_on_aux", "pr", "path_norm_l1"]].notna().all().all()
    units = pd.read_parquet(ridge_folder / "units.parquet")
    assert set(units["run_id"]) == set(analysis["run_id"])
    ridge_units = units[units["run_id"].isin(ridge["run_id"])]
    assert ridge_units["contrib_main"].isna().all() and ridge_units["label"].isna().all()
    for name in ("reuse", "units", "representation", "weights", "norms"):
        assert (ridge_folder / "figures" / f"{name}.png").stat().st_size > 5000


def test_analyze_names_a_missing_folder(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    with pytest.raises(ConfigError, match="folder not found: .*no-such-run"):
        analyze(missing, progress=False)
    assert main(["analyze", str(missing)]) == 2
    assert "folder not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no results.parquet in"):
        analyze(tmp_path, progress=False)  # exists, but nothing was run there


def _toy_analysis(statuses: dict[str, list[str]]) -> pd.DataFrame:
    """Two n_main values and two seeds per regime; ``statuses`` lists each regime's statuses."""
    rows = []
    for regime, label in (("stl", "STL"), ("ptft", "PT+FT")):
        for i, status in enumerate(statuses[regime]):
            rows.append({"run_id": f"{regime}-{i}", "regime": regime, "regime_label": label,
                         "seed": i % 2, "n_main": 8 * 2 ** (i // 2), "status": status,
                         **{m: 1.0 + i for ms in FAMILIES.values() for m in ms}})
    return pd.DataFrame(rows)


def test_metric_panels_have_readable_titles_and_y_labels():
    fig = metric_figure(_toy_analysis({"stl": ["converged"] * 4, "ptft": ["converged"] * 4}),
                        FAMILIES["representation"] + FAMILIES["weights"], "t")
    metrics = FAMILIES["representation"] + FAMILIES["weights"]
    assert len(fig.axes) == len(metrics)
    for ax, metric in zip(fig.axes, metrics):
        title, ylabel = METRIC_LABELS[metric]
        assert ax.get_title() == title and ax.get_ylabel() == ylabel
        assert ax.get_title() != metric.replace("_", " ")
    assert "linear CKA (unbiased)" in fig.axes[3].get_ylabel()
    for metric in (m for ms in FAMILIES.values() for m in ms):
        assert all(METRIC_LABELS[metric]), metric


def _rings_and_crosses(fig) -> tuple[int, int]:
    rings = crosses = 0
    for ax in fig.axes:
        for coll in ax.collections:
            if isinstance(coll, PathCollection) and len(coll.get_offsets()):
                face = coll.get_facecolor()
                if len(face) == 0 or face[0][3] == 0:
                    rings += len(coll.get_offsets())
                else:
                    crosses += len(coll.get_offsets())
    return rings, crosses


def test_metric_panels_mark_runs_that_did_not_converge():
    clean = metric_figure(_toy_analysis({"stl": ["converged"] * 4, "ptft": ["converged"] * 4}),
                          ["pr"], "t")
    assert _rings_and_crosses(clean) == (0, 0)
    assert all("step budget" not in t.get_text() for t in clean.legends[0].get_texts())
    # STL: one budget-stopped run at n_main = 8; PT+FT: a diverged run at n_main = 16
    flagged = metric_figure(_toy_analysis({"stl": ["budget", "converged", "converged",
                                                   "converged"],
                                           "ptft": ["converged", "converged", "diverged",
                                                    "converged"]}), ["pr"], "t")
    assert _rings_and_crosses(flagged) == (1, 1)
    texts = [t.get_text() for leg in flagged.legends for t in leg.get_texts()]
    assert any("step budget (1)" in t for t in texts) and any("diverged (1)" in t for t in texts)
    assert {"STL", "PT+FT"} <= set(texts)


def test_every_units_panel_has_its_labels_in_a_legend():
    analysis = _toy_analysis({"stl": ["converged"] * 2, "ptft": ["converged"] * 2})
    analysis = pd.concat([analysis, analysis.iloc[[0]].assign(
        run_id="ridge-0", regime="lp_ridge", regime_label="LP ridge")], ignore_index=True)
    labels = {"stl-0": ["new", "unused"], "stl-1": ["new", "unused"],
              "ptft-0": ["reused", "modified"], "ptft-1": ["reused", "modified"]}
    units = pd.DataFrame([{"run_id": r, "unit": j, "contrib_aux": 0.5 * j,
                           "contrib_main": 1.0 + j, "label": lab}
                          for r, labs in labels.items() for j, lab in enumerate(labs)]
                         + [{"run_id": "ridge-0", "unit": 0, "contrib_aux": 1.0,
                             "contrib_main": math.nan, "label": None}])
    fig = unit_figure(analysis, units)
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["STL", "PT+FT"]  # no ridge
    legend_texts = {t.get_text() for leg in [*fig.legends, *(a.get_legend() for a in fig.axes)]
                    if leg is not None for t in leg.get_texts()}
    for ax in fig.axes:
        drawn = {c.get_label() for c in ax.collections if c.get_label() in LABEL_COLOURS}
        assert drawn and drawn <= legend_texts, (ax.get_title(), drawn, legend_texts)


def test_summary_never_averages_two_task_settings():
    rows = [{"run_id": f"{k}-{seed}", "regime": "ptft", "regime_label": "PT+FT", "n_main": 8,
             "seed": seed, "config.task.params.k_main": k, "config.name": f"name-{seed}",
             "config.trainer.accelerator": "cpu" if seed else "cuda",
             "config.ridge.lambdas": [1e-3, 1e-2], "config.model.width": 16,
             "main_share_on_aux": float(k), "pr": float(seed)}
            for k in (1, 10) for seed in (0, 1)]
    table = summary_table(pd.DataFrame(rows))
    assert len(table) == 2  # one row per k_main, seeds averaged; name/accelerator ignored
    assert "task.params.k_main" in table.index.names
    assert "name" not in table.index.names and "trainer.accelerator" not in table.index.names
    assert sorted(table["main_share_on_aux"]) == [1.0, 10.0]
    assert list(table["pr"]) == [0.5, 0.5]


def test_summary_orders_swept_numbers_numerically():
    rows = [{"run_id": f"w{w}", "regime": "mtl", "regime_label": "MTL", "n_main": 8, "seed": 0,
             "config.model.width": w, "pr": float(w)} for w in (128, 2, 16, 4)]
    table = summary_table(pd.DataFrame(rows))
    assert list(table["pr"]) == [2.0, 4.0, 16.0, 128.0]  # not "128" < "16" < "2" < "4"


def test_diagnosis_calls_kernel_references_lazy_not_rich():
    from mtl_lab.analysis.diagnosis import diagnose

    rows = [{"regime": regime, "regime_label": label, "n_main": 8,
             "config.task.params.k_main": k, "config.finetune.rescale": 1.0,
             "test_loss_main": 0.1 * k, "null_loss_main": 1.0, "main_share_on_aux": reuse}
            for regime, label, reuse in [("lp_ridge", "LP ridge", float("nan")),
                                         ("stl", "STL", float("nan"))]
            for k in (1, 4)]
    labels = diagnose(pd.DataFrame(rows)).set_index("condition")["label"]
    assert labels["LP ridge"] == "lazy (kernel reference)"
    assert labels["STL"] == "rich"


def test_diagnosis_keeps_rescalings_and_other_settings_apart():
    """Runs of different per-neuron rescalings or task correlations are different conditions
    (they were pooled under "PT+FT (c=1)"); a learning rate that only c = 10 uses is implied by
    c and left out of the name; without an m_main axis S is NaN and the label says why."""
    from mtl_lab.analysis.diagnosis import diagnose

    rows = []
    for rho in (1.0, 0.9):
        for c, lr, method, share in [(1.0, 0.5, "none", 0.9), (1.0, 0.5, "enorm", 0.8),
                                     (10.0, 0.005, "none", 0.3)]:
            rows += [{"regime": "ptft", "regime_label": "PT+FT", "n_main": n,
                      "config.finetune.rescale": c, "config.finetune.rescaling": method,
                      "config.training.lr": lr, "config.task.params.correlation": rho,
                      "test_loss_main": 0.1, "null_loss_main": 1.0, "main_share_on_aux": share}
                     for n in (16, 64)]
    table = diagnose(pd.DataFrame(rows)).set_index("condition")
    assert len(table) == 6 and set(table["runs"]) == {2}
    assert table.loc["PT+FT (c=1, rescaling=enorm, correlation=0.9)", "reuse"] == 0.8
    assert table.loc["PT+FT (c=10, rescaling=none, correlation=1)", "label"] == "rich"
    assert table.loc["PT+FT (c=1, rescaling=none, correlation=1)", "label"].startswith(
        "reuses (lazy or nested")
    assert table["sparsity_dependence"].isna().all()


def test_analysis_figures_keep_swept_settings_apart_and_draw_reuse_against_width(tmp_path):
    """A sweep folder's figures: a line per condition (never a mean over a swept setting),
    and when the width is swept, the reuse shares and PR against it."""
    from mtl_lab.analysis.figures import analysis_figures, reuse_width_figure

    rows = []
    for regime, label in (("mtl", "MTL"), ("ptft", "PT+FT")):
        for rho in (1.0, 0.9):
            for width in (8, 64):
                for seed in (0, 1):
                    reused = 0.9 if rho == 1.0 else 0.3 + 0.001 * width
                    rows.append({"run_id": f"{regime}{rho}{width}{seed}", "regime": regime,
                                 "regime_label": label, "seed": seed, "n_main": 64,
                                 "status": "converged", "config.task.params.correlation": rho,
                                 "config.model.width": width, "share_reused": reused,
                                 "share_modified": 0.0, "share_new": 1 - reused,
                                 "share_unused": 0.0, "pr": 4.0 + rho})
    analysis = pd.DataFrame(rows)
    fig = metric_figure(analysis, ["pr"], "t")
    labels = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert "MTL (correlation=0.9, width=64)" in labels and len(labels) == 8
    fig = reuse_width_figure(analysis)
    assert len(fig.axes) == 4  # reused, modified, new, PR at the one n_main
    drawn = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}
    assert drawn["MTL (correlation=0.9)"] == pytest.approx([0.308, 0.364])
    assert drawn["PT+FT (correlation=1)"] == pytest.approx([0.9, 0.9])
    names = [p.name for p in analysis_figures(analysis, pd.DataFrame({"run_id": []}), tmp_path)]
    assert "reuse_vs_width.png" in names
