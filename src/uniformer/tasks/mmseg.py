"""The official mmseg 0.13 ``EncoderDecoder`` segmentation models whole (spec ``dense-official.md`` §3).

:func:`official_segmentor_config` gives the full-size model dict of an official config by name,
:func:`build_mmseg_segmentor` turns an ``EncoderDecoder`` model dict into a
:class:`~uniformer.tasks.segmentation.SegmentationModel` with the official structure (the heads of
:mod:`uniformer.tasks.seg_heads`; every size from the config, unsupported options refused by name),
:func:`convert_mmseg_state_dict` maps official checkpoint keys onto it, and :func:`mmseg_inference` is mmseg's
whole-image test (no padding; logits resized to the input, then to the original size; softmax; argmax).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.common import eval_mode
from .seg_heads import STRIDES
from .segmentation import SegmentationModel, backbone_channels

__all__ = ["build_mmseg_segmentor", "convert_mmseg_state_dict", "mmseg_inference", "official_segmentor_config",
           "official_segmentor_names"]


# ----------------------------------------------------------------------------------------------------------------------
# official mmseg configs → SegmentationModel
# ----------------------------------------------------------------------------------------------------------------------

_HEAD_COMMON = ("type", "in_channels", "in_index", "channels", "num_classes", "dropout_ratio", "norm_cfg", "act_cfg",
                "conv_cfg", "align_corners", "loss_decode", "ignore_index", "sampler", "input_transform", "init_cfg")
_HEAD_EXTRA = {"FPNHead": ("feature_strides",), "UPerHead": ("pool_scales",),
               "FCNHead": ("num_convs", "kernel_size", "concat_input")}
_FPN_NECK_DEFAULTS = (("start_level", 0), ("end_level", -1), ("add_extra_convs", False),
                      ("extra_convs_on_inputs", False), ("relu_before_extra_convs", False),
                      ("no_norm_on_lateral", False), ("conv_cfg", None), ("norm_cfg", None), ("act_cfg", None))
_MODEL_KEYS = ("type", "backbone", "neck", "decode_head", "auxiliary_head", "train_cfg", "test_cfg", "pretrained",
               "init_cfg")


def _ints(value: Any, what: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    try:
        return tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{what} must be an int or a list of ints, got {value!r}") from None


def _check_head(cfg: Mapping[str, Any], where: str, expected: Sequence[str]) -> str:
    """Validate a decode/auxiliary head dict's generic options (ValueError naming the option); return its type."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(cfg).__name__} (lists of heads, i.e. "
                         "CascadeEncoderDecoder, are not supported)")
    kind = cfg.get("type")
    if kind not in expected:
        raise ValueError(f"{where} type {kind!r} is not supported; expected {' or '.join(expected)}")
    allowed = _HEAD_COMMON + _HEAD_EXTRA[kind]
    unknown = sorted(k for k in cfg if k not in allowed)
    if unknown:
        raise ValueError(f"{where} ({kind}): unsupported option(s) {unknown}; supported: {sorted(allowed)}")
    for key in ("in_channels", "channels", "num_classes"):
        if key not in cfg:
            raise ValueError(f"{where} ({kind}) lacks {key!r}")
    norm = cfg.get("norm_cfg")
    if not isinstance(norm, Mapping) or norm.get("type") not in ("BN", "SyncBN"):
        raise ValueError(f"{where} ({kind}): norm_cfg {norm!r} is not supported; expected dict(type='BN' or "
                         "'SyncBN') (heads without a norm use biased convs, which this port does not build)")
    extra = sorted(set(norm) - {"type", "requires_grad"})
    if extra:
        raise ValueError(f"{where} ({kind}): norm_cfg option(s) {extra} are not supported (BatchNorm eps 1e-5, "
                         "momentum 0.1 only)")
    act = cfg.get("act_cfg")
    if act is not None and (not isinstance(act, Mapping) or act.get("type") != "ReLU"
                            or set(act) - {"type", "inplace"}):
        raise ValueError(f"{where} ({kind}): act_cfg {act!r} is not supported; expected dict(type='ReLU')")
    for key, default in (("conv_cfg", None), ("align_corners", False), ("sampler", None), ("ignore_index", 255)):
        if cfg.get(key, default) != default:
            raise ValueError(f"{where} ({kind}): {key}={cfg[key]!r} is not supported; expected {default!r}")
    transform = cfg.get("input_transform")
    expected_transform = None if kind == "FCNHead" else "multiple_select"
    if transform is not None and transform != expected_transform:
        raise ValueError(f"{where} ({kind}): input_transform={transform!r} is not supported; expected "
                         f"{expected_transform!r}")
    loss = cfg.get("loss_decode", {"type": "CrossEntropyLoss"})
    if isinstance(loss, (list, tuple)) or not isinstance(loss, Mapping) or loss.get("type") != "CrossEntropyLoss" \
            or loss.get("use_sigmoid", False) or loss.get("use_mask", False) or loss.get("class_weight") is not None:
        raise ValueError(f"{where} ({kind}): loss_decode {loss!r} is not supported; expected a plain softmax "
                         "dict(type='CrossEntropyLoss', use_sigmoid=False)")
    return kind


