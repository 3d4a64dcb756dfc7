"""Real data and deep trunks (issue 12): class_split tasks with ResNet and ViT trunks through the
same `mtl-lab run` / `sweep` machinery — the experiment files end to end at reduced size, the
rows they make, one shared pretraining, determinism, clear errors before any compute, and the
figures of the report."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from mtl_lab.cli import main
from mtl_lab.config import (
    DEEP_KINDS,
    TRUNK_ARGS,
    ConfigError,
    dump_config,
    set_path,
    validate_config,
)
from mtl_lab.modules.experiment import (
    DeepContext,
    evaluate,
    load_module,
    load_run_data,
    run_deep,
    trunk_spec,
)
from mtl_lab.modules.trunks import build_trunk
from mtl_lab.sweeps.deep_figures import deep_figures, layer_columns, layer_table
from mtl_lab.sweeps.plan import group_runs, run_config, runs_of
from mtl_lab.sweeps.run import plan_sweep, run_sweep
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "experiments" / "digits_split.yaml"
CIFAR = ROOT / "configs" / "experiments" / "cifar100_split.yaml"
MEASURES = ("pr_a", "pr_b", "ensd", "cka")


def deep_raw(**changes) -> dict:
    """A small resnet-on-digits comparison config as a raw mapping."""
    raw = {"name": "deep", "regimes": ["stl", "mtl", "ptft"], "seeds": [0], "n_main": [10],
           "task": {"family": "class_split", "params": {"source": "digits", "n_aux": 80}},
           "model": {"kind": "resnet", "trunk_args": {"widths": [4, 8], "blocks": [1, 1]}},
           "training": {"mode": "minibatch", "optimizer": "sgd", "lr": 0.05, "batch_size": 16,
                        "epochs": 2},
           "logging": {"progress": False, "csv": False}}
    for key, value in changes.items():
        set_path(raw, key, value)
    return raw


def shrunk(path: Path, out: Path, edit) -> Path:
    """A copy of a sweep file with ``edit(spec)`` applied (smaller sizes, another source)."""
    spec = yaml.safe_load(path.read_text())
    edit(spec)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


# ----------------------------------------------------------------------------- digits_split.yaml


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """configs/experiments/digits_split.yaml as written (issue 12: the quick real-data
    experiment runs in CI): 2 seeds × 3 n_main × (STL, MTL, PT+FT at four c), ~30–70 s."""
    root = tmp_path_factory.mktemp("digits")

    def edit(spec):
        spec["base"]["logging"] = {**spec["base"].get("logging", {}), "progress": False}

    sweep = shrunk(DIGITS, root / "digits.yaml", edit)
    out = root / "out"
    return sweep, out, run_sweep(sweep, out, progress=False, jobs=2)


def test_digits_experiment_runs_end_to_end(digits_run):
    _, out, table = digits_run
    # per n_main: STL, MTL and PT+FT at each of the four c
    assert len(table) == 2 * 3 * (2 + 4) and set(table["regime"]) == {"stl", "mtl", "ptft"}
    assert sorted(table["config.finetune.rescale"][table["regime"] == "ptft"].unique()) == [
        0.125, 0.5, 1.0, 2.0]
    for column in ("test_loss_main", "test_acc_main", "train_loss_main"):
        assert np.isfinite(table[column].astype(float)).all(), column
    assert table["test_acc_main"].between(0, 1).all()
    assert np.allclose(table["null_loss_main"].astype(float), math.log(2))
    assert table["status"].eq("epochs").all() and table["device"].eq("cpu").all()
    assert table["test_acc_aux"][table["regime"] == "mtl"].notna().all()
    # the layer-wise measures: every layer of the trunk and the logits, on PT+FT rows only
    layers = ["stem", "stage1", "stage2", "pool", "logits"]
    assert list(layer_columns(table)) == layers
    columns = [f"layer.{name}.{m}" for name in layers for m in MEASURES]
    ptft = table[table["regime"] == "ptft"]
    pr_ensd = [c for c in columns if not c.endswith(".cka")]
    assert np.isfinite(ptft[pr_ensd].astype(float)).all().all()
    for name in layers:  # CKA: in [-1, 1], or NaN where a network's features hardly vary
        cka = ptft[f"layer.{name}.cka"].astype(float)  # (collapsed onto one direction: PR ≈ 1)
        pr = ptft[[f"layer.{name}.pr_a", f"layer.{name}.pr_b"]].astype(float).min(axis=1)
        assert (cka.between(-1.01, 1.01) | (cka.isna() & (pr < 1.001))).all(), name
    assert table.loc[table["regime"] != "ptft", columns].isna().all().all()


def test_ptft_runs_share_one_pretraining(digits_run):
    _, out, table = digits_run
    ptft = table[table["regime"] == "ptft"]
    assert ptft.groupby("seed")["pretrain_key"].nunique().eq(1).all()  # one per seed
    assert ptft.groupby("seed")["pretrain_train_loss"].nunique().eq(1).all()
    assert ptft["pretrain_key"].nunique() == 2
    assert len(list((out / "checkpoints").glob("deep-pretrain-*.ckpt"))) == 2
    # a rerun of the same file trains nothing and returns the same table
    again = run_sweep(digits_run[0], out, progress=False)
    pd.testing.assert_series_equal(again.set_index("run_id")["test_loss_main"].sort_index(),
                                   table.set_index("run_id")["test_loss_main"].sort_index())


def test_a_saved_run_reloads_to_its_numbers(digits_run):
    sweep, out, table = digits_run
    row = table[table["regime"] == "ptft"].iloc[0]
    module, extra = load_module(out / "checkpoints" / f"run-{row['run_id']}.ckpt")
    assert extra["run_id"] == row["run_id"]
    cfg = plan_sweep(sweep).runs[0].cfg
    data = load_run_data(cfg, int(row["seed"]), int(row["n_main"]))
    loss, acc = evaluate(module, "main", data.main_test, torch.device("cpu"))
    assert loss == pytest.approx(row["test_loss_main"], rel=1e-6)
    assert acc == pytest.approx(row["test_acc_main"])


def test_report_figures_from_a_results_table(digits_run, tmp_path):
    _, _, table = digits_run
    made = deep_figures(table, tmp_path)
    assert [p.name for p in made] == ["accuracy_vs_n.png", "ensd_vs_rescale.png",
                                      "pr_vs_rescale.png"]
    assert all(p.stat().st_size > 1000 for p in made)
    numbers = layer_table(table, "ensd")
    assert len(numbers) == 3 * 4 * 5 and numbers["count"].eq(2).all()  # n_main × c × layers
    ptft = table[(table["regime"] == "ptft") & (table["n_main"] == 10)
                 & (table["config.finetune.rescale"] == 0.5)]
    cell = numbers[(numbers["n_main"] == 10) & (numbers["config.finetune.rescale"] == 0.5)
                   & (numbers["layer"] == "stage1")]
    assert float(cell["mean"].iloc[0]) == pytest.approx(float(ptft["layer.stage1.ensd"].mean()))


def test_mtl_lab_report_shows_the_real_data_figures(digits_run, capsys):
    _, out, _ = digits_run
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    for name in ("accuracy_vs_n.png", "ensd_vs_rescale.png", "pr_vs_rescale.png"):
        assert f"figures/{name}" in page and (out / "report" / "figures" / name).exists()
    assert "ENSD between the pretrained and the finetuned network" in page


def test_figures_facet_by_trunk_and_keep_dotted_layer_names(tmp_path):
    rows = []
    for trunk, layers in (("resnet18", ["stem", "pool"]), ("vit", ["blocks.0", "pool"])):
        for seed in (0, 1):
            for c in (0.5, 1.0):
                row = {"regime_label": "PT+FT", "seed": seed, "n_main": 10, "sweep.trunk": trunk,
                       "config.finetune.rescale": c, "test_acc_main": 0.5 + c / 4,
                       "layers": ",".join(layers)}
                row.update({f"layer.{name}.ensd": 1.0 + c + seed for name in layers})
                rows.append(row)
    table = pd.DataFrame(rows)
    numbers = layer_table(table)
    vit = numbers[numbers["sweep.trunk"] == "vit"]
    assert vit["layer"].unique().tolist() == ["blocks.0", "pool"]  # the rows' order, per trunk
    assert vit["depth"].unique().tolist() == [0, 1]
    assert vit["mean"].tolist() == [2.0, 2.0, 2.5, 2.5]  # c = 0.5, then c = 1
    assert len(deep_figures(table, tmp_path)) == 2  # accuracy and ENSD (no pr_b columns)


# ----------------------------------------------------------------------------- cifar100_split.yaml


def write_split_imagefolder(root: Path, classes: int = 5, train: int = 6, test: int = 2) -> Path:
    """CIFAR's layout in miniature: train/ and test/, one folder of RGB images per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                pixels[..., c % 3] //= 4  # a little class signal
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_cifar100_file_plans_the_papers_setup():
    plan = plan_sweep(CIFAR)
    runs = plan.runs
    assert len(runs) == 2 * 3 * 7 * (3 + 5)  # trunks × seeds × n_main × (STL, MTL, PT+LP, 5 c)
    assert {r.n_main for r in runs} == {10, 20, 50, 100, 200, 500, 1000}
    assert {r.cfg.finetune.rescale for r in runs if r.regime == "ptft"} == {
        0.125, 0.25, 0.5, 1.0, 2.0}
    by_kind = {r.cfg.model.kind: r.cfg for r in runs}
    assert by_kind["resnet"].training.optimizer == "sgd"
    assert by_kind["resnet"].training.momentum == 0.9
    assert by_kind["resnet"].model.trunk_args["widths"] == [64, 128, 256, 512]  # ResNet-18
    assert by_kind["vit"].training.optimizer == "adam"
    for cfg in by_kind.values():
        assert cfg.trainer.precision == "bf16-mixed"
        assert cfg.task.params == {"source": "cifar100", "label_column": "fine_label",
                                   "main_classes": 2}
        assert cfg.pretraining.optimizer == cfg.training.optimizer  # inherited key by key


