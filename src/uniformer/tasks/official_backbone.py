"""The backbone of an official dense config (``model['backbone']`` of an mmdet / mmseg / mmpose config of the
Sense-X/UniFormer repository) as one of our dense backbones, keyword for keyword.

``type='UniFormer'`` (``layers``, ``embed_dim``, ``head_dim``, ``mlp_ratio``, ``windows``, ``hybrid``,
``window_size``, ...) becomes :class:`~uniformer.models.UniFormerDense`; ``type='UniFormer_Light'``
(``depth``, ``conv_stem``, ``prune_ratio``, ``trade_off``, ...) becomes
:class:`~uniformer.models.UniFormerLightDense`. Training-only switches (``use_checkpoint``,
``checkpoint_num``, ``pretrained``, ``init_cfg``) are accepted: gradient checkpointing maps onto timm's
``set_grad_checkpointing``, the others do not change the model. Any other keyword is refused by name.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import torch.nn as nn

from ..models.factory import create_model

__all__ = ["build_official_backbone", "official_backbone_name"]

# official keyword -> our keyword (None: accepted, no effect on the model at inference)
_COMMON = {
    "embed_dim": "embed_dim", "head_dim": "head_dim", "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias",
    "qk_scale": "qk_scale", "drop_rate": "drop_rate", "attn_drop_rate": "attn_drop_rate",
    "drop_path_rate": "drop_path_rate", "in_chans": "in_chans",
    "use_checkpoint": None, "checkpoint_num": None, "pretrained": None, "init_cfg": None,
    "pretrained_path": None, "norm_layer": None, "representation_size": None, "num_classes": None,
}
_STANDARD = dict(_COMMON, layers="depth", depth="depth", windows="windows", hybrid="hybrid",
                 window_size="window_size")
_LIGHT = dict(_COMMON, depth="depth", layers="depth", conv_stem="conv_stem", prune_ratio="prune_ratio",
              trade_off="trade_off")
_TYPES: Dict[str, Tuple[Dict[str, Any], Sequence[Tuple[str, Tuple[int, ...]]]]] = {
    # type -> (keyword map, [(our architecture, its embed_dim)] to pick the one whose widths match)
    "UniFormer": (_STANDARD, [("uniformer_small", (64, 128, 320, 512))]),
    "UniFormer_Light": (_LIGHT, [("uniformer_xxs", (56, 112, 224, 448)), ("uniformer_xs", (64, 128, 256, 512))]),
}


def official_backbone_name(backbone_cfg: Mapping[str, Any]) -> str:
    """Our architecture for an official backbone dict (by ``type`` and, for the light models, ``embed_dim``)."""
    kind = backbone_cfg.get("type")
    if kind not in _TYPES:
        raise ValueError(f"backbone type {kind!r} is not an official UniFormer backbone; expected one of "
                         f"{sorted(_TYPES)}")
    candidates = _TYPES[kind][1]
    dims = tuple(int(c) for c in backbone_cfg.get("embed_dim", candidates[0][1]))
    for name, widths in candidates:
        if widths == dims:
            return name
    return candidates[0][0]


def backbone_kwargs(backbone_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Our keyword arguments for an official backbone dict (``ValueError`` naming any unknown keyword)."""
    kind = backbone_cfg.get("type")
    official_backbone_name(backbone_cfg)  # validates the type
    mapping = _TYPES[kind][0]
    unknown = sorted(k for k in backbone_cfg if k != "type" and k not in mapping)
    if unknown:
        raise ValueError(f"backbone {kind}: unknown keyword(s) {unknown}; expected some of {sorted(mapping)}")
    kwargs: Dict[str, Any] = {}
    for key, value in backbone_cfg.items():
        ours = mapping.get(key)
        if key == "type" or ours is None:
            continue
        kwargs[ours] = list(value) if isinstance(value, tuple) else value
    return kwargs


def build_official_backbone(backbone_cfg: Mapping[str, Any], out_indices: Sequence[int] = (0, 1, 2, 3)) -> nn.Module:
    """Our dense backbone for ``model['backbone']`` of an official config: same weights layout (``norm1..norm4``
    included, also for pose, which uses only the last map), same attention mode (``windows``/``hybrid``,
    ``window_size`` default 14 as the official code). ``use_checkpoint`` turns on gradient checkpointing."""
    name = official_backbone_name(backbone_cfg)
    model = create_model(name, features_only=True, out_indices=tuple(out_indices), **backbone_kwargs(backbone_cfg))
    if backbone_cfg.get("use_checkpoint"):
        model.set_grad_checkpointing(True)
    return model
