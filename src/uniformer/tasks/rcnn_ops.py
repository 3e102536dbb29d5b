"""The mmdet 2.11 building blocks of the R-CNN port (:mod:`uniformer.tasks.mmdet_rcnn`) on torchvision: box maths
(:func:`delta2bbox`, :func:`mmcv_batched_nms`, :func:`multiclass_nms`), mask pasting (:func:`paste_masks`), the
anchor generator (:class:`MMDetAnchorGenerator`), the RPN with mmdet's proposal post-processing (:class:`MMDetRPN`)
and the RoI feature extractor (:class:`MMDetRoIExtractor`), plus the small helpers on mmdet ``img_meta`` dicts.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import nms, roi_align

from .rcnn_config import ProposalConfig

__all__ = [
    "ImgMeta",
    "WH_RATIO_CLIP",
    "delta2bbox",
    "mmcv_batched_nms",
    "multiclass_nms",
    "paste_masks",
    "as_rois",
    "scale_factor_tensor",
    "meta_hw",
    "MMDetAnchorGenerator",
    "MMDetRPN",
    "MMDetRoIExtractor",
]

ImgMeta = Mapping[str, Any]
WH_RATIO_CLIP = 16 / 1000


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


def as_rois(boxes: Tensor) -> Tensor:
    """(K, 4) boxes of one image → (K, 5) RoIs with batch index 0."""
    return torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes[:, :4]], dim=1)


def scale_factor_tensor(meta: ImgMeta, like: Tensor) -> Tensor:
    sf = meta.get("scale_factor", 1.0)
    if isinstance(sf, (int, float)):
        sf = [float(sf)] * 4
    sf = torch.as_tensor(sf, dtype=torch.float32).flatten()
    if sf.numel() == 2:
        sf = sf.repeat(2)
    if sf.numel() != 4:
        raise ValueError(f"img_meta scale_factor must be a number or (w, h, w, h), found {meta.get('scale_factor')}")
    return sf.to(like.device, like.dtype)


def meta_hw(meta: ImgMeta, key: str) -> Tuple[int, int]:
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
