"""Closed-form gradients of the engine's objective for the two paper networks (SCIENCE.md §2).

The objective of member k is L_k = Σ_terms Σ_i c_{k,i} (f_t(x_i) − y_{k,i})² (see
``objective.member_losses``). Write e_{k,i} = f_t(x_i) − y_{k,i} for the residual of a term of
task t and r_{k,i} = 2 c_{k,i} e_{k,i} for its weighted residual.

**Diagonal network**, f_t(x) = ⟨βᵗ, x⟩ with βᵗ = w₊∘v₊ᵗ − w₋∘v₋ᵗ. With gᵗ = Σ_{terms of t} Σ_i
r_{k,i} x_i (= ∂L/∂βᵗ, computed band by band as in ``objective.BandedLinearSquaredError``):

    ∂L/∂w₊ = Σ_t gᵗ∘v₊ᵗ,   ∂L/∂w₋ = −Σ_t gᵗ∘v₋ᵗ,   ∂L/∂v₊ᵗ = gᵗ∘w₊,   ∂L/∂v₋ᵗ = −gᵗ∘w₋.

**ReLU network of depth 1**, h = ReLU(W x + b) ∈ R^H, f_t(x) = v_tᵀ h. With the ReLU mask
m_i = 1[W x_i + b > 0] (so relu'(0) = 0, autograd's choice):

    ∂L/∂v_t = Σ_i r_{k,i} h_i,
    ∂L/∂W[j, :] = Σ_t v_t[j] · Σ_i m_i[j] r_{k,i} x_iᵀ,
    ∂L/∂b[j] = Σ_t v_t[j] · Σ_i m_i[j] r_{k,i}     (j = 1 … H, sums over the terms of task t).

The head factor v_t[j] is pulled out of the sum over samples, so the trunk gradient is one
product (d+1, n) × (n, H) per member of the residual-weighted inputs [r x, r] (r x without a
bias) with the mask — the backward pass never materialises ∂L/∂h, and this product shape runs
~2.5× faster on the CPU than autograd's (H, n) × (n, d). A frozen trunk (PT+LP, ``train:
head``) gives constant features h: they are computed once and reused until a trunk weight
changes.

**Row bands for ReLU.** Members ordered by decreasing n_k (as the engine orders them) make the
users of each block of samples a prefix of the ensemble; a band (r₀, r₁, m) evaluates its
samples on the first m members only (``objective.row_bands``), so a member of n_k = 16 no longer
pays for the 1 024 samples another member uses. The dynamic programme merges bands unless a band
saves more than ``RELU_BAND_OVERHEAD_FLOP`` of work, the measured fixed cost of one more band
(≈ 14 tensor operations) on the 2-core CPU of ``benchmarks/README.md``. Measured there: H = 1000,
K = 8, n_k ∈ {1024, 1024, 256, 256, 64, 64, 16, 16}: 15.6 → 3.6 ms per step at one thread (7.1 →
1.7 ms at two) with the 4 bands chosen; H = 64, n_k ∈ {128, 128, 32, 32, 8, 8}: a band per n_k
was slower (146 vs 83 µs), and the programme keeps one band; the quick ReLU sweep of
``benchmarks/sweep_figure.py`` ran 13 % more member-steps/s with bands than without.

**Which path runs.** ``closed_form_gradient`` returns a gradient function for exactly these
networks (``DiagonalNetwork``, ``ReLUNetwork`` of depth 1 with or without biases) and any subset
of their parameters being trained; everything else — deeper ReLU trunks, user trunks, subclasses
— returns None and the engine keeps autograd. On the benchmark's CPU (AMD EPYC, 2 cores) the
closed form was faster than autograd in every configuration measured, so there is no size
threshold; time per GD step of ``FullBatchGD``, autograd → closed form, 1 thread | 2 threads:

    diagonal d = 1000, n = 1024, K = 1                  208 → 168 µs  | 227 → 176 µs
    diagonal, K = 64 sweep members (n ≤ 1024)           1580 → 1495 µs | 1072 → 1050 µs
    ReLU d = 15, H = 1000, n = 1024, K = 1              2047 → 1013 µs | 1258 → 746 µs
    the same with biases                                 2349 → 986 µs  | 1679 → 736 µs
    the same, head only (PT+LP)                          595 → 155 µs   | 450 → 156 µs
    ReLU K = 4, n = 1024                                13.9 → 5.3 ms  | 7.5 → 2.2 ms
    ReLU H = 64, K = 6, MTL (aux 256, n_main ≤ 128)      465 → 228 µs   | 370 → 193 µs
    ReLU H = 1000, K = 8, n ∈ {16, 64, 256, 1024}       28.7 → 3.2 ms  | 16.0 → 2.2 ms (bands)

On a GPU the closed form has not been timed yet.

Every operation is a per-member tensor operation on the device: no host synchronisation, and a
member's numbers never depend on the other members.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mtl_lab.engine.objective import LossTerm
from mtl_lab.models.base import SharedTrunkNetwork
from mtl_lab.models.diagonal import DiagonalNetwork
from mtl_lab.models.relu import ReLUNetwork

GradientFn = Callable[[], tuple[Tensor, list[Tensor]]]

RELU_BAND_OVERHEAD_FLOP = 8e6
"""Fixed cost of one more ReLU row band in flops, counted as in :func:`relu_flops_per_sample`.
Measured on the benchmark CPU: one more band costs ~40 µs at one thread and 40–80 µs at two
(≈ 14 small operations), while one member-sample costs ~0.065 µs at width 64 (6 kflop) and
~1 µs at width 1000 (122 kflop), i.e. ~100 "flops" per ns; 8e6 is the two-thread end, so a band
is split off only where it clearly pays. A band of its own must save more than this per step."""


def relu_flops_per_sample(in_dim: int, width: int) -> float:
    """Work of one member on one sample in a closed-form ReLU step: the two products with the
    inputs (2·d·H and 2·(d+1)·H) and ~6 passes over the H hidden units, memory-bound, that count
    as ~10 flops each here."""
    return (4.0 * in_dim + 2.0 + 60.0) * width


def closed_form_gradient(net: SharedTrunkNetwork, terms: Sequence[LossTerm],
                         params: Sequence[torch.nn.Parameter]) -> GradientFn | None:
    """A function () -> (L (K,), [∂L/∂p for p in params]) for networks with a closed form, else
    None (the caller uses autograd). The function reads the parameters' current values."""
    if net._forward_hooks or net._forward_pre_hooks:  # a hook could change what forward means
        return None
    k = net.ensemble_size
    for term in terms:
        if term.x.dim() not in (2, 3) or (term.x.dim() == 3 and term.x.shape[0] != k):
            return None
    if type(net) is DiagonalNetwork:
        return _DiagonalGradient.build(net, terms, params)
    if type(net) is ReLUNetwork and len(net.weights) == 1:
        return _ReLUGradient.build(net, terms, params)
    return None


