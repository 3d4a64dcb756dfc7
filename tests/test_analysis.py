"""Feature-reuse tables, regime diagnosis and `mtl-lab analyze` on real (small) runs."""

import pandas as pd
import pytest
import torch
import yaml

import tasks
from mtl_lab.analysis.diagnosis import DiagnosisRule, diagnose
from mtl_lab.analysis.features import feature_table, reuse_summary
from mtl_lab.cli import main
from mtl_lab.comparison import load_task, run_comparison
from mtl_lab.config import validate_config
from mtl_lab.models import DiagonalNetwork, ReLUNetwork
from mtl_lab.regimes import REGIME_FUNCTIONS, GroupContext, Member, PretrainStore, pretrain_key
from mtl_lab.sweeps.run import run_sweep
from tests.conftest import tiny_raw


def test_unit_labels_follow_their_definitions():
    pre = ReLUNetwork(3, 4, 1, ("aux",), seeds=[0])
    with torch.no_grad():
        pre.weights[0][0] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1e-4], [0, 0, 1.0]])
        pre.heads["aux"][0] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    net = pre.select_members([0])
    net.add_head("main", torch.tensor([1.0]), [0])
    with torch.no_grad():
        net.weights[0][0, 1] = torch.tensor([0.0, 0.2, 1.0])  # rotated auxiliary unit
        net.weights[0][0, 3] = torch.tensor([0.0, 0.0, 1.0])  # grew from no aux contribution
        net.heads["main"][0] = torch.tensor([1.0, 1.0, 1.0, 1.0])
        net.weights[0][0, 2] = torch.tensor([0.0, 0.0, 1e-4])  # stays tiny
    table = feature_table(net, pre)
    assert list(table["label"]) == ["reused", "modified", "unused", "new"]
    summary = reuse_summary(table)
    shares = [summary[f"share_{k}"] for k in ("reused", "modified", "new", "unused")]
    assert sum(shares) == pytest.approx(1.0)
    assert summary["main_share_on_aux"] == pytest.approx(shares[0] + shares[1])


def test_diagonal_coordinate_table_reads_beta():
    net = DiagonalNetwork(5, ("aux", "main"), [0], alpha=0.0)
    with torch.no_grad():
        net.w_plus.fill_(1.0)
        net.v_plus["aux"][0] = torch.tensor([1.0, 1.0, 0, 0, 0])
        net.v_plus["main"][0] = torch.tensor([0.5, 0, 0.5, 0, 0])
    table = feature_table(net)
    assert list(table["label"]) == ["reused", "unused", "new", "unused", "unused"]
    assert reuse_summary(table)["main_share_on_aux"] == pytest.approx(0.5)


def _ptft_shares(rho: float, seeds=(0, 1)) -> dict:
    cfg = validate_config(tiny_raw(**{
        "regimes": ["ptft"], "n_main": [64],
        "task.params": {"d": 8, "m_aux": 3, "m_main": 3, "correlation": rho, "n_aux": 256,
                        "n_test": 200},
        "model": {"width": 64, "init_scale": 0.01},
        "training": {"lr": 0.1, "max_steps": 20000, "loss_threshold": 1e-5,
                     "steps_per_call": 2000}}))
    store = PretrainStore(None)
    ctx = GroupContext(cfg, progress=False, pretrain_store=store)
    rows = []
    for seed in seeds:
        member = Member("r", seed, load_task(cfg, seed, 64), 0.1, 1.0, 1e-3)
        (res,) = REGIME_FUNCTIONS["ptft"]([member], ctx)
        pretrained, _ = store.get(pretrain_key(ctx, member))
        teacher = tasks.task_teacher("relu_units", cfg.task_params(64), seed)
        rows.append(reuse_summary(feature_table(res.network, pretrained, teacher)))
    return pd.DataFrame(rows).mean().to_dict()


def test_identical_features_are_reused_and_new_features_are_new():
    """relu_units, PT+FT from a rich pretraining: ρ = 1 main units ride on reused units,
    ρ = 0 main units mostly on new ones."""
    same = _ptft_shares(1.0)
    assert same["share_reused"] > 0.8
    fresh = _ptft_shares(0.0)
    assert fresh["share_new"] > max(fresh["share_reused"], fresh["share_modified"])
    assert fresh["share_reused"] < 0.2


