"""COCO keypoints for top-down pose, the data side (spec ``uniformer.md`` §5.3, ``dense-official.md`` §4): the COCO
person constants (joint names, flip pairs, skeleton, OKS sigmas), mmpose's person crops (the affine warp with cv2 on
uint8, :mod:`uniformer.data.mm_pipelines`), its Gaussian heatmap targets and the :class:`CocoKeypoints` dataset (one
sample per person, from ground-truth or detected boxes). The model is :mod:`uniformer.tasks.pose`, decoding and
evaluation :mod:`uniformer.tasks.pose_eval`.

Coordinates and units follow mmpose (and OpenCV): pixel ``i`` has its centre at coordinate ``i``; a box becomes a
``center`` (pixels) and a ``scale`` = the crop's (width, height) **in units of 200 pixels** (mmpose's ``pixel_std``),
with the aspect ratio of the network input and 1.25 padding. Training, evaluation and official checkpoints share
this one convention.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .coco import PathLike, load_coco, read_json, xywh_is_valid
from .images import load_image
from .mm_pipelines import box_to_center_scale, get_affine_transform

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_FLIP_PAIRS",
    "COCO_SKELETON",
    "COCO_SIGMAS",
    "PIXEL_STD",
    "affine_matrix",
    "gaussian_heatmaps",
    "topdown_crop",
    "person_crop",
    "CocoKeypoints",
]

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# (left, right) joint indices swapped by a horizontal flip
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# COCO's person skeleton (categories[].skeleton, 1-based there) with 0-based joint indices
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
    (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
# COCO's per-joint OKS constants (sigmas), as pycocotools and mmpose use them
COCO_SIGMAS = tuple(v / 10.0 for v in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
                                        .89, .89))
PADDING = 1.25
PIXEL_STD = 200.0  # mmpose's unit of ``scale``


def affine_matrix(center: Sequence[float], scale: Sequence[float], output_size: Tuple[int, int],
                  rotation: float = 0.0, flip_width: Optional[int] = None) -> np.ndarray:
    """3×3 matrix mapping original-image coordinates to crop coordinates: mmpose ``get_affine_transform`` (cv2, from
    float32 points) of the box ``center`` (pixels) / ``scale`` (units of 200 px) onto the ``output_size`` (H, W)
    crop, rotated by ``rotation`` degrees (the crop content turns counter-clockwise for positive angles). With
    ``flip_width`` (the image width) the image is mirrored first as mmpose's ``TopDownRandomFlip`` does
    (x → width − 1 − x, the centre mirrored with it)."""
    out_h, out_w = output_size
    flip = np.eye(3)
    cx, cy = float(center[0]), float(center[1])
    if flip_width is not None:
        flip = np.array([[-1.0, 0.0, flip_width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        cx = _mirror_x(cx, flip_width)
    trans = get_affine_transform((cx, cy), scale, rotation, (out_w, out_h))
    return np.vstack([trans, [0.0, 0.0, 1.0]]) @ flip


def _mirror_x(x: float, width: int) -> float:
    """mmpose's mirrored x of a flipped image, ``width − x − 1``, in float32 as mmpose computes it."""
    return float(np.float32(width) - np.float32(x) - np.float32(1.0))


