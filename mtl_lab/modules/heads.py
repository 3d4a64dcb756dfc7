"""Tasks of a multi-task module: their loss, their head and their metrics.

A :class:`TaskSpec` says what a task's targets are: ``mse`` regression with ``outputs`` values per
sample (1: a scalar, the synthetic families' tasks) or ``cross_entropy`` classification over
``outputs`` classes. It is read from a dataset's metadata with :meth:`TaskSpec.from_feature`
(a ``datasets.ClassLabel`` is a classification, a ``Value`` a regression) or given in a config.

Losses are means over the task's samples in the batch:
L_t = (1/n_t) Σ_i ‖f_t(x_i) − y_i‖² (mse) or L_t = −(1/n_t) Σ_i log softmax(f_t(x_i))_{y_i}
(cross_entropy). Metrics per task and stage (a torchmetrics ``MetricCollection``): the mean loss
and, for classification, the accuracy.

Example:
    >>> spec = TaskSpec("digits", "cross_entropy", outputs=10)
    >>> head = linear_head(spec, features=16, scale=1.0, seed=0)
    >>> logits = head(torch.randn(4, 16)); logits.shape
    torch.Size([4, 10])
    >>> spec.loss(logits, torch.tensor([0, 1, 2, 3])).item() > 0
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from mtl_lab.models.base import member_generator
from mtl_lab.models.relu import _head_salt

LOSSES = ("mse", "cross_entropy")


@dataclass(frozen=True)
class TaskSpec:
    """A named task: its loss and the number of outputs its head has."""

    name: str
    loss_name: Literal["mse", "cross_entropy"] = "mse"
    outputs: int = 1

    def __post_init__(self) -> None:
        if self.loss_name not in LOSSES:
            raise ValueError(f"task {self.name!r}: unknown loss {self.loss_name!r}; use one of "
                             f"{LOSSES}")
        if int(self.outputs) < 1 or (self.loss_name == "cross_entropy" and self.outputs < 2):
            raise ValueError(f"task {self.name!r}: {self.outputs} outputs is impossible for "
                             f"{self.loss_name}")

    @classmethod
    def of(cls, value: TaskSpec | str | dict[str, Any]) -> TaskSpec:
        """A spec from itself, a name (an mse task with one output) or a mapping."""
        if isinstance(value, TaskSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            known = {"name", "loss_name", "outputs"}
            if unknown := set(value) - known:
                raise ValueError(f"task spec {value!r}: unknown keys {sorted(unknown)}; "
                                 f"use {sorted(known)}")
            return cls(**value)
        raise TypeError(f"a task is a TaskSpec, a name or a mapping, got {type(value).__name__}")

    @classmethod
    def from_feature(cls, name: str, feature: Any) -> TaskSpec:
        """From a ``datasets`` feature: ``ClassLabel`` → cross-entropy over its classes,
        a numeric ``Value`` → mse with one output."""
        num_classes = getattr(feature, "num_classes", None)
        if num_classes is not None:
            return cls(name, "cross_entropy", int(num_classes))
        dtype = str(getattr(feature, "dtype", ""))
        if dtype.startswith(("float", "int", "uint")):
            return cls(name, "mse", 1)
        raise ValueError(f"task {name!r}: cannot tell its loss from feature {feature!r}; give a "
                         "TaskSpec")

    @property
    def classification(self) -> bool:
        return self.loss_name == "cross_entropy"

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """L_t, the mean loss over the samples given."""
        if self.classification:
            return F.cross_entropy(prediction, target.long())
        if self.outputs == 1:
            prediction = prediction.reshape(-1)
        return F.mse_loss(prediction, target.to(prediction.dtype).reshape(prediction.shape))

    def metrics(self, prefix: str) -> MetricCollection:
        """Mean loss (and accuracy for classification), keys ``<prefix>loss``/``accuracy``."""
        found: dict[str, Any] = {"loss": MeanMetric()}
        if self.classification:
            found["accuracy"] = MulticlassAccuracy(self.outputs, average="micro")
        return MetricCollection(found, prefix=prefix)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def linear_head(spec: TaskSpec, features: int, scale: float | None, seed: int,
                bias: bool = False) -> nn.Linear:
    """A linear head for ``spec``: weights N(0, 1/H)·scale drawn from the seed and the task's
    name as the engine draws its heads (so a one-output head equals the engine's for the same
    seed); PyTorch's default initialisation when ``scale`` is None. Biases start at 0."""
    head = nn.Linear(features, spec.outputs, bias=bias)
    if scale is not None:
        g = member_generator(seed, _head_salt(spec.name))
        with torch.no_grad():
            draw = torch.randn(spec.outputs * features, generator=g)
            head.weight.copy_(draw.view(features, spec.outputs).T / math.sqrt(features) * scale)
            if bias:
                head.bias.zero_()
    return head
