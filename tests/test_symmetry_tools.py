"""mtl_lab.symmetry: function-preserving rescalings and the count of conservation laws."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.func import jacrev

from mtl_lab.symmetry import (
    MLP,
    Architecture,
    NotAnMLP,
    Rescaling,
    TooLarge,
    balanced_then_c,
    count_laws,
    enorm,
    known_laws,
    lifting,
    neuron_balance,
    path_conditioned,
    path_kernel_diagonal,
)

ARCHS = ["4-6:1", "4-6:1 bias", "3-5-4:2,1", "3-5-4:2,1,3 bias", "2-4-3-5:1,2 bias head_bias"]


@torch.no_grad()
def outputs(trunk, heads, x):
    return {t: h(trunk(x)) for t, h in heads.items()}


def relative_change(before, after):
    return max(float((after[t] - before[t]).norm() / before[t].norm()) for t in before)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["enorm", "path_conditioned"])
def test_rescalings_preserve_every_head(arch, method):
    trunk, heads = Architecture.parse(arch).build(seed=3)
    x = torch.randn(32, trunk[0].in_features, dtype=torch.float64)
    before = outputs(trunk, heads, x)
    h_before = neuron_balance(trunk, heads)
    record = balanced_then_c(trunk, heads, method, 1.0)
    assert relative_change(before, outputs(trunk, heads, x)) < 1e-6
    assert record.converged and any(s.abs().max() > 1e-3 for s in record.log_scales)
    assert not torch.allclose(neuron_balance(trunk, heads), h_before)  # h moved on purpose


def test_rescaling_a_float32_mlp_trunk_keeps_its_function():
    from mtl_lab.modules.trunks import MLPTrunk

    trunk = MLPTrunk(in_dim=5, width=16, depth=3, bias=True, seed=1)
    heads = nn.ModuleDict({"a": nn.Linear(16, 2), "b": nn.Linear(16, 1, bias=False)})
    x = torch.randn(64, 5)
    before = outputs(trunk, heads, x)
    path_conditioned(trunk, heads)
    assert relative_change(before, outputs(trunk, heads, x)) < 1e-5  # float32 rounding only
    assert trunk.layers[0].weight.dtype == torch.float32


def test_the_constant_c_comes_after_the_balancing():
    trunk, heads = Architecture.parse("3-5-4:2 bias").build(seed=0)
    twin_trunk, twin_heads = copy.deepcopy(trunk), copy.deepcopy(heads)
    enorm(twin_trunk, twin_heads)
    record = balanced_then_c(trunk, heads, "enorm", c=0.5)
    assert record.c == 0.5
    for p, q in zip(trunk.parameters(), twin_trunk.parameters(), strict=True):
        assert torch.allclose(p, 0.5 * q)
    for t in heads:  # heads are not multiplied by c
        assert torch.allclose(heads[t].weight, twin_heads[t].weight)


def _objective(trunk, heads, z_total):
    """F(z) recomputed from scratch: n·log Σ g'(rescaled net) − Σ_h d_h z_h, and ∂F/∂z at z."""
    net = MLP.of(trunk, heads)
    g = path_kernel_diagonal(trunk, heads)
    n = sum(t.numel() for t in g)
    total = sum(float(t.sum()) for t in g)
    pieces, grads, linear = iter(g), [], 0.0
    gw, gb = [], []
    for lin in net.layers:
        gw.append(next(pieces))
        gb.append(next(pieces) if lin.bias is not None else torch.zeros(lin.out_features))
    gv = []
    for head in net.heads.values():
        gv.append(next(pieces))
        if head.bias is not None:
            next(pieces)
    for layer, lin in enumerate(net.layers):
        outs = [gw[layer + 1]] if layer + 1 < len(gw) else gv
        n_out = sum(t.shape[0] for t in outs)
        d = n_out - (lin.in_features + (1 if lin.bias is not None else 0))
        linear += d * float(z_total[layer].sum())
        out_mass = sum(t.sum(0) for t in outs)
        in_mass = gw[layer].sum(1) + gb[layer]
        grads.append(n * (out_mass - in_mass) / total - d)
    return n * math.log(total) - linear, torch.cat(grads)


