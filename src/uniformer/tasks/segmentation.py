"""Semantic segmentation on top of any four-level backbone (spec ``uniformer.md`` §5.3, ``ecosystem.md`` §5): an
ADE20K-layout dataset, mmseg-style joint image/mask transforms, the Semantic FPN, VT-FPN and UperNet (+ FCN auxiliary)
heads wrapped in :class:`SegmentationModel`, whole-image and sliding-window inference, the dataset-level mIoU metric
and colour overlays. The FPN / VT-FPN necks and the GroupNorm FPN head are those of :mod:`uniformer.tasks.vt_fpn`;
the mmseg heads (BatchNorm Semantic FPN, UperNet, FCN) and the official mmseg models are in
:mod:`uniformer.tasks.seg_heads`.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .._io import atomic_path
from ..data import BadSample, load_image
from .seg_heads import AUX_LOSS_WEIGHT, ConvBNReLU, FCNAuxHead, FPNHead, UperNetHead
from .vt_fpn import ConvFPNNeck, SemanticFPNHead, VTFPNNeck, check_feature_levels

__all__ = [
    "SegmentationDataset", "SegTrainTransform", "SegEvalTransform", "ConvBNReLU", "FPNHead", "UperNetHead",
    "FCNAuxHead", "SegmentationModel",
    "slide_inference", "whole_inference", "predict_mask", "SegmentationMetric", "segmentation_palette",
    "save_overlay", "backbone_channels", "IGNORE_INDEX",
]

PathLike = Union[str, os.PathLike]
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIZE_DIVISOR = 32  # inputs are padded to a multiple of the coarsest backbone stride
HEADS = ("fpn", "fpn-gn", "vt-fpn", "upernet")


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------

def _pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    """``(h, w)`` from an int or a pair of positive ints, else ``ValueError`` naming the argument."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, (int, np.integer)) or v <= 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _uniform(low: float, high: float) -> float:
    """A float drawn uniformly from [low, high) with torch's global RNG."""
    return low + (high - low) * float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """An int drawn uniformly from [low, high) with torch's global RNG."""
    return int(torch.randint(low, high, ()))


def _checked_pair(image: Image.Image, mask: Union[np.ndarray, Image.Image, torch.Tensor]
                  ) -> Tuple[Image.Image, np.ndarray]:
    """RGB image and mask array of the same size (else ValueError naming both sizes)."""
    mask = _as_mask_array(mask)
    image = image.convert("RGB")
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but image is {image.width}x{image.height}; "
                         "expected the same size")
    return image, mask


def _as_mask_array(mask: Union[np.ndarray, Image.Image, torch.Tensor]) -> np.ndarray:
    """A (H, W) uint8 label array from a numpy array, tensor or L/P-mode PIL image (palette images by their
    indices); ``ValueError`` for anything else or labels outside 0..255."""
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "P"):
            raise ValueError(f"a mask image must be single-channel 8-bit (mode L or P), found mode {mask.mode}")
        return np.array(mask, dtype=np.uint8)
    arr = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be a (H, W) array of class indices, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"a mask must hold integer class indices, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"mask labels must lie in 0..255 (255 = ignore), found {int(arr.min())}..{int(arr.max())}")
        arr = arr.astype(np.uint8)
    return arr


