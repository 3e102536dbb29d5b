"""The official mmdet 2.11 Mask R-CNN and Cascade Mask R-CNN of Sense-X/UniFormer on torchvision, reproducing the
official test-time outputs (spec ``dense-official.md`` §5) and loading the official checkpoints' state dicts.

:func:`build_mmdet_detector` turns an mm model dict (``model = dict(type='MaskRCNN' | 'CascadeRCNN', ...)`` of an
official config, e.g. from :func:`uniformer.tasks.mmconfig.read_mm_config` or
:func:`uniformer.tasks.mmdet_configs.official_detector_config`) and a backbone (e.g.
:func:`uniformer.tasks.official_backbone.build_official_backbone`) into a torchvision detector: :class:`MMDetMaskRCNN`
(a ``torchvision.models.detection.MaskRCNN``) or :class:`MMDetCascadeRCNN` (a ``GeneralizedRCNN``). Every size
(channels, fc widths, number of convs, RoI sizes, classes, target stds) and the test settings are read from the dict
(:mod:`uniformer.tasks.rcnn_config`). The parts that differ from torchvision's defaults follow mmdet 2.11 (the
blocks in :mod:`uniformer.tasks.rcnn_ops`, the RoI heads in :mod:`uniformer.tasks.rcnn_heads`):

- anchors: :class:`~uniformer.tasks.rcnn_ops.MMDetAnchorGenerator` (fixed strides, unrounded base anchors
  ``scales x strides`` x ratios);
- RPN: :class:`~uniformer.tasks.rcnn_ops.MMDetRPN` (per level top ``nms_pre`` by sigmoid score, mmdet's delta
  decoding clipped to the image, per-level NMS, ``max_per_img``, no size filter since ``min_bbox_size=0`` keeps
  zero-size proposals);
- RoI features: :class:`~uniformer.tasks.rcnn_ops.MMDetRoIExtractor` (``RoIAlign(aligned=True, sampling_ratio=0)``,
  mmdet's level mapping with ``finest_scale`` 56);
- boxes: class-specific decoding multiplied by the config's ``target_stds``, clipped to ``img_shape``, rescaled by
  ``scale_factor`` before per-class NMS, ``score_thr``, ``max_per_img``, no small-box removal
  (:func:`~uniformer.tasks.rcnn_ops.multiclass_nms`);
- Cascade: three ``ConvFCBBoxHead`` stages refined by the argmax over the non-background logits, final scores the
  softmax of the mean of the stages' logits, masks the mean of the three mask heads' sigmoids;
- masks: mmdet's paste (:func:`~uniformer.tasks.rcnn_ops.paste_masks`: ``grid_sample(align_corners=False)`` at the
  pixel centres of the original image) and ``>= mask_thr_binary``.

``model.simple_test(img, img_metas)`` is the mmdet-exact entry (input already normalised and padded, as mmdet's test
pipeline makes it); the intermediate steps are methods too (``neck``, ``rpn_head_outputs``, ``base_anchors``,
``proposals``, ``roi_levels``, ``roi_features``, ``bbox_forward``, ``cascade_chain``, ``mask_logits``,
``simple_test_proposals``). Both detectors also keep torchvision's interface: ``model(images, targets)`` in train mode
returns a dict of losses (Cascade: per-stage IoU thresholds, sampling, stage loss weights, GIoU or smooth-L1 box
loss, mask loss per stage), ``model(images)`` in eval mode returns torchvision-style detections (1-based labels,
masks ``(N, 1, H, W)`` probabilities) computed with the mmdet post-processing.

The official checkpoints load through :func:`uniformer.tasks.mmdet_weights.convert_mmdet_state_dict` (and go back
with :func:`~uniformer.tasks.mmdet_weights.to_mmdet_state_dict`). Class order: mmdet label ``i`` (0-based) =
torchvision label ``i + 1``.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import Conv2dNormActivation

from .detection import UniFormerFPNBackbone
from .rcnn_config import (check_type, coder_stats, proposal_config, rcnn_test_config, require_key, square_size,
                          stage_train_config)
from .rcnn_heads import MMDetCascadeRoIHeads, MMDetStandardRoIHeads
from .rcnn_ops import ImgMeta, MMDetAnchorGenerator, MMDetRoIExtractor, MMDetRPN, as_rois, meta_hw

__all__ = [
    "MMDetMaskRCNN",
    "MMDetCascadeRCNN",
    "MMDetFeatures",
    "build_mmdet_detector",
    "roi_head_modules",
]


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
                                         meta_hw(img_meta, "img_shape"), cfg=self.rpn.test_cfg, drop_empty=drop_empty)

    def roi_levels(self, boxes: Tensor) -> Tensor:
        """mmdet's FPN level (K,) of (K, 4) boxes (input pixels)."""
        return self.roi_heads.box_roi_pool.map_roi_levels(as_rois(boxes))

    def roi_features(self, feats: Sequence[Tensor], boxes: Tensor, kind: str = "bbox") -> Tensor:
        """RoIAlign features of (K, 4) boxes of image 0: ``kind`` 'bbox' (7x7) or 'mask' (14x14)."""
        if kind not in ("bbox", "mask"):
            raise ValueError(f"kind must be 'bbox' or 'mask', got {kind!r}")
        pool = self.roi_heads.box_roi_pool if kind == "bbox" else self.roi_heads.mask_roi_pool
        return pool.extract(list(feats)[:len(pool.featmap_strides)], as_rois(boxes))

    def _roi_feats(self, feats: Sequence[Tensor]) -> List[Tensor]:
        return list(feats)[:len(self.roi_heads.box_roi_pool.featmap_strides)]

    def bbox_forward(self, feats: Sequence[Tensor], boxes: Tensor, stage: int = 0) -> Tuple[Tensor, Tensor]:
        """mmdet bbox head outputs (cls_score (K, C+1) background last, bbox_pred (K, 4C)) on (K, 4) boxes."""
        if self.mm_type == "CascadeRCNN":
            return self.roi_heads.bbox_forward(stage, self._roi_feats(feats), as_rois(boxes))
        return self.roi_heads.bbox_forward(self._roi_feats(feats), as_rois(boxes))

    def mask_logits(self, feats: Sequence[Tensor], boxes: Tensor, stage: int = 0) -> Tensor:
        """mmdet mask head logits (K, C, 28, 28) on (K, 4) boxes (Cascade: of stage ``stage``)."""
        if self.mm_type == "CascadeRCNN":
            return self.roi_heads.mask_logits(stage, self._roi_feats(feats), as_rois(boxes))
        return self.roi_heads.mask_logits(self._roi_feats(feats), as_rois(boxes))

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
    (:class:`~uniformer.tasks.rcnn_ops.MMDetRPN`), ``roi_heads``
    (:class:`~uniformer.tasks.rcnn_heads.MMDetCascadeRoIHeads`), ``transform`` (torchvision's, for the ``forward``
    interface only). ``forward`` in training mode returns the losses, in eval mode torchvision-style
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
        return self.roi_heads.cascade_chain(self._roi_feats(feats), boxes, meta_hw(img_meta, "img_shape"))

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
    kind = check_type(cfg, ("Shared2FCBBoxHead", "ConvFCBBoxHead", "Shared4Conv1FCBBoxHead"), where)
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
    check_type(cfg, ("SingleRoIExtractor",), where)
    layer = require_key(cfg, "roi_layer", where)
    check_type(layer, ("RoIAlign",), f"{where}.roi_layer")
    if layer.get("pool_mode", "avg") != "avg":
        raise ValueError(f"{where}.roi_layer: pool_mode {layer.get('pool_mode')!r} is not supported; expected 'avg'")
    channels = int(cfg.get("out_channels", expected_channels))
    if channels != expected_channels:
        raise ValueError(f"{where}: out_channels {channels} must equal the FPN's {expected_channels}")
    return MMDetRoIExtractor(square_size(require_key(layer, "output_size", f"{where}.roi_layer"), f"{where}.roi_layer"),
                             require_key(cfg, "featmap_strides", where), int(layer.get("sampling_ratio", 0)),
                             bool(layer.get("aligned", True)), int(cfg.get("finest_scale", 56)))


