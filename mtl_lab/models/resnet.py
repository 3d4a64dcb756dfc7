"""A ResNet trunk for real images (He et al. 2016), as used by the paper's deep-network test.

Layout: a stem, four stages of basic blocks (two 3×3 convolutions with BatchNorm, an identity or
1×1-convolution shortcut), global average pooling. ``ResNetTrunk()`` is ResNet-18 for 32×32
inputs (CIFAR stem: one 3×3 convolution, no max-pool; widths 64, 128, 256, 512; two blocks per
stage; 512 features, 11.2 M parameters). ``stem="imagenet"`` gives the 7×7 stride-2 convolution and
max-pool for large images; ``widths`` and ``blocks`` give smaller or deeper members of the family.

The trunk maps images ``(n, C, H, W)`` to pooled features ``(n, feature_dim)``; heads are the
modules' business. Its named children — ``stem``, ``stage1`` … ``stage4``, ``pool`` — are the
layers that the layer-wise analysis hooks. Initialisation is seeded (``seed``): Kaiming-normal
convolutions (fan-out, ReLU gain), BatchNorm weight 1 and bias 0, the last BatchNorm of each block
zero when ``zero_init_residual`` (each block then starts as the identity).

Example:
    >>> trunk = ResNetTrunk(widths=(8, 16), blocks=(1, 1), seed=0)
    >>> trunk(torch.randn(2, 3, 16, 16)).shape, trunk.feature_dim
    (torch.Size([2, 16]), 16)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """y = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)); stride on the first convolution."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """ResNet trunk: stem → stages of :class:`BasicBlock` → global average pool.

    Args:
        in_channels: image channels C (3 for RGB, 1 for grey).
        widths: channels of each stage (stage 1 keeps the resolution, later ones halve it).
        blocks: basic blocks per stage (ResNet-18: 2, 2, 2, 2).
        stem: ``"cifar"`` (3×3 convolution, stride 1) or ``"imagenet"`` (7×7 stride 2 + max-pool).
        zero_init_residual: start each block's last BatchNorm weight at 0.
        seed: seed of the initial weights.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2), stem: str = "cifar",
                 zero_init_residual: bool = False, seed: int = 0) -> None:
        super().__init__()
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if not widths or len(widths) != len(blocks):
            raise ValueError(f"widths and blocks need the same non-zero length; got {widths} and "
                             f"{blocks}")
        if min(widths) < 1 or min(blocks) < 1 or in_channels < 1:
            raise ValueError(f"in_channels, widths and blocks must be >= 1; got {in_channels}, "
                             f"{widths}, {blocks}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.feature_dim = widths[-1]
        first = widths[0]
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, first, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(first), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, first, 7, stride=2, padding=3,
                                                bias=False),
                                      nn.BatchNorm2d(first), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        c_in = first
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
            layers = [BasicBlock(c_in if j == 0 else width, width,
                                 stride=2 if (j == 0 and i > 1) else 1) for j in range(count)]
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            c_in = width
        self.stages = len(widths)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._initialise(seed, zero_init_residual)

    @torch.no_grad()
    def _initialise(self, seed: int, zero_init_residual: bool) -> None:
        g = torch.Generator().manual_seed(int(seed))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=g)
                                    * (2.0 / fan_out) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    module.bn2.weight.zero_()

    def layer_names(self) -> list[str]:
        """The hookable layers, input to output: stem, stage1 … stageS, pool."""
        return ["stem", *(f"stage{i}" for i in range(1, self.stages + 1)), "pool"]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"ResNetTrunk takes images (n, C, H, W), got shape {tuple(x.shape)}")
        for name in self.layer_names():
            x = getattr(self, name)(x)
        return x
