"""From a task's ``DatasetDict`` to tensors, and from members' data to batched loss terms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mtl_lab.engine.objective import LossTerm

if TYPE_CHECKING:  # the engine path never imports datasets (slow, and absent on some GPU images)
    import datasets

SPLIT_NAMES = ("aux_train", "main_train", "aux_test", "main_test")


@dataclass(frozen=True)
class TaskTensors:
    """x (n, d) and y (n,) float32 tensors for each of the four splits of a task."""

    x: dict[str, Tensor]
    y: dict[str, Tensor]

    @classmethod
    def from_dataset_dict(cls, dd: datasets.DatasetDict) -> TaskTensors:
        missing = [s for s in SPLIT_NAMES if s not in dd]
        if missing:
            raise ValueError(f"task is missing splits {missing}; it has {sorted(dd)}")
        xs, ys = {}, {}
        for split in SPLIT_NAMES:
            ds = dd[split].with_format("numpy")
            cols = ds[:]
            xs[split] = torch.as_tensor(cols["x"], dtype=torch.float32).reshape(len(ds), -1)
            ys[split] = torch.as_tensor(cols["y"], dtype=torch.float32).reshape(-1)
        return cls(xs, ys)

    @property
    def in_dim(self) -> int:
        return self.x["aux_train"].shape[1]

    def with_main_prefix(self, n_main: int) -> TaskTensors:
        """The same task with only the first n_main main-task training samples."""
        if n_main > len(self.y["main_train"]):
            raise ValueError(f"n_main={n_main} > {len(self.y['main_train'])} generated samples")
        x, y = dict(self.x), dict(self.y)
        x["main_train"], y["main_train"] = x["main_train"][:n_main], y["main_train"][:n_main]
        return TaskTensors(x, y)


def shared_or_stacked(xs: Sequence[Tensor]) -> Tensor:
    """Inputs of K members: one (n_max, d) tensor when every member's inputs are a prefix of the
    longest (one matrix product serves them all), else a zero-padded (K, n_max, d) stack."""
    longest = max(xs, key=len)
    if all(x.data_ptr() == longest.data_ptr() or torch.equal(x, longest[: len(x)]) for x in xs):
        return longest
    stacked = torch.zeros(len(xs), len(longest), longest.shape[1], dtype=longest.dtype)
    for k, x in enumerate(xs):
        stacked[k, : len(x)] = x
    return stacked


def make_term(task: str, xs: Sequence[Tensor], ys: Sequence[Tensor], coef: Tensor) -> LossTerm:
    """Loss term over K members with sample counts n_k: c_{k,i} = coef_k for i < n_k, else 0."""
    x = shared_or_stacked(xs)
    n_max = x.shape[-2]
    y = torch.zeros(len(ys), n_max)
    c = torch.zeros(len(ys), n_max)
    for k, yk in enumerate(ys):
        y[k, : len(yk)] = yk
        c[k, : len(yk)] = coef[k]
    return LossTerm(task, x, y, c)


def split_term(datas: Sequence[TaskTensors], split: str, task: str, coef: Tensor) -> LossTerm:
    """The loss term of one split ('aux_train' or 'main_train') for every member's data."""
    return make_term(task, [d.x[split] for d in datas], [d.y[split] for d in datas], coef)


def counts(datas: Sequence[TaskTensors], split: str) -> Tensor:
    """Per-member sample counts n_k of a split, as a float tensor (K,)."""
    return torch.tensor([float(len(d.y[split])) for d in datas])
