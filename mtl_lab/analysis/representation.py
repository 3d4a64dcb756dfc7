r"""Representation measures: participation ratio, ENSD and linear CKA.

Layout follows torchmetrics: pure functions hold the math, and thin stateful
:class:`torchmetrics.Metric` subclasses accumulate *sufficient statistics* over minibatches
and apply the same math in ``compute``. Accumulation is exact: feeding a dataset in any
number of minibatches gives the full-batch value up to float64 round-off.

Conventions
-----------
* Features are ``(n, p)`` tensors of ``n`` samples. Any number of leading batch dimensions
  is allowed, e.g. ``(K, n, p)`` for an ensemble of ``K`` networks stacked in one tensor;
  every measure is then computed per member and has shape ``(K,)``.
* Functions compute in float64 (lower-precision floating inputs are promoted) and return
  float64 tensors. Metric states are float64 by default; call ``metric.set_dtype(...)`` to
  change it — incoming features are cast to the state dtype.
* Definitions (SCIENCE.md §5):

  - ``C = FᵀF / n`` (uncentred second moment), ``PR = (tr C)² / tr(C²)``, ``Ĉ = C / tr C``;
  - ``ENSD(A, B) = PR_A · PR_B · tr(Ĉ_A Ĉ_B)``, evaluated through
    ``tr(Ĉ_A Ĉ_B) = ‖C_AB‖_F² / (tr C_A · tr C_B)`` with ``C_AB = F_AᵀF_B / n`` so that
    ``p ≠ q`` is allowed;
  - linear CKA ``HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with ``K = XXᵀ``, ``L = YYᵀ``
    and either the unbiased HSIC estimator (Song et al. 2012) or the biased one.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "second_moment",
    "participation_ratio",
    "ensd",
    "ensd_from_moments",
    "hsic_unbiased",
    "hsic_biased",
    "linear_cka",
    "cka_from_hsic",
    "linear_hsic_stats",
    "hsic_unbiased_from_stats",
    "hsic_biased_from_stats",
    "ParticipationRatio",
    "ENSD",
    "LinearCKA",
]


# ----------------------------------------------------------------------------- helpers


def _promote(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Cast to ``dtype`` (default float64 unless ``t`` is already float64)."""
    if dtype is None:
        dtype = torch.float64
    return t if t.dtype == dtype else t.to(dtype)


