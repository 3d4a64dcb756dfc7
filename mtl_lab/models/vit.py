"""A small Vision Transformer trunk (Dosovitskiy et al. 2021), the paper's second deep network.

Images ``(n, C, H, W)`` are cut into ``patch × patch`` patches, each embedded linearly (a strided
convolution), a learned class token is prepended and learned position embeddings added; ``depth``
pre-norm transformer blocks (multi-head self-attention and a GELU MLP of ``mlp_ratio × dim``,
each with a residual connection) follow, then a final LayerNorm; the features are the class
token's, ``(n, dim)``. The defaults (dim 192, depth 6, 3 heads, patch 4 for 32×32 inputs) are a
ViT small enough to train on CIFAR-sized data.

Named children for the layer-wise analysis: ``embed`` (patch + position embedding),
``blocks.0`` … ``blocks.{depth-1}``, ``norm``, ``pool`` (the class token). Initialisation is seeded:
truncated-normal (std 0.02) linear and embedding weights, zero biases, LayerNorms at 1 and 0.

Example:
    >>> trunk = ViTTrunk(image_size=8, patch=4, dim=16, depth=2, heads=2, seed=0)
    >>> trunk(torch.randn(3, 3, 8, 8)).shape, trunk.feature_dim
    (torch.Size([3, 16]), 16)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchEmbedding(nn.Module):
    """Patches → tokens, with a class token in front and learned position embeddings."""

    def __init__(self, in_channels: int, image_size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (image_size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (n, T-1, dim)
        cls = self.cls.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.position


class ClassToken(nn.Module):
    """The class token's features: ``(n, T, dim) → (n, dim)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


class ViTTrunk(nn.Module):
    """ViT trunk (module docstring).

    Args:
        in_channels: image channels C.
        image_size: side of the (square) input images; must be a multiple of ``patch``.
        patch: side of a patch.
        dim: token width (the feature dimension).
        depth: transformer blocks.
        heads: attention heads (``dim`` must be a multiple).
        mlp_ratio: hidden width of each block's MLP, as a multiple of ``dim``.
        seed: seed of the initial weights.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, patch: int = 4,
                 dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0,
                 seed: int = 0) -> None:
        super().__init__()
        if min(in_channels, image_size, patch, dim, depth, heads) < 1:
            raise ValueError("in_channels, image_size, patch, dim, depth and heads must be >= 1")
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.image_size = image_size
        self.feature_dim = dim
        self.embed = PatchEmbedding(in_channels, image_size, patch, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=int(mlp_ratio * dim),
                                       dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pool = ClassToken()
        self._initialise(seed)

    @torch.no_grad()
    def _initialise(self, seed: int) -> None:
        g = torch.Generator().manual_seed(int(seed))

        def normal(t: Tensor) -> None:  # truncated at ±2 std
            t.copy_((torch.randn(t.shape, generator=g) * 0.02).clamp_(-0.04, 0.04))

        for name, p in self.named_parameters():
            if p.dim() >= 2 or name in ("embed.cls", "embed.position"):
                normal(p)
            elif name.endswith("bias"):
                p.zero_()
            else:  # LayerNorm weights
                p.fill_(1.0)

    def layer_names(self) -> list[str]:
        """The hookable layers, input to output."""
        return ["embed", *(f"blocks.{i}" for i in range(len(self.blocks))), "norm", "pool"]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"ViTTrunk takes images (n, C, {self.image_size}, "
                             f"{self.image_size}), got shape {tuple(x.shape)}")
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.pool(self.norm(x))
