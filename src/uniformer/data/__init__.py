"""Datasets, transforms and readers (timm / torchvision first); COCO annotation helpers (:mod:`~uniformer.data.coco`)
and the top-down COCO keypoint data (:mod:`~uniformer.data.coco_keypoints`).
"""
from .coco_keypoints import CocoKeypoints
from .datasets import DIGITS, BadSample, DigitsDataset, DropBadCollate, ImageFolderDataset, build_image_dataset
from .images import load_image

__all__ = ["load_image", "DigitsDataset", "ImageFolderDataset", "build_image_dataset", "BadSample", "DropBadCollate",
           "DIGITS", "CocoKeypoints"]
