"""Exact parameter and FLOP counts in the papers' convention (fvcore: one multiply-add = one FLOP)."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from .layers import Attention

__all__ = ["count_params", "count_flops", "explicit_attention"]


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

    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(*input_shape, device=param.device if param is not None else "cpu")
        with explicit_attention(model), torch.no_grad():
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            return int(analysis.total())
    finally:
        model.train(was_training)
