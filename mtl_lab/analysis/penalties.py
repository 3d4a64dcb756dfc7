"""Implicit penalties of multi-task learning (MTL) and pretraining+finetuning (PT+FT).

Diagonal linear networks (coordinates ``d``, auxiliary solution ``beta_aux``, main solution
``beta_main``):

* MTL: the l1,2 group norm ``R_MTL = sum_d ||(beta_aux_d, beta_main_d)||_2``.
* PT+FT: ``R_PTFT(beta) = sum_d m_d * q(2 beta_d / m_d)`` with ``m_d = |beta_aux_d| + gamma^2``
  and ``q(z) = 2 - sqrt(4 + z^2) + z * arcsinh(z / 2)``.

One-hidden-layer ReLU networks: the PT+FT cost of moving one hidden unit
(:func:`relu_unit_ptft_penalty`) and the F1 / group norms of a solution.

The *order* ``d log dR / d log|beta_main|`` (2: l2-like, 1: l1-like) and *feature dependence*
``d log dR / d log|beta_aux|`` of the incremental penalty ``dR = R(beta_main, beta_aux) -
R(0, beta_aux)`` sum to 1 when the penalty is 1-homogeneous (gamma -> 0, Euler's theorem);
:func:`nested_range` measures how many decades of ``beta_aux`` have an intermediate order.

All functions are functional, take torch tensors (or anything ``torch.as_tensor`` accepts;
non-float inputs become float64) and broadcast their arguments. Reductions run over the last
dimension, so a leading ensemble/batch dimension ``K`` gives one value per member.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

Tensor = torch.Tensor
PenaltySpec = str | Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "NestedRange",
    "f1_norm",
    "feature_dependence",
    "group_norm",
    "incremental_penalty",
    "l1",
    "l12",
    "l2",
    "mtl_penalty",
    "nested_range",
    "penalty_order",
    "ptft_penalty",
    "q_function",
    "relu_unit_ptft_penalty",
]


def _t(x, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` as a floating tensor (float64 unless already floating, or ``dtype`` if given)."""
    if isinstance(x, Tensor):
        if dtype is not None:
            return x.to(dtype)
        return x if x.is_floating_point() else x.to(torch.float64)
    return torch.as_tensor(x, dtype=dtype or torch.float64)


# ----------------------------------------------------------------------------- diagonal nets


def q_function(z) -> Tensor:
    """``q(z) = 2 - sqrt(4 + z^2) + z * arcsinh(z / 2)``, elementwise.

    Even, ``q(0) = 0``, ``q >= 0``; ``q(z) ~ z^2 / 4`` for small ``z`` and ``~ |z| log|z|`` for
    large ``z``. Computed as ``|z| arcsinh(|z|/2) - z^2 / (2 + sqrt(4 + z^2))`` to avoid the
    cancellation in ``2 - sqrt(4 + z^2)``.

    >>> import torch
    >>> q_function(torch.tensor([0.0, 1e-3, -1e-3])).tolist()[0]
    0.0
    >>> v = q_function(torch.tensor([1e-3, -1e-3], dtype=torch.float64))
    >>> bool(v[0] == v[1]), round(float(v[0]) / (1e-3 ** 2 / 4), 6)
    (True, 1.0)
    """
    z = _t(z)
    a = z.abs()
    return a * torch.asinh(a / 2) - z * z / (2 + torch.sqrt(4 + z * z))


def _ptft_terms(beta_main, beta_aux, gamma) -> Tensor:
    """Per-coordinate ``m * q(2 beta / m)`` with ``m = |beta_aux| + gamma^2`` (limits at m = 0)."""
    b = _t(beta_main)
    a = _t(beta_aux, b.dtype) if not isinstance(beta_aux, Tensor) else _t(beta_aux)
    b, a = torch.broadcast_tensors(b, a)
    g = _t(gamma, b.dtype)
    m = a.abs() + g * g
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    val = safe_m * q_function(2 * b / safe_m)
    # m -> 0: m q(2b/m) ~ 2|b| log(2|b|/m) -> inf for b != 0, and 0 for b = 0.
    limit = torch.where(b == 0, torch.zeros_like(b), torch.full_like(b, math.inf))
    return torch.where(m > 0, val, limit)


