"""The fast inference path: BatchNorm folding, channels-last memory, optional ``torch.compile``.

UniFormer's convolutional stages spend much of their time in memory-bound BatchNorms. In eval mode a BatchNorm is a
per-channel affine map, so it folds exactly into a neighbouring linear operation:

- **BN → 1×1 conv** (local MHRA's ``norm1`` → ``conv1`` and ``norm2`` → the CMlp's ``fc1``): the scale multiplies the
  conv's input channels and the shift becomes a bias (exact because a 1×1 conv has no zero padding);
- **conv → BN** (the S†/light convolutional stems, the conv downsamplers, VT-ResNet's torchvision trunk and VT-FPN
  laterals): torch's :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`.

The folded BatchNorms become ``nn.Identity``. Attention stays on ``F.scaled_dot_product_attention``; LayerNorms
(global MHRA, the patch-embedding stems, dense outputs) and the classifier-side final BatchNorm are kept (the latter
defines ``forward_features``' output and costs one pass over a stride-32 map).
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["reparameterize", "optimize_for_inference", "fold_bn_into_next_conv", "input_memory_format"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_bn_into_next_conv(bn: nn.modules.batchnorm._BatchNorm, conv: nn.Module) -> None:
    """Fold an eval-mode BatchNorm into the 1×1 (×1) convolution that follows it, in place (``conv(bn(x))`` →
    ``conv'(x)``); ``bn`` must then be removed from the forward path by the caller."""
    if any(k != 1 for k in conv.kernel_size) or any(p != 0 for p in conv.padding) or conv.groups != 1:
        raise ValueError(f"only a 1x1 convolution without padding or groups can absorb a preceding BatchNorm, got "
                         f"{conv}")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
    weight = conv.weight
    bias = conv.bias if conv.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype,
                                                                device=weight.device)
    new_bias = bias + weight.flatten(1) @ shift.to(weight.dtype)
    conv.weight = nn.Parameter(weight * scale.to(weight.dtype).view(1, -1, *([1] * (weight.ndim - 2))))
    conv.bias = nn.Parameter(new_bias)


def _fuse_sequential(seq: nn.Sequential) -> int:
    count = 0
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, _CONV) and isinstance(bn, _BN) and conv.out_channels == bn.num_features:
            seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            seq._modules[b] = nn.Identity()
            count += 1
    return count


def _fuse_named_pairs(module: nn.Module) -> int:
    """torchvision ResNet blocks and stems: ``convK`` followed by ``bnK``."""
    count = 0
    for name, child in list(module._modules.items()):
        if isinstance(child, _CONV) and name.startswith("conv"):
            bn_name = "bn" + name[len("conv"):]
            bn = module._modules.get(bn_name)
            if isinstance(bn, _BN) and bn.num_features == child.out_channels:
                module._modules[name] = fuse_conv_bn_eval(child, bn)
                module._modules[bn_name] = nn.Identity()
                count += 1
    return count


@torch.no_grad()
def reparameterize(model: nn.Module) -> int:
    """Fold every foldable BatchNorm of an eval-mode ``model`` in place (see the module docstring); returns how many
    were folded. Outputs stay equal to the unfolded model's up to float rounding."""
    from .layers.mhra import LocalBlock

    if model.training:
        raise ValueError("reparameterize() needs an eval-mode model (call model.eval() first): BatchNorm folding uses "
                         "the running statistics")
    count = 0
    for module in list(model.modules()):
        if isinstance(module, LocalBlock):
            for bn_name, conv in (("norm1", module.conv1), ("norm2", module.mlp.fc1)):
                bn = getattr(module, bn_name)
                if isinstance(bn, _BN):
                    fold_bn_into_next_conv(bn, conv)
                    setattr(module, bn_name, nn.Identity())
                    count += 1
        elif isinstance(module, nn.Sequential):
            count += _fuse_sequential(module)
        else:
            count += _fuse_named_pairs(module)
    return count


def _memory_format(model: nn.Module) -> torch.memory_format:
    return torch.channels_last_3d if getattr(model, "dims", 2) == 3 else torch.channels_last


def optimize_for_inference(model: nn.Module, channels_last: bool = True, compile: bool = False,
                           inplace: bool = False, dtype: Optional[torch.dtype] = None,
                           **compile_kwargs) -> nn.Module:
    """An inference copy of ``model`` (the model itself with ``inplace=True``): eval mode, BatchNorms folded
    (:func:`reparameterize`), channels-last weights (feed channels-last inputs for the full benefit; contiguous
    inputs work too), and with ``compile=True`` wrapped in ``torch.compile(**compile_kwargs)``.

    ``dtype=torch.bfloat16`` also casts the weights (feed bf16 inputs): on CPUs with AMX / AVX-512-bf16 this is the
    fastest path, but its outputs differ from fp32 at the bf16 rounding level (~1e-2), so it is opt-in."""
    fast = model if inplace else copy.deepcopy(model)
    fast.eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    reparameterize(fast)
    if dtype is not None:
        fast = fast.to(dtype)
    if channels_last:
        fast = fast.to(memory_format=_memory_format(fast))
    if compile:
        fast = torch.compile(fast, **compile_kwargs)
    return fast


def input_memory_format(model: nn.Module) -> Tuple[torch.memory_format, int]:
    """The channels-last format matching a model's dimensionality, and the input rank it applies to."""
    fmt = _memory_format(getattr(model, "_orig_mod", model))
    return fmt, 5 if fmt is torch.channels_last_3d else 4
