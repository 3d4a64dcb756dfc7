"""Training objectives as weighted sums of squared errors over loss terms.

A loss term pairs one task head with samples; for ensemble member k,
L_k(θ) = Σ_terms Σ_i c_{k,i} (f_t(x_i; θ_k) − y_{k,i})².
The per-member, per-sample coefficients c hold both the data mask
(c = 0 for samples a member does not see, e.g. beyond its n_main) and the task weighting
(per-sample, equal, or fixed; see :func:`task_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

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


def member_losses(net: SharedTrunkNetwork, terms: Sequence[LossTerm]) -> Tensor:
    """L_k = Σ_terms Σ_i c_{k,i} (f_t(x_i) − y_{k,i})², shape (K,)."""
    total = None
    for term in terms:
        part = weighted_squared_error(net(term.x, term.task), term.y, term.c)
        total = part if total is None else total + part
    return total


def task_weights(
    counts: Mapping[str, Tensor], scheme: str, fixed: Mapping[str, float] | None = None
) -> dict[str, Tensor]:
    """Per-sample coefficient of each task given per-member sample counts n_t (K,).

    * ``per_sample`` (the paper's): every sample weighs 1 / Σ_t n_t — the mean over the
      concatenated samples, so a task weighs by its sample count;
    * ``equal``: task t weighs 1/T, each of its samples 1 / (T·n_t);
    * ``fixed``: task t weighs w_t, each of its samples w_t / n_t.
    """
    if scheme == "per_sample":
        total = sum(counts.values())
        return {t: 1.0 / total for t in counts}
    if scheme == "equal":
        return {t: 1.0 / (len(counts) * n) for t, n in counts.items()}
    if scheme == "fixed":
        if fixed is None or set(fixed) != set(counts):
            raise ValueError(f"fixed weighting needs one weight per task {sorted(counts)}")
        return {t: fixed[t] / n for t, n in counts.items()}
    raise ValueError(f"unknown task weighting {scheme!r}: use per_sample, equal or fixed")
