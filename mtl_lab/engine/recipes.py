"""Lightning recipes that drive training: full-batch GD in chunks, and minibatch SGD/Adam.

Full-batch: one Lightning step runs ``steps_per_call`` GD steps of :class:`FullBatchGD`, so
Lightning's per-step overhead is paid once per chunk, not once per gradient step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mtl_lab.engine.gd import FullBatchGD, GDSettings, max_chunks, parameter_names
from mtl_lab.engine.objective import LossTerm, member_losses
from mtl_lab.engine.threads import ThreadGovernor
from mtl_lab.models.base import SharedTrunkNetwork
from mtl_lab.progress import tqdm


class TicksDataModule(L.LightningDataModule):
    """Full-batch data lives on the recipe; Lightning only needs one tick per chunk of steps."""

    def __init__(self, ticks: int) -> None:
        super().__init__()
        self.ticks = ticks

    def train_dataloader(self) -> DataLoader:
        return DataLoader(range(self.ticks), batch_size=None)


class FullBatchRecipe(L.LightningModule):
    """Train ``trainable`` parameters of an ensemble on ``terms`` by full-batch GD.

    Members train in consecutive chunks of ``member_chunk`` (all at once by default): where a
    big ensemble would be memory-bound, smaller sub-ensembles run one after the other inside the
    same Lightning fit, so the fit's start-up cost is paid once.
    """

    def __init__(
        self,
        net: SharedTrunkNetwork,
        terms: Sequence[LossTerm],
        trainable: Sequence[torch.nn.Parameter],
        lr: Tensor,
        settings: GDSettings,
        steps_per_call: int = 1000,
        dtype: torch.dtype = torch.float32,
        member_chunk: int | None = None,
        governor: ThreadGovernor | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.governor = governor
        self.net = net.to(dtype)
        self.terms = list(terms)
        self._trainable_names = parameter_names(net, trainable)
        self.lr = lr
        self.settings = settings
        self.steps_per_call = steps_per_call
        k = net.ensemble_size
        size = min(k, member_chunk or k)
        self.member_groups = [torch.arange(s, min(k, s + size)) for s in range(0, k, size)]
        self.engines: list[FullBatchGD] = []
        self.current = 0
        self._dtype = dtype

    @property
    def engine(self) -> FullBatchGD | None:
        """The engine of the sub-ensemble now training (the last one once all are done)."""
        if not self.engines:
            return None
        return self.engines[min(self.current, len(self.engines) - 1)]

    def ticks(self) -> int:
        """Lightning steps that certainly suffice (training stops earlier when all are done)."""
        return max_chunks(self.settings, self.steps_per_call) * len(self.member_groups)

    def on_fit_start(self) -> None:
        for p in self.net.parameters():
            p.requires_grad_(False)
        terms = [t.to(self.device, self._dtype) for t in self.terms]
        whole = len(self.member_groups) == 1
        for idx in self.member_groups:
            net = self.net if whole else self.net.select_members(idx.to(self.device))
            params = [net.get_parameter(n) for n in self._trainable_names]
            for p in params:
                p.requires_grad_(True)
            sub_terms = terms if whole else [t.select(idx.to(self.device)) for t in terms]
            self.engines.append(FullBatchGD(net, sub_terms, params, self.lr[idx], self.settings))

    def trained_network(self) -> SharedTrunkNetwork:
        """The whole ensemble after training, members in their original order."""
        if len(self.engines) == 1:
            return self.engines[0].net
        from mtl_lab.checkpoints import stack_networks

        return stack_networks([e.net for e in self.engines])

    def summary(self) -> list[dict]:
        return [row for e in self.engines for row in e.summary()]

    def histories(self) -> list[list[tuple[int, float]]]:
        """Per member: (step, loss) at the end of every chunk of steps."""
        return [[(step, float(loss[k])) for step, loss in e.state.history]
                for e in self.engines for k in range(e.state.lr.shape[0])]

    def configure_optimizers(self) -> None:
        return None

    def on_train_batch_start(self, batch, batch_idx: int) -> int | None:
        return -1 if self.current >= len(self.engines) else None

    def training_step(self, batch, batch_idx: int) -> None:
        engine = self.engines[self.current]
        if self.governor is not None:  # the machine may have become busier or idler
            self.governor.update()
        with torch.enable_grad():
            if not engine.run_chunk(self.steps_per_call):
                self.current += 1
        loss = engine.state.loss
        finite = loss[torch.isfinite(loss)]
        if finite.numel():
            self.log("train/loss_mean", finite.mean(), prog_bar=True)
            self.log("train/loss_max", finite.max())
        self.log("train/running", engine.state.active.sum().float())


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
        self._trainable_names = parameter_names(net, trainable)
        self.lr = lr
        self.optimizer_name = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.sizes = [t.y.shape[1] for t in self.terms]

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
        self.log("train/loss_mean", losses.mean(), prog_bar=True)
        return losses.sum()


def minibatch_loader(terms: Sequence[LossTerm], batch_size: int, seed: int) -> DataLoader:
    """Shuffled indices into the concatenated samples of all terms."""
    total = sum(t.y.shape[1] for t in terms)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(range(total), batch_size=batch_size, shuffle=True, generator=g,
                      collate_fn=torch.tensor)


class GDProgress(L.Callback):
    """A progress bar in gradient steps (not Lightning steps) for full-batch recipes.

    With ``sink``, progress goes to ``sink(description, done, total, postfix)`` instead of a bar
    of its own (worker processes report to the bars of the process that launched them).
    """

    def __init__(self, description: str = "train", leave: bool = False,
                 sink: Callable[[str, int, int, dict], None] | None = None) -> None:
        self.description = description
        self.leave = leave
        self.sink = sink
        self.bar: tqdm | None = None
        self.total = 0

    def on_train_start(self, trainer: L.Trainer, module: FullBatchRecipe) -> None:
        self.total = module.settings.max_steps * len(module.member_groups)
        if self.sink is None:
            self.bar = tqdm(total=self.total, desc=self.description, leave=self.leave,
                            unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, trainer, module: FullBatchRecipe, outputs, batch, idx) -> None:
        state = module.engine.state
        per = module.settings.max_steps
        running = bool(state.active.any())
        done = min(module.current * per + (min(int(state.steps.max()), per) if running else 0),
                   self.total)
        loss = state.loss[torch.isfinite(state.loss)]
        mean = float(loss.mean()) if loss.numel() else math.nan
        postfix = {"running": int(state.active.sum()), "loss": f"{mean:.2e}"}
        if self.sink is not None:
            self.sink(self.description, done, self.total, postfix)
            return
        self.bar.n = done
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def on_train_end(self, trainer, module) -> None:
        if self.bar is not None:
            self.bar.close()