def _mask_head(cfg: Mapping[str, Any], where: str, in_channels: int, num_classes: int
               ) -> Tuple[MaskRCNNHeads, MaskRCNNPredictor]:
    check_type(cfg, ("FCNMaskHead",), where)
    if cfg.get("class_agnostic", False):
        raise ValueError(f"{where}: class_agnostic=True is not supported")
    if int(cfg.get("conv_kernel_size", 3)) != 3:
        raise ValueError(f"{where}: conv_kernel_size {cfg['conv_kernel_size']} is not supported; expected 3")
    up = cfg.get("upsample_cfg", {"type": "deconv", "scale_factor": 2})
    if up.get("type", "deconv") != "deconv" or int(up.get("scale_factor", 2)) != 2:
        raise ValueError(f"{where}: upsample_cfg {up} is not supported; expected dict(type='deconv', scale_factor=2)")
    if int(cfg.get("in_channels", in_channels)) != in_channels:
        raise ValueError(f"{where}: in_channels {cfg['in_channels']} must equal the FPN's {in_channels}")
    if int(require_key(cfg, "num_classes", where)) != num_classes:
        raise ValueError(f"{where}: num_classes {cfg['num_classes']} differs from the bbox head's {num_classes}")
    conv = int(cfg.get("conv_out_channels", 256))
    num_convs = int(cfg.get("num_convs", 4))
    if num_convs < 1:
        raise ValueError(f"{where}: num_convs must be >= 1, found {num_convs}")
    return MaskRCNNHeads(in_channels, [conv] * num_convs, 1), MaskRCNNPredictor(conv, conv, num_classes + 1)