@pytest.mark.parametrize("arch", ["4-6:1", "3-5-4:2,1 bias", "2-4-3-5:1,2 bias head_bias"])
def test_path_conditioning_lowers_f_monotonically_to_a_stationary_point(arch):
    trunk, heads = Architecture.parse(arch).build(seed=1)
    f0, _ = _objective(trunk, heads, [torch.zeros(w) for w in MLP.of(trunk).widths])
    record = path_conditioned(trunk, heads, tol=1e-12, max_sweeps=5000)
    assert record.converged
    assert record.values[0] == pytest.approx(f0, rel=1e-12)
    assert all(b <= a + 1e-9 * abs(a) for a, b in zip(record.values, record.values[1:]))
    assert record.values[-1] < record.values[0]
    assert record.gradient < 1e-8
    # independently: the rescaled network's own diagonal gives the same F and a zero gradient
    z = [2 * s for s in record.log_scales]  # λ = e^{z/2}
    f_end, grad = _objective(trunk, heads, z)
    assert f_end == pytest.approx(record.values[-1], rel=1e-10, abs=1e-9)
    assert float(grad.abs().max()) < 1e-7


@pytest.mark.parametrize("arch", ["15-40:1", "6-30:2,3 bias head_bias"])
def test_one_hidden_layer_is_conditioned_exactly_in_one_sweep(arch):
    """With one hidden layer the whole z is one block, and the block update is its exact
    minimiser: after a single sweep the independently computed gradient of F vanishes."""
    trunk, heads = Architecture.parse(arch).build(seed=3)
    record = path_conditioned(trunk, heads, max_sweeps=1)
    assert record.sweeps == 1
    _, grad = _objective(trunk, heads, [2 * s for s in record.log_scales])
    assert float(grad.abs().max()) < 1e-9
    assert record.values[1] < record.values[0]


@pytest.mark.parametrize("arch", ["3-4:1", "3-4-3:2,1 bias head_bias", "2-3-2-3:1,1 bias"])
def test_one_pass_diagonal_equals_the_explicit_path_kernel_diagonal(arch):
    spec = Architecture.parse(arch)
    trunk, heads = spec.build(seed=2)
    net = MLP.of(trunk, heads)
    assert net.architecture() == spec
    theta = net.flat()
    jac = jacrev(lifting(spec))(theta)  # (P, D) float64
    assert jac.shape == (spec.n_paths(), spec.n_params)
    explicit = jac.square().sum(0)  # diag(∂Φᵀ∂Φ)
    one_pass = torch.cat([t.reshape(-1) for t in path_kernel_diagonal(trunk, heads)])
    assert torch.allclose(one_pass, explicit, rtol=1e-12, atol=1e-14)


def test_path_lifting_agrees_with_the_engine_networks():
    from mtl_lab.analysis.symmetry import path_lifting
    from mtl_lab.models import ReLUNetwork
    from mtl_lab.modules.trunks import network_parts

    engine = ReLUNetwork(3, 4, 2, ("aux", "main"), seeds=[5], bias=True).double()
    engine_phi = path_lifting(engine, None)
    trunk, heads = network_parts(engine)
    net = MLP.of(trunk, heads)
    ours = lifting(net.architecture())(net.flat())
    assert torch.allclose(ours.abs().sort().values, engine_phi.abs().sort().values)


@pytest.mark.parametrize("arch", ["4-6:1 bias", "3-5-4:2,1", "2-4-3-5:1,2 bias head_bias"])
def test_enorm_balances_every_neuron(arch):
    trunk, heads = Architecture.parse(arch).build(seed=4)
    before = float(MLP.of(trunk, heads).flat().square().sum())
    record = enorm(trunk, heads)
    h = neuron_balance(trunk, heads)
    assert record.converged and h.numel() == sum(MLP.of(trunk).widths)
    assert float(h.abs().max()) < 1e-10
    assert record.values[-1] <= before and record.gradient < 1e-10


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def forward(self, x):
        return x + self.layers(x)


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.block = Residual()


@pytest.mark.parametrize("trunk", [
    ResNetish(),
    nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
    nn.Sequential(nn.Linear(3, 4), nn.Tanh()),
    nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.ReLU()),
    nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 4), nn.ReLU()),
], ids=["resnet", "conv", "tanh", "batchnorm", "sizes"])
def test_non_mlp_trunks_are_refused_clearly(trunk):
    with pytest.raises(NotAnMLP, match="ReLU MLP|alternates|chain"):
        enorm(trunk, None)
    with pytest.raises(TypeError):  # NotAnMLP is a TypeError (and the lab's InputError)
        path_conditioned(trunk, None)