def ptft_penalty(beta_main, beta_aux, gamma=0.0, reduce: bool = True) -> Tensor:
    """PT+FT implicit penalty ``R_PTFT = sum_d m_d q(2 beta_main_d / m_d)``, ``m_d = |beta_aux_d|
    + gamma^2``.

    Small ``beta``: ``~ beta^2 / m_d`` (l2-like reuse); an unused coordinate (``beta_aux_d = 0``)
    costs ``~ 2|beta| log(2|beta| / gamma^2)`` (l1-like). ``reduce=False`` returns the
    per-coordinate terms; otherwise the sum over the last dimension. ``R(0, beta_aux) = 0``.

    >>> import torch
    >>> b = torch.tensor([1e-3, 2e-3], dtype=torch.float64)
    >>> a = torch.tensor([2.0, 4.0], dtype=torch.float64)
    >>> round(float(ptft_penalty(b, a, gamma=0.0)) / float((b**2 / a).sum()), 6)
    1.0
    >>> ptft_penalty(b, a, reduce=False).shape
    torch.Size([2])
    """
    terms = _ptft_terms(beta_main, beta_aux, gamma)
    return terms.sum(-1) if reduce else terms


def l12(beta_aux, beta_main) -> Tensor:
    """l1,2 group norm ``sum_d sqrt(beta_aux_d^2 + beta_main_d^2)`` over the last dimension.

    >>> import torch
    >>> float(l12(torch.tensor([3.0, 0.0]), torch.tensor([4.0, 1.0])))
    6.0
    """
    a, b = torch.broadcast_tensors(_t(beta_aux), _t(beta_main))
    return torch.hypot(a, b).sum(-1)


def mtl_penalty(beta_main, beta_aux, reduce: bool = True) -> Tensor:
    """MTL implicit penalty ``R_MTL = sum_d ||(beta_aux_d, beta_main_d)||_2`` (l1,2 norm).

    Reusing an aux coordinate costs ``~ beta^2 / (2|beta_aux|)`` extra; a new one costs
    ``|beta|``. ``reduce=False`` returns per-coordinate norms, else the sum over the last dim.

    >>> import torch
    >>> mtl_penalty(torch.tensor([4.0, 1.0]), torch.tensor([3.0, 0.0]), reduce=False).tolist()
    [5.0, 1.0]
    """
    a, b = torch.broadcast_tensors(_t(beta_aux), _t(beta_main))
    terms = torch.hypot(a, b)
    return terms.sum(-1) if reduce else terms


def l1(beta) -> Tensor:
    """``||beta||_1 = sum_d |beta_d|`` over the last dimension.

    >>> import torch
    >>> float(l1(torch.tensor([3.0, -4.0])))
    7.0
    """
    return _t(beta).abs().sum(-1)


def l2(beta) -> Tensor:
    """``||beta||_2 = sqrt(sum_d beta_d^2)`` over the last dimension (not squared).

    >>> import torch
    >>> float(l2(torch.tensor([3.0, -4.0])))
    5.0
    """
    return torch.linalg.vector_norm(_t(beta), dim=-1)


# ----------------------------------------------------------------------------- ReLU nets