def _image_array(image: Union[Image.Image, np.ndarray]) -> np.ndarray:
    """An RGB ``H × W × 3`` uint8 array of a PIL image or array (what cv2 warps)."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB image (PIL or H x W x 3 uint8 array), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _normalise(crop: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """mmpose ``ToTensor`` + ``NormalizeTensor`` of an ``H × W × 3`` uint8 crop → (3, H, W) float32."""
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div(255)
    return x.sub(mean.reshape(3, 1, 1)).div(std.reshape(3, 1, 1))


def topdown_crop(image: Union[Image.Image, np.ndarray], center: Sequence[float], scale: Sequence[float],
                 input_size: Tuple[int, int], rotation: float = 0.0, flip: bool = False,
                 mean: Union[Sequence[float], torch.Tensor] = IMAGENET_DEFAULT_MEAN,
                 std: Union[Sequence[float], torch.Tensor] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """The normalised (3, H, W) network input for one person, as mmpose's pipeline makes it: with ``flip`` the
    image is mirrored and the centre with it (``TopDownRandomFlip``), then ``TopDownAffine`` = cv2 ``warpAffine``
    (bilinear, zero border) of the uint8 image through ``get_affine_transform(center, scale, rotation)`` to
    ``input_size`` (H, W), then /255 and ``mean``/``std``. Without flip/rotation and with the ImageNet mean/std it
    equals :func:`uniformer.data.mm_pipelines.topdown_affine_input` exactly (the official test input)."""
    arr = _image_array(image)
    cx, cy = float(center[0]), float(center[1])
    if flip:
        arr = np.ascontiguousarray(arr[:, ::-1])
        cx = _mirror_x(cx, arr.shape[1])
    out_h, out_w = int(input_size[0]), int(input_size[1])
    trans = get_affine_transform((cx, cy), scale, rotation, (out_w, out_h))
    crop = cv2.warpAffine(arr, trans, (out_w, out_h), flags=cv2.INTER_LINEAR)
    return _normalise(crop, torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))


def person_crop(img: Union[Image.Image, np.ndarray], matrix: np.ndarray, input_size: Tuple[int, int],
                mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The normalised (3, H, W) network input for one person: ``img`` warped (cv2 ``warpAffine``, bilinear, zero
    border) through ``matrix`` (see :func:`affine_matrix`) to ``input_size`` (H, W), scaled to [0, 1] and normalised
    with ``mean``/``std`` (3, 1, 1). :func:`topdown_crop` is the same from a centre/scale, flipping like mmpose."""
    crop = cv2.warpAffine(_image_array(img), np.asarray(matrix, dtype=np.float64)[:2],
                          (int(input_size[1]), int(input_size[0])), flags=cv2.INTER_LINEAR)
    return _normalise(crop, torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))