def _loss_weight(cfg: Mapping[str, Any]) -> float:
    return float(cfg.get("loss_decode", {}).get("loss_weight", 1.0))


def _check_fpn_neck(neck: Mapping[str, Any], channels: Sequence[int]) -> int:
    """Validate an mmseg ``FPN`` neck dict against the backbone channels; return its out_channels."""
    if not isinstance(neck, Mapping) or neck.get("type") != "FPN":
        kind = neck.get("type") if isinstance(neck, Mapping) else type(neck).__name__
        raise ValueError(f"neck type {kind!r} is not supported; expected 'FPN' (or no neck with UPerHead)")
    allowed = ("type", "in_channels", "out_channels", "num_outs", "upsample_cfg", "init_cfg") + \
        tuple(k for k, _ in _FPN_NECK_DEFAULTS)
    unknown = sorted(k for k in neck if k not in allowed)
    if unknown:
        raise ValueError(f"neck FPN: unsupported option(s) {unknown}; supported: {sorted(allowed)}")
    for key, default in _FPN_NECK_DEFAULTS:
        if neck.get(key, default) != default:
            raise ValueError(f"neck FPN: {key}={neck[key]!r} is not supported; expected {default!r} (4 levels in, "
                             "4 out, no extra convs, no norm)")
    upsample = neck.get("upsample_cfg", {"mode": "nearest"})
    if dict(upsample) != {"mode": "nearest"}:
        raise ValueError(f"neck FPN: upsample_cfg {upsample!r} is not supported; expected dict(mode='nearest')")
    in_channels = _ints(neck.get("in_channels", ()), "neck in_channels")
    if list(in_channels) != list(channels):
        raise ValueError(f"neck FPN in_channels {list(in_channels)} do not match the backbone's channels "
                         f"{list(channels)}")
    num_outs = int(neck.get("num_outs", len(in_channels)))
    if num_outs != len(in_channels):
        raise ValueError(f"neck FPN num_outs={num_outs} is not supported; expected {len(in_channels)} (no extra "
                         "levels)")
    return int(neck["out_channels"])


