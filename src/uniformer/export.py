"""Export models for deployment: ONNX (onnxruntime), TorchScript and weights-only safetensors — classifiers, dense
backbones and the segmentation, detection and pose task models.

What is exported (the *I/O contract*, recorded in every file's metadata and, by :func:`export_model` and
``uniformer export``, in ``OUTPUT.json`` beside it):

* classifier: ``input`` (B, 3, H, W) — video (B, 3, T, H, W) — normalised with the model's mean/std → ``logits``
  (B, K); dense backbones (``features_only``) → ``features_0..3``. Dynamic batch; H, W (T) fixed at export.
* segmentation: ``image`` (B, 3, H, W) normalised → ``logits`` (B, K, H, W) at the input size (the stride-4 logits
  upsampled inside the graph; the input zero-padded to a multiple of 32 and the logits cropped back). Dynamic batch,
  height and width (sides ≥ 64).
* pose: ``image`` (B, 3, H, W) normalised person crops → ``heatmaps`` (B, J, ceil(H/4), ceil(W/4)). Dynamic batch,
  height and width (sides ≥ 64).
* detection, torchvision Mask R-CNN: ``image`` (3, H, W) RGB in [0, 1], one image, any size (normalised and resized
  inside the graph) → ``boxes`` (N, 4) x1 y1 x2 y2 in input pixels, ``labels`` (N,) int64 1..K, ``scores`` (N,),
  ``masks`` (N, 1, H, W) probabilities.
* detection, mmdet port (Cascade Mask R-CNN runs, official mmdet configs): ``image`` (B, 3, H, W) normalised, H, W
  multiples of 32 → ``fpn_0..4`` (strides 4–64), ``rpn_cls_0..4``, ``rpn_reg_0..4`` (backbone + FPN + RPN head,
  :class:`~uniformer.tasks.mmdet_rcnn.MMDetFeatures`): its test-time post-processing is not traceable (see there).

Every file is written atomically (a temporary file renamed over the target) and, by default, checked: the exported
ONNX / TorchScript model is run on the example input *and* on an input of another batch size (dense tasks: also
another height and width; detection: another image size), and its outputs must match the eager PyTorch model within
``atol`` = 1e-4 (detection: ``atol`` 1e-4 + ``rtol`` 1e-3 × |value|, detections paired across near-tied scores; a
``ValueError`` reports the measured difference otherwise).

ONNX exporter choice (PyTorch 2.14, onnxscript 0.7, onnxruntime 1.31), measured for every family:

* ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) exports the image, token-labeling, video,
  dense, VT-ResNet, segmentation, pose and mmdet-feature models. The hourglass (light) models — ``uniformer_xxs/xs``,
  their video and dense variants — prune tokens with ``torch.argsort(..., stable=True)``, i.e. ``aten.sort.stable``,
  which the onnxscript torch library does not translate ("No ONNX function found for aten.sort.stable"). We translate
  it to ONNX ``TopK`` over the whole axis: the ONNX spec makes ``TopK`` break ties by the lower index, which is
  exactly a stable sort, so the exported light models reproduce the eager token order (ties included) and logits.
* torchvision's Mask R-CNN does not go through torch.export ("Could not guard on data-dependent expression" in
  torchvision's ``batched_nms``); it is exported, as torchvision documents, with the TorchScript-based exporter
  (``dynamo=False``, opset 17) through :class:`~uniformer.tasks.detection.SingleImageMaskRCNN`. Two fixes make that
  graph right: ``Transpose`` nodes with negative ``perm`` entries (from ``movedim``, refused by onnxruntime) are
  rewritten with the equivalent positive axes, and the resize size is computed in float64 as torchvision's eager code
  does (the exporter's float32 cast rounds e.g. 100 × 1.28 to 127).
* The TorchScript-based exporter is **not** used for the other families: it rejects the stable argsort of the light
  models ("ONNX export of operator Sort, Out parameter is not supported").
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torchvision.models.detection import MaskRCNN

from .models.factory import create_model
from ._io import atomic_path
from .engine.config import multiple_of_32
from .engine.inference import default_input, load_model_for_inference, official_model
from .tasks.detection import SingleImageMaskRCNN
from .tasks.mmdet_rcnn import MMDetCascadeRCNN, MMDetFeatures, MMDetMaskRCNN

__all__ = [
    "FORMATS", "ExportSpec", "export_spec", "export_onnx", "export_torchscript", "export_safetensors", "example_input",
    "export_model", "add_export_parser", "cmd_export",
]

_logger = logging.getLogger("uniformer")

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript", "safetensors")
_SUFFIX_FORMATS = {".onnx": "onnx", ".safetensors": "safetensors", ".pt": "torchscript", ".ts": "torchscript",
                   ".torchscript": "torchscript"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
METADATA_KEY = "uniformer"  # ONNX metadata_props / safetensors metadata key; TorchScript extra file uniformer.json
LEGACY_OPSET = 17


# ------------------------------------------------------------------------------------------------------ helpers
def _device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _as_list(out: Any) -> List[torch.Tensor]:
    """The model output as a flat list of tensors (a tensor, or a list/tuple of tensors for dense backbones)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise ValueError(f"cannot export a model whose output is {type(out).__name__}: expected a tensor or a list of "
                     f"tensors (call model.eval(); light and token-labeling models return tuples in training mode)")


