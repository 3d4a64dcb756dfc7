"""Closed-form gradients of the two paper networks against autograd and finite differences."""

from __future__ import annotations

import pytest
import torch

from mtl_lab.data import make_term
from mtl_lab.engine import FullBatchGD, GDSettings, member_losses, objective
from mtl_lab.engine import closed_form as cf
from mtl_lab.engine.closed_form import closed_form_gradient
from mtl_lab.engine.gd import STATUS_CONVERGED
from mtl_lab.models import DiagonalNetwork, ReLUNetwork

F64 = torch.float64
NS = [20, 20, 9, 4]  # members' sample counts, decreasing as the engine orders them


def _network(kind: str, k: int = len(NS), d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seeds = list(range(k))
    if kind == "diagonal":
        net = DiagonalNetwork(d, ("aux", "main"), seeds, alpha=0.5)
    else:
        net = ReLUNetwork(d, 7, 1, ("aux", "main"), seeds, bias=kind == "relu_bias")
    net = net.to(F64)
    with torch.no_grad():  # away from the symmetric start (and biases away from 0)
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    return net


def _terms(shared: bool, d: int = 5, seed: int = 1, ns=NS, teacher: bool = False):
    """An aux term, a main term and a second main term (several terms of one task); members use
    n_k samples (c = 0 beyond), inputs shared (prefixes of one x) or per member; targets random
    or (``teacher``) from one linear teacher per task."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(max(ns), d, generator=g, dtype=F64)
    teachers = {t: torch.randn(d, generator=g, dtype=F64) / d**0.5 for t in ("aux", "main")}

    def inputs():
        if shared:
            return [x[:n] for n in ns]
        return [torch.randn(n, d, generator=g, dtype=F64) for n in ns]

    terms = []
    for task in ("aux", "main", "main"):
        xs = inputs()
        ys = ([xk @ teachers[task] for xk in xs] if teacher else
              [torch.randn(n, generator=g, dtype=F64) for n in ns])
        coef = torch.rand(len(ns), generator=g, dtype=F64) + 0.1
        terms.append(make_term(task, xs, ys, coef).to("cpu", F64))
    assert (terms[0].x.dim() == 2) == shared
    return terms


def _trainable(net, which: str):
    if which == "all":
        return list(net.parameters())
    if which == "trunk":
        return list(net.trunk_parameters())
    return list(net.head_parameters("main"))


def _autograd(net, terms, params):
    loss = member_losses(net, terms)
    grads = torch.autograd.grad(loss, params, torch.ones_like(loss))
    return loss.detach(), grads


KINDS = ["diagonal", "relu", "relu_bias"]


@pytest.mark.parametrize("banded", [False, True], ids=["one_band", "row_bands"])
@pytest.mark.parametrize("which", ["all", "trunk", "head"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "per_member_x"])
@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_equals_autograd(kind, shared, which, banded, monkeypatch):
    """Loss and gradients in float64, for every trainable subset, padded members and several
    terms; with the default band overhead (one band here) and with a band per distinct n_k."""
    if banded:
        monkeypatch.setattr(cf, "RELU_BAND_OVERHEAD_FLOP", 0.0)
        monkeypatch.setattr(objective, "BAND_OVERHEAD_FLOP", 0.0)
    net, terms = _network(kind), _terms(shared)
    params = _trainable(net, which)
    gradient = closed_form_gradient(net, terms, params)
    assert gradient is not None
    loss, grads = gradient()
    bands = len(terms[0].bands(getattr(gradient, "overhead", None)))
    assert bands == (3 if banded else 1)
    ref_loss, ref_grads = _autograd(net, terms, params)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(params)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)


class _ClosedFormLoss(torch.autograd.Function):
    """L (K,) as a function of the parameters, with the closed form as its backward: member k's
    loss depends on slice k of every parameter only, so ∂(wᵀL)/∂p[k] = w_k ∂L_k/∂p[k]."""

    @staticmethod
    def forward(ctx, gradient, *values):
        loss, grads = gradient()
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, weight):
        grads = ctx.saved_tensors
        return (None, *(g * weight.view(-1, *[1] * (g.dim() - 1)) for g in grads))


@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "per_member_x"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_of_the_closed_form(kind, shared, monkeypatch):
    """torch.autograd.gradcheck: the closed-form gradients against finite differences (row bands
    on, so every band's contribution is checked)."""
    monkeypatch.setattr(cf, "RELU_BAND_OVERHEAD_FLOP", 0.0)
    monkeypatch.setattr(objective, "BAND_OVERHEAD_FLOP", 0.0)
    net, terms = _network(kind, seed=3), _terms(shared, seed=4)
    params = list(net.parameters())
    gradient = closed_form_gradient(net, terms, params)

    def loss_of(*values):
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        return _ClosedFormLoss.apply(gradient, *values)

    values = [p.detach().clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(loss_of, values, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "per_member_x"])
@pytest.mark.parametrize("bias", [False, True])
def test_relu_kink_takes_autograds_subgradient(shared, bias):
    """At a pre-activation of exactly 0 the mask is 0 (relu'(0) = 0, autograd's choice): zero
    inputs without bias, and units whose bias is 0 on a zero input."""
    net = _network("relu_bias" if bias else "relu")
    terms = _terms(shared)
    with torch.no_grad():
        for term in terms:  # some samples are exactly zero: W x + b = b there
            if term.x.dim() == 2:
                term.x[::3] = 0.0
            else:
                term.x[:, ::3] = 0.0
        if bias:
            net.biases[0][:, ::2] = 0.0  # those units sit exactly at the kink
    params = list(net.parameters())
    loss, grads = closed_form_gradient(net, terms, params)()
    ref_loss, ref_grads = _autograd(net, terms, params)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-11, atol=1e-12)


def test_frozen_trunk_features_are_reused_until_the_trunk_changes():
    net, terms = _network("relu_bias"), _terms(True)
    params = list(net.head_parameters("main"))
    gradient = closed_form_gradient(net, terms, params)
    gradient()
    cached = gradient._features
    gradient()
    assert gradient._features is cached  # nothing in the trunk changed: no recomputation
    net.rescale_trunk(torch.full((len(NS),), 0.5, dtype=F64))  # in place: the cache is stale
    loss, grads = gradient()
    assert gradient._features is not cached
    ref_loss, ref_grads = _autograd(net, terms, params)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-11, atol=1e-12)


