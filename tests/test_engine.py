"""The batched full-batch engine: member independence, stopping, lr backoff, weighting."""

import pytest
import torch

from mtl_lab.data import make_term
from mtl_lab.engine import FullBatchGD, GDSettings, LossTerm, member_losses, task_weights
from mtl_lab.engine.gd import STATUS_BUDGET, STATUS_CONVERGED, STATUS_DIVERGED
from mtl_lab.models import DiagonalNetwork, ReLUNetwork


def _problem(seed=0, n=40, d=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    beta = torch.zeros(d)
    beta[:2] = torch.tensor([1.0, -0.5])
    return x, x @ beta


def _train(net, xs, ys, lrs, settings, chunk=100):
    coef = torch.tensor([1.0 / len(y) for y in ys])
    term = make_term("main", xs, ys, coef)
    gd = FullBatchGD(net, [term], list(net.parameters()), torch.tensor(lrs), settings)
    gd.run_until_done(chunk)
    return gd


@pytest.mark.parametrize("kind", ["diagonal", "relu", "relu_depth1"])
def test_batched_member_equals_training_it_alone(kind):
    """Members differ in seed, n (a prefix of the same inputs), targets and lr. The diagonal
    network and the depth-1 ReLU trunk step on closed-form gradients, depth 2 on autograd."""
    x, y = _problem()
    ns, lrs, seeds = [10, 25, 40], [0.05, 0.1, 0.02], [0, 1, 2]
    ys = [y[:10], -y[:25], 2 * y]

    def make(member_seeds):
        if kind == "diagonal":
            return DiagonalNetwork(6, ("main",), member_seeds, alpha=0.3)
        depth = 2 if kind == "relu" else 1
        return ReLUNetwork(6, 12, depth, ("main",), member_seeds, init_scale=0.7, bias=True)

    settings = GDSettings(max_steps=700, loss_threshold=1e-5)
    batched = _train(make(seeds), [x[:n] for n in ns], ys, lrs, settings)
    assert batched.terms[0].x.dim() == 2  # the prefix inputs were shared, not copied
    assert (batched._gradient is None) == (kind == "relu")
    for k in range(3):
        alone = _train(make([seeds[k]]), [x[: ns[k]]], [ys[k]], [lrs[k]], settings)
        assert int(alone.state.steps[0]) == int(batched.state.steps[k])
        for pa, pb in zip(alone.net.parameters(), batched.net.parameters()):
            torch.testing.assert_close(pa[0], pb[k], rtol=1e-4, atol=1e-6)


def test_stops_at_threshold_or_budget_per_member():
    x, y = _problem()
    net = DiagonalNetwork(6, ("main",), [0, 0], alpha=0.5)
    gd = _train(net, [x, x], [y, y], [0.1, 1e-4], GDSettings(max_steps=500, loss_threshold=1e-6))
    assert gd.state.status.tolist() == [STATUS_CONVERGED, STATUS_BUDGET]
    assert gd.state.loss[0] < 1e-6 <= gd.state.loss[1]
    assert int(gd.state.steps[1]) == 500 and int(gd.state.steps[0]) < 500
    # the converged member's weights are those of the step where it crossed the threshold
    assert float(member_losses(net, gd.terms)[0].detach()) < 1e-6


def test_divergence_restarts_at_lr_over_ten_without_touching_other_members():
    x, y = _problem()
    net = DiagonalNetwork(6, ("main",), [0, 0], alpha=0.5)
    gd = _train(net, [x, x], [y, y], [50.0, 0.1], GDSettings(2000, 1e-6, max_restarts=5))
    restarts = int(gd.state.restarts[0])
    assert restarts >= 2  # lr 50 and 5 blow up; some lr ≤ 0.5 converges
    assert gd.state.lr[0].item() == pytest.approx(50.0 / 10**restarts)
    assert gd.state.status.tolist() == [STATUS_CONVERGED, STATUS_CONVERGED]
    assert int(gd.state.restarts[1]) == 0
    alone = _train(DiagonalNetwork(6, ("main",), [0], alpha=0.5), [x], [y], [0.1],
                   GDSettings(2000, 1e-6))
    torch.testing.assert_close(alone.net.w_plus[0], gd.net.w_plus[1])


def test_member_that_always_diverges_is_reported_and_reset():
    x, y = _problem()
    net = DiagonalNetwork(6, ("main",), [0], alpha=0.5)
    gd = _train(net, [x], [y], [1e6], GDSettings(1000, 1e-6, max_restarts=1))
    assert gd.state.status.tolist() == [STATUS_DIVERGED]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert gd.summary()[0]["status"] == "diverged"


def test_task_weighting_schemes():
    n = {"aux": torch.tensor([100.0]), "main": torch.tensor([20.0])}
    per = task_weights(n, "per_sample")
    assert per["aux"].item() == per["main"].item() == pytest.approx(1 / 120)
    eq = task_weights(n, "equal")
    assert (eq["aux"] * 100).item() == pytest.approx(0.5)
    assert (eq["main"] * 20).item() == pytest.approx(0.5)
    fixed = task_weights(n, "fixed", {"weights": {"aux": 0.2, "main": 0.8}})
    assert (fixed["main"] * 20).item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="per_sample"):
        task_weights(n, "bogus")
    with pytest.raises(ValueError, match="Lightning modules"):
        task_weights(n, "uncertainty")