def _other_batch(example: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random input like ``example`` with a different batch size (``B + 1``), to prove the batch axis is dynamic."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((example.shape[0] + 1, *example.shape[1:]), generator=g)
    return x.to(dtype=example.dtype, device=example.device)


def _check_example(example: torch.Tensor) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"example_input must be a tensor, got {type(example).__name__}")
    if example.ndim < 1 or example.shape[0] < 1:
        raise ValueError(f"example_input needs a batch dimension of at least 1, got shape {tuple(example.shape)}")
    return example


def _match_detections(reference: List[torch.Tensor], got: List[torch.Tensor], atol: float,
                      what: str) -> List[torch.Tensor]:
    """``reference`` (boxes, labels, scores, masks) reordered to pair with ``got`` detection by detection: scores equal
    to float precision may come out in either order, so each detection pairs with the reference one of its label whose
    score is within ``atol``, the closest box first. ``ValueError`` if the counts differ or one has no partner."""
    boxes, labels, scores = reference[0], reference[1], reference[2]
    got_boxes, got_labels, got_scores = got[0], got[1], got[2]
    if len(got_scores) != len(scores):
        raise ValueError(f"{what} returned {len(got_scores)} detection(s), PyTorch {len(scores)}")
    free, order = set(range(len(scores))), []
    for i in range(len(got_scores)):
        partners = [j for j in free if int(labels[j]) == int(got_labels[i])
                    and abs(float(scores[j]) - float(got_scores[i])) <= atol]
        if not partners:
            raise ValueError(f"{what}: detection {i} (label {int(got_labels[i])}, score {float(got_scores[i]):.6f}) "
                             f"has no PyTorch counterpart")
        j = min(partners, key=lambda j: (float((boxes[j].double() - got_boxes[i].double()).abs().max()), abs(j - i)))
        free.remove(j)
        order.append(j)
    index = torch.tensor(order, dtype=torch.long)
    return [t[index] for t in reference]


def _compare(reference: Sequence[torch.Tensor], got: Sequence[Any], what: str, atol: float, rtol: float = 0.0,
             detections: bool = False) -> Tuple[float, bool]:
    """(max |reference - got| over all outputs — NaN if any is NaN —, whether every element is within ``atol`` +
    ``rtol`` × |reference|); ``ValueError`` if the outputs' count or shapes differ."""
    got = [torch.as_tensor(out).detach().cpu() for out in got]
    reference = list(reference)
    if len(reference) != len(got):
        raise ValueError(f"{what} returned {len(got)} output(s), PyTorch {len(reference)}")
    if detections:
        reference = _match_detections(reference, got, atol, what)
    diffs, ok = [0.0], True
    for ref, out in zip(reference, got):
        if tuple(out.shape) != tuple(ref.shape):
            raise ValueError(f"{what} output shape {tuple(out.shape)} differs from PyTorch {tuple(ref.shape)}")
        if ref.numel():
            d = (out.double() - ref.double()).abs()
            diffs.append(d.max().item())
            ok = ok and bool((d <= atol + rtol * ref.double().abs()).all())
    diff = float("nan") if any(x != x for x in diffs) else max(diffs)
    return diff, ok and diff == diff


