"""The official OpenMMLab test-time pre-processing, re-implemented with cv2 on uint8 images.

The official UniFormer dense models were evaluated with mmcv 1.x pipelines: mmdet 2.11 ``Resize(1333, 800)`` +
``Normalize`` + ``Pad(size_divisor=32)``, mmseg 0.13 ``Resize(2048, 512)`` (UperNet) or the fork's
``AlignResize(size_divisor=32)`` (Semantic FPN), and mmpose 0.16 ``TopDownAffine`` + ``ToTensor`` +
``NormalizeTensor``. These resize the **uint8** image with OpenCV before normalising, which torchvision's
float resizes do not reproduce pixel for pixel; the functions here do the same cv2 calls in the same order so a
port can feed the official models exactly what they saw (checked against
``reference/parity/dense_heads/preprocess.pt``). All entry points take an **RGB** ``H x W x 3`` uint8 array
(mmcv loads BGR and converts to RGB inside ``Normalize``; resizing is per channel, so the order is irrelevant
until then).
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .padding import pad_to_multiple, padded_size

__all__ = [
    "IMAGENET_MEAN_255",
    "IMAGENET_STD_255",
    "rescale_size",
    "imrescale",
    "align_resize",
    "normalize",
    "mmdet_test_input",
    "mmseg_test_input",
    "get_affine_transform",
    "box_to_center_scale",
    "topdown_affine_input",
    "ade20k_class_names",
]

#: mmdet/mmseg ``img_norm_cfg`` (RGB, 0-255 scale)
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def _check_image(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``img`` as a C-contiguous ``H x W x 3`` uint8 array or raise a ValueError saying what is wrong."""
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (H, W, 3) uint8, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {tuple(img.shape)}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (the official pipelines resize uint8 images), got {img.dtype}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got {tuple(img.shape)}")
    return np.ascontiguousarray(img)


def _check_scale(scale: Sequence[float], name: str = "img_scale") -> Tuple[float, float]:
    if not isinstance(scale, (tuple, list)) or len(scale) != 2 or not all(
            isinstance(v, (int, float)) and v > 0 for v in scale):
        raise ValueError(f"{name} must be two positive numbers (long, short edge limits), got {scale!r}")
    return float(scale[0]), float(scale[1])


def rescale_size(old_size: Tuple[int, int], scale: Sequence[float]) -> Tuple[Tuple[int, int], float]:
    """Keep-ratio target size as mmcv ``rescale_size`` computes it for a ``(long, short)`` edge limit pair.

    ``old_size`` is ``(w, h)``. The factor is ``min(max(scale) / long_edge, min(scale) / short_edge)`` and the new
    size is ``(int(w * f + 0.5), int(h * f + 0.5))`` (round half up, not floor). Returns ``((new_w, new_h), f)``.
    """
    w, h = int(old_size[0]), int(old_size[1])
    a, b = _check_scale(scale)
    factor = min(max(a, b) / max(h, w), min(a, b) / min(h, w))
    return (int(w * factor + 0.5), int(h * factor + 0.5)), factor


def imrescale(img: np.ndarray, scale: Sequence[float]) -> Tuple[np.ndarray, float]:
    """Keep-ratio resize of a uint8 ``H x W x C`` image as mmcv ``imrescale`` does (cv2 ``INTER_LINEAR``).

    ``scale`` is the ``(long, short)`` edge limit pair of the config (e.g. ``(1333, 800)`` or ``(2048, 512)``);
    the size rule is :func:`rescale_size`. Returns ``(resized image, scale factor)``.
    """
    img = _check_image(img)
    h, w = img.shape[:2]
    (new_w, new_h), factor = rescale_size((w, h), scale)
    out = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return out, factor


def align_resize(img: np.ndarray, scale: Sequence[float], size_divisor: int = 32) -> np.ndarray:
    """The UniFormer mmseg fork's ``AlignResize``: :func:`imrescale`, then a second cv2 bilinear resize of the
    result to ``ceil(h / size_divisor) * size_divisor`` by ``ceil(w / size_divisor) * size_divisor``.

    Note that the second step is a resize (the image is stretched slightly), not a pad.
    """
    if int(size_divisor) < 1:
        raise ValueError(f"size_divisor must be a positive integer, got {size_divisor}")
    out, _ = imrescale(img, scale)
    h, w = out.shape[:2]
    ah, aw = padded_size((h, w), size_divisor)
    return cv2.resize(out, (aw, ah), interpolation=cv2.INTER_LINEAR)