def _check_features(f: Tensor, name: str = "features") -> None:
    if not isinstance(f, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(f).__name__}")
    if f.ndim < 2:
        raise ValueError(f"{name} must have shape (..., n, p); got shape {tuple(f.shape)}")


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate two feature tensors of the same samples and broadcast their leading dims."""
    _check_features(x, "x")
    _check_features(y, "y")
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(
            f"x and y must hold the same samples: got n={x.shape[-2]} and n={y.shape[-2]}"
        )
    lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    return x.expand(*lead, *x.shape[-2:]), y.expand(*lead, *y.shape[-2:])


def _sq_frob(m: Tensor) -> Tensor:
    """Squared Frobenius norm over the last two dims."""
    return (m * m).sum(dim=(-2, -1))


def _trace(m: Tensor) -> Tensor:
    return torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)


def _gram(f: Tensor) -> Tensor:
    return f @ f.transpose(-2, -1)


def _cross(x: Tensor, y: Tensor) -> Tensor:
    """Uncentred cross-product sum ``xᵀy`` over samples, shape (..., p, q)."""
    return x.transpose(-2, -1) @ y


# ----------------------------------------------------------------------------- functional


def second_moment(f: Tensor) -> Tensor:
    r"""Uncentred second-moment matrix ``C = FᵀF / n``.

    Args:
        f: features of shape ``(..., n, p)``.

    Returns:
        float64 tensor of shape ``(..., p, p)``.

    Example:
        >>> import torch
        >>> second_moment(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([[0.5000, 0.0000],
                [0.0000, 2.0000]], dtype=torch.float64)
    """
    _check_features(f, "f")
    f = _promote(f)
    return _cross(f, f) / f.shape[-2]


def participation_ratio(f: Tensor, *, is_moment: bool = False) -> Tensor:
    r"""Participation ratio ``PR = (tr C)² / tr(C²)`` of the uncentred second moment ``C``.

    ``PR`` equals ``(Σλ)² / Σλ²`` over the eigenvalues of ``C``: it is 1 for rank-one
    features and ``p`` for isotropic ones, and is invariant to rotations and rescaling of
    the feature space.

    Args:
        f: by default features of shape ``(..., n, p)``; ``C`` is then never formed when
            ``n < p`` — the ``n × n`` Gram matrix ``FFᵀ`` shares its nonzero spectrum.
            With ``is_moment=True``, a symmetric (second-moment) matrix ``(..., p, p)``
            instead; any positive scale of it (e.g. the unnormalised sum ``FᵀF``) gives
            the same value.
        is_moment: interpret ``f`` as a second-moment matrix.

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> participation_ratio(torch.eye(3))           # isotropic: PR = p
        tensor(3., dtype=torch.float64)
        >>> participation_ratio(torch.ones(5, 1) * torch.tensor([[1.0, 2.0, 3.0]]))
        tensor(1., dtype=torch.float64)
        >>> participation_ratio(torch.diag(torch.tensor([1.0, 1.0, 0.0])), is_moment=True)
        tensor(2., dtype=torch.float64)
    """
    if is_moment:
        if f.ndim < 2 or f.shape[-1] != f.shape[-2]:
            raise ValueError(f"expected a square (..., p, p) matrix, got {tuple(f.shape)}")
        m = _promote(f)
    else:
        _check_features(f, "f")
        f = _promote(f)
        n, p = f.shape[-2:]
        m = _gram(f) if n < p else _cross(f, f)
    # tr(M²) = ‖M‖_F² for symmetric M.
    return _trace(m) ** 2 / _sq_frob(m)


def ensd_from_moments(c_a: Tensor, c_b: Tensor, c_ab: Tensor) -> Tensor:
    r"""ENSD from (scaled) second moments: ``PR_A · PR_B · ‖C_AB‖_F² / (tr C_A · tr C_B)``.

    The three matrices must share one normalisation, which cancels: either the moments
    ``FᵀF / n`` or the raw sums ``FᵀF`` accumulated over samples.

    Args:
        c_a: ``(..., p, p)`` second moment of representation A.
        c_b: ``(..., q, q)`` second moment of representation B.
        c_ab: ``(..., p, q)`` cross moment ``F_AᵀF_B`` (same normalisation).

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> c = torch.eye(4)
        >>> ensd_from_moments(c, c, c)    # same isotropic representation: ENSD = PR = 4
        tensor(4., dtype=torch.float64)
    """
    c_a, c_b, c_ab = _promote(c_a), _promote(c_b), _promote(c_ab)
    tr_a, tr_b = _trace(c_a), _trace(c_b)
    pr_a = tr_a**2 / _sq_frob(c_a)
    pr_b = tr_b**2 / _sq_frob(c_b)
    return pr_a * pr_b * _sq_frob(c_ab) / (tr_a * tr_b)


def ensd(fa: Tensor, fb: Tensor) -> Tensor:
    r"""Effective number of shared dimensions between two representations of the same inputs.

    ``ENSD = PR_A · PR_B · tr(Ĉ_A Ĉ_B)`` with ``Ĉ = C / tr C``. Because ``K = FFᵀ`` shares
    its nonzero spectrum with ``FᵀF``, ``tr(K_A K_B) = ‖F_AᵀF_B‖_F²`` and therefore
    ``tr(Ĉ_A Ĉ_B) = ‖C_AB‖_F² / (tr C_A · tr C_B)`` with ``C_AB = F_AᵀF_B / n``; widths
    ``p`` and ``q`` may differ. ``ENSD(A, A) = PR_A``; ``ENSD`` is symmetric and 0 for
    representations whose sample Gram matrices are orthogonal.

    Args:
        fa: features ``(..., n, p)``.
        fb: features ``(..., n, q)`` of the same ``n`` inputs (leading dims broadcast).

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> f = torch.eye(4)[:, :2]                      # two isotropic dimensions
        >>> ensd(f, f)
        tensor(2., dtype=torch.float64)
        >>> ensd(f, torch.eye(4)[:, 2:])                 # orthogonal subspaces
        tensor(0., dtype=torch.float64)
    """
    fa, fb = _pair(_promote(fa), _promote(fb))
    return ensd_from_moments(_cross(fa, fa), _cross(fb, fb), _cross(fa, fb))


def hsic_unbiased(K: Tensor, L: Tensor) -> Tensor:
    r"""Unbiased HSIC estimator (Song et al. 2012) from Gram matrices.

    With ``K̃``, ``L̃`` the Gram matrices with zeroed diagonals,

    ``HSIC_u = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))``.

    Requires ``n ≥ 4``. Unlike the biased estimator, its expectation is 0 for independent
    variables, so it can be (slightly) negative.

    Args:
        K: ``(..., n, n)`` Gram matrix.
        L: ``(..., n, n)`` Gram matrix.

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> x = torch.arange(12.0).reshape(6, 2)
        >>> K = x @ x.T
        >>> bool(hsic_unbiased(K, K) > 0)
        True
    """
    K, L = _promote(K), _promote(L)
    n = K.shape[-1]
    if K.shape[-2:] != (n, n) or L.shape[-2:] != (n, n):
        raise ValueError(f"K and L must be (..., n, n); got {tuple(K.shape)}, {tuple(L.shape)}")
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs n >= 4 samples, got n={n}")
    kt = K - torch.diag_embed(torch.diagonal(K, dim1=-2, dim2=-1))
    lt = L - torch.diag_embed(torch.diagonal(L, dim1=-2, dim2=-1))
    tr_kl = (kt * lt.transpose(-2, -1)).sum(dim=(-2, -1))
    sum_k = kt.sum(dim=(-2, -1))
    sum_l = lt.sum(dim=(-2, -1))
    # 1ᵀK̃L̃1 = (1ᵀK̃) · (L̃1)
    one_kl_one = (kt.sum(-2) * lt.sum(-1)).sum(-1)
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * one_kl_one) / (
        n * (n - 3)
    )


def hsic_biased(K: Tensor, L: Tensor) -> Tensor:
    r"""Biased HSIC estimator ``HSIC_b = tr(KHLH) / (n−1)²`` with ``H = I − 11ᵀ/n``.

    Args:
        K: ``(..., n, n)`` Gram matrix.
        L: ``(..., n, n)`` Gram matrix.

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> K = torch.ones(5, 5)                      # constant kernel: nothing to explain
        >>> hsic_biased(K, torch.eye(5))
        tensor(0., dtype=torch.float64)
    """
    K, L = _promote(K), _promote(L)
    n = K.shape[-1]
    if K.shape[-2:] != (n, n) or L.shape[-2:] != (n, n):
        raise ValueError(f"K and L must be (..., n, n); got {tuple(K.shape)}, {tuple(L.shape)}")
    if n < 2:
        raise ValueError(f"the biased HSIC estimator needs n >= 2 samples, got n={n}")

    def centre(m: Tensor) -> Tensor:
        return (
            m
            - m.mean(dim=-1, keepdim=True)
            - m.mean(dim=-2, keepdim=True)
            + m.mean(dim=(-2, -1), keepdim=True)
        )

    # tr(KHLH) = tr((HKH)(HLH)) since H is idempotent.
    return (centre(K) * centre(L).transpose(-2, -1)).sum(dim=(-2, -1)) / (n - 1) ** 2


def linear_cka(x: Tensor, y: Tensor, unbiased: bool = True) -> Tensor:
    r"""Linear CKA ``HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with ``K = XXᵀ``, ``L = YYᵀ``.

    Computed directly from the ``n × n`` Gram matrices (see :class:`LinearCKA` for the
    minibatch-accumulated version). Invariant to orthogonal transforms and isotropic
    scaling of either representation. With ``unbiased=True`` (default) the HSIC estimator
    of Song et al. (2012) is used, so independent representations score ≈ 0 even when
    ``p`` is comparable to ``n``; ``unbiased=False`` uses the biased ``tr(KHLH)/(n−1)²``,
    which is inflated at small ``n``. The unbiased value may be slightly negative.

    Args:
        x: features ``(..., n, p)``.
        y: features ``(..., n, q)`` of the same inputs (leading dims broadcast).
        unbiased: use the unbiased HSIC estimator (needs ``n ≥ 4``).

    Returns:
        float64 tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(100, 8)
        >>> q, _ = torch.linalg.qr(torch.randn(8, 8))
        >>> round(float(linear_cka(x, 3.0 * x @ q)), 6)
        1.0
        >>> bool(abs(linear_cka(x, torch.randn(100, 8))) < 0.1)
        True
    """
    x, y = _pair(_promote(x), _promote(y))
    hsic = hsic_unbiased if unbiased else hsic_biased
    K, L = _gram(x), _gram(y)
    n = x.shape[-2]
    return cka_from_hsic(hsic(K, L), hsic(K, K), hsic(L, L),
                         (_trace(K) / n) ** 2, (_trace(L) / n) ** 2)


DEGENERATE = 1e-10  # relative self-HSIC below which a representation has no variance to compare


def cka_from_hsic(hsic_kl: Tensor, hsic_kk: Tensor, hsic_ll: Tensor, scale_k: Tensor,
                  scale_l: Tensor) -> Tensor:
    """``HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))``, NaN where either representation has no
    variance across the samples (``HSIC(K, K) ≤ 1e-10 · scale_k``, ``scale_k = (tr K / n)²``:
    constant features, e.g. a dead or collapsed layer): CKA is undefined there, not infinite.

    >>> t = torch.tensor
    >>> float(cka_from_hsic(t(0.5), t(1.0), t(1.0), t(1.0), t(1.0)))
    0.5
    >>> cka_from_hsic(t(0.0), t(0.0), t(1.0), t(1.0), t(1.0)).isnan().item()
    True
    """
    flat = (hsic_kk <= DEGENERATE * scale_k) | (hsic_ll <= DEGENERATE * scale_l)
    value = hsic_kl / torch.sqrt((hsic_kk * hsic_ll).clamp_min(torch.finfo(hsic_kl.dtype).tiny))
    return torch.where(flat, torch.full_like(value, float("nan")), value)


# --------------------------------------------------------------- sufficient statistics
#
# For K = XXᵀ, L = YYᵀ with rows xᵢ, yᵢ, aᵢ = ‖xᵢ‖², bᵢ = ‖yᵢ‖², sₓ = Σxᵢ, s_y = Σyᵢ:
#   tr(K̃L̃)  = ‖XᵀY‖_F² − Σ aᵢbᵢ
#   1ᵀK̃1    = ‖sₓ‖² − Σ aᵢ                       (likewise 1ᵀL̃1)
#   (K̃1)ᵢ   = xᵢ·sₓ − aᵢ,   (L̃1)ᵢ = yᵢ·s_y − bᵢ
#   1ᵀK̃L̃1  = Σᵢ (xᵢ·sₓ − aᵢ)(yᵢ·s_y − bᵢ)
#           = sₓᵀ(XᵀY)s_y − (Σ aᵢyᵢ)·s_y − (Σ bᵢxᵢ)·sₓ + Σ aᵢbᵢ
#   tr(KHLH) = ‖XᵀY − sₓs_yᵀ/n‖_F²
# All are functions of sums over samples, hence exactly accumulable over minibatches.


def linear_hsic_stats(x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""Per-sample sums from which linear-kernel HSIC (biased or unbiased) is computed.

    Returned keys (sums over the ``n`` samples of ``x``: ``(..., n, p)``, ``y``:
    ``(..., n, q)``; ``a = ‖xᵢ‖²``, ``b = ‖yᵢ‖²``): ``xty`` ``XᵀY`` ``(..., p, q)``,
    ``sum_x`` ``(..., p)``, ``sum_y`` ``(..., q)``, ``sum_a_y`` ``Σaᵢyᵢ`` ``(..., q)``,
    ``sum_b_x`` ``Σbᵢxᵢ`` ``(..., p)``, ``sum_ab`` ``(...)``, ``sum_a`` ``(...)``,
    ``sum_b`` ``(...)`` and ``n`` (a 0-dim tensor). Statistics of disjoint batches of the
    same samples add up key by key.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(20, 3), torch.randn(20, 4)
        >>> s1, s2 = linear_hsic_stats(x[:7], y[:7]), linear_hsic_stats(x[7:], y[7:])
        >>> total = {k: s1[k] + s2[k] for k in s1}
        >>> K, L = x @ x.T, y @ y.T
        >>> torch.allclose(hsic_unbiased_from_stats(total), hsic_unbiased(K, L))
        True
    """
    x, y = _pair(_promote(x), _promote(y))
    a = (x * x).sum(-1)
    b = (y * y).sum(-1)
    return {
        "xty": _cross(x, y),
        "sum_x": x.sum(-2),
        "sum_y": y.sum(-2),
        "sum_a_y": (a.unsqueeze(-1) * y).sum(-2),
        "sum_b_x": (b.unsqueeze(-1) * x).sum(-2),
        "sum_ab": (a * b).sum(-1),
        "sum_a": a.sum(-1),
        "sum_b": b.sum(-1),
        "n": torch.tensor(float(x.shape[-2]), dtype=x.dtype, device=x.device),
    }