def _normalise(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image → float (3, H, W) tensor ``(x / 255 − mean) / std``."""
    x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def _keep_ratio_size(size: Tuple[int, int], scale: Sequence[float]) -> Tuple[int, int]:
    """mmcv ``rescale_size``: the (H, W) that ``size`` (H, W) takes when rescaled, keeping its aspect ratio, as large as
    possible with its long side ≤ max(scale) and its short side ≤ min(scale)."""
    h, w = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _check_scale(scale: Optional[Sequence[float]], name: str = "scale") -> Optional[Tuple[float, float]]:
    if scale is None:
        return None
    pair = tuple(scale)
    if len(pair) != 2 or any(not isinstance(v, (int, float)) or v <= 0 for v in pair):
        raise ValueError(f"{name} must be None or a pair of positive numbers (long, short side), got {scale!r}")
    return float(pair[0]), float(pair[1])


def _check_norm(mean: Sequence[float], std: Sequence[float]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std must be 3 values each (std positive), got mean={mean}, std={std}")
    return mean, std


# ----------------------------------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------------------------------

def _list_files(directory: Path, suffixes: Sequence[str]) -> Dict[str, Path]:
    """Stem → path of the non-hidden files in ``directory`` with one of ``suffixes`` (case-insensitive); a stem
    present twice (``a.jpg`` and ``a.png``) is a ``ValueError`` naming both files."""
    found: Dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in suffixes:
            continue
        if p.stem in found:
            raise ValueError(f"two files share the stem {p.stem!r} in {directory}: {found[p.stem].name} and {p.name}; "
                             "expected one file per sample")
        found[p.stem] = p
    return found


def _names_preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class SegmentationDataset(Dataset):
    """An ADE20K-layout segmentation split: ``root/images/{split}/*.jpg|jpeg|png`` with, for each image, the 8-bit
    single-channel label PNG ``root/annotations/{split}/<same stem>.png`` (palette-mode PNGs are read by their indices,
    255 = ignore). Class names come from ``class_names_file`` or ``root/classes.txt`` (one per line, blank lines
    skipped), else are "0".."K-1" with K = ``num_classes`` (which then is required). ``reduce_zero_label=True``
    (ADE20K) maps label 0 to 255 and shifts the others down by one. Image/mask pairing is checked at construction
    (``FileNotFoundError`` naming the unmatched files); mask mode, size and values are checked when an item is read:
    values ≥ K other than 255 raise ``ValueError`` naming the mask and the values, or, with ``skip_bad=True``, come
    back as a :class:`~uniformer.data.BadSample` naming the image (dropped from its batch by
    :class:`~uniformer.data.DropBadCollate`; never replaced by another item). ``transform(image PIL, mask uint8
    array)`` must return ``(image, mask)``; by default images become ImageNet-normalised float (3, H, W) tensors and
    masks (H, W) long tensors, at the original size.
    """

    def __init__(self, root: PathLike, split: str, num_classes: Optional[int] = None, reduce_zero_label: bool = False,
                 transform: Optional[Any] = None, class_names_file: Optional[PathLike] = None,
                 skip_bad: bool = False) -> None:
        self.root, self.split = Path(root), split
        self.reduce_zero_label, self.transform, self.skip_bad = reduce_zero_label, transform, skip_bad
        self.ignore_index = IGNORE_INDEX
        self.classes = self._read_classes(num_classes, class_names_file)
        self.num_classes = len(self.classes)
        image_dir, mask_dir = self.root / "images" / split, self.root / "annotations" / split
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"segmentation split {split!r}: directory {d} not found (expected the ADE20K "
                                        "layout root/images/<split> and root/annotations/<split>)")
        images = _list_files(image_dir, IMAGE_SUFFIXES)
        masks = _list_files(mask_dir, (".png",))
        no_mask = [images[s].name for s in images if s not in masks]
        if no_mask:
            raise FileNotFoundError(f"{len(no_mask)} image(s) in {image_dir} have no annotation PNG of the same stem in "
                                    f"{mask_dir}: {_names_preview(no_mask)}")
        no_image = [masks[s].name for s in masks if s not in images]
        if no_image:
            raise FileNotFoundError(f"{len(no_image)} annotation(s) in {mask_dir} have no image of the same stem in "
                                    f"{image_dir}: {_names_preview(no_image)}")
        if not images:
            raise ValueError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) found in {image_dir}")
        self.samples: List[Tuple[Path, Path]] = [(images[s], masks[s]) for s in sorted(images)]

    def _read_classes(self, num_classes: Optional[int], class_names_file: Optional[PathLike]) -> List[str]:
        if num_classes is not None and (not isinstance(num_classes, int) or not 1 <= num_classes <= IGNORE_INDEX):
            raise ValueError(f"num_classes must be an int in 1..{IGNORE_INDEX}, got {num_classes!r}")
        if class_names_file is not None:
            path = Path(class_names_file)
            if not path.is_file():
                raise FileNotFoundError(f"class names file {path} not found")
        else:
            path = self.root / "classes.txt"
        if path.is_file():
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not names:
                raise ValueError(f"class names file {path} is empty; expected one class name per line")
            if len(names) > IGNORE_INDEX:
                raise ValueError(f"class names file {path} lists {len(names)} classes; at most {IGNORE_INDEX} fit "
                                 "8-bit masks with 255 = ignore")
            if num_classes is not None and num_classes != len(names):
                raise ValueError(f"num_classes={num_classes} but {path} lists {len(names)} class names")
            return names
        if num_classes is None:
            raise ValueError(f"no class names file ({path} not found): pass num_classes or class_names_file")
        return [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) uint8 label array of sample ``index`` after reduce-zero-label, validated against K."""
        path = self.samples[index][1]
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode not in ("L", "P"):
                    raise ValueError(f"mask {path} must be an 8-bit single-channel PNG (mode L or P), "
                                     f"found mode {img.mode}")
                mask = np.array(img, dtype=np.uint8)
        except UnidentifiedImageError:
            raise ValueError(f"cannot read mask {path}: not an image file PIL recognises") from None
        except (OSError, SyntaxError) as e:
            raise ValueError(f"cannot read mask {path}: {e}") from None
        if self.reduce_zero_label:
            mask = mask.copy()
            mask[mask == 0] = IGNORE_INDEX
            mask = mask - 1
            mask[mask == IGNORE_INDEX - 1] = IGNORE_INDEX
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            shown = [int(v) for v in bad[:10]]
            hint = " (after reduce_zero_label)" if self.reduce_zero_label else ""
            raise ValueError(f"mask {path} has label values {shown}{' ...' if bad.size > 10 else ''}{hint}; expected "
                             f"0..{self.num_classes - 1} ({self.num_classes} classes) or {IGNORE_INDEX} = ignore")
        return mask

    def _load(self, index: int) -> Tuple[Image.Image, np.ndarray]:
        image_path, mask_path = self.samples[index]
        image = load_image(image_path)
        mask = self.load_mask(index)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                             f"{image.width}x{image.height}; expected the same size")
        return image, mask

    def __getitem__(self, index: int) -> Union[Tuple[Any, Any], BadSample]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        index %= n
        try:
            image, mask = self._load(index)
        except (ValueError, FileNotFoundError) as e:
            if not self.skip_bad:
                raise
            return BadSample(index, str(self.samples[index][0]), str(e))
        if self.transform is not None:
            return self.transform(image, mask)
        return _normalise(image, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), torch.from_numpy(mask.astype(np.int64))


# ----------------------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------------------

def _photometric_distortion(image: Image.Image) -> Image.Image:
    """mmseg ``PhotoMetricDistortion`` with torch's RNG: each with probability ½, brightness ±32, contrast ×[0.5, 1.5]
    (before or after the colour steps, at random), saturation ×[0.5, 1.5] and hue ±18° (OpenCV's 0–180 scale)."""
    arr = np.array(image, dtype=np.float32)

    def contrast(a: np.ndarray) -> np.ndarray:
        return np.clip(a * _uniform(0.5, 1.5), 0, 255) if _randint(0, 2) else a

    if _randint(0, 2):
        arr = np.clip(arr + _uniform(-32, 32), 0, 255)
    contrast_first = _randint(0, 2) == 1
    if contrast_first:
        arr = contrast(arr)
    do_sat, sat = _randint(0, 2), _uniform(0.5, 1.5)
    do_hue, hue = _randint(0, 2), _randint(-18, 18)
    if do_sat or do_hue:
        hsv = np.array(Image.fromarray(arr.astype(np.uint8)).convert("HSV"), dtype=np.float32)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + hue * 256.0 / 180.0) % 256.0
        arr = np.array(Image.fromarray(hsv.round().astype(np.uint8), mode="HSV").convert("RGB"), dtype=np.float32)
    if not contrast_first:
        arr = contrast(arr)
    return Image.fromarray(arr.astype(np.uint8))


class SegTrainTransform:
    """mmseg training pipeline on an (RGB PIL image, mask) pair, drawing from torch's global RNG: rescale keeping the
    aspect ratio to fit ``scale`` × r, r ~ U(``ratio_range``) (bilinear image, nearest mask; ``scale=None`` skips it),
    random ``crop_size`` (H, W) crop retried up to 10 times until no class covers ``cat_max_ratio`` or more of the
    crop's non-ignored pixels and at least two classes are present (the last try is kept otherwise; exactly mmseg's
    rule), horizontal flip with probability ``hflip``, optional photometric distortion, normalisation, and padding on
    the right/bottom to ``crop_size`` with 0 (image, after normalisation) and ``ignore_index`` (mask). Returns
    (float (3, h, w) tensor, long (h, w) tensor) with (h, w) = ``crop_size``.
    """

    def __init__(self, crop_size: Union[int, Sequence[int]] = (512, 512),
                 scale: Optional[Sequence[float]] = (2048, 512), ratio_range: Optional[Sequence[float]] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, hflip: float = 0.5, photometric: bool = False,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.crop_size = _pair(crop_size, "crop_size")
        self.scale = _check_scale(scale)
        if ratio_range is not None:
            ratio_range = tuple(float(r) for r in ratio_range)
            if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
                raise ValueError(f"ratio_range must be None or (low, high) with 0 < low <= high, got {ratio_range}")
        self.ratio_range = ratio_range
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must lie in (0, 1] (1 disables the check), got {cat_max_ratio}")
        if not 0 <= hflip <= 1:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
        self.cat_max_ratio, self.hflip, self.photometric = float(cat_max_ratio), float(hflip), photometric
        self.mean, self.std = _check_norm(mean, std)
        self.ignore_index = ignore_index

    def _crop_box(self, h: int, w: int) -> Tuple[int, int, int, int]:
        ch, cw = self.crop_size
        y = _randint(0, max(h - ch, 0) + 1)
        x = _randint(0, max(w - cw, 0) + 1)
        return y, min(y + ch, h), x, min(x + cw, w)

    def _crop_ok(self, crop: np.ndarray) -> bool:
        labels, counts = np.unique(crop, return_counts=True)
        counts = counts[labels != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, image: Image.Image, mask: Union[np.ndarray, Image.Image, torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = _checked_pair(image, mask)
        if self.scale is not None:
            r = _uniform(*self.ratio_range) if self.ratio_range is not None else 1.0
            target = (max(1, int(self.scale[0] * r)), max(1, int(self.scale[1] * r)))  # mmseg truncates it
            h, w = _keep_ratio_size((image.height, image.width), target)
            if (h, w) != (image.height, image.width):
                image = image.resize((w, h), Image.BILINEAR)
                mask = np.array(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        y1, y2, x1, x2 = self._crop_box(*mask.shape)
        if self.cat_max_ratio < 1:
            for _ in range(10):
                if self._crop_ok(mask[y1:y2, x1:x2]):
                    break
                y1, y2, x1, x2 = self._crop_box(*mask.shape)
        image, mask = image.crop((x1, y1, x2, y2)), mask[y1:y2, x1:x2]
        if float(torch.rand(())) < self.hflip:
            image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask[:, ::-1]
        if self.photometric:
            image = _photometric_distortion(image)
        x = _normalise(image, self.mean, self.std)
        y = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
        pad_h, pad_w = self.crop_size[0] - y.shape[0], self.crop_size[1] - y.shape[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            y = F.pad(y, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return x, y

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
                f"cat_max_ratio={self.cat_max_ratio}, hflip={self.hflip}, photometric={self.photometric})")


class SegEvalTransform:
    """mmseg test pipeline on an (RGB PIL image, mask) pair: the image is rescaled keeping its aspect ratio to the
    largest size whose long side ≤ max(``scale``) and short side ≤ min(``scale``) ('keep_ratio'; bilinear;
    ``scale=None`` keeps it) and normalised; the mask stays at the ORIGINAL size (metrics are computed there; use
    :func:`predict_mask` with ``original_size = mask.shape``). Returns (float (3, h, w), long (H, W)).
    """

    def __init__(self, scale: Optional[Sequence[float]] = (2048, 512), mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        self.scale = _check_scale(scale)
        self.mean, self.std = _check_norm(mean, std)

    def __call__(self, image: Image.Image, mask: Union[np.ndarray, Image.Image, torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = _checked_pair(image, mask)
        if self.scale is not None:
            h, w = _keep_ratio_size((image.height, image.width), self.scale)
            if (h, w) != (image.height, image.width):
                image = image.resize((w, h), Image.BILINEAR)
        return _normalise(image, self.mean, self.std), torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


# ----------------------------------------------------------------------------------------------------------------------
# heads and model
# ----------------------------------------------------------------------------------------------------------------------

_FPN_KWARGS = ("neck_channels", "head_channels", "dropout")
_VT_KWARGS = ("num_tokens", "token_dim", "num_heads", "pix_groups", "kqv_groups", "token_groups", "ffn_dim",
              "pos_enc", "top_down")
_UPER_KWARGS = ("channels", "pool_scales", "dropout")
_AUX_KWARGS = ("aux_channels", "aux_in_index", "aux_dropout", "aux_weight", "aux_num_convs", "aux_kernel_size",
               "aux_concat_input")


def backbone_channels(backbone: nn.Module) -> List[int]:
    """Channels of a backbone's feature maps: its ``out_channels`` (dense UniFormers), else timm ``feature_info``."""
    channels = getattr(backbone, "out_channels", None)
    if channels is None and hasattr(backbone, "feature_info") and hasattr(backbone.feature_info, "channels"):
        channels = backbone.feature_info.channels()  # timm features_only models
    if channels is None:
        raise ValueError(f"cannot tell the channels of {type(backbone).__name__}'s feature maps: it has no "
                         "out_channels (or timm feature_info); pass in_channels")
    if isinstance(channels, int):
        raise ValueError(f"{type(backbone).__name__}.out_channels is a single int ({channels}); expected one value "
                         "per feature level (pass in_channels)")
    return [int(c) for c in channels]


class SegmentationModel(nn.Module):
    """Backbone + segmentation head. The backbone's ``forward`` returns a list (or dict) of NCHW maps at strides
    4/8/16/32 with channels ``in_channels`` (default: ``backbone.out_channels`` or timm ``feature_info``). ``head``:
    'fpn' (Semantic FPN as mmseg and the official UniFormer models: :class:`~uniformer.tasks.vt_fpn.ConvFPNNeck` to
    ``neck_channels`` (256) + the BatchNorm :class:`~uniformer.tasks.seg_heads.FPNHead` with ``head_channels`` (128)
    and ``dropout`` (0.1)), 'fpn-gn' (the same neck + the GroupNorm Detectron2 head
    :class:`~uniformer.tasks.vt_fpn.SemanticFPNHead`, which also takes ``num_groups`` (32)), 'vt-fpn'
    (:class:`~uniformer.tasks.vt_fpn.VTFPNNeck`, which also takes its own keywords, + the GroupNorm head) or
    'upernet' (:class:`UperNetHead` with ``channels`` (512), ``pool_scales``, ``dropout`` (0.1)). ``aux_head``
    (default: True for UperNet only) adds an :class:`FCNAuxHead` (``aux_channels`` 256, ``aux_in_index`` 2,
    ``aux_dropout`` 0.1, ``aux_weight`` 0.4, ``aux_num_convs`` 1, ``aux_kernel_size`` 3, ``aux_concat_input``
    False). mmseg module names: ``backbone``, ``neck``, ``decode_head``, ``auxiliary_head``; official mmseg
    models are built by :func:`~uniformer.tasks.seg_heads.build_mmseg_segmentor`. ``forward(x)`` pads x to a
    multiple of 32, upsamples the logits bilinearly and crops them back → (B, K, H, W) for any H, W (mmseg's own
    test, without padding, is :func:`~uniformer.tasks.seg_heads.mmseg_inference`); in training mode with an aux head
    it returns ``(logits, aux_logits)``, both at input resolution. :meth:`loss` is cross-entropy with ignore index
    255 (+ ``aux_weight`` × the aux CE).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "fpn",
                 in_channels: Optional[Sequence[int]] = None, aux_head: Optional[bool] = None,
                 **head_kwargs: Any) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.backbone, self.num_classes, self.head_type = backbone, num_classes, head
        self.in_channels = tuple(int(c) for c in in_channels) if in_channels is not None else \
            tuple(backbone_channels(backbone))
        if not self.in_channels or any(c <= 0 for c in self.in_channels):
            raise ValueError(f"in_channels must be positive ints, got {self.in_channels}")
        self.ignore_index, self.size_divisor = IGNORE_INDEX, SIZE_DIVISOR
        use_aux = head == "upernet" if aux_head is None else bool(aux_head)
        allowed = {"fpn": _FPN_KWARGS, "fpn-gn": _FPN_KWARGS + ("num_groups",),
                   "vt-fpn": _FPN_KWARGS + ("num_groups",) + _VT_KWARGS, "upernet": _UPER_KWARGS}[head]
        allowed = allowed + (_AUX_KWARGS if use_aux else ())
        unknown = sorted(set(head_kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"unknown keyword(s) {unknown} for head={head!r}"
                             f"{' with aux_head' if use_aux else ''}; expected some of {sorted(allowed)}")
        kw = dict(head_kwargs)
        aux_kw = {k: kw.pop(k) for k in _AUX_KWARGS if k in kw}
        if head == "upernet":
            self.neck: nn.Module = nn.Identity()
            self.decode_head: nn.Module = UperNetHead(self.in_channels, num_classes, **kw)
        else:
            neck_channels = int(kw.pop("neck_channels", 256))
            channels, dropout = int(kw.pop("head_channels", 128)), float(kw.pop("dropout", 0.1))
            if head == "vt-fpn":
                self.neck = VTFPNNeck(self.in_channels, neck_channels, **{k: kw.pop(k) for k in _VT_KWARGS if k in kw})
            else:
                self.neck = ConvFPNNeck(self.in_channels, neck_channels)
            if head == "fpn":
                strides = tuple(4 * 2 ** i for i in range(len(self.in_channels)))
                self.decode_head = FPNHead(num_classes, neck_channels, channels, strides, dropout)
            else:
                self.decode_head = SemanticFPNHead(num_classes, neck_channels, channels, len(self.in_channels),
                                                   num_groups=int(kw.pop("num_groups", 32)), dropout=dropout)
        self.auxiliary_head: Optional[FCNAuxHead] = None
        if use_aux:
            index = int(aux_kw.get("aux_in_index", 2))
            if not -len(self.in_channels) <= index < len(self.in_channels):
                raise ValueError(f"aux_in_index {index} is out of range for {len(self.in_channels)} feature levels")
            self.auxiliary_head = FCNAuxHead(self.in_channels[index], num_classes,
                                             channels=int(aux_kw.get("aux_channels", 256)), in_index=index,
                                             dropout=float(aux_kw.get("aux_dropout", 0.1)),
                                             loss_weight=float(aux_kw.get("aux_weight", AUX_LOSS_WEIGHT)),
                                             num_convs=int(aux_kw.get("aux_num_convs", 1)),
                                             kernel_size=int(aux_kw.get("aux_kernel_size", 3)),
                                             concat_input=bool(aux_kw.get("aux_concat_input", False)))

    def extract_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The backbone's feature maps as a list, checked against ``in_channels``."""
        feats = self.backbone(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        if isinstance(feats, torch.Tensor) or not isinstance(feats, (list, tuple)):
            raise ValueError(f"the backbone {type(self.backbone).__name__} must return a list of feature maps, got "
                             f"{type(feats).__name__}")
        feats = list(feats)
        check_feature_levels(feats, self.in_channels, f"{type(self).__name__} (backbone output)")
        return feats

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % self.size_divisor, (-W) % self.size_divisor
        # traced / exported graphs always pad (tested first: no guard on the size), by what the input size needs
        if torch.jit.is_tracing() or torch.compiler.is_exporting() or pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.extract_features(x)
        logits = self.decode_head(self.neck(feats))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :H, :W]
        if self.training and self.auxiliary_head is not None:
            aux = F.interpolate(self.auxiliary_head(feats), size=x.shape[-2:], mode="bilinear",
                                align_corners=False)[..., :H, :W]
            return logits, aux
        return logits

    @property
    def aux_weight(self) -> float:
        """Weight of the auxiliary CE in :meth:`loss` (0 without an aux head)."""
        return self.auxiliary_head.loss_weight if self.auxiliary_head is not None else 0.0

    def _ce(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        valid = mask != self.ignore_index
        if not bool(valid.any()):  # every pixel ignored: a zero that keeps the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits, mask, ignore_index=self.ignore_index)

    def loss(self, outputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]], mask: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy averaged over the non-ignored pixels of ``mask`` (B, H, W) (labels 0..K−1, 255 =
        ignore); with ``(logits, aux_logits)`` adds ``aux_weight`` × the aux CE. Logits of another size are resized
        bilinearly to the mask's size first. An all-ignored batch gives a zero loss."""
        logits, aux = (outputs[0], outputs[1]) if isinstance(outputs, (tuple, list)) else (outputs, None)
        if mask.ndim != 3 or mask.shape[0] != logits.shape[0]:
            raise ValueError(f"mask must be (B, H, W) with B = {logits.shape[0]}, got shape {tuple(mask.shape)}")
        mask = mask.long()
        bad = (mask < 0) | ((mask >= self.num_classes) & (mask != self.ignore_index))
        if bool(bad.any()):
            raise ValueError(f"mask holds labels {sorted(set(mask[bad].unique().tolist()))[:10]}; expected "
                             f"0..{self.num_classes - 1} or {self.ignore_index} = ignore")
        total = self._ce(logits, mask)
        if aux is not None:
            weight = self.aux_weight if self.auxiliary_head is not None else AUX_LOSS_WEIGHT
            total = total + weight * self._ce(aux, mask)
        return total


# ----------------------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------------------

def _eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``x`` resized to x's size (first element if the model returns a tuple)."""
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with autograd off for the body; its previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _check_batch(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected an image batch (B, C, H, W), got {shape}")


def whole_inference(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """mmseg 'whole' mode: one forward of the full (B, 3, H, W) ``image`` → logits (B, K, H, W). Runs with the model
    in eval mode and without autograd (the previous mode is restored)."""
    _check_batch(image)
    with _eval_mode(model):
        return _eval_logits(model, image)


def slide_inference(model: nn.Module, image: torch.Tensor, num_classes: int,
                    crop: Union[int, Sequence[int]] = (512, 512),
                    stride: Union[int, Sequence[int]] = (341, 341)) -> torch.Tensor:
    """mmseg 'slide' mode: ``crop`` (h, w) windows every ``stride`` pixels (the last row/column of windows shifted to
    end at the border; windows are clipped to images smaller than the crop, and the model pads them internally), the
    logits of overlapping windows averaged per pixel → (B, K, H, W). Eval mode, no autograd (mode restored)."""
    _check_batch(image)
    (ch, cw), (sh, sw) = _pair(crop, "crop"), _pair(stride, "stride")
    B, _, H, W = image.shape
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    logits = image.new_zeros((B, num_classes, H, W))
    count = image.new_zeros((1, 1, H, W))
    with _eval_mode(model):
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                out = _eval_logits(model, image[:, :, y1:y2, x1:x2])
                if out.shape[1] != num_classes:
                    raise ValueError(f"slide_inference: num_classes={num_classes} but the model returns "
                                     f"{out.shape[1]} channels")
                logits[:, :, y1:y2, x1:x2] += out
                count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def predict_mask(model: nn.Module, image_tensor: torch.Tensor, original_size: Sequence[int], mode: str = "whole",
                 num_classes: Optional[int] = None, crop: Union[int, Sequence[int]] = (512, 512),
                 stride: Union[int, Sequence[int]] = (341, 341), flip: bool = False) -> torch.Tensor:
    """Class map (H, W) long for one image: a (3, h, w) or (1, 3, h, w) ``image_tensor`` (e.g. from
    :class:`SegEvalTransform`) through :func:`whole_inference` or :func:`slide_inference` (``mode``; ``num_classes``
    defaults to ``model.num_classes``), optionally averaged with the un-flipped prediction of the horizontally flipped
    image (``flip``), the logits resized bilinearly to ``original_size`` (H, W), then argmax."""
    if image_tensor.ndim == 3:
        image_tensor = image_tensor.unsqueeze(0)
    if image_tensor.ndim != 4 or image_tensor.shape[0] != 1:
        raise ValueError(f"predict_mask takes one image (3, H, W) or (1, 3, H, W), got {tuple(image_tensor.shape)}")
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    size = _pair(tuple(int(s) for s in original_size), "original_size")
    if mode == "slide":
        k = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if k is None:
            raise ValueError(f"slide mode needs num_classes ({type(model).__name__} has no num_classes attribute)")

        def infer(x: torch.Tensor) -> torch.Tensor:
            return slide_inference(model, x, int(k), crop, stride)
    else:
        def infer(x: torch.Tensor) -> torch.Tensor:
            return whole_inference(model, x)
    logits = infer(image_tensor)
    if flip:
        logits = (logits + infer(image_tensor.flip(-1)).flip(-1)) / 2
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits[0].argmax(0)


# ----------------------------------------------------------------------------------------------------------------------
# metric
# ----------------------------------------------------------------------------------------------------------------------

def _nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries (NaN when there are none, without NumPy's empty-slice warning)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


class SegmentationMetric:
    """Dataset-level semantic-segmentation metrics (mmseg ``eval_metrics``): per class, the intersection, union,
    predicted area and label area are summed over every :meth:`update` (pixels whose target is ``ignore_index`` are
    excluded), and :meth:`compute` returns percentages: ``mIoU`` = mean of intersection/union over classes with a
    non-zero union, ``mAcc`` = mean of intersection/label-area over classes present in the targets, ``aAcc`` = correct
    / labelled pixels, plus ``per_class_iou`` and ``per_class_acc`` (NaN for the excluded classes). All NaN before any
    labelled pixel was seen.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_names: Optional[Sequence[str]] = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names; expected num_classes={num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        k = self.num_classes
        self.area_intersect, self.area_union = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        self.area_pred, self.area_label = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)

    def update(self, pred: Union[torch.Tensor, np.ndarray], target: Union[torch.Tensor, np.ndarray]) -> None:
        """Add a prediction (H, W) or (B, H, W) of class indices and its same-shaped target (255 = ignore)."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape or pred.ndim not in (2, 3):
            raise ValueError(f"pred and target must have the same (H, W) or (B, H, W) shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype} "
                                 "(take the argmax of logits first)")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        for name, t in (("target", target), ("pred", pred)):
            bad = (t < 0) | (t >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(f"{name} holds class indices {sorted(t[bad].unique().tolist())[:10]} at labelled "
                                 f"pixels; expected 0..{self.num_classes - 1} (or {self.ignore_index} = ignore "
                                 "in the target)")
        k = self.num_classes
        inter = torch.bincount(pred[pred == target], minlength=k).double()
        area_pred = torch.bincount(pred, minlength=k).double()
        area_label = torch.bincount(target, minlength=k).double()
        self.area_intersect += inter
        self.area_pred += area_pred
        self.area_label += area_label
        self.area_union += area_pred + area_label - inter

    def compute(self) -> Dict[str, Any]:
        """``dict(mIoU, mAcc, aAcc, per_class_iou, per_class_acc)`` in percent (NaN-aware means, as mmseg)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = (self.area_intersect / self.area_union).numpy() * 100
            acc = (self.area_intersect / self.area_label).numpy() * 100
        total = float(self.area_label.sum())
        return dict(mIoU=_nanmean(iou), mAcc=_nanmean(acc),
                    aAcc=float(self.area_intersect.sum()) / total * 100 if total else math.nan,
                    per_class_iou=[float(v) for v in iou], per_class_acc=[float(v) for v in acc])


# ----------------------------------------------------------------------------------------------------------------------
# visualisation
# ----------------------------------------------------------------------------------------------------------------------

def segmentation_palette(num_classes: int = IGNORE_INDEX, seed: int = 0) -> np.ndarray:
    """A fixed (num_classes, 3) uint8 RGB palette: colours drawn from a NumPy generator seeded with ``seed`` (the same
    on every call and machine), class 0 of the default palette being (120, 120, 120) like ADE20K's first colour."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if num_classes > 256:
        raise ValueError(f"num_classes must be at most 256 for an 8-bit palette, got {num_classes}")
    palette = np.random.default_rng(seed).integers(0, 256, size=(256, 3), dtype=np.uint8)  # prefix-stable
    if seed == 0:
        palette[0] = (120, 120, 120)
    return palette[:num_classes]


def save_overlay(image: Union[Image.Image, PathLike], mask: Union[torch.Tensor, np.ndarray], output_path: PathLike,
                 palette: Optional[Union[np.ndarray, Sequence[Sequence[int]]]] = None, alpha: float = 0.5) -> Path:
    """Write ``image`` (PIL or a path read with :func:`~uniformer.data.load_image`) with ``mask`` (H, W) blended in
    as colours (``alpha`` × palette colour + (1 − ``alpha``) × pixel; label 255 left unchanged) to a PNG at
    ``output_path``, atomically. ``palette``: (N, 3) RGB values, default :func:`segmentation_palette`. Returns the
    path."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = load_image(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    labels = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if labels.ndim != 2 or labels.shape != (img.height, img.width):
        raise ValueError(f"mask shape {labels.shape} does not match the image size {img.width}x{img.height}; "
                         f"expected (H, W) = ({img.height}, {img.width})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"mask must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    valid = labels != IGNORE_INDEX
    top = int(labels[valid].max()) + 1 if valid.any() else 1
    colours = segmentation_palette(max(top, 1)) if palette is None else np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3:
        raise ValueError(f"palette must be (N, 3) RGB values, got shape {colours.shape}")
    if valid.any() and (labels[valid].min() < 0 or top > len(colours)):
        raise ValueError(f"mask labels span {int(labels[valid].min())}..{top - 1} but the palette has "
                         f"{len(colours)} colours")
    base = np.asarray(img, dtype=np.float32)
    out = base.copy()
    out[valid] = (1 - alpha) * base[valid] + alpha * colours[labels[valid]].astype(np.float32)
    result = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    path = Path(output_path)
    with atomic_path(path) as tmp:
        result.save(tmp, format="PNG")
    return path
