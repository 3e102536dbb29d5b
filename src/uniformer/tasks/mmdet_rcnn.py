"""The official mmdet 2.11 Mask R-CNN and Cascade Mask R-CNN of Sense-X/UniFormer on torchvision, reproducing the
official test-time outputs (spec ``dense-official.md`` §5) and loading the official checkpoints' state dicts.

:func:`build_mmdet_detector` turns an mm model dict (``model = dict(type='MaskRCNN' | 'CascadeRCNN', ...)`` of an
official config, e.g. from :func:`uniformer.tasks.mmconfig.read_mm_config` or :func:`official_detector_config`) and a
backbone (e.g. :func:`uniformer.tasks.official_backbone.build_official_backbone`) into a torchvision detector:
:class:`MMDetMaskRCNN` (a ``torchvision.models.detection.MaskRCNN``) or :class:`MMDetCascadeRCNN` (a
``GeneralizedRCNN``). Every size (channels, fc widths, number of convs, RoI sizes, classes, target stds) and the test
settings are read from the dict. The parts that differ from torchvision's defaults follow mmdet 2.11:

- anchors: :class:`MMDetAnchorGenerator` (fixed strides, unrounded base anchors ``scales x strides`` x ratios);
- RPN: :class:`MMDetRPN` (per level top ``nms_pre`` by sigmoid score, mmdet's delta decoding clipped to the image,
  per-level NMS, ``max_per_img``, no size filter since ``min_bbox_size=0`` keeps zero-size proposals);
- RoI features: :class:`MMDetRoIExtractor` (``RoIAlign(aligned=True, sampling_ratio=0)``, mmdet's level mapping with
  ``finest_scale`` 56);
- boxes: class-specific decoding multiplied by the config's ``target_stds``, clipped to ``img_shape``, rescaled by
  ``scale_factor`` before per-class NMS, ``score_thr``, ``max_per_img``, no small-box removal (:func:`multiclass_nms`);
- Cascade: three ``ConvFCBBoxHead`` stages refined by the argmax over the non-background logits, final scores the
  softmax of the mean of the stages' logits, masks the mean of the three mask heads' sigmoids;
- masks: mmdet's paste (:func:`paste_masks`: ``grid_sample(align_corners=False)`` at the pixel centres of the original
  image) and ``>= mask_thr_binary``.

``model.simple_test(img, img_metas)`` is the mmdet-exact entry (input already normalised and padded, as mmdet's test
pipeline makes it); the intermediate steps are methods too (``neck``, ``rpn_head_outputs``, ``base_anchors``,
``proposals``, ``roi_levels``, ``roi_features``, ``bbox_forward``, ``cascade_chain``, ``mask_logits``,
``simple_test_proposals``). Both detectors also keep torchvision's interface: ``model(images, targets)`` in train mode
returns a dict of losses (Cascade: per-stage IoU thresholds, sampling, stage loss weights, GIoU or smooth-L1 box
loss, mask loss per stage), ``model(images)`` in eval mode returns torchvision-style detections (1-based labels,
masks ``(N, 1, H, W)`` probabilities) computed with the mmdet post-processing.

:func:`convert_mmdet_state_dict` maps official keys (``backbone.`` / ``neck.`` / ``rpn_head.`` / ``roi_head.``) onto
the model's (background row last → first, zero background regression rows and mask channel), and
:func:`to_mmdet_state_dict` goes back. Class order: mmdet label ``i`` (0-based) = torchvision label ``i + 1``.
"""
from __future__ import annotations

import math
import re
import types
from collections import OrderedDict
from importlib import resources
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import Conv2dNormActivation, box_iou, generalized_box_iou_loss, nms, roi_align

from .detection import UniFormerFPNBackbone

__all__ = [
    "roi_head_modules",
    "MMDetAnchorGenerator",
    "MMDetRPN",
    "MMDetRoIExtractor",
    "MMDetStandardRoIHeads",
    "MMDetCascadeRoIHeads",
    "MMDetMaskRCNN",
    "MMDetCascadeRCNN",
    "MMDetFeatures",
    "OFFICIAL_DETECTORS",
    "build_mmdet_detector",
    "convert_mmdet_state_dict",
    "to_mmdet_state_dict",
    "mmdet_num_parameters",
    "official_detector_config",
    "cascade_task_config",
    "coco80_class_names",
    "delta2bbox",
    "mmcv_batched_nms",
    "multiclass_nms",
    "paste_masks",
]

ImgMeta = Mapping[str, Any]
WH_RATIO_CLIP = 16 / 1000

# name -> official config file (object_detection/ of Sense-X/UniFormer); a read-only mapping
OFFICIAL_DETECTORS: Mapping[str, str] = types.MappingProxyType({
    "mask_rcnn_1x_hybrid_small": "object_detection/exp/mask_rcnn_1x_hybrid_small/config.py",
    "mask_rcnn_1x_hybrid_base": "object_detection/exp/mask_rcnn_1x_hybrid_base/config.py",
    "mask_rcnn_3x_ms_hybrid_small": "object_detection/exp/mask_rcnn_3x_ms_hybrid_small/config.py",
    "mask_rcnn_3x_ms_hybrid_base": "object_detection/exp/mask_rcnn_3x_ms_hybrid_base/config.py",
    "mask_rcnn_1x_xs": "object_detection/exp_light/mask_rcnn_1x_xs/config.py",
    "mask_rcnn_1x_xxs": "object_detection/exp_light/mask_rcnn_1x_xxs/config.py",
    "cascade_mask_rcnn_3x_ms_hybrid_small": "object_detection/exp/cascade_mask_rcnn_3x_ms_hybrid_small/config.py",
    "cascade_mask_rcnn_3x_ms_hybrid_base": "object_detection/exp/cascade_mask_rcnn_3x_ms_hybrid_base/config.py",
})