def normalize(img: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN_255,
              std: Sequence[float] = IMAGENET_STD_255) -> np.ndarray:
    """mmcv ``imnormalize`` of an RGB image: float32 ``(img - mean) / std`` per channel on 0-255 values.

    Returns a float32 ``H x W x 3`` array. The arithmetic is float32 throughout, which reproduces the oracle's
    values bit for bit (``preprocess.pt``; float64 constants would differ in the last bit for ~half the pixels).
    """
    if img.ndim != 3 or img.shape[2] != len(mean) or len(mean) != len(std):
        raise ValueError(f"normalize expects (H, W, {len(mean)}) with {len(mean)} means/stds, got image "
                         f"{tuple(img.shape)}, {len(mean)} means, {len(std)} stds")
    mean32 = np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
    std32 = np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
    return (img.astype(np.float32) - mean32) / std32


def _scale_factor(new_hw: Tuple[int, int], old_hw: Tuple[int, int]) -> np.ndarray:
    w_scale = new_hw[1] / old_hw[1]
    h_scale = new_hw[0] / old_hw[0]
    return np.array([w_scale, h_scale, w_scale, h_scale], dtype=np.float32)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)


def _img_meta(original: np.ndarray, resized: np.ndarray, padded: np.ndarray) -> Dict[str, Any]:
    """The mm ``img_meta`` of a test image: shapes before/after resize and padding, mmcv's scale factor."""
    return {"ori_shape": tuple(original.shape), "img_shape": tuple(resized.shape), "pad_shape": tuple(padded.shape),
            "scale_factor": _scale_factor(resized.shape[:2], original.shape[:2]), "flip": False}


def mmdet_test_input(image_rgb_uint8: np.ndarray, img_scale: Tuple[int, int] = (1333, 800),
                     size_divisor: int = 32) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The mmdet 2.11 test pipeline: keep-ratio ``Resize(img_scale)``, ``Normalize`` (RGB), ``Pad(32)``.

    Returns ``(tensor (1, 3, H_pad, W_pad) float32, img_meta)`` where ``img_meta`` holds ``ori_shape``,
    ``img_shape`` (after resize, before padding), ``pad_shape`` (all ``(h, w, 3)`` tuples), ``scale_factor``
    (float32 ``[w_scale, h_scale, w_scale, h_scale]`` = new/old size per axis) and ``flip=False``.
    """
    img = _check_image(image_rgb_uint8, "image_rgb_uint8")
    resized, _ = imrescale(img, img_scale)
    norm = normalize(resized)
    padded = pad_to_multiple(norm, size_divisor)
    return _to_tensor(padded), _img_meta(img, resized, padded)


def mmseg_test_input(image_rgb_uint8: np.ndarray, img_scale: Tuple[int, int] = (2048, 512),
                     align: bool = False) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The mmseg 0.13 test pipeline of the UniFormer configs: keep-ratio ``Resize(img_scale)`` (UperNet,
    ``align=False``) or the fork's ``AlignResize(img_scale, size_divisor=32)`` (Semantic FPN, ``align=True``),
    then ``Normalize`` (RGB); no padding.

    Returns ``(tensor (1, 3, H, W) float32, img_meta)`` with ``ori_shape``, ``img_shape``, ``pad_shape``
    (= ``img_shape``), ``scale_factor`` (float32 ``[w_scale, h_scale, w_scale, h_scale]``) and ``flip=False``.
    """
    img = _check_image(image_rgb_uint8, "image_rgb_uint8")
    resized = align_resize(img, img_scale, 32) if align else imrescale(img, img_scale)[0]
    norm = normalize(resized)
    return _to_tensor(norm), _img_meta(img, resized, norm)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point that makes ``(a, b, c)`` a right angle at ``b``: ``b`` plus ``a - b`` turned by 90 degrees."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def get_affine_transform(center: Sequence[float], scale: Sequence[float], rot: float,
                         output_size: Tuple[int, int], shift: Tuple[float, float] = (0.0, 0.0),
                         inv: bool = False) -> np.ndarray:
    """mmpose's 2x3 crop transform from a box (``center``, ``scale`` in units of 200 px) to ``output_size`` (w, h).

    Three point pairs define it (cv2 ``getAffineTransform`` on float32 points): the box centre maps to the output
    centre, the point half a box width above the centre (rotated by ``rot`` degrees) maps to the point half an
    output width above the output centre, and the third point of each triple completes a right angle. The
    vertical scale therefore follows the horizontal one (the box must already have the output aspect ratio).
    ``inv=True`` returns the output-to-image transform.
    """
    if len(center) != 2 or len(scale) != 2 or len(output_size) != 2:
        raise ValueError(f"center, scale and output_size must have 2 values each, got {len(center)}, "
                         f"{len(scale)}, {len(output_size)}")
    center = np.asarray(center, dtype=np.float32)
    scale_px = np.asarray(scale, dtype=np.float32) * 200.0
    shift_arr = np.asarray(shift, dtype=np.float32)
    src_w = scale_px[0]
    dst_w, dst_h = float(output_size[0]), float(output_size[1])
    rad = np.pi * rot / 180.0
    sn, cs = np.sin(rad), np.cos(rad)
    # (0, -src_w / 2) rotated by rot, in float64 (added to the float32 centre, then stored as float32, as mmpose)
    src_dir = np.array([-(float(src_w) * -0.5) * sn, (float(src_w) * -0.5) * cs], dtype=np.float64)
    dst_dir = np.array([0.0, dst_w * -0.5], dtype=np.float64)
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center + scale_px * shift_arr
    src[1] = center + src_dir + scale_px * shift_arr
    src[2] = _third_point(src[0], src[1])
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    dst[2] = _third_point(dst[0], dst[1])
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def box_to_center_scale(box_xywh: Sequence[float], image_size: Tuple[int, int] = (192, 256),
                        padding: float = 1.25) -> Tuple[np.ndarray, np.ndarray]:
    """mmpose ``_xywh2cs`` (test mode): a person box ``(x, y, w, h)`` to ``(center, scale)`` float32 arrays.

    The centre is ``(x + w/2, y + h/2)``; the box is enlarged to the aspect ratio ``image_size[0] / image_size[1]``
    (w / h) and ``scale = (w, h) / 200 * padding`` (units of 200 px, as mmpose keeps it).
    """
    if len(box_xywh) != 4:
        raise ValueError(f"box_xywh must be (x, y, w, h), got {len(box_xywh)} values")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (w, h) with positive sizes, got {tuple(image_size)}")
    x, y, w, h = (float(v) for v in box_xywh)
    aspect = image_size[0] / image_size[1]
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect * h:
        h = w * 1.0 / aspect
    elif w < aspect * h:
        w = h * aspect
    scale = np.array([w / 200.0, h / 200.0], dtype=np.float32) * padding
    return center, scale