def test_cifar100_file_runs_on_a_local_imagefolder(tmp_path):
    images = write_split_imagefolder(tmp_path / "images")

    def edit(spec):
        base = spec["base"]
        base.update(seeds=[0], n_main=[4])
        base["task"]["params"].update(source=str(images), label_column="label")
        base["training"].update(epochs=1, batch_size=8)
        base["logging"] = {"monitors": False, "progress": False, "csv": False}
        trunks = spec["overrides"]["trunk"]
        trunks["resnet18"]["model.trunk_args"] = {"widths": [4, 8], "blocks": [1, 1]}
        trunks["vit"]["model.trunk_args"] = {"patch": 4, "dim": 8, "depth": 1, "heads": 2}

    table = run_sweep(shrunk(CIFAR, tmp_path / "cifar.yaml", edit), tmp_path / "out",
                      progress=False)
    assert len(table) == 2 * (3 + 5)
    assert set(table["sweep.trunk"]) == {"resnet18", "vit"}
    assert set(table["input_shape"]) == {"3×8×8"}
    assert set(table["config.trainer.precision"]) == {"bf16-mixed"}  # as the file says
    vit = table[(table["sweep.trunk"] == "vit") & (table["regime"] == "ptft")]
    assert list(layer_columns(vit.dropna(axis=1, how="all"))) == [
        "embed", "blocks.0", "norm", "pool", "logits"]
    assert np.isfinite(table["test_loss_main"].astype(float)).all()
    assert table.groupby("sweep.trunk")["pretrain_key"].nunique().eq(1).all()


