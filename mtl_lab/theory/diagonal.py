"""The implicit-bias predictions for diagonal linear networks as convex programs (SCIENCE.md §4).

Trained from small initialisation to zero training error, each regime is predicted to find the
interpolating solution of least implicit penalty, ``beta* = argmin R(beta) s.t. X beta = y``:

* **STL** from initial scale α: ``R(beta) = sum_d m q(2 beta_d / m)`` with ``m = 2 α^2``
  (:func:`stl_solution`).
* **PT+FT**: the same form with per-coordinate ``m_d`` set by the pretrained trunk, the rescale
  factor c and the new head's initial scale γ, plus a small linear offset
  (:func:`ptft_exact_solution`, exact); SCIENCE.md's ``m_d = |beta_aux_d| + γ^2``
  (:func:`ptft_solution`, as in :func:`ptft_penalty`) approximates it.
* **MTL**: the l1,2 group norm ``sum_d ||(beta_aux_d, beta_main_d)||_2`` minimised jointly
  over both predictors, each interpolating its own task (:func:`mtl_solution`,
  :func:`mtl_penalty`): a heuristic, not an exact limit.

The penalty formulas are those of :mod:`mtl_lab.analysis.penalties` (``q`` is
``q_function``); this module only minimises them.

Why these forms (the exact gradient-flow limits). Take one coordinate of one head: two products
``u₊ = w₊ v₊`` and ``u₋ = w₋ v₋`` with ``beta = u₊ - u₋``. Under gradient flow on a loss
``L(beta)`` with ``g = dL/dbeta``, ``w₊ (d/dt) w₊ = v₊ (d/dt) v₊ = -u₊ g``, so ``w₊^2 - v₊^2``
is conserved and ``(d/dt) u₊ = -(w₊^2 + v₊^2) g = -sqrt((w₊^2 - v₊^2)^2 + 4 u₊^2) g``. With
``z = -2 int_0^t g``: ``u₊(z) = u₊(0) cosh z + s₊ sinh z`` and ``u₋(z) = u₋(0) cosh z -
s₋ sinh z``, ``s± = (w±^2 + v±^2) / 2`` at the start. Hence ``beta = A sinh z + B cosh z`` with
``A = s₊ + s₋`` and ``B = beta(0)``, i.e. ``beta = m sinh(φ + z)`` with ``m = sqrt(A^2 - B^2)``
and ``tanh φ = B / A`` (:func:`flow_scale`). For the squared loss ``g = X^T r(t)``, so ``z`` lies
in the row space of ``X``: the limit is ``beta = m ⊙ sinh(φ + X^T ν)``, which is exactly the
optimality condition of ``min sum_d m_d q(2 beta_d / m_d) - 2 φ_d beta_d s.t. X beta = y``
because ``q'(z) = arcsinh(z / 2)`` makes the gradient of ``m q(2 beta / m)`` equal to
``2 arcsinh(beta / m)`` (:func:`mirror_solution`).

* STL, all weights at α (heads at ``h`` if the model sets ``head_init_scale``): ``B = 0`` and
  ``m = α^2 + h^2 = 2 α^2``. (Woodworth et al. 2020 write ``Q_α = α^2 sum q(beta / α^2)``: half
  of this penalty, the same minimiser.)
* PT+FT: the pretrained trunk ``w±`` times ``c``, the new head at γ: ``A = c^2 (w₊^2 + w₋^2) / 2
  + γ^2``, ``B = c γ (w₊ - w₋)`` (:func:`finetune_scale`). Pretraining from a small balanced
  start leaves ``w±^2 = u±`` (:func:`stl_trunk`), about ``max(±beta_aux, 0)``, so
  ``m_d ≈ c^2 |beta_aux_d| / 2 + γ^2``: SCIENCE.md's ``m_d = |beta_aux_d| + γ^2`` counts the
  auxiliary magnitude twice as much against γ as this network does (the lab's diagonal network
  has two signed products per coordinate, each with its own fresh head entry γ). Trained lab
  networks agree with :func:`ptft_exact_solution` to about 1 % (relative, the finetuning step
  size's discretisation) and with SCIENCE.md's form (:func:`ptft_solution`) only to 5-14 %
  (tests/test_theory.py).
* MTL: both heads move the shared trunk, the single-head argument does not apply. The ℓ1,2 norm
  is the small-initialisation heuristic of SCIENCE.md §4 (a balanced network's
  ``sum_d ||(beta_aux_d, beta_main_d)||`` is half its squared parameter norm); gradient descent
  need not find its minimiser, and on the tests' problems it does not (tests/test_theory.py).

Gradient descent with step η instead of the flow: per step ``u₊ ← u₊ (1 - η g)^2`` (STL), so the
effective scale of each coordinate shrinks by ``prod (1 - η^2 g^2)`` and ``z`` leaves the row
space at order η^3 per step (Even et al. 2023); the trained ``beta`` is then off by a relative
error roughly proportional to η (about 0.4 η on the tests' STL problems from α = 1e-3).

Solvers (numpy, float64; scipy is not needed):

* Every constraint system is first reduced by an SVD ``X = U S V^T`` to ``A beta = b`` with
  ``A = V_r^T`` (orthonormal rows, ``r = rank X``) and ``b = S_r^{-1} U_r^T y``: the same
  feasible set, a redundant row is dropped, and an inconsistent system (``y`` outside the range
  of ``X``) raises :class:`InfeasibleError` before any iteration.
* **STL and PT+FT** (smooth, strictly convex) are solved through their dual. The optimum has the
  mirror-descent form ``beta(ν) = m ⊙ sinh(φ + A^T ν / 2)``, and ``ν`` minimises the smooth
  convex ``f(ν) = sum_d 2 m_d cosh(φ_d + (A^T ν)_d / 2) - b^T ν`` in only ``r ≤ n``
  variables, whose gradient is the constraint residual ``A beta(ν) - b``. Damped Newton with an
  Armijo line search converges globally and then quadratically, to a residual of about 1e-14
  ``||b||`` in tens of iterations even when ``m`` spans many decades; the Fenchel duality gap
  certifies the result.
  A primal solver on ``d`` variables with a nearly singular Hessian (``m`` tiny) would not.
  Coordinates with ``m_d = 0`` (PT+FT with γ = 0 where ``beta_aux_d = 0``) cost ``∞`` and are 0.
* **MTL** (non-smooth: a second-order-cone program) is solved by a log-barrier interior-point
  method on its dual ``max b_a^T λ + b_m^T μ s.t. ||((A_a^T λ)_d, (A_m^T μ)_d)||_2 ≤ 1 ∀ d``:
  smooth Newton centring steps in ``r_a + r_m`` variables, the barrier weight raised tenfold per
  stage. Every central point also yields a primal point that interpolates both tasks with a
  known duality gap ``≤ d / t``. The barrier alone loses digits near the cone boundary (about
  1e-5 relative), so the result is then *polished*: with the active groups ``S`` read off the
  barrier solution, Newton solves the square KKT system ``p_d = ρ_d s_d``, ``||s_d|| = 1``
  (``d ∈ S``), ``A p = b`` to machine precision; the polished point is kept only if it is
  optimal (``ρ > 0``, ``||s_d|| ≤ 1`` off ``S``), otherwise the barrier point is returned
  (projected onto the constraints). Either way :attr:`Prediction.gap` is a rigorous bound
  ``R(p) - R* ≤ gap`` from a dual-feasible point. On the tests' problems the polished
  solution agrees with independent solvers (scipy, reweighted least squares) to their own
  accuracy. Polishing is refused when the active set cannot be read off cleanly, e.g. float32
  task data whose auxiliary teacher is recovered exactly: the optimum then has many groups of
  size ~1e-8, and the barrier point, accurate to about 1e-4 (relative), is returned.
  When one task has as many independent samples as coordinates (the paper's n_aux = 1024 ≥
  d = 1000) its predictor is fixed by its constraints and only the other is optimised: a barrier
  on ``max b^T μ + sum_d |a_d| sqrt(1 - (A^T μ)_d^2)`` in ``rank X`` variables, much faster.
* A single-task problem with ``n >= d`` independent samples has one interpolant: it is returned
  directly (no iteration, ``gap = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mtl_lab.analysis.penalties import mtl_penalty, ptft_penalty
from mtl_lab.errors import InputError

__all__ = [
    "InfeasibleError",
    "NotConvergedError",
    "Prediction",
    "finetune_scale",
    "flow_scale",
    "mirror_solution",
    "mtl_solution",
    "predicted_test_loss",
    "ptft_exact_solution",
    "ptft_scale",
    "ptft_solution",
    "stl_scale",
    "stl_solution",
    "stl_trunk",
]

EPS = np.finfo(np.float64).eps


class InfeasibleError(InputError):
    """No interpolating solution: ``y`` is not in the range of ``X`` (or of its usable columns)."""


class NotConvergedError(RuntimeError):
    """A solver stopped at its iteration budget without reaching its tolerance."""


@dataclass(frozen=True)
class Prediction:
    """The theory's interpolating solution.

    ``beta``: the (main-task) predictor ``beta*`` (float64, shape ``(d,)``); ``penalty``: its
    implicit penalty ``R(beta*)``, the objective minimised (its q and l1,2 terms from
    :mod:`mtl_lab.analysis.penalties`; :func:`mirror_solution` says what an offset φ adds);
    ``residual``: the
    largest relative constraint violation ``||X beta - y|| / ||y||`` over the tasks; ``gap``: a
    certified bound ``R(beta) - min R`` from a dual-feasible point (``>= 0``); ``iterations``:
    Newton iterations in all; ``beta_aux``: MTL only, the auxiliary predictor found jointly;
    ``polished``: MTL only, whether the active-set polishing was accepted.
    """

    beta: np.ndarray
    penalty: float
    residual: float
    gap: float
    iterations: int
    beta_aux: np.ndarray | None = None
    polished: bool | None = None


# ----------------------------------------------------------------------------- inputs


def _array(x, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    a = np.array(x, dtype=np.float64)  # a copy: callers' arrays are never modified
    if ndim == 1 and a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != ndim:
        shape = "(n, d)" if ndim == 2 else "(n,)"
        raise InputError(f"{name} must have shape {shape}, got {a.shape}")
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} has non-finite entries")
    return a


def _system(X, y, x_name: str = "X", y_name: str = "y") -> tuple[np.ndarray, np.ndarray]:
    X, y = _array(X, x_name, 2), _array(y, y_name, 1)
    if X.shape[0] != y.shape[0]:
        raise InputError(f"{x_name} has {X.shape[0]} rows but {y_name} has {y.shape[0]} entries")
    return X, y


def _vector(v, name: str, d: int) -> np.ndarray:
    v = _array(v, name, 1)
    if v.shape[0] != d:
        raise InputError(f"{name} has {v.shape[0]} entries, expected d = {d}")
    return v


def _positive(value, name: str, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def _reduce(X: np.ndarray, y: np.ndarray, tol: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with orthonormal rows ``A`` and ``{beta: A beta = b} = {beta: X beta = y}``."""
    u, s, vt = np.linalg.svd(X, full_matrices=False)
    cut = s[0] * max(X.shape) * EPS if s.size and s[0] > 0 else 0.0
    r = int(np.sum(s > cut)) if s.size and s[0] > 0 else 0
    coef = u[:, :r].T @ y
    outside = float(np.linalg.norm(y - u[:, :r] @ coef))
    scale = max(float(np.linalg.norm(y)), np.finfo(np.float64).tiny)
    if outside > tol * scale and outside > 0:
        raise InfeasibleError(
            f"{what}: no exact interpolation, ||y - proj_range(X) y|| / ||y|| = "
            f"{outside / scale:.3g} > {tol:g} (rank {r} with {X.shape[0]} samples, "
            f"{X.shape[1]} coordinates)")
    return vt[:r], coef / s[:r]


