"""Image classification datasets (the embedded ``digits`` set and ImageFolder-style folders), and the bad-sample
protocol every dataset with ``skip_bad`` follows: an item that cannot be read comes back as a :class:`BadSample`,
and :class:`DropBadCollate` drops it from its batch, so that counts stay exact (nothing is read twice)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.datasets import ImageFolder

from .images import load_image

__all__ = ["DigitsDataset", "ImageFolderDataset", "build_image_dataset", "BadSample", "DropBadCollate",
           "IMG_EXTENSIONS", "DIGITS"]

DIGITS = "digits"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class BadSample:
    """What a dataset built with ``skip_bad=True`` returns in place of an item it cannot read: the item's index,
    the file or folder at fault and why. :class:`DropBadCollate` removes it from its batch."""

    index: int
    path: str
    reason: str


class DropBadCollate:
    """A DataLoader ``collate_fn`` that drops :class:`BadSample` items: returns ``(batch, bad)`` where ``batch`` is
    ``collate`` (default: torch's ``default_collate``) of the good items, or None when none is left, and ``bad`` the
    list of dropped :class:`BadSample` records (so that the process iterating the loader can report them)."""

    def __init__(self, collate: Optional[Callable[[List[Any]], Any]] = None) -> None:
        self.collate = collate or default_collate

    def __call__(self, items: Sequence[Any]) -> Tuple[Optional[Any], List[BadSample]]:
        good = [item for item in items if not isinstance(item, BadSample)]
        bad = [item for item in items if isinstance(item, BadSample)]
        return (self.collate(good) if good else None), bad


@lru_cache(maxsize=1)
def _digits_arrays() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    return tuple(train_test_split(images, digits.target, test_size=0.2, random_state=0, stratify=digits.target))


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 real 8×8 handwritten digits (ships with scikit-learn; no download), upsampled to
    ``img_size`` and returned as RGB PIL images. A fixed stratified split: 1,437 train / 360 val images."""

    classes: List[str] = [str(i) for i in range(10)]

    def __init__(self, split: str = "train", img_size: int = 64, transform: Optional[Callable] = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        x_train, x_val, y_train, y_val = _digits_arrays()
        self.images, self.targets = (x_train, y_train) if split == "train" else (x_val, y_val)
        self.targets = [int(t) for t in self.targets]
        self.img_size = img_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L").resize((self.img_size, self.img_size), Image.BICUBIC)
        img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[index]


def _check_image_folder(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root} (expected class sub-folders of images)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    for d in class_dirs:
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in d.rglob("*") if f.is_file()):
            raise ValueError(f"class folder {d} contains no images (extensions {', '.join(IMG_EXTENSIONS)})")


def _dense_layout_hint(root: Path) -> str:
    """What a folder that is not an ImageFolder dataset looks like, for the error message ('' if nothing known)."""
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return "an ADE20K-style segmentation dataset (images/, annotations/): pass --task segmentation"
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.json")):
        return "a COCO dataset (annotations/*.json): pass --task detection or --task pose"
    return ""


class ImageFolderDataset(ImageFolder):
    """torchvision's ImageFolder read with :func:`~uniformer.data.load_image` (any pixel format → RGB). An unreadable
    image raises ``ValueError`` naming the file, or with ``skip_bad`` comes back as a :class:`BadSample`."""

    def __init__(self, root: Union[str, os.PathLike], transform: Optional[Callable] = None,
                 skip_bad: bool = False) -> None:
        super().__init__(str(root), transform=transform, loader=load_image, is_valid_file=_is_image)
        self.skip_bad = skip_bad

    def __getitem__(self, index: int) -> Any:
        try:
            return super().__getitem__(index)
        except (ValueError, FileNotFoundError) as e:
            if not self.skip_bad:
                raise
            return BadSample(index, self.samples[index][0], str(e))


def build_image_dataset(
    data: Union[str, os.PathLike], split: str, transform: Optional[Callable] = None, img_size: int = 64,
    skip_bad: bool = False,
) -> Dataset:
    """``data`` = ``"digits"`` or a folder with ``train/`` and ``val/`` class sub-folders (ImageFolder layout).

    The returned dataset has ``classes`` (names, sorted for folders). Missing folders and empty class folders raise
    errors naming the folder; unreadable images raise ``ValueError`` naming the file when they are loaded, or with
    ``skip_bad`` come back as :class:`BadSample` items (see :class:`DropBadCollate`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if str(data) == DIGITS:
        return DigitsDataset(split, img_size=img_size, transform=transform)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root} (expected {root}/train and {root}/val, or 'digits')")
    split_root = root / split
    if not split_root.is_dir():
        dense = _dense_layout_hint(root)
        if dense:
            raise FileNotFoundError(f"{root} has no {split}/ class folders; it looks like {dense}")
    _check_image_folder(split_root)
    return ImageFolderDataset(split_root, transform=transform, skip_bad=skip_bad)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)
