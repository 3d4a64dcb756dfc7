"""Tests for representation measures: participation ratio, ENSD and linear CKA."""

from __future__ import annotations

import pytest
import torch

from mtl_lab.analysis.representation import (
    ENSD,
    LinearCKA,
    ParticipationRatio,
    ensd,
    hsic_biased,
    hsic_biased_from_stats,
    hsic_unbiased,
    hsic_unbiased_from_stats,
    linear_cka,
    linear_hsic_stats,
    participation_ratio,
    second_moment,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=F64)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(_randn(d, d, seed=seed))
    return q * torch.sign(torch.diagonal(r))


def _correlated(n: int = 80, p: int = 12, q: int = 7, seed: int = 0):
    """Two related but different representations of the same n inputs."""
    x = _randn(n, p, seed=seed)
    y = torch.tanh(x @ _randn(p, q, seed=seed + 1)) + 0.5 * _randn(n, q, seed=seed + 2)
    return x + 0.3, y  # non-zero means exercise the centring terms


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-10) -> bool:
    return torch.allclose(a, b, rtol=rtol, atol=0.0)


def _feed(metric, tensors, n_batches_edges=(0, 5, 17, 18, 40)):
    """Update ``metric`` with uneven minibatches (split along the sample dim -2)."""
    n = tensors[0].shape[-2]
    edges = [*n_batches_edges, n]
    for lo, hi in zip(edges[:-1], edges[1:]):
        metric.update(*(t[..., lo:hi, :] for t in tensors))
    return metric.compute()


# ----------------------------------------------------------------------------- HSIC / CKA


class TestHSIC:
    def test_stats_match_gram_estimators(self):
        x, y = _correlated()
        K, L = x @ x.T, y @ y.T
        stats = linear_hsic_stats(x, y)
        assert _close(hsic_unbiased_from_stats(stats), hsic_unbiased(K, L))
        assert _close(hsic_biased_from_stats(stats), hsic_biased(K, L))

    def test_biased_matches_centred_definition(self):
        x, y = _correlated(n=30)
        n = x.shape[0]
        H = torch.eye(n, dtype=F64) - torch.full((n, n), 1.0 / n, dtype=F64)
        K, L = x @ x.T, y @ y.T
        expected = torch.trace(K @ H @ L @ H) / (n - 1) ** 2
        assert _close(hsic_biased(K, L), expected)

    def test_unbiased_matches_explicit_formula(self):
        x, y = _correlated(n=25)
        n = x.shape[0]
        K, L = x @ x.T, y @ y.T
        Kt = K - torch.diag(torch.diag(K))
        Lt = L - torch.diag(torch.diag(L))
        one = torch.ones(n, dtype=F64)
        expected = (
            torch.trace(Kt @ Lt)
            + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
        ) / (n * (n - 3))
        assert _close(hsic_unbiased(K, L), expected)

    def test_unbiased_needs_four_samples(self):
        K = torch.eye(3, dtype=F64)
        with pytest.raises(ValueError):
            hsic_unbiased(K, K)