def _relative_residual(X: np.ndarray, beta: np.ndarray, y: np.ndarray) -> float:
    scale = max(float(np.linalg.norm(y)), np.finfo(np.float64).tiny)
    return float(np.linalg.norm(X @ beta - y)) / scale


# ----------------------------------------------------------------------------- smooth (q) dual


def _solve_spd(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    try:
        c = np.linalg.cholesky(h)
        return np.linalg.solve(c.T, np.linalg.solve(c, g))
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(h, g, rcond=None)[0]


def _mirror_dual(A: np.ndarray, b: np.ndarray, m: np.ndarray, tol: float, max_iter: int,
                 phi: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise ``f(ν) = sum 2 m cosh(φ + A^T ν / 2) - b^T ν``; returns ``(beta(ν), ν,
    iterations)`` with ``beta(ν) = m sinh(φ + A^T ν / 2)``."""
    nu = np.zeros(A.shape[0])
    if A.shape[0] == 0:
        return m * np.sinh(phi) * np.ones(A.shape[1]), nu, 0
    bnorm = max(float(np.linalg.norm(b)), np.finfo(np.float64).tiny)

    def value(v: np.ndarray) -> float:
        with np.errstate(over="ignore"):
            return float(np.sum(2 * m * np.cosh(phi + A.T @ v / 2)) - b @ v)

    def residual(v: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return A @ (m * np.sinh(phi + A.T @ v / 2)) - b

    f, grad = value(nu), residual(nu)
    gnorm = float(np.linalg.norm(grad))
    iterations, stalled = 0, 0
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing trial steps are rejected
        while iterations < max_iter and gnorm > tol * bnorm:
            iterations += 1
            step = -_solve_spd((A * (m * np.cosh(phi + A.T @ nu / 2) / 2)) @ A.T, grad)
            slope = float(grad @ step)
            if not slope < 0:  # numerically flat: no descent direction left
                break
            # Armijo on f; near the optimum f's decrease drops below its rounding, so a step that
            # halves the residual (= grad f) is accepted as well
            t = 1.0
            for _ in range(200):
                trial = nu + t * step
                new, new_grad = value(trial), residual(trial)
                new_norm = float(np.linalg.norm(new_grad))
                if math.isfinite(new) and (new <= f + 0.25 * t * slope or new_norm <= gnorm / 2):
                    break
                t *= 0.5
            else:
                break
            stalled = stalled + 1 if new_norm > gnorm / 2 else 0
            nu, f, grad, gnorm = trial, new, new_grad, new_norm
            if stalled >= 5 and gnorm <= 1e-9 * bnorm:  # no progress this close: rounding floor
                break
    # converged, or stopped at the rounding floor or the budget: accept if near-feasible
    beta = m * np.sinh(phi + A.T @ nu / 2)
    res = float(np.linalg.norm(A @ beta - b)) / bnorm
    if not res <= max(tol, 1e-9):
        raise NotConvergedError(
            f"dual Newton stopped after {iterations} iterations at relative residual {res:.3g}")
    return beta, nu, iterations


def mirror_solution(X, y, m, phi=None, tol: float = 1e-13, max_iter: int = 500,
                    feasibility_tol: float = 1e-9) -> Prediction:
    """``argmin R(beta) s.t. X beta = y`` with ``R(beta) = sum_d m_d q(2 beta_d / m_d) - 2 φ_d
    beta_d + 2 m_d (cosh φ_d - 1)`` for per-coordinate scales ``m >= 0`` and offsets ``φ``.

    The common solver of :func:`stl_solution`, :func:`ptft_solution` and
    :func:`ptft_exact_solution` (module docstring). ``R`` is the Bregman divergence of the
    potential ``sum m q(2 beta / m)`` from its minimiser ``beta_0 = m sinh(φ)``: the optimum has
    the form ``beta = m sinh(φ + X^T ν)``, and ``φ = 0`` (the default) gives the plain q-penalty
    ``sum m q(2 beta / m)``. ``m_d = 0`` forces ``beta_d = 0``. ``tol``: relative residual of the
    reduced system at which Newton stops; ``feasibility_tol``: how far (relative) ``y`` may lie
    outside the range of ``X`` before the problem counts as infeasible (float32 data needs about
    1e-6; ``y`` is projected onto the range first). Raises :class:`InfeasibleError` when no
    interpolating ``beta`` exists on the coordinates with ``m_d > 0``.

    >>> import numpy as np
    >>> sol = mirror_solution(np.eye(2), np.array([1.0, -2.0]), m=np.ones(2))
    >>> np.round(sol.beta, 12).tolist(), sol.residual < 1e-15, sol.gap < 1e-12
    ([1.0, -2.0], True, True)
    """
    X, y = _system(X, y)
    d = X.shape[1]
    m = _vector(m, "m", d)
    if np.any(m < 0):
        raise InputError("the scales m must be >= 0")
    phi = np.zeros(d) if phi is None else _vector(phi, "phi", d)
    used = m > 0
    A, b = _reduce(X[:, used], y, feasibility_tol,
                   "the interpolation constraints" if used.all()
                   else f"the interpolation constraints on the {int(used.sum())} coordinates "
                        "with m > 0")
    mu, offset = m[used], phi[used]
    if A.shape[0] == A.shape[1]:  # as many independent constraints as coordinates: one point
        beta_used = A.T @ b
        nu, iterations = 2 * A @ (np.arcsinh(beta_used / mu) - offset), 0
    else:
        beta_used, nu, iterations = _mirror_dual(A, b, mu, tol, max_iter, offset)
    beta = np.zeros(d)
    beta[used] = beta_used
    with torch.no_grad():
        # the q-penalty with beta_aux = m and gamma = 0 is exactly sum m q(2 beta / m)
        terms = ptft_penalty(torch.from_numpy(beta_used), torch.from_numpy(mu), 0.0,
                             reduce=False).numpy()
    penalty = float(np.sum(terms - 2 * offset * beta_used + 2 * mu * (np.cosh(offset) - 1)))
    with np.errstate(over="ignore"):
        dual = float(b @ nu - np.sum(2 * mu * (np.cosh(offset + A.T @ nu / 2)
                                               - np.cosh(offset))))
    return Prediction(beta=beta, penalty=penalty, residual=_relative_residual(X, beta, y),
                      gap=max(penalty - dual, 0.0), iterations=iterations)


def flow_scale(w_plus, v_plus, w_minus, v_minus) -> tuple[np.ndarray, np.ndarray]:
    """``(m, φ)`` of one head trained by gradient flow from the weights given (module docstring).

    Each argument is a number or a ``(d,)`` array: the trunk ``w±`` and the trained head's
    ``v±`` where training starts. Per coordinate, ``A = (w₊^2 + v₊^2 + w₋^2 + v₋^2) / 2`` and
    ``B = w₊ v₊ - w₋ v₋`` (the starting ``beta``) give ``m = sqrt(A^2 - B^2)`` and
    ``φ = artanh(B / A)``: the flow's limit is ``beta = m sinh(φ + X^T ν)``, the minimiser of
    :func:`mirror_solution` with these ``m`` and ``φ``. ``A - B`` and ``A + B`` are sums of
    squares, so neither loses digits. Raises :class:`~mtl_lab.errors.InputError` for a
    coordinate where ``A = |B|`` (``w₊ = v₊`` and ``w₋ = -v₋``, or the mirror case: a start from
    which the flow's ``beta_d`` keeps one sign, which this form cannot express).

    >>> m, phi = flow_scale(1e-3, 1e-3, 1e-3, 1e-3)  # STL from alpha = 1e-3: m = 2 alpha^2
    >>> float(m[0]), float(phi[0])
    (2e-06, 0.0)
    """
    parts = [_numbers(v, name) for v, name in ((w_plus, "w_plus"), (v_plus, "v_plus"),
                                               (w_minus, "w_minus"), (v_minus, "v_minus"))]
    try:
        wp, vp, wm, vm = np.broadcast_arrays(*parts)
    except ValueError as err:
        raise InputError(f"w_plus, v_plus, w_minus and v_minus do not broadcast: {err}") from err
    low = ((wp - vp) ** 2 + (wm + vm) ** 2) / 2  # A - B
    high = ((wp + vp) ** 2 + (wm - vm) ** 2) / 2  # A + B
    frozen = (low == 0) & (high == 0)  # all four weights 0: no gradient ever reaches beta_d
    flat = np.flatnonzero(((low == 0) | (high == 0)) & ~frozen)
    if flat.size:
        raise InputError(f"coordinate {int(flat[0])}: w₊ = ±v₊ and w₋ = ∓v₋ (A = |B| > 0): from "
                         "this start beta_d keeps its sign, which the mirror form cannot express")
    safe_low, safe_high = np.where(frozen, 1.0, low), np.where(frozen, 1.0, high)
    m = np.where(frozen, 0.0, np.sqrt(safe_low) * np.sqrt(safe_high))
    return m, np.where(frozen, 0.0, 0.5 * np.log(safe_high / safe_low))


def _numbers(v, name: str) -> np.ndarray:
    """A number or a 1-d array as a finite float64 array of at least one dimension."""
    a = _array(v, name, 1) if np.ndim(v) else _array(np.reshape(v, 1), name, 1)
    return a


def stl_scale(alpha: float, d: int, head_init_scale: float | None = None) -> np.ndarray:
    """STL's per-coordinate scale: trunk at α and head at ``h`` (default α) give
    ``m = α^2 + h^2`` (``2 α^2`` for the lab's default, head at α; module docstring).

    >>> stl_scale(1e-3, 2).tolist()
    [2e-06, 2e-06]
    """
    a = _positive(alpha, "alpha")
    h = a if head_init_scale is None else _positive(head_init_scale, "head_init_scale")
    return np.full(int(d), a * a + h * h)


def ptft_scale(beta_aux, gamma: float) -> np.ndarray:
    """SCIENCE.md §4's per-coordinate PT+FT scale ``m_d = |beta_aux_d| + γ^2`` (an approximation
    for the lab's network: see :func:`ptft_solution`; :func:`finetune_scale` is exact).

    >>> ptft_scale([0.5, -0.25, 0.0], 0.1).round(6).tolist()
    [0.51, 0.26, 0.01]
    """
    g = _positive(gamma, "gamma", allow_zero=True)
    return np.abs(_array(beta_aux, "beta_aux", 1)) + g * g


def finetune_scale(w_plus, w_minus, gamma: float, rescale: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(m, φ)`` of PT+FT: the pretrained trunk ``w±`` times ``c = rescale``, a fresh main
    head at γ (:func:`flow_scale`).

    ``A = c^2 (w₊^2 + w₋^2) / 2 + γ^2`` and ``B = c γ (w₊ - w₋)``. After pretraining from a
    small balanced start ``w±^2 ≈ max(±beta_aux, 0)``, so ``m ≈ c^2 |beta_aux| / 2 + γ^2``:
    half the auxiliary weight of SCIENCE.md's ``|beta_aux| + γ^2`` (:func:`ptft_scale`).

    >>> m, phi = finetune_scale([1.0, 1e-3], [0.0, 1e-3], gamma=1e-3)  # beta_aux = (1, 0)
    >>> [round(float(v), 9) for v in m], round(float(phi[0]), 6), float(phi[1])
    ([0.5, 2e-06], 0.002, 0.0)
    """
    c = _positive(rescale, "rescale")
    g = _positive(gamma, "gamma", allow_zero=True)
    return flow_scale(c * _numbers(w_plus, "w_plus"), g, c * _numbers(w_minus, "w_minus"), g)


def stl_trunk(beta, alpha: float, head_init_scale: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The trunk ``(w₊, w₋)`` a single-task gradient flow from trunk α, head ``h`` (default α)
    holds when its predictor is ``beta`` (what pretraining hands to PT+FT, in theory).

    On the flow ``u± = w± v± = u_0 cosh z ± s_0 sinh z`` with ``u_0 = α h``,
    ``s_0 = (α^2 + h^2) / 2`` and ``z = arcsinh(beta / (2 s_0))``, and ``w±^2 - v±^2 = α^2 - h^2``
    is conserved, so ``w±^2 = (δ + sqrt(δ^2 + 4 u±^2)) / 2`` with ``δ = α^2 - h^2``. ``w`` starts
    at α > 0 and can only change sign with ``u`` (when ``δ < 0``).

    >>> wp, wm = stl_trunk([0.5, -0.5, 0.0], alpha=1e-3)
    >>> [round(float(v), 6) for v in wp * wp - wm * wm]  # = beta, as u± = w±^2 when h = α
    [0.5, -0.5, 0.0]
    """
    a = _positive(alpha, "alpha")
    h = a if head_init_scale is None else _positive(head_init_scale, "head_init_scale")
    beta = _numbers(beta, "beta")
    s0, u0, delta = (a * a + h * h) / 2, a * h, a * a - h * h
    z = np.arcsinh(beta / (2 * s0))
    out = []
    for sign in (1.0, -1.0):
        u = u0 * np.cosh(z) + sign * s0 * np.sinh(z)
        w2 = (delta + np.hypot(delta, 2 * u)) / 2
        w = np.sqrt(w2)
        out.append(w if delta >= 0 else np.where(u < 0, -w, w))
    return out[0], out[1]


def stl_solution(X, y, alpha: float, head_init_scale: float | None = None,
                 **solver) -> Prediction:
    """STL from trunk α and head ``h`` (default α): ``argmin sum_d m q(2 beta_d / m)
    s.t. X beta = y`` with ``m = α^2 + h^2`` (:func:`stl_scale`; exact for gradient flow).

    ``X``: training inputs ``(n, d)``, ``y``: targets ``(n,)`` (numpy or torch). Keyword
    arguments go to :func:`mirror_solution`.

    >>> import numpy as np
    >>> X = np.array([[1.0, 1.0, 0.0]]); sol = stl_solution(X, np.array([1.0]), alpha=1e-3)
    >>> np.round(sol.beta, 6).tolist(), sol.residual < 1e-12
    ([0.5, 0.5, 0.0], True)
    """
    X = _array(X, "X", 2)
    return mirror_solution(X, y, stl_scale(alpha, X.shape[1], head_init_scale), **solver)


def ptft_solution(X, y, beta_aux, gamma: float, **solver) -> Prediction:
    """PT+FT as SCIENCE.md §4 states it: ``argmin sum_d m_d q(2 beta_d / m_d) s.t. X beta = y``,
    ``m_d = |beta_aux_d| + γ^2`` (for a trunk rescaled by c, pass ``c^2 beta_aux``).

    An approximation for the lab's network: its exact limit (:func:`ptft_exact_solution`) has
    ``m_d ≈ c^2 |beta_aux_d| / 2 + γ^2`` and a small offset φ. On the tests' problems this form
    is 5-14 % (relative) away from trained networks where the exact one is about 1 %.
    ``X``, ``y``: the main task's training inputs and targets; ``beta_aux``: the pretrained
    network's auxiliary predictor ``(d,)``; ``gamma``: the main head's initial scale. Keyword
    arguments go to :func:`mirror_solution`.
    """
    X = _array(X, "X", 2)
    beta_aux = _vector(beta_aux, "beta_aux", X.shape[1])
    return mirror_solution(X, y, ptft_scale(beta_aux, gamma), **solver)


def ptft_exact_solution(X, y, w_plus, w_minus, gamma: float, rescale: float = 1.0,
                        **solver) -> Prediction:
    """PT+FT's exact gradient-flow limit from the pretrained trunk ``(w₊, w₋)`` (each ``(d,)``):
    the trunk times ``c = rescale`` and a fresh main head at γ, trained on ``(X, y)``
    (:func:`finetune_scale`, :func:`mirror_solution`).

    For a trained network pass its pretrained ``w_plus``/``w_minus``; for the theory alone pass
    :func:`stl_trunk` of the auxiliary task's :func:`stl_solution`. Keyword arguments go to
    :func:`mirror_solution`.

    >>> import numpy as np
    >>> X = np.array([[1.0, 1.0]]); wp, wm = stl_trunk([1.0, 0.0], alpha=1e-3)
    >>> sol = ptft_exact_solution(X, np.array([1.0]), wp, wm, gamma=1e-3)
    >>> bool(sol.beta[0] > 0.99)  # the pretrained coordinate does the work
    True
    """
    X = _array(X, "X", 2)
    d = X.shape[1]
    m, phi = finetune_scale(_vector(w_plus, "w_plus", d), _vector(w_minus, "w_minus", d),
                            gamma, rescale)
    return mirror_solution(X, y, m, phi, **solver)


# ----------------------------------------------------------------------------- MTL (l1,2)


def _group_parts(A_a: np.ndarray, A_m: np.ndarray, nu: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    ra = A_a.shape[0]
    return A_a.T @ nu[:ra], A_m.T @ nu[ra:]


def _backtrack(phi, nu: np.ndarray, step: np.ndarray, value: float, decrement: float
               ) -> tuple[float, float] | None:
    """Armijo backtracking for a barrier's Newton step: ``(t, phi(nu + t step))`` for the first
    ``t = 2^-k`` (k < 60) that decreases ``phi`` by a quarter of ``t`` × the squared decrement,
    or None when no such ``t`` exists (rounding has eaten the decrease)."""
    t = 1.0
    for _ in range(60):
        new = phi(nu + t * step)
        if new <= value - 0.25 * t * decrement:
            return t, new
        t *= 0.5
    return None


def _barrier(A_a, b_a, A_m, b_m, rtol: float, max_iter: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """Log-barrier path on the dual cone program; returns ``(p_a, p_m, ν, t, iterations)``."""
    d = A_a.shape[1]
    b = np.concatenate([b_a, b_m])
    # with orthonormal rows, the least-norm interpolants bound R* by sqrt(d) ||b||
    upper = math.sqrt(d) * max(float(np.linalg.norm(b)), np.finfo(np.float64).tiny)
    t = d / upper
    nu = np.zeros(b.shape[0])
    iterations = 0

    def phi(v: np.ndarray) -> float:
        s, u = _group_parts(A_a, A_m, v)
        delta = 1 - s * s - u * u
        if np.any(delta <= 0):
            return math.inf
        return float(-t * (b @ v) - np.sum(np.log(delta)))

    while True:
        value = phi(nu)
        for _ in range(60):
            s, u = _group_parts(A_a, A_m, nu)
            delta = 1 - s * s - u * u
            grad = -t * b + np.concatenate([A_a @ (2 * s / delta), A_m @ (2 * u / delta)])
            h_ss = 2 / delta + 4 * s * s / delta**2
            h_su = 4 * s * u / delta**2
            h_uu = 2 / delta + 4 * u * u / delta**2
            hess = np.block([[(A_a * h_ss) @ A_a.T, (A_a * h_su) @ A_m.T],
                             [(A_m * h_su) @ A_a.T, (A_m * h_uu) @ A_m.T]])
            step = -_solve_spd(hess, grad)
            decrement = -float(grad @ step)  # squared Newton decrement
            iterations += 1
            if decrement / 2 <= 1e-9:  # centred: off-centre error ~ decrement / t in R
                break
            found = _backtrack(phi, nu, step, value, decrement)
            if found is None:  # no decrease measurable at this t (phi ~ t b^T nu lost the digits)
                break
            step_t, value = found
            nu = nu + step_t * step
            if step_t < 1 and decrement < 1e-6:  # damped this close: rounding, not curvature
                break
            if iterations >= max_iter:
                raise NotConvergedError(f"MTL barrier: no convergence in {max_iter} iterations")
        s, u = _group_parts(A_a, A_m, nu)
        delta = 1 - s * s - u * u
        norm = np.hypot(s, u)
        gap = float(np.sum(2 * norm / (t * (1 + norm))))
        if gap <= rtol * max(float(b @ nu), np.finfo(np.float64).tiny):
            return 2 * s / (t * delta), 2 * u / (t * delta), nu, t, iterations
        t *= 10


def _polish(A_a, b_a, A_m, b_m, p_a, p_m, nu, t, max_iter: int = 50):
    """Newton on the active-set KKT system; ``(p_a, p_m, ν, iterations)`` or ``None``."""
    norms = np.hypot(p_a, p_m)
    active = norms > math.sqrt(norms.max() / t)
    if not active.any():
        return None
    ra, rm, k = A_a.shape[0], A_m.shape[0], int(active.sum())
    Ba, Bm = A_a[:, active], A_m[:, active]
    rho = norms[active]
    b = np.concatenate([b_a, b_m])
    iterations = 0

    def equations(v: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, u = Ba.T @ v[:ra], Bm.T @ v[ra:]
        return np.concatenate([Ba @ (r * s) - b_a, Bm @ (r * u) - b_m, s * s + u * u - 1]), s, u

    x_nu, x_rho = nu.copy(), rho.copy()
    for _ in range(max_iter):
        eq, s, u = equations(x_nu, x_rho)
        if np.linalg.norm(eq) <= 1e-15 * max(1.0, float(np.linalg.norm(b))):
            break
        jac = np.zeros((ra + rm + k, ra + rm + k))
        jac[:ra, :ra] = (Ba * x_rho) @ Ba.T
        jac[ra:ra + rm, ra:ra + rm] = (Bm * x_rho) @ Bm.T
        jac[:ra, ra + rm:] = Ba * s
        jac[ra:ra + rm, ra + rm:] = Bm * u
        jac[ra + rm:, :ra] = 2 * (Ba * s).T
        jac[ra + rm:, ra:ra + rm] = 2 * (Bm * u).T
        try:
            delta = np.linalg.solve(jac, -eq)
        except np.linalg.LinAlgError:
            return None
        x_nu, x_rho = x_nu + delta[:ra + rm], x_rho + delta[ra + rm:]
        iterations += 1
    eq, s, u = equations(x_nu, x_rho)
    if not np.all(np.isfinite(eq)) or np.linalg.norm(eq) > 1e-10 * max(1.0, np.linalg.norm(b)):
        return None
    if np.any(x_rho <= 0):
        return None
    s_all, u_all = _group_parts(A_a, A_m, x_nu)
    if np.any(np.hypot(s_all, u_all)[~active] > 1 + 1e-9):
        return None
    q_a, q_m = np.zeros(A_a.shape[1]), np.zeros(A_a.shape[1])
    q_a[active], q_m[active] = x_rho * s, x_rho * u
    return q_a, q_m, x_nu, iterations


def _project(A: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The nearest point to ``p`` with ``A p = b`` (``A`` has orthonormal rows)."""
    return p + A.T @ (b - A @ p) if A.shape[0] else p


def mtl_solution(X_aux, y_aux, X_main, y_main, rtol: float = 1e-8, max_iter: int = 2000,
                 feasibility_tol: float = 1e-9, polish: bool = True) -> Prediction:
    """MTL: ``argmin sum_d ||(beta_aux_d, beta_main_d)||_2 s.t. X_aux beta_aux = y_aux,
    X_main beta_main = y_main`` (the small-initialisation limit; SCIENCE.md §4).

    Returns ``beta`` = the main predictor, ``beta_aux`` = the auxiliary one. ``rtol``: relative
    duality gap at which the barrier stops (before polishing). ``polish``: refine on the active
    set (module docstring). The l1,2 minimiser need not be unique when ``X`` is degenerate;
    generic (e.g. Gaussian) inputs have a unique one.

    >>> import numpy as np
    >>> Xa = np.array([[1.0, 0.0, 0.0]]); Xm = np.array([[1.0, 0.0, 1.0]])
    >>> sol = mtl_solution(Xa, np.array([1.0]), Xm, np.array([1.0]))
    >>> np.round(sol.beta, 6).tolist(), np.round(sol.beta_aux, 6).tolist()  # reuse coordinate 0
    ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    """
    X_a, y_a = _system(X_aux, y_aux, "X_aux", "y_aux")
    X_m, y_m = _system(X_main, y_main, "X_main", "y_main")
    if X_a.shape[1] != X_m.shape[1]:
        raise InputError(f"X_aux has {X_a.shape[1]} coordinates but X_main has {X_m.shape[1]}")
    A_a, b_a = _reduce(X_a, y_a, feasibility_tol, "the auxiliary task")
    A_m, b_m = _reduce(X_m, y_m, feasibility_tol, "the main task")
    d = X_a.shape[1]
    if A_a.shape[0] == d or A_m.shape[0] == d:  # a task with a unique interpolant (n >= d)
        return _mtl_one_fixed(X_a, y_a, X_m, y_m, A_a, b_a, A_m, b_m, rtol, max_iter)
    p_a, p_m, nu, t, iterations = _barrier(A_a, b_a, A_m, b_m, rtol, max_iter)
    polished = _polish(A_a, b_a, A_m, b_m, p_a, p_m, nu, t) if polish else None
    if polished is not None:
        p_a, p_m, nu, extra = polished
        iterations += extra
    else:
        p_a, p_m = _project(A_a, b_a, p_a), _project(A_m, b_m, p_m)
    penalty = float(mtl_penalty(torch.from_numpy(p_m), torch.from_numpy(p_a)))
    s, u = _group_parts(A_a, A_m, nu)
    # ν / max||s_d|| is dual feasible: b^T ν / max(1, max||s_d||) <= R*
    dual = float(np.concatenate([b_a, b_m]) @ nu) / max(1.0, float(np.hypot(s, u).max()))
    residual = max(_relative_residual(X_a, p_a, y_a), _relative_residual(X_m, p_m, y_m))
    return Prediction(beta=p_m, penalty=penalty, residual=residual,
                      gap=max(penalty - dual, 0.0), iterations=iterations, beta_aux=p_a,
                      polished=polished is not None)


def _fixed_partner(a: np.ndarray, A: np.ndarray, b: np.ndarray, rtol: float, max_iter: int
                   ) -> tuple[np.ndarray, float, int]:
    """``min_p sum_d sqrt(a_d^2 + p_d^2) s.t. A p = b`` for a fixed ``a``: ``(p, dual, iters)``.

    The dual is ``max_μ b^T μ + sum_d |a_d| sqrt(1 - s_d^2)``, ``s = A^T μ``, ``|s_d| <= 1``
    (the conjugate of ``sqrt(a^2 + p^2)`` in ``p`` is ``-|a| sqrt(1 - s^2)``), solved by a
    log-barrier path in ``rank A`` variables; its central points give primal points
    ``p_d = |a_d| s_d / sqrt(1 - s_d^2) + 2 s_d / (t (1 - s_d^2))``. ``dual`` is a lower bound of
    the optimum.
    """
    d, r = A.shape[1], A.shape[0]
    if r == 0:
        return np.zeros(d), float(np.sum(np.abs(a))), 0
    if r == d:  # this task's interpolant is unique too
        p = A.T @ b
        return p, float(np.sum(np.hypot(a, p))), 0
    size = np.abs(a)
    upper = float(np.sum(size)) + math.sqrt(d) * max(float(np.linalg.norm(b)), EPS)
    t = d / upper
    nu = np.zeros(r)
    iterations = 0

    def dual_value(v: np.ndarray) -> float:
        s = A.T @ v
        return float(b @ v + np.sum(size * np.sqrt(np.maximum(1 - s * s, 0.0))))

    def phi(v: np.ndarray) -> float:
        s = A.T @ v
        room = 1 - s * s
        if np.any(room <= 0):
            return math.inf
        return float(-t * (b @ v + np.sum(size * np.sqrt(room))) - np.sum(np.log(room)))

    while True:
        value = phi(nu)
        for _ in range(60):
            s = A.T @ nu
            room = 1 - s * s
            root = np.sqrt(room)
            grad = -t * b + A @ (t * size * s / root + 2 * s / room)
            curve = t * size / (room * root) + 2 * (1 + s * s) / room**2
            step = -_solve_spd((A * curve) @ A.T, grad)
            decrement = -float(grad @ step)
            iterations += 1
            if decrement / 2 <= 1e-10:
                break
            found = _backtrack(phi, nu, step, value, decrement)
            if found is None:
                break
            step_t, value = found
            nu = nu + step_t * step
            if iterations >= max_iter:
                raise NotConvergedError(f"MTL barrier: no convergence in {max_iter} iterations")
        s = A.T @ nu
        room = 1 - s * s
        p = _project(A, b, size * s / np.sqrt(room) + 2 * s / (t * room))
        dual = dual_value(nu)
        primal = float(np.sum(np.hypot(size, p)))
        if primal - dual <= rtol * max(dual, EPS) or t > 1e20:
            return p, dual, iterations
        t *= 10


def _mtl_one_fixed(X_a, y_a, X_m, y_m, A_a, b_a, A_m, b_m, rtol: float, max_iter: int
                   ) -> Prediction:
    """MTL when a task's constraints fix its predictor (rank d): only the other is optimised."""
    d = X_a.shape[1]
    if A_a.shape[0] == d:
        p_a = A_a.T @ b_a
        p_m, dual, iterations = _fixed_partner(p_a, A_m, b_m, rtol, max_iter)
    else:
        p_m = A_m.T @ b_m
        p_a, dual, iterations = _fixed_partner(p_m, A_a, b_a, rtol, max_iter)
    penalty = float(mtl_penalty(torch.from_numpy(p_m), torch.from_numpy(p_a)))
    residual = max(_relative_residual(X_a, p_a, y_a), _relative_residual(X_m, p_m, y_m))
    return Prediction(beta=p_m, penalty=penalty, residual=residual,
                      gap=max(penalty - dual, 0.0), iterations=iterations, beta_aux=p_a,
                      polished=False)


# ----------------------------------------------------------------------------- evaluation


def predicted_test_loss(beta, X_test, y_test) -> float:
    """Mean squared error ``mean((X_test beta - y_test)^2)`` of a predictor, as the lab reports
    test losses (``test_loss_main``).

    >>> import numpy as np
    >>> predicted_test_loss(np.array([1.0, 0.0]), np.eye(2), np.array([1.0, 1.0]))
    0.5
    """
    X, y = _system(X_test, y_test, "X_test", "y_test")
    beta = _vector(beta, "beta", X.shape[1])
    return float(np.mean((X @ beta - y) ** 2))