def _rpn(model_cfg: Mapping[str, Any], fpn_channels: int, num_levels: int, default_train_post: int) -> MMDetRPN:
    head_cfg = require_key(model_cfg, "rpn_head", "model")
    check_type(head_cfg, ("RPNHead",), "model.rpn_head")
    in_ch = int(head_cfg.get("in_channels", fpn_channels))
    if in_ch != fpn_channels:
        raise ValueError(f"model.rpn_head: in_channels {in_ch} must equal the FPN's out_channels {fpn_channels}")
    feat = int(head_cfg.get("feat_channels", in_ch))
    ag = require_key(head_cfg, "anchor_generator", "model.rpn_head")
    check_type(ag, ("AnchorGenerator",), "model.rpn_head.anchor_generator")
    if "scales" not in ag:
        raise ValueError("model.rpn_head.anchor_generator: only explicit 'scales' are supported "
                         "(octave_base_scale / scales_per_octave are not)")
    anchors = MMDetAnchorGenerator(require_key(ag, "strides", "model.rpn_head.anchor_generator"),
                                   require_key(ag, "ratios", "model.rpn_head.anchor_generator"), ag["scales"],
                                   ag.get("base_sizes"), float(ag.get("center_offset", 0.0)))
    if len(anchors.strides) != num_levels:
        raise ValueError(f"model.rpn_head.anchor_generator: {len(anchors.strides)} strides for {num_levels} FPN levels")
    head = RPNHead(in_ch, anchors.num_anchors_per_location()[0])
    if feat != in_ch:
        head.conv = nn.Sequential(Conv2dNormActivation(in_ch, feat, kernel_size=3, norm_layer=None))
        head.cls_logits = nn.Conv2d(feat, head.cls_logits.out_channels, 1)
        head.bbox_pred = nn.Conv2d(feat, head.bbox_pred.out_channels, 1)
    means, stds = coder_stats(head_cfg.get("bbox_coder"), "model.rpn_head")
    test_cfg = dict(model_cfg.get("test_cfg") or {})
    train_cfg = dict(model_cfg.get("train_cfg") or {})
    test = proposal_config(test_cfg.get("rpn"), "model.test_cfg.rpn", 1000, 1000)
    train = proposal_config(train_cfg.get("rpn_proposal"), "model.train_cfg.rpn_proposal", 2000, default_train_post)
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
    mmdet-prepared tensors). Load official weights with
    :func:`~uniformer.tasks.mmdet_weights.convert_mmdet_state_dict`."""
    kind = check_type(model_cfg, ("MaskRCNN", "CascadeRCNN"), "model")
    neck = require_key(model_cfg, "neck", "model")
    check_type(neck, ("FPN",), "model.neck")
    in_channels = [int(c) for c in require_key(neck, "in_channels", "model.neck")]
    if len(in_channels) != 4:
        raise ValueError(f"model.neck.in_channels must list the 4 backbone stage channels, found {in_channels}")
    if int(neck.get("num_outs", 5)) != 5 or neck.get("add_extra_convs", False) or neck.get("norm_cfg"):
        raise ValueError("model.neck: only num_outs=5 with the max-pool extra level, no extra convs and no norm (the "
                         f"official FPN) is supported, found {dict(neck)}")
    if int(neck.get("start_level", 0)) != 0 or int(neck.get("end_level", -1)) != -1:
        raise ValueError("model.neck: start_level/end_level must be the defaults (0, -1)")
    fpn_channels = int(require_key(neck, "out_channels", "model.neck"))
    fpn = UniFormerFPNBackbone(backbone, in_channels, out_channels=fpn_channels)
    roi = require_key(model_cfg, "roi_head", "model")
    test_cfg = dict(model_cfg.get("test_cfg") or {})
    train_cfg = dict(model_cfg.get("train_cfg") or {})
    rcnn_test = rcnn_test_config(test_cfg.get("rcnn", roi.get("test_cfg")), "model.test_cfg.rcnn")
    rcnn_train = train_cfg.get("rcnn", roi.get("train_cfg"))
    transform = dict(min_size=min_size, max_size=max_size, image_mean=image_mean, image_std=image_std)

    if kind == "MaskRCNN":
        check_type(roi, ("StandardRoIHead",), "model.roi_head")
        rpn = _rpn(model_cfg, fpn_channels, 5, 1000)
        box_cfg = require_key(roi, "bbox_head", "model.roi_head")
        if isinstance(box_cfg, (list, tuple)):
            raise ValueError("model.roi_head.bbox_head must be one dict for a MaskRCNN (a list means CascadeRCNN)")
        num_convs, _, num_fcs, fc, _ = _box_head_dims(box_cfg, "model.roi_head.bbox_head")
        if (num_convs, num_fcs) != (0, 2):
            raise ValueError("model.roi_head.bbox_head: a MaskRCNN needs the Shared2FCBBoxHead structure (0 convs, "
                             f"2 fcs), found {num_convs} convs and {num_fcs} fcs")
        num_classes = int(require_key(box_cfg, "num_classes", "model.roi_head.bbox_head"))
        box_pool = _roi_extractor(require_key(roi, "bbox_roi_extractor", "model.roi_head"),
                                  "model.roi_head.bbox_roi_extractor", fpn_channels)
        size = square_size(box_cfg.get("roi_feat_size", box_pool.output_size), "model.roi_head.bbox_head.roi_feat_size")
        box_head = TwoMLPHead(fpn_channels * size * size, fc)
        box_predictor = FastRCNNPredictor(fc, num_classes + 1)
        mask_pool = _roi_extractor(require_key(roi, "mask_roi_extractor", "model.roi_head"),
                                   "model.roi_head.mask_roi_extractor", fpn_channels)
        mask_head, mask_predictor = _mask_head(require_key(roi, "mask_head", "model.roi_head"),
                                               "model.roi_head.mask_head", fpn_channels, num_classes)
        means, stds = coder_stats(box_cfg.get("bbox_coder"), "model.roi_head.bbox_head")
        if isinstance(rcnn_train, (list, tuple)):
            raise ValueError("model.train_cfg.rcnn must be one dict for a MaskRCNN")
        heads = MMDetStandardRoIHeads(box_pool, box_head, box_predictor, mask_pool, mask_head, mask_predictor,
                                      means, stds, rcnn_test, stage_train_config(rcnn_train, "model.train_cfg.rcnn"))
        return MMDetMaskRCNN(fpn, rpn, heads, **transform)

    check_type(roi, ("CascadeRoIHead",), "model.roi_head")
    num_stages = int(require_key(roi, "num_stages", "model.roi_head"))
    rpn = _rpn(model_cfg, fpn_channels, 5, 2000)

    def per_stage(value: Any, name: str) -> List[Any]:
        values = list(value) if isinstance(value, (list, tuple)) else [value] * num_stages
        if len(values) != num_stages:
            raise ValueError(f"model.roi_head.{name}: {len(values)} entries for num_stages={num_stages}")
        return values

    box_cfgs = per_stage(require_key(roi, "bbox_head", "model.roi_head"), "bbox_head")
    box_extractors = per_stage(require_key(roi, "bbox_roi_extractor", "model.roi_head"), "bbox_roi_extractor")
    mask_cfgs = per_stage(require_key(roi, "mask_head", "model.roi_head"), "mask_head")
    mask_extractors = per_stage(require_key(roi, "mask_roi_extractor", "model.roi_head"), "mask_roi_extractor")
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
        k = int(require_key(cfg, "num_classes", where))
        if num_classes is not None and k != num_classes:
            raise ValueError(f"{where}: num_classes {k} differs from stage 0's {num_classes}")
        num_classes = k
        size = square_size(cfg.get("roi_feat_size", box_pool.output_size), f"{where}.roi_feat_size")
        if int(cfg.get("in_channels", fpn_channels)) != fpn_channels:
            raise ValueError(f"{where}: in_channels {cfg['in_channels']} must equal the FPN's {fpn_channels}")
        box_heads.append(FastRCNNConvFCHead((fpn_channels, size, size), [conv] * num_convs, [fc] * num_fcs,
                                            norm_layer=nn.BatchNorm2d if with_norm else None))
        rep = fc if num_fcs else (conv if num_convs else fpn_channels) * size * size
        predictors.append(FastRCNNPredictor(rep, k + 1))
        m, s_ = coder_stats(cfg.get("bbox_coder"), where)
        means_l.append(m)
        stds_l.append(s_)
        losses.append(_box_loss_spec(cfg, where))
    for s, cfg in enumerate(mask_cfgs):
        head, pred = _mask_head(cfg, f"model.roi_head.mask_head[{s}]", fpn_channels, int(num_classes))
        mask_heads.append(head)
        mask_predictors.append(pred)
    defaults = [0.5, 0.6, 0.7]
    stage_train = [stage_train_config(c, f"model.train_cfg.rcnn[{s}]", defaults[min(s, 2)])
                   for s, c in enumerate(train_cfgs)]
    heads = MMDetCascadeRoIHeads(box_pool, box_heads, predictors, mask_pool, mask_heads, mask_predictors, means_l,
                                 stds_l, loss_weights, rcnn_test, stage_train, losses)
    return MMDetCascadeRCNN(fpn, rpn, heads, **transform)


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
