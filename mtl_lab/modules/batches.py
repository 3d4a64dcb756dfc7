"""Batches of any DataLoader or DataModule, split by task.

Accepted batch forms (what ``torch.utils.data.default_collate`` makes of the usual datasets):

* a mapping with keys ``x``, ``y`` and ``task`` (e.g. a ``datasets.Dataset`` with those columns);
* a tuple/list ``(x, y, task)`` (e.g. a ``TensorDataset``);
* ``(x, y)`` or a mapping without ``task`` when the module has exactly one task.

``task`` is per sample — task names (a list of strings) or indices into the module's task list
(an integer tensor) — or one name/index for the whole batch. Mixed-task batches and one-task
batches both work; a task that is absent from a batch has no loss in it.

Example:
    >>> batch = {"x": torch.randn(4, 3), "y": torch.randn(4), "task": ["aux", "main", "aux", "aux"]}
    >>> split = split_batch(batch, ("aux", "main"))
    >>> {t: i.tolist() for t, i in split.index.items()}
    {'aux': [0, 2, 3], 'main': [1]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

FORMS = ("a mapping with keys 'x', 'y', 'task'", "a tuple (x, y, task)",
         "(x, y) for a one-task module")


@dataclass
class TaskBatch:
    """Inputs, targets and, per task present, the positions of its samples in the batch."""

    x: Tensor
    y: Tensor
    index: dict[str, Tensor]

    def counts(self) -> dict[str, int]:
        return {task: int(idx.numel()) for task, idx in self.index.items()}


def _parts(batch, tasks: Sequence[str]):
    if isinstance(batch, Mapping):
        missing = [k for k in ("x", "y") if k not in batch]
        if missing:
            raise KeyError(f"batch mapping lacks {missing}; accepted batches: {', '.join(FORMS)}")
        return batch["x"], batch["y"], batch.get("task")
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    raise TypeError(f"cannot read a batch of type {type(batch).__name__}; accepted batches: "
                    f"{', '.join(FORMS)}")


def _task_ids(task, n: int, tasks: Sequence[str]) -> Tensor:
    """Per-sample task indices (n,) from names, indices, or one name/index for the batch."""
    position = {name: i for i, name in enumerate(tasks)}

    def index_of(name) -> int:
        if isinstance(name, str):
            if name not in position:
                raise ValueError(f"batch names task {name!r}; this module's tasks are "
                                 f"{list(tasks)}")
            return position[name]
        i = int(name)
        if not 0 <= i < len(tasks):
            raise ValueError(f"batch task index {i} is out of range for tasks {list(tasks)}")
        return i

    if task is None:
        if len(tasks) != 1:
            raise ValueError(f"batch has no 'task' but the module has {len(tasks)} tasks "
                             f"{list(tasks)}: give each sample its task")
        return torch.zeros(n, dtype=torch.long)
    if isinstance(task, str | int) or (isinstance(task, Tensor) and task.dim() == 0):
        return torch.full((n,), index_of(task if isinstance(task, str) else int(task)),
                          dtype=torch.long)
    if isinstance(task, Tensor):
        ids = task.long().reshape(-1).cpu()
        if ids.numel() and (ids.min() < 0 or ids.max() >= len(tasks)):
            raise ValueError(f"batch task indices {sorted(set(ids.tolist()))} out of range for "
                             f"tasks {list(tasks)}")
    else:
        ids = torch.tensor([index_of(t) for t in task], dtype=torch.long)
    if ids.numel() != n:
        raise ValueError(f"batch has {n} samples but {ids.numel()} task labels")
    return ids


def split_batch(batch, tasks: Sequence[str]) -> TaskBatch:
    """Read a batch (see the module doc) and index its samples by task."""
    x, y, task = _parts(batch, tasks)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"batch has {x.shape[0]} inputs but {y.shape[0]} targets")
    ids = _task_ids(task, x.shape[0], tasks).to(x.device)
    index = {}
    for i, name in enumerate(tasks):
        where = (ids == i).nonzero().reshape(-1)
        if where.numel():
            index[name] = where
    return TaskBatch(x, y, index)
