"""Diagonal linear network in the trunk + heads shape (SCIENCE.md §2).

Trunk w₊, w₋ ∈ R^d; head of task t: v₊ᵗ, v₋ᵗ ∈ R^d; f_t(x) = ⟨βᵗ, x⟩ with βᵗ = w₊∘v₊ᵗ − w₋∘v₋ᵗ.
Every weight starts at the constant α; a fresh head (PT+FT) starts at the constant γ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from mtl_lab.models.base import SharedTrunkNetwork, check_input


class DiagonalNetwork(SharedTrunkNetwork):
    """K stacked diagonal linear networks sharing the trunk (w₊, w₋) across tasks.

    Example:
        >>> net = DiagonalNetwork(in_dim=4, tasks=("aux", "main"), seeds=[0], alpha=1e-3)
        >>> net.beta("main").shape
        torch.Size([1, 4])
    """

    kind = "diagonal"

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[str],
        seeds: Sequence[int],
        alpha: float | Sequence[float] = 1e-3,
        head_init_scale: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be ≥ 1, got {in_dim}")
        k = len(seeds)
        self._spec = dict(in_dim=in_dim)
        self.tasks = tuple(tasks)
        a = torch.as_tensor(alpha, dtype=torch.float32).expand(k).reshape(k, 1)
        self.w_plus = nn.Parameter(a.expand(k, in_dim).clone())
        self.w_minus = nn.Parameter(a.expand(k, in_dim).clone())
        self.v_plus = nn.ParameterDict()
        self.v_minus = nn.ParameterDict()
        for task in self.tasks:
            self.reset_head(task, a if head_init_scale is None else head_init_scale, seeds)

    @property
    def ensemble_size(self) -> int:
        return self.w_plus.shape[0]

    def beta(self, task: str) -> Tensor:
        """βᵗ = w₊∘v₊ᵗ − w₋∘v₋ᵗ, shape (K, d)."""
        return self.w_plus * self.v_plus[task] - self.w_minus * self.v_minus[task]

    def linear_readout(self, task: str) -> Tensor:
        return self.beta(task)

    def forward(self, x: Tensor, task: str) -> Tensor:
        check_input(x, self.ensemble_size)
        b = self.beta(task)
        if x.dim() == 2:  # shared inputs: one (n, d) × (d, K) product
            return (x @ b.T).T
        return torch.bmm(x, b.unsqueeze(2)).squeeze(2)

    def features(self, x: Tensor) -> Tensor:
        """h(x) = (w₊∘x, w₋∘x) ∈ R^{2d}: the head reads βᵗ off it as (v₊ᵗ, −v₋ᵗ)."""
        check_input(x, self.ensemble_size)
        xs = x.unsqueeze(0) if x.dim() == 2 else x
        return torch.cat([xs * self.w_plus.unsqueeze(1), xs * self.w_minus.unsqueeze(1)], dim=2)

    def trunk_parameters(self) -> Iterator[nn.Parameter]:
        yield self.w_plus
        yield self.w_minus

    def head_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        for name in self.tasks if task is None else (task,):
            yield self.v_plus[name]
            yield self.v_minus[name]

    @torch.no_grad()
    def reset_head(self, task: str, scales: Tensor, seeds: Sequence[int]) -> None:
        k, d = self.w_plus.shape
        g = torch.as_tensor(scales, dtype=self.w_plus.dtype).to(self.w_plus.device)
        g = g.reshape(-1, 1).expand(k, d).clone()
        self.v_plus[task] = nn.Parameter(g.clone())
        self.v_minus[task] = nn.Parameter(g)
