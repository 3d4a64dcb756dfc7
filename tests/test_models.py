"""Trunk + heads shapes and the ensemble identities every other piece relies on."""

import pytest
import torch

from mtl_lab.checkpoints import CheckpointError, load_network, save_network, stack_networks
from mtl_lab.models import DiagonalNetwork, ReLUNetwork


@pytest.mark.parametrize("depth,bias", [(1, False), (2, True), (3, False)])
def test_relu_shapes_and_members_are_independent_networks(depth, bias):
    net = ReLUNetwork(4, 7, depth, ("aux", "main"), seeds=[3, 5, 8], bias=bias)
    x = torch.randn(11, 4)
    assert net(x, "aux").shape == (3, 11)
    assert net.features(x).shape == (3, 11, 7)
    assert len(list(net.trunk_parameters())) == depth * (2 if bias else 1)
    # member k of the ensemble is exactly the network built from seed k alone
    alone = ReLUNetwork(4, 7, depth, ("aux", "main"), seeds=[5], bias=bias)
    torch.testing.assert_close(net(x, "main")[1], alone(x, "main")[0])
    # shared inputs and per-member copies of them give the same outputs
    torch.testing.assert_close(net(x.expand(3, 11, 4), "main"), net(x, "main"))
    torch.testing.assert_close(net.features(x.expand(3, 11, 4)), net.features(x))


def test_relu_init_scale_multiplies_he_init():
    big = ReLUNetwork(50, 400, 1, ("main",), seeds=[0], init_scale=1.0)
    small = ReLUNetwork(50, 400, 1, ("main",), seeds=[0], init_scale=1e-3)
    torch.testing.assert_close(small.weights[0], big.weights[0] * 1e-3)
    std = big.weights[0].std().item()
    assert abs(std - (2 / 50) ** 0.5) < 0.02 * (2 / 50) ** 0.5 * 5


def test_relu_forward_matches_the_formula():
    net = ReLUNetwork(3, 5, 2, ("main",), seeds=[1], bias=True)
    with torch.no_grad():
        for b in net.biases:
            b.normal_()
    x = torch.randn(6, 3)
    h = torch.relu(x @ net.weights[0][0].T + net.biases[0][0])
    h = torch.relu(h @ net.weights[1][0].T + net.biases[1][0])
    torch.testing.assert_close(net(x, "main")[0], h @ net.heads["main"][0])


def test_diagonal_beta_and_init():
    net = DiagonalNetwork(6, ("aux", "main"), seeds=[0, 1], alpha=0.3)
    for p in net.parameters():
        assert torch.all(p == 0.3)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    beta = net.w_plus * net.v_plus["main"] - net.w_minus * net.v_minus["main"]
    x = torch.randn(9, 6)
    torch.testing.assert_close(net(x, "main"), beta @ x.T)
    feats = net.features(x)
    assert feats.shape == (2, 9, 12)
    head = torch.cat([net.v_plus["main"], -net.v_minus["main"]], 1)
    torch.testing.assert_close(torch.einsum("knh,kh->kn", feats, head), net(x, "main"))


def test_rescale_trunk_and_fresh_head_per_member():
    net = ReLUNetwork(3, 4, 2, ("aux",), seeds=[0, 1])
    before = [p.clone() for p in net.trunk_parameters()]
    net.rescale_trunk(torch.tensor([0.5, 2.0]))
    for p, p0 in zip(net.trunk_parameters(), before):
        torch.testing.assert_close(p[0], 0.5 * p0[0])
        torch.testing.assert_close(p[1], 2.0 * p0[1])
    net.add_head("main", torch.tensor([1e-3, 1.0]), seeds=[0, 1])
    assert net.tasks == ("aux", "main")
    ratio = net.heads["main"][1].norm() / net.heads["main"][0].norm()
    assert ratio > 100  # γ sets each member's head scale


def test_select_stack_save_load_roundtrip(tmp_path):
    net = ReLUNetwork(3, 4, 1, ("aux", "main"), seeds=[0, 1, 2])
    parts = [net.select_members([k]) for k in (2, 0)]
    stacked = stack_networks(parts)
    x = torch.randn(5, 3)
    torch.testing.assert_close(stacked(x, "main"), net(x, "main")[[2, 0]])
    save_network(stacked, tmp_path / "n.pt", note="hi")
    loaded, extra = load_network(tmp_path / "n.pt")
    assert extra == {"note": "hi"}
    torch.testing.assert_close(loaded(x, "aux"), stacked(x, "aux"))


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt checkpoint .*bad.pt"):
        load_network(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_network(tmp_path / "missing.pt")


def test_bad_inputs_are_rejected():
    net = ReLUNetwork(3, 4, 1, ("main",), seeds=[0, 1])
    with pytest.raises(ValueError, match="3 members"):
        net(torch.randn(3, 5, 3), "main")
    with pytest.raises(ValueError, match="depth"):
        ReLUNetwork(3, 4, 0, ("main",), seeds=[0])
