"""The official mmdet detection configs of Sense-X/UniFormer as mm model dicts, for
:func:`uniformer.tasks.mmdet_rcnn.build_mmdet_detector`: :data:`OFFICIAL_DETECTORS` (name → config file),
:func:`official_detector_config` (the full-size dict of one), :func:`cascade_task_config` (the Cascade Mask R-CNN 3x
head structure on any backbone, optionally shrunk) and :func:`coco80_class_names` (mmdet's COCO class order).
"""
from __future__ import annotations

import types
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["OFFICIAL_DETECTORS", "official_detector_config", "cascade_task_config", "coco80_class_names"]

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
    classes on a backbone with ``in_channels``, as an mm model dict for
    :func:`~uniformer.tasks.mmdet_rcnn.build_mmdet_detector`. ``head_args`` may shrink it (CPU experiments):
    ``fpn_channels`` (256), ``conv_channels`` (256), ``fc_channels`` (1024), ``mask_channels`` (256),
    ``box_batch_size_per_image`` (512 sampled RoIs per stage), and the proposal / detection counts under torchvision's
    names: ``rpn_pre_nms_top_n_train`` (2000 per level), ``rpn_post_nms_top_n_train`` (2000), ``rpn_pre_nms_top_n_test``
    (1000 per level), ``rpn_post_nms_top_n_test`` (1000), ``box_detections_per_img`` (100)."""
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