def coco80_class_names() -> List[str]:
    """The 80 COCO class names in mmdet's ``CocoDataset.CLASSES`` order (mmdet label ``i`` = ``names[i]``; the
    official detectors' class order), read from the package data file ``uniformer/data/coco80_classes.txt``."""
    text = resources.files("uniformer.data").joinpath("coco80_classes.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 80:
        raise ValueError(f"uniformer/data/coco80_classes.txt must list 80 class names, found {len(names)}")
    return names


# ------------------------------------------------------------------------------------------ config helpers ------
def _need(cfg: Any, key: str, where: str) -> Any:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a dict, found {type(cfg).__name__}")
    if key not in cfg:
        raise ValueError(f"{where} lacks {key!r} (found keys {sorted(cfg)})")
    return cfg[key]


def _check_type(cfg: Any, allowed: Sequence[str], where: str) -> str:
    kind = _need(cfg, "type", where)
    if kind not in allowed:
        raise ValueError(f"{where}: type {kind!r} is not supported; expected one of {list(allowed)}")
    return kind


def _pair(value: Any, where: str) -> int:
    """An mmdet size (int or (h, w) with h == w) as an int."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or int(value[0]) != int(value[1]):
            raise ValueError(f"{where} must be a square size, found {value}")
        value = value[0]
    return int(value)


def _iou_threshold(cfg: Mapping[str, Any], where: str) -> float:
    nms_cfg = cfg.get("nms")
    if nms_cfg is None:
        if "nms_thr" in cfg:
            return float(cfg["nms_thr"])
        raise ValueError(f"{where} lacks 'nms' (e.g. dict(type='nms', iou_threshold=0.7))")
    if nms_cfg.get("type", "nms") != "nms":
        raise ValueError(f"{where}.nms: type {nms_cfg.get('type')!r} is not supported; expected 'nms'")
    return float(_need(nms_cfg, "iou_threshold", f"{where}.nms"))


def _coder_stats(coder: Optional[Mapping[str, Any]], where: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(target_means, target_stds) of a DeltaXYWHBBoxCoder dict."""
    coder = coder or {}
    if coder.get("type", "DeltaXYWHBBoxCoder") != "DeltaXYWHBBoxCoder":
        raise ValueError(f"{where}: bbox_coder type {coder.get('type')!r} is not supported; expected "
                         "'DeltaXYWHBBoxCoder'")
    means = tuple(float(v) for v in coder.get("target_means", (0.0, 0.0, 0.0, 0.0)))
    stds = tuple(float(v) for v in coder.get("target_stds", (1.0, 1.0, 1.0, 1.0)))
    if len(means) != 4 or len(stds) != 4 or min(stds) <= 0:
        raise ValueError(f"{where}: bbox_coder needs 4 target_means and 4 positive target_stds, found {means}, {stds}")
    return means, stds


class ProposalConfig(NamedTuple):
    """RPN post-processing settings (mmdet ``test_cfg.rpn`` / ``train_cfg.rpn_proposal``)."""

    nms_pre: int
    max_per_img: int
    iou_threshold: float
    min_bbox_size: float


class RCNNTestConfig(NamedTuple):
    """Final detection settings (mmdet ``test_cfg.rcnn``)."""

    score_thr: float
    iou_threshold: float
    max_per_img: int
    mask_thr_binary: float


class StageTrainConfig(NamedTuple):
    """One R-CNN stage's training settings (mmdet ``train_cfg.rcnn``: MaxIoUAssigner + RandomSampler)."""

    pos_iou_thr: float
    neg_iou_thr: float
    match_low_quality: bool
    num: int
    pos_fraction: float
    add_gt_as_proposals: bool


def _proposal_config(cfg: Optional[Mapping[str, Any]], where: str, default_pre: int, default_post: int
                     ) -> ProposalConfig:
    cfg = dict(cfg or {})
    if cfg.get("nms_across_levels"):
        raise ValueError(f"{where}: nms_across_levels=True is not supported (mmdet's RPNHead does per-level NMS)")
    post = cfg.get("max_per_img", cfg.get("nms_post", cfg.get("max_num", default_post)))
    iou = _iou_threshold(cfg, where) if ("nms" in cfg or "nms_thr" in cfg) else 0.7
    return ProposalConfig(int(cfg.get("nms_pre", default_pre)), int(post), iou, float(cfg.get("min_bbox_size", 0)))


def _rcnn_test_config(cfg: Optional[Mapping[str, Any]], where: str) -> RCNNTestConfig:
    cfg = dict(cfg or {})
    iou = _iou_threshold(cfg, where) if "nms" in cfg else 0.5
    return RCNNTestConfig(float(cfg.get("score_thr", 0.05)), iou, int(cfg.get("max_per_img", 100)),
                          float(cfg.get("mask_thr_binary", 0.5)))


def _stage_train_config(cfg: Optional[Mapping[str, Any]], where: str, default_iou: float = 0.5) -> StageTrainConfig:
    cfg = dict(cfg or {})
    assigner = dict(cfg.get("assigner") or {})
    sampler = dict(cfg.get("sampler") or {})
    if assigner.get("type", "MaxIoUAssigner") != "MaxIoUAssigner":
        raise ValueError(f"{where}.assigner: type {assigner.get('type')!r} is not supported; expected MaxIoUAssigner")
    if sampler.get("type", "RandomSampler") != "RandomSampler":
        raise ValueError(f"{where}.sampler: type {sampler.get('type')!r} is not supported; expected RandomSampler")
    pos = float(assigner.get("pos_iou_thr", default_iou))
    neg = assigner.get("neg_iou_thr", pos)
    if isinstance(neg, (list, tuple)):
        raise ValueError(f"{where}.assigner: a (low, high) neg_iou_thr range is not supported, found {neg}")
    return StageTrainConfig(pos, float(neg), bool(assigner.get("match_low_quality", True)),
                            int(sampler.get("num", 512)), float(sampler.get("pos_fraction", 0.25)),
                            bool(sampler.get("add_gt_as_proposals", True)))


# ------------------------------------------------------------------------------------------------- box maths ----
def delta2bbox(rois: Tensor, deltas: Tensor, means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
               stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), max_shape: Optional[Sequence[int]] = None,
               wh_ratio_clip: float = WH_RATIO_CLIP) -> Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder.decode``: ``rois`` (N, 4) xyxy and ``deltas`` (N, 4k) (dx, dy, dw, dh per class)
    → boxes (N, 4k). Deltas are de-normalised by **multiplying** with ``stds`` and adding ``means`` (torchvision
    divides by weights: equal up to float rounding), ``dw``/``dh`` are clamped to ``±|log(wh_ratio_clip)|`` on both
    sides, and with ``max_shape`` = (h, w) the boxes are clipped to ``[0, w] x [0, h]``."""
    k = deltas.shape[1] // 4
    means_t = deltas.new_tensor(list(means)).view(1, -1).repeat(1, k)
    stds_t = deltas.new_tensor(list(stds)).view(1, -1).repeat(1, k)
    d = deltas * stds_t + means_t
    dx, dy, dw, dh = d[:, 0::4], d[:, 1::4], d[:, 2::4], d[:, 3::4]
    max_ratio = abs(math.log(wh_ratio_clip))
    dw = dw.clamp(min=-max_ratio, max=max_ratio)
    dh = dh.clamp(min=-max_ratio, max=max_ratio)
    px = ((rois[:, 0] + rois[:, 2]) * 0.5).unsqueeze(1).expand_as(dx)
    py = ((rois[:, 1] + rois[:, 3]) * 0.5).unsqueeze(1).expand_as(dy)
    pw = (rois[:, 2] - rois[:, 0]).unsqueeze(1).expand_as(dw)
    ph = (rois[:, 3] - rois[:, 1]).unsqueeze(1).expand_as(dh)
    gw = pw * dw.exp()
    gh = ph * dh.exp()
    gx = px + pw * dx
    gy = py + ph * dy
    x1, y1 = gx - gw * 0.5, gy - gh * 0.5
    x2, y2 = gx + gw * 0.5, gy + gh * 0.5
    if max_shape is not None:
        h, w = float(max_shape[0]), float(max_shape[1])
        x1, x2 = x1.clamp(min=0, max=w), x2.clamp(min=0, max=w)
        y1, y2 = y1.clamp(min=0, max=h), y2.clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], dim=-1).view(deltas.shape)


def mmcv_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                     split_thr: int = 10000) -> Tuple[Tensor, Tensor]:
    """mmcv 1.x ``batched_nms``: NMS within each ``idxs`` group through the coordinate-offset trick (boxes shifted
    by ``idx * (max coordinate + 1)``; the per-group loop when there are ``split_thr`` boxes or more), kept boxes in
    descending score order. Returns (dets (K, 5) = boxes + score, keep indices)."""
    if boxes.numel() == 0:
        return boxes.new_zeros((0, 5)), idxs.new_zeros((0,), dtype=torch.long)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    boxes_for_nms = boxes + offsets[:, None]
    if boxes_for_nms.shape[0] < split_thr:
        keep = nms(boxes_for_nms, scores, iou_threshold)
        kept_scores = scores[keep]
    else:
        total_mask = scores.new_zeros(scores.shape, dtype=torch.bool)
        for group in torch.unique(idxs):
            mask = (idxs == group).nonzero(as_tuple=False).view(-1)
            total_mask[mask[nms(boxes_for_nms[mask], scores[mask], iou_threshold)]] = True
        keep = total_mask.nonzero(as_tuple=False).view(-1)
        kept_scores, order = scores[keep].sort(descending=True)
        keep = keep[order]
    return torch.cat([boxes[keep], kept_scores[:, None]], dim=-1), keep


def multiclass_nms(multi_bboxes: Tensor, multi_scores: Tensor, score_thr: float, iou_threshold: float,
                   max_num: int = -1) -> Tuple[Tensor, Tensor]:
    """mmdet 2.11 ``multiclass_nms``: ``multi_bboxes`` (N, 4K) class-specific (or (N, 4) shared) boxes, ``multi_scores``
    (N, K + 1) softmax scores with background LAST; keeps (box, class) pairs with score ``> score_thr``, per-class NMS,
    the first ``max_num`` by score. Returns (dets (D, 5), labels (D,) 0-based)."""
    num_classes = multi_scores.size(1) - 1
    if multi_bboxes.shape[1] > 4:
        bboxes = multi_bboxes.view(multi_scores.size(0), -1, 4)
    else:
        bboxes = multi_bboxes[:, None].expand(multi_scores.size(0), num_classes, 4)
    scores = multi_scores[:, :-1]
    labels = torch.arange(num_classes, dtype=torch.long, device=scores.device).view(1, -1).expand_as(scores)
    bboxes, scores, labels = bboxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    inds = (scores > score_thr).nonzero(as_tuple=False).squeeze(1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    if inds.numel() == 0:
        return bboxes.new_zeros((0, 5)), labels
    dets, keep = mmcv_batched_nms(bboxes, scores, labels, iou_threshold)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return dets, labels[keep]


def paste_masks(masks: Tensor, boxes: Tensor, img_h: int, img_w: int,
                threshold: Optional[float] = None) -> Tensor:
    """mmdet's ``_do_paste_mask`` box by box (its CPU path): each (M, M) mask probability map is sampled with
    ``grid_sample(align_corners=False)`` (zero padding) at the pixel centres ``+0.5`` of an ``img_h x img_w`` image,
    the box (N, 4) given in that image's pixels, within the window ``[floor(x1) - 1, ceil(x2) + 1)`` (outside it
    the values are below 0.5 anyway). Returns (N, img_h, img_w) float probabilities, or bool ``>= threshold``."""
    n = masks.shape[0]
    out = masks.new_zeros((n, img_h, img_w), dtype=torch.float32)
    # each box's window (mmdet computes it per chunk of one box: floor(x1) - 1, ceil(x2) + 1, clamped)
    lo = torch.clamp(boxes[:, :2].floor() - 1, min=0).to(torch.int32).tolist()
    hi_x = torch.clamp(boxes[:, 2].ceil() + 1, max=img_w).to(torch.int32).tolist()
    hi_y = torch.clamp(boxes[:, 3].ceil() + 1, max=img_h).to(torch.int32).tolist()
    for i in range(n):
        box = boxes[i:i + 1]
        (x0_int, y0_int), x1_int, y1_int = lo[i], hi_x[i], hi_y[i]
        if x1_int <= x0_int or y1_int <= y0_int:
            continue
        x0, y0, x1, y1 = torch.split(box, 1, dim=1)
        img_y = torch.arange(y0_int, y1_int, device=masks.device, dtype=torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int, device=masks.device, dtype=torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
        img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
        gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
        gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
        grid = torch.stack([gx, gy], dim=3)
        pasted = F.grid_sample(masks[i:i + 1, None].to(torch.float32), grid, align_corners=False)
        out[i, y0_int:y1_int, x0_int:x1_int] = pasted[0, 0]
    return out if threshold is None else out >= threshold


def _rois(boxes: Tensor) -> Tensor:
    """(K, 4) boxes of one image → (K, 5) RoIs with batch index 0."""
    return torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes[:, :4]], dim=1)


def _scale_tensor(meta: ImgMeta, like: Tensor) -> Tensor:
    sf = meta.get("scale_factor", 1.0)
    if isinstance(sf, (int, float)):
        sf = [float(sf)] * 4
    sf = torch.as_tensor(sf, dtype=torch.float32).flatten()
    if sf.numel() == 2:
        sf = sf.repeat(2)
    if sf.numel() != 4:
        raise ValueError(f"img_meta scale_factor must be a number or (w, h, w, h), found {meta.get('scale_factor')}")
    return sf.to(like.device, like.dtype)


def _hw(meta: ImgMeta, key: str) -> Tuple[int, int]:
    shape = meta.get(key)
    if shape is None or len(shape) < 2:
        raise ValueError(f"img_meta lacks {key!r} = (h, w[, c]) (found keys {sorted(meta)})")
    return int(shape[0]), int(shape[1])


# ----------------------------------------------------------------------------------------- anchors and RPN ------
class MMDetAnchorGenerator(nn.Module):
    """mmdet's ``AnchorGenerator`` behind torchvision's anchor-generator interface (``forward(image_list,
    feature_maps)`` → one (sum_l H_l W_l A, 4) tensor per image; ``num_anchors_per_location()``). Base anchors of
    level ``l`` are ``base_sizes[l]`` (default ``strides[l]``) × ``scales`` × ratios (h/w; h = s·√r, w = s/√r), centred
    on ``center_offset`` × size, NOT rounded; the anchor of cell (i, j) is base + (j·stride, i·stride) with the
    configured stride (not inferred from the padded size); order cell-major, anchor-minor (ratios outer, scales
    inner), which is also torchvision's order."""

    def __init__(self, strides: Sequence[int], ratios: Sequence[float], scales: Sequence[float],
                 base_sizes: Optional[Sequence[int]] = None, center_offset: float = 0.0) -> None:
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.ratios = [float(r) for r in ratios]
        self.scales = [float(s) for s in scales]
        self.base_sizes = [int(b) for b in (base_sizes if base_sizes is not None else strides)]
        if len(self.base_sizes) != len(self.strides):
            raise ValueError(f"anchor base_sizes {self.base_sizes} and strides {self.strides} differ in length")
        if not self.strides or not self.ratios or not self.scales:
            raise ValueError("anchor generator needs strides, ratios and scales")
        self.center_offset = float(center_offset)

    def num_anchors_per_location(self) -> List[int]:
        """Anchors per feature-map cell of each level (torchvision's interface)."""
        return [len(self.ratios) * len(self.scales)] * len(self.strides)

    def base_anchors(self, device: Optional[torch.device] = None) -> List[Tensor]:
        """The (A, 4) xyxy base anchors of each level, around (0, 0) (mmdet ``gen_single_level_base_anchors``)."""
        out = []
        ratios = torch.tensor(self.ratios, device=device)
        scales = torch.tensor(self.scales, device=device)
        for base in self.base_sizes:
            w = h = base
            x_c, y_c = self.center_offset * w, self.center_offset * h
            h_ratios = torch.sqrt(ratios)
            w_ratios = 1 / h_ratios
            ws = (w * w_ratios[:, None] * scales[None, :]).view(-1)
            hs = (h * h_ratios[:, None] * scales[None, :]).view(-1)
            out.append(torch.stack([x_c - 0.5 * ws, y_c - 0.5 * hs, x_c + 0.5 * ws, y_c + 0.5 * hs], dim=-1))
        return out

    def grid_anchors(self, sizes: Sequence[Tuple[int, int]], device: Optional[torch.device] = None,
                     dtype: torch.dtype = torch.float32) -> List[Tensor]:
        """The anchors of each level for feature maps of ``sizes`` [(H_l, W_l)], each (H_l·W_l·A, 4)."""
        if len(sizes) != len(self.strides):
            raise ValueError(f"{len(sizes)} feature maps for {len(self.strides)} anchor strides {self.strides}")
        out = []
        for base, stride, (fh, fw) in zip(self.base_anchors(device), self.strides, sizes):
            shift_x = torch.arange(0, fw, device=device) * stride
            shift_y = torch.arange(0, fh, device=device) * stride
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            xx, yy = xx.reshape(-1), yy.reshape(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).to(base)
            out.append((base[None, :, :] + shifts[:, None, :]).view(-1, 4).to(dtype))
        return out

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        levels = self.grid_anchors(sizes, feature_maps[0].device, feature_maps[0].dtype)
        anchors = torch.cat(levels, dim=0)
        return [anchors for _ in range(len(image_list.image_sizes))]


class MMDetRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` (its head, matcher, sampler and losses for training) with mmdet 2.11's
    proposal post-processing (:meth:`proposals_single`): per level the top ``nms_pre`` anchors by sigmoid score
    (mmdet sorts the probabilities), mmdet's decoding (:func:`delta2bbox`, ``target_stds``) clipped to the unpadded
    image, a size filter only when ``min_bbox_size > 0`` (so zero-size proposals are kept, unlike torchvision's
    ``min_size=1e-3``), NMS per level (level id as class, :func:`mmcv_batched_nms`), the first ``max_per_img``.
    ``drop_empty_proposals=True`` reproduces mmdet >= 2.28 instead, which also drops boxes with ``w <= min_bbox_size``
    or ``h <= min_bbox_size``."""

    def __init__(self, anchor_generator: MMDetAnchorGenerator, head: nn.Module, test_cfg: ProposalConfig,
                 train_cfg: ProposalConfig, fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 means: Sequence[float] = (0.0, 0.0, 0.0, 0.0), stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 drop_empty_proposals: bool = False) -> None:
        super().__init__(anchor_generator, head, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                         positive_fraction, pre_nms_top_n=dict(training=train_cfg.nms_pre, testing=test_cfg.nms_pre),
                         post_nms_top_n=dict(training=train_cfg.max_per_img, testing=test_cfg.max_per_img),
                         nms_thresh=test_cfg.iou_threshold)
        self.test_cfg, self.train_cfg = test_cfg, train_cfg
        self.means, self.stds = tuple(means), tuple(stds)
        self.box_coder = det_utils.BoxCoder(weights=tuple(1.0 / s for s in self.stds))  # training targets
        self.min_size = 0.0
        self.drop_empty_proposals = bool(drop_empty_proposals)

    def proposals_single(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                         anchors: Sequence[Tensor], img_shape: Tuple[int, int],
                         cfg: Optional[ProposalConfig] = None, drop_empty: Optional[bool] = None) -> Tensor:
        """mmdet ``RPNHead._get_bboxes_single`` for one image: ``cls_scores[l]`` (A, H, W) logits, ``bbox_preds[l]``
        (4A, H, W), ``anchors[l]`` (H·W·A, 4), ``img_shape`` (h, w) → proposals (N, 5) (x1, y1, x2, y2, score)."""
        cfg = cfg or (self.train_cfg if self.training else self.test_cfg)
        drop_empty = self.drop_empty_proposals if drop_empty is None else drop_empty
        scores_l, deltas_l, anchors_l, ids_l = [], [], [], []
        for level, (cls, reg, anc) in enumerate(zip(cls_scores, bbox_preds, anchors)):
            scores = cls.detach().permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = reg.detach().permute(1, 2, 0).reshape(-1, 4)
            if 0 < cfg.nms_pre < scores.shape[0]:
                ranked, order = scores.sort(descending=True)
                order = order[:cfg.nms_pre]
                scores, deltas, anc = ranked[:cfg.nms_pre], deltas[order], anc[order]
            scores_l.append(scores)
            deltas_l.append(deltas)
            anchors_l.append(anc)
            ids_l.append(torch.full((scores.shape[0],), level, dtype=torch.long, device=scores.device))
        scores, ids = torch.cat(scores_l), torch.cat(ids_l)
        proposals = delta2bbox(torch.cat(anchors_l), torch.cat(deltas_l), self.means, self.stds, max_shape=img_shape)
        w, h = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
        if drop_empty:  # mmdet >= 2.28
            valid = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
        elif cfg.min_bbox_size > 0:  # mmdet 2.11
            valid = (w >= cfg.min_bbox_size) & (h >= cfg.min_bbox_size)
        else:
            valid = None
        if valid is not None and not bool(valid.all()):
            proposals, scores, ids = proposals[valid], scores[valid], ids[valid]
        dets, _ = mmcv_batched_nms(proposals, scores, ids, cfg.iou_threshold)
        return dets[:cfg.max_per_img]

    def forward(self, images: ImageList, features: Dict[str, Tensor],
                targets: Optional[List[Dict[str, Tensor]]] = None) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        levels = self.anchor_generator.grid_anchors([tuple(f.shape[-2:]) for f in feats], feats[0].device,
                                                    feats[0].dtype)
        boxes = []
        for i, img_shape in enumerate(images.image_sizes):
            dets = self.proposals_single([o[i] for o in objectness], [d[i] for d in deltas], levels, img_shape)
            boxes.append(dets[:, :4])
        losses: Dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            anchors = [torch.cat(levels)] * len(images.image_sizes)
            flat_obj, flat_deltas = concat_box_prediction_layers(objectness, deltas)
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(flat_obj, flat_deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses


# --------------------------------------------------------------------------------------------- RoI features -----
class MMDetRoIExtractor(nn.Module):
    """mmdet's ``SingleRoIExtractor`` with ``RoIAlign(output_size, sampling_ratio, aligned=True)`` (torchvision
    ``roi_align``; torchvision's Mask R-CNN uses ``aligned=False, sampling_ratio=2``), RoIs mapped to level
    ``floor(log2(sqrt(w·h) / finest_scale + 1e-6))`` clamped to the levels, level ``l`` at scale
    ``1 / featmap_strides[l]``. ``forward(features, proposals, image_shapes)`` is torchvision's
    ``MultiScaleRoIAlign`` interface (features dict with ``featmap_names``, one (K_i, 4) box tensor per image)."""

    def __init__(self, output_size: int, featmap_strides: Sequence[int], sampling_ratio: int = 0,
                 aligned: bool = True, finest_scale: int = 56, featmap_names: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.output_size = int(output_size)
        self.featmap_strides = [int(s) for s in featmap_strides]
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.finest_scale = int(finest_scale)
        self.featmap_names = list(featmap_names or [str(i) for i in range(len(self.featmap_strides))])
        if len(self.featmap_names) != len(self.featmap_strides):
            raise ValueError(f"featmap_names {self.featmap_names} and featmap_strides {self.featmap_strides} differ")

    def map_roi_levels(self, rois: Tensor) -> Tensor:
        """Level index (K,) of (K, 5) RoIs (mmdet ``map_roi_levels``)."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=len(self.featmap_strides) - 1).long()

    def extract(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """RoIAlign features (K, C, S, S) of (K, 5) RoIs (batch index, x1, y1, x2, y2) from the level maps."""
        size = self.output_size
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], size, size))
        if rois.shape[0] == 0:
            return out
        levels = self.map_roi_levels(rois)
        for i, stride in enumerate(self.featmap_strides):
            inds = (levels == i).nonzero(as_tuple=False).squeeze(1)
            if inds.numel() > 0:
                out[inds] = roi_align(feats[i], rois[inds], (size, size), spatial_scale=1.0 / stride,
                                      sampling_ratio=self.sampling_ratio, aligned=self.aligned).to(out.dtype)
        return out

    def forward(self, features: Dict[str, Tensor], proposals: List[Tensor],
                image_shapes: Optional[List[Tuple[int, int]]] = None) -> Tensor:
        feats = [features[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b[:, :4]], dim=1) for i, b in enumerate(proposals)])
        return self.extract(feats, rois)


def _mmdet_cls(cls_score: Tensor) -> Tensor:
    """torchvision class logits (background first) → mmdet order (background last)."""
    return torch.cat([cls_score[:, 1:], cls_score[:, :1]], dim=1)


class _MMDetStageTest:
    """mmdet's final box/mask post-processing shared by both RoI heads (``self.test_cfg``: :class:`RCNNTestConfig`)."""

    test_cfg: RCNNTestConfig

    def _detections(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, means: Sequence[float],
                    stds: Sequence[float], meta: ImgMeta, rescale: bool = True) -> Tuple[Tensor, Tensor]:
        """mmdet ``BBoxHead.get_bboxes`` + ``multiclass_nms`` on one image: (dets (D, 5), labels (D,) 0-based)."""
        scores = F.softmax(cls_score, dim=1)
        bboxes = delta2bbox(rois, bbox_pred, means, stds, max_shape=_hw(meta, "img_shape"))
        if rescale and bboxes.shape[0] > 0:
            bboxes = (bboxes.view(bboxes.size(0), -1, 4) / _scale_tensor(meta, bboxes)).view(bboxes.size(0), -1)
        cfg = self.test_cfg
        return multiclass_nms(bboxes, scores, cfg.score_thr, cfg.iou_threshold, cfg.max_per_img)

    def _paste(self, mask_probs: Tensor, dets: Tensor, labels: Tensor, meta: ImgMeta,
               probabilities: bool = False) -> Tensor:
        """mmdet ``FCNMaskHead.get_seg_masks`` (rescale=True) from (D, K, M, M) probabilities."""
        img_h, img_w = _hw(meta, "ori_shape")
        if dets.shape[0] == 0:
            return dets.new_zeros((0, img_h, img_w), dtype=torch.float32 if probabilities else torch.bool)
        sf = _scale_tensor(meta, dets)
        boxes = (dets[:, :4] * sf) / sf
        probs = mask_probs[torch.arange(dets.shape[0], device=dets.device), labels]
        return paste_masks(probs, boxes, img_h, img_w, None if probabilities else self.test_cfg.mask_thr_binary)


class MMDetStandardRoIHeads(_MMDetStageTest, RoIHeads):
    """torchvision ``RoIHeads`` (training: its matcher, sampler, ``fastrcnn_loss`` and ``maskrcnn_loss``) with
    mmdet 2.11's ``StandardRoIHead`` test: :meth:`bbox_forward` / :meth:`mask_logits` in mmdet's layout (background
    last, no background regression / mask rows), :meth:`simple_test` (decode with ``target_stds``, clip, rescale,
    per-class NMS, mmdet mask paste). ``postprocess_detections`` follows mmdet too (in resized-image pixels)."""

    def __init__(self, box_roi_pool: MMDetRoIExtractor, box_head: nn.Module, box_predictor: nn.Module,
                 mask_roi_pool: MMDetRoIExtractor, mask_head: nn.Module, mask_predictor: nn.Module,
                 means: Sequence[float], stds: Sequence[float], test_cfg: RCNNTestConfig,
                 train_cfg: StageTrainConfig) -> None:
        super().__init__(box_roi_pool, box_head, box_predictor, train_cfg.pos_iou_thr, train_cfg.neg_iou_thr,
                         train_cfg.num, train_cfg.pos_fraction, tuple(1.0 / s for s in stds), test_cfg.score_thr,
                         test_cfg.iou_threshold, test_cfg.max_per_img, mask_roi_pool=mask_roi_pool,
                         mask_head=mask_head, mask_predictor=mask_predictor)
        self.means, self.stds = tuple(means), tuple(stds)
        self.test_cfg, self.train_cfg = test_cfg, train_cfg

    def bbox_forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """(cls_score (K, C+1) background last, bbox_pred (K, 4C)) of (K, 5) RoIs, as mmdet's bbox head."""
        cls, reg = self.box_predictor(self.box_head(self.box_roi_pool.extract(feats, rois)))
        return _mmdet_cls(cls), reg[:, 4:]

    def mask_logits(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Mask logits (K, C, 28, 28) of (K, 5) RoIs, as mmdet's FCNMaskHead (no background channel)."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool.extract(feats, rois)))[:, 1:]

    def simple_test(self, feats: Sequence[Tensor], proposals: Tensor, meta: ImgMeta,
                    mask_probabilities: bool = False) -> Dict[str, Tensor]:
        """mmdet ``StandardRoIHead.simple_test(rescale=True)`` on one image's (N, 4|5) proposals (input pixels)."""
        rois = _rois(proposals)
        cls, reg = self.bbox_forward(feats, rois)
        dets, labels = self._detections(rois[:, 1:], cls, reg, self.means, self.stds, meta)
        result = dict(boxes=dets[:, :4], scores=dets[:, 4], labels=labels)
        if self.has_mask():
            mask_rois = _rois(dets[:, :4] * _scale_tensor(meta, dets))
            probs = self.mask_logits(feats, mask_rois).sigmoid()
            result["masks"] = self._paste(probs, dets, labels, meta, mask_probabilities)
        return result

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
                               image_shapes: List[Tuple[int, int]]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        boxes, scores, labels = [], [], []
        sizes = [p.shape[0] for p in proposals]
        for cls, reg, props, shape in zip(class_logits.split(sizes), box_regression.split(sizes), proposals,
                                          image_shapes):
            dets, lab = self._detections(props, _mmdet_cls(cls), reg[:, 4:], self.means, self.stds,
                                         dict(img_shape=shape), rescale=False)
            boxes.append(dets[:, :4])
            scores.append(dets[:, 4])
            labels.append(lab + 1)
        return boxes, scores, labels


class MMDetCascadeRoIHeads(_MMDetStageTest, nn.Module):
    """mmdet 2.11 ``CascadeRoIHead`` on torchvision parts: per stage ``s`` a box head ``box_head[s]``
    (``FastRCNNConvFCHead``: convs + BN + ReLU, flatten, fcs + ReLU = mmdet ``ConvFCBBoxHead``'s shared part), a
    ``FastRCNNPredictor`` ``box_predictor[s]`` (background first, 4 zero background regression rows), a mask head
    ``mask_head[s]`` (``MaskRCNNHeads``) and ``mask_predictor[s]`` (``MaskRCNNPredictor``); one box and one mask
    RoI extractor (mmdet's per-stage extractors have no weights and the same settings).

    Test (:meth:`simple_test`): stage ``s`` scores RoIs ``r_s`` (``r_0`` = proposals), ``r_{s+1}`` = stage ``s``'s
    regression of the argmax over its non-background logits, clipped; scores = softmax(mean of the stages' logits),
    boxes = the last stage's regression, masks = mean of the stages' mask sigmoids. Training (``forward`` with
    targets): per stage, ground truth added to the proposals, MaxIoU matching at that stage's threshold, random
    positive/negative sampling, cross-entropy, box loss (GIoU on decoded boxes when the head says
    ``reg_decoded_bbox`` with ``GIoULoss``, else smooth L1 / L1 on the encoded deltas), mask loss on the positives,
    weighted by ``stage_loss_weights``; the refined RoIs (ground-truth rows dropped, regression of the matched class
    for positives and of the argmax class otherwise) are detached before the next stage."""

    def __init__(self, box_roi_pool: MMDetRoIExtractor, box_head: Sequence[nn.Module],
                 box_predictor: Sequence[nn.Module], mask_roi_pool: MMDetRoIExtractor, mask_head: Sequence[nn.Module],
                 mask_predictor: Sequence[nn.Module], stage_means: Sequence[Sequence[float]],
                 stage_stds: Sequence[Sequence[float]], stage_loss_weights: Sequence[float],
                 test_cfg: RCNNTestConfig, train_cfgs: Sequence[StageTrainConfig],
                 box_losses: Sequence[Tuple[str, float, float]]) -> None:
        super().__init__()
        n = len(box_head)
        lengths = {len(box_predictor), len(mask_head), len(mask_predictor), len(stage_stds), len(stage_means),
                   len(stage_loss_weights), len(train_cfgs), len(box_losses)}
        if lengths != {n}:
            raise ValueError(f"cascade: every per-stage list must have {n} entries (num_stages)")
        self.box_roi_pool = box_roi_pool
        self.box_head = nn.ModuleList(box_head)
        self.box_predictor = nn.ModuleList(box_predictor)
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = nn.ModuleList(mask_head)
        self.mask_predictor = nn.ModuleList(mask_predictor)
        self.stage_means = [tuple(m) for m in stage_means]
        self.stage_stds = [tuple(s) for s in stage_stds]
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.test_cfg = test_cfg
        self.train_cfgs = list(train_cfgs)
        self.box_losses = list(box_losses)  # (type, loss_weight, beta) per stage

    @property
    def num_stages(self) -> int:
        return len(self.box_head)

    # ---- mmdet-layout single-stage outputs
    def bbox_forward(self, stage: int, feats: Sequence[Tensor], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """Stage ``stage``'s (cls_score (K, C+1) background last, bbox_pred (K, 4C)) of (K, 5) RoIs."""
        cls, reg = self.box_predictor[stage](self.box_head[stage](self.box_roi_pool.extract(feats, rois)))
        return _mmdet_cls(cls), reg[:, 4:]

    def mask_logits(self, stage: int, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Stage ``stage``'s mask logits (K, C, 28, 28) of (K, 5) RoIs."""
        x = self.mask_head[stage](self.mask_roi_pool.extract(feats, rois))
        return self.mask_predictor[stage](x)[:, 1:]

    def regress_by_class(self, stage: int, boxes: Tensor, labels: Tensor, bbox_pred: Tensor,
                         img_shape: Optional[Tuple[int, int]]) -> Tensor:
        """mmdet ``BBoxHead.regress_by_class``: decode each box with the deltas of its (0-based) class, clipped."""
        inds = torch.stack([labels * 4 + k for k in range(4)], dim=1)
        deltas = torch.gather(bbox_pred, 1, inds)
        return delta2bbox(boxes, deltas, self.stage_means[stage], self.stage_stds[stage], max_shape=img_shape)

    def cascade_chain(self, feats: Sequence[Tensor], boxes: Tensor, img_shape: Tuple[int, int]
                      ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """The RoIs (K, 4) each stage sees and its (cls_score, bbox_pred), starting from ``boxes`` (K, 4)."""
        rois_l, cls_l, reg_l = [], [], []
        boxes = boxes[:, :4]
        for s in range(self.num_stages):
            cls, reg = self.bbox_forward(s, feats, _rois(boxes))
            rois_l.append(boxes)
            cls_l.append(cls)
            reg_l.append(reg)
            if s < self.num_stages - 1:
                boxes = self.regress_by_class(s, boxes, cls[:, :-1].argmax(dim=1), reg, img_shape)
        return rois_l, cls_l, reg_l

    def simple_test(self, feats: Sequence[Tensor], proposals: Tensor, meta: ImgMeta,
                    mask_probabilities: bool = False, rescale: bool = True) -> Dict[str, Tensor]:
        """mmdet ``CascadeRoIHead.simple_test(rescale=True)`` on one image's (N, 4|5) proposals (input pixels)."""
        rois_l, cls_l, reg_l = self.cascade_chain(feats, proposals, _hw(meta, "img_shape"))
        cls = cls_l[0]
        for c in cls_l[1:]:
            cls = cls + c
        cls = cls / float(len(cls_l))
        last = self.num_stages - 1
        dets, labels = self._detections(rois_l[-1], cls, reg_l[-1], self.stage_means[last], self.stage_stds[last],
                                        meta, rescale=rescale)
        result = dict(boxes=dets[:, :4], scores=dets[:, 4], labels=labels)
        mask_rois = _rois(dets[:, :4] * _scale_tensor(meta, dets) if rescale else dets[:, :4])
        probs = None
        for s in range(self.num_stages):
            p = self.mask_logits(s, feats, mask_rois).sigmoid()
            probs = p if probs is None else probs + p
        probs = probs / float(self.num_stages)
        if rescale:
            result["masks"] = self._paste(probs, dets, labels, meta, mask_probabilities)
        else:
            result["mask_probs"] = probs
        return result

    # ---- torchvision interface
    def _sample(self, stage: int, proposals: List[Tensor], targets: List[Dict[str, Tensor]]
                ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """Per image: sampled proposals, their labels (0 = background), matched gt indices, is-gt flags."""
        cfg = self.train_cfgs[stage]
        matcher = det_utils.Matcher(cfg.pos_iou_thr, cfg.neg_iou_thr, allow_low_quality_matches=cfg.match_low_quality)
        sampler = det_utils.BalancedPositiveNegativeSampler(cfg.num, cfg.pos_fraction)
        all_props, all_labels, all_matched, all_gt = [], [], [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            is_gt = torch.zeros(props.shape[0], dtype=torch.bool, device=props.device)
            if cfg.add_gt_as_proposals and gt.numel():
                props = torch.cat([props, gt])
                is_gt = torch.cat([is_gt, torch.ones(gt.shape[0], dtype=torch.bool, device=props.device)])
            if gt.numel() == 0:
                matched = torch.zeros(props.shape[0], dtype=torch.long, device=props.device)
                labels = torch.zeros(props.shape[0], dtype=torch.long, device=props.device)
            else:
                idx = matcher(box_iou(gt, props))
                matched = idx.clamp(min=0)
                labels = t["labels"][matched].to(torch.long)
                labels[idx == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[idx == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1
            all_props.append(props)
            all_labels.append(labels)
            all_matched.append(matched)
            all_gt.append(is_gt)
        pos, neg = sampler(all_labels)
        out: Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]] = ([], [], [], [])
        for i in range(len(all_props)):
            keep = torch.where(pos[i] | neg[i])[0]
            out[0].append(all_props[i][keep])
            out[1].append(all_labels[i][keep].clamp(min=0))
            out[2].append(all_matched[i][keep])
            out[3].append(all_gt[i][keep])
        return out

    def _box_loss(self, stage: int, props: Tensor, reg: Tensor, labels: Tensor, gt_boxes: Tensor) -> Tensor:
        kind, weight, beta = self.box_losses[stage]
        pos = torch.where(labels > 0)[0]
        if pos.numel() == 0:
            return reg.sum() * 0
        deltas = reg.view(reg.shape[0], -1, 4)[pos, labels[pos]]
        if kind == "GIoULoss":
            decoded = delta2bbox(props[pos], deltas, self.stage_means[stage], self.stage_stds[stage])
            loss = generalized_box_iou_loss(decoded, gt_boxes[pos], reduction="sum")
        else:
            coder = det_utils.BoxCoder(tuple(1.0 / s for s in self.stage_stds[stage]))
            target = coder.encode_single(gt_boxes[pos], props[pos])
            loss = (F.smooth_l1_loss(deltas, target, beta=beta, reduction="sum") if kind == "SmoothL1Loss"
                    else F.l1_loss(deltas, target, reduction="sum"))
        return weight * loss / labels.numel()

    def forward(self, features: Dict[str, Tensor], proposals: List[Tensor], image_shapes: List[Tuple[int, int]],
                targets: Optional[List[Dict[str, Tensor]]] = None
                ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        if not self.training:  # detections in resized-image pixels with 28x28 mask probabilities (torchvision style)
            feats = [features[n] for n in self.box_roi_pool.featmap_names]
            result = []
            for i, (props, shape) in enumerate(zip(proposals, image_shapes)):
                r = self.simple_test([f[i:i + 1] for f in feats], props, dict(img_shape=shape), rescale=False)
                probs = r.pop("mask_probs")
                idx = torch.arange(r["labels"].shape[0], device=probs.device)
                result.append(dict(boxes=r["boxes"], scores=r["scores"], labels=r["labels"] + 1,
                                   masks=probs[idx, r["labels"]][:, None]))
            return result, {}
        if targets is None:
            raise ValueError("the cascade RoI heads need targets in training mode")
        losses: Dict[str, Tensor] = {}
        proposals = [p.detach() for p in proposals]
        gt_boxes = [t["boxes"] for t in targets]
        for s in range(self.num_stages):
            w = self.stage_loss_weights[s]
            props, labels, matched, is_gt = self._sample(s, proposals, targets)
            x = self.box_head[s](self.box_roi_pool(features, props, image_shapes))
            cls, reg = self.box_predictor[s](x)
            all_labels = torch.cat(labels)
            matched_gt = torch.cat([g[m] if g.numel() else torch.zeros_like(p) for g, m, p in
                                    zip(gt_boxes, matched, props)])
            losses[f"s{s}_loss_cls"] = w * F.cross_entropy(cls, all_labels)
            losses[f"s{s}_loss_bbox"] = w * self._box_loss(s, torch.cat(props), reg, all_labels, matched_gt)
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_props = [p[k] for p, k in zip(props, pos)]
            mask_x = self.mask_head[s](self.mask_roi_pool(features, mask_props, image_shapes))
            mask_logits = self.mask_predictor[s](mask_x)
            losses[f"s{s}_loss_mask"] = w * maskrcnn_loss(mask_logits, mask_props, [t["masks"] for t in targets],
                                                          [t["labels"] for t in targets],
                                                          [m[k] for m, k in zip(matched, pos)])
            if s < self.num_stages - 1:
                with torch.no_grad():
                    new = []
                    sizes = [p.shape[0] for p in props]
                    for p, lab, gt_flag, c, r, shape in zip(props, labels, is_gt, cls.split(sizes),
                                                            reg.split(sizes), image_shapes):
                        cls_label = torch.where(lab > 0, lab - 1, c[:, 1:].argmax(dim=1))
                        boxes = self.regress_by_class(s, p, cls_label, r[:, 4:], shape)
                        new.append(boxes[~gt_flag].detach())
                    proposals = new
        return [], losses


# ------------------------------------------------------------------------------------------------ detectors -----
class _MMDetDetector:
    """The mmdet-exact test entry points shared by both detectors (``self.backbone`` = FPN backbone, ``self.rpn``,
    ``self.roi_heads``, ``self.transform``; ``self.mm_type``)."""

    backbone: UniFormerFPNBackbone
    rpn: MMDetRPN
    transform: GeneralizedRCNNTransform
    mm_type: str

    def neck(self, img: Tensor) -> List[Tensor]:
        """The 5 FPN maps (strides 4–64) of a normalised, padded (B, 3, H, W) batch."""
        return list(self.backbone(img).values())

    def rpn_head_outputs(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W) (mmdet ``rpn_head(x)``)."""
        return self.rpn.head(list(feats))

    def base_anchors(self) -> List[Tensor]:
        """The (A, 4) base anchors of each level (mmdet ``anchor_generator.base_anchors``)."""
        return self.rpn.anchor_generator.base_anchors()

    @torch.no_grad()
    def proposals(self, feats: Sequence[Tensor], img_meta: ImgMeta, drop_empty: Optional[bool] = None,
                  image_index: int = 0) -> Tensor:
        """mmdet ``rpn_head.simple_test_rpn`` for image ``image_index``: (N, 5) proposals in input pixels, by score.
        ``drop_empty=True`` emulates mmdet >= 2.28 (drops zero-size proposals)."""
        cls, reg = self.rpn_head_outputs(feats)
        anchors = self.rpn.anchor_generator.grid_anchors([tuple(f.shape[-2:]) for f in feats], feats[0].device,
                                                         feats[0].dtype)
        return self.rpn.proposals_single([c[image_index] for c in cls], [r[image_index] for r in reg], anchors,
                                         _hw(img_meta, "img_shape"), cfg=self.rpn.test_cfg, drop_empty=drop_empty)

    def roi_levels(self, boxes: Tensor) -> Tensor:
        """mmdet's FPN level (K,) of (K, 4) boxes (input pixels)."""
        return self.roi_heads.box_roi_pool.map_roi_levels(_rois(boxes))

    def roi_features(self, feats: Sequence[Tensor], boxes: Tensor, kind: str = "bbox") -> Tensor:
        """RoIAlign features of (K, 4) boxes of image 0: ``kind`` 'bbox' (7x7) or 'mask' (14x14)."""
        if kind not in ("bbox", "mask"):
            raise ValueError(f"kind must be 'bbox' or 'mask', got {kind!r}")
        pool = self.roi_heads.box_roi_pool if kind == "bbox" else self.roi_heads.mask_roi_pool
        return pool.extract(list(feats)[:len(pool.featmap_strides)], _rois(boxes))

    def _roi_feats(self, feats: Sequence[Tensor]) -> List[Tensor]:
        return list(feats)[:len(self.roi_heads.box_roi_pool.featmap_strides)]

    def bbox_forward(self, feats: Sequence[Tensor], boxes: Tensor, stage: int = 0) -> Tuple[Tensor, Tensor]:
        """mmdet bbox head outputs (cls_score (K, C+1) background last, bbox_pred (K, 4C)) on (K, 4) boxes."""
        if self.mm_type == "CascadeRCNN":
            return self.roi_heads.bbox_forward(stage, self._roi_feats(feats), _rois(boxes))
        return self.roi_heads.bbox_forward(self._roi_feats(feats), _rois(boxes))

    def mask_logits(self, feats: Sequence[Tensor], boxes: Tensor, stage: int = 0) -> Tensor:
        """mmdet mask head logits (K, C, 28, 28) on (K, 4) boxes (Cascade: of stage ``stage``)."""
        if self.mm_type == "CascadeRCNN":
            return self.roi_heads.mask_logits(stage, self._roi_feats(feats), _rois(boxes))
        return self.roi_heads.mask_logits(self._roi_feats(feats), _rois(boxes))

    @torch.no_grad()
    def simple_test_proposals(self, feats: Sequence[Tensor], proposals: Tensor, img_meta: ImgMeta,
                              mask_probabilities: bool = False, image_index: int = 0) -> Dict[str, Tensor]:
        """mmdet ``roi_head.simple_test(x, [proposals], rescale=True)`` for one image: ``boxes`` (D, 4) in original
        pixels, ``scores`` (D,), ``labels`` (D,) 0-based, ``masks`` bool (D, ori_h, ori_w) (float probabilities
        with ``mask_probabilities``), by descending score."""
        feats = [f[image_index:image_index + 1] for f in self._roi_feats(feats)]
        return self.roi_heads.simple_test(feats, proposals[:, :4], img_meta, mask_probabilities=mask_probabilities)

    @torch.no_grad()
    def simple_test(self, img: Tensor, img_metas: Sequence[ImgMeta], proposals: Optional[Sequence[Tensor]] = None,
                    mask_probabilities: bool = False) -> List[Dict[str, Tensor]]:
        """mmdet ``simple_test(img, img_metas, rescale=True)``: ``img`` (B, 3, H, W) normalised and zero-padded as
        mmdet's test pipeline makes it, ``img_metas`` one dict per image with ``img_shape`` (unpadded h, w),
        ``ori_shape`` and ``scale_factor`` (w, h, w, h); ``proposals`` replaces the RPN's. One result dict per image
        (see :meth:`simple_test_proposals`)."""
        if img.ndim != 4 or img.shape[0] != len(img_metas):
            raise ValueError(f"simple_test needs a (B, 3, H, W) batch and B img_metas, got {tuple(img.shape)} and "
                             f"{len(img_metas)} metas")
        feats = self.neck(img)
        out = []
        for i, meta in enumerate(img_metas):
            props = proposals[i] if proposals is not None else self.proposals(feats, meta, image_index=i)
            out.append(self.simple_test_proposals(feats, props, meta, mask_probabilities, image_index=i))
        return out

    def _eval_forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        """torchvision eval interface with the mmdet post-processing (labels 1-based, masks (N, 1, H, W) probs)."""
        original = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = self.transform(images)
        metas = []
        for (h, w), (oh, ow) in zip(image_list.image_sizes, original):
            metas.append(dict(img_shape=(h, w), ori_shape=(oh, ow), scale_factor=(w / ow, h / oh, w / ow, h / oh)))
        results = self.simple_test(image_list.tensors, metas, mask_probabilities=True)
        return [dict(boxes=r["boxes"], labels=r["labels"] + 1, scores=r["scores"], masks=r["masks"][:, None])
                for r in results]


class MMDetMaskRCNN(_MMDetDetector, MaskRCNN):
    """torchvision ``MaskRCNN`` made mmdet 2.11 exact (see the module docstring). Built by
    :func:`build_mmdet_detector`; module names: ``backbone.body`` (the UniFormer), ``backbone.fpn``, ``rpn.head``,
    ``roi_heads.box_head`` (fc6/fc7), ``roi_heads.box_predictor``, ``roi_heads.mask_head``,
    ``roi_heads.mask_predictor``. ``forward`` in training mode is torchvision's (losses); in eval mode it returns
    torchvision-style detections through :meth:`simple_test`."""

    mm_type = "MaskRCNN"

    def __init__(self, backbone: UniFormerFPNBackbone, rpn: MMDetRPN, roi_heads: MMDetStandardRoIHeads,
                 min_size: int = 800, max_size: int = 1333, image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 image_std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        super().__init__(backbone, num_classes=None, min_size=min_size, max_size=max_size,
                         image_mean=list(image_mean), image_std=list(image_std), rpn_head=rpn.head,
                         box_head=roi_heads.box_head, box_predictor=roi_heads.box_predictor,
                         mask_head=roi_heads.mask_head, mask_predictor=roi_heads.mask_predictor)
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None) -> Any:
        if self.training:
            return MaskRCNN.forward(self, images, targets)
        return self._eval_forward(images)


class MMDetCascadeRCNN(_MMDetDetector, GeneralizedRCNN):
    """mmdet 2.11 Cascade (Mask) R-CNN as a torchvision ``GeneralizedRCNN``: ``backbone`` (UniFormer + FPN), ``rpn``
    (:class:`MMDetRPN`), ``roi_heads`` (:class:`MMDetCascadeRoIHeads`), ``transform`` (torchvision's, for the
    ``forward`` interface only). ``forward`` in training mode returns the losses, in eval mode torchvision-style
    detections through :meth:`simple_test`; :meth:`cascade_chain` exposes the per-stage refinement."""

    mm_type = "CascadeRCNN"

    def __init__(self, backbone: UniFormerFPNBackbone, rpn: MMDetRPN, roi_heads: MMDetCascadeRoIHeads,
                 min_size: int = 800, max_size: int = 1333, image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 image_std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean), list(image_std))
        super().__init__(backbone, rpn, roi_heads, transform)

    def cascade_chain(self, feats: Sequence[Tensor], boxes: Tensor, img_meta: ImgMeta
                      ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Per stage: the (K, 4) RoIs it sees, its cls_score (K, C+1) and bbox_pred (K, 4C), from (K, 4) boxes."""
        return self.roi_heads.cascade_chain(self._roi_feats(feats), boxes, _hw(img_meta, "img_shape"))

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None) -> Any:
        if self.training:
            return GeneralizedRCNN.forward(self, images, targets)
        return self._eval_forward(images)


class MMDetFeatures(nn.Module):
    """The traceable part of an mmdet-port detector (:class:`MMDetMaskRCNN`, :class:`MMDetCascadeRCNN`), for export:
    ``forward(img)`` on a normalised (B, 3, H, W) batch, H and W multiples of 32 (mmdet's test input), returns the 5
    FPN maps (strides 4–64) followed by the RPN's objectness logits (B, A, h, w) and box deltas (B, 4A, h, w) of each
    level. The rest of mmdet's test (proposals, RoI heads, NMS, mask pasting) works image by image with Python-side
    sizes and loops over detections, so a traced graph would freeze them at the traced image: run it in PyTorch."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        if not isinstance(detector, (MMDetMaskRCNN, MMDetCascadeRCNN)):
            raise ValueError(f"MMDetFeatures wraps an MMDetMaskRCNN or MMDetCascadeRCNN, got {type(detector).__name__}")
        self.detector = detector

    def forward(self, img: Tensor) -> Tuple[Tensor, ...]:
        feats = self.detector.neck(img)
        cls, reg = self.detector.rpn_head_outputs(feats)
        return tuple(feats) + tuple(cls) + tuple(reg)


# ------------------------------------------------------------------------------------------------- builder ------
def _box_head_dims(cfg: Mapping[str, Any], where: str) -> Tuple[int, int, int, int, bool]:
    """(num_convs, conv_channels, num_fcs, fc_channels, with_norm) of a (Shared2FC|ConvFC)BBoxHead dict."""
    kind = _check_type(cfg, ("Shared2FCBBoxHead", "ConvFCBBoxHead", "Shared4Conv1FCBBoxHead"), where)
    if cfg.get("reg_class_agnostic", False):
        raise ValueError(f"{where}: reg_class_agnostic=True is not supported (the official heads are class-specific)")
    if cfg.get("with_avg_pool", False):
        raise ValueError(f"{where}: with_avg_pool=True is not supported")
    for key in ("num_cls_convs", "num_cls_fcs", "num_reg_convs", "num_reg_fcs"):
        if cfg.get(key, 0):
            raise ValueError(f"{where}: {key}={cfg[key]} is not supported (only shared convs/fcs)")
    if kind == "Shared2FCBBoxHead":
        num_convs, num_fcs = 0, 2
    elif kind == "Shared4Conv1FCBBoxHead":
        num_convs, num_fcs = 4, 1
    else:
        num_convs, num_fcs = int(cfg.get("num_shared_convs", 0)), int(cfg.get("num_shared_fcs", 0))
    norm = cfg.get("norm_cfg")
    if norm is not None and norm.get("type") not in ("BN", "SyncBN"):
        raise ValueError(f"{where}: norm_cfg type {norm.get('type')!r} is not supported; expected BN or SyncBN")
    return (num_convs, int(cfg.get("conv_out_channels", 256)), num_fcs, int(cfg.get("fc_out_channels", 1024)),
            norm is not None)


def _roi_extractor(cfg: Mapping[str, Any], where: str, expected_channels: int) -> MMDetRoIExtractor:
    _check_type(cfg, ("SingleRoIExtractor",), where)
    layer = _need(cfg, "roi_layer", where)
    _check_type(layer, ("RoIAlign",), f"{where}.roi_layer")
    if layer.get("pool_mode", "avg") != "avg":
        raise ValueError(f"{where}.roi_layer: pool_mode {layer.get('pool_mode')!r} is not supported; expected 'avg'")
    channels = int(cfg.get("out_channels", expected_channels))
    if channels != expected_channels:
        raise ValueError(f"{where}: out_channels {channels} must equal the FPN's {expected_channels}")
    return MMDetRoIExtractor(_pair(_need(layer, "output_size", f"{where}.roi_layer"), f"{where}.roi_layer"),
                             _need(cfg, "featmap_strides", where), int(layer.get("sampling_ratio", 0)),
                             bool(layer.get("aligned", True)), int(cfg.get("finest_scale", 56)))


def _mask_head(cfg: Mapping[str, Any], where: str, in_channels: int, num_classes: int
               ) -> Tuple[MaskRCNNHeads, MaskRCNNPredictor]:
    _check_type(cfg, ("FCNMaskHead",), where)
    if cfg.get("class_agnostic", False):
        raise ValueError(f"{where}: class_agnostic=True is not supported")
    if int(cfg.get("conv_kernel_size", 3)) != 3:
        raise ValueError(f"{where}: conv_kernel_size {cfg['conv_kernel_size']} is not supported; expected 3")
    up = cfg.get("upsample_cfg", {"type": "deconv", "scale_factor": 2})
    if up.get("type", "deconv") != "deconv" or int(up.get("scale_factor", 2)) != 2:
        raise ValueError(f"{where}: upsample_cfg {up} is not supported; expected dict(type='deconv', scale_factor=2)")
    if int(cfg.get("in_channels", in_channels)) != in_channels:
        raise ValueError(f"{where}: in_channels {cfg['in_channels']} must equal the FPN's {in_channels}")
    if int(_need(cfg, "num_classes", where)) != num_classes:
        raise ValueError(f"{where}: num_classes {cfg['num_classes']} differs from the bbox head's {num_classes}")
    conv = int(cfg.get("conv_out_channels", 256))
    num_convs = int(cfg.get("num_convs", 4))
    if num_convs < 1:
        raise ValueError(f"{where}: num_convs must be >= 1, found {num_convs}")
    return MaskRCNNHeads(in_channels, [conv] * num_convs, 1), MaskRCNNPredictor(conv, conv, num_classes + 1)


def _rpn(model_cfg: Mapping[str, Any], fpn_channels: int, num_levels: int, default_train_post: int) -> MMDetRPN:
    head_cfg = _need(model_cfg, "rpn_head", "model")
    _check_type(head_cfg, ("RPNHead",), "model.rpn_head")
    in_ch = int(head_cfg.get("in_channels", fpn_channels))
    if in_ch != fpn_channels:
        raise ValueError(f"model.rpn_head: in_channels {in_ch} must equal the FPN's out_channels {fpn_channels}")
    feat = int(head_cfg.get("feat_channels", in_ch))
    ag = _need(head_cfg, "anchor_generator", "model.rpn_head")
    _check_type(ag, ("AnchorGenerator",), "model.rpn_head.anchor_generator")
    if "scales" not in ag:
        raise ValueError("model.rpn_head.anchor_generator: only explicit 'scales' are supported "
                         "(octave_base_scale / scales_per_octave are not)")
    anchors = MMDetAnchorGenerator(_need(ag, "strides", "model.rpn_head.anchor_generator"),
                                   _need(ag, "ratios", "model.rpn_head.anchor_generator"), ag["scales"],
                                   ag.get("base_sizes"), float(ag.get("center_offset", 0.0)))
    if len(anchors.strides) != num_levels:
        raise ValueError(f"model.rpn_head.anchor_generator: {len(anchors.strides)} strides for {num_levels} FPN levels")
    head = RPNHead(in_ch, anchors.num_anchors_per_location()[0])
    if feat != in_ch:
        head.conv = nn.Sequential(Conv2dNormActivation(in_ch, feat, kernel_size=3, norm_layer=None))
        head.cls_logits = nn.Conv2d(feat, head.cls_logits.out_channels, 1)
        head.bbox_pred = nn.Conv2d(feat, head.bbox_pred.out_channels, 1)
    means, stds = _coder_stats(head_cfg.get("bbox_coder"), "model.rpn_head")
    test_cfg = dict(model_cfg.get("test_cfg") or {})
    train_cfg = dict(model_cfg.get("train_cfg") or {})
    test = _proposal_config(test_cfg.get("rpn"), "model.test_cfg.rpn", 1000, 1000)
    train = _proposal_config(train_cfg.get("rpn_proposal"), "model.train_cfg.rpn_proposal", 2000, default_train_post)
    rpn_train = dict(train_cfg.get("rpn") or {})
    assigner, sampler = dict(rpn_train.get("assigner") or {}), dict(rpn_train.get("sampler") or {})
    return MMDetRPN(anchors, head, test, train, float(assigner.get("pos_iou_thr", 0.7)),
                    float(assigner.get("neg_iou_thr", 0.3)), int(sampler.get("num", 256)),
                    float(sampler.get("pos_fraction", 0.5)), means, stds)


def _box_loss_spec(cfg: Mapping[str, Any], where: str) -> Tuple[str, float, float]:
    loss = dict(cfg.get("loss_bbox") or {"type": "SmoothL1Loss", "beta": 1.0, "loss_weight": 1.0})
    kind = loss.get("type")
    if kind not in ("GIoULoss", "SmoothL1Loss", "L1Loss"):
        raise ValueError(f"{where}.loss_bbox: type {kind!r} is not supported; expected GIoULoss, SmoothL1Loss or "
                         "L1Loss")
    if kind == "GIoULoss" and not cfg.get("reg_decoded_bbox", False):
        raise ValueError(f"{where}: GIoULoss needs reg_decoded_bbox=True (it compares decoded boxes)")
    return kind, float(loss.get("loss_weight", 1.0)), float(loss.get("beta", 1.0))


def build_mmdet_detector(model_cfg: Mapping[str, Any], backbone: nn.Module, min_size: int = 800,
                         max_size: int = 1333, image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                         image_std: Sequence[float] = IMAGENET_DEFAULT_STD) -> nn.Module:
    """Build the official mmdet 2.11 detector that ``model_cfg`` (an mm model dict: ``type`` 'MaskRCNN' or
    'CascadeRCNN', ``neck`` FPN, ``rpn_head``, ``roi_head``, ``train_cfg``/``test_cfg``) describes, on ``backbone``
    (a module returning the 4 stage maps whose channels are ``neck.in_channels``; ``model_cfg['backbone']`` is not
    read — build it with :func:`~uniformer.tasks.official_backbone.build_official_backbone`). Every size and test
    setting comes from the dict; unsupported options raise ``ValueError`` naming them. ``min_size``/``max_size``/
    ``image_mean``/``image_std`` configure torchvision's transform, used only by ``forward`` (``simple_test`` takes
    mmdet-prepared tensors). Load official weights with :func:`convert_mmdet_state_dict`."""
    kind = _check_type(model_cfg, ("MaskRCNN", "CascadeRCNN"), "model")
    neck = _need(model_cfg, "neck", "model")
    _check_type(neck, ("FPN",), "model.neck")
    in_channels = [int(c) for c in _need(neck, "in_channels", "model.neck")]
    if len(in_channels) != 4:
        raise ValueError(f"model.neck.in_channels must list the 4 backbone stage channels, found {in_channels}")
    if int(neck.get("num_outs", 5)) != 5 or neck.get("add_extra_convs", False) or neck.get("norm_cfg"):
        raise ValueError("model.neck: only num_outs=5 with the max-pool extra level, no extra convs and no norm (the "
                         f"official FPN) is supported, found {dict(neck)}")
    if int(neck.get("start_level", 0)) != 0 or int(neck.get("end_level", -1)) != -1:
        raise ValueError("model.neck: start_level/end_level must be the defaults (0, -1)")
    fpn_channels = int(_need(neck, "out_channels", "model.neck"))
    fpn = UniFormerFPNBackbone(backbone, in_channels, out_channels=fpn_channels)
    roi = _need(model_cfg, "roi_head", "model")
    test_cfg = dict(model_cfg.get("test_cfg") or {})
    train_cfg = dict(model_cfg.get("train_cfg") or {})
    rcnn_test = _rcnn_test_config(test_cfg.get("rcnn", roi.get("test_cfg")), "model.test_cfg.rcnn")
    rcnn_train = train_cfg.get("rcnn", roi.get("train_cfg"))
    transform = dict(min_size=min_size, max_size=max_size, image_mean=image_mean, image_std=image_std)

    if kind == "MaskRCNN":
        _check_type(roi, ("StandardRoIHead",), "model.roi_head")
        rpn = _rpn(model_cfg, fpn_channels, 5, 1000)
        box_cfg = _need(roi, "bbox_head", "model.roi_head")
        if isinstance(box_cfg, (list, tuple)):
            raise ValueError("model.roi_head.bbox_head must be one dict for a MaskRCNN (a list means CascadeRCNN)")
        num_convs, _, num_fcs, fc, _ = _box_head_dims(box_cfg, "model.roi_head.bbox_head")
        if (num_convs, num_fcs) != (0, 2):
            raise ValueError("model.roi_head.bbox_head: a MaskRCNN needs the Shared2FCBBoxHead structure (0 convs, "
                             f"2 fcs), found {num_convs} convs and {num_fcs} fcs")
        num_classes = int(_need(box_cfg, "num_classes", "model.roi_head.bbox_head"))
        box_pool = _roi_extractor(_need(roi, "bbox_roi_extractor", "model.roi_head"),
                                  "model.roi_head.bbox_roi_extractor", fpn_channels)
        size = _pair(box_cfg.get("roi_feat_size", box_pool.output_size), "model.roi_head.bbox_head.roi_feat_size")
        box_head = TwoMLPHead(fpn_channels * size * size, fc)
        box_predictor = FastRCNNPredictor(fc, num_classes + 1)
        mask_pool = _roi_extractor(_need(roi, "mask_roi_extractor", "model.roi_head"),
                                   "model.roi_head.mask_roi_extractor", fpn_channels)
        mask_head, mask_predictor = _mask_head(_need(roi, "mask_head", "model.roi_head"), "model.roi_head.mask_head",
                                               fpn_channels, num_classes)
        means, stds = _coder_stats(box_cfg.get("bbox_coder"), "model.roi_head.bbox_head")
        if isinstance(rcnn_train, (list, tuple)):
            raise ValueError("model.train_cfg.rcnn must be one dict for a MaskRCNN")
        heads = MMDetStandardRoIHeads(box_pool, box_head, box_predictor, mask_pool, mask_head, mask_predictor,
                                      means, stds, rcnn_test, _stage_train_config(rcnn_train, "model.train_cfg.rcnn"))
        return MMDetMaskRCNN(fpn, rpn, heads, **transform)

    _check_type(roi, ("CascadeRoIHead",), "model.roi_head")
    num_stages = int(_need(roi, "num_stages", "model.roi_head"))
    rpn = _rpn(model_cfg, fpn_channels, 5, 2000)

    def per_stage(value: Any, name: str) -> List[Any]:
        values = list(value) if isinstance(value, (list, tuple)) else [value] * num_stages
        if len(values) != num_stages:
            raise ValueError(f"model.roi_head.{name}: {len(values)} entries for num_stages={num_stages}")
        return values

    box_cfgs = per_stage(_need(roi, "bbox_head", "model.roi_head"), "bbox_head")
    box_extractors = per_stage(_need(roi, "bbox_roi_extractor", "model.roi_head"), "bbox_roi_extractor")
    mask_cfgs = per_stage(_need(roi, "mask_head", "model.roi_head"), "mask_head")
    mask_extractors = per_stage(_need(roi, "mask_roi_extractor", "model.roi_head"), "mask_roi_extractor")
    if any(dict(e) != dict(box_extractors[0]) for e in box_extractors) or \
            any(dict(e) != dict(mask_extractors[0]) for e in mask_extractors):
        raise ValueError("model.roi_head: per-stage RoI extractors with different settings are not supported")
    box_pool = _roi_extractor(box_extractors[0], "model.roi_head.bbox_roi_extractor", fpn_channels)
    mask_pool = _roi_extractor(mask_extractors[0], "model.roi_head.mask_roi_extractor", fpn_channels)
    train_cfgs = per_stage(rcnn_train if rcnn_train is not None else [None] * num_stages, "train_cfg")
    loss_weights = per_stage(roi.get("stage_loss_weights", [1.0] * num_stages), "stage_loss_weights")
    box_heads, predictors, mask_heads, mask_predictors, means_l, stds_l, losses = [], [], [], [], [], [], []
    num_classes = None
    for s, cfg in enumerate(box_cfgs):
        where = f"model.roi_head.bbox_head[{s}]"
        num_convs, conv, num_fcs, fc, with_norm = _box_head_dims(cfg, where)
        k = int(_need(cfg, "num_classes", where))
        if num_classes is not None and k != num_classes:
            raise ValueError(f"{where}: num_classes {k} differs from stage 0's {num_classes}")
        num_classes = k
        size = _pair(cfg.get("roi_feat_size", box_pool.output_size), f"{where}.roi_feat_size")
        if int(cfg.get("in_channels", fpn_channels)) != fpn_channels:
            raise ValueError(f"{where}: in_channels {cfg['in_channels']} must equal the FPN's {fpn_channels}")
        box_heads.append(FastRCNNConvFCHead((fpn_channels, size, size), [conv] * num_convs, [fc] * num_fcs,
                                            norm_layer=nn.BatchNorm2d if with_norm else None))
        rep = fc if num_fcs else (conv if num_convs else fpn_channels) * size * size
        predictors.append(FastRCNNPredictor(rep, k + 1))
        m, s_ = _coder_stats(cfg.get("bbox_coder"), where)
        means_l.append(m)
        stds_l.append(s_)
        losses.append(_box_loss_spec(cfg, where))
    for s, cfg in enumerate(mask_cfgs):
        head, pred = _mask_head(cfg, f"model.roi_head.mask_head[{s}]", fpn_channels, int(num_classes))
        mask_heads.append(head)
        mask_predictors.append(pred)
    defaults = [0.5, 0.6, 0.7]
    stage_train = [_stage_train_config(c, f"model.train_cfg.rcnn[{s}]", defaults[min(s, 2)])
                   for s, c in enumerate(train_cfgs)]
    heads = MMDetCascadeRoIHeads(box_pool, box_heads, predictors, mask_pool, mask_heads, mask_predictors, means_l,
                                 stds_l, loss_weights, rcnn_test, stage_train, losses)
    return MMDetCascadeRCNN(fpn, rpn, heads, **transform)


# ------------------------------------------------------------------------------------------ state dicts ---------
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
    ``state_dict``) renamed onto ``model`` (built by :func:`build_mmdet_detector`), with the row permutations:
    ``fc_cls`` background last → first, 4 zero background rows prepended to ``fc_reg``, a zero background channel
    prepended to ``conv_logits``. Strict both ways: an official key without counterpart, a model key left unfilled or
    a shape mismatch raises ``ValueError`` naming the keys; the result loads with ``load_state_dict(strict=True)``."""
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


def roi_head_modules(model: nn.Module) -> Iterator[Tuple[nn.Module, int, str]]:
    """(head, RoI side, 'box' | 'mask') for every box head (+ its predictor) and mask head (+ predictor) of a detector
    built here, stage by stage: what mmdet's ``forward_dummy`` runs on the RoI features (for FLOP counting)."""
    heads = model.roi_heads
    staged = lambda m: list(m) if isinstance(m, nn.ModuleList) else [m]  # noqa: E731
    for box_head, predictor in zip(staged(heads.box_head), staged(heads.box_predictor)):
        yield nn.Sequential(box_head, predictor), heads.box_roi_pool.output_size, "box"
    if getattr(heads, "mask_head", None) is not None:
        for mask_head, predictor in zip(staged(heads.mask_head), staged(heads.mask_predictor)):
            yield nn.Sequential(mask_head, predictor), heads.mask_roi_pool.output_size, "mask"


# -------------------------------------------------------------------------------------- official configs --------
def _official_backbone(name: str) -> Dict[str, Any]:
    if name.endswith("_xs"):
        return dict(type="UniFormer_Light", depth=[3, 5, 9, 3], conv_stem=True, embed_dim=[64, 128, 256, 512],
                    head_dim=32, mlp_ratio=[3, 3, 3, 3])
    if name.endswith("_xxs"):
        return dict(type="UniFormer_Light", depth=[2, 5, 8, 2], conv_stem=True, embed_dim=[56, 112, 224, 448],
                    head_dim=28, mlp_ratio=[3, 3, 3, 3])
    layers = [3, 4, 8, 3] if name.endswith("_small") else [5, 8, 20, 7]
    return dict(type="UniFormer", embed_dim=[64, 128, 320, 512], layers=layers, head_dim=64, mlp_ratio=4.0,
                qkv_bias=True, windows=False, hybrid=True, window_size=14, drop_rate=0.0, attn_drop_rate=0.0,
                use_checkpoint=False)


def _assigner(iou: float, low_quality: bool, min_pos: Optional[float] = None, neg: Optional[float] = None
              ) -> Dict[str, Any]:
    return dict(type="MaxIoUAssigner", pos_iou_thr=iou, neg_iou_thr=iou if neg is None else neg,
                min_pos_iou=iou if min_pos is None else min_pos, match_low_quality=low_quality, ignore_iof_thr=-1)


def _sampler(num: int, pos_fraction: float, add_gt: bool) -> Dict[str, Any]:
    return dict(type="RandomSampler", num=num, pos_fraction=pos_fraction, neg_pos_ub=-1, add_gt_as_proposals=add_gt)


def _rcnn_train(iou: float, low_quality: bool) -> Dict[str, Any]:
    return dict(assigner=_assigner(iou, low_quality), sampler=_sampler(512, 0.25, True), mask_size=28, pos_weight=-1,
                debug=False)


def official_detector_config(name: str, num_classes: int = 80) -> Dict[str, Any]:
    """The full-size mm model dict of an official detection config of Sense-X/UniFormer (``name`` a key of
    :data:`OFFICIAL_DETECTORS`, e.g. 'mask_rcnn_1x_hybrid_small', 'cascade_mask_rcnn_3x_ms_hybrid_base'): backbone,
    FPN (256 ch, 5 outputs), RPN (256), Shared2FC (1024) or 3 × ConvFC (4 conv 256 + fc 1024, SyncBN, GIoU) heads,
    FCN mask head(s) (4 × 256), ``num_classes`` (COCO: 80), the official train/test cfgs. Training-only backbone
    switches (drop path, gradient checkpointing) are left at their defaults."""
    if name not in OFFICIAL_DETECTORS:
        raise ValueError(f"unknown official detector {name!r}; expected one of {sorted(OFFICIAL_DETECTORS)}")
    backbone = _official_backbone(name)
    dims = list(backbone["embed_dim"])
    coder = lambda stds: dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=list(stds))  # noqa: E731
    extractor = lambda size: dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size,  # noqa
                                                                            sampling_ratio=0),
                                  out_channels=256, featmap_strides=[4, 8, 16, 32])
    mask_head = dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256, num_classes=num_classes,
                     loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))
    cascade = name.startswith("cascade")
    rpn_loss = (dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0) if cascade
                else dict(type="L1Loss", loss_weight=1.0))
    rpn_test = dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0)
    cfg: Dict[str, Any] = dict(
        type="CascadeRCNN" if cascade else "MaskRCNN",
        pretrained=None,
        backbone=backbone,
        neck=dict(type="FPN", in_channels=dims, out_channels=256, num_outs=5),
        rpn_head=dict(type="RPNHead", in_channels=256, feat_channels=256,
                      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                            strides=[4, 8, 16, 32, 64]),
                      bbox_coder=coder([1.0, 1.0, 1.0, 1.0]),
                      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0), loss_bbox=rpn_loss),
        test_cfg=dict(rpn=rpn_test, rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                                              max_per_img=100, mask_thr_binary=0.5)),
    )
    rpn_train = dict(assigner=_assigner(0.7, True, min_pos=0.3, neg=0.3), sampler=_sampler(256, 0.5, False),
                     allowed_border=0 if cascade else -1, pos_weight=-1, debug=False)
    if not cascade:
        cfg["roi_head"] = dict(
            type="StandardRoIHead", bbox_roi_extractor=extractor(7),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                           num_classes=num_classes, bbox_coder=coder([0.1, 0.1, 0.2, 0.2]), reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=extractor(14), mask_head=mask_head)
        cfg["train_cfg"] = dict(rpn=rpn_train, rpn_proposal=dict(nms_pre=2000, max_per_img=1000,
                                                                 nms=dict(type="nms", iou_threshold=0.7),
                                                                 min_bbox_size=0),
                                rcnn=_rcnn_train(0.5, True))
        return cfg
    stds = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    cfg["roi_head"] = dict(
        type="CascadeRoIHead", num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=extractor(7),
        bbox_head=[dict(type="ConvFCBBoxHead", num_shared_convs=4, num_shared_fcs=1, in_channels=256,
                        conv_out_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=num_classes,
                        bbox_coder=coder(s), reg_class_agnostic=False, reg_decoded_bbox=True,
                        norm_cfg=dict(type="SyncBN", requires_grad=True),
                        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                        loss_bbox=dict(type="GIoULoss", loss_weight=10.0)) for s in stds],
        mask_roi_extractor=extractor(14), mask_head=mask_head)
    cfg["test_cfg"]["rpn"].update(nms_across_levels=False, nms_post=1000)
    cfg["train_cfg"] = dict(rpn=rpn_train, rpn_proposal=dict(nms_across_levels=False, nms_pre=2000, nms_post=2000,
                                                             max_per_img=2000, nms=dict(type="nms", iou_threshold=0.7),
                                                             min_bbox_size=0),
                            rcnn=[_rcnn_train(iou, False) for iou in (0.5, 0.6, 0.7)])
    return cfg


_CASCADE_TASK_OPTIONS = ("fpn_channels", "conv_channels", "fc_channels", "mask_channels", "box_batch_size_per_image",
                         "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                         "rpn_post_nms_top_n_test", "box_detections_per_img")


def cascade_task_config(num_classes: int, in_channels: Sequence[int], **head_args: Any) -> Dict[str, Any]:
    """The official Cascade Mask R-CNN 3x head structure (``cascade_mask_rcnn_3x_ms_hybrid_*``) for ``num_classes``
    classes on a backbone with ``in_channels``, as an mm model dict for :func:`build_mmdet_detector`. ``head_args``
    may shrink it (CPU experiments): ``fpn_channels`` (256), ``conv_channels`` (256), ``fc_channels`` (1024),
    ``mask_channels`` (256), ``box_batch_size_per_image`` (512 sampled RoIs per stage), and the proposal / detection
    counts under torchvision's names: ``rpn_pre_nms_top_n_train`` (2000 per level), ``rpn_post_nms_top_n_train``
    (2000), ``rpn_pre_nms_top_n_test`` (1000 per level), ``rpn_post_nms_top_n_test`` (1000),
    ``box_detections_per_img`` (100)."""
    unknown = sorted(set(head_args) - set(_CASCADE_TASK_OPTIONS))
    if unknown:
        raise ValueError(f"unknown cascade_mask_rcnn option(s) {unknown}; expected some of "
                         f"{list(_CASCADE_TASK_OPTIONS)}")
    cfg = official_detector_config("cascade_mask_rcnn_3x_ms_hybrid_small", num_classes=int(num_classes))
    del cfg["backbone"]
    fpn = int(head_args.get("fpn_channels", 256))
    cfg["neck"]["in_channels"] = [int(c) for c in in_channels]
    cfg["neck"]["out_channels"] = fpn
    cfg["rpn_head"]["in_channels"] = cfg["rpn_head"]["feat_channels"] = fpn
    roi = cfg["roi_head"]
    for extractor in (roi["bbox_roi_extractor"], roi["mask_roi_extractor"]):
        extractor["out_channels"] = fpn
    for head in roi["bbox_head"]:
        head["in_channels"] = fpn
        head["conv_out_channels"] = int(head_args.get("conv_channels", 256))
        head["fc_out_channels"] = int(head_args.get("fc_channels", 1024))
    roi["mask_head"]["in_channels"] = fpn
    roi["mask_head"]["conv_out_channels"] = int(head_args.get("mask_channels", 256))
    if "box_batch_size_per_image" in head_args:
        for stage in cfg["train_cfg"]["rcnn"]:
            stage["sampler"]["num"] = int(head_args["box_batch_size_per_image"])
    for phase, rpn_cfg in (("train", cfg["train_cfg"]["rpn_proposal"]), ("test", cfg["test_cfg"]["rpn"])):
        if f"rpn_pre_nms_top_n_{phase}" in head_args:
            rpn_cfg["nms_pre"] = int(head_args[f"rpn_pre_nms_top_n_{phase}"])
        if f"rpn_post_nms_top_n_{phase}" in head_args:
            post = int(head_args[f"rpn_post_nms_top_n_{phase}"])
            rpn_cfg.update(max_per_img=post, nms_post=post)
    if "box_detections_per_img" in head_args:
        cfg["test_cfg"]["rcnn"]["max_per_img"] = int(head_args["box_detections_per_img"])
    return cfg
