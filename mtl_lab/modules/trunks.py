"""Trunks for the Lightning modules: any ``nn.Module`` mapping inputs to features works; these are
the lab's own, plus the bridge from the engine's ensemble networks.

* :class:`MLPTrunk` — the shared ReLU trunk of SCIENCE.md §2 as a plain module:
  h_l = ReLU(W_l h_{l−1} + b_l), W_l ~ N(0, 2/fan_in)·s. With the same seed it draws exactly the
  weights of member ``seed`` of the engine's :class:`~mtl_lab.models.ReLUNetwork`.
* :class:`DiagonalTrunk` — the diagonal linear network's trunk: h(x) = [w₊∘x, w₋∘x]; a linear
  head u = [v₊, −v₋] on it gives f(x) = ⟨w₊∘v₊ − w₋∘v₋, x⟩.
* :func:`network_parts` — one member of an engine network as (trunk, heads), so that the module
  path can start from the engine's exact starting point.
* :func:`build_trunk` — a trunk from a spec ``{"class_path": ..., "init_args": {...}}``: modules
  given that way are rebuilt by ``load_from_checkpoint`` without passing the trunk again.

Example:
    >>> trunk = MLPTrunk(in_dim=3, width=8, depth=2, seed=0)
    >>> trunk(torch.randn(5, 3)).shape, trunk.feature_dim
    (torch.Size([5, 8]), 8)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl_lab.models import DiagonalNetwork, ReLUNetwork, SharedTrunkNetwork
from mtl_lab.models.base import member_generator
from mtl_lab.models.relu import TRUNK_SALT


class MLPTrunk(nn.Module):
    """A ReLU MLP trunk (depth ≥ 1, any width, optional biases), He init × ``init_scale``."""

    def __init__(self, in_dim: int, width: int, depth: int = 1, bias: bool = False,
                 init_scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if min(in_dim, width, depth) < 1:
            raise ValueError(f"need in_dim, width, depth ≥ 1; got {in_dim}, {width}, {depth}")
        self.feature_dim = width
        layers = []
        fan_in = in_dim
        for layer in range(depth):
            linear = nn.Linear(fan_in, width, bias=bias)
            g = member_generator(seed, TRUNK_SALT + layer)
            with torch.no_grad():
                linear.weight.copy_(torch.randn((width, fan_in), generator=g)
                                    * math.sqrt(2.0 / fan_in) * init_scale)
                if bias:
                    linear.bias.zero_()
            layers += [linear, nn.ReLU()]
            fan_in = width
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


class DiagonalTrunk(nn.Module):
    """h(x) = [w₊∘x, w₋∘x] (2d features), every weight starting at α."""

    def __init__(self, in_dim: int, alpha: float = 1e-3) -> None:
        super().__init__()
        self.feature_dim = 2 * in_dim
        self.w_plus = nn.Parameter(torch.full((in_dim,), float(alpha)))
        self.w_minus = nn.Parameter(torch.full((in_dim,), float(alpha)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x * self.w_plus, x * self.w_minus], dim=-1)


@torch.no_grad()
def network_parts(net: SharedTrunkNetwork, member: int = 0
                  ) -> tuple[nn.Module, dict[str, nn.Linear]]:
    """Member ``member`` of an engine network as a plain trunk and one bias-free linear head per
    task, computing the same function with the same parameters (copies)."""
    one = net.select_members([member])
    if isinstance(one, ReLUNetwork):
        spec = one.spec()
        trunk = MLPTrunk(spec["in_dim"], spec["width"], spec["depth"], spec["bias"])
        linears = [m for m in trunk.layers if isinstance(m, nn.Linear)]
        for i, linear in enumerate(linears):
            linear.weight.copy_(one.weights[i][0])
            if spec["bias"]:
                linear.bias.copy_(one.biases[i][0])
        heads = {}
        for task in one.tasks:
            heads[task] = nn.Linear(spec["width"], 1, bias=False)
            heads[task].weight.copy_(one.heads[task][0][None])
        return trunk, heads
    if isinstance(one, DiagonalNetwork):
        d = one.w_plus.shape[1]
        trunk = DiagonalTrunk(d)
        trunk.w_plus.copy_(one.w_plus[0])
        trunk.w_minus.copy_(one.w_minus[0])
        heads = {}
        for task in one.tasks:
            heads[task] = nn.Linear(2 * d, 1, bias=False)
            heads[task].weight.copy_(torch.cat([one.v_plus[task][0], -one.v_minus[task][0]])[None])
        return trunk, heads
    raise TypeError(f"no plain-module form for {type(net).__name__}")


@torch.no_grad()
def set_network_parts(net: ReLUNetwork, member: int, trunk: MLPTrunk,
                      heads: Mapping[str, nn.Linear]) -> None:
    """Write a plain trunk and heads (e.g. rescaled copies from :func:`network_parts`) back into
    member ``member`` of an engine ReLU network, in place: the inverse of :func:`network_parts`."""
    if not isinstance(net, ReLUNetwork):
        raise TypeError(f"only a ReLU network's members can be written, not {type(net).__name__}")
    linears = [m for m in trunk.layers if isinstance(m, nn.Linear)]
    for i, linear in enumerate(linears):
        net.weights[i][member].copy_(linear.weight)
        if net.biases:
            net.biases[i][member].copy_(linear.bias)
    for task, head in heads.items():
        net.heads[task][member].copy_(head.weight[0])


def build_trunk(spec: Mapping[str, Any]) -> nn.Module:
    """``{"class_path": "package.module.Class", "init_args": {...}}`` → an instance."""
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(f"a trunk spec needs a 'class_path' (and optional 'init_args'), got "
                         f"{spec!r}")
    module_name, _, cls_name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import trunk class {spec['class_path']!r}: {err}") from err
    return cls(**dict(spec.get("init_args") or {}))
