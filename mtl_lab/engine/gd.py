"""Full-batch gradient descent for an ensemble, as a proxy for gradient flow (SCIENCE.md §1).

Each member k runs θ_k ← θ_k − η_k ∇L_k(θ_k) until L_k < threshold or its step budget is spent.
If L_k turns NaN or exceeds the divergence limit, member k restarts from its initial weights
with η_k ← η_k / backoff (at most ``max_restarts`` times). All stopping decisions are made per
member on the device, without a host synchronisation per step, so a member's trajectory is the
same whether it trains alone or inside an ensemble.

Members stop at different times (in a sweep, the small-n runs converge long before the large-n
ones hit their budget). Between chunks the engine therefore *compacts*: once some members have
stopped, the next chunks step a sub-ensemble of the running members only, ordered by decreasing
sample count, on terms trimmed to the samples those members use, and copy the result back after
every chunk. Stopped members cost nothing from then on, and with that order a network that is
linear in its input evaluates each sample on only the members that use it (row bands, see
``objective.row_bands``).

Gradients: for the two paper networks (the diagonal network and the depth-1 ReLU trunk, any
subset of their parameters trained) a step uses the closed-form gradient of
``engine.closed_form`` — the same numbers as autograd up to rounding, about twice as fast for the
ReLU trunk; every other trunk uses autograd (``closed_form=False`` forces autograd).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtl_lab.engine.closed_form import closed_form_gradient
from mtl_lab.engine.graphs import StepBlocks, compaction_due
from mtl_lab.engine.objective import LossTerm, member_losses
from mtl_lab.models.base import SharedTrunkNetwork

STEP_BLOCK = 64  # steps per captured graph, and between host checks for early stops
STATUS_RUNNING, STATUS_CONVERGED, STATUS_BUDGET, STATUS_DIVERGED = 0, 1, 2, 3
STATUS_NAMES = {
    STATUS_RUNNING: "running",
    STATUS_CONVERGED: "converged",
    STATUS_BUDGET: "budget",
    STATUS_DIVERGED: "diverged",
}


@dataclass(frozen=True)
class GDSettings:
    """Hyper-parameters of the full-batch engine shared by every member of an ensemble."""

    max_steps: int = 100_000
    loss_threshold: float = 1e-10
    divergence_limit: float = 100.0
    max_restarts: int = 5
    lr_backoff: float = 10.0
    cuda_graphs: bool = True  # on a CUDA device, replay captured blocks of steps (graphs.py)


@dataclass
class GDState:
    """Per-member bookkeeping, all (K,) tensors on the training device."""

    lr: Tensor
    steps: Tensor
    status: Tensor
    restarts: Tensor
    loss: Tensor
    running: Tensor
    history: list[tuple[int, Tensor]] = field(default_factory=list)

    @classmethod
    def start(cls, lr: Tensor) -> GDState:
        k = lr.shape[0]
        zeros = torch.zeros(k, dtype=torch.long, device=lr.device)
        return cls(
            lr=lr.clone(),
            steps=zeros.clone(),
            status=zeros.clone(),
            restarts=zeros.clone(),
            loss=torch.full((k,), float("nan"), dtype=lr.dtype, device=lr.device),
            running=torch.ones(k, dtype=torch.bool, device=lr.device),
        )

    @property
    def active(self) -> Tensor:
        return self.running


class FullBatchGD:
    """Runs full-batch GD on the trainable parameters of a stacked ensemble.

    Example:
        >>> from mtl_lab.models import DiagonalNetwork
        >>> net = DiagonalNetwork(3, ("main",), seeds=[0], alpha=0.5)
        >>> x = torch.randn(8, 3); y = x[:, :1].T
        >>> gd = FullBatchGD(net, [LossTerm("main", x, y, torch.full((1, 8), 1 / 8))],
        ...                  list(net.parameters()), torch.tensor([0.1]), GDSettings(2000, 1e-8))
        >>> _ = gd.run_until_done(chunk=500); gd.state.status.item() == STATUS_CONVERGED
        True
    """

    def __init__(
        self,
        net: SharedTrunkNetwork,
        terms: Sequence[LossTerm],
        params: Sequence[torch.nn.Parameter],
        lr: Tensor,
        settings: GDSettings,
        compact: bool = True,
        initial: Sequence[Tensor] | None = None,
        closed_form: bool = True,
    ) -> None:
        self.net = net
        self.terms = list(terms)
        self.params = list(params)
        self.settings = settings
        self.compact = compact
        dtype = self.params[0].dtype
        self.state = GDState.start(lr.to(self.params[0].device, dtype))
        # where a diverged member restarts from (a sub-ensemble gets its members' slices)
        self.initial = list(initial) if initial is not None else [
            p.detach().clone() for p in self.params]
        self.steps_run = 0
        self._names = parameter_names(net, self.params)
        self._sub: tuple[Tensor, FullBatchGD] | None = None  # (members, engine stepping them)
        self._counts = [t.sample_counts() for t in self.terms]
        self._ones = torch.ones_like(self.state.lr)
        self._shapes = [(-1,) + (1,) * (p.dim() - 1) for p in self.params]
        self.closed_form = closed_form
        # (L, ∂L/∂params) without autograd where the network has a closed form, else None
        self._gradient = (closed_form_gradient(net, self.terms, self.params) if closed_form
                          else None)
        # blocks of steps replayed as a CUDA graph on a GPU; plain steps elsewhere
        self._blocks = StepBlocks(self.step, STEP_BLOCK, self.params[0].device,
                                  enabled=settings.cuda_graphs)

    def step(self) -> Tensor:
        """One GD step for every running member; returns the pre-step losses (K,).

        A member stops (before stepping) when L_k < threshold, its budget is spent, or L_k is NaN
        or above the divergence limit; why it stopped is read off its last loss at chunk end.
        The per-step bookkeeping is a handful of (K,) tensor ops: no host synchronisation.
        """
        s, cfg = self.state, self.settings
        if self._gradient is not None:
            loss, grads = self._gradient()
        else:
            loss, grads = member_losses(self.net, self.terms), None
        value = loss.detach()
        keep = (value >= cfg.loss_threshold) & (value <= cfg.divergence_limit)  # NaN: False
        keep &= s.steps < cfg.max_steps
        s.loss.copy_(torch.where(s.running, value, s.loss))  # in place: a captured graph's tensors
        s.running &= keep
        if grads is None:
            grads = torch.autograd.grad(loss, self.params, self._ones)
        rate = torch.where(s.running, s.lr, 0.0)  # = lr · running, without a type cast
        with torch.no_grad():
            torch._foreach_addcmul_(
                self.params, grads, [rate.view(shape) for shape in self._shapes], value=-1.0
            )
        s.steps += s.running
        return loss

    @torch.no_grad()
    def _classify(self) -> None:
        """Status of every member from its running flag and the loss it stopped at."""
        s, cfg = self.state, self.settings
        stopped = torch.where(
            ~(s.loss <= cfg.divergence_limit),
            STATUS_DIVERGED,
            torch.where(s.loss < cfg.loss_threshold, STATUS_CONVERGED, STATUS_BUDGET),
        )
        s.status = torch.where(s.running, STATUS_RUNNING, stopped)

    @torch.no_grad()
    def restart_diverged(self) -> bool:
        """Restart diverged members at η/backoff from their initial weights; True if any did."""
        s, cfg = self.state, self.settings
        self._classify()
        retry = (s.status == STATUS_DIVERGED) & (s.restarts < cfg.max_restarts)
        if not bool(retry.any()):
            return False
        for p, p0, shape in zip(self.params, self.initial, self._shapes):
            p.copy_(torch.where(retry.view(shape), p0, p))
        s.lr.copy_(torch.where(retry, s.lr / cfg.lr_backoff, s.lr))  # in place (graphs)
        s.restarts += retry.long()
        s.steps.copy_(torch.where(retry, 0, s.steps))
        s.running |= retry
        s.status = torch.where(retry, STATUS_RUNNING, s.status)
        return True

    @torch.no_grad()
    def _reset_given_up(self) -> None:
        """Members that diverged for good go back to their initial weights (no NaN left)."""
        gone = self.state.status == STATUS_DIVERGED
        for p, p0, shape in zip(self.params, self.initial, self._shapes):
            p.copy_(torch.where(gone.view(shape), p0, p))

    def run_chunk(self, chunk: int) -> bool:
        """``chunk`` steps, then handle restarts; returns True while some member still runs."""
        if self.compact:
            self._compact()
        if self._sub is not None:
            index, sub = self._sub
            before = sub.steps_run
            running = sub.run_chunk(chunk)
            self._pull(index, sub)
            self.steps_run += sub.steps_run - before
            self.state.history.append((self.steps_run, self.state.loss.clone()))
            if not running:  # members dropped earlier may have given up too
                self._reset_given_up()
            return running
        s = self.state
        if bool(s.running.any()):  # never step past the largest remaining budget (+1 check)
            left = self.settings.max_steps + 1 - int(s.steps[s.running].min())
            chunk = max(1, min(chunk, left))
        done = 0
        while done < chunk:  # a host check whether anyone still runs once per block of steps
            done += self._blocks.run(min(self._blocks.next_piece(), chunk - done))
            if done < chunk and not bool(s.running.any()):  # all stopped early
                break
        chunk = done
        self.steps_run += chunk
        self.state.history.append((self.steps_run, self.state.loss.clone()))
        self.restart_diverged()
        running = bool(self.state.active.any())
        if not running:
            self._reset_given_up()
        return running

    def _compact(self) -> None:
        """Step only the running members from now on, ordered by decreasing sample counts.

        A new sub-ensemble is built when some member now stepped has stopped, or, at the start,
        when the members are not in that order yet (which row bands need to be prefixes).
        """
        running = torch.nonzero(self.state.running).flatten().tolist()
        order = sorted(running, key=lambda k: [-counts[k] for counts in self._counts])
        stepped = self._sub[0].tolist() if self._sub else list(range(self.state.lr.shape[0]))
        if not order or order == stepped:
            return
        graphs = self._blocks.use_graph
        if self._sub is not None and not compaction_due(len(stepped), len(order), graphs):
            return  # keep replaying the captured sub-ensemble; stopped members step at rate 0
        index = torch.tensor(order, device=self.state.lr.device)
        sub_net = self.net.select_members(index)
        sub = FullBatchGD(
            sub_net,
            [t.select(index) for t in self.terms],
            [sub_net.get_parameter(name) for name in self._names],
            self.state.lr[index],
            self.settings,
            compact=False,
            initial=[p0[index] for p0 in self.initial],
            closed_form=self.closed_form,
        )
        s, t = self.state, sub.state
        t.steps, t.restarts, t.loss = s.steps[index], s.restarts[index], s.loss[index]
        self._sub = (index, sub)

    @torch.no_grad()
    def _pull(self, index: Tensor, sub: FullBatchGD) -> None:
        """Copy the sub-ensemble's weights and bookkeeping back into the whole ensemble."""
        for p, q in zip(self.params, sub.params):
            p.index_copy_(0, index, q)
        s, t = self.state, sub.state
        for name in ("lr", "steps", "status", "restarts", "loss", "running"):
            getattr(s, name).index_copy_(0, index, getattr(t, name))

    def run_until_done(self, chunk: int = 1000) -> GDState:
        """Run chunks until no member is running (plain loop, no Lightning)."""
        while self.run_chunk(chunk):
            pass
        return self.state

    def summary(self) -> list[dict]:
        """Per-member outcome: train loss, steps, final lr, restarts, status."""
        s = self.state
        return [
            {
                "train_loss": float(s.loss[k]),
                "steps": int(s.steps[k]),
                "final_lr": float(s.lr[k]),
                "restarts": int(s.restarts[k]),
                "status": STATUS_NAMES[int(s.status[k])],
            }
            for k in range(s.lr.shape[0])
        ]


def parameter_names(net: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> list[str]:
    """The names under which ``params`` live in ``net`` (in the order of ``params``)."""
    names = {id(p): name for name, p in net.named_parameters()}
    return [names[id(p)] for p in params]


def max_chunks(settings: GDSettings, chunk: int) -> int:
    """An upper bound on the chunks of ``chunk`` steps any member can need, restarts included."""
    per_try = (settings.max_steps + 1) // chunk + 2
    return per_try * (settings.max_restarts + 1)