def test_a_wrapper_with_parameters_outside_its_layers_is_refused():
    from mtl_lab.modules.trunks import DiagonalTrunk

    with pytest.raises(NotAnMLP, match="outside its .layers"):
        MLP.of(_Wrapped(), None)
    with pytest.raises(NotAnMLP, match="skip connection"):
        MLP.of(Residual(), None)
    with pytest.raises(NotAnMLP, match="DiagonalTrunk"):
        enorm(DiagonalTrunk(3), None)
    trunk = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with pytest.raises(NotAnMLP, match="must be an nn.Linear"):
        enorm(trunk, {"a": nn.Sequential(nn.Linear(4, 1))})


class _Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.scale = nn.Parameter(torch.ones(1))


def test_rescaling_spec_round_trips_and_serves_as_the_finetune_hook():
    from mtl_lab.modules.finetune import FinetuneModule
    from mtl_lab.modules.multitask import MultiTaskModule

    for text in ["none", "0.5", "enorm", "path_conditioned*0.25"]:
        assert Rescaling.parse(text).name == text
    with pytest.raises(ValueError, match="unknown rescaling"):
        Rescaling.parse("sideways")
    spec = {"class_path": "mtl_lab.modules.trunks.MLPTrunk",
            "init_args": {"in_dim": 4, "width": 8, "depth": 2, "bias": True}}
    pretrained = MultiTaskModule(spec, ["aux", "main"])
    x = torch.randn(16, 4)
    features = pretrained.trunk(x)
    # the trunk alone (a plain callable hook): the last hidden layer has nothing to absorb
    # 1/λ, so it is left alone and the features are preserved
    trunk_only = copy.deepcopy(pretrained.trunk)
    Rescaling("path_conditioned")(trunk_only)
    assert torch.allclose(trunk_only(x), features, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(trunk_only.layers[0].weight, pretrained.trunk.layers[0].weight)
    # from_pretrained passes the pretrained heads (uses_heads): the old heads absorb the last
    # layer's 1/λ, so heads·features is kept and the fresh head sees rescaled features
    ft = FinetuneModule.from_pretrained(pretrained, "new", rescale=Rescaling("path_conditioned"))
    assert "Rescaling('path_conditioned')" in ft.hparams["rescale"]
    assert not torch.allclose(ft.trunk(x), features, rtol=1e-5, atol=1e-6)
    reloaded = FinetuneModule(spec, "new", rescale=ft.hparams["rescale"])  # as a checkpoint
    assert reloaded.hparams["rescale"] == ft.hparams["rescale"]  # reload does: by its name
    trunk, heads = copy.deepcopy(pretrained.trunk), copy.deepcopy(pretrained.heads)
    record = Rescaling("enorm", c=1.0)(trunk, heads)
    assert record.log_scales[-1].abs().max() > 0
    for t in heads:
        assert torch.allclose(heads[t](trunk(x)), pretrained.heads[t](features), rtol=1e-4,
                              atol=1e-5)


# conservation laws


@pytest.mark.parametrize("arch, laws", [
    ("3-4:1", 4), ("3-4:1 bias", 4), ("2-5:1 bias", 5),  # two-layer ReLU: one per neuron
    ("3-4:2,1", 4), ("2-3:1,1,2 bias", 3),  # several heads: the trunk's neurons
    ("3-3-3:1", 6), ("2-3-2:2,1 bias", 5),  # three layers: still one per neuron
])
def test_relu_networks_have_one_law_per_hidden_neuron(arch, laws):
    result = count_laws(arch)
    assert result.laws == laws == known_laws(result.arch).count == result.known_rank
    assert result.closed and result.known_residual < 1e-10
    assert result.dims[0] == result.dims[-1]  # brackets add nothing for ReLU
    assert result.dropped_max < 1e-12 < 1e-4 < result.kept_min  # an unambiguous margin


@pytest.mark.parametrize("arch, r", [("3-1:3", 1), ("3-2:3", 2), ("4-3:3", 3), ("2-2:2", 2)])
def test_two_layer_linear_networks_have_r_r_plus_one_over_two_laws(arch, r):
    result = count_laws(Architecture.parse(arch, activation="linear"))
    assert result.laws == r * (r + 1) // 2 == result.known_rank
    assert result.closed and result.known_residual < 1e-10
    if r > 1:
        assert result.dims[-1] > result.dims[0]  # the brackets matter here


def test_deeper_linear_and_biased_linear_counts():
    assert count_laws("3-2-2:3 linear").laws == 6
    assert count_laws("2-2:2 linear bias").laws == 3


def test_the_size_limit_is_explicit():
    with pytest.raises(TooLarge, match="D ≤ 256"):
        count_laws("20-20:1")
    with pytest.raises(TooLarge, match="P ≤ 50"):
        count_laws("3-4-4:2", max_coordinates=50)


def test_architecture_text():
    arch = Architecture.parse("15-8-8:2,1 bias")
    assert (arch.in_dim, arch.widths, arch.heads, arch.bias) == (15, (8, 8), (2, 1), True)
    assert Architecture.parse(str(arch)) == arch
    assert Architecture.parse("3-2").heads == (1,)
    for bad in ["15", "a-2:1", "3-2:1 sideways", "3-0:1"]:
        with pytest.raises(ValueError):
            Architecture.parse(bad)
    for text in ["3-4:1", "3-4-2:2,1 bias head_bias", "2-3-2-3:1 bias"]:
        spec = Architecture.parse(text)
        assert spec.paths().shape[0] == spec.n_paths()


def test_the_constant_alone_works_on_any_trunk():
    from mtl_lab.modules.trunks import DiagonalTrunk

    trunk = DiagonalTrunk(3, alpha=0.2)
    record = Rescaling.parse("0.5")(trunk)
    assert record.method == "none" and record.c == 0.5
    assert torch.allclose(trunk.w_plus.detach(), torch.full((3,), 0.1))


def test_mtl_lab_symmetry_count_prints_the_count_and_refuses_clearly(capsys):
    from mtl_lab.cli import main

    assert main(["symmetry", "count", "3-4:2,1", "--known"]) == 0
    out = capsys.readouterr().out
    assert "4 independent conservation laws" in out and "h[0,3] = ‖in‖² − ‖out‖²" in out
    assert main(["symmetry", "count", "3-x:1"]) == 2
    assert "cannot read the architecture" in capsys.readouterr().err
    assert main(["symmetry", "count", "50-50-50:1"]) == 2
    assert "limited to D ≤ 256" in capsys.readouterr().err


def _write_config(tmp_path, model: dict, task: dict, regimes=("stl", "mtl", "ptft", "ptlp")):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"regimes": list(regimes), "seeds": [0], "n_main": [8],
                                    "task": task, "model": model}))
    return path