class TestLinearCKA:
    @pytest.mark.parametrize("unbiased", [True, False])
    def test_self_similarity_is_one(self, unbiased):
        x, _ = _correlated()
        assert float(linear_cka(x, x, unbiased=unbiased)) == pytest.approx(1.0, abs=1e-12)

    @pytest.mark.parametrize("unbiased", [True, False])
    def test_invariances(self, unbiased):
        x, y = _correlated()
        base = linear_cka(x, y, unbiased=unbiased)
        qx, qy = _orthogonal(x.shape[1], 10), _orthogonal(y.shape[1], 11)
        assert _close(linear_cka(x @ qx, y, unbiased=unbiased), base, 1e-9)
        assert _close(linear_cka(x, y @ qy, unbiased=unbiased), base, 1e-9)
        assert _close(linear_cka(3.7 * x, 0.2 * y, unbiased=unbiased), base, 1e-9)
        assert _close(linear_cka(y, x, unbiased=unbiased), base, 1e-9)  # symmetric
        assert 0.2 < float(base) < 1.0

    def test_independent_features_unbiased_vs_biased(self):
        # K independent pairs at small n with p comparable to n: the biased estimator is
        # inflated (of order p/n) while the unbiased one is centred at zero.
        members, n, p = 16, 64, 50
        x, y = _randn(members, n, p, seed=3), _randn(members, n, p, seed=4)
        unbiased = linear_cka(x, y)
        biased = linear_cka(x, y, unbiased=False)
        assert unbiased.shape == biased.shape == (members,)
        assert abs(float(unbiased.mean())) < 0.05
        assert float(unbiased.abs().max()) < 0.15
        assert float(biased.min()) > 0.3

    def test_float32_inputs_are_promoted(self):
        x, y = _correlated()
        out = linear_cka(x.float(), y.float())
        assert out.dtype == F64
        assert float(out) == pytest.approx(float(linear_cka(x, y)), rel=1e-5)

    def test_batched_functional_matches_per_member(self):
        x, y = _randn(3, 40, 6, seed=5), _randn(3, 40, 9, seed=6)
        y = y + x[..., :1]
        out = linear_cka(x, y)
        assert out.shape == (3,)
        for k in range(3):
            assert _close(out[k], linear_cka(x[k], y[k]))

    @pytest.mark.parametrize("unbiased", [True, False])
    def test_minibatch_equals_full_batch(self, unbiased):
        x, y = _correlated()
        metric = LinearCKA(unbiased=unbiased)
        assert _close(_feed(metric, (x, y)), linear_cka(x, y, unbiased=unbiased))

    def test_float32_batches_accumulate_in_float64(self):
        x, y = _correlated()
        x32, y32 = x.float(), y.float()
        out = _feed(LinearCKA(), (x32, y32))
        assert out.dtype == F64
        assert _close(out, linear_cka(x32.double(), y32.double()))

    @pytest.mark.parametrize("unbiased", [True, False])
    def test_ensemble_input_matches_per_member(self, unbiased):
        members = 4
        x = _randn(members, 50, 8, seed=7)
        y = torch.relu(x @ _randn(8, 5, seed=8)) + 0.1 * _randn(members, 50, 5, seed=9)
        out = _feed(LinearCKA(unbiased=unbiased), (x, y))
        assert out.shape == (members,)
        for k in range(members):
            assert _close(out[k], linear_cka(x[k], y[k], unbiased=unbiased))
            single = _feed(LinearCKA(unbiased=unbiased), (x[k], y[k]))
            assert _close(out[k], single)

    def test_ensemble_against_shared_reference_broadcasts(self):
        x = _randn(3, 40, 6, seed=12)
        ref = _randn(40, 4, seed=13)
        out = _feed(LinearCKA(), (x, ref))
        assert out.shape == (3,)
        for k in range(3):
            assert _close(out[k], linear_cka(x[k], ref))

    def test_reset_and_shape_change(self):
        metric = LinearCKA()
        metric.update(_randn(10, 3, seed=0), _randn(10, 2, seed=1))
        with pytest.raises(ValueError):
            metric.update(_randn(10, 4, seed=0), _randn(10, 2, seed=1))
        metric.reset()
        x, y = _correlated(n=30, p=4, q=5)
        assert _close(_feed(metric, (x, y), (0, 10)), linear_cka(x, y))

    def test_forward_returns_batch_value_and_keeps_global_state(self):
        x, y = _correlated()
        metric = LinearCKA()
        batch_value = metric(x[:40], y[:40])
        assert _close(batch_value, linear_cka(x[:40], y[:40]))
        metric(x[40:], y[40:])
        assert _close(metric.compute(), linear_cka(x, y))


# ----------------------------------------------------------------------------- PR


class TestParticipationRatio:
    def test_second_moment(self):
        f = _randn(20, 4, seed=0)
        assert _close(second_moment(f), f.T @ f / 20)

    def test_isotropic_gaussian_close_to_p(self):
        p = 20
        pr = float(participation_ratio(_randn(5000, p, seed=1)))
        assert pr == pytest.approx(p, rel=0.1)

    def test_rank_one_is_one(self):
        f = _randn(50, 1, seed=2) * _randn(1, 9, seed=3)
        assert float(participation_ratio(f)) == pytest.approx(1.0, abs=1e-9)
        assert float(_feed(ParticipationRatio(), (f,))) == pytest.approx(1.0, abs=1e-9)

    def test_rotation_invariant_and_gram_path(self):
        f = _randn(60, 10, seed=4) * torch.linspace(0.1, 2.0, 10, dtype=F64)
        base = participation_ratio(f)
        assert _close(participation_ratio(f @ _orthogonal(10, 5)), base, 1e-9)
        assert _close(participation_ratio(second_moment(f), is_moment=True), base, 1e-9)
        # n < p: computed from the n x n Gram matrix, same spectrum
        wide = f[:8]
        assert _close(
            participation_ratio(wide), participation_ratio(wide.T @ wide, is_moment=True), 1e-9
        )
        assert 1.0 < float(base) < 10.0

    def test_minibatch_equals_full_batch(self):
        f = _randn(80, 12, seed=6) @ _randn(12, 12, seed=7)
        assert _close(_feed(ParticipationRatio(), (f,)), participation_ratio(f))

    def test_ensemble_input_matches_per_member(self):
        f = _randn(3, 80, 6, seed=8) * torch.tensor([1.0, 0.5, 3.0], dtype=F64).view(3, 1, 1)
        f[1] = f[1] @ torch.diag(torch.tensor([1.0, 0, 0, 1, 0, 0], dtype=F64))
        out = _feed(ParticipationRatio(), (f,))
        assert out.shape == (3,)
        for k in range(3):
            assert _close(out[k], participation_ratio(f[k]))

    def test_set_dtype_keeps_working(self):
        f = _randn(40, 5, seed=9)
        metric = ParticipationRatio()
        metric.set_dtype(torch.float32)
        out = _feed(metric, (f,), (0, 20))
        assert out.dtype == torch.float32
        assert float(out) == pytest.approx(float(participation_ratio(f)), rel=1e-5)


