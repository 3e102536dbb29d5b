"""What is exported for each kind of model (see :mod:`uniformer.export`): the traced module, its example and check
inputs, the graph's input/output names and dynamic axes, the tolerance and the I/O contract recorded with the file."""
from __future__ import annotations

import dataclasses
import logging
from importlib.metadata import version
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.models.detection import MaskRCNN

from ..engine.inference import default_input
from ..tasks.detection import SingleImageMaskRCNN
from ..tasks.mmdet_rcnn import MMDetCascadeRCNN, MMDetFeatures, MMDetMaskRCNN
from .checks import check_example, other_batch

_logger = logging.getLogger("uniformer")



# ------------------------------------------------------------------------------------------------ what to export
@dataclasses.dataclass
class ExportSpec:
    """How a model is exported: the traced ``module`` (the model or its inference entry point) and ``example``, the
    graph's ``input_name`` / ``output_names`` (None: ``logits`` or ``features_i`` from the outputs), its dynamic input
    axes (``dynamic_axes`` axis → name; ``multiple`` > 1 makes the spatial ones multiples of it), the ``checks``
    inputs the exported file is compared on, the ONNX ``exporter`` ('dynamo' or 'torchscript'), the tolerance
    (``atol``, ``rtol``; ``detections``: pair detections before comparing) and the I/O ``contract`` recorded with the
    file."""

    module: nn.Module
    example: torch.Tensor
    input_name: str
    output_names: Optional[List[str]]
    dynamic_axes: Dict[int, str]
    checks: List[torch.Tensor]
    contract: Dict[str, Any]
    exporter: str = "dynamo"
    multiple: int = 1
    atol: float = 1e-4
    rtol: float = 0.0
    detections: bool = False
    output_axes: Dict[str, Dict[int, str]] = dataclasses.field(default_factory=dict)


def task_of(model: nn.Module) -> Optional[str]:
    return (getattr(model, "task_config", None) or {}).get("task")


MIN_SIDE = 64  # dynamic heights / widths: at least 2 cells of the stride-32 map (torch.export specialises on 1 cell)


