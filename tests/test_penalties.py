"""Implicit penalties of MTL and PT+FT (SCIENCE.md sections 4-5): limits of q, the
order/feature-dependence conservation law, lazy/rich limits, the nested-feature-selection range,
the ReLU unit penalty and the F1/group norms."""

import math

import pytest
import torch

from mtl_lab.analysis.penalties import (
    f1_norm,
    feature_dependence,
    group_norm,
    incremental_penalty,
    l1,
    l2,
    l12,
    mtl_penalty,
    nested_range,
    penalty_order,
    ptft_penalty,
    q_function,
    relu_unit_ptft_penalty,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- q and PT+FT


def test_q_small_z_is_quadratic():
    z = torch.logspace(-6, -2, 9, dtype=F64)
    assert torch.allclose(q_function(z) / (z**2 / 4), torch.ones_like(z), rtol=1e-4)


def test_q_large_z_tends_to_z_log_z():
    z = torch.logspace(2, 14, 7, dtype=F64)
    ratio = q_function(z) / (z * torch.log(z))
    gap = (1 - ratio).abs()
    assert torch.all(gap[1:] < gap[:-1])  # the ratio approaches 1 monotonically
    assert float(gap[-1]) < 0.05


def test_q_nonnegative_even_zero_at_origin():
    z = torch.linspace(-50, 50, 2001, dtype=F64)
    q = q_function(z)
    assert torch.all(q >= 0)
    assert torch.allclose(q, q_function(-z), rtol=0, atol=0)
    assert float(q_function(torch.tensor(0.0, dtype=F64))) == 0.0


def test_ptft_penalty_is_weighted_l2_for_tiny_beta():
    a = torch.rand(10, generator=_gen(0), dtype=F64) + 0.1
    b = 1e-4 * torch.randn(10, generator=_gen(1), dtype=F64)
    gamma = 0.3
    m = a.abs() + gamma**2
    assert torch.allclose(ptft_penalty(b, a, gamma), (b**2 / m).sum(), rtol=1e-6)
    per = ptft_penalty(b, a, gamma, reduce=False)
    assert per.shape == (10,)
    assert torch.allclose(per.sum(), ptft_penalty(b, a, gamma))


def test_ptft_unused_coordinate_cost_is_l1_with_log():
    gamma = 1e-3
    b = torch.tensor([1.0, -2.0, 5.0], dtype=F64)
    cost = ptft_penalty(b, torch.zeros(3, dtype=F64), gamma, reduce=False)
    approx = 2 * b.abs() * torch.log(2 * b.abs() / gamma**2)
    assert torch.allclose(cost, approx, rtol=0.1)
    assert float(ptft_penalty(0.0, 0.0, 0.0)) == 0.0
    assert math.isinf(float(ptft_penalty(1.0, 0.0, 0.0)))


def test_ptft_penalty_batched_over_leading_dim():
    b = torch.randn(4, 6, generator=_gen(2), dtype=F64)
    a = torch.randn(4, 6, generator=_gen(3), dtype=F64)
    batched = ptft_penalty(b, a, 0.1)
    assert batched.shape == (4,)
    assert torch.allclose(batched, torch.stack([ptft_penalty(b[k], a[k], 0.1) for k in range(4)]))


# ----------------------------------------------------------------------------- MTL and norms


def test_mtl_reuse_is_l2_like_and_new_coordinate_is_l1():
    a = torch.tensor([2.0, -5.0, 10.0], dtype=F64)
    b = torch.tensor([1e-3, -2e-3, 5e-4], dtype=F64)
    reuse = mtl_penalty(b, a, reduce=False) - a.abs()
    assert torch.allclose(reuse, b**2 / (2 * a.abs()), rtol=1e-5)
    assert torch.allclose(incremental_penalty("mtl", b, a), b**2 / (2 * a.abs()), rtol=1e-5)
    new = mtl_penalty(b, torch.zeros(3, dtype=F64), reduce=False)
    assert torch.allclose(new, b.abs())


def test_diagonal_norms():
    a = torch.tensor([3.0, 0.0, -1.0], dtype=F64)
    b = torch.tensor([4.0, 2.0, 0.0], dtype=F64)
    assert float(l1(b)) == 6.0
    assert math.isclose(float(l2(b)), math.sqrt(20.0))
    assert float(l12(a, b)) == 8.0
    assert float(mtl_penalty(b, a)) == float(l12(a, b))
    stacked = torch.stack([b, 2 * b])
    assert torch.allclose(l1(stacked), torch.tensor([6.0, 12.0], dtype=F64))


# ----------------------------------------------------------------------------- order analysis


@pytest.mark.parametrize("penalty", ["mtl", "ptft"])
@pytest.mark.parametrize("gamma", [0.0, 1e-8])
def test_order_plus_feature_dependence_is_one(penalty, gamma):
    a = torch.logspace(-6, 6, 49, dtype=F64)
    for beta_main in (0.3, 1.0, -4.0):
        total = (penalty_order(penalty, beta_main, a, gamma)
                 + feature_dependence(penalty, beta_main, a, gamma))
        assert torch.allclose(total, torch.ones_like(total), atol=1e-4), (penalty, beta_main)


def test_conservation_law_breaks_for_non_homogeneous_ptft():
    # gamma^2 comparable to beta_aux: m = |beta_aux| + gamma^2 is not 1-homogeneous
    a = torch.logspace(-3, -1, 5, dtype=F64)
    total = penalty_order("ptft", 1.0, a, 0.3) + feature_dependence("ptft", 1.0, a, 0.3)
    assert float((total - 1).abs().max()) > 1e-2


def test_order_accepts_callable():
    def r(beta_main, beta_aux):
        return torch.hypot(beta_main, beta_aux)

    a = torch.logspace(-4, 4, 17, dtype=F64)
    assert torch.allclose(penalty_order(r, 1.0, a), penalty_order("mtl", 1.0, a), atol=1e-4)


@pytest.mark.parametrize("beta_main", [0.5, 1.0, 3.0])
def test_ptft_lazy_and_rich_limits(beta_main):
    assert float(penalty_order("ptft", beta_main, 1e4 * beta_main)) > 1.95
    assert float(penalty_order("ptft", beta_main, 1e-8 * beta_main)) < 1.2


def test_mtl_lazy_and_rich_limits():
    assert float(penalty_order("mtl", 1.0, 1e4)) > 1.95
    tiny = penalty_order("mtl", 1.0, torch.tensor([1e-2, 1e-4, 1e-8], dtype=F64))
    assert torch.all(tiny[1:] < tiny[:-1])
    assert float(tiny[-1]) < 1 + 1e-4


@pytest.mark.parametrize("penalty", ["mtl", "ptft"])
def test_order_increases_with_beta_aux(penalty):
    order = penalty_order(penalty, 1.0, torch.logspace(-8, 4, 61, dtype=F64))
    assert torch.all(order[1:] >= order[:-1] - 1e-6)


def test_nested_range_wider_for_ptft_than_mtl():
    ptft, mtl = nested_range("ptft", gamma=0.0), nested_range("mtl")
    assert ptft.width_decades > mtl.width_decades + 1
    assert ptft.width_decades > 3  # "several decades"
    for r, pen in ((ptft, "ptft"), (mtl, "mtl")):
        assert r.low < r.high
        assert math.isclose(r.width_decades, math.log10(r.high / r.low))
        edges = penalty_order(pen, 1.0, torch.tensor([r.low, r.high], dtype=F64))
        assert torch.allclose(edges, torch.tensor([1.1, 1.9], dtype=F64), atol=2e-3)


def test_nested_range_scales_with_beta_main():
    r1, r2 = nested_range("ptft", beta_main=1.0), nested_range("ptft", beta_main=10.0)
    assert math.isclose(r2.low / r1.low, 10.0, rel_tol=1e-3)
    assert math.isclose(r2.width_decades, r1.width_decades, rel_tol=1e-3)


def test_nested_range_empty_band_is_nan():
    r = nested_range("mtl", lo=2.5, hi=3.0)
    assert math.isnan(r.width_decades)


# ----------------------------------------------------------------------------- ReLU unit


def test_relu_reuse_is_cheaper_than_rotation():
    m0 = torch.tensor([5.0, 20.0, 100.0], dtype=F64)
    v0 = torch.tensor([1.0, 0.5, -0.3], dtype=F64)
    beta = m0 * v0  # unchanged function
    reuse = relu_unit_ptft_penalty(beta, v0, m0, 1.0)
    rotate = relu_unit_ptft_penalty(beta, v0, m0, 0.0)
    assert torch.allclose(reuse, torch.zeros_like(reuse), atol=1e-9)
    assert torch.all(rotate > reuse + 1.0)
    assert torch.all(rotate >= m0**2)  # rotating a large feature costs at least its norm^2


def _brute_force(beta, v0, m0, theta):
    """Dense log grid over m, then a dense linear grid between the best point's neighbours."""
    def f(m):
        return (beta / m - v0) ** 2 + m * m + m0 * m0 - 2 * m * m0 * theta

    coarse = torch.logspace(-6, 4, 100001, dtype=F64)
    j = int(f(coarse).argmin())
    fine = torch.linspace(float(coarse[max(j - 1, 0)]), float(coarse[min(j + 1, 100000)]),
                          100001, dtype=F64)
    return float(f(fine).min())


def test_relu_minimisation_matches_brute_force():
    g = _gen(4)
    n = 40
    beta = torch.randn(n, generator=g, dtype=F64) * torch.logspace(-2, 2, n, dtype=F64)
    v0 = 3 * torch.randn(n, generator=g, dtype=F64)
    m0 = 10 * torch.rand(n, generator=g, dtype=F64)
    theta = 2 * torch.rand(n, generator=g, dtype=F64) - 1
    value, argmin = relu_unit_ptft_penalty(beta, v0, m0, theta, return_argmin=True)
    for i in range(n):
        ref = _brute_force(beta[i], v0[i], m0[i], theta[i])
        assert abs(float(value[i]) - ref) <= 1e-8 * max(1.0, abs(ref)), i
    recomputed = (beta / argmin - v0) ** 2 + argmin**2 + m0**2 - 2 * argmin * m0 * theta
    assert torch.allclose(recomputed, value, rtol=1e-12, atol=1e-12)


def test_relu_nonconvex_case_finds_global_minimum():
    # beta * v0 > 0 with a large reusable unit: the objective has two local minima in m
    beta, v0, m0, theta = 1.0, 5.0, 10.0, 1.0
    m = torch.logspace(-4, 4, 20001, dtype=F64)
    f = (beta / m - v0) ** 2 + m * m + m0 * m0 - 2 * m * m0 * theta
    inner = f[1:-1]
    assert int(((inner < f[:-2]) & (inner < f[2:])).sum()) == 2
    value = float(relu_unit_ptft_penalty(beta, v0, m0, theta))
    assert abs(value - _brute_force(beta, v0, m0, theta)) < 1e-8


def test_relu_penalty_increases_as_theta_decreases():
    theta = torch.linspace(1.0, -1.0, 41, dtype=F64)
    for beta, v0, m0 in ((2.0, 1.0, 2.0), (0.5, -1.0, 4.0), (-3.0, 0.2, 1.0)):
        r = relu_unit_ptft_penalty(beta, v0, m0, theta)
        assert torch.all(r[1:] > r[:-1])


def test_relu_zero_beta_limit_and_shapes():
    # beta = 0, theta <= 0: infimum at m -> 0 is v0^2 + m0^2
    r, m = relu_unit_ptft_penalty(0.0, 2.0, 3.0, torch.tensor([-0.5, 0.0, 0.5]),
                                  return_argmin=True)
    assert torch.allclose(r, torch.tensor([13.0, 13.0, 4.0 + 9.0 * (1 - 0.25)], dtype=F64))
    assert torch.allclose(m, torch.tensor([0.0, 0.0, 1.5], dtype=F64))
    grid = relu_unit_ptft_penalty(torch.ones(3, 1), 1.0, 2.0, torch.linspace(0, 1, 4))
    assert grid.shape == (3, 4)


# ----------------------------------------------------------------------------- ReLU norms


def _random_net(seed, *lead):
    g = _gen(seed)
    w = torch.randn(*lead, 7, 5, generator=g, dtype=F64)
    heads = torch.randn(*lead, 3, 7, generator=g, dtype=F64)
    return w, heads


def test_norms_match_definitions():
    w, heads = _random_net(5)
    norms = w.norm(dim=-1)
    assert torch.allclose(f1_norm(w, heads[0]), (norms * heads[0].abs()).sum())
    assert torch.allclose(f1_norm(w, heads), (norms * heads.abs()).sum(-1))
    assert torch.allclose(group_norm(w, heads), (norms * heads.norm(dim=0)).sum())
    assert torch.allclose(group_norm(w, heads[1]), f1_norm(w, heads[1]))


def test_norms_invariant_under_relu_rescaling():
    w, heads = _random_net(6)
    lam = torch.rand(7, generator=_gen(7), dtype=F64) * 10 + 0.1
    w2, heads2 = w * lam[:, None], heads / lam
    assert torch.allclose(f1_norm(w2, heads2), f1_norm(w, heads))
    assert torch.allclose(group_norm(w2, heads2), group_norm(w, heads))


def test_norms_with_leading_ensemble_dimension():
    w, heads = _random_net(8, 4)
    f1 = f1_norm(w, heads[:, 0])
    grp = group_norm(w, heads)
    assert f1.shape == (4,) and grp.shape == (4,)
    assert f1_norm(w, heads).shape == (4, 3)
    for k in range(4):
        assert torch.allclose(f1[k], f1_norm(w[k], heads[k, 0]))
        assert torch.allclose(grp[k], group_norm(w[k], heads[k]))


def test_norms_reject_mismatched_heads():
    w, heads = _random_net(9)
    with pytest.raises(ValueError):
        f1_norm(w, heads[None, None])
