"""Object detection and instance segmentation with torchvision's Mask R-CNN on a UniFormer (or any 4-level) backbone
(spec ``uniformer.md`` §5.3, ``ecosystem.md`` §4–5).

A *backbone* is any module whose forward returns 4 NCHW maps at strides 4/8/16/32 (a list/tuple, or a dict in level
order, as timm's ``features_only`` models return); its channels are passed as ``in_channels``.
:class:`UniFormerFPNBackbone` composes it with torchvision's ``FeaturePyramidNetwork`` exactly like torchvision's
``BackboneWithFPN`` (no ``IntermediateLayerGetter``), :func:`build_mask_rcnn` wraps that in torchvision's ``MaskRCNN``
with its defaults (which match the official recipe), :class:`CocoDetection` reads a COCO-format dataset through
pycocotools, and :func:`coco_results` / :func:`evaluate_coco` produce and score COCO result records (box and mask AP).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.onnx import operators
from torch.utils.data import Dataset
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data import load_image
from ..data.coco import PathLike, coco_eval_stats, label_maps, load_coco, mask_to_rle, stats_to_dict
from ..data.images import save_image_atomic, to_pil_rgb
from ..data.padding import pad_to_multiple
from .necks import check_feature_levels

__all__ = [
    "UniFormerFPNBackbone",
    "build_mask_rcnn",
    "SingleImageMaskRCNN",
    "CocoDetection",
    "RandomHorizontalFlip",
    "collate_fn",
    "coco_results",
    "evaluate_coco",
    "save_detection_overlay",
]

SIZE_DIVISIBLE = 32  # UniFormer needs input sides that are multiples of its coarsest stride
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
Target = Dict[str, torch.Tensor]


class UniFormerFPNBackbone(nn.Module):
    """Backbone + torchvision ``FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())``,
    the composition of torchvision's ``BackboneWithFPN`` for a backbone that returns its 4 stage maps directly.
    ``forward(x)`` zero-pads the (already batched, normalised) images on the right/bottom to multiples of
    ``size_divisible`` (torchvision's ``GeneralizedRCNNTransform`` already pads to 32, so inside Mask R-CNN this is a
    no-op; it makes the module usable on its own) and returns ``OrderedDict`` '0'..'3' (strides 4–32) and 'pool'
    (stride 64), each with ``out_channels`` (256) channels. ``in_channels`` defaults to the backbone's
    ``feature_info.channels()`` (timm ``features_only`` models).
    """

    def __init__(self, backbone: nn.Module, in_channels: Optional[Sequence[int]] = None, out_channels: int = 256,
                 size_divisible: int = SIZE_DIVISIBLE) -> None:
        super().__init__()
        if in_channels is None:
            info = getattr(backbone, "feature_info", None)
            if info is None or not hasattr(info, "channels"):
                raise ValueError(f"in_channels is required: {type(backbone).__name__} has no feature_info.channels()")
            in_channels = info.channels()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) != 4 or min(in_channels) < 1:
            raise ValueError(f"in_channels must list 4 positive channel counts (strides 4/8/16/32), got {in_channels}")
        if size_divisible < 1:
            raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
        self.body = backbone
        self.in_channels = in_channels
        self.size_divisible = int(size_divisible)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = int(out_channels)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        x = pad_to_multiple(x, self.size_divisible)
        features = check_feature_levels(self.body(x), self.in_channels, type(self).__name__, backbone=True)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def build_mask_rcnn(
    backbone: nn.Module,
    in_channels: Optional[Sequence[int]],
    num_classes: int,
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    fpn_channels: int = 256,
    **kwargs: Any,
) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on ``UniFormerFPNBackbone(backbone, in_channels, fpn_channels)`` (an existing
    :class:`UniFormerFPNBackbone` is used as is). ``num_classes`` counts the background (K object classes → K + 1).
    Images go in as float [0, 1] tensors and are normalised with ``image_mean/std`` (ImageNet, UniFormer's
    normalisation) and resized so the short side is ``min_size`` (long side ≤ ``max_size``). Everything else is
    torchvision's default, which is the official recipe: anchors ((32,), (64,), (128,), (256,), (512,)) × ratios
    (0.5, 1, 2), RoIAlign 7 (box) / 14 (mask) over '0'..'3', RPN NMS 0.7 with 2000/1000 proposals (train/test), 2-FC
    (1024) box head, 4-conv mask head, test score 0.05, NMS 0.5, 100 detections. ``kwargs`` go to ``MaskRCNN``
    (e.g. ``box_batch_size_per_image``, custom heads; a custom ``box_predictor``/``mask_predictor`` replaces the
    one built for ``num_classes``, so it must output ``num_classes`` classes itself).
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if not isinstance(backbone, UniFormerFPNBackbone):
        backbone = UniFormerFPNBackbone(backbone, in_channels, out_channels=fpn_channels)
    # torchvision refuses num_classes together with a custom predictor: build with its own, then swap them in
    predictors = {k: kwargs.pop(k) for k in ("box_predictor", "mask_predictor") if kwargs.get(k) is not None}
    model = MaskRCNN(backbone, num_classes=int(num_classes), min_size=min_size, max_size=max_size,
                     image_mean=list(image_mean), image_std=list(image_std), **kwargs)
    for name, module in predictors.items():
        setattr(model.roi_heads, name, module)
    return model


def _resized_size(hw: torch.Tensor, min_size: float, max_size: float) -> torch.Tensor:
    """(h', w') int64 of torchvision's ``GeneralizedRCNNTransform`` resize of an (h, w) image, computed in float64 as
    its eager Python code does: scale = min(min_size / min(h, w), max_size / max(h, w)), sides floor(side * scale)."""
    hw = hw.to(torch.float64)  # tensor / tensor: ``number / tensor`` multiplies by a reciprocal, rounding otherwise
    scale = torch.minimum(hw.new_tensor(min_size) / hw.min(), hw.new_tensor(max_size) / hw.max())
    return torch.floor(hw * scale).to(torch.int64)


class _ResizedSize(torch.autograd.Function):
    """:func:`_resized_size` with an ONNX symbolic in float64: the TorchScript-based ONNX exporter casts the traced
    division and min to float32, which rounds e.g. 100 x 128/100 down to 127 and shifts every detection."""

    @staticmethod
    def forward(ctx: Any, hw: torch.Tensor, min_size: float, max_size: float) -> torch.Tensor:  # noqa: D102
        return _resized_size(hw, min_size, max_size)

    @staticmethod
    def symbolic(g: Any, hw: Any, min_size: float, max_size: float) -> Any:  # noqa: D102
        # 1-element tensors, not 0-d scalars: the exporter's scalar type promotion would make 0-d ones float32
        hw = g.op("Cast", hw, to_i=11)  # DOUBLE
        lo, hi = g.op("ReduceMin", hw, keepdims_i=1), g.op("ReduceMax", hw, keepdims_i=1)
        low = g.op("Div", g.op("Constant", value_t=torch.tensor([float(min_size)], dtype=torch.float64)), lo)
        high = g.op("Div", g.op("Constant", value_t=torch.tensor([float(max_size)], dtype=torch.float64)), hi)
        return g.op("Cast", g.op("Floor", g.op("Mul", hw, g.op("Min", low, high))), to_i=7)  # INT64


class SingleImageMaskRCNN(nn.Module):
    """The one-image inference entry point of a torchvision Mask R-CNN built by :func:`build_mask_rcnn`, for export
    (ONNX, TorchScript tracing): ``forward(image)`` takes one (3, H, W) RGB float image in [0, 1] and returns
    ``(boxes (N, 4) x1 y1 x2 y2 in input pixels, labels (N,) int64 1..K (0 = background), scores (N,) descending,
    masks (N, 1, H, W) float probabilities)`` — exactly ``model([image])[0]``. The resize to ``min_size`` /
    ``max_size`` is computed from the traced image size in float64, as torchvision's eager code does, so one traced
    graph serves every image size. Call in eval mode."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not torch.jit.is_tracing() and (image.ndim != 3 or image.shape[0] != 3):
            raise ValueError(f"{type(self).__name__} takes one (3, H, W) image, got shape {tuple(image.shape)}")
        model, transform = self.model, self.model.transform
        original = [(image.shape[-2], image.shape[-1])]
        hw = operators.shape_as_tensor(image)[-2:]
        sizes = (float(transform.min_size[-1]), float(transform.max_size))
        size = _ResizedSize.apply(hw, *sizes) if torch.onnx.is_in_onnx_export() else _resized_size(hw, *sizes)
        target = (size[0], size[1]) if torch.jit.is_tracing() else (int(size[0]), int(size[1]))
        x = F.interpolate(transform.normalize(image)[None], size=target, mode="bilinear", align_corners=False)[0]
        images = ImageList(transform.batch_images([x], size_divisible=transform.size_divisible),
                           [(x.shape[-2], x.shape[-1])])
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
        out = transform.postprocess(detections, images.image_sizes, original)[0]
        return out["boxes"], out["labels"], out["scores"], out["masks"]


