"""Shared ReLU trunk (depth ≥ 1, any width, optional biases) with linear heads (SCIENCE.md §2).

Initialisation: trunk weights ~ N(0, 2/fan_in) · s (He scale times the init scale s; s = 1e-3 is
the rich regime, s = 1 the lazy one), biases 0; head weights ~ N(0, 1/H) · scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from mtl_lab.models.base import SharedTrunkNetwork, check_input, stack_members

TRUNK_SALT = 0
HEAD_SALT = 7919


def _head_salt(task: str) -> int:
    return HEAD_SALT + sum(ord(c) for c in task)


class ReLUNetwork(SharedTrunkNetwork):
    """f_t(x) = v_tᵀ h_L(x),  h_l = ReLU(W_l h_{l-1} + b_l),  h_0 = x, for K stacked members.

    Example:
        >>> net = ReLUNetwork(in_dim=3, width=8, depth=1, tasks=("aux", "main"), seeds=[0, 1])
        >>> net(torch.randn(5, 3), "main").shape
        torch.Size([2, 5])
    """

    kind = "relu"

    def __init__(
        self,
        in_dim: int,
        width: int,
        depth: int,
        tasks: Sequence[str],
        seeds: Sequence[int],
        bias: bool = False,
        init_scale: float | Sequence[float] = 1.0,
        head_init_scale: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1 or in_dim < 1:
            raise ValueError(f"need depth, width, in_dim ≥ 1; got {depth}, {width}, {in_dim}")
        k = len(seeds)
        self._spec = dict(in_dim=in_dim, width=width, depth=depth, bias=bias)
        self.tasks = tuple(tasks)
        scales = torch.as_tensor(init_scale, dtype=torch.float32).expand(k)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        fan_in = in_dim
        for layer in range(depth):
            std = math.sqrt(2.0 / fan_in)

            def draw(g: torch.Generator, shape=(width, fan_in), std=std) -> Tensor:
                return torch.randn(shape, generator=g) * std

            w = stack_members(seeds, TRUNK_SALT + layer, draw) * scales.view(k, 1, 1)
            self.weights.append(nn.Parameter(w))
            if bias:
                self.biases.append(nn.Parameter(torch.zeros(k, width)))
            fan_in = width
        self.heads = nn.ParameterDict()
        head_scales = scales if head_init_scale is None else head_init_scale
        for task in self.tasks:
            self.reset_head(task, torch.as_tensor(head_scales, dtype=torch.float32), seeds)

    @property
    def ensemble_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def width(self) -> int:
        return self.weights[-1].shape[1]

    def activations_per_sample(self) -> int:
        return sum(w.shape[1] for w in self.weights)

    def _hidden(self, x: Tensor) -> tuple[Tensor, bool]:
        """Last hidden layer h_L and whether it is laid out (n, K, H) (else (K, n, H)).

        Shared inputs go through the first layer as ONE matrix product x (n, d) × (d, K·H):
        the (n, K, H) layout keeps that product and the head contraction free of copies.
        """
        k = self.ensemble_size
        check_input(x, k)
        shared = x.dim() == 2
        h = x
        for layer, w in enumerate(self.weights):
            if shared and layer == 0:
                z = (h @ w.reshape(k * w.shape[1], w.shape[2]).T).view(h.shape[0], k, w.shape[1])
                if self.biases:
                    z = z + self.biases[0]
            else:
                if shared:  # leave the shared layout after the first layer
                    h, shared = h.transpose(0, 1), False
                z = torch.bmm(h, w.transpose(1, 2))
                if self.biases:
                    z = z + self.biases[layer].unsqueeze(1)
            h = torch.relu(z)
        return h, shared

    def features(self, x: Tensor) -> Tensor:
        h, nkh = self._hidden(x)
        return h.transpose(0, 1) if nkh else h

    def forward(self, x: Tensor, task: str) -> Tensor:
        h, nkh = self._hidden(x)
        v = self.heads[task]
        if nkh:
            if h.shape[1] == 1:  # a single run: a plain matrix-vector product
                return (h.view(h.shape[0], -1) @ v[0]).unsqueeze(0)
            return (h * v).sum(-1).T
        return (h * v.unsqueeze(1)).sum(-1)

    def trunk_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.weights
        yield from self.biases

    def head_parameters(self, task: str | None = None) -> Iterator[nn.Parameter]:
        for name in self.tasks if task is None else (task,):
            yield self.heads[name]

    @torch.no_grad()
    def reset_head(self, task: str, scales: Tensor, seeds: Sequence[int]) -> None:
        h = self.width
        k = len(seeds)
        scales = torch.as_tensor(scales, dtype=torch.float32).expand(k)

        def draw(g: torch.Generator) -> Tensor:
            return torch.randn(h, generator=g) / math.sqrt(h)

        device = self.weights[0].device
        v = stack_members(seeds, _head_salt(task), draw, device) * scales.view(k, 1).to(device)
        self.heads[task] = nn.Parameter(v.to(self.weights[0].dtype))