def _n_of(stats: dict[str, Tensor]) -> float:
    return float(torch.as_tensor(stats["n"]).reshape(-1)[0])


def hsic_unbiased_from_stats(stats: dict[str, Tensor]) -> Tensor:
    r"""Unbiased linear HSIC from :func:`linear_hsic_stats` (equals :func:`hsic_unbiased`).

    Example:
        >>> import torch
        >>> x = torch.arange(12.0).reshape(6, 2) ** 2
        >>> torch.allclose(hsic_unbiased_from_stats(linear_hsic_stats(x, x)),
        ...                hsic_unbiased(x @ x.T, x @ x.T))
        True
    """
    n = _n_of(stats)
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs n >= 4 samples, got n={n:g}")
    xty, sx, sy = stats["xty"], stats["sum_x"], stats["sum_y"]
    tr_kl = _sq_frob(xty) - stats["sum_ab"]
    sum_k = (sx * sx).sum(-1) - stats["sum_a"]
    sum_l = (sy * sy).sum(-1) - stats["sum_b"]
    sx_xty_sy = (sx.unsqueeze(-2) @ xty @ sy.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    one_kl_one = (
        sx_xty_sy
        - (stats["sum_a_y"] * sy).sum(-1)
        - (stats["sum_b_x"] * sx).sum(-1)
        + stats["sum_ab"]
    )
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * one_kl_one) / (
        n * (n - 3)
    )