def _roles(named: dict[int, tuple[str, str | None]],
           params: Sequence[torch.nn.Parameter]) -> list[tuple[str, str | None]] | None:
    """What each trainable parameter is in the network, or None if one is unknown."""
    roles = [named.get(id(p)) for p in params]
    return None if any(r is None for r in roles) else roles


def _add(total: Tensor | None, part: Tensor, m: int, k: int) -> Tensor:
    """total[:m] += part, where ``total`` (k, ...) may not exist yet (then it is created; a part
    that covers every member becomes the total without a copy)."""
    if total is None:
        if m == k:
            return part
        total = part.new_zeros((k, *part.shape[1:]))
    total[:m] += part
    return total


def banded_linear_gradient(beta: Tensor, x: Tensor, y: Tensor, c: Tensor,
                           bands: Sequence[tuple[int, int, int]]) -> tuple[Tensor, Tensor]:
    """(L, G) with L_k = Σ_i c_{k,i} e_{k,i}², G_k = Σ_i c_{k,i} e_{k,i} x_i (= ½ ∂L/∂β_k) and
    e = ⟨β_k, x_i⟩ − y_{k,i}, band by band: band (r₀, r₁, m) uses the first m members only."""
    k = beta.shape[0]
    loss = grad = None
    shared = x.dim() == 2
    for r0, r1, m in bands:
        if shared:
            rows = x[r0:r1]
            err = beta[:m] @ rows.T
        else:
            rows = x[:m, r0:r1]
            err = torch.bmm(rows, beta[:m].unsqueeze(2)).squeeze(2)
        err.sub_(y[:m, r0:r1])
        w = c[:m, r0:r1] * err
        loss = _add(loss, torch.linalg.vecdot(w, err), m, k)
        part = w @ rows if shared else torch.bmm(w.unsqueeze(1), rows).squeeze(1)
        grad = _add(grad, part, m, k)
    if loss is None:  # a term without samples
        loss, grad = beta.new_zeros(k), torch.zeros_like(beta)
    return loss, grad


