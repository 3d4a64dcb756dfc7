"""The multi-task loss weightings of mtl_lab.engine.weighting: hand-computed objectives, the
registry and its errors, the learned uncertainty weights, PCGrad's gradient surgery and a short
training loop with every built-in."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtl_lab.engine.weighting import WEIGHTINGS, Weighting, make_weighting, register_weighting

BUILTINS = ["equal", "fixed", "pcgrad", "per_sample", "uncertainty"]


def t(value: float) -> torch.Tensor:
    return torch.tensor(value)


# --------------------------------------------------------------------------- loss weightings


def test_per_sample_equal_and_fixed_give_hand_computed_objectives():
    losses, counts = {"a": t(1.0), "b": t(3.0)}, {"a": 1, "b": 3}
    per_sample = make_weighting("per_sample", ["a", "b"])
    assert per_sample(losses, counts).item() == pytest.approx((1 * 1.0 + 3 * 3.0) / 4)  # 2.5
    assert per_sample.weights() == pytest.approx({"a": 0.25, "b": 0.75})
    equal = make_weighting("equal", ["a", "b"])
    assert equal(losses, counts).item() == pytest.approx(2.0)
    fixed = make_weighting("fixed", ["a", "b"], weights={"a": 0.25, "b": 2.0})
    assert fixed(losses, counts).item() == pytest.approx(0.25 * 1.0 + 2.0 * 3.0)  # 6.25
    assert fixed.weights() == {"a": 0.25, "b": 2.0}


def test_tasks_absent_from_a_batch_are_left_out():
    losses, counts = {"b": t(3.0)}, {"b": 5}
    assert make_weighting("equal", ["a", "b"])(losses, counts).item() == pytest.approx(3.0)
    assert make_weighting("per_sample", ["a", "b"])(losses, counts).item() == pytest.approx(3.0)
    fixed = make_weighting("fixed", ["a", "b"], weights={"a": 0.5, "b": 2.0})
    assert fixed(losses, counts).item() == pytest.approx(6.0)


def test_loss_weightings_backpropagate_their_weights():
    x = torch.tensor([2.0, 5.0], requires_grad=True)
    losses, counts = {"a": x[0] ** 2, "b": 3 * x[1]}, {"a": 1, "b": 3}
    objective = make_weighting("per_sample", ["a", "b"]).backward(losses, counts, [x])
    assert not objective.requires_grad
    assert objective.item() == pytest.approx((4.0 + 3 * 15.0) / 4)
    # d/dx0 of ¼ x0² = x0/2 = 1; d/dx1 of ¾ · 3 x1 = 9/4
    assert x.grad.tolist() == pytest.approx([1.0, 2.25])


def test_bad_batches_are_clear_errors():
    w = make_weighting("equal", ["a", "b"])
    with pytest.raises(ValueError, match="unknown task"):
        w({"c": t(1.0)}, {"c": 1})
    with pytest.raises(ValueError, match="different tasks"):
        w({"a": t(1.0)}, {"b": 1})
    with pytest.raises(ValueError, match="at least one task"):
        w({}, {})
    with pytest.raises(ValueError, match="positive sample count"):
        w({"a": t(1.0)}, {"a": 0})


# --------------------------------------------------------------------------- registry and options


def test_unknown_weighting_names_the_choices():
    with pytest.raises(ValueError) as info:
        make_weighting("bogus", ["a", "b"])
    message = str(info.value)
    assert "'bogus'" in message
    assert ", ".join(sorted(WEIGHTINGS)) in message
    for name in BUILTINS:
        assert name in message


def test_fixed_needs_one_positive_weight_per_task():
    with pytest.raises(ValueError, match=r"lacks a weight for task\(s\) \['b'\]"):
        make_weighting("fixed", ["a", "b"], weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['c'\]"):
        make_weighting("fixed", ["a", "b"], weights={"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="positive"):
        make_weighting("fixed", ["a", "b"], weights={"a": 1.0, "b": 0.0})
    with pytest.raises(ValueError, match="needs the option weights"):
        make_weighting("fixed", ["a", "b"])


def test_invalid_options_and_tasks_are_value_errors():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['wieghts'\]"):
        make_weighting("fixed", ["a", "b"], wieghts={"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['weights'\]"):
        make_weighting("equal", ["a", "b"], weights={"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="form"):
        make_weighting("uncertainty", ["a", "b"], form="gaussian")
    with pytest.raises(ValueError, match="base"):
        make_weighting("pcgrad", ["a", "b"], base="mean")
    with pytest.raises(ValueError, match="seed"):
        make_weighting("pcgrad", ["a", "b"], seed=1.5)
    with pytest.raises(ValueError, match="distinct"):
        make_weighting("equal", ["a", "a"])
    with pytest.raises(ValueError, match="sequence of task names"):
        make_weighting("equal", "ab")


def test_user_registered_weighting_is_found_by_make_weighting():
    @register_weighting("test_worst_task")
    class WorstTask(Weighting):
        """max_t L_t."""

        def __init__(self, tasks, *, margin: float = 0.0):
            super().__init__(tasks)
            self.margin = margin

        def forward(self, losses, counts):
            tasks = self.present(losses, counts)
            return torch.stack([losses[t] for t in tasks]).max() + self.margin

    try:
        assert WEIGHTINGS["test_worst_task"] is WorstTask
        w = make_weighting("test_worst_task", ["a", "b"], margin=0.5)
        assert isinstance(w, WorstTask) and w.name == "test_worst_task"
        assert w({"a": t(1.0), "b": t(3.0)}, {"a": 1, "b": 3}).item() == pytest.approx(3.5)
        with pytest.raises(ValueError, match="margn"):
            make_weighting("test_worst_task", ["a", "b"], margn=0.5)
        with pytest.raises(ValueError, match="already registered"):
            register_weighting("test_worst_task")(type("Other", (Weighting,), {}))
        with pytest.raises(ValueError, match="already registered"):
            register_weighting("per_sample")(type("Other", (Weighting,), {}))
    finally:
        WEIGHTINGS.pop("test_worst_task", None)
    assert "test_worst_task" not in WEIGHTINGS


# --------------------------------------------------------------------------- uncertainty


@pytest.mark.parametrize(("form", "optimum"), [("regression", math.log),
                                               ("classification", lambda L: math.log(2 * L))])
def test_uncertainty_learns_log_variances_of_constant_losses(form, optimum):
    clean, noisy = 0.01, 1.0
    w = make_weighting("uncertainty", ["a", "b"], form=form)
    assert w.log_variances() == {"a": 0.0, "b": 0.0}  # initialised at s_t = 0
    optimizer = torch.optim.Adam(w.parameters(), lr=0.05)
    for _ in range(1500):
        optimizer.zero_grad()
        w({"a": t(clean), "b": t(noisy)}, {"a": 10, "b": 10}).backward()
        optimizer.step()
    s = w.log_variances()
    # the optimum of ½e^{−s}L + ½s is s = log L (of e^{−s}L + ½s: s = log 2L)
    assert s["a"] == pytest.approx(optimum(clean), abs=0.02)
    assert s["b"] == pytest.approx(optimum(noisy), abs=0.02)
    weights = w.weights()
    scale = 0.5 if form == "regression" else 1.0
    assert weights["a"] == pytest.approx(scale * math.exp(-s["a"]), rel=1e-6)
    assert weights["b"] < weights["a"]


def test_uncertainty_downweights_the_noisier_regression():
    """Two separate linear regressions, label noise σ_a = 0.1 and σ_b = 1.0, trained jointly with
    the log-variances: s_t ends at log of the task's loss (≈ log σ_t²)."""
    g = torch.Generator().manual_seed(0)
    n, d = 400, 3
    x = torch.randn(n, d, generator=g)
    beta = torch.tensor([1.0, -2.0, 0.5])
    y = {"a": x @ beta + 0.1 * torch.randn(n, generator=g),
         "b": x @ beta + 1.0 * torch.randn(n, generator=g)}
    models = nn.ModuleDict({task: nn.Linear(d, 1) for task in y})
    w = make_weighting("uncertainty", ["a", "b"])
    optimizer = torch.optim.Adam([*models.parameters(), *w.parameters()], lr=0.03)
    for _ in range(1500):
        optimizer.zero_grad()
        losses = {k: ((models[k](x).squeeze(-1) - y[k]) ** 2).mean() for k in y}
        w(losses, {"a": n, "b": n}).backward()
        optimizer.step()
    s = w.log_variances()
    for task in y:
        assert s[task] == pytest.approx(math.log(losses[task].item()), abs=0.1)
    assert s["a"] == pytest.approx(math.log(0.1**2), abs=0.4)
    assert s["b"] == pytest.approx(math.log(1.0**2), abs=0.4)
    assert w.weights()["b"] < w.weights()["a"] / 10


