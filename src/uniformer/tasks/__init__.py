"""Task models on the backbones: semantic segmentation (:mod:`~uniformer.tasks.segmentation`: Semantic FPN, UperNet,
VT-FPN heads, mIoU; heads in :mod:`~uniformer.tasks.seg_heads`, the FPN neck and the one feature-level check in
:mod:`~uniformer.tasks.necks`, the official mmseg models in :mod:`~uniformer.tasks.mmseg`), detection and instance
segmentation (:mod:`~uniformer.tasks.detection`: torchvision Mask R-CNN, COCO data, pycocotools AP), top-down pose
(:mod:`~uniformer.tasks.pose`: SimpleBaseline head; its decoding, flip test, OKS-NMS, OKS AP and overlays in
:mod:`~uniformer.tasks.pose_eval`, re-exported here), the VT-FPN neck (:mod:`~uniformer.tasks.vt_fpn`) and the
builder that turns (task, backbone, options) into a model (:mod:`~uniformer.tasks.build`). The COCO helpers and the
keypoint dataset live in the data layer (:mod:`uniformer.data.coco`, :mod:`uniformer.data.coco_keypoints`), as does
the ADE20K segmentation data (:mod:`uniformer.data.ade20k`).
"""
from .pose_eval import decode_heatmaps, evaluate_keypoints, flip_test, keypoint_results, save_pose_overlay

__all__ = ["decode_heatmaps", "evaluate_keypoints", "flip_test", "keypoint_results", "save_pose_overlay"]