RELU_TASK = {"family": "relu_units",
             "params": {"d": 4, "m_aux": 2, "m_main": 1, "n_aux": 16, "correlation": 1.0}}
DIAGONAL_TASK = {"family": "sparse_linear",
                 "params": {"d": 5, "k_aux": 2, "k_main": 2, "n_aux": 16, "overlap": 1}}


def test_a_configs_fits_are_the_networks_its_regimes_train(tmp_path):
    from mtl_lab.config import load_config
    from mtl_lab.symmetry import fits_of

    relu = fits_of(load_config(_write_config(tmp_path, {"width": 3, "depth": 2, "bias": True},
                                             RELU_TASK)))
    assert [(f.label, str(f.arch) if f.arch else None, f.blocks) for f in relu] == [
        ("STL", "4-3-3:1 bias", 1), ("MTL", "4-3-3:1,1 bias", 1),
        ("pretraining", "4-3-3:1 bias", 1), ("PT+FT", "4-3-3:1 bias", 1), ("PT+LP", None, 1)]
    assert "head" in relu[-1].reason
    diagonal = fits_of(load_config(_write_config(tmp_path, {"kind": "diagonal"}, DIAGONAL_TASK)))
    assert {(str(f.arch), f.blocks) for f in diagonal if f.arch} == {
        ("1-1:1 linear", 10), ("1-1:1,1 linear", 10)}  # 2d chains w → (v^t)_t, d = 5
    # one law per chain (w² − Σ_t (v^t)²): the diagonal network has 2d in all
    assert {count_laws(f.arch).laws * f.blocks for f in diagonal if f.arch} == {10}