def _side(n: int) -> int:
    """Another side length for the size check: not the traced one, not a multiple of 32, at least MIN_SIDE."""
    return max(MIN_SIDE + 1, n * 3 // 4 + 5)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _task_contract(model: nn.Module) -> Dict[str, Any]:
    cfg = dict(model.task_config)
    data = dict(cfg.get("data_config") or {})
    return {"exported_by": f"uniformer {version('uniformer')}", "task": cfg["task"], "architecture": cfg.get("architecture"),
            "official": bool(cfg.get("official_model")), "official_name": cfg.get("official_name"),
            "num_classes": cfg.get("num_classes"), "label_names": cfg.get("label_names"), "data_config": data}


def _normalised(data: Dict[str, Any], what: str) -> Dict[str, Any]:
    mean, std = list(data.get("mean") or IMAGENET_DEFAULT_MEAN), list(data.get("std") or IMAGENET_DEFAULT_STD)
    return {"dtype": "float32", "layout": "NCHW", "description": f"{what}: RGB scaled to [0, 1], then (x - mean) / std "
            "per channel", "mean": mean, "std": std, "min_side": MIN_SIDE}


def _segmentation_spec(model: nn.Module, batch_size: int, size: Optional[int]) -> ExportSpec:
    contract = _task_contract(model)
    h, w = (size, size) if size else tuple(contract["data_config"].get("crop_size") or (512, 512))
    h, w = max(h, MIN_SIDE), max(w, MIN_SIDE)
    example = _randn(batch_size, 3, h, w, seed=0)
    k = contract["num_classes"]
    contract.update(
        inputs=[dict(name="image", shape=["batch", 3, "height", "width"], **_normalised(
            contract["data_config"], "images of any height and width >= min_side (resized as at training: "
            "data_config scale / img_scale keeping the aspect ratio)"))],
        outputs=[dict(name="logits", shape=["batch", k, "height", "width"], dtype="float32", layout="NCHW",
                      description="per-pixel class logits at the input size (the stride-4 logits upsampled "
                      "bilinearly inside the graph; the input is zero-padded to a multiple of 32 and the logits "
                      "cropped back); argmax over axis 1 = class index into label_names")])
    return ExportSpec(model, example, "image", ["logits"], {0: "batch", 2: "height", 3: "width"},
                      [example, _randn(batch_size + 1, 3, _side(h), _side(w), seed=1)], contract)


def _pose_spec(model: nn.Module, batch_size: int, size: Optional[int]) -> ExportSpec:
    contract = _task_contract(model)
    data = contract["data_config"]
    if size:
        h, w = size, size * 3 // 4
    elif data.get("input_size"):
        h, w = data["input_size"]
    else:  # official: image_size is (w, h)
        w, h = data.get("image_size") or (192, 256)
    h, w = max(h, MIN_SIDE), max(w, MIN_SIDE)
    example = _randn(batch_size, 3, h, w, seed=0)
    contract.update(
        inputs=[dict(name="image", shape=["batch", 3, "height", "width"], **_normalised(
            data, f"person crops of any height and width >= min_side, {h}x{w} (height x width) as trained: the "
            "person box widened to that aspect ratio, x1.25, affine-warped"))],
        outputs=[dict(name="heatmaps", shape=["batch", model.num_joints, "ceil(height/4)", "ceil(width/4)"],
                      dtype="float32", layout="NCHW", description="one heatmap per joint (label_names) at stride 4; "
                      "its argmax (+ quarter-pixel shift towards the higher neighbour) maps back to the image through "
                      "the crop's affine transform; the maximum is the joint's score")])
    return ExportSpec(model, example, "image", ["heatmaps"], {0: "batch", 2: "height", 3: "width"},
                      [example, _randn(batch_size + 1, 3, _side(h), _side(w), seed=1)], contract)


def _mask_rcnn_spec(model: MaskRCNN, size: Optional[int]) -> ExportSpec:
    contract = _task_contract(model)
    transform = model.transform
    s = size or int(transform.min_size[-1])
    g = torch.Generator().manual_seed(0)
    example = torch.rand(3, s, s * 4 // 3, generator=g)
    other = torch.rand(3, _side(s), s + 13, generator=g)
    contract.update(
        inputs=[dict(name="image", shape=[3, "height", "width"], dtype="float32", layout="CHW",
                     description="one RGB image scaled to [0, 1], any size, NOT normalised: the graph normalises it "
                     "with mean/std and resizes it to short side min_size (long side <= max_size)",
                     mean=list(transform.image_mean), std=list(transform.image_std),
                     min_size=int(transform.min_size[-1]), max_size=int(transform.max_size))],
        outputs=[dict(name="boxes", shape=["detections", 4], dtype="float32",
                      description="x1, y1, x2, y2 in input-image pixels"),
                 dict(name="labels", shape=["detections"], dtype="int64",
                      description="class 1..K; label_names[label - 1] (0 = background, never returned)"),
                 dict(name="scores", shape=["detections"], dtype="float32",
                      description="descending; at least the model's box_score_thresh, at most box_detections_per_img"),
                 dict(name="masks", shape=["detections", 1, "height", "width"], dtype="float32",
                      description="instance mask probabilities at the input size (threshold 0.5)")])
    detections = {0: "detections"}
    return ExportSpec(SingleImageMaskRCNN(model), example, "image", ["boxes", "labels", "scores", "masks"],
                      {1: "height", 2: "width"}, [example, other], contract, exporter="torchscript", rtol=1e-3,
                      detections=True, output_axes={"boxes": detections, "labels": detections, "scores": detections,
                                                    "masks": {0: "detections", 2: "height", 3: "width"}})


def _mmdet_spec(model: nn.Module, batch_size: int, size: Optional[int]) -> ExportSpec:
    _logger.warning("%s: exporting backbone + FPN + RPN head only (MMDetFeatures): the mmdet port's test-time "
                    "post-processing runs image by image on Python-side sizes and loops, which a traced graph would "
                    "freeze at the traced image", type(model).__name__)
    contract = _task_contract(model)
    s = size or 512
    example = _randn(batch_size, 3, s, s, seed=0)
    levels = range(5)
    names = [f"fpn_{i}" for i in levels] + [f"rpn_cls_{i}" for i in levels] + [f"rpn_reg_{i}" for i in levels]
    contract.update(
        inputs=[dict(name="image", shape=["batch", 3, "height", "width"], **_normalised(
            contract["data_config"], "images resized as the mmdet test pipeline does (img_scale), zero-padded at the "
            "right/bottom to multiples of 32 (at least min_side)"))],
        outputs=[dict(name=f"fpn_{i}", shape=["batch", "C", f"height/{4 * 2 ** i}", f"width/{4 * 2 ** i}"],
                      dtype="float32", description=f"FPN map at stride {4 * 2 ** i}") for i in levels]
        + [dict(name=f"rpn_cls_{i}", shape=["batch", "A", f"height/{4 * 2 ** i}", f"width/{4 * 2 ** i}"],
                dtype="float32", description="RPN objectness logits, A anchors per location") for i in levels]
        + [dict(name=f"rpn_reg_{i}", shape=["batch", "4A", f"height/{4 * 2 ** i}", f"width/{4 * 2 ** i}"],
                dtype="float32", description="RPN box deltas (mmdet DeltaXYWH coding)") for i in levels],
        note="backbone + FPN + RPN head only: the proposals, RoI heads, NMS and mask pasting of the mmdet port run "
             "image by image with Python-side sizes and loops over detections (not traceable to one graph); run "
             "them in PyTorch (MMDetMaskRCNN / MMDetCascadeRCNN.simple_test_proposals)")
    return ExportSpec(MMDetFeatures(model), example, "image", names, {0: "batch", 2: "height", 3: "width"},
                      [example, _randn(batch_size + 1, 3, s + 32, s + 64, seed=1)], contract, multiple=32)


def _classifier_spec(model: nn.Module, example: torch.Tensor, dynamic: bool) -> ExportSpec:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    video = example.ndim == 5
    contract = {"exported_by": f"uniformer {version('uniformer')}",
                "task": "video classification" if video else "classification",
                "architecture": cfg.get("architecture") or type(model).__name__,
                "num_classes": getattr(model, "num_classes", None),
                "label_names": list(cfg["label_names"]) if cfg.get("label_names") else None,
                "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
                                if k in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")},
                "inputs": [dict(name="input", shape=["batch" if dynamic else example.shape[0], *example.shape[1:]],
                                dtype="float32", layout="NCTHW" if video else "NCHW",
                                description=("clips" if video else "images") + " resized and centre-cropped as "
                                "data_config says (crop_pct), RGB scaled to [0, 1], then (x - mean) / std",
                                mean=list(cfg.get("mean") or IMAGENET_DEFAULT_MEAN),
                                std=list(cfg.get("std") or IMAGENET_DEFAULT_STD))]}
    checks = [example, other_batch(example)] if dynamic else [example]
    return ExportSpec(model, example, "input", None, {0: "batch"} if dynamic else {}, checks, contract)


def output_names(spec: ExportSpec, outputs: Sequence[torch.Tensor], single: bool) -> List[str]:
    """The graph's output names; for a classifier (``logits``, or ``features_i`` of a dense backbone) they and their
    description in the contract follow from its eager outputs."""
    if spec.output_names is not None:
        return spec.output_names
    batch = "batch" if spec.dynamic_axes else spec.example.shape[0]
    if single:
        spec.contract["outputs"] = [dict(name="logits", shape=[batch, *outputs[0].shape[1:]], dtype="float32",
                                         description="class logits; softmax for probabilities, argmax = index into "
                                         "label_names")]
        return ["logits"]
    names = [f"features_{i}" for i in range(len(outputs))]
    spec.contract["task"] = "features"
    spec.contract["outputs"] = [dict(name=n, shape=[batch, *t.shape[1:]], dtype="float32", layout="NCHW",
                                     description="backbone feature map") for n, t in zip(names, outputs)]
    return names


def export_spec(model: nn.Module, example: Optional[torch.Tensor] = None, batch_size: int = 1,
                size: Optional[int] = None, dynamic: bool = True) -> ExportSpec:
    """How ``model`` is exported (see the module docstring): classifiers and backbones as they are, with a dynamic
    batch; segmentation and pose task models with dynamic batch, height and width; torchvision Mask R-CNN through
    :class:`~uniformer.tasks.detection.SingleImageMaskRCNN` (one image of any size); the mmdet-port detectors as
    :class:`~uniformer.tasks.mmdet_rcnn.MMDetFeatures`. ``example`` replaces the random example input (of
    ``batch_size``, side ``size``, default: the model's own size); ``dynamic=False`` fixes every axis."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive side length, got {size}")
    task = task_of(model)
    if task == "segmentation":
        spec = _segmentation_spec(model, batch_size, size)
    elif task == "pose":
        spec = _pose_spec(model, batch_size, size)
    elif task == "detection" and isinstance(model, (MMDetMaskRCNN, MMDetCascadeRCNN)):
        spec = _mmdet_spec(model, batch_size, size)
    elif task == "detection" and isinstance(model, MaskRCNN):
        spec = _mask_rcnn_spec(model, size)
    elif task is not None:
        raise ValueError(f"cannot export a {task} model of type {type(model).__name__}")
    else:
        if example is None:
            if not getattr(model, "pretrained_cfg", None):
                raise ValueError(f"cannot tell the input size of {type(model).__name__} (no pretrained_cfg): pass an "
                                 "example input")
            example = torch.randn(batch_size, *default_input(model, size))
        return _classifier_spec(model, check_example(example), dynamic)
    if example is not None:
        spec.example, spec.checks = example, [example] + spec.checks[1:]
    if not dynamic:
        spec.dynamic_axes, spec.checks = {}, spec.checks[:1]
    return spec


def example_input(model: nn.Module, batch_size: int = 1, size: Optional[int] = None) -> torch.Tensor:
    """A random input the model is exported with: ``(batch_size, 3, H, W)`` at the model's default resolution
    (``pretrained_cfg["input_size"]``), ``(batch_size, 3, T, H, W)`` for video models (T from the checkpoint tag's
    protocol); task models: their training crop size (detection: one (3, H, W) image in [0, 1]). ``size`` overrides
    the side."""
    return export_spec(model, batch_size=batch_size, size=size).example
