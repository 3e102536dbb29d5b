"""Official mmdet ↔ port state dicts for the detectors of :mod:`uniformer.tasks.mmdet_rcnn`:
:func:`convert_mmdet_state_dict` maps official keys (``backbone.`` / ``neck.`` / ``rpn_head.`` / ``roi_head.``) onto
the model's (background row last → first, zero background regression rows and mask channel),
:func:`to_mmdet_state_dict` goes back, and :func:`mmdet_num_parameters` counts the official model's parameters.
Class order: mmdet label ``i`` (0-based) = torchvision label ``i + 1``.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.ops import Conv2dNormActivation

from .rcnn_heads import MMDetCascadeRoIHeads, MMDetStandardRoIHeads

__all__ = ["convert_mmdet_state_dict", "to_mmdet_state_dict", "mmdet_num_parameters"]


def _cascade_layout(model: nn.Module) -> Optional[List[int]]:
    """Number of shared convs of each cascade stage's box head, or None for a Mask R-CNN."""
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, MMDetCascadeRoIHeads):
        return [sum(isinstance(m, Conv2dNormActivation) for m in h.children()) for h in heads.box_head]
    if isinstance(heads, MMDetStandardRoIHeads):
        return None
    raise ValueError(f"{type(model).__name__} is not a detector built by build_mmdet_detector")