def build_mmseg_segmentor(model_cfg: Mapping[str, Any], backbone: nn.Module) -> SegmentationModel:
    """A :class:`~uniformer.tasks.segmentation.SegmentationModel` with the structure of an mmseg 0.13
    ``EncoderDecoder`` model dict (``config['model']``) on ``backbone`` (e.g. from
    :func:`~uniformer.tasks.official_backbone.build_official_backbone`): ``FPN`` neck + ``FPNHead`` (→ ``head='fpn'``)
    or ``UPerHead`` without a neck (→ ``head='upernet'``), optionally an ``FCNHead`` ``auxiliary_head``. Every size
    comes from the config (channels, pool_scales, in_index, num_classes, num_convs, kernel_size, concat_input,
    dropout_ratio, the aux loss weight); anything this port does not build (other head/neck types, extra FPN levels,
    other norms or activations, align_corners=True, other losses) is a ``ValueError`` naming the option. The model
    records the config's ``test_cfg`` (default ``{'mode': 'whole'}``) as ``model.test_cfg``.
    """
    if not isinstance(model_cfg, Mapping) or model_cfg.get("type") != "EncoderDecoder":
        kind = model_cfg.get("type") if isinstance(model_cfg, Mapping) else type(model_cfg).__name__
        raise ValueError(f"model type {kind!r} is not supported; expected 'EncoderDecoder'")
    unknown = sorted(k for k in model_cfg if k not in _MODEL_KEYS)
    if unknown:
        raise ValueError(f"EncoderDecoder: unsupported key(s) {unknown}; supported: {sorted(_MODEL_KEYS)}")
    if "decode_head" not in model_cfg:
        raise ValueError("EncoderDecoder config lacks 'decode_head'")
    channels = backbone_channels(backbone)
    head_cfg = model_cfg["decode_head"]
    neck_cfg = model_cfg.get("neck")
    kind = _check_head(head_cfg, "decode_head", ("FPNHead", "UPerHead"))
    num_classes = int(head_cfg["num_classes"])
    if _loss_weight(head_cfg) != 1.0:
        raise ValueError(f"decode_head loss_weight={_loss_weight(head_cfg)} is not supported; expected 1.0")
    head_in = _ints(head_cfg["in_channels"], "decode_head in_channels")
    in_index = _ints(head_cfg.get("in_index", -1), "decode_head in_index")
    if list(in_index) != list(range(len(channels))):
        raise ValueError(f"decode_head in_index {list(in_index)} is not supported; expected all levels "
                         f"{list(range(len(channels)))}")
    kwargs: Dict[str, Any] = {"dropout": float(head_cfg.get("dropout_ratio", 0.1))}
    if kind == "FPNHead":
        if neck_cfg is None:
            raise ValueError("decode_head FPNHead without a neck is not supported; expected neck=dict(type='FPN')")
        out_channels = _check_fpn_neck(neck_cfg, channels)
        if list(head_in) != [out_channels] * len(channels):
            raise ValueError(f"decode_head FPNHead in_channels {list(head_in)} do not match the neck's outputs "
                             f"{[out_channels] * len(channels)}")
        strides = _ints(head_cfg.get("feature_strides", STRIDES), "feature_strides")
        if list(strides) != list(STRIDES[: len(channels)]):
            raise ValueError(f"decode_head FPNHead feature_strides {list(strides)} are not supported; expected "
                             f"{list(STRIDES[: len(channels)])} (the backbone's)")
        head = "fpn"
        kwargs.update(neck_channels=out_channels, head_channels=int(head_cfg["channels"]))
    else:
        if neck_cfg is not None:
            raise ValueError(f"decode_head UPerHead after a neck ({neck_cfg.get('type')!r}) is not supported; "
                             "expected no neck")
        if list(head_in) != list(channels):
            raise ValueError(f"decode_head UPerHead in_channels {list(head_in)} do not match the backbone's "
                             f"channels {list(channels)}")
        head = "upernet"
        kwargs.update(channels=int(head_cfg["channels"]),
                      pool_scales=tuple(_ints(head_cfg.get("pool_scales", (1, 2, 3, 6)), "pool_scales")))
    aux_cfg = model_cfg.get("auxiliary_head")
    if aux_cfg is not None:
        _check_head(aux_cfg, "auxiliary_head", ("FCNHead",))
        index = _ints(aux_cfg.get("in_index", -1), "auxiliary_head in_index")
        if len(index) != 1 or not -len(channels) <= index[0] < len(channels):
            raise ValueError(f"auxiliary_head in_index {aux_cfg.get('in_index')!r} must be one level index in "
                             f"0..{len(channels) - 1}")
        aux_in = _ints(aux_cfg["in_channels"], "auxiliary_head in_channels")
        if list(aux_in) != [channels[index[0]]]:
            raise ValueError(f"auxiliary_head in_channels {aux_cfg['in_channels']!r} do not match backbone level "
                             f"{index[0]}'s {channels[index[0]]} channels")
        if int(aux_cfg["num_classes"]) != num_classes:
            raise ValueError(f"auxiliary_head num_classes {aux_cfg['num_classes']} differs from decode_head's "
                             f"{num_classes}")
        kwargs.update(aux_channels=int(aux_cfg["channels"]), aux_in_index=index[0],
                      aux_dropout=float(aux_cfg.get("dropout_ratio", 0.1)), aux_weight=_loss_weight(aux_cfg),
                      aux_num_convs=int(aux_cfg.get("num_convs", 2)),
                      aux_kernel_size=int(aux_cfg.get("kernel_size", 3)),
                      aux_concat_input=bool(aux_cfg.get("concat_input", True)))
    test_cfg = dict(model_cfg.get("test_cfg") or {"mode": "whole"})
    if test_cfg.get("mode", "whole") not in ("whole", "slide"):
        raise ValueError(f"test_cfg mode {test_cfg.get('mode')!r} is not supported; expected 'whole' or 'slide'")
    model = SegmentationModel(backbone, num_classes, head=head, in_channels=channels, aux_head=aux_cfg is not None,
                              **kwargs)
    model.test_cfg = test_cfg
    return model


_CONV_MODULE = re.compile(r"\.(conv|bn)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_NECK = re.compile(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$")


