"""Datasets, transforms and readers (timm / torchvision first)."""
from .datasets import DIGITS, DigitsDataset, build_image_dataset
from .images import load_image

__all__ = ["load_image", "DigitsDataset", "build_image_dataset", "DIGITS"]
