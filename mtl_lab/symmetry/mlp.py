"""The networks the symmetry tools understand: a ReLU MLP trunk plus linear heads (SCIENCE.md §6).

A trunk is a chain of ``nn.Linear`` layers, each followed by an ``nn.ReLU``
(h_l = ReLU(W_l h_{l−1} + b_l), l = 0 … L−1, biases optional), given as the ``nn.Sequential``
itself, as a module holding it in ``.layers`` whose forward is exactly that chain (checked on a
random input; :class:`~mtl_lab.modules.trunks.MLPTrunk`), or as a list of the linear layers. The
heads are linear maps y_t = V_t h_{L−1} (+ c_t) of the last hidden layer, one per task, given as
a mapping ``{task: nn.Linear}`` (a ``dict`` or an ``nn.ModuleDict``) and taken in sorted task
order. Anything else (a ResNet, a convolution, a normalisation layer, a
skip connection, another activation) is refused with :class:`NotAnMLP`: the rescaling symmetry
and the path-lifting of §6 are stated for this family.

:class:`MLP` is the validated view (no copies: it holds the caller's layers);
:class:`Architecture` is the same shape without weights (input size, hidden widths, head output
sizes, biases, activation), with a flat parameter layout and the list of paths, for the counting
of conservation laws (:mod:`.laws`).

Flat layout θ ∈ R^D, in this order: W_0 (row-major), b_0, W_1, b_1, …, W_{L−1}, b_{L−1}, then for
every head V_t (row-major), c_t (biases only where present).

Example:
    >>> from torch import nn
    >>> trunk = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU())
    >>> net = MLP.of(trunk, {"main": nn.Linear(5, 2, bias=False)})
    >>> net.widths, str(net.architecture()), net.architecture().n_params
    ((4, 5), '3-4-5:2 bias', 51)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from mtl_lab.errors import InputError

__all__ = ["MLP", "Architecture", "NotAnMLP", "TooLarge"]

Activation = Literal["relu", "linear"]


class NotAnMLP(InputError, TypeError):
    """A network outside the family of SCIENCE.md §6: not a chain of Linear + ReLU layers with
    linear heads on the last one."""


class TooLarge(InputError):
    """A network too large for an exact numerical computation (see the size limits)."""


@torch.no_grad()
def _same_forward(trunk: nn.Module, layers: nn.Sequential) -> None:
    """A wrapper must compute exactly ``layers(x.flatten(1))`` (no skip connection, no extra
    scaling): checked on a random input."""
    first = next((m for m in layers if isinstance(m, nn.Linear)), None)
    if first is None:
        return  # refused later, with the layer list
    x = torch.randn(3, first.in_features, generator=torch.Generator().manual_seed(0),
                    dtype=first.weight.dtype, device=first.weight.device)
    try:
        same = torch.allclose(trunk(x), layers(x), rtol=1e-5, atol=1e-6)
    except Exception as err:  # noqa: BLE001 — any failure means "not the plain chain"
        raise NotAnMLP(f"{type(trunk).__name__} does not run as its .layers: {err}") from err
    if not same:
        raise NotAnMLP(f"{type(trunk).__name__}.forward is not its .layers (a skip connection or "
                       "other computation around them): not a plain ReLU MLP trunk")


def _trunk_modules(trunk: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(trunk, nn.Sequential):
        return list(trunk)
    layers = getattr(trunk, "layers", None)
    if isinstance(trunk, nn.Module) and isinstance(layers, nn.Sequential):
        # a wrapper such as MLPTrunk: its parameters must all live in .layers
        inside = {id(p) for p in layers.parameters()}
        if any(id(p) not in inside for p in trunk.parameters()):
            raise NotAnMLP(f"{type(trunk).__name__} has parameters outside its .layers: not a "
                           "plain ReLU MLP trunk")
        _same_forward(trunk, layers)
        return list(layers)
    if isinstance(trunk, (list, tuple)) and all(isinstance(m, nn.Linear) for m in trunk):
        return [m for lin in trunk for m in (lin, nn.ReLU())]
    raise NotAnMLP(f"expected a ReLU MLP trunk (an nn.Sequential of nn.Linear + nn.ReLU, or a "
                   f"module holding one in .layers, such as MLPTrunk), got "
                   f"{type(trunk).__name__}: the rescaling symmetry and path-lifting of "
                   "SCIENCE.md §6 are only implemented for that family (no convolutions, "
                   "normalisation or skip connections; ENorm alone also balances a BatchNorm "
                   "ResNet's block channels, mtl_lab.symmetry.channels)")


@dataclass
class MLP:
    """A validated view of a ReLU MLP trunk (its linear layers, in order) and its linear heads
    (task → layer, sorted by task; empty for a trunk on its own)."""

    layers: list[nn.Linear]
    heads: dict[str, nn.Linear] = field(default_factory=dict)

    @classmethod
    def of(cls, trunk: nn.Module | Sequence[nn.Module],
           heads: Mapping[str, nn.Module] | None = None) -> MLP:
        """Check ``trunk`` and ``heads`` and view them (raises :class:`NotAnMLP`)."""
        modules = _trunk_modules(trunk)
        while modules and isinstance(modules[0], (nn.Flatten, nn.Identity)):
            modules = modules[1:]  # shape-only modules in front change nothing
        if not modules or len(modules) % 2:
            raise NotAnMLP(f"a ReLU MLP trunk alternates nn.Linear and nn.ReLU; got "
                           f"{[type(m).__name__ for m in modules]}")
        linears = modules[0::2]
        for lin, act in zip(linears, modules[1::2], strict=True):
            if not isinstance(lin, nn.Linear) or type(act) is not nn.ReLU:
                raise NotAnMLP(f"a ReLU MLP trunk alternates nn.Linear and nn.ReLU; found "
                               f"{type(lin).__name__} then {type(act).__name__}")
        for prev, nxt in zip(linears, linears[1:], strict=False):
            if prev.out_features != nxt.in_features:
                raise NotAnMLP(f"layer sizes do not chain: {prev} then {nxt}")
        bias = {lin.bias is not None for lin in linears}
        if len(bias) > 1:
            raise NotAnMLP("every trunk layer must have a bias, or none")
        out: dict[str, nn.Linear] = {}
        if heads is not None:
            if not isinstance(heads, (Mapping, nn.ModuleDict)):
                raise NotAnMLP(f"heads must be a mapping task → nn.Linear (a dict or "
                               f"nn.ModuleDict), got {type(heads).__name__}")
            for name in sorted(heads):
                head = heads[name]
                if not isinstance(head, nn.Linear):
                    raise NotAnMLP(f"head {name!r} must be an nn.Linear, got "
                                   f"{type(head).__name__}")
                if head.in_features != linears[-1].out_features:
                    raise NotAnMLP(f"head {name!r} takes {head.in_features} features, the trunk "
                                   f"gives {linears[-1].out_features}")
                out[name] = head
        return cls(list(linears), out)

    @property
    def widths(self) -> tuple[int, ...]:
        """H_0, …, H_{L−1}: the hidden widths."""
        return tuple(lin.out_features for lin in self.layers)

    @property
    def bias(self) -> bool:
        return self.layers[0].bias is not None

    def outgoing(self, layer: int) -> list[nn.Linear]:
        """The layers reading hidden ``layer``: the next trunk layer, or every head."""
        if layer + 1 < len(self.layers):
            return [self.layers[layer + 1]]
        return list(self.heads.values())

    def tunable(self, layer: int) -> bool:
        """Whether the neurons of hidden ``layer`` may be rescaled: the last hidden layer only
        when there are heads to absorb 1/λ (otherwise the trunk's features would change)."""
        return layer + 1 < len(self.layers) or bool(self.heads)

    def parameters(self) -> list[Tensor]:
        """Every parameter, in the flat layout's order."""
        out = []
        for lin in [*self.layers, *self.heads.values()]:
            out.append(lin.weight)
            if lin.bias is not None:
                out.append(lin.bias)
        return out

    def flat(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """θ in the flat layout (a detached copy)."""
        return torch.cat([p.detach().reshape(-1).to(dtype) for p in self.parameters()])

    @torch.no_grad()
    def load_flat(self, theta: Tensor) -> None:
        """Write a flat θ back into the layers (in place)."""
        start = 0
        for p in self.parameters():
            p.copy_(theta[start:start + p.numel()].view_as(p))
            start += p.numel()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Every head's output (or ``{"features": …}`` without heads)."""
        h = x.flatten(1)
        for lin in self.layers:
            h = torch.relu(lin(h))
        if not self.heads:
            return {"features": h}
        return {name: head(h) for name, head in self.heads.items()}

    def architecture(self) -> Architecture:
        heads = tuple(h.out_features for h in self.heads.values())
        head_bias = {h.bias is not None for h in self.heads.values()}
        if len(head_bias) > 1:
            raise NotAnMLP("every head must have a bias, or none")
        return Architecture(self.layers[0].in_features, self.widths, heads, self.bias, "relu",
                            bool(head_bias and head_bias.pop()))


_ARCH = re.compile(r"^\s*(\d+)((?:-\d+)+)\s*(?::\s*(\d+(?:\s*,\s*\d+)*))?\s*$")


@dataclass(frozen=True)
class Architecture:
    """The shape of a trunk + heads network, without weights.

    ``in_dim`` d, hidden ``widths`` (H_0, …, H_{L−1}), ``heads`` (the output size of every head),
    ``bias`` (trunk biases b_l), ``activation`` ("relu", or "linear" for a deep linear network)
    and ``head_bias`` (head biases c_t). Written ``"d-H_0-…-H_{L−1}:k_1,k_2"`` with the words
    ``bias``, ``head_bias``, ``linear`` appended when they apply (see :meth:`parse`).
    """

    in_dim: int
    widths: tuple[int, ...]
    heads: tuple[int, ...] = (1,)
    bias: bool = False
    activation: Activation = "relu"
    head_bias: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "heads", tuple(int(k) for k in self.heads))
        if self.in_dim < 1 or not self.widths or min(self.widths) < 1:
            raise InputError(f"need an input size ≥ 1 and at least one hidden layer of width ≥ 1, "
                             f"got {self.in_dim} and {self.widths}")
        if self.heads and min(self.heads) < 1:
            raise InputError(f"head output sizes must be ≥ 1, got {self.heads}")
        if self.activation not in ("relu", "linear"):
            raise InputError(f"activation must be 'relu' or 'linear', got {self.activation!r}")

    @classmethod
    def parse(cls, text: str, bias: bool = False, activation: Activation = "relu",
              head_bias: bool = False) -> Architecture:
        """``"15-8-8:2,1"``: input 15, hidden widths 8 and 8, two heads of 2 and 1 outputs (no
        ``":…"``: one head of size 1). Words after it switch options on: ``"3-4:1 bias"``,
        ``"3-2:3 linear"``, ``"3-4:1 bias head_bias"``.

        Example:
            >>> arch = Architecture.parse("15-8-8:2,1 bias")
            >>> arch.in_dim, arch.widths, arch.heads, arch.bias, arch.activation
            (15, (8, 8), (2, 1), True, 'relu')
            >>> arch.n_params, arch.n_paths(), str(arch)
            (224, 3096, '15-8-8:2,1 bias')
        """
        words = str(text).split()
        options = {w.lower() for w in words[1:]}
        unknown = options - {"bias", "head_bias", "linear", "relu"}
        match = _ARCH.match(words[0]) if words else None
        if match is None or unknown:
            raise InputError(f"cannot read the architecture {text!r}: write 'IN-H1-…-HL:K1,K2' "
                             f"(e.g. '15-8-8:2,1'), optionally followed by 'bias', 'head_bias', "
                             f"'linear'")
        widths = tuple(int(w) for w in match.group(2).strip("-").split("-"))
        heads = tuple(int(k) for k in match.group(3).split(",")) if match.group(3) else (1,)
        return cls(int(match.group(1)), widths, heads, bias or "bias" in options,
                   "linear" if "linear" in options else activation,
                   head_bias or "head_bias" in options)

    def __str__(self) -> str:
        text = "-".join(map(str, (self.in_dim, *self.widths))) + ":" + ",".join(map(str,
                                                                                  self.heads))
        flags = [w for w, on in (("bias", self.bias), ("head_bias", self.head_bias),
                                 ("linear", self.activation == "linear")) if on]
        return " ".join([text, *flags])

    @property
    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every parameter, in the flat layout's order."""
        out: list[tuple[str, tuple[int, ...]]] = []
        fan_in = self.in_dim
        for layer, width in enumerate(self.widths):
            out.append((f"W{layer}", (width, fan_in)))
            if self.bias:
                out.append((f"b{layer}", (width,)))
            fan_in = width
        for t, k in enumerate(self.heads):
            out.append((f"V{t}", (k, fan_in)))
            if self.head_bias:
                out.append((f"c{t}", (k,)))
        return out

    @property
    def n_params(self) -> int:
        """D, the number of parameters."""
        return sum(int(torch.Size(s).numel()) for _, s in self.shapes)

    @property
    def n_neurons(self) -> int:
        """The number of hidden neurons (one rescaling symmetry each)."""
        return sum(self.widths)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split a flat θ into named tensors (views)."""
        out, start = {}, 0
        for name, shape in self.shapes:
            size = int(torch.Size(shape).numel())
            out[name] = theta[start:start + size].view(shape)
            start += size
        return out

    def build(self, seed: int = 0, dtype: torch.dtype = torch.float64
              ) -> tuple[nn.Sequential, dict[str, nn.Linear]]:
        """A ReLU trunk and heads of this shape (PyTorch's default init from ``seed``; heads named
        ``"t0"``, ``"t1"``, …). Biases are drawn too (not zero) so that every path is exercised."""
        if self.activation != "relu":
            raise InputError("build() makes ReLU networks only")
        g = torch.Generator().manual_seed(seed)
        mods: list[nn.Module] = []
        fan_in = self.in_dim
        for width in self.widths:
            mods += [nn.Linear(fan_in, width, bias=self.bias, dtype=dtype), nn.ReLU()]
            fan_in = width
        heads = {f"t{t}": nn.Linear(fan_in, k, bias=self.head_bias, dtype=dtype)
                 for t, k in enumerate(self.heads)}
        with torch.no_grad():
            for lin in [*mods[0::2], *heads.values()]:
                for p in lin.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, dtype=dtype)
                            / lin.in_features ** 0.5)
        return nn.Sequential(*mods), heads

    def paths(self) -> Tensor:
        """Every path of the path-lifting as the flat indices of its parameters: a (P, L+1) long
        tensor, shorter paths padded with the index D (read as a constant 1).

        Φ_p(θ) = Π_e θ[paths[p, e]]: first the input paths i → j_0 → … → j_{L−1} → output o of
        head t; then the bias paths b_l[j_l] → j_l → … → output (trunk biases); then the head
        bias paths c_t[o] (length one).
        """
        offsets, start = {}, 0
        for name, shape in self.shapes:
            offsets[name] = start
            start += int(torch.Size(shape).numel())
        depth = len(self.widths)
        pad = self.n_params

        def weight_index(layer: int, rows: int, cols: int) -> Tensor:
            return offsets[f"W{layer}"] + torch.arange(rows * cols).view(rows, cols)

        rows: list[Tensor] = []
        # partial paths ending at hidden layer l: (H_l, K_l, depth + 1) index lists, K_l paths
        # per end neuron, the free slots padded
        fan_in = self.in_dim
        ends: Tensor | None = None
        for layer, width in enumerate(self.widths):
            w = weight_index(layer, width, fan_in)  # [j, i]
            if ends is None:
                new = torch.full((width, fan_in, depth + 1), pad, dtype=torch.long)
                new[:, :, 0] = w
            else:  # extend every path ending at i by the edge i → j
                k = ends.shape[1]
                new = ends.unsqueeze(0).expand(width, -1, -1, -1).clone()  # [j, i, k, slots]
                new[:, :, :, layer] = w.unsqueeze(-1).expand(-1, -1, k)
                new = new.reshape(width, fan_in * k, depth + 1)
            if self.bias:
                b = torch.full((width, 1, depth + 1), pad, dtype=torch.long)
                b[:, 0, layer] = offsets[f"b{layer}"] + torch.arange(width)
                new = torch.cat([new, b], dim=1)
            ends, fan_in = new, width
        assert ends is not None
        for t, k in enumerate(self.heads):
            v = offsets[f"V{t}"] + torch.arange(k * fan_in).view(k, fan_in)  # [o, j]
            full = ends.unsqueeze(0).expand(k, -1, -1, -1).clone()  # [o, j, paths, slots]
            full[..., depth] = v.unsqueeze(-1).expand(-1, -1, ends.shape[1])
            rows.append(full.reshape(-1, depth + 1))
        for t, k in enumerate(self.heads if self.head_bias else ()):
            c = torch.full((k, depth + 1), pad, dtype=torch.long)
            c[:, 0] = offsets[f"c{t}"] + torch.arange(k)
            rows.append(c)
        # put input paths first, then bias paths (rows from the bias columns), for readability
        out = torch.cat(rows)
        is_bias = (out == pad).any(1)
        return torch.cat([out[~is_bias], out[is_bias]])

    def n_paths(self) -> int:
        """P, the number of path-lifting coordinates (without building them): with K_0 = d + β,
        K_l = H_{l−1} K_{l−1} + β (β = 1 with trunk biases) paths ending at each neuron of hidden
        layer l, P = (Σ_t k_t) (H_{L−1} K_{L−1} + β_head)."""
        extra = 1 if self.bias else 0
        per_end = self.in_dim + extra
        for prev in self.widths[:-1]:
            per_end = prev * per_end + extra
        return sum(self.heads) * (self.widths[-1] * per_end + (1 if self.head_bias else 0))