def test_symmetry_count_of_a_config_counts_each_fit_or_refuses_clearly(tmp_path, capsys):
    from mtl_lab.cli import main

    small = _write_config(tmp_path, {"width": 3, "bias": True}, RELU_TASK)
    assert main(["symmetry", "count", str(small)]) == 0
    out = capsys.readouterr().out
    assert out.count("3 independent conservation laws") == 4  # STL, MTL, pretraining, PT+FT
    assert "PT+LP: trains only its head" in out
    assert main(["symmetry", "count", str(small), "--bias"]) == 2
    assert "--bias and --linear describe an ARCH" in capsys.readouterr().err
    # the lab's default width: every fit refused, with its closed form, and exit 2
    wide = _write_config(tmp_path, {"width": 64}, RELU_TASK, regimes=("stl",))
    assert main(["symmetry", "count", str(wide)]) == 2
    captured = capsys.readouterr()
    assert "STL: not counted" in captured.out and "closed form: 64 laws" in captured.out
    assert "too large for the exact count" in captured.err
    assert main(["symmetry", "count", str(small), "--max-params", "17"]) == 2  # D = 18
    assert "limited to D ≤ 17" in capsys.readouterr().out
    sweep = Path(__file__).parents[1] / "configs" / "experiments" / "digits_split.yaml"
    deep = tmp_path / "deep.yaml"  # the sweep's base: a ResNet on digits
    deep.write_text(yaml.safe_dump(yaml.safe_load(sweep.read_text())["base"]))
    assert main(["symmetry", "count", str(deep)]) == 2
    assert "model.kind 'resnet'" in capsys.readouterr().err
    assert main(["symmetry", "count", str(tmp_path / "missing.yaml")]) == 2


def test_rescaling_benchmark_agrees_with_the_plain_algorithm_and_fails_when_empty(capsys):
    """benchmarks/rescaling.py: the neuron-by-neuron plain algorithm and the library's
    layer-block solver reach the same F; an empty comparison is a failure."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from rescaling import main as benchmark

    assert benchmark(["--arch", "4-6-5:1,2 bias", "3-7:2"]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    assert benchmark(["--arch"]) == 1
    assert "nothing compared" in capsys.readouterr().out


def _random_batchnorm(trunk: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2.8 + 0.2)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return trunk


def _both_modes(trunk: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs in evaluation and in training mode, on copies (training mode would move the
    running statistics)."""
    with torch.no_grad():
        return copy.deepcopy(trunk).eval()(x), copy.deepcopy(trunk).train()(x)


def test_resnet_enorm_balances_every_block_channel_and_keeps_the_function():
    from mtl_lab.models.resnet import ResNetTrunk
    from mtl_lab.symmetry.channels import channel_balance, channel_interfaces

    trunk = _random_batchnorm(ResNetTrunk(widths=(4, 8), blocks=(2, 1), seed=0))
    assert [f.name for f in channel_interfaces(trunk)] == ["stage1.0", "stage1.1", "stage2.0"]
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = _both_modes(trunk, x)
    h0 = channel_balance(trunk)
    assert h0.numel() == 4 + 4 + 8 and float(h0.abs().max()) > 0.5
    record = Rescaling("enorm")(trunk, None)
    assert record.method == "enorm" and record.values[1] < record.values[0]
    assert float(channel_balance(trunk).abs().max()) < 1e-5 * float(h0.abs().max())
    for old, new in zip(before, _both_modes(trunk, x), strict=True):
        assert torch.allclose(new, old, rtol=1e-5, atol=1e-6)
    with pytest.raises(NotAnMLP, match="path"):
        Rescaling("path_conditioned")(trunk, None)


def test_channel_enorm_refuses_a_block_it_would_change_and_restores_it():
    from mtl_lab.symmetry.channels import channel_enorm

    class NotReLU(nn.Module):  # bn1 → conv2 through tanh: not positively homogeneous
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv2(torch.tanh(self.bn1(self.conv1(x))))

    block = _random_batchnorm(NotReLU())
    state = {k: v.clone() for k, v in block.state_dict().items()}
    with pytest.raises(NotAnMLP, match="changed the output"):
        channel_enorm(block)
    assert all(torch.equal(v, state[k]) for k, v in block.state_dict().items())
    assert block.training  # its mode restored too
    with pytest.raises(NotAnMLP, match="no BatchNorm"):
        channel_enorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_symmetry_count_of_a_sweep_file_counts_each_distinct_network_once(tmp_path, capsys):
    from mtl_lab.cli import main

    sweep = tmp_path / "widths.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "widths", "axes": {"model.width": [2, 3]},
        "base": {"regimes": ["stl", "ptft"], "seeds": [0, 1], "n_main": [8, 16],
                 "task": RELU_TASK, "model": {"width": 2}}}))
    assert main(["symmetry", "count", str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    # per width: STL, the shared pretraining, PT+FT (seeds and n_main do not make new networks)
    assert [line.split(":")[0] for line in out] == ["STL", "pretraining", "PT+FT"] * 2
    assert sum("4-2:1: " in line and "2 independent" in line for line in out) == 3
    assert sum("4-3:1: " in line and "3 independent" in line for line in out) == 3
