"""The Lightning modules with a plain Trainer and a user's own data: three tasks, mixed batches,
dict and tuple batches, per-task metrics, checkpoints, finetuning and linear probing."""

from __future__ import annotations

import copy

import datasets
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mtl_lab.modules import FinetuneModule, MultiTaskModule, TaskSpec, split_batch

TRUNK = {"class_path": "mtl_lab.modules.trunks.MLPTrunk",
         "init_args": {"in_dim": 5, "width": 32, "depth": 1, "bias": True, "init_scale": 1.0}}
TASKS = [TaskSpec("a"), TaskSpec("b"), TaskSpec("c", "cross_entropy", 3)]


def three_tasks(n: int = 384, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x ~ N(0, I₅); task a: y = x₀ (regression), b: y = x₁² − 1, c: argmax of x₂…x₄ (3 classes);
    samples cycle through the tasks, so every batch mixes them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    task = torch.arange(n) % 3
    y = torch.where(task == 0, x[:, 0], torch.where(task == 1, x[:, 1] ** 2 - 1,
                                                     x[:, 2:5].argmax(1).float()))
    return x, y, task


def trainer(tmp_path, epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def module(**kwargs) -> MultiTaskModule:
    kwargs.setdefault("optimizer", {"name": "adam", "lr": 1e-2})
    return MultiTaskModule(TRUNK, TASKS, **kwargs)


def test_tuple_batches_three_tasks_metrics_and_checkpoint(tmp_path):
    x, y, task = three_tasks()
    train = DataLoader(TensorDataset(x, y, task), batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(*three_tasks(192, seed=1)), batch_size=64)
    model = module()
    t = trainer(tmp_path, 15)
    before = t.validate(model, val, verbose=False)[0]
    t.fit(model, train, val)
    assert {"val/a/loss", "val/c/accuracy", "train/b/loss"} <= set(t.callback_metrics)
    after = t.test(model, val, verbose=False)[0]
    for name in ("a", "b", "c"):
        assert f"test/{name}/loss" in after
        assert after[f"test/{name}/loss"] < before[f"val/{name}/loss"]
    assert after["test/c/accuracy"] > 0.6  # chance is 1/3
    path = tmp_path / "mt.ckpt"
    t.save_checkpoint(path)
    restored = MultiTaskModule.load_from_checkpoint(path)
    restored.eval()
    model.eval()
    with torch.no_grad():
        for name in ("a", "b", "c"):
            assert torch.equal(restored(x[:8], name), model(x[:8], name))


def test_dict_batches_from_a_datasets_dataset(tmp_path):
    x, y, task = three_tasks(192)
    names = ["a", "b", "c"]
    ds = datasets.Dataset.from_dict({"x": x.tolist(), "y": y.tolist(),
                                     "task": [names[int(t)] for t in task]}).with_format(
        "torch", columns=["x", "y"], output_all_columns=True)
    batch = next(iter(DataLoader(ds, batch_size=12)))
    assert isinstance(batch, dict) and batch["task"][:3] == ["a", "b", "c"]
    model = module()
    t = trainer(tmp_path, 3)
    t.fit(model, DataLoader(ds, batch_size=24))
    assert t.callback_metrics["train/loss"].isfinite()
    assert {"train/a/loss", "train/b/loss", "train/c/loss"} <= set(t.callback_metrics)


def test_one_task_batches_and_plain_pairs_for_one_task(tmp_path):
    x, y, _ = three_tasks(96)
    split = split_batch({"x": x, "y": y, "task": "b"}, ("a", "b", "c"))
    assert list(split.index) == ["b"] and split.index["b"].numel() == 96
    stl = MultiTaskModule(TRUNK, ["main"], optimizer={"name": "sgd", "lr": 0.05})
    trainer(tmp_path, 2).fit(stl, DataLoader(TensorDataset(x, x[:, 0]), batch_size=32))
    with pytest.raises(ValueError, match=r"task 'z'.*\['a', 'b', 'c'\]"):
        split_batch((x, y, ["z"] * 96), ("a", "b", "c"))
    with pytest.raises(ValueError, match="no 'task'"):
        split_batch((x, y), ("a", "b"))


def test_finetuning_starts_from_the_rescaled_copy_and_leaves_the_pretrained_alone(tmp_path):
    x, y, task = three_tasks(192)
    pretrained = module()
    trainer(tmp_path, 2).fit(pretrained, DataLoader(TensorDataset(x, y, task), batch_size=32))
    snapshot = copy.deepcopy(pretrained.state_dict())
    ft = FinetuneModule.from_pretrained(pretrained, "new", rescale=0.1, head_init_scale=1e-3,
                                        optimizer={"name": "sgd", "lr": 0.05})
    for (name, p_ft), p_pt in zip(ft.trunk.named_parameters(), pretrained.trunk.parameters()):
        assert torch.equal(p_ft, 0.1 * p_pt), name  # exactly c × θ, weights and biases
    head = ft.heads["new"].weight.detach()
    assert head.abs().max() < 1e-2 and head.std() == pytest.approx(1e-3 / 32**0.5, rel=0.5)
    trainer(tmp_path, 3).fit(ft, DataLoader(TensorDataset(x, x[:, 3]), batch_size=32))
    assert not torch.equal(ft.trunk.layers[0].weight, 0.1 * pretrained.trunk.layers[0].weight)
    for key, value in pretrained.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    path = tmp_path / "ft.ckpt"
    t = trainer(tmp_path, 1)
    t.fit(ft, DataLoader(TensorDataset(x[:32], x[:32, 3]), batch_size=32))
    t.save_checkpoint(path)
    restored = FinetuneModule.load_from_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x[:4], "new"), ft.eval()(x[:4], "new"))


def test_linear_probe_trains_only_the_head(tmp_path):
    pretrained = module()
    lp = FinetuneModule.from_pretrained(pretrained, "new", train="head",
                                        optimizer={"name": "sgd", "lr": 0.1})
    trunk_before = copy.deepcopy(lp.trunk.state_dict())
    head_before = lp.heads["new"].weight.detach().clone()
    x, _, _ = three_tasks(96)
    trainer(tmp_path, 3).fit(lp, DataLoader(TensorDataset(x, x[:, 0]), batch_size=32))
    for key, value in lp.trunk.state_dict().items():
        assert torch.equal(value, trunk_before[key]), key
    assert not torch.equal(lp.heads["new"].weight, head_before)
    assert not lp.trunk.training  # a frozen trunk stays in eval mode


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="per_sample"):
        module(weighting="nonsense")
    with pytest.raises(ValueError, match="train must be"):
        FinetuneModule.from_pretrained(module(), "new", train="some")
    with pytest.raises(ValueError, match="cross_entropy"):
        TaskSpec("c", "cross_entropy", 1)
    with pytest.raises(ValueError, match="feature_dim"):
        MultiTaskModule(torch.nn.Linear(5, 4), ["a"])


def test_module_fits_choose_their_threads_and_restore_them(tmp_path):
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(torch.get_num_threads())

    x, y, task = three_tasks(96)
    before = torch.get_num_threads()
    small = module(threads="auto")  # a tiny step: one thread
    trainer(tmp_path, 1, callbacks=[Record()]).fit(small, DataLoader(TensorDataset(x, y, task),
                                                                     batch_size=32))
    assert set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        module(threads=0)