_COMMON_RULES = (  # (official regex, our template)
    (r"backbone\.(.+)", "backbone.body.{0}"),
    (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", "backbone.fpn.inner_blocks.{0}.0.{1}"),
    (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", "backbone.fpn.layer_blocks.{0}.0.{1}"),
    (r"rpn_head\.rpn_conv\.(weight|bias)", "rpn.head.conv.0.0.{0}"),
    (r"rpn_head\.rpn_cls\.(weight|bias)", "rpn.head.cls_logits.{0}"),
    (r"rpn_head\.rpn_reg\.(weight|bias)", "rpn.head.bbox_pred.{0}"),
)
_MASK_RULES = (  # relative to roi_head.mask_head[.s] / roi_heads.mask_head[.s] and mask_predictor[.s]
    (r"convs\.(\d+)\.conv\.(weight|bias)", "mask_head{s}.{0}.0.{1}", ""),
    (r"upsample\.(weight|bias)", "mask_predictor{s}.conv5_mask.{0}", ""),
    (r"conv_logits\.(weight|bias)", "mask_predictor{s}.mask_fcn_logits.{0}", "mask"),
)


def _official_to_ours(key: str, layout: Optional[List[int]]) -> Tuple[str, str]:
    """(our key, transform kind) of an official key; ``ValueError`` naming it if it has no counterpart."""
    for pattern, template in _COMMON_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return template.format(*m.groups()), ""
    cascade = layout is not None
    stage = r"(\d+)\." if cascade else r"()"
    m = re.fullmatch(rf"roi_head\.bbox_head\.{stage}(.+)", key)
    if m:
        s, rest = m.group(1), m.group(2)
        sfx = f".{s}" if cascade else ""
        if cascade and int(s) >= len(layout):
            raise ValueError(f"official key {key!r}: stage {s} but the model has {len(layout)} stages")
        if re.fullmatch(r"fc_cls\.(weight|bias)", rest):
            return f"roi_heads.box_predictor{sfx}.cls_score.{rest.split('.')[-1]}", "cls"
        if re.fullmatch(r"fc_reg\.(weight|bias)", rest):
            return f"roi_heads.box_predictor{sfx}.bbox_pred.{rest.split('.')[-1]}", "reg"
        fcs = re.fullmatch(r"shared_fcs\.(\d+)\.(weight|bias)", rest)
        if fcs and not cascade and fcs.group(1) in ("0", "1"):
            return f"roi_heads.box_head.fc{6 + int(fcs.group(1))}.{fcs.group(2)}", ""
        if fcs and cascade:
            return f"roi_heads.box_head{sfx}.{layout[int(s)] + 1 + 2 * int(fcs.group(1))}.{fcs.group(2)}", ""
        convs = re.fullmatch(r"shared_convs\.(\d+)\.(conv|bn)\.(.+)", rest)
        if convs and cascade:
            part = "0" if convs.group(2) == "conv" else "1"
            return f"roi_heads.box_head{sfx}.{convs.group(1)}.{part}.{convs.group(3)}", ""
    m = re.fullmatch(rf"roi_head\.mask_head\.{stage}(.+)", key)
    if m:
        sfx = f".{m.group(1)}" if cascade else ""
        for pattern, template, kind in _MASK_RULES:
            mm = re.fullmatch(pattern, m.group(2))
            if mm:
                return "roi_heads." + template.format(*mm.groups(), s=sfx), kind
    raise ValueError(f"official key {key!r} has no counterpart in the {'Cascade' if cascade else 'Mask'} R-CNN port")


def _to_ours(value: Tensor, kind: str) -> Tensor:
    if kind == "cls":  # background last -> first
        return torch.cat([value[-1:], value[:-1]])
    if kind == "reg":  # 4 zero background rows
        return torch.cat([value.new_zeros((4,) + tuple(value.shape[1:])), value])
    if kind == "mask":  # zero background channel 0
        return torch.cat([value.new_zeros((1,) + tuple(value.shape[1:])), value])
    return value


def _to_official(value: Tensor, kind: str) -> Tensor:
    if kind == "cls":
        return torch.cat([value[1:], value[:1]])
    if kind == "reg":
        return value[4:]
    if kind == "mask":
        return value[1:]
    return value


def convert_mmdet_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """An official mmdet state dict (``backbone.*`` / ``neck.*`` / ``rpn_head.*`` / ``roi_head.*``; a checkpoint's
    ``state_dict``) renamed onto ``model`` (built by :func:`~uniformer.tasks.mmdet_rcnn.build_mmdet_detector`), with the
    row permutations: ``fc_cls`` background last → first, 4 zero background rows prepended to ``fc_reg``, a zero
    background channel prepended to ``conv_logits``. Strict both ways: an official key without counterpart, a model key
    left unfilled or a shape mismatch raises ``ValueError`` naming the keys; the result loads with
    ``load_state_dict(strict=True)``."""
    layout = _cascade_layout(model)
    own = model.state_dict()
    out: Dict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        ours, kind = _official_to_ours(key, layout)
        if ours not in own:
            raise ValueError(f"official key {key!r} maps to {ours!r}, which the model does not have (is the config "
                             "the checkpoint's?)")
        value = _to_ours(value, kind)
        if tuple(value.shape) != tuple(own[ours].shape):
            raise ValueError(f"official key {key!r}: shape {tuple(state_dict[key].shape)} (→ {tuple(value.shape)}) "
                             f"does not fit {ours!r} {tuple(own[ours].shape)}; is the config the checkpoint's?")
        out[ours] = value
    missing = [k for k in own if k not in out]
    if missing:
        raise ValueError(f"the official state dict leaves {len(missing)} model key(s) unfilled, e.g. {missing[:5]}")
    return out


def _ours_to_official_map(model: nn.Module) -> Dict[str, Tuple[str, str]]:
    """our key → (official key, transform kind), by inverting the official→ours rules over the model's keys."""
    layout = _cascade_layout(model)
    own = list(model.state_dict())
    stages = layout if layout is not None else [None]
    heads = [("bbox_head", s) for s in range(len(stages))]
    candidates: List[str] = []
    for key in own:
        if key.startswith("backbone.body."):
            candidates.append("backbone." + key[len("backbone.body."):])
    # enumerate the finite official head/neck key space that can map onto the model
    for i in range(4):
        for p in ("weight", "bias"):
            candidates += [f"neck.lateral_convs.{i}.conv.{p}", f"neck.fpn_convs.{i}.conv.{p}"]
    for name in ("rpn_conv", "rpn_cls", "rpn_reg"):
        candidates += [f"rpn_head.{name}.{p}" for p in ("weight", "bias")]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for _, s in heads:
        pre = f"roi_head.bbox_head.{s}." if layout is not None else "roi_head.bbox_head."
        mpre = f"roi_head.mask_head.{s}." if layout is not None else "roi_head.mask_head."
        candidates += [pre + f"{n}.{p}" for n in ("fc_cls", "fc_reg") for p in ("weight", "bias")]
        candidates += [pre + f"shared_fcs.{j}.{p}" for j in range(8) for p in ("weight", "bias")]
        candidates += [pre + f"shared_convs.{j}.conv.weight" for j in range(16)]
        candidates += [pre + f"shared_convs.{j}.bn.{p}" for j in range(16) for p in bn]
        candidates += [mpre + f"convs.{j}.conv.{p}" for j in range(16) for p in ("weight", "bias")]
        candidates += [mpre + f"{n}.{p}" for n in ("upsample", "conv_logits") for p in ("weight", "bias")]
    mapping: Dict[str, Tuple[str, str]] = {}
    own_set = set(own)
    for official in candidates:
        try:
            ours, kind = _official_to_ours(official, layout)
        except ValueError:
            continue
        if ours in own_set:
            mapping[ours] = (official, kind)
    return mapping


def to_mmdet_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """The inverse of :func:`convert_mmdet_state_dict`: ``model``-keyed tensors (e.g. ``model.state_dict()``) under
    the official mmdet names and layouts (background row last, no background regression rows or mask channel).
    A key of ``state_dict`` with no official counterpart raises ``ValueError`` naming it."""
    mapping = _ours_to_official_map(model)
    out: Dict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if key not in mapping:
            raise ValueError(f"model key {key!r} has no official mmdet counterpart")
        official, kind = mapping[key]
        out[official] = _to_official(value, kind)
    return out


def mmdet_num_parameters(model: nn.Module) -> int:
    """The parameter count of the official model ``model`` ports (its own count minus the zero background
    regression rows and mask channels the torchvision layout adds)."""
    params = dict(model.named_parameters())
    return sum(v.numel() for v in to_mmdet_state_dict(params, model).values())
