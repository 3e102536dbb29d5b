"""Pictures of where a VT-ResNet's visual tokens look: the filter tokenizer's spatial attention (spec §2.1), one map
per token, drawn as heat-maps over the input image.

Works with any model following the VT-ResNet layout: torchvision trunk attributes ``conv1, bn1, relu, maxpool,
layer1, layer2, layer3`` and ``vt``, a ``ModuleList`` of :class:`~uniformer.layers.vt.VTModule` whose first module has
a :class:`~uniformer.layers.vt.FilterTokenizer`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ._io import atomic_path
from .data import load_image
from .layers.vt import FilterTokenizer
from .models.common import eval_mode

__all__ = ["token_attention_maps", "save_token_attention_grid"]

TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
PANEL_INCHES = 2.5  # each panel of the grid is PANEL_INCHES × PANEL_INCHES at DPI dots per inch
TITLE_INCHES = 0.5
DPI = 100


def _filter_tokenizer(model: nn.Module) -> FilterTokenizer:
    """The first VT module's filter tokenizer, or ``ValueError`` naming the model class."""
    name = type(model).__name__
    missing = [a for a in TRUNK if not isinstance(getattr(model, a, None), nn.Module)]
    if missing:
        raise ValueError(f"{name} is not a VT-ResNet: it lacks the trunk modules {missing}")
    vt = getattr(model, "vt", None)
    tokenizer = getattr(vt[0], "tokenizer", None) if isinstance(vt, nn.ModuleList) and len(vt) else None
    if not isinstance(tokenizer, FilterTokenizer):
        found = type(tokenizer).__name__ if tokenizer is not None else "no `vt[0].tokenizer`"
        raise ValueError(f"{name} has no filter tokenizer: expected model.vt[0].tokenizer to be a FilterTokenizer, "
                         f"found {found}")
    return tokenizer


@torch.no_grad()
def token_attention_maps(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Filter-tokenizer attention of the first image of ``image`` ((B, C, H, W) or (C, H, W), already normalised):
    runs the trunk to the stride-16 map and the first VT module's tokenizer (transformer and projector are not
    needed), in eval mode, and returns (L, h, w) maps on that grid, each non-negative and summing to 1 over pixels.
    Raises ``ValueError`` for a model without a filter tokenizer or a malformed image.
    """
    tokenizer = _filter_tokenizer(model)
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
    param = next(model.parameters(), None)
    if param is not None:
        image = image.to(device=param.device, dtype=param.dtype)
    with eval_mode(model):
        x = image[:1]
        for name in TRUNK:
            x = getattr(model, name)(x)
        _, attn = tokenizer(x)  # (1, 1, L, h·w)
    return attn[0, 0].reshape(-1, *x.shape[-2:]).float().cpu()


def save_token_attention_grid(model: nn.Module, image_path: Union[str, os.PathLike],
                              output_path: Union[str, os.PathLike], size: int = 224, columns: int = 4) -> Path:
    """Write a PNG grid of the filter tokenizer's attention for one image: the image is resized (shorter side
    ``size``), centre-cropped to ``size``² and normalised with the model's ``pretrained_cfg`` mean/std (ImageNet's by
    default); each token's map is bilinearly upsampled to the crop and overlaid as a heat-map on one panel titled
    "token i" (colours stretched from the map's minimum to its maximum), ``columns`` panels per row (each panel
    ``PANEL_INCHES`` at ``DPI``, plus a ``TITLE_INCHES`` band for the overall title). Written atomically; returns the
    path.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from torchvision.transforms import functional as TF

    if size < 32 or columns < 1:
        raise ValueError(f"need size >= 32 and columns >= 1, got size={size}, columns={columns}")
    _filter_tokenizer(model)
    image_path, output_path = Path(image_path), Path(output_path)
    crop = TF.center_crop(TF.resize(load_image(image_path), size, interpolation=TF.InterpolationMode.BICUBIC), size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", IMAGENET_DEFAULT_MEAN), cfg.get("std", IMAGENET_DEFAULT_STD)
    tensor = TF.normalize(TF.to_tensor(crop), mean, std)
    maps = token_attention_maps(model, tensor)
    maps = F.interpolate(maps.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False)[0].numpy()

    num = maps.shape[0]
    rows = math.ceil(num / columns)
    fig = Figure(figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES + TITLE_INCHES), dpi=DPI)
    fig.suptitle(f"{type(model).__name__}: filter-tokenizer attention of {num} tokens ({image_path.name})")
    pixels = np.asarray(crop)
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if i < num:
            ax.imshow(pixels)
            lo, hi = float(maps[i].min()), float(maps[i].max())  # per-token contrast stretch
            ax.imshow(maps[i], cmap="jet", alpha=0.5, vmin=lo, vmax=hi if hi > lo else lo + 1.0)
            ax.set_title(f"token {i}", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - (TITLE_INCHES + 0.25) / fig.get_figheight(),
                        wspace=0.05, hspace=0.15)
    with atomic_path(output_path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return output_path