# --------------------------------------------------------------------------- pcgrad


def linear_tasks(g1, g2, theta=(1.0, 2.0)):
    """L_1 = ⟨g1, θ⟩ + 2 h1 and L_2 = ⟨g2, θ⟩ + 3 h2: θ shared, h1 and h2 task-specific."""
    theta = nn.Parameter(torch.tensor(theta))
    h1, h2 = nn.Parameter(torch.tensor(0.0)), nn.Parameter(torch.tensor(0.0))
    losses = {"one": torch.dot(torch.tensor(g1), theta) + 2 * h1,
              "two": torch.dot(torch.tensor(g2), theta) + 3 * h2}
    return theta, h1, h2, losses


def test_pcgrad_projects_conflicting_gradients():
    # g1 = (1, 0), g2 = (−1, 1): g1·g2 = −1 < 0, ‖g1‖² = 1, ‖g2‖² = 2
    # g1 − (−1/2) g2 = (0.5, 0.5);  g2 − (−1/1) g1 = (0, 1)
    theta, h1, h2, losses = linear_tasks((1.0, 0.0), (-1.0, 1.0))
    w = make_weighting("pcgrad", ["one", "two"], base="sum")
    assert w.manual_backward
    objective = w.backward(losses, {"one": 1, "two": 3}, [theta])
    assert theta.grad.tolist() == pytest.approx([0.5, 1.5])
    assert h1.grad.item() == pytest.approx(2.0) and h2.grad.item() == pytest.approx(3.0)
    assert objective.item() == pytest.approx(1.0 + 1.0)  # L_1 = 1, L_2 = −1 + 2 = 1
    assert not objective.requires_grad