def _assert_close(diff: float, ok: bool, atol: float, rtol: float, what: str) -> None:
    if not ok:
        bound = f"atol {atol:g}" + (f" + rtol {rtol:g} x |PyTorch|" if rtol else "")
        raise ValueError(f"{what} does not match PyTorch: max abs difference {diff:.3g} exceeds {bound}")


class _EvalMode:
    """Put a model in eval mode for the duration of a ``with`` block and restore its previous modes afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: Dict[nn.Module, bool] = {}

    def __enter__(self) -> nn.Module:
        self.modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self.modes.items():
            m.training = mode


def _reference(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Tuple[List[List[torch.Tensor]], bool]:
    """Eager outputs for each input, and whether the model returns a single tensor."""
    outs, single = [], True
    with torch.no_grad():
        for x in inputs:
            out = model(x)
            single = isinstance(out, torch.Tensor)
            outs.append([t.detach().cpu() for t in _as_list(out)])
    return outs, single


def _shapes(inputs: Sequence[torch.Tensor]) -> str:
    return ", ".join("x".join(map(str, x.shape)) for x in inputs)


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


def _task(model: nn.Module) -> Optional[str]:
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
    mean, std = list(data.get("mean") or IMAGENET_MEAN), list(data.get("std") or IMAGENET_STD)
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
                                mean=list(cfg.get("mean") or IMAGENET_MEAN), std=list(cfg.get("std") or IMAGENET_STD))]}
    checks = [example, _other_batch(example)] if dynamic else [example]
    return ExportSpec(model, example, "input", None, {0: "batch"} if dynamic else {}, checks, contract)


def _output_names(spec: ExportSpec, outputs: Sequence[torch.Tensor], single: bool) -> List[str]:
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
    task = _task(model)
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
        return _classifier_spec(model, _check_example(example), dynamic)
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


# ---------------------------------------------------------------------------------------------------------- ONNX
def _sort_stable(self: Any, stable: Optional[bool] = None, dim: int = -1, descending: bool = False) -> Any:
    """ONNX translation of ``aten.sort.stable`` (the light models' ``argsort(stable=True)``): ``TopK`` over the whole
    axis. ONNX ``TopK`` breaks ties by the lower index, which is what a stable sort does."""
    from onnxscript import opset18 as op

    k = op.Reshape(op.Gather(op.Shape(self), dim, axis=0), op.Constant(value_ints=[1]))
    return op.TopK(self, k, axis=dim, largest=descending, sorted=True)


def _positive_perms(graph: Any) -> int:
    """Rewrite ``Transpose`` perms with negative axes (written by the TorchScript-based exporter for ``movedim``;
    onnxruntime refuses them) as the same permutation of positive axes; returns the number of nodes fixed."""
    import onnx

    fixed = 0
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Transpose" and attr.name == "perm" and any(p < 0 for p in attr.ints):
                perm = [p % len(attr.ints) for p in attr.ints]
                del attr.ints[:]
                attr.ints.extend(perm)
                fixed += 1
            if attr.type == onnx.AttributeProto.GRAPH:
                fixed += _positive_perms(attr.g)
            for sub in attr.graphs:
                fixed += _positive_perms(sub)
    return fixed


def _dynamo_shapes(spec: ExportSpec) -> Optional[Tuple[Dict[int, Any], ...]]:
    if not spec.dynamic_axes:
        return None
    dims: Dict[int, Any] = {}
    for axis, name in spec.dynamic_axes.items():
        if name == "batch":
            dims[axis] = torch.export.Dim("batch", min=1)
        elif spec.multiple > 1:
            dims[axis] = spec.multiple * torch.export.Dim(f"{name}_over_{spec.multiple}",
                                                          min=-(-MIN_SIDE // spec.multiple))
        else:
            dims[axis] = torch.export.Dim(name, min=MIN_SIDE)
    return (dims,)


def _export_error(model: nn.Module, what: str, e: Exception) -> ValueError:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ValueError(f"{what} of {type(model).__name__} failed: {type(e).__name__}: {lines[0] if lines else ''}")


def _write_onnx(spec: ExportSpec, tmp: Path, names: List[str], opset: Optional[int]) -> None:
    """Export ``spec`` to the file ``tmp`` with its exporter, the I/O contract in the metadata."""
    import onnx

    module, example = spec.module, spec.example
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.exporter == "torchscript":
            axes = {spec.input_name: dict(spec.dynamic_axes), **spec.output_axes} if spec.dynamic_axes else None
            with torch.no_grad():
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset or LEGACY_OPSET,
                                  input_names=[spec.input_name], output_names=names, dynamic_axes=axes)
        else:
            # a size-1 example dimension invites 0/1 specialisation (size-1 broadcasting) in torch.export: trace the
            # dynamic batch with 2 samples; the check still runs the file at the example's own batch size
            if 0 in spec.dynamic_axes and example.shape[0] == 1:
                example = example.expand(2, *example.shape[1:]).contiguous()
            program = torch.onnx.export(
                module, (example,), dynamo=True, input_names=[spec.input_name], output_names=names,
                opset_version=opset, dynamic_shapes=_dynamo_shapes(spec), verbose=False,
                custom_translation_table={torch.ops.aten.sort.stable: _sort_stable})
            program.save(tmp, external_data=False)
    proto = onnx.load(str(tmp))
    if spec.exporter == "torchscript":
        _positive_perms(proto.graph)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(spec.contract)
    onnx.save(proto, str(tmp))


def _onnx(spec: ExportSpec, path: PathLike, opset: Optional[int], check: bool) -> Tuple[Path, Optional[float]]:
    path = _target(path)
    model = spec.module
    device = _device(model)
    spec.example = spec.example.to(device)
    inputs = [x.to(device) for x in spec.checks] if check else [spec.example]
    with _EvalMode(model):
        reference, single = _reference(model, inputs)
        names = _output_names(spec, reference[0], single)
        diff: Optional[float] = None
        with atomic_path(path) as tmp:
            try:
                _write_onnx(spec, tmp, names, opset)
            except Exception as e:  # the exporters raise many types; surface them as one clear ValueError
                raise _export_error(model, "ONNX export", e) from e
            if check:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.log_severity_level = 3  # shape-inference notes of the TorchScript-based exporter's graphs
                session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
                diff, ok = 0.0, True
                for x, ref in zip(inputs, reference):
                    try:
                        got = session.run(None, {spec.input_name: x.detach().cpu().numpy()})
                    except Exception as e:  # onnxruntime's own error types
                        raise ValueError(f"the exported ONNX model fails in onnxruntime on an input of shape "
                                         f"{tuple(x.shape)}: {e}") from e
                    d, good = _compare(ref, got, f"ONNX model (input {tuple(x.shape)})", spec.atol, spec.rtol,
                                       spec.detections)
                    diff, ok = max(diff, d) if d == d else d, ok and good
                _assert_close(diff, ok, spec.atol, spec.rtol, f"ONNX export of {type(model).__name__} (onnxruntime, "
                              f"inputs {_shapes(inputs)})")
    return path, diff


def export_onnx(
    model: nn.Module,
    path: PathLike,
    example_input: torch.Tensor,
    dynamic_batch: bool = True,
    opset: Optional[int] = None,
    check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export ``model`` (run in eval mode; its modes are restored afterwards) to an ONNX file at ``path``.

    A classifier's graph input is named ``input``; the output ``logits``, or ``features_0..N`` for models returning a
    list (dense backbones); ``dynamic_batch`` makes the batch axis symbolic (``batch``), spatial and temporal sizes
    stay those of ``example_input``. Task models export what :func:`export_spec` describes (dynamic axes unless
    ``dynamic_batch=False``). ``opset=None`` uses the exporter's default opset. Weights are embedded in the one file;
    the I/O contract is in its ``metadata_props['uniformer']`` (JSON).

    With ``check=True`` the file is run in onnxruntime (CPUExecutionProvider) on ``example_input`` and, with dynamic
    axes, on an input of another batch size (and size, for task models); a difference to the eager outputs above
    ``atol`` raises ``ValueError`` (and leaves no file behind). Export failures are raised as ``ValueError``. Returns
    the path.
    """
    spec = export_spec(model, _check_example(example_input), dynamic=dynamic_batch)
    spec.atol = atol
    return _onnx(spec, path, opset, check)[0]


# --------------------------------------------------------------------------------------------------- TorchScript
def _torchscript(spec: ExportSpec, path: PathLike, check: bool) -> Tuple[Path, Optional[float]]:
    path = _target(path)
    model = spec.module
    device = _device(model)
    example = spec.example.to(device)
    inputs = [x.to(device) for x in spec.checks] if check else [example]
    if check and len(inputs) == 1:
        inputs.append(_other_batch(example))
    with _EvalMode(model):
        reference, single = _reference(model, inputs)
        _output_names(spec, reference[0], single)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # tracer warnings (shape-to-int conversions, torchvision's tensor constants): the check below proves
                # the traced graph right at another input size
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, (example,), check_trace=False, strict=False)
        except Exception as e:
            raise ValueError(f"TorchScript tracing of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
    diff: Optional[float] = None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        torch.jit.save(traced, str(tmp), _extra_files={f"{METADATA_KEY}.json": json.dumps(spec.contract)})
        if check:
            loaded = torch.jit.load(str(tmp), map_location=example.device)
            diff, ok = 0.0, True
            with torch.no_grad():
                for x, ref in zip(inputs, reference):
                    try:
                        out = loaded(x)
                    except RuntimeError as e:
                        same_size = x.shape[1:] == example.shape[1:]
                        where = (f"batch {x.shape[0]} (traced at {example.shape[0]})" if same_size
                                 else f"input {tuple(x.shape)} (traced at {tuple(example.shape)})")
                        raise ValueError(f"the traced TorchScript model fails at {where}: "
                                         f"{str(e).strip().splitlines()[-1]}") from e
                    d, good = _compare(ref, _as_list(out), f"TorchScript model (input {tuple(x.shape)})", spec.atol,
                                       spec.rtol, spec.detections)
                    diff, ok = max(diff, d) if d == d else d, ok and good
            _assert_close(diff, ok, spec.atol, spec.rtol, f"TorchScript export of {type(model).__name__} (inputs "
                          f"{_shapes(inputs)})")
    return path, diff


def export_torchscript(
    model: nn.Module, path: PathLike, example_input: torch.Tensor, check: bool = True, atol: float = 1e-4
) -> Path:
    """Trace ``model`` (in eval mode; modes restored afterwards) with ``torch.jit.trace`` and save it at ``path``, the
    I/O contract in its extra file ``uniformer.json`` (``torch.jit.load(path, _extra_files=...)``).

    Batch sizes are traced symbolically (the light models' token pruning included; task models: their sizes too, see
    :func:`export_spec`). With ``check=True`` the saved file is loaded back with ``torch.jit.load`` and compared with
    the eager model on ``example_input`` and on an input of another batch size (and size, for task models); a
    difference above ``atol`` raises ``ValueError`` (and leaves no file behind). Returns the path.
    """
    spec = export_spec(model, _check_example(example_input))
    spec.atol = atol
    return _torchscript(spec, path, check)[0]


# --------------------------------------------------------------------------------------------------- safetensors
def _weights_contract(model: nn.Module) -> Dict[str, Any]:
    if _task(model):
        return {"exported_by": f"uniformer {version('uniformer')}", "task": _task(model), "config": dict(model.task_config)}
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    return {"exported_by": f"uniformer {version('uniformer')}", "task": "classification",
            "architecture": cfg.get("architecture") or type(model).__name__,
            "num_classes": getattr(model, "num_classes", None),
            "label_names": list(cfg["label_names"]) if cfg.get("label_names") else None,
            "mean": list(cfg.get("mean") or IMAGENET_MEAN), "std": list(cfg.get("std") or IMAGENET_STD)}


def export_safetensors(model: nn.Module, path: PathLike) -> Path:
    """Write the model's ``state_dict`` (weights and buffers only, as contiguous CPU tensors) to ``path`` with
    ``safetensors.torch.save_file``, atomically; the metadata holds ``architecture`` and, under ``uniformer``, the
    model's task, classes and (task models) the config :func:`uniformer.load_pretrained` rebuilds it from. Use a
    ``.safetensors`` suffix: :func:`uniformer.load_checkpoint` and ``uniformer predict --checkpoint`` pick the reader
    by suffix. Returns the path."""
    from safetensors.torch import save_file

    path = _target(path)
    # clone: save_file refuses tensors sharing storage, and views of larger tensors would save the whole storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(_weights_contract(model))}
    arch = (getattr(model, "pretrained_cfg", None) or getattr(model, "task_config", None) or {}).get("architecture")
    if arch:
        metadata["architecture"] = str(arch)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# ------------------------------------------------------------------------------------------------------ dispatch
def _target(path: PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {path} is a directory: give a file path, e.g. {path / 'model.onnx'}")
    return path


def _format(fmt: str) -> str:
    name = str(fmt).lower()
    if name not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return name


def contract_path(output: PathLike) -> Path:
    """Where :func:`export_model` records the I/O contract of ``output``: ``OUTPUT.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def _export(model: nn.Module, output: PathLike, fmt: str, batch_size: int, size: Optional[int],
            check: bool) -> Tuple[Path, Optional[float], Dict[str, Any]]:
    fmt = _format(fmt)
    if fmt == "safetensors":
        path = export_safetensors(model, output)
        contract = _weights_contract(model)
    else:
        spec = export_spec(model, batch_size=batch_size, size=size)
        path, diff = (_onnx(spec, output, None, check) if fmt == "onnx" else _torchscript(spec, output, check))
        contract = dict(spec.contract, check=None if diff is None else dict(
            max_abs_diff=diff, atol=spec.atol, rtol=spec.rtol, inputs=[list(x.shape) for x in spec.checks]))
    contract = dict(contract, format=fmt, file=path.name)
    with atomic_path(contract_path(path)) as tmp:
        tmp.write_text(json.dumps(contract, indent=1) + "\n", encoding="utf-8")
    check_result = contract.get("check")
    return path, check_result["max_abs_diff"] if check_result else None, contract


def export_model(
    model: nn.Module,
    output: PathLike,
    fmt: str,
    batch_size: int = 1,
    size: Optional[int] = None,
    check: bool = True,
) -> Path:
    """Export ``model`` to ``output`` as ``fmt`` (``"onnx"``, ``"torchscript"`` or ``"safetensors"``) as
    :func:`export_spec` describes it (a random example of ``batch_size`` at the model's size or side ``size``; dynamic
    axes; with ``check``, compared with PyTorch at the example and at another size) and write its I/O contract (input
    and output names, shapes, layouts, normalisation, label names, the measured difference) to
    :func:`contract_path` ``(output)``. Unknown formats raise ``ValueError``. Returns the exported file's path."""
    return _export(model, output, fmt, batch_size, size, check)[0]


# ----------------------------------------------------------------------------------------------------------- CLI
def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an argparse sub-parsers object; returns the new parser (handler
    :func:`cmd_export` in ``func``)."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or safetensors (checked against PyTorch)",
        description="Export a model for deployment: ONNX (onnxruntime), TorchScript (torch.jit.trace) or weights-only "
        "safetensors, with its input/output contract (names, shapes, layouts, normalisation, label names) in "
        "OUTPUT.json and in the file's metadata. Classifiers: input 'input' (dynamic batch; spatial sizes and the "
        "video frame count fixed) -> 'logits' ('features_0..3' for dense backbones). Segmentation runs: 'image' (B, 3, H, W) "
        "-> 'logits' at the input size; pose runs: person crops -> 'heatmaps' at stride 4 (dynamic batch, height, "
        "width); Mask R-CNN runs: one (3, H, W) image in [0, 1] of any size -> 'boxes', 'labels', 'scores', 'masks'; "
        "Cascade Mask R-CNN runs and official mmdet models: backbone + FPN + RPN head outputs only. ONNX and "
        "TorchScript files are run on random inputs of two sizes and compared with PyTorch; the max abs difference is "
        "printed.",
    )
    p.add_argument("--model", metavar="NAME",
                   help="model name, e.g. uniformer_small or uniformer_video_small.k400_16x4 (the tag sets the video "
                        "frame count); optional with a saved folder or run directory")
    p.add_argument("--checkpoint", metavar="FILE_OR_RUN_DIR",
                   help="weights file, saved model folder or run directory (default: random initialisation, for "
                        "testing deployment only)")
    p.add_argument("--official-config", metavar="CONFIG",
                   help="an official mmseg / mmdet / mmpose config file or name (`uniformer models --task dense`); "
                        "--checkpoint is then the official .pth")
    p.add_argument("--ema", action="store_true",
                   help="export the EMA weights of a run trained with --model-ema (an error if it has none)")
    p.add_argument("--format", dest="format", choices=FORMATS,
                   help="output format (default: from the --output suffix: .onnx, .pt/.ts = torchscript, "
                        ".safetensors)")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="output file path (written atomically; the I/O contract goes to PATH.json)")
    p.add_argument("--img-size", type=multiple_of_32, metavar="N",
                   help="input side the graph is traced at, a multiple of 32 (default: the model's pretrained config; "
                        "task models: their training size, and the graph takes other sizes too; ignored for "
                        "safetensors)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the exported model and comparing it with PyTorch")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``uniformer export``: build/load the model, export it and print one summary line."""
    fmt = args.format or _SUFFIX_FORMATS.get(Path(args.output).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {args.output!r}: pass --format {'|'.join(FORMATS)}")
    fmt = _format(fmt)
    official = getattr(args, "official_config", None)
    ema = getattr(args, "ema", False)
    if official:
        if args.model or ema or not args.checkpoint:
            raise ValueError("--official-config takes the official --checkpoint .pth, and neither --model nor --ema")
        model = official_model(official, args.checkpoint)
    elif args.checkpoint:
        model = load_model_for_inference(args.model, args.checkpoint, ema=ema)
    elif args.model:
        if ema:
            raise ValueError("--ema needs --checkpoint (a run trained with --model-ema)")
        model = create_model(args.model)
        _logger.warning("no --checkpoint: exporting %s with random initial weights", args.model)
    else:
        raise ValueError("pass --model NAME and/or --checkpoint FILE_OR_RUN_DIR")
    model.eval()
    path, diff, contract = _export(model, args.output, fmt, 1, args.img_size, args.check)
    if fmt == "safetensors":
        note = ""
    elif diff is None:
        note = "  (not checked)"
    else:
        note = f"  max abs diff vs PyTorch {diff:.3g} (inputs {_shapes_of(contract['check']['inputs'])})"
    print(f"{path}  {fmt}{note}  I/O: {contract_path(path)}")
    return 0


def _shapes_of(shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join("x".join(map(str, s)) for s in shapes)