def topdown_affine_input(image_rgb_uint8: np.ndarray, center: Sequence[float], scale: Sequence[float],
                         image_size: Tuple[int, int] = (192, 256)) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The mmpose 0.16 top-down test pipeline: ``TopDownAffine`` (cv2 ``warpAffine``, ``INTER_LINEAR``, rotation 0)
    on the uint8 RGB image, ``ToTensor`` (/255) and ``NormalizeTensor`` (ImageNet mean/std).

    ``center``/``scale`` come from :func:`box_to_center_scale` (scale in units of 200 px); ``image_size`` is
    ``(w, h)``. Returns ``(tensor (1, 3, h, w) float32, meta)`` with ``center``, ``scale`` (float32 arrays),
    ``rotation=0`` and the affine ``transform`` (2x3, image to crop).
    """
    img = _check_image(image_rgb_uint8, "image_rgb_uint8")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (w, h) with positive sizes, got {tuple(image_size)}")
    out_w, out_h = int(image_size[0]), int(image_size[1])
    trans = get_affine_transform(center, scale, 0.0, (out_w, out_h))
    crop = cv2.warpAffine(img, trans, (out_w, out_h), flags=cv2.INTER_LINEAR)
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div(255)
    # mmpose NormalizeTensor (RGB, 0-1 scale)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32).view(3, 1, 1)
    x = x.sub(mean).div(std)
    meta = {
        "center": np.asarray(center, dtype=np.float32),
        "scale": np.asarray(scale, dtype=np.float32),
        "rotation": 0,
        "transform": trans,
    }
    return x.unsqueeze(0), meta


def ade20k_class_names() -> List[str]:
    """The 150 ADE20K class names in mmseg ``ADE20KDataset.CLASSES`` order (prediction ``c`` = name ``c``).

    Read from the package data file ``uniformer/data/ade20k_classes.txt`` (one name per line); raises a
    ValueError if the file does not hold exactly 150 names.
    """
    text = resources.files("uniformer.data").joinpath("ade20k_classes.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 150:
        raise ValueError(f"ade20k_classes.txt must list 150 class names, found {len(names)}")
    return names