def test_pcgrad_per_sample_base_scales_and_accumulates():
    # base weights n_t / Σn = ¼ and ¾: ¼ (0.5, 0.5) + ¾ (0, 1) = (0.125, 0.875)
    theta, h1, h2, losses = linear_tasks((1.0, 0.0), (-1.0, 1.0))
    theta.grad = torch.tensor([1.0, -1.0])
    h2.grad = torch.tensor(10.0)
    w = make_weighting("pcgrad", ["one", "two"])
    objective = w.backward(losses, {"one": 1, "two": 3}, [theta])
    assert theta.grad.tolist() == pytest.approx([1.0 + 0.125, -1.0 + 0.875])
    assert h1.grad.item() == pytest.approx(2.0 * 0.25)
    assert h2.grad.item() == pytest.approx(10.0 + 3.0 * 0.75)
    assert objective.item() == pytest.approx(0.25 * 1.0 + 0.75 * 1.0)
    assert w.weights() == pytest.approx({"one": 0.25, "two": 0.75})


def test_pcgrad_leaves_agreeing_gradients_alone():
    # g1 = (1, 0), g2 = (1, 1): g1·g2 = 1 > 0, so the shared gradient is g1 + g2 (× ½ for equal)
    theta, h1, h2, losses = linear_tasks((1.0, 0.0), (1.0, 1.0))
    make_weighting("pcgrad", ["one", "two"], base="equal").backward(
        losses, {"one": 1, "two": 3}, [theta])
    assert theta.grad.tolist() == pytest.approx([1.0, 0.5])
    assert h1.grad.item() == pytest.approx(1.0) and h2.grad.item() == pytest.approx(1.5)


def test_pcgrad_orders_are_seeded():
    def run(seed):
        theta = nn.Parameter(torch.tensor([0.3, -0.2]))
        directions = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-0.5, -1.0]])
        tasks = ["t0", "t1", "t2"]
        w = make_weighting("pcgrad", tasks, base="sum", seed=seed)
        grads = []
        for _ in range(6):
            theta.grad = None
            losses = {k: torch.dot(g, theta) for k, g in zip(tasks, directions)}
            w.backward(losses, dict.fromkeys(tasks, 1), [theta])
            grads.append(theta.grad.clone())
        return torch.stack(grads)

    assert torch.equal(run(3), run(3))
    # with three tasks the visiting order matters: the orders (hence the updates) vary
    assert not torch.allclose(run(3), run(3)[0].expand(6, 2))