# ----------------------------------------------------------------------------- ENSD


class TestENSD:
    def test_self_equals_participation_ratio(self):
        f = _randn(70, 9, seed=0) * torch.linspace(0.2, 1.5, 9, dtype=F64)
        assert _close(ensd(f, f), participation_ratio(f), 1e-9)
        assert _close(_feed(ENSD(), (f, f)), participation_ratio(f), 1e-9)

    def test_orthogonal_subspaces_give_zero(self):
        n = 40
        basis = _orthogonal(n, 1)
        fa = basis[:, :5] @ _randn(5, 6, seed=2)
        fb = basis[:, 5:12] @ _randn(7, 4, seed=3)
        assert float(ensd(fa, fb)) == pytest.approx(0.0, abs=1e-12)
        assert float(_feed(ENSD(), (fa, fb), (0, 13))) == pytest.approx(0.0, abs=1e-12)

    def test_symmetric_and_different_widths(self):
        fa, fb = _correlated(p=12, q=7)
        ab, ba = ensd(fa, fb), ensd(fb, fa)
        assert _close(ab, ba)
        # bounded by the smaller of the two dimensionalities
        assert (
            0.0 < float(ab) <= min(float(participation_ratio(fa)), float(participation_ratio(fb)))
        )

    def test_matches_covariance_definition(self):
        # ENSD = PR_A PR_B tr(Ĉ_A Ĉ_B) with the trace taken in sample space (Gram matrices)
        fa, fb = _correlated(n=30, p=5, q=8)
        ka, kb = fa @ fa.T, fb @ fb.T
        ka_hat, kb_hat = ka / torch.trace(ka), kb / torch.trace(kb)
        expected = participation_ratio(fa) * participation_ratio(fb) * torch.trace(ka_hat @ kb_hat)
        assert _close(ensd(fa, fb), expected, 1e-9)

    def test_minibatch_equals_full_batch(self):
        fa, fb = _correlated(p=12, q=7)
        assert _close(_feed(ENSD(), (fa, fb)), ensd(fa, fb))

    def test_ensemble_input_matches_per_member(self):
        fa = _randn(4, 60, 5, seed=4)
        fb = torch.tanh(fa @ _randn(5, 9, seed=5)) + 0.2 * _randn(4, 60, 9, seed=6)
        out = _feed(ENSD(), (fa, fb))
        assert out.shape == (4,)
        for k in range(4):
            assert _close(out[k], ensd(fa[k], fb[k]))


def test_cka_of_a_representation_without_variance_is_nan_not_infinite():
    """A dead or collapsed layer (every sample has the same features) has no CKA with anything:
    both the functional core and the accumulated Metric say NaN, not inf."""
    import torch

    from mtl_lab.analysis.representation import LinearCKA, linear_cka

    x = torch.randn(32, 5, dtype=torch.float64)
    flat = torch.ones(32, 3, dtype=torch.float64) * torch.tensor([0.5, 2.0, 0.0],
                                                                 dtype=torch.float64)
    assert torch.isnan(linear_cka(x, flat)) and torch.isnan(linear_cka(flat, x))
    metric = LinearCKA()
    for a, b in zip(x.split(8), flat.split(8), strict=True):
        metric.update(a, b)
    assert torch.isnan(metric.compute())
    assert torch.isfinite(linear_cka(x, x @ torch.randn(5, 4, dtype=torch.float64)))
