"""The two paths are one science: full-batch SGD through the Lightning modules, from the engine's
starting point on the same data, reaches the engine's solution for STL, MTL and PT+FT."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mtl_lab.comparison import load_task, run_comparison
from mtl_lab.config import validate_config
from mtl_lab.modules import FinetuneModule, MultiTaskModule, make_weighting, network_parts
from mtl_lab.regimes import build_network
from tests.conftest import tiny_raw

STEPS, LR, N_MAIN = 300, 0.05, 16
C, GAMMA = 0.5, 1e-2


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The engine's results (loss threshold 0: every run takes exactly STEPS steps) and data."""
    raw = tiny_raw(regimes=["stl", "mtl", "ptft"], seeds=[0], n_main=[N_MAIN], **{
        "training.lr": LR, "training.max_steps": STEPS, "training.loss_threshold": 0.0,
        "training.steps_per_call": 100, "finetune.rescale": C,
        "finetune.head_init_scale": GAMMA, "logging.monitors": False})
    cfg = validate_config(raw)
    rows = run_comparison(cfg, tmp_path_factory.mktemp("engine"), progress=False)
    engine = dict(zip(rows["regime"], rows["test_loss_main"]))
    return cfg, load_task(cfg, 0, N_MAIN), engine


def _full_batch(module: L.LightningModule, loader: DataLoader) -> None:
    """STEPS steps of plain gradient descent: one full batch per epoch, SGD without momentum."""
    L.Trainer(max_epochs=STEPS, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, loader)


def _loader(data, tasks: list[str]) -> DataLoader:
    xs = [data.x[f"{t}_train"] for t in tasks]
    ys = [data.y[f"{t}_train"] for t in tasks]
    ids = [torch.full((len(y),), i) for i, y in enumerate(ys)]
    ds = TensorDataset(torch.cat(xs), torch.cat(ys), torch.cat(ids))
    return DataLoader(ds, batch_size=len(ds))


def _test_loss(module: MultiTaskModule, data) -> float:
    with torch.no_grad():
        pred = module.eval()(data.x["main_test"], "main")
    return float(((pred.double() - data.y["main_test"].double()) ** 2).mean())


def _module(cfg, data, tasks: tuple[str, ...]) -> MultiTaskModule:
    trunk, heads = network_parts(build_network(cfg.model, data.in_dim, tasks, [0]))
    return MultiTaskModule(trunk, list(tasks), heads=heads, weighting="per_sample",
                           optimizer={"name": "sgd", "lr": LR})


def test_stl_module_reaches_the_engine_solution(setting):
    cfg, data, engine = setting
    module = _module(cfg, data, ("main",))
    _full_batch(module, _loader(data, ["main"]))
    assert _test_loss(module, data) == pytest.approx(engine["stl"], rel=1e-4)


def test_mtl_module_with_per_sample_weighting_reaches_the_engine_solution(setting):
    cfg, data, engine = setting
    module = _module(cfg, data, ("aux", "main"))
    _full_batch(module, _loader(data, ["aux", "main"]))
    assert _test_loss(module, data) == pytest.approx(engine["mtl"], rel=1e-4)


def test_ptft_module_reaches_the_engine_solution(setting):
    cfg, data, engine = setting
    pretrained = _module(cfg, data, ("aux",))
    _full_batch(pretrained, _loader(data, ["aux"]))
    finetune = FinetuneModule.from_pretrained(pretrained, "main", rescale=C,
                                              head_init_scale=GAMMA, seed=0,
                                              optimizer={"name": "sgd", "lr": LR})
    _full_batch(finetune, _loader(data, ["main"]))
    assert _test_loss(finetune, data) == pytest.approx(engine["ptft"], rel=1e-4)


def test_the_paths_disagree_when_the_science_differs(setting):
    """The tolerance can fail: MTL with equal weighting is a different objective here."""
    cfg, data, engine = setting
    module = _module(cfg, data, ("aux", "main"))
    module.weighting = make_weighting("equal", ["aux", "main"])
    _full_batch(module, _loader(data, ["aux", "main"]))
    assert _test_loss(module, data) != pytest.approx(engine["mtl"], rel=1e-4)
