"""The RoI heads of the mmdet 2.11 R-CNN port (:mod:`uniformer.tasks.mmdet_rcnn`): :class:`MMDetStandardRoIHeads`
(Mask R-CNN, a torchvision ``RoIHeads``) and :class:`MMDetCascadeRoIHeads` (Cascade Mask R-CNN's three stages),
sharing mmdet's final box / mask post-processing.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import box_iou, generalized_box_iou_loss

from .rcnn_config import RCNNTestConfig, StageTrainConfig
from .rcnn_ops import (ImgMeta, MMDetRoIExtractor, as_rois, delta2bbox, meta_hw, multiclass_nms, paste_masks,
                       scale_factor_tensor)

__all__ = ["MMDetStandardRoIHeads", "MMDetCascadeRoIHeads"]


def _mmdet_cls(cls_score: Tensor) -> Tensor:
    """torchvision class logits (background first) → mmdet order (background last)."""
    return torch.cat([cls_score[:, 1:], cls_score[:, :1]], dim=1)


class _MMDetStageTest:
    """mmdet's final box/mask post-processing shared by both RoI heads (``self.test_cfg``:
    :class:`~uniformer.tasks.rcnn_config.RCNNTestConfig`)."""

    test_cfg: RCNNTestConfig

    def _detections(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, means: Sequence[float],
                    stds: Sequence[float], meta: ImgMeta, rescale: bool = True) -> Tuple[Tensor, Tensor]:
        """mmdet ``BBoxHead.get_bboxes`` + ``multiclass_nms`` on one image: (dets (D, 5), labels (D,) 0-based)."""
        scores = F.softmax(cls_score, dim=1)
        bboxes = delta2bbox(rois, bbox_pred, means, stds, max_shape=meta_hw(meta, "img_shape"))
        if rescale and bboxes.shape[0] > 0:
            bboxes = (bboxes.view(bboxes.size(0), -1, 4) / scale_factor_tensor(meta, bboxes)).view(bboxes.size(0), -1)
        cfg = self.test_cfg
        return multiclass_nms(bboxes, scores, cfg.score_thr, cfg.iou_threshold, cfg.max_per_img)

    def _paste(self, mask_probs: Tensor, dets: Tensor, labels: Tensor, meta: ImgMeta,
               probabilities: bool = False) -> Tensor:
        """mmdet ``FCNMaskHead.get_seg_masks`` (rescale=True) from (D, K, M, M) probabilities."""
        img_h, img_w = meta_hw(meta, "ori_shape")
        if dets.shape[0] == 0:
            return dets.new_zeros((0, img_h, img_w), dtype=torch.float32 if probabilities else torch.bool)
        sf = scale_factor_tensor(meta, dets)
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
        rois = as_rois(proposals)
        cls, reg = self.bbox_forward(feats, rois)
        dets, labels = self._detections(rois[:, 1:], cls, reg, self.means, self.stds, meta)
        result = dict(boxes=dets[:, :4], scores=dets[:, 4], labels=labels)
        if self.has_mask():
            mask_rois = as_rois(dets[:, :4] * scale_factor_tensor(meta, dets))
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
            cls, reg = self.bbox_forward(s, feats, as_rois(boxes))
            rois_l.append(boxes)
            cls_l.append(cls)
            reg_l.append(reg)
            if s < self.num_stages - 1:
                boxes = self.regress_by_class(s, boxes, cls[:, :-1].argmax(dim=1), reg, img_shape)
        return rois_l, cls_l, reg_l

    def simple_test(self, feats: Sequence[Tensor], proposals: Tensor, meta: ImgMeta,
                    mask_probabilities: bool = False, rescale: bool = True) -> Dict[str, Tensor]:
        """mmdet ``CascadeRoIHead.simple_test(rescale=True)`` on one image's (N, 4|5) proposals (input pixels)."""
        rois_l, cls_l, reg_l = self.cascade_chain(feats, proposals, meta_hw(meta, "img_shape"))
        cls = cls_l[0]
        for c in cls_l[1:]:
            cls = cls + c
        cls = cls / float(len(cls_l))
        last = self.num_stages - 1
        dets, labels = self._detections(rois_l[-1], cls, reg_l[-1], self.stage_means[last], self.stage_stds[last],
                                        meta, rescale=rescale)
        result = dict(boxes=dets[:, :4], scores=dets[:, 4], labels=labels)
        mask_rois = as_rois(dets[:, :4] * scale_factor_tensor(meta, dets) if rescale else dets[:, :4])
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