# ----------------------------------------------------------------------------- determinism


def test_same_config_and_seed_give_the_same_numbers():
    cfg = validate_config(deep_raw())
    first = run_deep("ptft", 0, 10, cfg, DeepContext())
    second = run_deep("ptft", 0, 10, cfg, DeepContext())  # pretrained again from scratch
    for key in ("test_loss_main", "train_loss_main", "pretrain_train_loss"):
        assert first.metrics[key] == second.metrics[key], key
    other = run_deep("ptft", 1, 10, validate_config(deep_raw(seeds=[1])), DeepContext())
    assert other.metrics["test_loss_main"] != first.metrics["test_loss_main"]
    augmented = validate_config(deep_raw(**{"task.params.augment": True}))
    runs = [run_deep("stl", 0, 10, augmented, DeepContext()) for _ in range(2)]
    assert runs[0].metrics["test_loss_main"] == runs[1].metrics["test_loss_main"]
    assert runs[0].metrics["test_loss_main"] != run_deep("stl", 0, 10, cfg, DeepContext()
                                                         ).metrics["test_loss_main"]


def test_enorm_balances_a_pretrained_resnet_before_finetuning():
    """finetune.rescaling: enorm on a ResNet (issue 13): the finetuning module starts from the
    pretrained trunk with every BatchNorm → ReLU → conv channel balanced (h_c = 0) and the same
    function, and so trains to other numbers than plain c = 1 from the same pretraining."""
    from mtl_lab.modules import FinetuneModule
    from mtl_lab.symmetry import Rescaling
    from mtl_lab.symmetry.channels import channel_balance

    reference = run_deep("ptft", 0, 10, validate_config(deep_raw()), DeepContext())
    balanced = run_deep("ptft", 0, 10, validate_config(deep_raw(
        **{"finetune.rescaling": "enorm"})), DeepContext())
    assert "Rescaling('enorm')" in balanced.module.hparams["rescale"]
    assert balanced.metrics["pretrain_train_loss"] == reference.metrics["pretrain_train_loss"]
    assert balanced.metrics["test_loss_main"] != reference.metrics["test_loss_main"]
    # the start of that finetuning, rebuilt from the pretrained module through the same hook
    pretrained = reference.pretrained
    assert float(channel_balance(pretrained.trunk).abs().max()) > 1e-2
    start = FinetuneModule.from_pretrained(pretrained, "main", rescale=Rescaling("enorm"))
    assert float(channel_balance(start.trunk).abs().max()) < 1e-5
    images = torch.randn(4, *reference.data.input_shape)
    pretrained.eval()
    start.eval()
    with torch.no_grad():
        assert torch.allclose(start.trunk(images), pretrained.trunk(images), rtol=1e-4,
                              atol=1e-5)


