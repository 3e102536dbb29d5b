"""What every dense head stands on: the one check of a list of feature levels (:func:`check_feature_levels`, for
backbone outputs, necks and heads alike) and the convolutional FPN neck (:class:`ConvFPNNeck`, torchvision's
``FeaturePyramidNetwork``, which is what mmseg's ``FPN`` computes and the baseline VT-FPN is compared against).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Mapping, Sequence

import torch
import torch.nn as nn
from torchvision.ops import FeaturePyramidNetwork

from ..layers import is_tracing

__all__ = ["ConvFPNNeck", "check_feature_levels", "RESNET_CHANNELS"]

RESNET_CHANNELS = (256, 512, 1024, 2048)  # C2–C5 of ResNet-50/101


def check_feature_levels(features: Any, in_channels: Sequence[int], owner: str,
                         backbone: bool = False) -> List[torch.Tensor]:
    """``features`` as a list, checked to be ``len(in_channels)`` NCHW maps with those channels and one batch size;
    else ``ValueError`` naming ``owner`` and what was found. ``backbone=True`` checks a backbone's raw output: a
    mapping's values are taken in order, and the messages speak of the backbone's levels (strides 4/8/16/32).
    Nothing is checked while a graph is traced or exported (:func:`~uniformer.layers.is_tracing`).
    """
    if backbone and isinstance(features, Mapping):
        features = list(features.values())
    if is_tracing():
        return list(features)
    levels = "backbone levels" if backbone else "levels"
    if not isinstance(features, (list, tuple)) or len(features) != len(in_channels):
        if backbone:
            found = f"{len(features)} maps" if isinstance(features, (list, tuple)) else type(features).__name__
            raise ValueError(f"{owner}: the backbone must return {len(in_channels)} feature maps (strides "
                             f"4/8/16/32), found {found}")
        found = f"{len(features)} levels" if isinstance(features, (list, tuple)) else type(features).__name__
        raise ValueError(f"{owner} expects a list of {len(in_channels)} feature maps, got {found}")
    for i, (f, c) in enumerate(zip(features, in_channels)):
        if not isinstance(f, torch.Tensor) or f.ndim != 4 or f.shape[1] != c:
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            if backbone:
                raise ValueError(f"{owner}: backbone level {i} must be a (B, {c}, H, W) map (in_channels[{i}] = "
                                 f"{c}), found {shape}")
            raise ValueError(f"{owner}: level {i} must be a (B, {c}, H, W) map, got {shape}")
    if len({f.shape[0] for f in features}) != 1:
        raise ValueError(f"{owner}: all {levels} must share the batch size, got {[f.shape[0] for f in features]}")
    return list(features)


class ConvFPNNeck(nn.Module):
    """The convolutional FPN: torchvision's ``FeaturePyramidNetwork`` (lateral 1×1 convs, nearest top-down path, 3×3
    output convs, all at ``out_channels``), taking and returning lists of maps like
    :class:`~uniformer.tasks.vt_fpn.VTFPNNeck`."""

    def __init__(self, in_channels: Sequence[int] = RESNET_CHANNELS, out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels, self.out_channels = tuple(in_channels), out_channels
        if not self.in_channels or any(not isinstance(c, int) or c <= 0 for c in self.in_channels):
            raise ValueError(f"in_channels must be positive integers, got {self.in_channels}")
        self.fpn = FeaturePyramidNetwork(list(self.in_channels), out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        check_feature_levels(features, self.in_channels, type(self).__name__)
        return list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
