"""Datasets, transforms and readers (timm / torchvision first)."""
from .datasets import DIGITS, BadSample, DigitsDataset, DropBadCollate, ImageFolderDataset, build_image_dataset
from .images import load_image

__all__ = ["load_image", "DigitsDataset", "ImageFolderDataset", "build_image_dataset", "BadSample", "DropBadCollate",
           "DIGITS"]
