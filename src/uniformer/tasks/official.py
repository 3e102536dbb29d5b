"""Official dense models whole: an official mmdet / mmseg / mmpose config of the Sense-X/UniFormer repository → our
task model with the official structure, and the official checkpoint loaded strictly into it.

:func:`from_official_config` takes a config file (read without executing it, ``_base_`` merged: see
:mod:`uniformer.tasks.mmconfig`), a config dict (the whole config or its ``model`` entry), or the name of an official
config (:mod:`uniformer.tasks.official_zoo`, e.g. ``mask_rcnn_1x_hybrid_small`` or
``upernet_global_small/test_config_h32``). The model types map as

- ``EncoderDecoder`` (FPN + FPNHead, UPerHead + FCNHead) → :class:`~uniformer.tasks.segmentation.SegmentationModel`,
- ``MaskRCNN`` / ``CascadeRCNN`` → the torchvision-based detectors of :mod:`uniformer.tasks.mmdet_rcnn`,
- ``TopDown`` (TopDownSimpleHead) → :class:`~uniformer.tasks.pose.TopDownPoseModel`,

each on the backbone of :mod:`uniformer.tasks.official_backbone`. A checkpoint in the official layout
(``state_dict``/``meta`` wrapper, ``backbone.``/``neck.``/``rpn_head.``/``roi_head.``/``decode_head.``/
``auxiliary_head.``/``keypoint_head.`` keys) is converted and loaded strictly with a key report; a checkpoint saved by
this library for the same model (our key names) loads as it is.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..models.weights import read_checkpoint
from ..data.coco_keypoints import COCO_KEYPOINT_NAMES
from ..data.mm_pipelines import ade20k_class_names
from . import mmdet_configs, mmdet_rcnn, mmdet_weights, mmseg, pose
from .mmconfig import read_mm_config
from .official_backbone import build_official_backbone, official_backbone_name
from .official_zoo import OFFICIAL_DENSE_CONFIGS, OfficialConfig, official_config_entry
from .segmentation import SegmentationModel

__all__ = ["from_official_config", "load_official_checkpoint", "official_model_config", "official_task",
           "official_test_options",
           "OFFICIAL_PREFIXES"]

_logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
OFFICIAL_PREFIXES = ("backbone.", "neck.", "rpn_head.", "roi_head.", "decode_head.", "auxiliary_head.",
                     "keypoint_head.")
_TASKS = {"EncoderDecoder": "segmentation", "MaskRCNN": "detection", "CascadeRCNN": "detection", "TopDown": "pose"}


def official_task(model_cfg: Mapping[str, Any]) -> str:
    """'segmentation', 'detection' or 'pose' for an mm model dict (``ValueError`` for other model types)."""
    kind = model_cfg.get("type") if isinstance(model_cfg, Mapping) else None
    if kind not in _TASKS:
        raise ValueError(f"model type {kind!r} is not an official UniFormer dense model; expected one of "
                         f"{sorted(_TASKS)}")
    return _TASKS[kind]


def official_model_config(name: str) -> Dict[str, Any]:
    """The full config dict (``{'model': ..., 'test_cfg'?: ...}``, full-size official structure) of an official
    config by name or official path, as the official files define it."""
    entry = official_config_entry(name)
    if entry.task == "detection":
        cfg = mmdet_configs.official_detector_config(entry.name)
    elif entry.task == "segmentation":
        cfg = mmseg.official_segmentor_config(entry.name)
    else:
        cfg = pose.official_pose_config(entry.name)
    return cfg if "model" in cfg else {"model": cfg}


def _split_config(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(whole config, model dict with its test_cfg) from a whole config or a bare model dict."""
    whole = dict(config) if "model" in config else {"model": dict(config)}
    model_cfg = copy.deepcopy(dict(whole["model"]))
    if not isinstance(model_cfg, dict) or "type" not in model_cfg:
        raise ValueError("the config's model entry must be a dict with a 'type' (e.g. dict(type='MaskRCNN', ...))")
    if "test_cfg" not in model_cfg and isinstance(whole.get("test_cfg"), Mapping):
        model_cfg["test_cfg"] = copy.deepcopy(dict(whole["test_cfg"]))  # mmseg/mmdet before test_cfg moved in model
    if "train_cfg" not in model_cfg and isinstance(whole.get("train_cfg"), Mapping):
        model_cfg["train_cfg"] = copy.deepcopy(dict(whole["train_cfg"]))
    return whole, model_cfg


