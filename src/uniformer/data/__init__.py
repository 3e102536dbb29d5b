"""Datasets, transforms and readers (timm / torchvision first)."""
from .images import load_image

__all__ = ["load_image"]