class RandomHorizontalFlip:
    """Training transform ``(image, target) → (image, target)``: with probability ``p`` mirror the (3, H, W) image,
    its xyxy ``boxes`` (x1' = W − x2, x2' = W − x1) and its (N, H, W) ``masks`` together. Draws from ``generator``
    (default: torch's global generator, which DataLoader seeds per worker)."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> Tuple[torch.Tensor, Target]:
        if self.p == 0.0 or torch.rand((), generator=self.generator).item() >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        image = image.flip(-1)
        if "boxes" in target:
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image, target


class CocoDetection(Dataset):
    """A COCO-format detection / instance-segmentation dataset read with pycocotools.

    ``images_dir`` holds the files named by ``images[].file_name``; ``annotation_json`` is validated by
    :func:`uniformer.data.coco.load_coco` (bad annotations raise ``ValueError`` naming the annotation id, or are
    skipped with a warning when ``skip_bad``). Original category ids (possibly non-contiguous, e.g. 3 and 7) map to
    contiguous labels 1..K in id order: ``cat_ids``, ``cat_id_to_label``, ``label_to_cat_id`` and ``classes`` (K names,
    ``classes[label - 1]``). Item ``i`` is ``(image, target)``: image float [0, 1] (3, H, W); target ``boxes`` xyxy
    float (N, 4) clipped to the image, ``labels`` int64 (N,), ``masks`` uint8 (N, H, W) from polygons or RLE via
    ``COCO.annToMask`` (when ``masks``), ``image_id`` int64 scalar, ``area`` float (N,), ``iscrowd`` int64 (N,).
    Crowd annotations are left out of the targets unless ``include_crowd`` (they are evaluation-only regions in COCO);
    images without annotations are kept with empty (0, …) targets. ``transforms(image, target)`` runs last, e.g.
    :class:`RandomHorizontalFlip` for training.
    """

    def __init__(
        self,
        images_dir: PathLike,
        annotation_json: PathLike,
        transforms: Optional[Callable[[torch.Tensor, Target], Tuple[torch.Tensor, Target]]] = None,
        skip_bad: bool = False,
        masks: bool = True,
        include_crowd: bool = False,
    ) -> None:
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images directory not found: {self.images_dir}")
        self.annotation_json = Path(annotation_json)
        self.coco = load_coco(self.annotation_json, masks=masks, skip_bad=skip_bad)
        self.transforms = transforms
        self.masks = masks
        self.include_crowd = include_crowd
        self.ids: List[int] = sorted(self.coco.getImgIds())
        self.cat_ids, self.cat_id_to_label, self.label_to_cat_id, self.classes = label_maps(self.coco)

    @property
    def num_classes(self) -> int:
        """Number of object classes K (Mask R-CNN's ``num_classes`` is K + 1)."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: int) -> Path:
        """Path of an image's file."""
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    def load_image(self, image_id: int) -> Image.Image:
        """The RGB image, checked against the size the annotation file declares (``ValueError`` naming the file)."""
        info = self.coco.imgs[image_id]
        path = self.image_path(image_id)
        img = load_image(path)
        if img.size != (info["width"], info["height"]):
            raise ValueError(f"{path}: {self.annotation_json} declares {info['width']}x{info['height']} "
                             f"(width x height) for image id {image_id}, found {img.size[0]}x{img.size[1]}")
        return img

    def target(self, image_id: int) -> Target:
        """The target dict of one image (without transforms)."""
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self.include_crowd or not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target: Target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a["iscrowd"]) for a in anns], dtype=torch.int64),
        }
        if self.masks:
            masks = [self.coco.annToMask(a) for a in anns]
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros((0, height, width), dtype=torch.uint8))
        return target

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Target]:
        image_id = self.ids[index]
        image = pil_to_tensor(self.load_image(image_id)).float().div_(255.0)
        target = self.target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate_fn(batch: Sequence[Tuple[torch.Tensor, Target]]) -> Tuple[List[torch.Tensor], List[Target]]:
    """Collate detection samples into ``(list of images, list of targets)``, the input Mask R-CNN takes (images of
    different sizes cannot be stacked; torchvision's transform batches them)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def _cat_id(label: int, label_to_cat_id: Union[Mapping[int, int], Sequence[int]]) -> int:
    """Original category id of a contiguous label (mapping, or sequence indexed by ``label - 1``)."""
    try:
        if isinstance(label_to_cat_id, Mapping):
            return int(label_to_cat_id[label])
        if label < 1:
            raise IndexError
        return int(label_to_cat_id[label - 1])
    except (KeyError, IndexError):
        raise ValueError(f"predicted label {label} has no original category id in label_to_cat_id "
                         f"({label_to_cat_id})") from None


def coco_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[Union[int, torch.Tensor]],
    label_to_cat_id: Union[Mapping[int, int], Sequence[int]],
    masks: bool = True,
    mask_threshold: float = 0.5,
) -> List[Dict[str, Any]]:
    """COCO result records from Mask R-CNN eval outputs (one dict per image with ``boxes`` xyxy in original image
    pixels, ``scores``, ``labels`` and, when ``masks``, ``masks`` (N, 1, H, W) probabilities): per detection
    ``image_id``, ``category_id`` (the ORIGINAL id via ``label_to_cat_id``: mapping, or sequence indexed by
    label − 1), ``score``, ``bbox`` absolute ``[x, y, w, h]`` and ``segmentation`` RLE of ``mask > mask_threshold``
    with ``counts`` as ``str``."""
    if len(outputs) != len(image_ids):
        raise ValueError(f"coco_results got {len(outputs)} outputs but {len(image_ids)} image ids")
    results: List[Dict[str, Any]] = []
    for i, (out, image_id) in enumerate(zip(outputs, image_ids)):
        missing = [k for k in ("boxes", "scores", "labels") + (("masks",) if masks else ()) if k not in out]
        if missing:
            raise ValueError(f"output {i} lacks {missing} (found {sorted(out)})")
        boxes = out["boxes"].detach().cpu().float()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        if masks:
            m = out["masks"].detach().cpu()
            if m.ndim == 4:
                m = m[:, 0]
            binary = (m > mask_threshold).numpy()
        for j, (box, score, label) in enumerate(zip(xywh, scores, labels)):
            record: Dict[str, Any] = {"image_id": int(image_id), "category_id": _cat_id(int(label), label_to_cat_id),
                                      "bbox": [float(v) for v in box], "score": float(score)}
            if masks:
                record["segmentation"] = mask_to_rle(binary[j])
            results.append(record)
    return results


def evaluate_coco(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    img_ids: Optional[Sequence[int]] = None,
    quiet: bool = True,
) -> Dict[str, float]:
    """COCO box / mask AP of ``results`` (records as :func:`coco_results` makes them) against ``coco_gt`` with
    pycocotools' ``COCOeval``, on ``img_ids`` (default: every ground-truth image). Returns, per iou type ``t``,
    ``t_AP`` (AP@[.50:.95]), ``t_AP50``, ``t_AP75``, ``t_APs``, ``t_APm``, ``t_APl`` in percent (NaN where
    pycocotools reports −1, i.e. no ground truth in that size range). Empty results give 0 everywhere. Mask results are
    scored without their ``bbox`` field, so pycocotools takes area and box from the mask (as torchvision's reference
    evaluator does). ``quiet`` swallows pycocotools' printed table."""
    metrics: Dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {iou_type!r} (keypoints: "
                             "uniformer.tasks.pose_eval.evaluate_keypoints)")
        stats = coco_eval_stats(coco_gt, results, iou_type, img_ids=img_ids, quiet_output=quiet)
        metrics.update(stats_to_dict(stats[:6], COCO_STAT_NAMES, prefix=f"{iou_type}_"))
    return metrics


