"""Task models on the backbones: semantic segmentation (:mod:`~uniformer.tasks.segmentation`: Semantic FPN, UperNet,
VT-FPN heads, ADE20K data, mIoU), detection and instance segmentation (:mod:`~uniformer.tasks.detection`: torchvision
Mask R-CNN, COCO data, pycocotools AP), top-down pose (:mod:`~uniformer.tasks.pose`: SimpleBaseline head, COCO
keypoints, OKS AP), the VT-FPN neck (:mod:`~uniformer.tasks.vt_fpn`), shared COCO helpers (:mod:`~uniformer.tasks.coco`)
and the builder that turns (task, backbone, options) into a model (:mod:`~uniformer.tasks.build`).
"""