def test_loss_term_mask_ignores_padding():
    x, y = _problem(n=10)
    net = DiagonalNetwork(6, ("main",), [0, 0], alpha=0.5)
    term = make_term("main", [x[:4], x], [y[:4], y], torch.tensor([0.25, 0.1]))
    assert term.c[0, 4:].abs().sum() == 0
    losses = member_losses(net, [term])
    direct = ((net(x[:4], "main")[0] - y[:4]) ** 2).mean()
    torch.testing.assert_close(losses[0], direct)
    per_member = LossTerm("main", x.expand(2, 10, 6), term.y, term.c)
    torch.testing.assert_close(member_losses(net, [per_member]), losses)


def test_memory_chunked_ensemble_equals_one_ensemble():
    """Sub-ensembles trained one after the other inside one fit give the same members."""
    from mtl_lab.config import validate_config
    from mtl_lab.regimes.base import GroupContext, fit
    from tests.conftest import tiny_raw

    x, y = _problem()
    term = make_term("main", [x[:10], x[:25], x], [y[:10], y[:25], y],
                     torch.tensor([0.1, 0.04, 0.025]))
    out = []
    for budget in (1e-9, 1e9):  # one member at a time / all at once
        cfg = validate_config(tiny_raw(**{"training.max_ensemble_mb": budget,
                                          "training.max_steps": 300}))
        net = ReLUNetwork(6, 12, 1, ("main",), [0, 1, 2], init_scale=0.7)
        trained, summary, history = fit(net, [term], ["trunk", "heads"],
                                        torch.tensor([0.05, 0.1, 0.02]), cfg.training,
                                        GroupContext(cfg, progress=False), "t")
        assert len(summary) == len(history) == 3
        out.append((trained, summary))
    (a, sa), (b, sb) = out
    assert [s["steps"] for s in sa] == [s["steps"] for s in sb]
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_minibatch_adam_recipe_reduces_the_loss(tmp_path):
    from mtl_lab.comparison import run_comparison
    from mtl_lab.config import validate_config
    from tests.conftest import tiny_raw

    cfg = validate_config(tiny_raw(**{"regimes": ["stl", "mtl"], "n_main": [32],
                                      "training": {"mode": "minibatch", "lr": 0.01,
                                                   "batch_size": 16, "epochs": 30}}))
    results = run_comparison(cfg, tmp_path)
    untrained = run_comparison(cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"epochs": 1, "lr": 1e-9})}), tmp_path / "untrained")
    assert (results["train_loss"] < 0.2 * untrained["train_loss"]).all()
    assert (results["steps"] > 0).all()


def test_weighted_squared_error_gradient_matches_autograd():
    from mtl_lab.engine.objective import weighted_squared_error

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y, c = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.rand(3, 7, generator=g,
                                                                             dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: weighted_squared_error(p, y, c), (pred,))
    torch.testing.assert_close(weighted_squared_error(pred, y, c), (c * (pred - y) ** 2).sum(1))


