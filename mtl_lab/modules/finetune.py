"""Finetuning a pretrained trunk on a new task: PT+FT (train all) and PT+LP (train the head).

:meth:`FinetuneModule.from_pretrained` copies the trunk of a trained module (the pretrained
module is never modified), rescales the copy, and puts a fresh head of initial scale γ for the
new task on it (SCIENCE.md §1–2):

    θ_trunk ← c · θ_trunk,     head_new ~ N(0, 1/H) · γ

**Which parameters the factor c multiplies:** every *parameter* of the trunk — weights and
biases, BatchNorm/LayerNorm affine parameters included (the paper's "all parameters"), not
buffers such as BatchNorm running statistics. For a bias-free ReLU MLP of depth L this multiplies
the features by c^L. ``rescale`` may instead be a callable ``trunk -> None`` that transforms the
copy in place: the hook for other function-preserving or conditioning rescalings
(ROADMAP stage 6); it is recorded by name in the hyper-parameters.

``train="all"`` trains trunk and head (PT+FT); ``train="head"`` freezes the trunk and keeps it in
eval mode (PT+LP: a linear probe on fixed features; BatchNorm statistics do not move).

Example:
    >>> from mtl_lab.modules.multitask import MultiTaskModule
    >>> spec = {"class_path": "mtl_lab.modules.trunks.MLPTrunk", "init_args": {"in_dim": 4,
    ...                                                                       "width": 8}}
    >>> pretrained = MultiTaskModule(spec, ["aux"])
    >>> ft = FinetuneModule.from_pretrained(pretrained, "main", rescale=0.5, head_init_scale=1e-3)
    >>> w0 = pretrained.trunk.layers[0].weight
    >>> bool(torch.equal(ft.trunk.layers[0].weight, 0.5 * w0))
    True
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from mtl_lab.modules.heads import TaskSpec
from mtl_lab.modules.multitask import MultiTaskModule
from mtl_lab.modules.optim import OptimizerSettings

Rescale = float | Callable[[nn.Module], None] | str


@torch.no_grad()
def rescale_trunk(trunk: nn.Module, rescale: Rescale) -> None:
    """θ ← c·θ for every parameter of ``trunk`` (or ``rescale(trunk)`` for a callable)."""
    if callable(rescale):
        rescale(trunk)
        return
    c = float(rescale)
    if not c > 0:
        raise ValueError(f"the rescale factor c must be > 0, got {rescale!r}")
    for p in trunk.parameters():
        p.mul_(c)


def _name(rescale: Rescale) -> float | str:
    if isinstance(rescale, str):  # already a name (a reloaded checkpoint's hyper-parameters)
        return rescale
    if callable(rescale):
        return f"{getattr(rescale, '__module__', '?')}.{getattr(rescale, '__qualname__', rescale)}"
    return float(rescale)


class FinetuneModule(MultiTaskModule):
    """One new task on a (copied, rescaled) pretrained trunk; see the module docstring.

    Args:
        trunk: the trunk to finetune (this module owns it: pass a copy) or a spec mapping.
        task: the new task (a name, :class:`TaskSpec` or mapping).
        rescale: the factor c, or a callable transforming the trunk in place.
        head_init_scale: γ, the new head's initial scale.
        train: ``"all"`` (PT+FT) or ``"head"`` (PT+LP).
        optimizer, feature_dim, head_bias, seed, threads: as for :class:`MultiTaskModule`.
    """

    def __init__(self, trunk: nn.Module | Mapping[str, Any],
                 task: TaskSpec | str | Mapping[str, Any], rescale: Rescale = 1.0,
                 head_init_scale: float = 1e-3, train: Literal["all", "head"] = "all",
                 optimizer: Mapping[str, Any] | OptimizerSettings | None = None,
                 feature_dim: int | None = None, head_bias: bool = False,
                 seed: int = 0, threads: int | str | None = "auto") -> None:
        if train not in ("all", "head"):
            raise ValueError(f"train must be 'all' (PT+FT) or 'head' (PT+LP), got {train!r}")
        super().__init__(trunk, [task], optimizer=optimizer, feature_dim=feature_dim,
                         head_init_scale=head_init_scale, head_bias=head_bias, seed=seed,
                         threads=threads)
        if not isinstance(rescale, str):  # a name records a callable; its result is in the weights
            rescale_trunk(self.trunk, rescale)
        self.train_mode = train
        if train == "head":
            self.trunk.requires_grad_(False)
            self.trunk.eval()
        self.save_hyperparameters({
            "trunk": self.hparams["trunk"], "task": self.task_specs[0].as_dict(),
            "rescale": _name(rescale), "head_init_scale": head_init_scale, "train": train,
            "optimizer": self.optimizer_settings.model_dump(), "feature_dim": feature_dim,
            "head_bias": head_bias, "seed": seed, "threads": threads})

    @classmethod
    def from_pretrained(cls, pretrained: MultiTaskModule, task: TaskSpec | str | Mapping,
                        **kwargs: Any) -> FinetuneModule:
        """A finetuning module on a copy of ``pretrained``'s trunk (which stays untouched).

        A ``rescale`` callable with a true ``uses_heads`` attribute (such as
        :class:`mtl_lab.symmetry.Rescaling`) is called as ``rescale(trunk, heads)`` on copies of
        the pretrained trunk and heads, before the heads are dropped: the rescaling of the last
        hidden layer is absorbed by the old heads (the pretrained function is kept) and the
        fresh head sees the rescaled features. Other callables get the trunk alone."""
        if not isinstance(pretrained, MultiTaskModule):
            raise TypeError(f"pretrained must be a MultiTaskModule, got "
                            f"{type(pretrained).__name__}")
        kwargs.setdefault("feature_dim", pretrained.hparams.get("feature_dim"))
        trunk = copy.deepcopy(pretrained.trunk)
        rescale = kwargs.get("rescale", 1.0)
        if callable(rescale) and getattr(rescale, "uses_heads", False):
            with torch.no_grad():
                rescale(trunk, copy.deepcopy(pretrained.heads))
            kwargs["rescale"] = _name(rescale)  # applied: the module records it by name
        module = cls(trunk, task, **kwargs)
        module.hparams["trunk"] = pretrained.hparams.get("trunk")  # rebuildable from its spec
        return module

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.train_mode == "head":  # the frozen trunk is in eval mode on purpose
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start")

    def train(self, mode: bool = True) -> FinetuneModule:
        """As ``nn.Module.train``, but a frozen trunk (PT+LP) stays in eval mode."""
        super().train(mode)
        if getattr(self, "train_mode", "all") == "head":
            self.trunk.eval()
        return self