def relu_unit_ptft_penalty(beta, v0, m0, theta, return_argmin: bool = False):
    """PT+FT cost of moving one ReLU unit (pretrained norm ``m0``, head ``v0``) to output weight
    ``beta`` along a direction at cosine ``theta`` to the old one:

    ``R(beta) = min_{m > 0} [(beta/m - v0)^2 + m^2 + m0^2 - 2 m m0 theta]``.

    Stationary points solve the quartic ``m^4 - m0 theta m^3 + beta v0 m - beta^2 = 0``; all its
    roots are found (rescaled companion-matrix eigenvalues, then guarded Newton polishing) and
    the objective is minimised over those with positive real part, so the global minimum is
    returned even when the objective is not convex in ``m``. For ``beta = 0`` the infimum may sit
    at ``m -> 0`` (value ``v0^2 + m0^2``). Arguments broadcast; float64 throughout. With
    ``return_argmin`` also returns the minimising ``m`` (``0`` for the ``m -> 0`` limit).

    >>> import torch
    >>> float(relu_unit_ptft_penalty(6.0, 2.0, 3.0, 1.0))  # reuse: beta = m0 v0, theta = 1
    0.0
    >>> r = relu_unit_ptft_penalty(6.0, 2.0, 3.0, torch.tensor([1.0, 0.5, 0.0]))
    >>> bool(r[0] < r[1] < r[2])
    True
    """
    args = [_t(x, torch.float64) for x in (beta, v0, m0, theta)]
    b, v, mm, th = torch.broadcast_tensors(*args)
    shape = b.shape
    b, v, mm, th = (x.reshape(-1) for x in (b, v, mm, th))

    def objective(m: Tensor) -> Tensor:
        return (b / m - v) ** 2 + m * m + mm * mm - 2 * m * mm * th

    def poly(m: Tensor) -> tuple[Tensor, Tensor]:
        p = m**4 - mm * th * m**3 + b * v * m - b * b
        dp = 4 * m**3 - 3 * mm * th * m**2 + b * v
        return p, dp

    # rescale m = s x so the monic quartic in x has O(1) coefficients
    s = torch.stack([b.abs().sqrt(), (mm * th).abs(), (b * v).abs().pow(1 / 3)]).amax(0)
    s = torch.where(s > 0, s, torch.ones_like(s))
    c3, c1, c0 = -mm * th / s, b * v / s**3, -(b * b) / s**4
    n = b.numel()
    comp = torch.zeros(n, 4, 4, dtype=torch.float64)
    comp[:, 0, 0] = -c3
    comp[:, 0, 2] = -c1
    comp[:, 0, 3] = -c0
    comp[:, 1, 0] = comp[:, 2, 1] = comp[:, 3, 2] = 1.0
    roots = torch.linalg.eigvals(comp).real.to(torch.float64) * s[:, None]

    # candidates (n, 4) against per-row parameters as (n, 1) columns
    flat = (b, v, mm, th)
    b, v, mm, th = (x[:, None] for x in flat)
    # guarded Newton polishing: keep a step only if it stays positive and reduces |p|
    m = roots
    for _ in range(4):
        p, dp = poly(m)
        safe_dp = torch.where(dp != 0, dp, torch.ones_like(dp))
        new = m - p / safe_dp
        p_new, _ = poly(new)
        ok = (dp != 0) & (new > 0) & (p_new.abs() < p.abs())
        m = torch.where(ok, new, m)

    valid = m > 0
    safe = torch.where(valid, m, torch.ones_like(m))
    vals = torch.where(valid, objective(safe), torch.full_like(m, math.inf))
    best, idx = vals.min(1)
    arg = m.gather(1, idx[:, None]).squeeze(1)
    b, v, mm, th = flat
    limit = torch.where(b == 0, v * v + mm * mm, torch.full_like(b, math.inf))
    use_limit = limit <= best
    best = torch.where(use_limit, limit, best)
    arg = torch.where(use_limit, torch.zeros_like(arg), arg)
    best, arg = best.reshape(shape), arg.reshape(shape)
    return (best, arg) if return_argmin else best


def _unit_norms_and_heads(w, v) -> tuple[Tensor, Tensor]:
    """``||w_j||`` (shape ``(..., H)``) and ``v`` shaped ``(..., T, H)``."""
    w = _t(w)
    v = _t(v, w.dtype)
    norms = torch.linalg.vector_norm(w, dim=-1)
    if v.ndim == w.ndim - 1:
        v = v.unsqueeze(-2)
    elif v.ndim != w.ndim:
        raise ValueError(f"head weights of shape {tuple(v.shape)} do not match w {tuple(w.shape)}")
    return norms, v


