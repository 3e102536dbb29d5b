"""Official checkpoint formats → our state dicts.

Official files wrap their weights differently (image: ``model``, token labeling: ``state_dict``, video:
``model_state``, dense: ``state_dict`` with a ``backbone.`` prefix). Because the module tree keeps the official names,
conversion is unwrapping, prefix stripping and dropping the documented extras; nothing is renamed. A 2-D (image)
checkpoint loaded into a 3-D (video) model is inflated: each 3-D kernel is the 2-D kernel repeated over its temporal
size and divided by it (the official rule), so a temporally constant clip gives the image model's response.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["unwrap_state_dict", "convert_state_dict", "checkpoint_filter_fn", "ConversionReport", "WRAPPER_KEYS",
           "resolve_use_ema", "inflate_kernel"]

_logger = logging.getLogger("uniformer")

WRAPPER_KEYS = ("model", "state_dict", "model_state")
EMA_KEYS = ("model_ema", "state_dict_ema", "model_state_ema")
PREFIXES = ("module.", "backbone.")
CLASSIFIERS = ("head", "aux_head", "head_cls")
TAIL_PREFIXES = ("norm.", "norm_cls.") + tuple(f"{c}." for c in CLASSIFIERS)


class ConversionReport(NamedTuple):
    """What :func:`convert_state_dict` changed: heads dropped for a class-count mismatch, tail keys dropped because
    the model has no such module, the wrapper key that was unwrapped, and 2-D kernels inflated to 3-D (with their
    temporal size)."""

    dropped_heads: List[str]
    dropped_tail: List[str]
    wrapper: Optional[str]
    inflated: List[Tuple[str, int]]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = False) -> tuple[Dict[str, torch.Tensor], Optional[str]]:
    """Return the tensor state dict inside an official or timm container, and the key it came from.

    ``use_ema=True`` prefers the EMA weights (``model_ema``/``state_dict_ema``) and fails if there are none.
    ``module.`` and ``backbone.`` prefixes are stripped; when ``backbone.`` keys are present (dense-task checkpoints)
    the neck and head keys beside them are skipped.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    keys = (EMA_KEYS if use_ema else ()) + WRAPPER_KEYS
    wrapper = next((k for k in keys if k in checkpoint and isinstance(checkpoint[k], Mapping)), None)
    if use_ema and wrapper not in EMA_KEYS:
        raise ValueError(f"checkpoint has no EMA weights (looked for {', '.join(EMA_KEYS)}; found {sorted(checkpoint)[:8]})")
    sd = checkpoint[wrapper] if wrapper else checkpoint
    if not _is_state_dict(sd):
        found = sorted(str(k) for k in checkpoint)[:8]
        raise ValueError(
            f"no state dict of tensors found: expected tensors at the top level or under one of "
            f"{', '.join(WRAPPER_KEYS)}; found keys {found}"
        )
    if any(k.startswith(("backbone.", "module.backbone.")) for k in sd):
        # a detection / segmentation / pose checkpoint: keep the backbone, drop the neck and heads (documented)
        others = [k for k in sd if not k.startswith(("backbone.", "module.backbone."))]
        if others:
            _logger.info("kept the backbone of a dense checkpoint; skipped %d neck/head keys (e.g. %s)",
                         len(others), others[0])
        sd = {k: v for k, v in sd.items() if k not in set(others)}
    out = {}
    for k, v in sd.items():
        for prefix in PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out, wrapper


def resolve_use_ema(checkpoint: Mapping[str, Any], model: nn.Module, use_ema: Optional[bool]) -> bool:
    """``use_ema=None``: use EMA weights only for models whose official checkpoints were evaluated with them
    (``model.default_use_ema``, the light models) and only if the checkpoint has them."""
    if use_ema is not None:
        return use_ema
    return bool(getattr(model, "default_use_ema", False)) and any(
        isinstance(checkpoint.get(k), Mapping) for k in EMA_KEYS
    )


def inflate_kernel(weight: torch.Tensor, temporal_size: int) -> torch.Tensor:
    """(O, I, kh, kw) → (O, I, t, kh, kw): the 2-D kernel repeated ``t`` times over time, divided by ``t``."""
    return weight.unsqueeze(2).repeat(1, 1, temporal_size, 1, 1) / temporal_size


def _inflatable(weight: torch.Tensor, target: torch.Tensor) -> bool:
    return weight.ndim == 4 and target.ndim == 5 and weight.shape[:2] == target.shape[:2] and weight.shape[2:] == target.shape[3:]


def convert_state_dict(
    state_dict: Mapping[str, Any], model: nn.Module, use_ema: Optional[bool] = None
) -> tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Convert an official (or our own) checkpoint for ``model``.

    Drops (a) classifier weights whose class count differs from the model's (they keep their fresh init), and
    (b) classification-tail weights the model does not have (e.g. a backbone built with ``num_classes=0``, or a TL
    ``aux_head`` loaded into a video model); inflates 2-D kernels whose 3-D counterpart has the same spatial shape.
    Everything else is passed through so that a strict load reports real mismatches.
    """
    sd, wrapper = unwrap_state_dict(state_dict, use_ema=resolve_use_ema(state_dict, model, use_ema))
    target = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    dropped_heads: List[str] = []
    dropped_tail: List[str] = []
    inflated: List[Tuple[str, int]] = []
    for k, v in sd.items():
        is_classifier = k.split(".")[0] in CLASSIFIERS
        if k not in target and k.startswith(TAIL_PREFIXES) and not any(t.startswith(k.split(".")[0] + ".") for t in target):
            dropped_tail.append(k)
            continue
        if is_classifier and k in target and target[k].shape != v.shape:
            dropped_heads.append(k)
            continue
        if k in target and _inflatable(v, target[k]):
            v = inflate_kernel(v, target[k].shape[2])
            inflated.append((k, target[k].shape[2]))
        out[k] = v
    return out, ConversionReport(dropped_heads, dropped_tail, wrapper, inflated)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: unwrap and convert an official checkpoint for ``model``."""
    out, report = convert_state_dict(state_dict, model)
    if report.dropped_heads:
        _logger.warning("classifier shapes differ from the checkpoint; re-initialised %s", ", ".join(report.dropped_heads))
    init_only = tuple(getattr(model, "init_only_prefixes", ()))
    if init_only and not any(k.startswith(init_only) for k in out):
        # an ImageNet checkpoint for a dense backbone: its norm1..4 keep their identity init (timm loads strictly)
        out.update({k: v for k, v in model.state_dict().items() if k.startswith(init_only)})
    return out
