"""Deep trunks for real data: the ResNet trunk, PT+FT rescaling of it, layer-wise measures."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtl_lab.analysis.layers import capture, compare_layers, layer_rows
from mtl_lab.analysis.representation import linear_cka, participation_ratio
from mtl_lab.models.resnet import ResNetTrunk
from mtl_lab.models.vit import ViTTrunk
from mtl_lab.modules import FinetuneModule, MultiTaskModule, TaskSpec


def tiny_resnet(seed: int = 0) -> ResNetTrunk:
    return ResNetTrunk(in_channels=1, widths=(4, 8), blocks=(1, 1), seed=seed)


def test_resnet18_has_the_published_size_and_layout():
    """The CIFAR ResNet-18 trunk: 11 168 832 parameters (the common CIFAR ResNet-18 has
    11 173 962 with its 512×10 linear classifier, 5 130 of them)."""
    trunk = ResNetTrunk()
    assert sum(p.numel() for p in trunk.parameters()) == 11_168_832
    assert trunk.layer_names() == ["stem", "stage1", "stage2", "stage3", "stage4", "pool"]
    assert trunk.feature_dim == 512
    small = ResNetTrunk(widths=(8, 16, 32), blocks=(1, 2, 1), stem="imagenet")
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_resnet_initialisation_is_seeded():
    a, b, c = tiny_resnet(0), tiny_resnet(0), tiny_resnet(1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": (8,), "blocks": (1, 1)}, "same non-zero length"),
    ({"widths": (0, 8), "blocks": (1, 1)}, ">= 1"),
    ({"stem": "vgg"}, "stem must be one of"),
])
def test_resnet_rejects_impossible_layouts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNetTrunk(**kwargs)


def test_resnet_rejects_flat_inputs():
    with pytest.raises(ValueError, match=r"images \(n, C, H, W\)"):
        tiny_resnet()(torch.randn(2, 64))


def test_rescaling_multiplies_every_trunk_parameter_and_leaves_batchnorm_statistics():
    """PT+FT's rescale: every trunk parameter (convolutions, BatchNorm weights and biases) × c;
    BatchNorm running means, variances and batch counts untouched; the new head fresh."""
    pretrained = MultiTaskModule(tiny_resnet(), tasks=[TaskSpec("aux", "cross_entropy", 3)])
    pretrained.train()
    with torch.no_grad():  # running statistics away from their initial values
        pretrained(torch.randn(16, 1, 8, 8) * 3 + 1, "aux")
    c = 0.25
    ft = FinetuneModule.from_pretrained(pretrained, TaskSpec("main", "cross_entropy", 2),
                                        rescale=c)
    before = dict(pretrained.trunk.named_parameters())
    for name, p in ft.trunk.named_parameters():
        torch.testing.assert_close(p, c * before[name], rtol=0, atol=0, msg=name)
    old_buffers = dict(pretrained.trunk.named_buffers())
    assert any("running_mean" in n for n in old_buffers)
    for name, buf in ft.trunk.named_buffers():
        assert torch.equal(buf, old_buffers[name]), name
    assert not any(torch.equal(p, before[n]) for n, p in ft.trunk.named_parameters()
                   if p.abs().sum() > 0)


def test_compare_layers_identities_on_a_network_and_itself():
    net = tiny_resnet()
    x = torch.randn(40, 1, 8, 8)
    layers = net.layer_names()
    out = compare_layers(net, net, [x[:16], x[16:]], layers)
    assert set(out) == set(layers)
    for name, m in out.items():
        assert set(m) == {"pr_a", "pr_b", "ensd", "cka"}
        assert all(v.shape == () for v in m.values())
        torch.testing.assert_close(m["cka"], torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(m["ensd"], m["pr_a"])  # ENSD(F, F) = PR(F)
        assert 1.0 <= float(m["pr_a"]) <= (4 if name in ("stem", "stage1") else 8)


def test_compare_layers_accumulates_minibatches_to_the_full_batch_value():
    a, b = tiny_resnet(0), tiny_resnet(1)
    x = torch.randn(48, 1, 8, 8)
    whole = compare_layers(a, b, [x], ["stage2", "pool"])
    parts = compare_layers(a, b, x.split(10), ["stage2", "pool"])
    for layer in whole:
        for k in whole[layer]:
            torch.testing.assert_close(parts[layer][k], whole[layer][k], rtol=1e-9, atol=1e-12)
    # and the values are the functional core's on the captured features
    a.eval()
    with capture(a, ["pool"]) as feats:
        a(x)
    torch.testing.assert_close(whole["pool"]["pr_a"], participation_ratio(feats["pool"]))
    b.eval()
    with capture(b, ["pool"]) as feats_b:
        b(x)
    torch.testing.assert_close(whole["pool"]["cka"], linear_cka(feats["pool"], feats_b["pool"]))


def test_rescaling_a_homogeneous_trunk_leaves_its_representation_geometry():
    """A bias-free ReLU MLP scaled by c computes c^l·h at layer l: PR, ENSD and CKA between
    the original and the rescaled network are those of the network with itself."""
    net = nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False),
                        nn.ReLU())
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(0.1)
    out = compare_layers(net, scaled, [torch.randn(64, 6)], ["1", "3"])
    for m in out.values():
        torch.testing.assert_close(m["cka"], torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(m["pr_a"], m["pr_b"])
        torch.testing.assert_close(m["ensd"], m["pr_a"])


def test_compare_layers_names_a_missing_layer_and_restores_modes():
    net = tiny_resnet()
    net.train()
    with pytest.raises(KeyError, match="no layer named"):
        compare_layers(net, net, [torch.randn(4, 1, 8, 8)], ["stage9"])
    compare_layers(net, net, [torch.randn(4, 1, 8, 8)], ["pool"])
    assert net.training
    assert not net._forward_hooks and not net.pool._forward_hooks


def test_layer_rows_are_flat_results_columns():
    net = tiny_resnet()
    rows = layer_rows(compare_layers(net, net, [torch.randn(8, 1, 8, 8)], ["pool"]))
    assert set(rows) == {"layer.pool.pr_a", "layer.pool.pr_b", "layer.pool.ensd",
                         "layer.pool.cka"}
    assert all(isinstance(v, float) for v in rows.values())


def test_vit_size_follows_its_layout():
    """Parameters counted from the layout: per block attention 4D² + 4D, MLP 8D² + 5D, two
    LayerNorms 4D; patch embedding C·p²·D + D, class token D, positions (T+1)·D, final norm 2D."""
    d, depth, c, p, side = 192, 6, 3, 4, 32
    tokens = (side // p) ** 2 + 1
    block = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d
    expected = depth * block + (c * p * p * d + d) + d + tokens * d + 2 * d
    trunk = ViTTrunk()
    assert sum(q.numel() for q in trunk.parameters()) == expected
    assert trunk.layer_names()[:2] == ["embed", "blocks.0"] and trunk.feature_dim == d


def test_vit_is_seeded_and_checks_its_inputs():
    a, b = ViTTrunk(image_size=8, patch=4, dim=8, depth=1, heads=2, seed=3), \
        ViTTrunk(image_size=8, patch=4, dim=8, depth=1, heads=2, seed=3)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="not a multiple of patch"):
        ViTTrunk(image_size=10, patch=4)
    with pytest.raises(ValueError, match="not a multiple of heads"):
        ViTTrunk(dim=10, heads=3)
    with pytest.raises(ValueError, match=r"images \(n, C, 8, 8\)"):
        a(torch.randn(2, 3, 16, 16))


def test_compare_layers_reads_token_sequences_per_token_average():
    vit = ViTTrunk(in_channels=1, image_size=8, patch=4, dim=8, depth=2, heads=2)
    out = compare_layers(vit, vit, [torch.randn(20, 1, 8, 8)], vit.layer_names())
    for m in out.values():
        torch.testing.assert_close(m["cka"], torch.tensor(1.0, dtype=torch.float64))
        assert 1.0 <= float(m["pr_a"]) <= 8.0  # at most dim = 8 features per layer
