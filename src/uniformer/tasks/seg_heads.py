"""Segmentation decode heads (spec ``dense-official.md`` §3): :class:`FPNHead` (Semantic FPN, BatchNorm, as mmseg's
``FPNHead``), :class:`UperNetHead` (``UPerHead``) and :class:`FCNAuxHead` (``FCNHead``), all built from
:class:`ConvBNReLU` (mmcv ``ConvModule`` with BN and ReLU), and :class:`SemanticFPNHead`, the GroupNorm Detectron2
Semantic FPN head of VT-FPN. The Semantic FPN neck is torchvision's ``FeaturePyramidNetwork`` without an extra level
(:class:`~uniformer.tasks.necks.ConvFPNNeck`), which is what mmseg's ``FPN`` computes. The official mmseg models built
from these heads are in :mod:`uniformer.tasks.mmseg`.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .necks import check_feature_levels

__all__ = ["ConvBNReLU", "FPNHead", "UperNetHead", "FCNAuxHead", "SemanticFPNHead", "AUX_LOSS_WEIGHT"]

AUX_LOSS_WEIGHT = 0.4
STRIDES = (4, 8, 16, 32)


# ----------------------------------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------------------------------

class ConvBNReLU(nn.Sequential):
    """mmcv ``ConvModule`` with BN and ReLU: bias-free ``k``×``k`` conv (same padding), BatchNorm, ReLU. Its parts are
    ``.0`` / ``.1`` where mmcv says ``.conv`` / ``.bn``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.in_channels, self.out_channels = in_channels, out_channels


