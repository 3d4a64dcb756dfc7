"""Claims of SCIENCE.md §6 on the lab's networks: rescaling symmetry, conservation laws under GD,
path-lifting and path-norms, and the Lightning monitor of the conservation laws."""

from __future__ import annotations

import copy
import itertools
import math

import lightning as L
import pytest
import torch

from mtl_lab.analysis.symmetry import (
    ConservationMonitor,
    conservation_change,
    conservation_drift,
    conservation_values,
    path_lifting,
    path_norm,
    path_norm_from_lifting,
    rescale_neurons,
    squared_norm,
)
from mtl_lab.data import make_term
from mtl_lab.engine import FullBatchRecipe, TicksDataModule
from mtl_lab.engine.gd import FullBatchGD, GDSettings
from mtl_lab.models import DiagonalNetwork, ReLUNetwork

TASKS = ("aux", "main", "extra")
F64 = torch.float64


def relu_net(depth: int, bias: bool, seeds=(0, 1), width: int = 4, in_dim: int = 3,
             tasks=TASKS, init_scale: float = 1.0) -> ReLUNetwork:
    """A float64 ReLU net; biases (zero at init) are drawn at random so bias paths matter."""
    net = ReLUNetwork(in_dim, width, depth, tasks, list(seeds), bias=bias,
                      init_scale=init_scale).to(F64)
    g = torch.Generator().manual_seed(123 + depth)
    with torch.no_grad():
        for b in net.biases:
            b.copy_(0.5 * torch.randn(b.shape, generator=g, dtype=F64))
    return net


def diagonal_net(seeds=(0, 1), in_dim: int = 5, tasks=("aux", "main")) -> DiagonalNetwork:
    """A float64 diagonal net with random (not constant) weights."""
    net = DiagonalNetwork(in_dim, tasks, list(seeds), alpha=0.5).to(F64)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return net


def random_rescaling(net: ReLUNetwork, seed: int) -> None:
    """Every hidden neuron rescaled by its own log-uniform λ ∈ [0.1, 10]."""
    g = torch.Generator().manual_seed(seed)
    k, width = net.ensemble_size, net.width
    for layer in range(len(net.weights)):
        lam = 10.0 ** (2 * torch.rand(k, width, generator=g, dtype=F64) - 1)
        rescale_neurons(net, layer, lam)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