def test_only_the_paper_networks_qualify():
    terms = _terms(True)
    diagonal, relu = _network("diagonal"), _network("relu_bias")
    assert closed_form_gradient(diagonal, terms, list(diagonal.parameters())) is not None
    assert closed_form_gradient(relu, terms, list(relu.parameters())) is not None
    deep = ReLUNetwork(5, 7, 2, ("aux", "main"), list(range(len(NS)))).to(F64)
    assert closed_form_gradient(deep, terms, list(deep.parameters())) is None

    class Scaled(DiagonalNetwork):  # a subclass may change what forward computes
        def forward(self, x, task):
            return 2 * super().forward(x, task)

    sub = Scaled(5, ("aux", "main"), list(range(len(NS)))).to(F64)
    assert closed_form_gradient(sub, terms, list(sub.parameters())) is None
    stranger = torch.nn.Parameter(torch.zeros(len(NS), 5, dtype=F64))
    assert closed_form_gradient(diagonal, terms, [diagonal.w_plus, stranger]) is None
    hooked = _network("relu")
    hooked.register_forward_hook(lambda module, args, out: out)
    assert closed_form_gradient(hooked, terms, list(hooked.parameters())) is None
    # ... and the engine keeps autograd for them
    gd = FullBatchGD(deep, terms, list(deep.parameters()), torch.full((len(NS),), 0.01),
                     GDSettings(10, 0.0))
    assert gd._gradient is None
    gd = FullBatchGD(relu, terms, list(relu.parameters()), torch.full((len(NS),), 0.01),
                     GDSettings(10, 0.0))
    assert gd._gradient is not None


