"""Lightning recipes that drive training: full-batch GD in chunks, and minibatch SGD/Adam.

Full-batch: one Lightning step runs ``steps_per_call`` GD steps of :class:`FullBatchGD`, so
Lightning's per-step overhead is paid once per chunk, not once per gradient step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtl_lab.engine.gd import FullBatchGD, GDSettings, max_chunks
from mtl_lab.engine.objective import LossTerm, member_losses
from mtl_lab.models.base import SharedTrunkNetwork


class TicksDataModule(L.LightningDataModule):
    """Full-batch data lives on the recipe; Lightning only needs one tick per chunk of steps."""

    def __init__(self, ticks: int) -> None:
        super().__init__()
        self.ticks = ticks

    def train_dataloader(self) -> DataLoader:
        return DataLoader(range(self.ticks), batch_size=None)


class FullBatchRecipe(L.LightningModule):
    """Train ``trainable`` parameters of an ensemble on ``terms`` by full-batch GD."""

    def __init__(
        self,
        net: SharedTrunkNetwork,
        terms: Sequence[LossTerm],
        trainable: Sequence[torch.nn.Parameter],
        lr: Tensor,
        settings: GDSettings,
        steps_per_call: int = 1000,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net.to(dtype)
        self.terms = list(terms)
        self._trainable_names = _names_of(net, trainable)
        self.lr = lr
        self.settings = settings
        self.steps_per_call = steps_per_call
        self.engine: FullBatchGD | None = None
        self._running = True
        self._dtype = dtype

    def ticks(self) -> int:
        """Lightning steps that certainly suffice (training stops earlier when all are done)."""
        return max_chunks(self.settings, self.steps_per_call)

    def on_fit_start(self) -> None:
        params = [self.net.get_parameter(n) for n in self._trainable_names]
        for p in self.net.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        terms = [t.to(self.device, self._dtype) for t in self.terms]
        self.engine = FullBatchGD(self.net, terms, params, self.lr, self.settings)

    def configure_optimizers(self) -> None:
        return None

    def on_train_batch_start(self, batch, batch_idx: int) -> int | None:
        return -1 if not self._running else None

    def training_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad():
            self._running = self.engine.run_chunk(self.steps_per_call)
        loss = self.engine.state.loss
        finite = loss[torch.isfinite(loss)]
        if finite.numel():
            self.log("train/loss_mean", finite.mean(), prog_bar=True)
            self.log("train/loss_max", finite.max())
        self.log("train/running", self.engine.state.active.sum().float())


def _names_of(net: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> list[str]:
    ids = {id(p) for p in params}
    return [name for name, p in net.named_parameters() if id(p) in ids]


class MinibatchRecipe(L.LightningModule):
    """Minibatch SGD (with momentum) or Adam on the same objective, for practitioner-style runs.

    Each batch draws indices from the concatenation of all terms' samples; a term's batch loss is
    rescaled by N/|batch| so that its expectation is the full objective L_k.
    """

    def __init__(
        self,
        net: SharedTrunkNetwork,
        terms: Sequence[LossTerm],
        trainable: Sequence[torch.nn.Parameter],
        lr: float,
        optimizer: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.terms = list(terms)
        self._trainable_names = _names_of(net, trainable)
        self.lr = lr
        self.optimizer_name = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.sizes = [t.y.shape[1] for t in self.terms]
        self.last_loss: Tensor | None = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        for p in self.net.parameters():
            p.requires_grad_(False)
        params = [self.net.get_parameter(n) for n in self._trainable_names]
        for p in params:
            p.requires_grad_(True)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        total = sum(self.sizes)
        parts = []
        start = 0
        for term, size in zip(self.terms, self.sizes):
            idx = batch[(batch >= start) & (batch < start + size)] - start
            start += size
            if idx.numel() == 0:
                continue
            t = term.to(self.device)
            x = t.x[idx] if t.x.dim() == 2 else t.x[:, idx]
            sub = LossTerm(t.task, x, t.y[:, idx], t.c[:, idx] * (total / batch.numel()))
            parts.append(sub)
        losses = member_losses(self.net, parts)
        self.last_loss = losses.detach()
        self.log("train/loss_mean", losses.mean(), prog_bar=True)
        return losses.sum()


def minibatch_loader(terms: Sequence[LossTerm], batch_size: int, seed: int) -> DataLoader:
    """Shuffled indices into the concatenated samples of all terms."""
    total = sum(t.y.shape[1] for t in terms)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(range(total), batch_size=batch_size, shuffle=True, generator=g,
                      collate_fn=torch.tensor)


class GDProgress(L.Callback):
    """A progress bar in gradient steps (not Lightning steps) for full-batch recipes."""

    def __init__(self, description: str = "train", leave: bool = False) -> None:
        self.description = description
        self.leave = leave
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: L.Trainer, module: FullBatchRecipe) -> None:
        self.bar = tqdm(total=module.settings.max_steps, desc=self.description, leave=self.leave,
                        unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, trainer, module: FullBatchRecipe, outputs, batch, idx) -> None:
        state = module.engine.state
        done = int(state.steps.max()) if bool(state.active.any()) else module.settings.max_steps
        self.bar.n = min(done, self.bar.total)
        loss = state.loss[torch.isfinite(state.loss)]
        mean = float(loss.mean()) if loss.numel() else math.nan
        self.bar.set_postfix(running=int(state.active.sum()), loss=f"{mean:.2e}", refresh=False)
        self.bar.refresh()

    def on_train_end(self, trainer, module) -> None:
        if self.bar is not None:
            self.bar.close()