@pytest.fixture(scope="module")
def nested_sweep(tmp_path_factory):
    """Nested sparse_linear tasks (k_main ∈ {1, 10} ⊂ k_aux = 10): STL, PT+FT c = 1, c = 0.01."""
    out = tmp_path_factory.mktemp("nested")
    base = tiny_raw(**{
        "name": "nested", "regimes": ["stl", "ptft"], "seeds": [0, 1], "n_main": [8],
        "task": {"family": "sparse_linear",
                 "params": {"d": 40, "k_aux": 10, "k_main": 1, "nested": True,
                            "n_aux": 128, "n_test": 1000}},
        "model": {"kind": "diagonal", "alpha": 0.01},
        "training": {"lr": 0.1, "max_steps": 20000, "loss_threshold": 1e-8,
                     "steps_per_call": 2000},
        "finetune": {"rescale": 1.0, "head_init_scale": 1e-3}})
    spec = {"name": "nested", "base": base, "axes": {"task.params.k_main": [1, 10]},
            "overrides": {"setting": [{"regimes": ["stl", "ptft"], "finetune.rescale": 1.0},
                                      {"regimes": ["ptft"], "finetune.rescale": 0.01}]}}
    path = out / "nested.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_sweep(path, out / "sweep", progress=False)
    return out / "sweep"