def test_relu_row_bands_are_chosen_by_their_cost():
    """Wide trunks split the samples of small-n members off; narrow ones, where a band's fixed
    cost exceeds the work it saves, keep one band."""
    def term(ns):
        x = torch.randn(max(ns), 15)
        return make_term("main", [x[:n] for n in ns], [x[:n, 0] for n in ns],
                         torch.tensor([1.0 / n for n in ns]))

    def bands(width, term):
        net = ReLUNetwork(15, width, 1, ("main",), list(range(len(term.y))))
        return term.bands(closed_form_gradient(net, [term], list(net.parameters())).overhead)

    sweep = term([1024, 1024, 256, 256, 64, 64, 16, 16])
    assert bands(1000, sweep) == [(0, 16, 8), (16, 64, 6), (64, 256, 4), (256, 1024, 2)]
    assert bands(16, sweep) == [(0, 256, 8), (256, 1024, 2)]
    assert bands(16, term([128, 128, 32, 32, 8, 8])) == [(0, 128, 6)]
    assert bands(64, term([1024, 960, 900, 840])) == [(0, 1024, 4)]


def _engine(kind, shared, closed_form, lrs, settings, which="all"):
    net, terms = _network(kind), _terms(shared, teacher=True)
    return FullBatchGD(net, terms, _trainable(net, which), torch.tensor(lrs, dtype=F64),
                       settings, closed_form=closed_form)


@pytest.mark.parametrize("which", ["all", "head"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "per_member_x"])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_trajectory_closed_form_equals_autograd(kind, shared, which, monkeypatch):
    """The same run with the closed form and with autograd (float64): same steps, statuses,
    restarts, loss histories and weights, through stopping, an lr backoff and compaction."""
    monkeypatch.setattr(cf, "RELU_BAND_OVERHEAD_FLOP", 0.0)  # exercise the row bands
    monkeypatch.setattr(objective, "BAND_OVERHEAD_FLOP", 0.0)
    settings = GDSettings(max_steps=600, loss_threshold=1e-3, divergence_limit=1e3)
    lrs = [0.05, 50.0, 0.05, 0.05]  # member 1 diverges and restarts at smaller and smaller lr
    runs = []
    for closed_form in (True, False):
        gd = _engine(kind, shared, closed_form, lrs, settings, which)
        assert (gd._gradient is not None) == closed_form
        gd.run_until_done(chunk=50)
        runs.append(gd)
    a, b = runs
    assert a.state.steps.tolist() == b.state.steps.tolist()
    assert a.state.status.tolist() == b.state.status.tolist()
    assert a.state.restarts.tolist() == b.state.restarts.tolist()
    assert int(a.state.restarts[1]) >= 1
    torch.testing.assert_close(a.state.lr, b.state.lr, rtol=0, atol=0)
    torch.testing.assert_close(a.state.loss, b.state.loss, rtol=1e-11, atol=1e-13)
    for (sa, la), (sb, lb) in zip(a.state.history, b.state.history, strict=True):
        assert sa == sb
        torch.testing.assert_close(la, lb, rtol=1e-11, atol=1e-13, equal_nan=True)
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-11, atol=1e-13)


def test_closed_form_engine_converges_in_float32():
    """The default precision: a depth-1 ReLU member on the closed form reaches the threshold."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = torch.relu(x[:, 0]) - 0.5 * torch.relu(-x[:, 1])
    net = ReLUNetwork(4, 64, 1, ("main",), [0, 1], init_scale=1.0, bias=True)
    term = make_term("main", [x, x[:32]], [y, y[:32]], torch.tensor([1 / 64, 1 / 32]))
    gd = FullBatchGD(net, [term], list(net.parameters()), torch.tensor([0.05, 0.05]),
                     GDSettings(max_steps=20000, loss_threshold=1e-4))
    assert gd._gradient is not None
    gd.run_until_done(chunk=2000)
    assert gd.state.status.tolist() == [STATUS_CONVERGED, STATUS_CONVERGED]
    assert float(member_losses(net, [term]).detach().max()) < 1e-4