class _DiagonalGradient:
    """∂L/∂(w₊, w₋, v₊ᵗ, v₋ᵗ) from ∂L/∂βᵗ (see the module docstring)."""

    def __init__(self, net: DiagonalNetwork, terms: Sequence[LossTerm],
                 roles: list[tuple[str, str | None]]) -> None:
        self.net = net
        self.terms = list(terms)
        self.roles = roles

    @classmethod
    def build(cls, net: DiagonalNetwork, terms: Sequence[LossTerm],
              params: Sequence[torch.nn.Parameter]) -> _DiagonalGradient | None:
        if any(t.task not in net.v_plus for t in terms):
            return None
        named = {id(net.w_plus): ("w+", None), id(net.w_minus): ("w-", None)}
        for task in net.v_plus:
            named[id(net.v_plus[task])] = ("v+", task)
            named[id(net.v_minus[task])] = ("v-", task)
        roles = _roles(named, params)
        return None if roles is None else cls(net, terms, roles)

    @torch.no_grad()
    def __call__(self) -> tuple[Tensor, list[Tensor]]:
        net = self.net
        wp, wm = net.w_plus, net.w_minus
        loss, g = None, {}
        for term in self.terms:
            t = term.task
            beta = torch.mul(wp, net.v_plus[t]).addcmul_(wm, net.v_minus[t], value=-1.0)
            part, grad = banded_linear_gradient(beta, term.x, term.y, term.c, term.bands())
            loss = part if loss is None else loss + part
            g[t] = grad if t not in g else g[t] + grad
        plus = {t: gt * 2.0 for t, gt in g.items()}  # ∂L/∂βᵗ
        minus = {t: gt * -2.0 for t, gt in g.items()}  # −∂L/∂βᵗ
        grads = []
        for role, task in self.roles:
            if role == "w+":
                grads.append(_sum_products(plus, net.v_plus, wp))
            elif role == "w-":
                grads.append(_sum_products(minus, net.v_minus, wm))
            elif task not in g:  # a head no term uses
                grads.append(torch.zeros_like(wp))
            else:
                grads.append(plus[task] * wp if role == "v+" else minus[task] * wm)
        return loss, grads


def _sum_products(g: dict[str, Tensor], heads, like: Tensor) -> Tensor:
    """Σ_t gᵗ∘headᵗ over the tasks in g."""
    total = None
    for t, gt in g.items():
        total = gt * heads[t] if total is None else total.addcmul_(gt, heads[t])
    return torch.zeros_like(like) if total is None else total


