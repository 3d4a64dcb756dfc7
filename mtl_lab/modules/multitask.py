"""The multi-task module: any trunk, one head per task, a loss per task, a task weighting.

STL is the one-task case, MTL several tasks trained jointly on a shared trunk (SCIENCE.md §1):

    f_t(x) = head_t(trunk(x)),   objective = weighting({L_t}, {n_t})

with L_t the mean loss of task t over its n_t samples in the batch (:mod:`.heads`) and the
weighting a plug-in of :mod:`.weighting` (``per_sample`` — the paper's, Σ n_t L_t / Σ n_t —
``equal``, ``fixed``, ``uncertainty``, ``pcgrad`` or one you register). Batches come from any
DataLoader or DataModule (:mod:`.batches`): ``(x, y, task)`` tuples or dicts, mixed-task or
one-task. Per task and stage it logs ``<stage>/<task>/loss`` (and ``accuracy`` for
classification) through torchmetrics, and ``<stage>/loss``, the weighted objective.

Checkpoints: ``load_from_checkpoint(path)`` rebuilds the module when the trunk was given as a
spec (``{"class_path": ..., "init_args": ...}``) and the heads were built by the module; a trunk
(or heads) given as a module instance must be passed again: ``load_from_checkpoint(path,
trunk=MyTrunk())``. Gradient-surgery weightings (``pcgrad``) switch the module to manual
optimisation (full precision only).

Example:
    >>> import lightning as L
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> x, y = torch.randn(64, 5), torch.randn(64)
    >>> task = torch.arange(64) % 2                      # samples alternate between two tasks
    >>> module = MultiTaskModule({"class_path": "mtl_lab.modules.trunks.MLPTrunk",
    ...                           "init_args": {"in_dim": 5, "width": 16}}, ["aux", "main"])
    >>> trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
    ...                     enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(module, DataLoader(TensorDataset(x, y, task), batch_size=16))
    >>> module(x[:3], "main").shape
    torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from torch import Tensor, nn

from mtl_lab.engine.threads import ThreadGovernor, ThreadsCallback
from mtl_lab.engine.weighting import Weighting, make_weighting
from mtl_lab.modules.batches import TaskBatch, split_batch
from mtl_lab.modules.heads import TaskSpec, linear_head
from mtl_lab.modules.optim import OptimizerSettings, make_optimizer
from mtl_lab.modules.trunks import build_trunk

STAGES = ("train", "val", "test")


def _trunk(trunk: nn.Module | Mapping[str, Any]) -> tuple[nn.Module, dict | None]:
    if isinstance(trunk, Mapping):
        return build_trunk(trunk), dict(trunk)
    if not isinstance(trunk, nn.Module):
        raise TypeError(f"trunk must be an nn.Module or a spec mapping, got "
                        f"{type(trunk).__name__}")
    return trunk, None


class MultiTaskModule(L.LightningModule):
    """A shared trunk with one head per named task (see the module docstring).

    Args:
        trunk: an ``nn.Module`` mapping a batch of inputs to features (n, H), or a spec mapping.
        tasks: task names (mse, one output), :class:`TaskSpec` or mappings, in a fixed order
            (integer task labels in batches index this order).
        heads: optional ``{task: nn.Module}``; by default a linear head per task.
        weighting: a registered weighting name or a :class:`Weighting` instance.
        weighting_options: options of a named weighting (``fixed`` needs ``weights``).
        optimizer: :class:`OptimizerSettings` as a mapping (name, lr, momentum, weight_decay,
            scheduler).
        feature_dim: H; read from ``trunk.feature_dim`` when not given.
        head_init_scale: default heads start at N(0, 1/H)·scale (PyTorch's init when None).
        head_bias: whether default heads have a bias.
        seed: seeds the default heads' draws.
        threads: CPU threads of a fit: ``"auto"`` (the lab's choice from the work of a step and
            the cores free now, :mod:`mtl_lab.engine.threads`), a whole number, or None to leave
            torch's setting alone.
    """

    def __init__(self, trunk: nn.Module | Mapping[str, Any],
                 tasks: Sequence[TaskSpec | str | Mapping[str, Any]],
                 heads: Mapping[str, nn.Module] | None = None,
                 weighting: str | Weighting = "per_sample",
                 weighting_options: Mapping[str, Any] | None = None,
                 optimizer: Mapping[str, Any] | OptimizerSettings | None = None,
                 feature_dim: int | None = None, head_init_scale: float | None = None,
                 head_bias: bool = False, seed: int = 0,
                 threads: int | str | None = "auto") -> None:
        super().__init__()
        if threads is not None:
            ThreadGovernor(threads, 0.0)  # validates the setting now, not in the middle of a fit
        self.threads = threads
        self.task_specs = [TaskSpec.of(t) for t in tasks]
        names = [t.name for t in self.task_specs]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be one or more distinct names, got {names}")
        self.trunk, trunk_spec = _trunk(trunk)
        width = feature_dim or getattr(self.trunk, "feature_dim", None)
        if heads is None and not width:
            raise ValueError("give feature_dim (the trunk's output size) or a trunk with a "
                             "'feature_dim' attribute, or give the heads")
        if heads is not None and set(heads) != set(names):
            raise ValueError(f"heads {sorted(heads)} do not match tasks {sorted(names)}")
        self.heads = nn.ModuleDict(dict(heads) if heads is not None else {
            t.name: linear_head(t, int(width), head_init_scale, seed, head_bias)
            for t in self.task_specs})
        self.weighting = weighting if isinstance(weighting, Weighting) else make_weighting(
            weighting, names, **dict(weighting_options or {}))
        self.optimizer_settings = OptimizerSettings.model_validate(
            optimizer.model_dump() if isinstance(optimizer, OptimizerSettings) else optimizer or {})
        self.automatic_optimization = not self.weighting.manual_backward
        self.stage_metrics = nn.ModuleDict({  # keyed "train_" …: "train" is an nn.Module method
            f"{stage}_": nn.ModuleDict({t.name: t.metrics(f"{stage}/{t.name}/")
                                        for t in self.task_specs}) for stage in STAGES})
        self.save_hyperparameters({
            "trunk": trunk_spec, "tasks": [t.as_dict() for t in self.task_specs],
            "weighting": self.weighting.name, "weighting_options": dict(weighting_options or {}),
            "optimizer": self.optimizer_settings.model_dump(), "feature_dim": feature_dim,
            "head_init_scale": head_init_scale, "head_bias": head_bias, "seed": seed,
            "threads": threads})

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.task_specs]

    def spec_of(self, task: str) -> TaskSpec:
        return next(t for t in self.task_specs if t.name == task)

    # --------------------------------------------------------------------------- forward

    def _head(self, task: str, features: Tensor) -> Tensor:
        out = self.heads[task](features)
        spec = self.spec_of(task)
        return out.squeeze(-1) if spec.outputs == 1 and not spec.classification else out

    def forward(self, x: Tensor, task: str | None = None) -> Tensor | dict[str, Tensor]:
        """f_task(x), or every task's output as a dict when ``task`` is None."""
        features = self.trunk(x)
        if task is not None:
            if task not in self.heads:
                raise KeyError(f"unknown task {task!r}; tasks: {self.task_names}")
            return self._head(task, features)
        return {t: self._head(t, features) for t in self.task_names}

    def task_losses(self, split: TaskBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """L_t for every task present in the batch, and its head's outputs."""
        features = self.trunk(split.x)
        losses, outputs = {}, {}
        for task, idx in split.index.items():
            outputs[task] = self._head(task, features[idx])
            losses[task] = self.spec_of(task).loss(outputs[task], split.y[idx])
        return losses, outputs

    # --------------------------------------------------------------------------- steps

    def _update_metrics(self, stage: str, split: TaskBatch, losses: dict[str, Tensor],
                        outputs: dict[str, Tensor]) -> None:
        for task, loss in losses.items():
            metrics = self.stage_metrics[f"{stage}_"][task]
            n = split.index[task].numel()
            metrics["loss"].update(loss.detach(), n)
            if "accuracy" in metrics:
                metrics["accuracy"].update(outputs[task].detach(),
                                           split.y[split.index[task]].long())
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=n)

    def _shared_step(self, batch, stage: str) -> Tensor:
        split = split_batch(batch, self.task_names)
        losses, outputs = self.task_losses(split)
        counts = split.counts()
        if stage == "train" and not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            shared = [p for p in self.trunk.parameters() if p.requires_grad]
            objective = self.weighting.backward(losses, counts, shared)
            optimizer.step()
        else:
            objective = self.weighting(losses, counts)
        self._update_metrics(stage, split, losses, outputs)
        self.log(f"{stage}/loss", objective.detach(), on_step=stage == "train", on_epoch=True,
                 prog_bar=True, batch_size=split.x.shape[0])
        return objective

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        objective = self._shared_step(batch, "train")
        return objective if self.automatic_optimization else None

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        return self(split_batch(batch, self.task_names).x)

    def on_fit_start(self) -> None:
        # trainer.validate/test run in inference mode, and a metric reset there leaves inference
        # tensors as its state, which fit's validation (no_grad) could not update in place
        for stage in self.stage_metrics.values():
            for metrics in stage.values():
                metrics.reset()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization and (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()
        for task, weight in self.weighting.weights().items():
            self.log(f"train/weight/{task}", float(weight))

    def configure_callbacks(self) -> list[L.Callback]:
        return [] if self.threads is None else [ThreadsCallback(self.threads)]

    def configure_optimizers(self) -> dict:
        return make_optimizer(self.optimizer_settings, self.parameters())
