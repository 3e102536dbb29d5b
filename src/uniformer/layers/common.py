"""Dimension-generic primitives: the same code builds 2-D (image) and 3-D (video) layers."""
from __future__ import annotations

from typing import List, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils.checkpoint import checkpoint

__all__ = ["conv_nd", "batch_norm_nd", "avg_pool_nd", "ChannelLayerNorm", "check_dims", "is_tracing",
           "CheckpointedBlock"]


def is_tracing() -> bool:
    """True while ``torch.jit.trace``, TorchScript, ``torch.fx`` or ``torch.export`` (the ONNX exporter) capture a
    model: Python-side input checks, which branch on tensor shapes, are skipped then (eager calls keep them)."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or is_fx_symbolic_tracing()
            or torch.compiler.is_exporting())


class CheckpointedBlock(nn.Module):
    """A block that recomputes its activations in backward when ``grad_checkpointing`` is set (and gradients are
    on). Each block checkpoints itself, so stage code stays a plain ``nn.Sequential`` call that TorchScript and
    ``torch.fx`` follow. Subclasses implement ``_forward(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def check_dims(dims: int) -> int:
    """Validate the spatial dimensionality of a block (2 = image, 3 = video)."""
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 (image) or 3 (video), got {dims!r}")
    return dims


def conv_nd(dims: int) -> Type[nn.Module]:
    """``nn.Conv2d`` for ``dims=2``, ``nn.Conv3d`` for ``dims=3``."""
    return (nn.Conv2d, nn.Conv3d)[check_dims(dims) - 2]


def batch_norm_nd(dims: int) -> Type[nn.Module]:
    """``nn.BatchNorm2d`` for ``dims=2``, ``nn.BatchNorm3d`` for ``dims=3``."""
    return (nn.BatchNorm2d, nn.BatchNorm3d)[check_dims(dims) - 2]


def avg_pool_nd(x: torch.Tensor, kernel: List[int]) -> torch.Tensor:
    """Average pooling with stride = kernel (one size per spatial dim) on a 2-D or 3-D map (floor mode)."""
    if len(kernel) == 2:
        return F.avg_pool2d(x, kernel, kernel)
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):  # PyTorch has no such CPU kernel
        return F.avg_pool3d(x.float(), kernel, kernel).to(x.dtype)
    return F.avg_pool3d(x, kernel, kernel)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dim of a channels-first map (N, C, *spatial), any number of spatial dims.

    Parameter names (``weight``/``bias``) are those of ``nn.LayerNorm`` so official keys load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)
