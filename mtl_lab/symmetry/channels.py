"""Per-channel rescaling of convolutional trunks with BatchNorm: ENorm across BN → ReLU → conv.

**The symmetry.** In a residual block ``conv2(ReLU(BN1(conv1(x))))`` (the lab's
:class:`~mtl_lab.models.resnet.BasicBlock`, torchvision's too), channel c of BN1 can be scaled by
λ_c > 0 — its affine weight and bias γ_c, β_c × λ_c — and conv2's input channel c by 1/λ_c:
BN1's output channel c is then λ_c× larger (in training and in evaluation alike: BN1 normalises
conv1's output, which does not change), ReLU(λu) = λ·ReLU(u), and conv2's output is unchanged.
Gradient flow then conserves

    h_c = γ_c² + β_c² − ‖W2[:, c]‖²     (W2[:, c]: conv2's kernels reading channel c),

the analogue of a ReLU neuron's ‖in‖² − ‖out‖² (SCIENCE.md §6). The channels of the residual
stream (the stem, each block's second BatchNorm, the shortcuts) are *not* rescaled: the skip
connections add them unscaled, so no single channel of them can be rescaled alone.

**ENorm** (:func:`channel_enorm`): λ_c⁴ = ‖W2[:, c]‖² / (γ_c² + β_c²), which sets every h_c = 0
and minimises the squared norm of the block's rescalable parameters. Each (BN1 channel, conv2
input channel) interface owns its parameters, so a single pass is the exact minimiser.

Blocks are found by shape (:func:`channel_interfaces`: a module with an affine ``BatchNorm2d``
``bn1`` and a ``Conv2d`` ``conv2`` reading as many channels) and the result is checked: the
trunk's output on random images, in evaluation mode, must not move (relative 1e-4 in float32);
otherwise the parameters are restored and :class:`~mtl_lab.symmetry.mlp.NotAnMLP` is raised.
The path-conditioned rescaling needs the path-lifting of a Linear + ReLU chain and is not
defined for BatchNorm trunks.

Example:
    >>> from mtl_lab.models.resnet import ResNetTrunk
    >>> trunk = ResNetTrunk(widths=(4, 8), blocks=(1, 1), seed=0)
    >>> _ = channel_enorm(trunk)
    >>> float(channel_balance(trunk).abs().max()) < 1e-5
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_lab.symmetry.mlp import NotAnMLP

__all__ = ["ChannelInterface", "channel_balance", "channel_enorm", "channel_interfaces"]

CHECK_SIZE = 32  # side of the random images the function check feeds the trunk
CHECK_RTOL = 1e-4


@dataclass(frozen=True)
class ChannelInterface:
    """BN1 → ReLU → conv2 of one block (``name``: the block's module path)."""

    name: str
    bn: nn.BatchNorm2d
    conv: nn.Conv2d

    def norms(self) -> tuple[Tensor, Tensor]:
        """(γ_c² + β_c², ‖W2[:, c]‖²) per channel, float64."""
        incoming = self.bn.weight.detach().double().square() + self.bn.bias.detach().double(
        ).square()
        outgoing = self.conv.weight.detach().double().square().sum(dim=(0, 2, 3))
        return incoming, outgoing


def channel_interfaces(trunk: nn.Module) -> list[ChannelInterface]:
    """Every block of ``trunk`` with an affine ``bn1`` (BatchNorm2d) feeding a ``conv2``
    (Conv2d) of as many input channels, in module order."""
    found = []
    for name, module in trunk.named_modules():
        bn, conv = getattr(module, "bn1", None), getattr(module, "conv2", None)
        if (isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d) and bn.affine
                and conv.in_channels == bn.num_features and conv.groups == 1):
            found.append(ChannelInterface(name, bn, conv))
    return found


@torch.no_grad()
def channel_balance(trunk: nn.Module) -> Tensor:
    """h_c = γ_c² + β_c² − ‖W2[:, c]‖² of every rescalable channel, blocks concatenated."""
    parts = [incoming - outgoing for incoming, outgoing in
             (face.norms() for face in channel_interfaces(trunk))]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _probe(trunk: nn.Module) -> Tensor:
    first = next((m for m in trunk.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise NotAnMLP(f"{type(trunk).__name__} has no convolution: no channel rescaling")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, first.in_channels, CHECK_SIZE, CHECK_SIZE, generator=g)
    return x.to(device=first.weight.device, dtype=first.weight.dtype)


@torch.no_grad()
def channel_enorm(trunk: nn.Module) -> tuple[list[Tensor], float, float, float]:
    """ENorm of every BN1 → ReLU → conv2 interface of ``trunk``, in place (module docstring).

    Returns (log λ per interface, Σ of the rescalable parameters' squares before, after, and
    max_c |h_c| / max_c (γ_c² + β_c² + ‖W2[:, c]‖²) after). Channels with a zero incoming or
    outgoing norm are left alone. Raises :class:`NotAnMLP` when the trunk has no such interface
    or when the rescaling would change its function (the parameters are then restored)."""
    faces = channel_interfaces(trunk)
    if not faces:
        raise NotAnMLP(f"{type(trunk).__name__}: no BatchNorm → ReLU → conv block to rescale per "
                       "channel, and not a Linear + ReLU chain either")
    x = _probe(trunk)
    was_training = trunk.training
    saved = copy.deepcopy(trunk.state_dict())
    trunk.eval()
    try:
        before_out = trunk(x)
        logs, before, after = [], 0.0, 0.0
        for face in faces:
            incoming, outgoing = face.norms()
            before += float((incoming + outgoing).sum())
            ok = (incoming > 0) & (outgoing > 0)
            s = torch.where(ok, 0.25 * (outgoing.log() - incoming.log()),
                            torch.zeros_like(incoming))
            factor = s.exp()
            for p in (face.bn.weight, face.bn.bias):
                p.copy_((p.double() * factor).to(p.dtype))
            w = face.conv.weight
            w.copy_((w.double() / factor[None, :, None, None]).to(w.dtype))
            logs.append(s)
        gap, scale = 0.0, 0.0
        for face in faces:
            incoming, outgoing = face.norms()
            after += float((incoming + outgoing).sum())
            gap = max(gap, float((incoming - outgoing).abs().max()))
            scale = max(scale, float((incoming + outgoing).max()))
        after_out = trunk(x)
        change = float((after_out - before_out).abs().max() / before_out.abs().max().clamp_min(
            1e-12))
        if not change < CHECK_RTOL:
            trunk.load_state_dict(saved)
            raise NotAnMLP(f"{type(trunk).__name__}: rescaling the bn1 → conv2 channels changed "
                           f"the output by {change:.1e} (relative): its blocks do not compute "
                           "conv2(ReLU(bn1(·)))")
    finally:
        trunk.train(was_training)
    return logs, before, after, gap / (scale or 1.0)