def gaussian_heatmaps(joints: np.ndarray, visible: np.ndarray, heatmap_size: Tuple[int, int],
                      stride: Tuple[float, float], sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """mmpose's standard (non-UDP) MSRA targets: for joint ``j`` at crop position ``joints[j]`` a Gaussian of
    ``sigma`` (peak 1, cut at 3σ) centred on ``round(joints[j] / stride)``; weight 1 for a visible joint whose 3σ window
    meets the heatmap, else 0 (and an all-zero heatmap)."""
    h, w = heatmap_size
    num = joints.shape[0]
    target = np.zeros((num, h, w), dtype=np.float32)
    weight = (visible > 0).astype(np.float32)
    tmp = sigma * 3
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    for j in range(num):
        if weight[j] == 0:
            continue
        mu_x = int(joints[j, 0] / stride[1] + 0.5)
        mu_y = int(joints[j, 1] / stride[0] + 0.5)
        if mu_x - tmp >= w or mu_y - tmp >= h or mu_x + tmp + 1 < 0 or mu_y + tmp + 1 < 0:
            weight[j] = 0
            continue
        gx = np.exp(-((xs - mu_x) ** 2) / (2 * sigma ** 2)) * (np.abs(xs - mu_x) <= tmp)
        gy = np.exp(-((ys - mu_y) ** 2) / (2 * sigma ** 2)) * (np.abs(ys - mu_y) <= tmp)
        target[j] = gy[:, None] * gx[None, :]
    return target, weight


class CocoKeypoints(Dataset):
    """Top-down COCO keypoint dataset: one sample per person.

    ``train=True``: every non-crowd annotation with ``num_keypoints > 0``, with random horizontal flip
    (``flip_prob``, swapping ``flip_pairs``) and optional random scale (``scale_factor``, mmpose's clipped normal) and
    rotation (``rotation_factor`` degrees, applied with probability 0.6); both off by default. ``train=False``: the
    same GT persons (``use_gt_boxes=True``, score 1) or the person boxes of a detection results JSON
    (``person_boxes_json``: ``[{image_id, bbox [x, y, w, h], score, category_id}]``, those of the person category with
    score ≥ ``det_score_threshold``), no augmentation. As in mmpose, ground-truth boxes are clipped to the image
    (``x2 = min(width − 1, x1 + w − 1)``) and detection boxes are used unclipped. A box gives center/scale
    (:func:`box_to_center_scale`: input aspect ratio, padding 1.25, scale in units of 200 px), the crop is
    :func:`topdown_crop` (mmpose's cv2 warp; at evaluation exactly the official test input) of ``input_size`` (H, W),
    normalised with ``mean``/``std``. Targets: Gaussian heatmaps of ``heatmap_size`` (default input / 4) with
    ``sigma``, weights = visibility > 0 (and inside the heatmap); zeros for detection boxes. Item: ``(image (3, H,
    W), heatmaps (J, h, w), target_weight (J, 1), meta)`` with ``meta`` ``center`` (pixels), ``scale`` (crop size in
    units of 200 px, float32 as mmpose), ``rotation``, ``flipped``, ``image_id``, ``score``, ``bbox`` (xywh),
    ``joints`` (J, 3) original GT keypoints (zeros for detections). Bad annotations raise ``ValueError`` naming the
    annotation id (``skip_bad``: warn and skip)."""

    def __init__(
        self,
        images_dir: PathLike,
        annotation_json: PathLike,
        input_size: Tuple[int, int] = (256, 192),
        heatmap_size: Optional[Tuple[int, int]] = None,
        sigma: float = 2.0,
        train: bool = True,
        use_gt_boxes: bool = True,
        person_boxes_json: Optional[PathLike] = None,
        skip_bad: bool = False,
        flip_prob: float = 0.5,
        flip_pairs: Sequence[Tuple[int, int]] = COCO_FLIP_PAIRS,
        scale_factor: float = 0.0,
        rotation_factor: float = 0.0,
        det_score_threshold: float = 0.0,
        num_joints: int = 17,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images directory not found: {self.images_dir}")
        self.annotation_json = Path(annotation_json)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (tuple(int(v) for v in heatmap_size) if heatmap_size is not None
                             else (self.input_size[0] // 4, self.input_size[1] // 4))
        if min(self.input_size) < 1 or min(self.heatmap_size) < 1:
            raise ValueError(f"input_size {self.input_size} and heatmap_size {self.heatmap_size} must be positive")
        self.sigma = float(sigma)
        self.train = train
        self.flip_prob = float(flip_prob) if train else 0.0
        self.flip_pairs = tuple((int(a), int(b)) for a, b in flip_pairs)
        self.scale_factor = float(scale_factor) if train else 0.0
        self.rotation_factor = float(rotation_factor) if train else 0.0
        self.num_joints = num_joints
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.coco = load_coco(self.annotation_json, keypoints=num_joints, skip_bad=skip_bad)
        self.person_cat_ids = sorted(c for c, cat in self.coco.cats.items() if "keypoints" in cat) or [1]
        if train or use_gt_boxes:
            if person_boxes_json is not None:
                raise ValueError("person_boxes_json is used only with train=False and use_gt_boxes=False")
            self.samples = self._gt_samples()
        else:
            if person_boxes_json is None:
                raise ValueError("use_gt_boxes=False needs person_boxes_json (a COCO detection results file)")
            self.samples = self._det_samples(Path(person_boxes_json), det_score_threshold, skip_bad)

    def _sample(self, image_id: int, bbox: Sequence[float], score: float, joints: np.ndarray,
                clip: bool) -> Optional[dict]:
        """A sample from a box: ground-truth boxes are cleaned as mmpose's ``TopDownCocoDataset`` does (clipped to
        ``[0, width − 1] × [0, height − 1]`` with ``x2 = x1 + w − 1``; ``None`` when nothing is left), detection boxes
        are used as they are (``clip=False``, also as mmpose)."""
        box = [float(v) for v in bbox]
        if clip:
            info = self.coco.imgs[image_id]
            x, y, w, h = box
            x1, y1 = max(0.0, x), max(0.0, y)
            x2 = min(float(info["width"]) - 1, x1 + max(0.0, w - 1))
            y2 = min(float(info["height"]) - 1, y1 + max(0.0, h - 1))
            if x2 <= x1 or y2 <= y1:
                return None
            box = [x1, y1, x2 - x1, y2 - y1]
        center, scale = box_to_center_scale(box, (self.input_size[1], self.input_size[0]))
        return dict(image_id=image_id, bbox=box, score=float(score), joints=joints, center=center, scale=scale)

    def _gt_samples(self) -> List[dict]:
        samples = []
        for image_id in sorted(self.coco.getImgIds()):
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann["iscrowd"] or ann["num_keypoints"] <= 0:
                    continue
                joints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(self.num_joints, 3)
                if ann.get("area", 1) <= 0:
                    continue
                sample = self._sample(image_id, ann["bbox"], 1.0, joints, clip=True)
                if sample is not None:
                    samples.append(sample)
        return samples

    def _det_samples(self, path: Path, threshold: float, skip_bad: bool) -> List[dict]:
        records = read_json(path)
        if not isinstance(records, list):
            raise ValueError(f"{path}: person boxes must be a JSON list of detection results, found "
                             f"{type(records).__name__}")
        samples = []
        empty = np.zeros((self.num_joints, 3))
        for i, r in enumerate(records):
            problem = None
            if not isinstance(r, dict):
                problem = f"must be an object, found {type(r).__name__}"
            elif [k for k in ("image_id", "bbox", "score") if k not in r]:
                problem = f"lacks {[k for k in ('image_id', 'bbox', 'score') if k not in r]} (found {sorted(r)})"
            elif r["image_id"] not in self.coco.imgs:
                problem = f"refers to unknown image id {r['image_id']!r}"
            else:
                problem = xywh_is_valid(r["bbox"])
            if problem is not None:
                if not skip_bad:
                    raise ValueError(f"{path}: detection {i} {problem}")
                warnings.warn(f"{path}: skipping detection {i}: {problem}", stacklevel=3)
                continue
            if r.get("category_id", self.person_cat_ids[0]) not in self.person_cat_ids or r["score"] < threshold:
                continue
            sample = self._sample(r["image_id"], r["bbox"], r["score"], empty, clip=False)
            if sample is not None:
                samples.append(sample)
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, Any]]:
        s = self.samples[index]
        info = self.coco.imgs[s["image_id"]]
        path = self.images_dir / info["file_name"]
        img = load_image(path)
        if img.size != (info["width"], info["height"]):
            raise ValueError(f"{path}: {self.annotation_json} declares {info['width']}x{info['height']} "
                             f"(width x height) for image id {s['image_id']}, found {img.size[0]}x{img.size[1]}")
        center, scale, rotation = s["center"], s["scale"].copy(), 0.0
        if self.scale_factor > 0:
            sf = self.scale_factor
            scale = scale * np.float32(np.clip(torch.randn(()).item() * sf + 1, 1 - sf, 1 + sf))
        if self.rotation_factor > 0 and torch.rand(()).item() <= 0.6:
            rf = self.rotation_factor
            rotation = float(np.clip(torch.randn(()).item() * rf, -2 * rf, 2 * rf))
        flipped = self.flip_prob > 0 and torch.rand(()).item() < self.flip_prob
        matrix = affine_matrix(center, scale, self.input_size, rotation, info["width"] if flipped else None)
        image = topdown_crop(img, center, scale, self.input_size, rotation, flipped, self.mean, self.std)

        joints = s["joints"].copy()
        if flipped:
            for a, b in self.flip_pairs:
                joints[[a, b]] = joints[[b, a]]
        crop_xy = (np.c_[joints[:, :2], np.ones(len(joints))] @ matrix.T)[:, :2]
        stride = (self.input_size[0] / self.heatmap_size[0], self.input_size[1] / self.heatmap_size[1])
        heatmaps, weight = gaussian_heatmaps(crop_xy, joints[:, 2], self.heatmap_size, stride, self.sigma)
        meta = {
            "center": torch.tensor(center, dtype=torch.float32),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "rotation": float(rotation),
            "flipped": bool(flipped),
            "image_id": int(s["image_id"]),
            "score": float(s["score"]),
            "bbox": torch.tensor(s["bbox"], dtype=torch.float32),
            "joints": torch.tensor(s["joints"], dtype=torch.float32),
        }
        return image, torch.from_numpy(heatmaps), torch.from_numpy(weight).unsqueeze(-1), meta
