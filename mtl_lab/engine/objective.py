"""Training objectives as weighted sums of squared errors over loss terms.

A loss term pairs one task head with samples; for ensemble member k,
L_k(θ) = Σ_terms Σ_i c_{k,i} (f_t(x_i; θ_k) − y_{k,i})².
The per-member, per-sample coefficients c hold both the data mask
(c = 0 for samples a member does not see, e.g. beyond its n_main) and the task weighting
(per-sample, equal, or fixed; see :func:`task_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtl_lab.engine.weighting import make_weighting
from mtl_lab.models.base import SharedTrunkNetwork


@dataclass
class LossTerm:
    """One task's share of the objective: f_task on ``x`` against ``y`` with coefficients ``c``.

    x: (n, d) shared by all members or (K, n, d); y, c: (K, n).
    """

    task: str
    x: Tensor
    y: Tensor
    c: Tensor
    _bands: dict[float, list[tuple[int, int, int]]] = field(
        default_factory=dict, repr=False, compare=False)

    def sample_counts(self) -> list[int]:
        """n_k: one past the last sample member k uses (c ≠ 0); 0 for a member that uses none."""
        position = torch.arange(1, self.c.shape[1] + 1, device=self.c.device)
        return (self.c.ne(0) * position).amax(1).tolist() if self.c.numel() else [0] * len(self.c)

    def bands(self, overhead: float | None = None) -> list[tuple[int, int, int]]:
        """Row bands (r₀, r₁, m): samples r₀ ≤ i < r₁ are evaluated on the first m members only.

        Members ordered by decreasing n_k make every band's users a prefix of the ensemble, so a
        member that uses 16 samples no longer pays for the 512 another member uses (see
        :func:`row_bands`). ``overhead`` is the fixed cost of a band in member-samples; by
        default that of the diagonal network's (a band costs 4·d flops per member and sample).
        Computed once per term and overhead.
        """
        if overhead is None:
            overhead = BAND_OVERHEAD_FLOP / (4 * self.x.shape[-1])
        if overhead not in self._bands:
            counts = self.sample_counts()
            self._bands[overhead] = (row_bands(counts, overhead) if any(counts)
                                     else [(0, 0, len(counts))])
        return self._bands[overhead]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LossTerm:
        dtype = dtype or self.x.dtype
        return LossTerm(
            self.task, self.x.to(device, dtype), self.y.to(device, dtype), self.c.to(device, dtype)
        )

    def select(self, index: Tensor) -> LossTerm:
        """The same term restricted to a subset of members, trimmed to the samples they use."""
        c = self.c[index]
        used = torch.nonzero(c.ne(0).any(0))
        n = int(used.max()) + 1 if used.numel() else 0
        x = self.x[:n] if self.x.dim() == 2 else self.x[index, :n]
        return LossTerm(self.task, x, self.y[index, :n], c[:, :n])


BAND_OVERHEAD_FLOP = 4e6
"""Fixed cost of one more row band, in floating-point operations: what one more pair of small
products and their bookkeeping cost on a CPU (≈ 25 µs at ~150 GFLOP/s). A band of its own must
save more work than this per step."""


def row_bands(counts: Sequence[int], overhead: float = 0.0) -> list[tuple[int, int, int]]:
    """Cheapest split of rows [0, max n_k) into bands (r₀, r₁, m) with m = 1 + max{k : n_k > r₀}.

    A band costs (r₁ − r₀)·m member-sample evaluations plus ``overhead``; adjacent elementary
    bands (between consecutive distinct n_k) are merged where that is cheaper (dynamic
    programming over the ≤ K boundaries).

    Example:
        >>> row_bands([512, 256, 16], overhead=0)
        [(0, 16, 3), (16, 256, 2), (256, 512, 1)]
        >>> row_bands([512, 500], overhead=1000)
        [(0, 512, 2)]
    """
    edges = sorted({0, *(int(n) for n in counts)})
    users = [1 + max(k for k, n in enumerate(counts) if n >= b) for b in edges[1:]]
    best, cut = [0.0], [0]  # best[j]: cheapest split of the first j elementary bands
    for j in range(1, len(edges)):
        options = [(best[i] + (edges[j] - edges[i]) * users[i] + overhead, i) for i in range(j)]
        cost, start = min(options)
        best.append(cost)
        cut.append(start)
    bands, j = [], len(edges) - 1
    while j > 0:
        i = cut[j]
        bands.append((edges[i], edges[j], users[i]))
        j = i
    return bands[::-1]


class WeightedSquaredError(torch.autograd.Function):
    """Σ_i c_{k,i} (p_{k,i} − y_{k,i})² per member, with the hand-written gradient
    ∂/∂p_{k,i} = 2 c_{k,i} (p_{k,i} − y_{k,i}) — one fused op instead of autograd's chain of
    element-wise products, which matters in a loop of 10⁵ full-batch steps."""

    @staticmethod
    def forward(ctx, pred: Tensor, y: Tensor, c: Tensor) -> Tensor:
        err = pred - y
        weighted = c * err
        ctx.save_for_backward(weighted)
        return (weighted * err).sum(dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (weighted,) = ctx.saved_tensors
        return weighted * (2.0 * grad).unsqueeze(1), None, None


def weighted_squared_error(pred: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """Σ_i c_{k,i} (pred_{k,i} − y_{k,i})², shape (K,); y and c carry no gradient."""
    return WeightedSquaredError.apply(pred, y, c)


class BandedLinearSquaredError(torch.autograd.Function):
    """L_k = Σ_i c_{k,i} (⟨β_k, x_i⟩ − y_{k,i})² for a linear readout β (K, d), one row band at
    a time: band (r₀, r₁, m) multiplies its rows by the first m members' β only. The gradient
    ∂L_k/∂β_k = 2 Σ_i c_{k,i} (⟨β_k, x_i⟩ − y_{k,i}) x_i is accumulated band by band in place, so
    the whole objective is one autograd node whatever the number of bands."""

    @staticmethod
    def forward(ctx, beta: Tensor, x: Tensor, y: Tensor, c: Tensor, bands) -> Tensor:
        k = beta.shape[0]
        loss = None
        weighted = []
        for r0, r1, m in bands:
            if x.dim() == 2:
                err = beta[:m] @ x[r0:r1].T  # (m, rows), contiguous
            else:
                err = torch.bmm(x[:m, r0:r1], beta[:m].unsqueeze(2)).squeeze(2)
            err.sub_(y[:m, r0:r1])
            w = c[:m, r0:r1] * err
            part = torch.linalg.vecdot(w, err)
            if loss is None and m == k:  # the first band usually holds every member
                loss = part
            else:
                loss = beta.new_zeros(k) if loss is None else loss
                loss[:m] += part
            weighted.append(w)
        ctx.bands = bands
        ctx.save_for_backward(x, *weighted)
        ctx.members = k
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *weighted = ctx.saved_tensors
        g = None
        for (r0, r1, m), w in zip(ctx.bands, weighted):
            rows = x[r0:r1] if x.dim() == 2 else x[:m, r0:r1]
            if g is None and m == ctx.members and x.dim() == 2:
                g = w @ rows  # the first band usually holds every member: nothing to add to
                continue
            if g is None:
                g = grad.new_zeros(ctx.members, x.shape[-1])
            if x.dim() == 2:
                g[:m].addmm_(w, rows)
            else:
                g[:m] += torch.bmm(w.unsqueeze(1), rows).squeeze(1)
        return g.mul_((2.0 * grad).unsqueeze(1)), None, None, None, None


def term_loss(net: SharedTrunkNetwork, term: LossTerm) -> Tensor:
    """Σ_i c_{k,i} (f_t(x_i) − y_{k,i})² of one term, shape (K,)."""
    beta = net.linear_readout(term.task)
    if beta is not None:
        return BandedLinearSquaredError.apply(beta, term.x, term.y, term.c, term.bands())
    return weighted_squared_error(net(term.x, term.task), term.y, term.c)


def member_losses(net: SharedTrunkNetwork, terms: Sequence[LossTerm]) -> Tensor:
    """L_k = Σ_terms Σ_i c_{k,i} (f_t(x_i) − y_{k,i})², shape (K,)."""
    total = None
    for term in terms:
        part = term_loss(net, term)
        total = part if total is None else total + part
    return total


def task_weights(
    counts: Mapping[str, Tensor], scheme: str, options: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """Per-sample coefficient c_t = w_t / n_t of each task, given per-member sample counts n_t
    (K,), for a registered weighting whose task weights w_t depend on the counts alone
    (:meth:`~mtl_lab.engine.weighting.Weighting.task_weights`, the one formula both paths use):

    * ``per_sample`` (the paper's): w_t = n_t / Σ_s n_s, so every sample weighs 1 / Σ_s n_s — the
      mean over the concatenated samples;
    * ``equal``: w_t = 1/T, each sample of task t 1 / (T·n_t);
    * ``fixed``: w_t from ``options["weights"]``, each sample w_t / n_t.
    """
    weighting = make_weighting(scheme, list(counts), **dict(options or {}))
    exact = {t: torch.as_tensor(n, dtype=torch.float64) for t, n in counts.items()}
    weights = weighting.task_weights(exact)  # in float64, so that w_t / n_t rounds once
    if weights is None:
        raise ValueError(f"weighting {scheme!r} learns or looks at gradients during training: the "
                         "batched engine runs weightings fixed by the sample counts only; use the "
                         "Lightning modules (mtl_lab.modules.MultiTaskModule) for it")
    return {t: (torch.as_tensor(weights[t], dtype=torch.float64) / exact[t]).to(n.dtype)
            for t, n in counts.items()}