def _init_head(module: nn.Module, classifier: nn.Conv2d) -> None:
    """mmseg decode-head init: Kaiming-normal (fan_out, ReLU) convs, unit BN, classifier N(0, 0.01), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to ``size``; an identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


class FPNHead(nn.Module):
    """Semantic FPN decode head as mmseg's ``FPNHead`` (Kirillov et al. 2019 with BatchNorm): level i of stride
    ``feature_strides[i]`` runs ``max(1, log2(stride_i / stride_0))`` 3×3 conv-BN-ReLU blocks to ``channels``, each
    followed (levels i > 0) by a parameter-free ×2 bilinear upsample (``scale_heads.i`` = Sequential with the convs at
    even and the upsamples at odd indices, as mmseg); the levels are summed at level 0's size (a further bilinear
    resize where ×2 steps do not land exactly there), then dropout and the 1×1 ``conv_seg`` to ``num_classes``.
    ``forward(features)`` → stride-``feature_strides[0]`` logits (B, K, H_0, W_0). The GroupNorm Detectron2 variant is
    :class:`SemanticFPNHead`.
    """

    def __init__(self, num_classes: int, in_channels: Union[int, Sequence[int]] = 256, channels: int = 128,
                 feature_strides: Sequence[int] = STRIDES, dropout: float = 0.1) -> None:
        super().__init__()
        _check_classes(num_classes)
        strides = tuple(int(s) for s in feature_strides)
        chans = (int(in_channels),) * len(strides) if isinstance(in_channels, int) else \
            tuple(int(c) for c in in_channels)
        if not strides or len(chans) != len(strides):
            raise ValueError(f"FPNHead needs one in_channels value per feature stride, got in_channels {chans} and "
                             f"feature_strides {strides}")
        if any(s <= 0 or s & (s - 1) for s in strides) or list(strides) != sorted(set(strides)):
            raise ValueError(f"feature_strides must be increasing powers of two, got {strides}")
        if channels < 1 or any(c < 1 for c in chans):
            raise ValueError(f"channels and in_channels must be positive, got {channels} and {chans}")
        self.num_classes, self.in_channels, self.channels = num_classes, chans, channels
        self.feature_strides = strides
        self.scale_heads = nn.ModuleList()
        for i, (stride, c) in enumerate(zip(strides, chans)):
            n = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers: List[nn.Module] = []
            for k in range(n):
                layers.append(ConvBNReLU(c if k == 0 else channels, channels, 3))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_head(self, self.conv_seg)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_feature_levels(features, self.in_channels, type(self).__name__)
        out = self.scale_heads[0](features[0])
        for head, f in zip(self.scale_heads[1:], features[1:]):
            out = out + _resize(head(f), out.shape[-2:])
        return self.conv_seg(self.dropout(out))


class UperNetHead(nn.Module):
    """UperNet decode head (mmseg ``UPerHead``): a pyramid pooling module on the last level (adaptive average pools
    ``pool_scales``, each 1×1 conv-BN-ReLU to ``channels`` and bilinearly upsampled, concatenated with the input, 3×3
    conv-BN-ReLU bottleneck), 1×1 conv-BN-ReLU laterals on the other levels, a bilinear top-down path with additions,
    3×3 conv-BN-ReLU FPN convs, every level upsampled to the finest one, concatenated, fused by a 3×3 conv-BN-ReLU,
    dropout and a 1×1 classifier. ``forward(features)`` → logits (B, K, H_0, W_0) at the first level's resolution.
    Note that the pool-scale-1 branch's BN needs more than one sample per batch in training mode.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        if len(self.in_channels) < 1 or any(c <= 0 for c in self.in_channels):
            raise ValueError(f"in_channels must be a non-empty list of positive ints, got {in_channels}")
        _check_classes(num_classes)
        self.num_classes, self.channels, self.pool_scales = num_classes, channels, tuple(int(s) for s in pool_scales)
        if not self.pool_scales or any(s < 1 for s in self.pool_scales):
            raise ValueError(f"pool_scales must be positive ints, got {tuple(pool_scales)}")
        top = self.in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(top, channels, 1)) for s in self.pool_scales)
        self.bottleneck = ConvBNReLU(top + len(self.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(self.in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_head(self, self.conv_seg)

    def _ppm(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [F.interpolate(m(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
                      for m in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_feature_levels(features, self.in_channels, type(self).__name__)
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)] + [self._ppm(features[-1])]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class FCNAuxHead(nn.Module):
    """FCN head (mmseg ``FCNHead``), used as the auxiliary head on level ``in_index`` (stage 3 by default):
    ``num_convs`` k×k conv-BN-ReLU blocks to ``channels`` (``convs``; 0 = identity, then ``in_channels`` must equal
    ``channels``), with ``concat_input`` one more k×k conv-BN-ReLU (``conv_cat``) on [input, convs output], dropout,
    1×1 classifier. The defaults (1 conv, no concat) are the UniFormer configs'; mmseg's own defaults are 2 convs with
    concat. ``forward(features)`` takes the full list of levels (or the single map) → logits (B, K, H_i, W_i).
    ``loss_weight`` (0.4) is read by :meth:`SegmentationModel.loss`.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, in_index: int = 2,
                 dropout: float = 0.1, loss_weight: float = AUX_LOSS_WEIGHT, num_convs: int = 1,
                 kernel_size: int = 3, concat_input: bool = False) -> None:
        super().__init__()
        if in_channels <= 0 or channels <= 0:
            raise ValueError(f"in_channels and channels must be positive, got {in_channels} and {channels}")
        _check_classes(num_classes)
        if num_convs < 0 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"num_convs must be >= 0 and kernel_size a positive odd int, got {num_convs} and "
                             f"{kernel_size}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(f"an FCN head with num_convs=0 passes its input through: in_channels ({in_channels}) "
                             f"must equal channels ({channels})")
        self.in_channels, self.num_classes, self.in_index = in_channels, num_classes, in_index
        self.channels, self.num_convs, self.concat_input = channels, num_convs, bool(concat_input)
        self.loss_weight = float(loss_weight)
        self.convs: nn.Module = nn.Sequential(
            *(ConvBNReLU(in_channels if k == 0 else channels, channels, kernel_size) for k in range(num_convs))
        ) if num_convs else nn.Identity()
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, kernel_size) if self.concat_input else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_head(self, self.conv_seg)

    def forward(self, features: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        x = features if isinstance(features, torch.Tensor) else features[self.in_index]
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects a (B, {self.in_channels}, H, W) map, "
                             f"got {tuple(x.shape)}")
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


class SemanticFPNHead(nn.Module):
    """Panoptic-FPN semantic branch (Kirillov et al. 2019, as in Detectron2's ``SemSegFPNHead``): level i (stride
    4·2^i) runs max(1, i) blocks of [3×3 conv → ``channels``, GroupNorm(``num_groups``), ReLU, ×2 bilinear upsample
    (omitted for the stride-4 level)], the levels are summed, then optional dropout and a 1×1 conv to ``num_classes``.
    Each upsample targets the next finer level's exact size, so odd ResNet map sizes line up. ``dropout`` defaults to
    0 (the spec names none; Detectron2 uses none either). ``forward(features)`` → stride-4 logits (B, K, H_0, W_0).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128, num_levels: int = 4,
                 num_groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if channels % num_groups:
            raise ValueError(f"head channels {channels} must be a multiple of num_groups={num_groups}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.scale_heads = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                              nn.GroupNorm(num_groups, channels), nn.ReLU(inplace=True))
                for k in range(max(1, i)))
            for i in range(num_levels))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():  # Detectron2: MSRA fill for the convs, N(0, 0.001) for the predictor
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_feature_levels(features, (self.in_channels,) * len(self.scale_heads), type(self).__name__)
        sizes = [f.shape[-2:] for f in features]
        out = None
        for i, (blocks, f) in enumerate(zip(self.scale_heads, features)):
            for k, block in enumerate(blocks):
                f = block(f)
                if i > 0:
                    f = F.interpolate(f, size=sizes[i - 1 - k], mode="bilinear", align_corners=False)
            out = f if out is None else out + f
        return self.predictor(self.dropout(out))