# ----------------------------------------------------------------------------- path-lifting


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_lifting_lists_the_path_products_and_determines_the_function(depth, bias):
    """Φ in the documented order, checked against a brute-force loop over paths; and
    f_t(x) = Σ_p Φ_p · (x_i or 1 for a bias path) · [every neuron on p is active]."""
    net = relu_net(depth, bias, seeds=(3, 4), width=3, in_dim=2)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    width, in_dim = 3, 2
    for k in range(2):
        ws = [w[k] for w in net.weights]
        bs = [b[k] for b in net.biases]
        active = []  # per sample, per layer: the ReLU's on/off pattern
        h = x
        for layer, w in enumerate(ws):
            z = h @ w.T + (bs[layer] if bias else 0.0)
            active.append(z > 0)
            h = torch.relu(z)
        for task in TASKS:
            v = net.heads[task][k]
            phi = path_lifting(net, task, member=k)
            expected, on = [], []
            for i, *js in itertools.product(range(in_dim), *[range(width)] * depth):
                prod = ws[0][js[0], i] * v[js[-1]]
                for layer in range(1, depth):
                    prod = prod * ws[layer][js[layer], js[layer - 1]]
                expected.append(prod)
                gate = torch.stack([active[m][:, js[m]] for m in range(depth)]).all(0)
                on.append(gate.to(F64) * x[:, i])
            if bias:
                for start in range(depth):
                    for js in itertools.product(*[range(width)] * (depth - start)):
                        prod = bs[start][js[0]] * v[js[-1]]
                        for m in range(1, depth - start):
                            prod = prod * ws[start + m][js[m], js[m - 1]]
                        expected.append(prod)
                        gate = torch.stack([active[start + m][:, js[m]]
                                            for m in range(depth - start)]).all(0)
                        on.append(gate.to(F64))
            assert phi.shape == (len(expected),)
            torch.testing.assert_close(phi, torch.stack(expected), rtol=1e-12, atol=0)
            f_from_phi = (torch.stack(on, dim=1) * phi).sum(1)
            torch.testing.assert_close(f_from_phi, net(x, task)[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("q", [1.0, 2.0])
def test_one_pass_path_norm_equals_norm_of_lifting(depth, bias, q):
    net = relu_net(depth, bias)
    for task in (*TASKS, None):
        one_pass = path_norm(net, q=q, task=task)
        assert one_pass.shape == (2,)
        for k in range(2):
            from_phi = path_norm_from_lifting(path_lifting(net, task, member=k), q)
            assert rel(one_pass[k], from_phi) < 1e-6
    # task=None: all heads are the outputs of one network, ‖Φ‖_q^q = Σ_t ‖Φ_t‖_q^q
    per_head = sum(path_norm(net, q, t) ** q for t in TASKS)
    assert rel(path_norm(net, q) ** q, per_head) < 1e-10


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_rescaling_preserves_function_lifting_and_path_norms_but_not_h(depth, bias):
    net = relu_net(depth, bias)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    outputs = {t: net(x, t) for t in TASKS}
    norms = {(q, t): path_norm(net, q, t) for q in (1.0, 2.0) for t in (*TASKS, None)}
    phis = [path_lifting(net, None, member=k) for k in range(2)]
    h_before = conservation_values(net)
    random_rescaling(net, seed=depth + 10 * bias)
    for t in TASKS:
        torch.testing.assert_close(net(x, t), outputs[t], rtol=1e-9, atol=1e-12)
    for key, value in norms.items():
        assert rel(path_norm(net, *key), value) < 1e-6
        assert rel(path_norm_from_lifting(path_lifting(net, key[1], 0), key[0]), value[0]) < 1e-6
    for k in range(2):  # Φ is invariant coordinate by coordinate
        torch.testing.assert_close(path_lifting(net, None, member=k), phis[k], rtol=1e-9,
                                   atol=1e-12)
    assert float(conservation_drift(h_before, conservation_values(net)).min()) > 0.1


def test_rescale_neurons_checks_its_arguments():
    net = relu_net(2, True)
    with pytest.raises(ValueError, match="positive"):
        rescale_neurons(net, 0, torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        rescale_neurons(net, 1, torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="layer"):
        rescale_neurons(net, 2, torch.ones(2, 4, dtype=F64))


def test_diagonal_path_norm_is_sum_of_branch_products():
    net = diagonal_net()
    for task in ("aux", "main"):
        wp, wm = net.w_plus, net.w_minus
        expected = (wp * net.v_plus[task]).abs().sum(1) + (wm * net.v_minus[task]).abs().sum(1)
        assert rel(path_norm(net, 1.0, task), expected) < 1e-12
        for q in (1.0, 2.0):
            for k in range(2):
                phi = path_lifting(net, task, member=k)
                assert rel(path_norm(net, q, task)[k], path_norm_from_lifting(phi, q)) < 1e-12
    both = path_norm(net, 1.0, "aux") + path_norm(net, 1.0, "main")
    assert rel(path_norm(net, 1.0), both) < 1e-12


def test_diagonal_conservation_values_formula():
    net = diagonal_net()
    h = conservation_values(net)
    plus = net.w_plus**2 - net.v_plus["aux"] ** 2 - net.v_plus["main"] ** 2
    minus = net.w_minus**2 - net.v_minus["aux"] ** 2 - net.v_minus["main"] ** 2
    torch.testing.assert_close(h["plus"], plus)
    torch.testing.assert_close(h["minus"], minus)


# ----------------------------------------------------------------------------- conservation


def teacher_terms(net, k: int, n: int = 24, in_dim: int = 3):
    """A two-task regression (a ReLU teacher for 'aux', a linear one for 'main'), float64."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, in_dim, generator=g, dtype=F64)
    y_aux = torch.relu(x @ torch.randn(in_dim, generator=g, dtype=F64))
    y_main = x @ torch.randn(in_dim, generator=g, dtype=F64)
    coef = torch.full((k,), 1.0 / (2 * n))
    return [make_term(t, [x] * k, [y] * k, coef).to("cpu", F64)
            for t, y in (("aux", y_aux), ("main", y_main))]


def gd_engine(net, lrs, steps: int) -> FullBatchGD:
    terms = teacher_terms(net, len(lrs), in_dim=net.w_plus.shape[1] if hasattr(net, "w_plus")
                          else net.weights[0].shape[2])
    settings = GDSettings(max_steps=steps, loss_threshold=0.0)
    return FullBatchGD(net, terms, list(net.parameters()), torch.tensor(lrs, dtype=F64),
                       settings)


def small_relu(seeds) -> ReLUNetwork:
    """Depth 2, biases; members with equal seeds are identical (biases included)."""
    net = relu_net(2, True, seeds=seeds, width=6, tasks=("aux", "main"), init_scale=1.0)
    with torch.no_grad():
        for b in net.biases:
            b.copy_(b[:1].expand_as(b))
    return net


def small_diagonal(seeds) -> DiagonalNetwork:
    net = DiagonalNetwork(3, ("aux", "main"), list(seeds), alpha=0.7).to(F64)
    with torch.no_grad():  # break the symmetric constant start, so h is not zero
        net.w_plus.mul_(torch.tensor([1.0, 1.5, 0.5], dtype=F64))
    return net


@pytest.mark.parametrize("build", [small_relu, small_diagonal], ids=["relu", "diagonal"])
def test_gd_conserves_h_up_to_second_order_in_the_step(build):
    """Three identical members trained with η, 10η, 100η (all stable) for the same steps."""
    net = build([0, 0, 0])
    h0 = conservation_values(net)
    engine = gd_engine(net, [2e-4, 2e-3, 2e-2], steps=300)
    loss0 = engine.step().detach()
    engine.run_until_done(chunk=300)
    loss = engine.state.loss
    assert int(engine.state.restarts.sum()) == 0 and bool(torch.isfinite(loss).all())  # stable
    assert bool((loss < loss0).all())  # and learning
    assert bool(loss[2] < 0.5 * loss0[2])  # the largest step trains for real
    drift = conservation_drift(h0, conservation_values(net))
    assert float(drift[0]) < 1e-3
    assert float(drift[0]) < float(drift[1]) < float(drift[2])


@pytest.mark.parametrize("build", [small_relu, small_diagonal], ids=["relu", "diagonal"])
def test_weight_decay_shrinks_h_by_the_predicted_factor(build):
    """GD plus a decay step θ ← (1 − ηλ)θ: h_T ≈ (1 − ηλ)^{2T} h_0 ≈ e^{−2λ ηT} h_0."""
    net = build([1])
    eta, lam, steps = 1e-3, 1.0, 500
    h0 = conservation_values(net)
    engine = gd_engine(net, [eta], steps=steps + 1)
    for _ in range(steps):
        engine.step()
        with torch.no_grad():
            torch._foreach_mul_(list(net.parameters()), 1.0 - eta * lam)
    factor = (1.0 - eta * lam) ** (2 * steps)
    assert factor < 0.5 and abs(factor - math.exp(-2 * lam * eta * steps)) < 1e-3
    predicted = {key: factor * value for key, value in h0.items()}
    assert float(conservation_drift(predicted, conservation_values(net)).max()) < 0.03
    # without the decay step h would have stayed (the shrinkage is the decay's doing)
    assert float(conservation_drift(h0, conservation_values(net)).max()) > 0.4


# ----------------------------------------------------------------------------- ensembles


@pytest.mark.parametrize("kind", ["relu", "diagonal"])
def test_ensemble_values_equal_members_computed_alone(kind):
    net = relu_net(2, True, seeds=(0, 1, 2)) if kind == "relu" else diagonal_net(seeds=(0, 1, 2))
    tasks = net.tasks
    h = conservation_values(net)
    shifted = {key: value + torch.arange(3, dtype=F64).view(3, 1) for key, value in h.items()}
    drift = conservation_drift(h, shifted)
    for k in range(3):
        alone = net.select_members([k])
        h_alone = conservation_values(alone)
        for key in h:
            torch.testing.assert_close(h[key][k : k + 1], h_alone[key], rtol=0, atol=0)
        shifted_alone = {key: value[k : k + 1] for key, value in shifted.items()}
        torch.testing.assert_close(drift[k : k + 1], conservation_drift(h_alone, shifted_alone))
        for q in (1.0, 2.0):
            for task in (*tasks, None):
                torch.testing.assert_close(path_norm(net, q, task)[k : k + 1],
                                           path_norm(alone, q, task), rtol=1e-12, atol=0)
        for task in (*tasks, None):
            torch.testing.assert_close(path_lifting(net, task, member=k),
                                       path_lifting(alone, task), rtol=0, atol=0)


# ----------------------------------------------------------------------------- monitor


@pytest.mark.parametrize("member_chunk", [None, 1])
def test_monitor_logs_the_drift_of_the_networks_being_trained(member_chunk):
    """With sub-ensembles the engines train copies (``pl_module.net`` stays at init): the
    monitor must follow the engines, members in order, each against its own start."""
    net = small_relu([0, 0])
    h0 = conservation_values(net)
    start = copy.deepcopy(net)
    terms = teacher_terms(net, 2)
    settings = GDSettings(max_steps=200, loss_threshold=0.0)
    recipe = FullBatchRecipe(net, terms, list(net.parameters()),
                             torch.tensor([2e-2, 2e-3], dtype=F64), settings, steps_per_call=50,
                             dtype=F64, member_chunk=member_chunk)
    monitor = ConservationMonitor(every_n=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, max_steps=recipe.ticks(),
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, callbacks=[monitor], log_every_n_steps=1,
                        num_sanity_val_steps=0)
    trainer.fit(recipe, datamodule=TicksDataModule(recipe.ticks()))
    trained = recipe.trained_network()
    expected = conservation_change(h0, conservation_values(trained))
    assert float(expected.min()) > 0  # training moved h a little
    torch.testing.assert_close(monitor.drift, expected)
    logged = trainer.callback_metrics["conservation/max_drift"]
    assert math.isclose(float(logged), float(expected.max()), rel_tol=1e-5)
    relative = trainer.callback_metrics["conservation/max_drift_rel"]
    assert float(relative) < 1e-2  # GD with a small step: the laws hold to 1 % of ‖θ‖²
    assert math.isclose(float(relative), float(
        (expected / torch.maximum(squared_norm(start), squared_norm(trained))).max()), rel_tol=1e-4)