@pytest.mark.parametrize("kind", ["diagonal", "relu_depth1"])
def test_compaction_steps_only_running_members_and_changes_no_result(kind):
    """Once the small-n members converge, later chunks step the others alone (trimmed to the
    samples they use), and every member ends where it would without compaction."""
    x, y = _problem(n=40)
    ns, lrs = [8, 40, 40], [0.1, 0.1, 1e-3]
    settings = GDSettings(max_steps=1500, loss_threshold=1e-6 if kind == "diagonal" else 1e-3)

    def train(compact):
        if kind == "diagonal":
            net = DiagonalNetwork(6, ("main",), [0, 1, 2], alpha=0.5)
        else:
            net = ReLUNetwork(6, 32, 1, ("main",), [0, 1, 2], init_scale=0.7, bias=True)
        term = make_term("main", [x[:n] for n in ns], [y[:n] for n in ns],
                         torch.tensor([1.0 / n for n in ns]))
        gd = FullBatchGD(net, [term], list(net.parameters()), torch.tensor(lrs), settings,
                         compact=compact)
        gd.run_until_done(chunk=100)
        return gd

    full, compacted = train(False), train(True)
    assert compacted.state.status.tolist() == full.state.status.tolist()
    assert compacted.state.steps.tolist() == full.state.steps.tolist()
    assert full.state.status[2] == STATUS_BUDGET  # the slow member outlives the others
    index, sub = compacted._sub
    assert index.tolist() == [2]  # only the member still running was stepped at the end
    assert sub.terms[0].y.shape == (1, 40)
    for pa, pb in zip(full.net.parameters(), compacted.net.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(compacted.state.loss, full.state.loss, rtol=1e-3, atol=1e-9)


def test_member_that_gives_up_early_is_reset_even_after_compaction():
    x, y = _problem()
    net = DiagonalNetwork(6, ("main",), [0, 0], alpha=0.5)
    gd = _train(net, [x, x], [y, y], [1e6, 1e-3], GDSettings(1000, 1e-9, max_restarts=1))
    assert gd.state.status.tolist() == [STATUS_DIVERGED, STATUS_BUDGET]
    assert gd._sub is not None and gd._sub[0].tolist() == [1]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    torch.testing.assert_close(net.w_plus[0], torch.full((6,), 0.5))


def test_row_bands_cover_every_used_sample_with_its_members():
    from mtl_lab.engine.objective import row_bands

    counts = [512, 512, 256, 64, 16, 0]
    for overhead in (0, 1000, 10**9):
        bands = row_bands(counts, overhead)
        assert bands[0][0] == 0 and bands[-1][1] == 512
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))  # contiguous
        for r0, _r1, m in bands:  # every member using a row of the band is among the first m
            assert all(k < m for k, n in enumerate(counts) if n > r0)
    assert len(row_bands(counts, 0)) == 4  # one band per distinct count
    assert row_bands(counts, 10**9) == [(0, 512, 5)]  # never worth splitting


@pytest.mark.parametrize("shared", [True, False])
def test_banded_linear_loss_and_gradient_equal_the_unbanded_ones(shared):
    """The diagonal network's objective by row bands = the plain weighted sum, value and
    gradient, for shared (n, d) and per-member (K, n, d) inputs."""
    from mtl_lab.engine.objective import BandedLinearSquaredError, weighted_squared_error

    g = torch.Generator().manual_seed(3)
    ns = [30, 30, 12, 5]
    x = torch.randn(30, 7, generator=g, dtype=torch.float64)
    xs = [x[:n] for n in ns] if shared else [torch.randn(n, 7, generator=g, dtype=torch.float64)
                                             for n in ns]
    ys = [torch.randn(n, generator=g, dtype=torch.float64) for n in ns]
    term = make_term("main", xs, ys, torch.tensor([1.0 / n for n in ns], dtype=torch.float64))
    term = term.to("cpu", torch.float64)
    assert len(term.bands()) == 1  # tiny d: the default overhead merges everything
    beta = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    plain = weighted_squared_error(_linear_predict(term.x, beta), term.y, term.c)
    banded = BandedLinearSquaredError.apply(beta, term.x, term.y, term.c, [(0, 5, 4), (5, 12, 3),
                                                                           (12, 30, 2)])
    torch.testing.assert_close(banded, plain)
    w = torch.randn(4, dtype=torch.float64, generator=g)
    (ga,) = torch.autograd.grad(plain, beta, w)
    (gb,) = torch.autograd.grad(banded, beta, w)
    torch.testing.assert_close(gb, ga)


def _linear_predict(x, beta):
    return (x @ beta.T).T if x.dim() == 2 else torch.bmm(x, beta.unsqueeze(2)).squeeze(2)
