"""What every regime shares: members of a batched group, the fitting call, evaluation."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtl_lab.config import MEMBER_KNOBS, ComparisonConfig, ModelConfig, TrainingConfig
from mtl_lab.data import TaskTensors
from mtl_lab.engine import (
    FullBatchRecipe,
    GDProgress,
    GDSettings,
    LossTerm,
    MinibatchRecipe,
    TicksDataModule,
)
from mtl_lab.engine.memory import keep_freed_memory
from mtl_lab.engine.recipes import minibatch_loader
from mtl_lab.engine.threads import ThreadGovernor, step_flops
from mtl_lab.models import DiagonalNetwork, ReLUNetwork, SharedTrunkNetwork

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Member:
    """One run inside a batched group: its data and the values that may differ per member.

    The fields after ``data`` are the per-member values of :data:`mtl_lab.config.MEMBER_KNOBS`
    (checked below), filled from a run's config by :func:`mtl_lab.config.member_knobs`.
    """

    run_id: str
    seed: int
    data: TaskTensors
    lr: float
    rescale: float = 1.0
    head_init_scale: float = 1e-3


_IDENTITY = ("run_id", "seed", "data")
if tuple(f.name for f in fields(Member)) != (*_IDENTITY, *MEMBER_KNOBS.values()):
    raise TypeError(f"Member's per-member fields must be those of MEMBER_KNOBS, in order: "
                    f"{list(MEMBER_KNOBS.values())}")


@dataclass
class GroupContext:
    """Settings shared by every member of a group, and where to put logs and checkpoints.

    ``monitors`` makes the training-time analyzers (Lightning callbacks) for one fit; the caller
    chooses them (:func:`mtl_lab.sweeps.execute.train_group` gives
    :func:`mtl_lab.analysis.callbacks.monitors_for` of the config's ``logging``), so that
    regimes do not depend on the analysis. The default logs none.
    """

    cfg: ComparisonConfig
    out_dir: Path | None = None
    progress: bool | Callable[[str, int, int, dict], None] = True  # or a GDProgress sink
    loggers: Callable[[str], list] = field(default=lambda name: [])
    pretrain_store: Any = None
    monitors: Callable[[], list] = field(default=lambda: [])

    @property
    def device(self) -> torch.device:
        acc = self.cfg.trainer.accelerator
        if acc in ("cuda", "gpu") or (acc == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")


@dataclass
class MemberResult:
    """Outcome of one run: metrics for the results row, the trained network (K = 1)."""

    metrics: dict[str, Any]
    network: SharedTrunkNetwork | None = None
    history: list[tuple[int, float]] = field(default_factory=list)


def build_network(m: ModelConfig, in_dim: int, tasks: Sequence[str],
                  seeds: Sequence[int]) -> SharedTrunkNetwork:
    """A fresh ensemble for a model config, member k initialised from seeds[k]."""
    if m.kind == "diagonal":
        return DiagonalNetwork(in_dim, tasks, seeds, alpha=m.alpha,
                               head_init_scale=m.head_init_scale)
    return ReLUNetwork(in_dim, m.width, m.depth, tasks, seeds, bias=m.bias,
                       init_scale=m.init_scale, head_init_scale=m.head_init_scale)


def ensemble_budget_mb(training: TrainingConfig, device: torch.device) -> float:
    """The activation memory one sub-ensemble may use.

    On the CPU: ``training.max_ensemble_mb`` (16 MB by default, sized for a CPU cache: beyond it
    a batched ReLU step turns memory-bound and slower than one member at a time). On a GPU,
    unless the config sets ``max_ensemble_mb`` explicitly: half the device's free memory, so a
    seed's whole group trains as one ensemble whenever it fits.
    """
    if device.type == "cuda" and "max_ensemble_mb" not in training.model_fields_set:
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free / 2**20
    return training.max_ensemble_mb


def synchronized_clock(device: torch.device) -> float:
    """``time.perf_counter()`` after the device has finished its queued work (CUDA runs
    asynchronously: a clock read without it measures the launches, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def member_chunks(net: SharedTrunkNetwork, terms: Sequence[LossTerm], budget_mb: float) -> int:
    """How many members to train at once: the whole ensemble unless its activations exceed the
    memory budget (:func:`ensemble_budget_mb`)."""
    samples = sum(t.x.shape[-2] for t in terms)
    per_member_mb = 3 * 4 * samples * net.activations_per_sample() / 2**20
    k = net.ensemble_size
    return max(1, min(k, int(budget_mb // max(per_member_mb, 1e-9))))


def fit(net: SharedTrunkNetwork, terms: Sequence[LossTerm], trainable: Sequence[str],
        lr: Tensor, training: TrainingConfig, ctx: GroupContext, name: str
        ) -> tuple[SharedTrunkNetwork, list[dict], list[list[tuple[int, float]]]]:
    """Train an ensemble with the configured recipe (full-batch GD or minibatch).

    ``trainable`` names parameters ('trunk', 'heads' or a task name's head). Returns the trained
    ensemble, per-member summaries and per-member loss histories.
    """
    governor = None
    if ctx.device.type == "cpu":
        keep_freed_memory()
        samples = sum(t.x.shape[-2] for t in terms)
        if training.mode == "minibatch":
            samples = min(samples, training.batch_size)
        governor = ThreadGovernor(ctx.cfg.trainer.threads, step_flops(net.parameters(), samples))
    t0 = synchronized_clock(ctx.device)
    with governor or contextlib.nullcontext():
        trained, summaries, histories = _fit(net, terms, trainable, lr, training, ctx, name,
                                             governor)
    wall = synchronized_clock(ctx.device) - t0
    for s in summaries:
        s["train_wall_time"] = wall / len(summaries)
        if governor is not None:
            s["threads"] = max(governor.chosen)
    return trained, summaries, histories


def _trainable_params(net: SharedTrunkNetwork, trainable: Sequence[str]) -> list:
    params = []
    for what in trainable:
        if what == "trunk":
            params += list(net.trunk_parameters())
        elif what == "heads":
            params += list(net.head_parameters())
        else:
            params += list(net.head_parameters(what))
    return params


def _trainer(ctx: GroupContext, name: str, callbacks: list, *, ticks: int = -1,
             epochs: int = 1) -> L.Trainer:
    """A quiet single-device trainer: ``ticks`` Lightning steps or ``epochs`` epochs."""
    return L.Trainer(
        accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs,
        max_steps=ticks,
        logger=ctx.loggers(name) or False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def _fit(net, terms, trainable, lr, training: TrainingConfig, ctx: GroupContext, name: str,
         governor: ThreadGovernor | None = None):
    dtype = DTYPES[training.dtype]
    params = _trainable_params(net, trainable)
    if training.mode == "full_batch":
        settings = GDSettings(training.max_steps, training.loss_threshold,
                              training.divergence_limit, training.max_restarts,
                              training.lr_backoff, ctx.cfg.trainer.cuda_graphs)
        chunk = member_chunks(net, terms, ensemble_budget_mb(training, ctx.device))
        recipe = FullBatchRecipe(net, terms, params, lr, settings, training.steps_per_call,
                                 dtype, member_chunk=chunk, governor=governor)
        sink = ctx.progress if callable(ctx.progress) else None
        callbacks = [GDProgress(name, sink=sink)] if ctx.progress else []
        callbacks += ctx.monitors()
        trainer = _trainer(ctx, name, callbacks, ticks=recipe.ticks())
        trainer.fit(recipe, datamodule=TicksDataModule(recipe.ticks()))
        trained = recipe.trained_network().cpu().float()
        return trained, recipe.summary(), recipe.histories()
    net = net.to(dtype)
    recipe = MinibatchRecipe(net, [t.to("cpu", dtype) for t in terms], params, float(lr[0]),
                             training.optimizer, training.momentum, training.weight_decay)
    loader = minibatch_loader(terms, training.batch_size, seed=0)
    trainer = _trainer(ctx, name, [], epochs=training.epochs)
    trainer.fit(recipe, train_dataloaders=loader)
    final = evaluate_terms(recipe.net, terms)
    summ = [{"train_loss": float(v), "steps": trainer.global_step, "final_lr": float(lr[0]),
             "restarts": 0, "status": "epochs"} for v in final]
    return recipe.net.cpu().float(), summ, [[] for _ in range(net.ensemble_size)]


@torch.no_grad()
def evaluate_terms(net: SharedTrunkNetwork, terms: Sequence[LossTerm]) -> Tensor:
    """The full objective L_k of every member (no gradient)."""
    from mtl_lab.engine import member_losses

    first = next(net.parameters())
    return member_losses(net, [t.to(first.device, first.dtype) for t in terms]).cpu()


@torch.no_grad()
def test_loss(net: SharedTrunkNetwork, datas: Sequence[TaskTensors], task: str,
              batch: int = 2048) -> list[float]:
    """Mean squared error of head ``task`` on each member's own test split, in sample batches."""
    from mtl_lab.data import shared_or_stacked

    split = f"{task}_test"
    x = shared_or_stacked([d.x[split] for d in datas])
    y = torch.stack([d.y[split] for d in datas])
    p0 = next(net.parameters())
    total = torch.zeros(len(datas), dtype=torch.float64)
    n = y.shape[1]
    for s in range(0, n, batch):
        xb = x[s:s + batch] if x.dim() == 2 else x[:, s:s + batch]
        pred = net(xb.to(p0.device, p0.dtype), task).double().cpu()
        total += ((pred - y[:, s:s + batch].double()) ** 2).sum(1)
    return [float(v) / n if math.isfinite(float(v)) else float("nan") for v in total]
