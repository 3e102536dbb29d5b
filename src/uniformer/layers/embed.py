"""Stems, downsampling layers and the dynamic position embedding (DPE), for 2-D and 3-D inputs."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from .common import ChannelLayerNorm, batch_norm_nd, conv_nd

__all__ = ["PatchEmbed", "ConvStem", "ConvDown", "dynamic_pos_embed"]

IntOrTuple = Union[int, Sequence[int]]


def dynamic_pos_embed(dims: int, dim: int) -> nn.Module:
    """Dynamic position embedding: a depthwise 3×3 (3×3×3) conv applied as a residual by every block."""
    return conv_nd(dims)(dim, dim, 3, padding=1, groups=dim)


class PatchEmbed(nn.Module):
    """Strided conv followed by a channel LayerNorm (eps 1e-5), NC* in and out.

    ``patch_size``/``stride``/``padding`` may be ints or per-dim tuples (video stem: (3,4,4)/(2,4,4)/(1,0,0)).
    Odd sizes are floored, as in the official code.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: IntOrTuple,
        stride: IntOrTuple | None = None,
        padding: IntOrTuple = 0,
        dims: int = 2,
    ) -> None:
        super().__init__()
        stride = patch_size if stride is None else stride
        self.proj = conv_nd(dims)(in_chans, embed_dim, patch_size, stride, padding)
        self.norm = ChannelLayerNorm(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ConvStem(nn.Module):
    """The S† / light convolutional stem: conv3 s2 → BN → GELU → conv3 s2 → BN (keys ``proj.{0,1,3,4}``).

    ``strides`` gives the two convs' strides; the 3-D light video stem uses ((1,2,2), (2,2,2)). Sizes are ceiled.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        dims: int = 2,
        strides: tuple[IntOrTuple, IntOrTuple] = (2, 2),
    ) -> None:
        super().__init__()
        conv, bn, mid = conv_nd(dims), batch_norm_nd(dims), embed_dim // 2
        self.proj = nn.Sequential(
            conv(in_chans, mid, 3, strides[0], 1),
            bn(mid),
            nn.GELU(),
            conv(mid, embed_dim, 3, strides[1], 1),
            bn(embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvDown(nn.Module):
    """S† downsampling between stages: conv 3×3 stride 2 → BN (keys ``proj.{0,1}``), no LayerNorm."""

    def __init__(self, in_chans: int, embed_dim: int, dims: int = 2) -> None:
        super().__init__()
        self.proj = nn.Sequential(conv_nd(dims)(in_chans, embed_dim, 3, 2, 1), batch_norm_nd(dims)(embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