def test_a_corrupt_pretrained_module_is_refused_before_compute(tmp_path):
    from mtl_lab.errors import CheckpointError
    from mtl_lab.sweeps.execute import preflight

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "deep-pretrain-0123.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="deep-pretrain-0123.ckpt"):
        preflight(tmp_path)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, key, message", [
    ({"model.trunk_args": {"widths": [4], "blocks": [1], "widht": 3}},
     "model.trunk_args.widht", "unknown key"),
    ({"model.trunk_args": {"widths": [4, 8], "blocks": [1]}}, "model.trunk_args",
     "same length"),
    ({"model.trunk_args": {"seed": 3}}, "model.trunk_args.seed", "run's seed"),
    ({"model.kind": "vit", "model.trunk_args": {"dim": 10, "heads": 3}}, "model.trunk_args",
     "multiple of heads"),
    ({"task.family": "relu_units", "task.params": {"d": 5, "m_aux": 2, "m_main": 2}},
     "model.kind", "needs task.family class_split"),
    ({"regimes": ["stl", "lp_ridge"]}, "regimes.1", "lp_ridge .LP ridge. does not run"),
    ({"training.mode": "full_batch"}, "training.mode", "minibatch"),
    ({"pretraining": {"mode": "full_batch"}}, "pretraining.mode", "minibatch"),
    ({"task.params.source": "./no/such/images"}, "task.params.source", "no such file"),
    ({"task.params.colour": 1}, "task.params.colour", "unknown key"),
    ({"model.width": 64}, "model.width", "trunk_args"),
    ({"trainer.precision": "fp8"}, "trainer.precision", "bf16-mixed"),
    ({"finetune.rescaling": "path_conditioned"}, "finetune.rescaling",
     r"model.kind relu\), not kind 'resnet'"),
    ({"model.kind": "vit", "model.trunk_args": {}, "finetune.rescaling": "enorm"},
     "finetune.rescaling", "not kind 'vit'"),
])
def test_bad_deep_configs_are_clear_errors(changes, key, message):
    with pytest.raises(ConfigError) as err:
        validate_config(deep_raw(**changes), "deep.yaml")
    text = str(err.value)
    assert "deep.yaml" in text and key in text, text
    assert pytest.importorskip("re").search(message, text), text


@pytest.mark.parametrize("changes, key", [
    ({"model.trunk_args": {"widths": [4]}}, "model.trunk_args"),
    ({"trainer.precision": "bf16-mixed"}, "trainer.precision"),
    ({"trainer.devices": 2}, "trainer.devices"),
    ({"task.family": "class_split", "task.params": {}}, "task.family"),
])
def test_engine_configs_refuse_deep_settings(changes, key):
    with pytest.raises(ConfigError, match=key):
        validate_config(tiny_raw(**changes), "tiny.yaml")


