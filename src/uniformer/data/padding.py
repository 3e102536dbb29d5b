"""Padding images to a multiple of a network's coarsest stride: the one helper for the official mmcv pipelines
(numpy arrays) and for the dense models' inputs (tensors)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..layers import is_tracing

__all__ = ["pad_to_multiple", "padded_size"]


def _check_divisor(divisor: int) -> int:
    if int(divisor) < 1:
        raise ValueError(f"divisor must be a positive integer, got {divisor}")
    return int(divisor)


def padded_size(size: Sequence[int], divisor: int = 32) -> Tuple[int, ...]:
    """Each side of ``size`` rounded up to a multiple of ``divisor``: the size :func:`pad_to_multiple` pads to."""
    d = _check_divisor(divisor)
    return tuple(int(s) + (-int(s)) % d for s in size)


def pad_to_multiple(x: Union[np.ndarray, torch.Tensor], divisor: int = 32) -> Union[np.ndarray, torch.Tensor]:
    """Zero-pad on the right and bottom up to multiples of ``divisor`` (mmcv ``impad_to_multiple``, value 0).

    Accepts an ``H x W x C`` numpy array (as in the mmcv pipeline, after normalisation) or a ``(..., H, W)`` tensor
    (a model input); returns the same kind. A tensor that needs no padding is returned as is, except while a graph is
    traced or exported: then the pad is always recorded, by what the input size needs, so the graph pads other sizes
    too (and no guard is put on the size).
    """
    d = _check_divisor(divisor)
    if isinstance(x, torch.Tensor):
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % d, (-w) % d
        # tracing / exporting is tested first: no guard on the size
        if is_tracing() or pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x
    h, w = x.shape[:2]
    pad = [(0, (-h) % d), (0, (-w) % d)] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, pad, mode="constant", constant_values=0)
