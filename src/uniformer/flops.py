"""Exact parameter and FLOP counts in the papers' convention (fvcore: one multiply-add = one FLOP).

:func:`count_flops` counts any model; :func:`official_dense_flops` counts the official dense models as the official
tables do (fvcore multiply-adds, attention matmuls included, batch 1), at the input size those tables use:

- segmentation (mmseg ``get_flops``, 512×2048): backbone, neck and decode head (the auxiliary head is training-only);
- detection (mmdet ``get_flops``/``forward_dummy``, 800×1280): backbone, FPN and RPN head, then every box head on
  1000 RoIs and every mask head on 100 RoIs (RoIAlign itself counts 0, as in mmcv's counter);
- pose (mmpose ``get_flops``, the crop size, e.g. 256×192): backbone and keypoint head.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .data.padding import padded_size
from .layers import Attention
from .models.common import eval_mode
from .tasks.mmdet_rcnn import roi_head_modules
from .tasks.official_zoo import OfficialConfig

__all__ = ["count_params", "count_flops", "explicit_attention", "official_dense_flops", "DETECTION_ROIS", "MASK_ROIS"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily run every attention through the explicit softmax(q kᵀ)v path and disable grad checkpointing.

    FLOP counters cannot see inside ``scaled_dot_product_attention`` (fvcore counts it as 0) nor through
    ``torch.utils.checkpoint`` (this is how UniFormer-L was once published as 12.6 G instead of 19.76 G).
    """
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    fused = [a.fused_attn for a in attns]
    ckpt = [(m, m.grad_checkpointing) for m in model.modules() if hasattr(m, "grad_checkpointing")]
    try:
        for a in attns:
            a.fused_attn = False
        for m, _ in ckpt:
            m.grad_checkpointing = False
        yield model
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
        for m, c in ckpt:
            m.grad_checkpointing = c


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """fvcore FLOPs (multiply-adds) of one eval-mode forward on a zero input of ``input_shape`` (batch included).

    Norm layers are included, as in fvcore's default and the published UniFormer numbers.
    """
    with warnings.catch_warnings():  # fvcore scripts a loss function at import; torch deprecates jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    with eval_mode(model, no_grad=True), explicit_attention(model):
        param = next(model.parameters(), None)
        x = torch.zeros(*input_shape, device=param.device if param is not None else "cpu")
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        return int(analysis.total())


DETECTION_ROIS = 1000  # mmdet forward_dummy: 1000 proposals through the box head(s) ...
MASK_ROIS = 100  # ... and the first 100 through the mask head(s)


class _Seq(nn.Module):
    """Runs ``steps`` in order, each on the previous one's output."""

    def __init__(self, steps: Sequence[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x):
        for step in self.steps:
            x = step(x)
        return x


class _Last(nn.Module):
    """The last map of a list of maps (the pose backbone's stride-32 output)."""

    def forward(self, x):
        return x[-1] if isinstance(x, (list, tuple)) else x


class _DetectorDense(nn.Module):
    """Backbone + FPN, then the RPN head on the FPN levels."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.rpn_head = detector.backbone, detector.rpn.head

    def forward(self, x):
        return self.rpn_head(list(self.backbone(x).values()))


def _seg_flops(model: nn.Module, size: Tuple[int, int]) -> int:
    return count_flops(_Seq([model.backbone, model.neck, model.decode_head]), (1, 3, *size))


def _pose_flops(model: nn.Module, size: Tuple[int, int]) -> int:
    return count_flops(_Seq([model.backbone, _Last(), model.keypoint_head]), (1, 3, *size))


def _det_flops(model: nn.Module, size: Tuple[int, int]) -> int:
    """Backbone + FPN + RPN head on the padded image, plus the RoI heads on fixed RoI batches."""
    total = count_flops(_DetectorDense(model), (1, 3, *padded_size(size, 32)))
    for head, roi_size, kind in roi_head_modules(model):
        rois = DETECTION_ROIS if kind == "box" else MASK_ROIS
        total += count_flops(head, (rois, model.backbone.out_channels, roi_size, roi_size))
    return total


def official_dense_flops(model: nn.Module, entry: OfficialConfig, input_size: Optional[Tuple[int, int]] = None) -> int:
    """FLOPs of an official dense model (see the module docstring) at ``input_size`` (H, W; default the size the
    official tables use for ``entry``)."""
    size = tuple(input_size or entry.flops_input)
    if entry.task == "segmentation":
        return _seg_flops(model, size)
    if entry.task == "pose":
        return _pose_flops(model, size)
    return _det_flops(model, size)
