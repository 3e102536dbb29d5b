"""Reading user images robustly (any PIL-readable file → 8-bit RGB, with errors that name the file), turning
tensors and arrays into RGB PIL images, and writing images atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .._io import PathLike, atomic_path

__all__ = ["load_image", "to_pil_rgb", "save_image_atomic"]


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greyscale: rescale to 8 bit
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image as 8-bit RGB (greyscale, palette, 16-bit and alpha images are converted; alpha over white).

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` naming the file if it is not a readable
    image (unknown format, truncated data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {path}: not an image file PIL recognises") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def to_pil_rgb(image: Union[torch.Tensor, np.ndarray, Image.Image]) -> Image.Image:
    """An RGB PIL image from a PIL image, a (3, H, W) float [0, 1] / uint8 tensor or an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"image tensor must be (3, H, W), got shape {tuple(t.shape)}")
        if t.dtype.is_floating_point:
            t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(t.expand(3, -1, -1).permute(1, 2, 0).numpy(), "RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image array must be (H, W, 3), got shape {arr.shape}")
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def save_image_atomic(img: Image.Image, output_path: PathLike) -> Path:
    """Write ``img`` atomically; the format follows the suffix (PNG when unknown)."""
    output_path = Path(output_path)
    fmt = Image.registered_extensions().get(output_path.suffix.lower(), "PNG")
    with atomic_path(output_path) as tmp:
        img.save(tmp, format=fmt)
    return output_path