def hsic_biased_from_stats(stats: dict[str, Tensor]) -> Tensor:
    r"""Biased linear HSIC ``‖XᵀY − sₓs_yᵀ/n‖_F² / (n−1)²`` from :func:`linear_hsic_stats`.

    Only ``xty``, ``sum_x``, ``sum_y`` and ``n`` are used.

    Example:
        >>> import torch
        >>> x = torch.arange(12.0).reshape(6, 2) ** 2
        >>> torch.allclose(hsic_biased_from_stats(linear_hsic_stats(x, x)),
        ...                hsic_biased(x @ x.T, x @ x.T))
        True
    """
    n = _n_of(stats)
    if n < 2:
        raise ValueError(f"the biased HSIC estimator needs n >= 2 samples, got n={n:g}")
    centred = stats["xty"] - stats["sum_x"].unsqueeze(-1) * stats["sum_y"].unsqueeze(-2) / n
    return _sq_frob(centred) / (n - 1) ** 2


# ----------------------------------------------------------------------------- metrics


class _LazyStateMetric(Metric):
    """Shared plumbing: float64 sum-states whose shape is fixed by the first ``update``.

    Each state starts as a 0-dim zero and broadcasts to the statistic's shape on the first
    update (so ``reset`` restores the lazy default). In distributed runs every process must
    see at least one batch before ``compute`` so that the synced shapes agree.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    _state_names: tuple[str, ...] = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self._state_names:
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    @property
    def _state_dtype(self) -> torch.dtype:
        return getattr(self, self._state_names[0]).dtype

    def _accumulate(self, name: str, value: Tensor) -> None:
        current = getattr(self, name)
        if current.ndim and current.shape != value.shape:
            raise ValueError(
                f"{type(self).__name__}: state {name!r} has shape {tuple(current.shape)} but the "
                f"new batch gives {tuple(value.shape)}; feature widths and leading (ensemble) "
                "dimensions must stay fixed between updates (call reset() to change them)"
            )
        setattr(self, name, current + value.to(current.dtype))

    def _require_samples(self, minimum: int = 1) -> float:
        n = float(self.n)
        if n < minimum:
            raise ValueError(
                f"{type(self).__name__} needs at least {minimum} accumulated samples, got {n:g}"
            )
        return n


class ParticipationRatio(_LazyStateMetric):
    r"""Participation ratio ``PR = (tr C)² / tr(C²)`` of features accumulated over batches.

    Accumulates ``S = Σᵢ fᵢfᵢᵀ`` (``C = S / n``; the scale cancels in ``PR``), so the
    result equals :func:`participation_ratio` on the concatenated batches. States are
    ``(p, p)`` (``(K, p, p)`` for ensembles), float64 by default.

    ``update(features)``: ``features`` of shape ``(n, p)``, or ``(K, n, p)`` (any leading
    dims) for an ensemble; ``compute()`` then returns one value per member, shape ``(K,)``.
    The shape is fixed by the first update.

    Example:
        >>> import torch
        >>> metric = ParticipationRatio()
        >>> f = torch.eye(4)[:, :3]                # isotropic in 3 dimensions
        >>> metric.update(f[:2])
        >>> metric.update(f[2:])
        >>> metric.compute()
        tensor(3., dtype=torch.float64)
        >>> ens = ParticipationRatio()
        >>> ens.update(torch.stack([f, torch.ones(4, 3)]))   # K = 2 members
        >>> ens.compute()
        tensor([3., 1.], dtype=torch.float64)
    """

    _state_names = ("moment", "n")

    def update(self, features: Tensor) -> None:
        """Add a batch of features ``(..., n, p)``."""
        _check_features(features)
        f = _promote(features, self._state_dtype)
        self._accumulate("moment", _cross(f, f))
        self.n = self.n + f.shape[-2]

    def compute(self) -> Tensor:
        """``PR`` of everything seen so far."""
        self._require_samples()
        return participation_ratio(self.moment, is_moment=True).to(self._state_dtype)


class ENSD(_LazyStateMetric):
    r"""Effective number of shared dimensions, accumulated over batches.

    ``ENSD = PR_A · PR_B · ‖S_AB‖_F² / (tr S_A · tr S_B)`` with the sums
    ``S_A = Σ aᵢaᵢᵀ`` ``(p, p)``, ``S_B = Σ bᵢbᵢᵀ`` ``(q, q)`` and ``S_AB = Σ aᵢbᵢᵀ``
    ``(p, q)`` over all samples (the ``1/n`` normalisation cancels); equals :func:`ensd` on
    the concatenated batches. ``p`` and ``q`` may differ.

    ``update(features_a, features_b)``: ``(n, p)`` and ``(n, q)`` features of the same
    inputs, or with leading ensemble dims ``(K, n, ·)`` (a side without them is broadcast,
    e.g. to compare every member with one reference); ``compute()`` then has shape ``(K,)``.

    Example:
        >>> import torch
        >>> a = torch.eye(6)[:, :3]
        >>> metric = ENSD()
        >>> metric.update(a[:3], a[:3])
        >>> metric.update(a[3:], a[3:])
        >>> metric.compute()                       # ENSD(A, A) = PR_A = 3
        tensor(3., dtype=torch.float64)
    """

    _state_names = ("moment_a", "moment_b", "moment_ab", "n")

    def update(self, features_a: Tensor, features_b: Tensor) -> None:
        """Add a batch of paired features ``(..., n, p)`` and ``(..., n, q)``."""
        dtype = self._state_dtype
        a, b = _pair(_promote(features_a, dtype), _promote(features_b, dtype))
        self._accumulate("moment_a", _cross(a, a))
        self._accumulate("moment_b", _cross(b, b))
        self._accumulate("moment_ab", _cross(a, b))
        self.n = self.n + a.shape[-2]

    def compute(self) -> Tensor:
        """``ENSD`` of everything seen so far."""
        self._require_samples()
        out = ensd_from_moments(self.moment_a, self.moment_b, self.moment_ab)
        return out.to(self._state_dtype)


class LinearCKA(_LazyStateMetric):
    r"""Linear CKA accumulated exactly over minibatches.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` for ``K = XXᵀ``, ``L = YYᵀ`` over
    *all* samples seen. Per-batch CKA values are never averaged: the metric accumulates the
    sufficient statistics of :func:`linear_hsic_stats` for the pairs (X, Y), (X, X) and
    (Y, Y) — ``XᵀY``, ``XᵀX``, ``YᵀY``, ``Σxᵢ``, ``Σyᵢ``, ``Σaᵢxᵢ``, ``Σaᵢyᵢ``, ``Σbᵢxᵢ``,
    ``Σbᵢyᵢ``, ``Σaᵢ``, ``Σbᵢ``, ``Σaᵢ²``, ``Σbᵢ²``, ``Σaᵢbᵢ``, ``n`` with ``aᵢ = ‖xᵢ‖²``,
    ``bᵢ = ‖yᵢ‖²`` — and evaluates the HSICs at ``compute``. The result equals
    :func:`linear_cka` on the concatenated batches up to float64 round-off. Memory is
    ``O(p² + q² + pq)`` per member, independent of ``n``.

    Args:
        unbiased: unbiased HSIC estimator (Song et al. 2012; needs ``n ≥ 4`` in total) if
            True, else the biased ``tr(KHLH)/(n−1)²``.

    ``update(x, y)``: ``(n, p)`` and ``(n, q)`` features of the same inputs, or with leading
    ensemble dims ``(K, n, ·)`` (a side without them is broadcast); ``compute()`` then
    returns shape ``(K,)``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(64, 10)
        >>> y = x @ torch.randn(10, 5)
        >>> metric = LinearCKA()
        >>> for xb, yb in zip(x.split(16), y.split(16)):
        ...     metric.update(xb, yb)
        >>> torch.allclose(metric.compute(), linear_cka(x, y))
        True
    """

    _state_names = (
        "xtx", "yty", "xty",
        "sum_x", "sum_y",
        "sum_a_x", "sum_a_y", "sum_b_x", "sum_b_y",
        "sum_a", "sum_b", "sum_a2", "sum_b2", "sum_ab",
        "n",
    )  # fmt: skip

    def __init__(self, unbiased: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unbiased = unbiased

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add a batch of paired features ``(..., n, p)`` and ``(..., n, q)``."""
        dtype = self._state_dtype
        x, y = _pair(_promote(x, dtype), _promote(y, dtype))
        a = (x * x).sum(-1)
        b = (y * y).sum(-1)
        self._accumulate("xtx", _cross(x, x))
        self._accumulate("yty", _cross(y, y))
        self._accumulate("xty", _cross(x, y))
        self._accumulate("sum_x", x.sum(-2))
        self._accumulate("sum_y", y.sum(-2))
        self._accumulate("sum_a_x", (a.unsqueeze(-1) * x).sum(-2))
        self._accumulate("sum_a_y", (a.unsqueeze(-1) * y).sum(-2))
        self._accumulate("sum_b_x", (b.unsqueeze(-1) * x).sum(-2))
        self._accumulate("sum_b_y", (b.unsqueeze(-1) * y).sum(-2))
        self._accumulate("sum_a", a.sum(-1))
        self._accumulate("sum_b", b.sum(-1))
        self._accumulate("sum_a2", (a * a).sum(-1))
        self._accumulate("sum_b2", (b * b).sum(-1))
        self._accumulate("sum_ab", (a * b).sum(-1))
        self.n = self.n + x.shape[-2]

    def _stats(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        n = self.n
        kl = {
            "xty": self.xty, "sum_x": self.sum_x, "sum_y": self.sum_y,
            "sum_a_y": self.sum_a_y, "sum_b_x": self.sum_b_x, "sum_ab": self.sum_ab,
            "sum_a": self.sum_a, "sum_b": self.sum_b, "n": n,
        }  # fmt: skip
        kk = {
            "xty": self.xtx, "sum_x": self.sum_x, "sum_y": self.sum_x,
            "sum_a_y": self.sum_a_x, "sum_b_x": self.sum_a_x, "sum_ab": self.sum_a2,
            "sum_a": self.sum_a, "sum_b": self.sum_a, "n": n,
        }  # fmt: skip
        ll = {
            "xty": self.yty, "sum_x": self.sum_y, "sum_y": self.sum_y,
            "sum_a_y": self.sum_b_y, "sum_b_x": self.sum_b_y, "sum_ab": self.sum_b2,
            "sum_a": self.sum_b, "sum_b": self.sum_b, "n": n,
        }  # fmt: skip
        return kl, kk, ll

    def compute(self) -> Tensor:
        """Linear CKA of everything seen so far."""
        self._require_samples(4 if self.unbiased else 2)
        hsic = hsic_unbiased_from_stats if self.unbiased else hsic_biased_from_stats
        kl, kk, ll = self._stats()
        n = self.n
        return cka_from_hsic(hsic(kl), hsic(kk), hsic(ll), (self.sum_a / n) ** 2,
                             (self.sum_b / n) ** 2).to(self._state_dtype)