def f1_norm(w, v) -> Tensor:
    """F1 (path) norm ``sum_j ||w_j|| |v_j|`` of a one-hidden-layer ReLU net.

    ``w``: incoming weights ``(H, d)`` or ``(K, H, d)``. ``v``: head ``(H,)`` / ``(K, H)`` giving
    a scalar / ``(K,)``, or several heads ``(T, H)`` / ``(K, T, H)`` giving one norm per head,
    ``(T,)`` / ``(K, T)``.

    >>> import torch
    >>> w = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    >>> float(f1_norm(w, torch.tensor([1.0, -2.0])))
    7.0
    >>> f1_norm(torch.stack([w, 2 * w]), torch.tensor([[1.0, -2.0], [1.0, 0.0]])).tolist()
    [7.0, 10.0]
    """
    norms, heads = _unit_norms_and_heads(w, v)
    out = (norms.unsqueeze(-2) * heads.abs()).sum(-1)
    return out.squeeze(-1) if _t(v).ndim == _t(w).ndim - 1 else out


def group_norm(w, heads) -> Tensor:
    """Group norm over heads ``sum_j ||w_j|| ||v_{., j}||_2`` of a multi-head ReLU net.

    ``w``: ``(H, d)`` or ``(K, H, d)``; ``heads``: ``(T, H)`` or ``(K, T, H)`` (a single head
    ``(H,)`` / ``(K, H)`` reduces to :func:`f1_norm`). Returns a scalar or ``(K,)``.

    >>> import torch
    >>> w = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    >>> float(group_norm(w, torch.tensor([[3.0, 1.0], [4.0, 0.0]])))
    26.0
    """
    norms, v = _unit_norms_and_heads(w, heads)
    return (norms * torch.linalg.vector_norm(v, dim=-2)).sum(-1)


# ----------------------------------------------------------------------------- order analysis


def incremental_penalty(penalty: PenaltySpec, beta_main, beta_aux, gamma=0.0) -> Tensor:
    """Per-coordinate ``dR = R(beta_main, beta_aux) - R(0, beta_aux)``.

    ``penalty``: ``"mtl"`` (``sqrt(a^2 + b^2) - |a|``, computed as ``b^2 / (sqrt(a^2 + b^2) +
    |a|)`` without cancellation), ``"ptft"`` (``m q(2b/m)``, ``m = |a| + gamma^2``) or a callable
    ``R(beta_main, beta_aux)`` returning per-coordinate values (``gamma`` is then unused).

    >>> round(float(incremental_penalty("mtl", 1e-3, 1.0)) / (1e-3**2 / 2), 6)
    1.0
    """
    b = _t(beta_main)
    a = _t(beta_aux, b.dtype) if not isinstance(beta_aux, Tensor) else _t(beta_aux)
    if callable(penalty):
        return penalty(b, a) - penalty(torch.zeros_like(b), a)
    if penalty == "mtl":
        b, a = torch.broadcast_tensors(b, a)
        return b * b / (torch.hypot(a, b) + a.abs())
    if penalty == "ptft":
        return _ptft_terms(b, a, gamma)
    raise ValueError(f"unknown penalty {penalty!r}; expected 'mtl', 'ptft' or a callable")


def _log_derivative(penalty, beta_main, beta_aux, gamma, step, wrt_main: bool) -> Tensor:
    b = _t(beta_main, torch.float64)
    a = _t(beta_aux, torch.float64)
    b, a = torch.broadcast_tensors(b, a)
    up, down = math.exp(step), math.exp(-step)
    if wrt_main:
        hi = incremental_penalty(penalty, b * up, a, gamma)
        lo = incremental_penalty(penalty, b * down, a, gamma)
    else:
        hi = incremental_penalty(penalty, b, a * up, gamma)
        lo = incremental_penalty(penalty, b, a * down, gamma)
    return (torch.log(hi) - torch.log(lo)) / (2 * step)