_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40), (128, 0, 0))


def save_detection_overlay(
    image: Union[torch.Tensor, np.ndarray, Image.Image],
    prediction: Mapping[str, torch.Tensor],
    output_path: PathLike,
    class_names: Optional[Sequence[str]] = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> Path:
    """Draw the detections of ``prediction`` (``boxes`` xyxy, ``labels``, ``scores`` and optionally ``masks`` (N, 1,
    H, W) or (N, H, W)) with score ≥ ``score_threshold`` on ``image`` (original size, as Mask R-CNN's outputs are)
    with ``torchvision.utils``: translucent masks (``draw_segmentation_masks``; where masks overlap the later
    detection's colour is shown), box outlines and "name score" captions on the box colour
    (``draw_bounding_boxes``; ``class_names[label − 1]``, as :attr:`CocoDetection.classes`). Written atomically
    with PIL; returns the path."""
    img = to_pil_rgb(image)
    for k in ("boxes", "labels", "scores"):
        if k not in prediction:
            raise ValueError(f"prediction lacks {k!r} (found {sorted(prediction)})")
    keep = (prediction["scores"].detach().cpu() >= score_threshold).nonzero().flatten()
    boxes = prediction["boxes"].detach().cpu()[keep].to(torch.float32)
    labels = prediction["labels"].detach().cpu()[keep].tolist()
    scores = prediction["scores"].detach().cpu()[keep].tolist()
    masks = prediction.get("masks")
    if masks is not None:
        masks = masks.detach().cpu()
        masks = masks[:, 0] if masks.ndim == 4 else masks
        if masks.shape[-2:] != (img.height, img.width):
            raise ValueError(f"masks are {tuple(masks.shape[-2:])} but the image is {(img.height, img.width)}")
    canvas = pil_to_tensor(img)
    if len(labels) == 0:
        return save_image_atomic(img, output_path)
    colors = [_PALETTE[int(label) % len(_PALETTE)] for label in labels]
    if masks is not None:
        shown = masks[keep] > mask_threshold
        covered = torch.zeros_like(shown[0])
        for i in range(shown.shape[0] - 1, -1, -1):  # a later detection's mask covers the earlier ones
            shown[i] &= ~covered
            covered |= shown[i]
        canvas = draw_segmentation_masks(canvas, shown, alpha=110 / 255, colors=colors)
    captions = []
    for label, score in zip(labels, scores):
        known = class_names is not None and 1 <= int(label) <= len(class_names)
        name = class_names[int(label) - 1] if known else f"class {int(label)}"
        captions.append(f"{name} {score:.2f}")
    canvas = draw_bounding_boxes(canvas, boxes, labels=captions, colors=colors, width=2, label_colors="white",
                                 fill_labels=True)
    return save_image_atomic(to_pil_image(canvas), output_path)