def _convert_key(key: str) -> str:
    if key.startswith("backbone."):
        return key
    m = _NECK.match(key)
    if m:
        blocks = "inner_blocks" if m.group(1) == "lateral_convs" else "layer_blocks"
        return f"neck.fpn.{blocks}.{m.group(2)}.0.{m.group(3)}"
    if key.startswith(("decode_head.", "auxiliary_head.")):
        return _CONV_MODULE.sub(lambda g: f".{'0' if g.group(1) == 'conv' else '1'}.{g.group(2)}", key)
    return key


def convert_mmseg_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official mmseg checkpoint keys → the keys of ``model`` (built by :func:`build_mmseg_segmentor`):
    ``backbone.*`` unchanged; ``neck.lateral_convs.i.conv`` / ``neck.fpn_convs.i.conv`` →
    ``neck.fpn.inner_blocks.i.0`` / ``neck.fpn.layer_blocks.i.0`` (torchvision FPN); in ``decode_head.*`` and
    ``auxiliary_head.*`` every mmcv ``ConvModule`` ``.conv`` / ``.bn`` → ``.0`` / ``.1`` (BN buffers including
    ``num_batches_tracked``). Keys of other prefixes pass through unchanged, so a strict load reports them. Raises
    ``ValueError`` if ``model`` is not a Semantic FPN / UperNet :class:`SegmentationModel`.
    """
    head_type = getattr(model, "head_type", None)
    if head_type not in ("fpn", "upernet"):
        raise ValueError(f"convert_mmseg_state_dict needs a SegmentationModel with head 'fpn' or 'upernet' (the "
                         f"official structures), got {type(model).__name__} with head {head_type!r}")
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _convert_key(key)
        if new in out:
            raise ValueError(f"two checkpoint keys map onto {new!r} (the second is {key!r})")
        out[new] = value
    return out


def mmseg_inference(model: nn.Module, img: torch.Tensor, ori_shape: Sequence[int]) -> Dict[str, torch.Tensor]:
    """mmseg 0.13 ``EncoderDecoder`` whole-mode test of a model from :func:`build_mmseg_segmentor` on ``img``
    (B, 3, h, w) as the test pipeline produced it (not padded): the decode logits (stride 4, ``decode_logits``),
    resized bilinearly (align_corners=False) to h×w (``logits_resized``), then to ``ori_shape`` ((H, W) or
    (H, W, 3), ``rescale=True``) and softmaxed (``probs_ori``), and the argmax class map (``pred_ori``, (B, H, W)
    int64). Runs in eval mode without autograd (the previous mode is restored). ``ValueError`` if the model's
    ``test_cfg`` asks for slide mode (use :func:`~uniformer.tasks.segmentation.slide_inference`).
    """
    if not isinstance(img, torch.Tensor) or img.ndim != 4:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"mmseg_inference expects an image batch (B, 3, h, w), got {shape}")
    ori = tuple(int(s) for s in ori_shape)[:2]
    if len(ori) != 2 or min(ori) < 1:
        raise ValueError(f"ori_shape must be (H, W) or (H, W, C) with positive sizes, got {tuple(ori_shape)}")
    mode = (getattr(model, "test_cfg", None) or {}).get("mode", "whole")
    if mode != "whole":
        raise ValueError(f"mmseg_inference implements test_cfg mode 'whole'; this model's test_cfg asks for "
                         f"{mode!r} (use slide_inference)")
    with eval_mode(model, no_grad=True):
        feats = model.extract_features(img)
        decode = model.decode_head(model.neck(feats))
        resized = F.interpolate(decode, size=img.shape[-2:], mode="bilinear", align_corners=False)
        probs = F.softmax(F.interpolate(resized, size=ori, mode="bilinear", align_corners=False), dim=1)
    return {"decode_logits": decode, "logits_resized": resized, "probs_ori": probs, "pred_ori": probs.argmax(1)}


# ----------------------------------------------------------------------------------------------------------------------
# the official configs
# ----------------------------------------------------------------------------------------------------------------------

def _official_backbone(size: str) -> Dict[str, Any]:
    """The backbone dict of the official segmentation configs for a size (training-only options omitted)."""
    if size in ("small", "base"):
        layers = [3, 4, 8, 3] if size == "small" else [5, 8, 20, 7]
        return {"type": "UniFormer", "embed_dim": [64, 128, 320, 512], "layers": layers, "head_dim": 64,
                "mlp_ratio": 4.0, "windows": False, "hybrid": False}
    if size == "xs":
        return {"type": "UniFormer_Light", "depth": [3, 5, 9, 3], "conv_stem": True, "embed_dim": [64, 128, 256, 512],
                "head_dim": 32, "mlp_ratio": [3, 3, 3, 3]}
    return {"type": "UniFormer_Light", "depth": [2, 5, 8, 2], "conv_stem": True, "embed_dim": [56, 112, 224, 448],
            "head_dim": 28, "mlp_ratio": [3, 3, 3, 3]}


def _norm() -> Dict[str, Any]:
    return {"type": "SyncBN", "requires_grad": True}


def _loss(weight: float) -> Dict[str, Any]:
    return {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": weight}


_NAME = re.compile(r"(?:(?P<head>upernet)_(?P<attn>global|hybrid)_(?P<size>small|base)"
                   r"|fpn_(?P<fattn>global|hybrid)_(?P<fsize>small|base)|fpn_(?P<light>xxs|xs))"
                   r"(?:/(?P<test>config|test_config_g|test_config_h32|test_config_w32))?")


def official_segmentor_names() -> List[str]:
    """The names :func:`official_segmentor_config` accepts: every official segmentation config folder, and
    ``folder/test_config_{g,h32,w32}`` for the global-trained ones."""
    names = []
    for head in ("fpn", "upernet"):
        for size in ("small", "base"):
            names += [f"{head}_hybrid_{size}", f"{head}_global_{size}"]
            names += [f"{head}_global_{size}/test_config_{t}" for t in ("g", "h32", "w32")]
    return names + ["fpn_xxs", "fpn_xs"]


def official_segmentor_config(name: str) -> Dict[str, Any]:
    """The full-size mmseg model dict (``type='EncoderDecoder'``, with ``test_cfg``) of an official Sense-X/UniFormer
    segmentation config, by folder name (``upernet_global_small``, ``fpn_hybrid_base``, ``fpn_xxs``), folder and test
    config (``upernet_global_small/test_config_h32``: hybrid stage 3 with 32×32 windows; ``_w32``: all windows of 32;
    ``_g``: global) or official path (``semantic_segmentation/exp/upernet_global_small/config.py``). ADE20K, 150
    classes. Hybrid training configs give no window size (the backbone's default 14 applies). Training-only backbone
    options (drop_path_rate, use_checkpoint) are left out. ``ValueError`` listing the names otherwise.
    """
    text = str(name)
    path = re.fullmatch(r"(?:.*/)?semantic_segmentation/(?:fpn_seg/)?(?:exp|exp_light)/(.+)\.py", text)
    if path:
        text = path.group(1)
    m = _NAME.fullmatch(text)
    attn = (m.group("attn") or m.group("fattn")) if m else None
    test = m.group("test") if m else None
    if m is None or (test not in (None, "config") and attn != "global"):
        raise ValueError(f"unknown official segmentation config {name!r}; expected one of "
                         f"{', '.join(official_segmentor_names())}")
    size = m.group("size") or m.group("fsize") or m.group("light")
    backbone = _official_backbone(size)
    if attn == "hybrid":
        backbone["hybrid"] = True
    if test == "test_config_h32":
        backbone.update(hybrid=True, window_size=32)
    elif test == "test_config_w32":
        backbone.update(windows=True, window_size=32)
    dims = list(backbone["embed_dim"])
    if m.group("head") == "upernet":
        return {
            "type": "EncoderDecoder", "pretrained": None, "backbone": backbone,
            "decode_head": {"type": "UPerHead", "in_channels": dims, "in_index": [0, 1, 2, 3],
                            "pool_scales": [1, 2, 3, 6], "channels": 512, "dropout_ratio": 0.1, "num_classes": 150,
                            "norm_cfg": _norm(), "align_corners": False, "loss_decode": _loss(1.0)},
            "auxiliary_head": {"type": "FCNHead", "in_channels": dims[2], "in_index": 2, "channels": 256,
                               "num_convs": 1, "concat_input": False, "dropout_ratio": 0.1, "num_classes": 150,
                               "norm_cfg": _norm(), "align_corners": False, "loss_decode": _loss(0.4)},
            "train_cfg": {}, "test_cfg": {"mode": "whole"},
        }
    return {
        "type": "EncoderDecoder", "backbone": backbone,
        "neck": {"type": "FPN", "in_channels": dims, "out_channels": 256, "num_outs": 4},
        "decode_head": {"type": "FPNHead", "in_channels": [256, 256, 256, 256], "in_index": [0, 1, 2, 3],
                        "feature_strides": [4, 8, 16, 32], "channels": 128, "dropout_ratio": 0.1, "num_classes": 150,
                        "norm_cfg": _norm(), "align_corners": False, "loss_decode": _loss(1.0)},
        "train_cfg": {}, "test_cfg": {"mode": "whole"},
    }