def penalty_order(penalty: PenaltySpec, beta_main, beta_aux, gamma=0.0,
                  step: float = 1e-4) -> Tensor:
    """Order ``d log dR / d log|beta_main|`` of a per-coordinate penalty (2: l2-like, 1: l1-like).

    Central difference in log space (``step``), float64, broadcast over ``beta_main`` and
    ``beta_aux``. ``penalty`` is ``"mtl"``, ``"ptft"`` or a callable, as in
    :func:`incremental_penalty`.

    >>> import torch
    >>> o = penalty_order("ptft", 1.0, torch.tensor([1e4, 1e-8]))
    >>> bool(o[0] > 1.95), bool(o[1] < 1.2)
    (True, True)
    """
    return _log_derivative(penalty, beta_main, beta_aux, gamma, step, wrt_main=True)


def feature_dependence(penalty: PenaltySpec, beta_main, beta_aux, gamma=0.0,
                       step: float = 1e-4) -> Tensor:
    """Feature dependence ``d log dR / d log|beta_aux|`` (negative: reuse makes ``beta_main``
    cheaper). For 1-homogeneous penalties (``gamma = 0``) ``order + feature_dependence = 1``.

    >>> import torch
    >>> a = torch.logspace(-3, 3, 7, dtype=torch.float64)
    >>> s = penalty_order("mtl", 1.0, a) + feature_dependence("mtl", 1.0, a)
    >>> bool(torch.allclose(s, torch.ones_like(s), atol=1e-6))
    True
    """
    return _log_derivative(penalty, beta_main, beta_aux, gamma, step, wrt_main=False)


class NestedRange(NamedTuple):
    """Interval ``[low, high]`` of ``beta_aux`` with intermediate order, and its log10 width."""

    low: float
    high: float
    width_decades: float


def nested_range(penalty: PenaltySpec, beta_main=1.0, gamma=0.0, lo: float = 1.1,
                 hi: float = 1.9, grid=None) -> NestedRange:
    """The range of ``beta_aux`` where ``lo <= order <= hi`` (nested feature selection).

    ``grid``: ``beta_aux`` values (default ``|beta_main| * logspace(-12, 8, 2001)``). The result
    spans the first to last grid point inside the band, with the ends refined by linear
    interpolation of the order in ``log beta_aux`` against the crossed threshold; ``nan``
    everywhere if no grid point is inside. Ends on a grid edge mean the grid was too narrow.

    >>> r_ptft, r_mtl = nested_range("ptft"), nested_range("mtl")
    >>> bool(r_ptft.width_decades > r_mtl.width_decades + 1)
    True
    """
    b = float(abs(beta_main))
    if grid is None:
        grid = b * torch.logspace(-12, 8, 2001, dtype=torch.float64)
    grid = _t(grid, torch.float64).reshape(-1).abs().sort().values
    order = penalty_order(penalty, b, grid, gamma)
    inside = (order >= lo) & (order <= hi)
    idx = torch.nonzero(inside).reshape(-1)
    if idx.numel() == 0:
        return NestedRange(math.nan, math.nan, math.nan)
    logs = torch.log(grid)

    def edge(i: int, j: int) -> float:
        """log beta_aux where the order crosses a threshold between grid points i (in) and j."""
        if j < 0 or j >= grid.numel() or not torch.isfinite(order[j]):
            return float(logs[i])
        oi, oj = float(order[i]), float(order[j])
        target = lo if oj < lo else hi
        if oj == oi:
            return float(logs[i])
        t = (target - oi) / (oj - oi)
        return float(logs[i] + t * (logs[j] - logs[i]))

    first, last = int(idx[0]), int(idx[-1])
    log_low, log_high = edge(first, first - 1), edge(last, last + 1)
    return NestedRange(math.exp(log_low), math.exp(log_high),
                       (log_high - log_low) / math.log(10))
