"""ADE20K-layout semantic-segmentation data (spec ``uniformer.md`` §5.3, ``ecosystem.md`` §5): the
:class:`SegmentationDataset` (images and 8-bit label PNGs, 255 = ignore) and the mmseg-style joint image/mask
transforms :class:`SegTrainTransform` (rescale, cat-max-ratio crop, flip, photometric distortion, pad) and
:class:`SegEvalTransform`. The models, inference and metrics are in :mod:`uniformer.tasks.segmentation`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .._io import PathLike
from .datasets import BadSample
from .images import load_image

__all__ = ["SegmentationDataset", "SegTrainTransform", "SegEvalTransform", "IGNORE_INDEX", "IMAGE_SUFFIXES"]

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------

def int_pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
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
        self.crop_size = int_pair(crop_size, "crop_size")
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
    :func:`~uniformer.tasks.segmentation.predict_mask` with ``original_size = mask.shape``). Returns (float
    (3, h, w), long (H, W)).
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