def test_regime_diagnosis_on_nested_tasks(nested_sweep, capsys):
    assert main(["analyze", str(nested_sweep), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "nested feature selection" in printed
    diagnosis = pd.read_parquet(nested_sweep / "diagnosis.parquet").set_index("condition")
    assert diagnosis.loc["PT+FT (c=1)", "label"] == "lazy"
    assert diagnosis.loc["PT+FT (c=0.01)", "label"] == "nested feature selection"
    assert diagnosis.loc["STL", "label"] == "rich"
    # the evidence: c = 0.01 is far more sparsity-dependent than c = 1, both reuse
    s = diagnosis["sparsity_dependence"]
    assert s["PT+FT (c=0.01)"] > s["PT+FT (c=1)"] + 1.0
    assert diagnosis.loc["PT+FT (c=1)", "reuse"] > 0.5
    # a stricter rule changes the labels, so the thresholds really decide
    strict = diagnose(pd.read_parquet(nested_sweep / "analysis.parquet"),
                      DiagnosisRule(sensitivity_threshold=100.0))
    assert "nested feature selection" not in set(strict["label"])


def test_analyze_writes_tables_and_figures(nested_sweep):
    analysis = pd.read_parquet(nested_sweep / "analysis.parquet")
    for col in ["main_share_on_aux", "share_reused", "pr", "cka_reference", "ensd_reference",
                "weight_change", "conservation_drift", "path_norm_l1", "l12", "ptft_penalty"]:
        assert col in analysis, col
    ptft = analysis[analysis["regime"] == "ptft"]
    assert ptft["cka_reference"].notna().all() and ptft["conservation_drift"].notna().all()
    units = pd.read_parquet(nested_sweep / "units.parquet")
    assert set(units["run_id"]) == set(analysis["run_id"])
    for name in ("reuse", "units", "representation", "weights", "norms"):
        assert (nested_sweep / "figures" / f"{name}.png").stat().st_size > 5000


def test_training_monitors_are_logged(tmp_path):
    cfg = validate_config(tiny_raw(**{"regimes": ["mtl"], "n_main": [8],
                                      "logging.monitor_every": 1, "training.max_steps": 600}))
    run_comparison(cfg, tmp_path)
    (csv,) = list((tmp_path / "logs").glob("*/version_0/metrics.csv"))
    logged = pd.read_csv(csv)
    for col in ("representation/pr", "reuse/main_share_on_aux", "path_norm/l1",
                "conservation/max_drift"):
        assert col in logged and logged[col].notna().any(), col
    pr = logged["representation/pr"].dropna()
    assert (pr >= 1.0 - 1e-6).all() and (pr <= 16 + 1e-6).all()  # 1 ≤ PR ≤ width
    assert (logged["reuse/main_share_on_aux"].dropna().between(0, 1)).all()


def test_analyze_logs_figures_to_wandb_when_enabled(tmp_path):
    from mtl_lab.analysis.report import analyze
    from mtl_lab.tracking import read_wandb_history

    cfg = validate_config(tiny_raw(**{"regimes": ["stl", "ptft"], "n_main": [8],
                                      "training.max_steps": 300,
                                      "logging.wandb": {"enabled": True}}))
    run_comparison(cfg, tmp_path)
    before = set((tmp_path / "wandb").glob("offline-run-*"))
    out = analyze(tmp_path, progress=False)
    ids = set(pd.read_parquet(tmp_path / "results.parquet")["wandb_id"])
    (new_run,) = {p for p in set((tmp_path / "wandb").glob("offline-run-*")) - before
                  if _wandb_run_id(p) not in ids}
    history, _ = read_wandb_history(next(new_run.glob("run-*.wandb")))
    logged = set().union(*history)
    for path in out["figures"]:  # images are logged as nested records with a _type
        assert f"figures/{path.stem}/_type" in logged
    assert "analysis/_type" in logged and "analysis/nrows" in logged
    # each training run's own wandb run gets its analyzer summary and per-unit table
    results = pd.read_parquet(tmp_path / "results.parquet")
    for run_id, wandb_id in zip(results["run_id"], results["wandb_id"]):
        segments = sorted(p for p in (tmp_path / "wandb").glob("offline-run-*")
                          if _wandb_run_id(p) == wandb_id)
        assert len(segments) == 2  # the training segment and the analysis segment
        history, summary = read_wandb_history(next(segments[-1].glob("run-*.wandb")))
        assert "analysis/path_norm_l1" in summary and "analysis/main_share_on_aux" in summary
        assert any("units/_type" in row for row in history), run_id


def _wandb_run_id(folder) -> str:
    """The run id in an offline run folder's name: offline-run-<time>-<id>, where wandb appends
    -1, -2, … when a resumed segment starts within the same second as the previous one."""
    return folder.name.split("-")[3]


def test_weight_change_measures():
    from mtl_lab.analysis.weights import layer_changes, relative_change, unit_changes

    net = ReLUNetwork(3, 5, 2, ("main",), seeds=[0, 1])
    same = net.select_members([0, 1])
    assert all(torch.all(v == 0) for v in layer_changes(net, same).values())
    with torch.no_grad():
        same.weights[0][1] *= 3.0  # member 1, layer 0 grows threefold
    change = layer_changes(same, net)
    assert change["weights.0"][0] == 0
    assert change["weights.0"][1] == pytest.approx(2.0)
    w = torch.randn(4, 3)
    per_unit = unit_changes(2.0 * w, w)
    torch.testing.assert_close(per_unit["norm_ratio"], torch.full((4,), 2.0))
    torch.testing.assert_close(per_unit["direction_change"], torch.zeros(4), atol=1e-6, rtol=0)
    flipped = unit_changes(-w, w)["direction_change"]
    torch.testing.assert_close(flipped, torch.full((4,), 2.0))
    assert relative_change(w.unsqueeze(0), w.unsqueeze(0)).item() == 0


def test_analysis_rebuilds_each_runs_exact_starting_point(tmp_path):
    """With a vanishing learning rate the trained network is its start: the reconstructed start
    must then match it (weight change and conservation drift ≈ 0) for every regime."""
    from mtl_lab.analysis.runs import analyze_run_dir

    cfg = validate_config(tiny_raw(**{"regimes": ["stl", "mtl", "ptft"], "n_main": [8],
                                      "training": {"lr": 1e-12, "max_steps": 2},
                                      "pretraining": {"lr": 0.05, "max_steps": 200},
                                      "finetune": {"rescale": 0.5, "head_init_scale": 0.01}}))
    run_comparison(cfg, tmp_path)
    analysis, _ = analyze_run_dir(tmp_path, progress=False)
    assert (analysis["weight_change"] < 1e-6).all(), analysis[["regime", "weight_change"]]
    assert (analysis["conservation_drift"] < 1e-5).all()


def test_sparsity_dependence_counts_solved_tasks_alike():
    """Two tasks both solved (relative loss below the floor) are not 'sparsity dependence'."""
    rows = [{"regime": "ptft", "regime_label": "PT+FT", "config.finetune.rescale": 1.0,
             "config.task.params.k_main": k, "n_main": 16, "test_loss_main": loss,
             "null_loss_main": 1.0, "main_share_on_aux": 0.9}
            for k, loss in ((1, 1e-7), (10, 1e-4))]
    solved = diagnose(pd.DataFrame(rows))
    assert solved.loc[0, "sparsity_dependence"] == pytest.approx(0.0)
    assert solved.loc[0, "label"] == "lazy"
    strict = diagnose(pd.DataFrame(rows), DiagnosisRule(solved_fraction=1e-9))
    assert strict.loc[0, "sparsity_dependence"] == pytest.approx(3.0)
    assert strict.loc[0, "label"] == "nested feature selection"