def _resolve(config: Union[PathLike, Mapping[str, Any]]) -> Tuple[Dict[str, Any], Optional[OfficialConfig]]:
    if isinstance(config, Mapping):
        return read_mm_config(config), None
    text = os.fspath(config)
    if os.path.isfile(text):
        entry = next((e for e in OFFICIAL_DENSE_CONFIGS.values() if text.endswith(e.path)), None)
        return read_mm_config(text), entry
    if text.endswith(".py") and os.sep in text and not any(text.endswith(e.path) for e in OFFICIAL_DENSE_CONFIGS.values()):
        raise FileNotFoundError(f"config file {text} not found")
    entry = official_config_entry(text)  # a zoo name or official path: ValueError with suggestions otherwise
    return official_model_config(entry.name), entry


def _pipeline_steps(whole: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    """The test pipeline's steps (MultiScaleFlipAug's transforms inlined, its img_scale kept on it)."""
    test = ((whole.get("data") or {}).get("test") or {}) if isinstance(whole.get("data"), Mapping) else {}
    steps: List[Mapping[str, Any]] = []
    for step in test.get("pipeline") or whole.get("test_pipeline") or []:
        if not isinstance(step, Mapping):
            continue
        steps.append(step)
        for inner in step.get("transforms") or []:
            if isinstance(inner, Mapping):
                steps.append(dict(inner, img_scale=step.get("img_scale")))
    return steps


def official_test_options(whole: Mapping[str, Any], task: str, family: Optional[str] = None) -> Dict[str, Any]:
    """The test-time data options of an official config (its ``data.test`` pipeline and dataset settings; the
    official defaults where the config has none): detection ``img_scale``; segmentation ``img_scale``, ``align``
    (AlignResize, the Semantic FPN configs) and ``reduce_zero_label`` (ADE20K); pose ``image_size`` (w, h),
    ``vis_thr``, ``oks_thr``, ``use_gt_bbox``, ``det_bbox_thr``."""
    steps = _pipeline_steps(whole)
    kinds = {s.get("type") for s in steps}
    scale = next((tuple(s["img_scale"]) for s in steps if s.get("type") == "MultiScaleFlipAug" and s.get("img_scale")),
                 None)
    if task == "detection":
        return {"img_scale": list(scale or (1333, 800))}
    if task == "segmentation":
        test = (whole.get("data") or {}).get("test") or {} if isinstance(whole.get("data"), Mapping) else {}
        align = "AlignResize" in kinds if kinds else family == "fpn"
        return {"img_scale": list(scale or (2048, 512)), "align": bool(align),
                "reduce_zero_label": bool(test.get("reduce_zero_label", True))}
    data_cfg = whole.get("data_cfg") if isinstance(whole.get("data_cfg"), Mapping) else {}
    size = data_cfg.get("image_size") or whole.get("image_size_wh") or [192, 256]
    return {"image_size": [int(size[0]), int(size[1])], "vis_thr": float(data_cfg.get("vis_thr", 0.2)),
            "oks_thr": float(data_cfg.get("oks_thr", 0.9)), "use_gt_bbox": bool(data_cfg.get("use_gt_bbox", False)),
            "det_bbox_thr": float(data_cfg.get("det_bbox_thr", 0.0))}


def _class_names(task: str, count: int, checkpoint_meta: Optional[Mapping[str, Any]]) -> Optional[List[str]]:
    classes = (checkpoint_meta or {}).get("CLASSES")
    if isinstance(classes, (list, tuple)) and len(classes) == count and all(isinstance(c, str) for c in classes):
        return list(classes)
    if task == "segmentation" and count == 150:
        return ade20k_class_names()
    if task == "detection" and count == 80:
        return mmdet_configs.coco80_class_names()
    if task == "pose" and count == len(COCO_KEYPOINT_NAMES):
        return list(COCO_KEYPOINT_NAMES)
    return None


def _family(model_cfg: Mapping[str, Any]) -> Optional[str]:
    """'fpn' / 'upernet' for a segmentor dict (by its decode head), else None."""
    head = (model_cfg.get("decode_head") or {}).get("type") if isinstance(model_cfg.get("decode_head"), Mapping) else None
    return {"FPNHead": "fpn", "UPerHead": "upernet"}.get(head)


def _num_classes(task: str, model_cfg: Mapping[str, Any]) -> int:
    if task == "segmentation":
        return int(model_cfg["decode_head"]["num_classes"])
    if task == "pose":
        return int(model_cfg["keypoint_head"]["out_channels"])
    head = model_cfg["roi_head"]["bbox_head"]
    return int((head[0] if isinstance(head, (list, tuple)) else head)["num_classes"])


def from_official_config(config: Union[PathLike, Mapping[str, Any]],
                         checkpoint: Optional[Union[PathLike, Mapping[str, Any]]] = None) -> nn.Module:
    """Our task model with the official structure of ``config`` (a config file path, a config dict or a bare model
    dict, or an official config name), optionally loading ``checkpoint`` (a file, or an in-memory checkpoint / state
    dict) strictly through :func:`load_official_checkpoint`. The model is returned in eval mode; it carries
    ``official_config`` (the model dict) and ``task_config`` (so :func:`uniformer.save_pretrained` round-trips it)."""
    whole, entry = _resolve(config)
    whole, model_cfg = _split_config(whole)
    task = official_task(model_cfg)
    if "backbone" not in model_cfg or not isinstance(model_cfg["backbone"], Mapping):
        raise ValueError(f"the {model_cfg['type']} config has no backbone dict")
    backbone = build_official_backbone(model_cfg["backbone"], out_indices=(3,) if task == "pose" else (0, 1, 2, 3))
    if task == "segmentation":
        model = mmseg.build_mmseg_segmentor(model_cfg, backbone)
    elif task == "detection":
        model = mmdet_rcnn.build_mmdet_detector(model_cfg, backbone)
    else:
        model = pose.build_mmpose_model(model_cfg, backbone)
    model.official_config = copy.deepcopy(model_cfg)
    meta: Optional[Mapping[str, Any]] = None
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else None
        load_official_checkpoint(model, ckpt)
    model.official_entry = entry
    model.task_config = {
        "task": task,
        "architecture": official_backbone_name(model_cfg["backbone"]),
        "official_model": copy.deepcopy(model_cfg),
        "official_name": entry.name if entry else None,
        "num_classes": _num_classes(task, model_cfg),
        "label_names": _class_names(task, _num_classes(task, model_cfg), meta),
        "model_args": {}, "head_args": {},
        "data_config": official_test_options(whole, task, entry.family if entry else _family(model_cfg)),
    }
    return model.eval()


def _converter(model: nn.Module):
    """The official→ours key converter for the model's task."""
    task = official_task(model.official_config) if hasattr(model, "official_config") else _model_task(model)
    if task is None:
        raise ValueError(f"{type(model).__name__} is not an official dense model (build it with from_official_config)")
    return {"segmentation": mmseg.convert_mmseg_state_dict, "detection": mmdet_weights.convert_mmdet_state_dict,
            "pose": pose.convert_mmpose_state_dict}[task]


def _model_task(model: nn.Module) -> Optional[str]:
    if isinstance(model, SegmentationModel):
        return "segmentation"
    if isinstance(model, pose.TopDownPoseModel):
        return "pose"
    if hasattr(model, "roi_heads"):
        return "detection"
    return None


def _short(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _state_dict_of(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            checkpoint = inner
            break
    if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = sorted(str(k) for k in checkpoint)[:8]
        raise ValueError(f"no state dict of tensors found (looked at the top level and under state_dict, model, "
                         f"model_state); found keys {found}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in checkpoint.items()}


def load_official_checkpoint(model: nn.Module, source: Union[PathLike, Mapping[str, Any]],
                             strict: bool = True) -> Tuple[List[str], List[str]]:
    """Load an official dense checkpoint (or one of ours for the same model) into a model built by
    :func:`from_official_config`. Returns ``(missing, unexpected)``; with ``strict`` (default) any missing or
    unexpected key, or a shape mismatch, is a ``ValueError`` listing them, and nothing is loaded."""
    checkpoint = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    state = _state_dict_of(checkpoint)
    own = model.state_dict()
    official = any(k.startswith(OFFICIAL_PREFIXES[1:]) for k in state) or \
        (any(k.startswith("backbone.") for k in state) and not all(k in own for k in state))
    layout = "official" if official else "ours"
    if official:
        state = _converter(model)(state, model)
    mismatched = [f"{k} (checkpoint {list(v.shape)} vs model {list(own[k].shape)})" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    what = f"{type(model).__name__} ({layout} key layout)"
    if mismatched:
        raise ValueError(f"checkpoint does not match {what}: {len(mismatched)} shape mismatch(es): "
                         f"{_short(mismatched, 4)}")
    if strict and (missing or unexpected):
        parts = [f"{what_} {len(keys)} key(s): {_short(keys)}" for what_, keys in
                 (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ValueError(f"checkpoint does not match {what}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    _logger.info("loaded %d tensors (%s layout) into %s", len(state) - len(unexpected), layout, type(model).__name__)
    if missing or unexpected:
        _logger.warning("non-strict load: %d missing, %d unexpected keys", len(missing), len(unexpected))
    return missing, unexpected