class _ReLUGradient:
    """Loss and gradients of a depth-1 ReLU ensemble (see the module docstring)."""

    def __init__(self, net: ReLUNetwork, terms: Sequence[LossTerm],
                 roles: list[tuple[str, str | None]]) -> None:
        self.net = net
        self.terms = list(terms)
        self.roles = roles
        self.train_trunk = any(role in ("W", "b") for role, _ in roles)
        self.train_heads = {task for role, task in roles if role == "v"}
        w = net.weights[0]
        self.overhead = RELU_BAND_OVERHEAD_FLOP / relu_flops_per_sample(w.shape[2], w.shape[1])
        # the trunk gradient's inputs: x with a column of ones when there is a bias
        self.inputs = [self._augment(t.x) if self.train_trunk and net.biases else t.x
                       for t in self.terms]
        self._features: list[list[Tensor]] | None = None  # h per term and band, frozen trunk
        self._features_key: tuple | None = None

    @staticmethod
    def _augment(x: Tensor) -> Tensor:
        return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)

    @classmethod
    def build(cls, net: ReLUNetwork, terms: Sequence[LossTerm],
              params: Sequence[torch.nn.Parameter]) -> _ReLUGradient | None:
        if any(t.task not in net.heads for t in terms):
            return None
        named = {id(net.weights[0]): ("W", None)}
        if net.biases:
            named[id(net.biases[0])] = ("b", None)
        for task in net.heads:
            named[id(net.heads[task])] = ("v", task)
        roles = _roles(named, params)
        return None if roles is None else cls(net, terms, roles)

    def _hidden(self, x: Tensor, r0: int, r1: int, m: int) -> Tensor:
        """h = ReLU(W x + b) of samples r₀ ≤ i < r₁ for the first m members: (m, r₁ − r₀, H)."""
        net = self.net
        w = net.weights[0][:m].transpose(1, 2)
        rows = x[r0:r1] if x.dim() == 2 else x[:m, r0:r1]
        if net.biases:
            if rows.dim() == 2:
                rows = rows.expand(m, *rows.shape)
            z = torch.baddbmm(net.biases[0][:m].unsqueeze(1), rows, w)
        else:
            z = torch.matmul(rows, w) if rows.dim() == 2 else torch.bmm(rows, w)
        return z.relu_()

    def _frozen_features(self) -> list[list[Tensor]] | None:
        """h of every term and band when the trunk is frozen: recomputed only when a trunk
        weight changed (address or in-place version)."""
        if self.train_trunk:
            return None
        trunk = [self.net.weights[0], *self.net.biases]
        key = tuple((p.data_ptr(), p._version) for p in trunk)
        if key != self._features_key:
            self._features = [[self._hidden(term.x, *band) for band in self._bands(term)]
                              for term in self.terms]
            self._features_key = key
        return self._features

    def _bands(self, term: LossTerm) -> list[tuple[int, int, int]]:
        return term.bands(self.overhead)

    @torch.no_grad()
    def __call__(self) -> tuple[Tensor, list[Tensor]]:
        net = self.net
        k = net.ensemble_size
        frozen = self._frozen_features()
        loss = None
        head_grads: dict[str, Tensor] = {}
        trunk = None  # Σ_t v_t ∘ (Σ_i m_i r_i [x_i, 1]) laid out (K, d(+1), H)
        for j, term in enumerate(self.terms):
            v = net.heads[term.task]
            need_v = term.task in self.train_heads
            x, y, c = self.inputs[j], term.y, term.c
            part_loss = gv = acc = None
            for b, (r0, r1, m) in enumerate(self._bands(term)):
                h = frozen[j][b] if frozen is not None else self._hidden(term.x, r0, r1, m)
                err = torch.bmm(v[:m].unsqueeze(1), h.transpose(1, 2)).squeeze(1)
                err.sub_(y[:m, r0:r1])
                w = c[:m, r0:r1] * err
                part_loss = _add(part_loss, torch.linalg.vecdot(w, err), m, k)
                if need_v:
                    gv = _add(gv, torch.bmm(w.unsqueeze(1), h).squeeze(1), m, k)
                if self.train_trunk:
                    mask = h.sign_()  # h ≥ 0: 1 where the unit is active, 0 at and below the kink
                    rows = x[r0:r1] if x.dim() == 2 else x[:m, r0:r1]
                    xw = w.unsqueeze(2) * rows
                    acc = _add(acc, torch.bmm(xw.transpose(1, 2), mask), m, k)
            if part_loss is None:  # a term without samples
                part_loss = v.new_zeros(k)
            loss = part_loss if loss is None else loss + part_loss
            if need_v and gv is not None:
                gv = gv * 2.0
                head_grads[term.task] = gv if term.task not in head_grads else (
                    head_grads[term.task] + gv)
            if acc is not None:
                scaled = acc * (2.0 * v).unsqueeze(1)
                trunk = scaled if trunk is None else trunk + scaled
        grads = []
        d = net.weights[0].shape[2]
        for role, task in self.roles:
            if role == "v":
                grads.append(head_grads.get(task, torch.zeros_like(net.heads[task])))
            elif trunk is None:
                grads.append(torch.zeros_like(net.weights[0] if role == "W" else net.biases[0]))
            elif role == "W":
                grads.append(trunk[:, :d].transpose(1, 2))
            else:
                grads.append(trunk[:, d])
        return loss, grads
