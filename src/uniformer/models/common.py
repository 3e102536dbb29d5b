"""timm-contract methods shared by every classification model of the package, and :func:`eval_mode`, the one way
the package runs a model in eval mode and restores the caller's modes after."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn

__all__ = ["ClassifierAPI", "check_global_pool", "check_input_dtype", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module, no_grad: bool = False) -> Iterator[nn.Module]:
    """``model`` in eval mode for the body of a ``with`` block (with ``no_grad=True`` also without autograd); on
    leaving it, even by an exception, every submodule gets back the train/eval mode it had before."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode


def check_input_dtype(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ``ValueError`` for a non-floating-point input, or (outside ``torch.autocast``) a floating-point input whose
    dtype differs from the model's weights — instead of an error from inside the first convolution."""
    if not x.is_floating_point():
        raise ValueError(f"{type(model).__name__} expects a floating-point input, got dtype "
                         f"{str(x.dtype).replace('torch.', '')} (convert images with .float() and normalise them)")
    weight = next(model.parameters(), None)
    if weight is not None and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"input dtype {str(x.dtype).replace('torch.', '')} does not match the model's "
                         f"{str(weight.dtype).replace('torch.', '')} weights: cast the input or the model, or run "
                         f"under torch.autocast")


def check_global_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    return global_pool


class ClassifierAPI:
    """``set_grad_checkpointing``, ``get_classifier`` and the pooling part of ``reset_classifier`` (for classes with
    ``grad_checkpointing``, ``head``, ``global_pool`` and ``num_classes`` attributes; no class-level annotations,
    which TorchScript would read as attribute types)."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def _reset_pool_and_classes(self, num_classes: int, global_pool: Optional[str]) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