def test_errors_come_before_any_compute(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deep_raw(**{"model.trunk_args": {"depht": 2}})))
    assert main(["run", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "model.trunk_args.depht: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_trunk_shapes_come_from_the_images_or_must_match_them():
    cfg = validate_config(deep_raw())
    assert cfg.model.trunk_args["in_channels"] is None  # left to the data, not defaulted to 3
    spec = trunk_spec(cfg, (1, 8, 8), seed=4)
    assert spec["init_args"]["in_channels"] == 1 and spec["init_args"]["seed"] == 4
    assert build_trunk(spec)(torch.randn(2, 1, 8, 8)).shape == (2, 8)
    text = dump_config(cfg)
    assert "in_channels: null  # from the data: 1 (the images of 'digits' are 1×8×8)" in text
    assert validate_config(yaml.safe_load(text)) == cfg  # the dump validates back
    wrong = validate_config(deep_raw(**{"model.trunk_args": {"in_channels": 3}}))
    with pytest.raises(ConfigError, match=r"in_channels = 3, but the images .* 1×8×8"):
        trunk_spec(wrong, (1, 8, 8), seed=0)
    vit = validate_config(deep_raw(**{"model.kind": "vit", "model.trunk_args": {"patch": 3}}))
    with pytest.raises(ConfigError, match="patch = 3 does not divide"):
        trunk_spec(vit, (1, 8, 8), seed=0)


def test_trunk_args_mirror_the_trunk_constructors():
    import importlib

    for kind, path in DEEP_KINDS.items():
        module, _, name = path.rpartition(".")
        signature = inspect.signature(getattr(importlib.import_module(module), name))
        params = {k: p.default for k, p in signature.parameters.items() if k != "seed"}
        fields = TRUNK_ARGS[kind].model_fields
        assert set(fields) == set(params), kind
        for key, field in fields.items():
            if field.default is not None:  # the shape arguments default to the images'
                default = params[key]
                assert field.default == (list(default) if isinstance(default, tuple)
                                         else default), (kind, key)


def test_run_ids_of_engine_configs_leave_the_new_keys_out():
    shared = run_config(validate_config(tiny_raw()))
    assert "trunk_args" not in shared["model"]
    assert not {"devices", "strategy", "precision"} & set(shared["trainer"])
    deep = run_config(validate_config(deep_raw(**{"trainer.precision": "bf16-mixed"})))
    assert deep["trainer"] == {"accelerator": "auto", "precision": "bf16-mixed"}
    assert deep["model"]["trunk_args"]["widths"] == [4, 8]


def test_deep_groups_share_pretraining_per_seed_and_split_the_rest():
    cfg = validate_config(deep_raw(n_main=[10, 20], regimes=["stl", "mtl", "ptft", "ptlp"]))
    groups = group_runs(runs_of(cfg))
    sizes = sorted((g[0].regime, len(g)) for g in groups)
    assert sizes == [("mtl", 1), ("mtl", 1), ("ptft", 2), ("ptlp", 2), ("stl", 1), ("stl", 1)]


def test_loss_figures_name_cross_entropy_for_real_data(digits_run):
    from mtl_lab.plots import comparison_figure, loss_unit

    _, _, table = digits_run
    assert loss_unit(table) == "cross-entropy"
    assert loss_unit(pd.DataFrame({"config.task.family": ["relu_units"]})) == "MSE"
    fig = comparison_figure(table)
    assert "(cross-entropy)" in fig.axes[0].get_ylabel()


def test_dry_run_states_a_deep_sweeps_cost_in_epochs(capsys):
    assert main(["sweep", str(DIGITS), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cost: 36 deep fits, 720 epochs of minibatches" in out  # 36 runs × 20 epochs
    assert "plus 2 pretraining fit(s)" in out and "member gradient steps" not in out


def test_analyze_points_deep_folders_to_the_report(digits_run, capsys):
    _, out, _ = digits_run
    assert main(["analyze", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds deep runs (model.kind resnet)" in err and "mtl-lab report" in err
    assert not (out / "analysis.parquet").exists()
