"""Dense task models from a task name, a backbone name and options: the one place that turns them into a model, used
by training, by saved checkpoints (``config.json``) and by the CLI.

A task model carries ``model.task_config`` — a JSON-ready dict (``task``, ``architecture`` = the backbone name,
``model_args``, ``num_classes``, ``head_args``, ``data_config``, ``label_names``) from which :func:`model_from_config`
rebuilds it; :func:`uniformer.save_pretrained` writes it as ``config.json`` beside ``model.safetensors``.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional, Sequence

import timm
import torch
import torch.nn as nn

from .._io import PathLike
from ..models.factory import create_model, list_models, resolve_model_name
from ..models.weights import load_checkpoint, load_task_weights, read_model_config
from ..models.uniformer_video import PROTOCOL_KEY, VideoProtocol
from .official import from_official_config
from .segmentation import SegmentationModel, backbone_channels

__all__ = ["DENSE_TASKS", "LEGACY_DENSE_NAMES", "build_backbone", "resolve_backbone_name", "backbone_channels", "build_task_model",
           "model_from_config", "task_backbone", "load_pretrained"]

DENSE_TASKS = ("segmentation", "detection", "pose")


# The dense backbones' names before they became timm feature extractors: runs saved with them keep loading.
LEGACY_DENSE_NAMES = {f"uniformer_{size}_dense": f"uniformer_{size}" for size in ("small", "base", "xxs", "xs")}


def resolve_backbone_name(name: str) -> str:
    """``name`` with a legacy ``*_dense`` name mapped, if it names one of our models or any model in timm's registry;
    else ``ValueError`` with close-name suggestions."""
    arch, dot, tag = name.partition(".")
    name = LEGACY_DENSE_NAMES.get(arch, arch) + dot + tag
    if arch in timm.list_models() and arch not in list_models():
        return name  # a plain timm model (resnet18, convnext_tiny, ...)
    return resolve_model_name(name)  # ours; unknown names: one line with close-name suggestions


def _stride_4_to_32(name: str, args: Mapping[str, Any]) -> nn.Module:
    """A timm model's ``features_only`` extractor restricted to its stride 4, 8, 16 and 32 maps (``out_indices`` in
    ``args`` chooses them instead). The levels are read from a weightless copy on the meta device."""
    if "out_indices" in args:
        return timm.create_model(name, features_only=True, **args)
    with torch.device("meta"):
        info = timm.create_model(name, features_only=True, **args).feature_info
    strides = list(info.reduction())
    missing = [s for s in (4, 8, 16, 32) if s not in strides]
    if missing:
        raise ValueError(f"{name} cannot serve as a dense backbone: its feature maps have strides {strides}, "
                         "the dense heads need 4, 8, 16 and 32")
    keep = tuple(info.out_indices[strides.index(s)] for s in (4, 8, 16, 32))
    return timm.create_model(name, features_only=True, out_indices=keep, **args)


def build_backbone(name: str, model_args: Optional[Mapping[str, Any]] = None, drop_path_rate: float = 0.0) -> nn.Module:
    """A backbone returning its stride 4/8/16/32 maps: timm's ``features_only=True`` on a model name. UniFormer
    image models give their dense backbone (the official ``norm1..4`` on every stage; ``model_args`` may set
    ``windows``/``hybrid``/``window_size``, ``out_indices``, ``frozen_stages``, ``norm_eval``); any other timm model
    with stride 4..32 features (``resnet18``, ``convnext_tiny``, ...) gives those four maps."""
    name = resolve_backbone_name(name)
    args = dict(model_args or {})
    if drop_path_rate:
        args["drop_path_rate"] = drop_path_rate
    ours = name.partition(".")[0] in list_models()
    try:
        backbone = create_model(name, features_only=True, **args) if ours else _stride_4_to_32(name, args)
    except (RuntimeError, TypeError, AssertionError) as e:
        raise ValueError(f"{name} cannot serve as a dense backbone (timm features_only failed: {e})") from None
    if getattr(getattr(backbone, "model", backbone), "dims", 2) != 2:
        raise ValueError(f"{name} is a video model; the dense tasks need an image backbone such as uniformer_small")
    return backbone


def task_backbone(model: nn.Module) -> nn.Module:
    """The backbone inside a task model (Mask R-CNN keeps it in ``backbone.body``, under its FPN)."""
    backbone = model.backbone
    return getattr(backbone, "body", backbone)


def build_task_model(
    task: str,
    backbone: str,
    num_classes: int,
    model_args: Optional[Mapping[str, Any]] = None,
    head_args: Optional[Mapping[str, Any]] = None,
    data_config: Optional[Mapping[str, Any]] = None,
    label_names: Optional[Sequence[str]] = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build a dense task model on the backbone ``backbone`` (a model name).

    - ``segmentation``: :class:`~uniformer.tasks.segmentation.SegmentationModel` with ``num_classes`` classes;
      ``head_args``: ``head`` ('fpn', 'upernet', 'vt-fpn') and that head's keywords.
    - ``detection``: ``head_args['detector']`` 'mask_rcnn' (default): torchvision Mask R-CNN via
      :func:`~uniformer.tasks.detection.build_mask_rcnn` for ``num_classes`` object classes (+ background),
      ``head_args``: ``fpn_channels`` and ``MaskRCNN`` keywords; 'cascade_mask_rcnn': the official mmdet Cascade Mask
      R-CNN 3x heads via :func:`~uniformer.tasks.mmdet_rcnn.build_mmdet_detector`, ``head_args``: the options of
      :func:`~uniformer.tasks.mmdet_configs.cascade_task_config`; ``data_config``: ``min_size``, ``max_size``.
    - ``pose``: :class:`~uniformer.tasks.pose.TopDownPoseModel` with ``num_classes`` joints; ``head_args``:
      ``deconv_channels``, ``num_deconv``.
    """
    if task not in DENSE_TASKS:
        raise ValueError(f"task must be one of {DENSE_TASKS}, got {task!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    head_args = dict(head_args or {})
    data_config = dict(data_config or {})
    body = build_backbone(backbone, model_args, drop_path_rate)
    channels = backbone_channels(body)
    model: nn.Module
    if task == "segmentation":
        kwargs = dict(head_args)
        head = kwargs.pop("head", "fpn")
        model = SegmentationModel(body, num_classes, head=head, in_channels=channels, **kwargs)
    elif task == "detection":
        kwargs = dict(head_args)
        detector = kwargs.pop("detector", "mask_rcnn")
        sizes = dict(min_size=int(data_config.get("min_size", 800)), max_size=int(data_config.get("max_size", 1333)))
        if detector == "mask_rcnn":
            from .detection import build_mask_rcnn

            model = build_mask_rcnn(body, channels, num_classes + 1, **sizes, **kwargs)
        elif detector == "cascade_mask_rcnn":
            from .mmdet_configs import cascade_task_config
            from .mmdet_rcnn import build_mmdet_detector

            model = build_mmdet_detector(cascade_task_config(num_classes, channels, **kwargs), body, **sizes)
        else:
            raise ValueError(f"detector must be 'mask_rcnn' or 'cascade_mask_rcnn', got {detector!r}")
    else:
        from .pose import TopDownPoseModel

        unknown = sorted(set(head_args) - {"deconv_channels", "num_deconv"})
        if unknown:
            raise ValueError(f"unknown pose head option(s) {unknown}; expected deconv_channels, num_deconv")
        model = TopDownPoseModel(body, channels, num_joints=num_classes, **head_args)
    model.task_config = {
        "task": task,
        "architecture": LEGACY_DENSE_NAMES.get(backbone.split(".")[0], backbone.split(".")[0]),
        "model_args": copy.deepcopy(dict(model_args or {})),
        "num_classes": num_classes,
        "head_args": copy.deepcopy(head_args),
        "data_config": copy.deepcopy(data_config),
        "label_names": list(label_names) if label_names is not None else None,
    }
    return model


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild (without weights) the task model a saved ``config.json`` describes (an official model from the mm model
    dict it carries as ``official_model``)."""
    if config.get("official_model"):
        model = from_official_config({"model": config["official_model"]})
        saved = {k: copy.deepcopy(config[k]) for k in ("official_name", "label_names", "data_config") if k in config}
        model.task_config = dict(model.task_config, **saved)
        return model
    missing = [k for k in ("task", "architecture", "num_classes") if k not in config]
    if missing:
        raise ValueError(f"task model config lacks {missing}")
    return build_task_model(config["task"], config["architecture"], int(config["num_classes"]),
                            model_args=config.get("model_args"), head_args=config.get("head_args"),
                            data_config=config.get("data_config"), label_names=config.get("label_names"))


def load_pretrained(path: PathLike, **overrides: Any) -> nn.Module:
    """Build the model described by a saved folder's ``config.json`` and load its weights (see :func:`uniformer.save_pretrained`): a classifier, or a dense task model from its task config."""
    config = read_model_config(path)
    if config is None:
        raise FileNotFoundError(f"no config.json in {path}: pass the model name and use load_checkpoint instead")
    if config.get("task"):  # a dense task model: rebuild it from its own config, load its weights strictly
        model = model_from_config(config)
        load_task_weights(model, path)
        return model
    kwargs = dict(config.get("model_args", {}), num_classes=config.get("num_classes", 1000))
    kwargs.update(overrides)
    saved_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get("pretrained_cfg", {}).items()}
    model = create_model(config["architecture"], pretrained_cfg_overlay=saved_cfg, **kwargs)
    load_checkpoint(model, path)
    labels = config.get("label_names") or config.get("pretrained_cfg", {}).get("label_names")
    if labels:
        model.pretrained_cfg = dict(model.pretrained_cfg, label_names=tuple(labels))
    if config.get(PROTOCOL_KEY):  # a video model's evaluation protocol
        model.pretrained_cfg = dict(model.pretrained_cfg, **{PROTOCOL_KEY: VideoProtocol.from_dict(config[PROTOCOL_KEY])})
    return model