# --------------------------------------------------------------------------- training loop


OPTIONS = {"fixed": {"weights": {"a": 1.0, "b": 0.5}}}


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_trains_a_shared_trunk_with_two_heads(name):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 4, generator=g)
    task = torch.arange(96) % 3 == 0  # a third of the samples are task a
    y = torch.where(task, x[:, 0] - x[:, 1], x[:, 0] + 2 * x[:, 2])
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
    heads = nn.ModuleDict({"a": nn.Linear(16, 1), "b": nn.Linear(16, 1)})
    w = make_weighting(name, ["a", "b"], **OPTIONS.get(name, {}))
    optimizer = torch.optim.SGD([*trunk.parameters(), *heads.parameters(), *w.parameters()],
                                lr=0.05)
    index = {"a": task.nonzero().squeeze(1), "b": (~task).nonzero().squeeze(1)}
    counts = {k: len(v) for k, v in index.items()}

    def task_losses():
        features = trunk(x)
        return {k: ((heads[k](features[i]).squeeze(-1) - y[i]) ** 2).mean()
                for k, i in index.items()}

    def total():
        with torch.no_grad():
            return sum(loss.item() for loss in task_losses().values())

    start = total()
    for _ in range(30):
        optimizer.zero_grad()
        if w.manual_backward:
            w.backward(task_losses(), counts, list(trunk.parameters()))
        else:
            w(task_losses(), counts).backward()
        assert all(p.grad is not None for p in [*trunk.parameters(), *heads.parameters()])
        optimizer.step()
    assert total() < 0.7 * start
    assert set(w.weights()) == {"a", "b"}


# --------------------------------------------------------------------------- the engine and configs


def test_config_knows_every_builtin_and_whether_the_engine_runs_it():
    from mtl_lab.config import BUILTIN_WEIGHTINGS

    builtins = {name: cls.static() for name, cls in WEIGHTINGS.items()
                if cls.__module__ == "mtl_lab.engine.weighting"}
    assert builtins == BUILTIN_WEIGHTINGS


def test_config_names_the_weightings_and_sends_learned_ones_to_the_modules():
    from mtl_lab.config import ConfigError, validate_config
    from tests.conftest import tiny_raw

    with pytest.raises(ConfigError, match=r"unknown weighting 'softmax'.*equal, fixed"):
        validate_config(tiny_raw(**{"mtl.weighting": "softmax"}))
    with pytest.raises(ConfigError, match=r"'uncertainty' learns.*MultiTaskModule"):
        validate_config(tiny_raw(**{"mtl.weighting": "uncertainty"}))
    with pytest.raises(ConfigError, match="takes no options"):
        validate_config(tiny_raw(**{"mtl.options": {"x": 1}}))


def test_a_registered_static_weighting_runs_in_the_engine():
    from mtl_lab.config import validate_config
    from mtl_lab.engine import task_weights
    from tests.conftest import tiny_raw

    @register_weighting("main_only_test")
    class MainOnly(Weighting):
        """w_main = 1, w_aux = ``aux`` (a small number)."""

        def __init__(self, tasks, *, aux: float = 0.0):
            super().__init__(tasks)
            self.aux = aux

        def task_weights(self, counts):
            return {t: 1.0 if t == "main" else self.aux for t in counts}

        def forward(self, losses, counts):
            return sum(w * losses[t] for t, w in self.task_weights(counts).items())

    try:
        cfg = validate_config(tiny_raw(**{"mtl.weighting": "main_only_test",
                                          "mtl.options": {"aux": 0.25}}))
        n = {"aux": torch.tensor([4.0]), "main": torch.tensor([2.0])}
        c = task_weights(n, cfg.mtl.weighting, cfg.mtl.engine_options())
        assert c["main"].item() == pytest.approx(1 / 2) and c["aux"].item() == pytest.approx(1 / 16)
    finally:
        del WEIGHTINGS["main_only_test"]
