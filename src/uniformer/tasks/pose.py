"""Top-down human pose estimation, SimpleBaseline style (spec ``uniformer.md`` §5.3): a backbone's stride-32 map →
3 deconvolutions (4×4, stride 2, 256 channels, BN, ReLU) → 1×1 conv → 17 heatmaps at stride 4, trained with a
target-weighted MSE; person crops from boxes with an affine warp; argmax + quarter-offset decoding; flip test with the
1-pixel heatmap shift; COCO keypoint results scored with OKS by pycocotools.

Coordinates follow mmpose (and OpenCV): pixel ``i`` has its centre at coordinate ``i``. A box becomes a ``center``
and a ``scale`` — here the crop's (width, height) in original-image pixels (mmpose stores it divided by 200), with
the aspect ratio of the network input and 1.25 padding. No OpenCV: crops are warped with PIL's affine transform.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..data import load_image
from .coco import (PathLike, read_json, coco_eval_stats, load_coco, save_image_atomic, stats_to_dict, to_pil_rgb,
                   xywh_is_valid)

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_FLIP_PAIRS",
    "COCO_SKELETON",
    "SimpleBaselineHead",
    "TopDownPoseModel",
    "heatmap_loss",
    "box_to_center_scale",
    "affine_matrix",
    "gaussian_heatmaps",
    "person_crop",
    "CocoKeypoints",
    "decode_heatmaps",
    "flip_back",
    "flip_test",
    "keypoint_results",
    "evaluate_keypoints",
    "save_pose_overlay",
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
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
PADDING = 1.25
SIZE_DIVISIBLE = 32


class SimpleBaselineHead(nn.Module):
    """SimpleBaseline / mmpose ``TopdownHeatmapSimpleHead``: ``num_deconv`` × (ConvTranspose2d 4×4 stride 2 padding 1
    without bias, BN, ReLU) with ``deconv_channels`` channels, then a 1×1 conv to ``num_joints`` heatmaps. Module
    names (``deconv_layers.{0..8}``, ``final_layer``) and init (normal std 0.001, BN 1/0) follow mmpose so official
    ``keypoint_head.*`` weights load."""

    def __init__(self, in_channels: int, num_joints: int = 17, deconv_channels: int = 256, num_deconv: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or num_joints < 1 or deconv_channels < 1 or num_deconv < 0:
            raise ValueError(f"invalid head sizes: in_channels={in_channels}, num_joints={num_joints}, "
                             f"deconv_channels={deconv_channels}, num_deconv={num_deconv}")
        layers: List[nn.Module] = []
        c = in_channels
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(c, deconv_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(deconv_channels), nn.ReLU(inplace=True)]
            c = deconv_channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(c, num_joints, 1)
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class TopDownPoseModel(nn.Module):
    """Top-down pose model: ``backbone`` (4 maps, or only the stride-32 map as UniFormer's pose backbone returns) →
    :class:`SimpleBaselineHead` on the LAST (stride-32) map, whose channels are ``in_channels`` (an int, or the list of
    all 4 levels). ``forward(x)`` on a (B, 3, H, W) crop batch returns (B, num_joints, H/4, W/4) heatmaps (inputs are
    zero-padded right/bottom to multiples of 32 for the backbone and the output cropped back to ceil(H/4) ×
    ceil(W/4)). Submodules are named ``backbone`` and ``keypoint_head`` like mmpose's ``TopDown``."""

    def __init__(self, backbone: nn.Module, in_channels: Union[int, Sequence[int]], num_joints: int = 17,
                 deconv_channels: int = 256, num_deconv: int = 3) -> None:
        super().__init__()
        if not isinstance(in_channels, int):
            in_channels = int(list(in_channels)[-1])
        self.backbone = backbone
        self.in_channels = in_channels
        self.num_joints = num_joints
        self.keypoint_head = SimpleBaselineHead(in_channels, num_joints, deconv_channels, num_deconv)
        self.stride = 2 ** (5 - num_deconv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % SIZE_DIVISIBLE, (-w) % SIZE_DIVISIBLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.backbone(x)
        if isinstance(features, Mapping):
            features = list(features.values())
        if isinstance(features, (list, tuple)):
            features = features[-1]
        if not isinstance(features, torch.Tensor) or features.ndim != 4 or features.shape[1] != self.in_channels:
            found = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"{type(self).__name__}: the backbone's last map must be (B, {self.in_channels}, H/32, "
                             f"W/32), found {found}")
        heatmaps = self.keypoint_head(features)
        return heatmaps[..., : -(-h // self.stride), : -(-w // self.stride)]


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor) -> torch.Tensor:
    """Target-weighted heatmap MSE (``JointsMSELoss(use_target_weight=True)`` of SimpleBaseline/HRNet): per joint
    ``0.5 × mean((w·pred − w·target)²)`` over batch and pixels, averaged over joints — i.e. ``0.5 × mean(w² (pred −
    target)²)``. ``target_weight`` is (B, J) or (B, J, 1); joints with weight 0 (invisible / outside the crop) do not
    contribute."""
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must be equal (B, J, H, W) heatmaps, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    w = target_weight.reshape(pred.shape[0], pred.shape[1], 1, 1).to(pred.dtype)
    return 0.5 * ((pred * w - target * w) ** 2).mean()


def box_to_center_scale(bbox: Sequence[float], aspect_ratio: float, padding: float = PADDING
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """mmpose ``_xywh2cs``: the centre of an ``[x, y, w, h]`` box and its size enlarged to ``aspect_ratio`` (input
    width / height) and multiplied by ``padding``; returns (center (2,), scale (2,) = crop (width, height) in
    pixels)."""
    x, y, w, h = (float(v) for v in bbox)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64) * padding


def affine_matrix(center: Sequence[float], scale: Sequence[float], output_size: Tuple[int, int],
                  rotation: float = 0.0, flip_width: Optional[int] = None) -> np.ndarray:
    """3×3 matrix mapping original-image coordinates to crop coordinates (mmpose ``get_affine_transform``): the box of
    size ``scale`` around ``center`` onto the ``output_size`` (H, W) crop, rotated by ``rotation`` degrees (the crop
    content turns counter-clockwise for positive angles). With ``flip_width`` (the image width) the image is
    mirrored first (x → width − 1 − x, the centre mirrored with it)."""
    out_h, out_w = output_size
    cx, cy = float(center[0]), float(center[1])
    flip = np.eye(3)
    if flip_width is not None:
        flip = np.array([[-1.0, 0.0, flip_width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        cx = flip_width - 1.0 - cx
    k = out_w / float(scale[0])
    t = math.radians(rotation)
    cos, sin = math.cos(t), math.sin(t)
    rot = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])  # R(-rotation): mmpose's convention
    to_origin = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    to_crop = np.array([[k, 0.0, out_w * 0.5], [0.0, k, out_h * 0.5], [0.0, 0.0, 1.0]])
    return to_crop @ rot @ to_origin @ flip


def _warp(img: Image.Image, matrix: np.ndarray, output_size: Tuple[int, int]) -> Image.Image:
    """Bilinear crop of ``img`` through ``matrix`` (original → crop, pixel centres at integers). PIL maps output to
    input with pixel centres at +0.5, so the inverse is conjugated with that half-pixel shift."""
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    inv = half @ np.linalg.inv(matrix) @ np.linalg.inv(half)
    return img.transform((output_size[1], output_size[0]), Image.Transform.AFFINE, tuple(inv[:2].reshape(-1)),
                         resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def person_crop(img: Image.Image, matrix: np.ndarray, input_size: Tuple[int, int], mean: torch.Tensor,
                std: torch.Tensor) -> torch.Tensor:
    """The normalised (3, H, W) network input for one person: ``img`` warped through ``matrix`` (see
    :func:`affine_matrix`) to ``input_size`` (H, W), scaled to [0, 1] and normalised with ``mean``/``std`` (3, 1, 1)."""
    crop = _warp(img, matrix, input_size)
    return (pil_to_tensor(crop).float() / 255.0 - mean) / std


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
    score ≥ ``det_score_threshold``), no augmentation. A box gives center/scale (input aspect ratio, padding 1.25),
    the crop is an affine warp of ``input_size`` (H, W), normalised with ImageNet mean/std. Targets: Gaussian heatmaps
    of ``heatmap_size`` (default input / 4) with ``sigma``, weights = visibility > 0 (and inside the heatmap); zeros for
    detection boxes. Item: ``(image (3, H, W), heatmaps (J, h, w), target_weight (J, 1), meta)`` with ``meta``
    ``center``, ``scale`` (crop size in pixels), ``rotation``, ``flipped``, ``image_id``, ``score``, ``bbox`` (xywh),
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

    def _sample(self, image_id: int, bbox: Sequence[float], score: float, joints: np.ndarray) -> Optional[dict]:
        """A sample from a box clipped to its image (``None`` when nothing is left)."""
        info = self.coco.imgs[image_id]
        x1, y1 = max(0.0, float(bbox[0])), max(0.0, float(bbox[1]))
        x2 = min(float(info["width"]), float(bbox[0]) + float(bbox[2]))
        y2 = min(float(info["height"]), float(bbox[1]) + float(bbox[3]))
        if x2 <= x1 or y2 <= y1:
            return None
        box = [x1, y1, x2 - x1, y2 - y1]
        aspect = self.input_size[1] / self.input_size[0]
        center, scale = box_to_center_scale(box, aspect)
        return dict(image_id=image_id, bbox=box, score=float(score), joints=joints, center=center, scale=scale)

    def _gt_samples(self) -> List[dict]:
        samples = []
        for image_id in sorted(self.coco.getImgIds()):
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann["iscrowd"] or ann["num_keypoints"] <= 0:
                    continue
                joints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(self.num_joints, 3)
                sample = self._sample(image_id, ann["bbox"], 1.0, joints)
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
            sample = self._sample(r["image_id"], r["bbox"], r["score"], empty)
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
            scale = scale * float(np.clip(torch.randn(()).item() * sf + 1, 1 - sf, 1 + sf))
        if self.rotation_factor > 0 and torch.rand(()).item() <= 0.6:
            rf = self.rotation_factor
            rotation = float(np.clip(torch.randn(()).item() * rf, -2 * rf, 2 * rf))
        flipped = self.flip_prob > 0 and torch.rand(()).item() < self.flip_prob
        matrix = affine_matrix(center, scale, self.input_size, rotation, info["width"] if flipped else None)
        image = person_crop(img, matrix, self.input_size, self.mean, self.std)

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


def decode_heatmaps(heatmaps: torch.Tensor, centers: Union[torch.Tensor, np.ndarray],
                    scales: Union[torch.Tensor, np.ndarray], input_size: Optional[Tuple[int, int]] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in original-image coordinates from (B, J, h, w) heatmaps (mmpose ``keypoints_from_heatmaps``,
    default post-processing): per joint the argmax, moved a quarter pixel toward the higher neighbour on each axis
    (where both neighbours exist), then mapped back with ``x · scale / (w, h) + center − scale / 2`` (``centers``,
    ``scales`` (B, 2) as in the dataset's meta; no rotation). Returns (keypoints (B, J, 2), maxvals (B, J, 1)).
    ``input_size`` (H, W), if given, is checked to have the heatmaps' aspect ratio."""
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, J, h, w), got shape {tuple(heatmaps.shape)}")
    b, j, h, w = heatmaps.shape
    if input_size is not None and abs(input_size[0] / h - input_size[1] / w) > 1e-6:
        raise ValueError(f"input_size {tuple(input_size)} and heatmap size {(h, w)} have different strides")
    hm = heatmaps.detach().float()
    centers = torch.as_tensor(centers, dtype=torch.float32, device=hm.device).reshape(b, 1, 2)
    scales = torch.as_tensor(scales, dtype=torch.float32, device=hm.device).reshape(b, 1, 2)
    maxvals, idx = hm.reshape(b, j, -1).max(dim=-1)
    px, py = idx % w, idx // w
    coords = torch.stack([px, py], dim=-1).float()
    flat = hm.reshape(b * j, h, w)
    n = torch.arange(b * j, device=hm.device)
    pxf, pyf = px.reshape(-1), py.reshape(-1)
    inner_x = (pxf > 0) & (pxf < w - 1)
    inner_y = (pyf > 0) & (pyf < h - 1)
    dx = flat[n, pyf, (pxf + 1).clamp(max=w - 1)] - flat[n, pyf, (pxf - 1).clamp(min=0)]
    dy = flat[n, (pyf + 1).clamp(max=h - 1), pxf] - flat[n, (pyf - 1).clamp(min=0), pxf]
    offset = torch.stack([torch.sign(dx) * inner_x, torch.sign(dy) * inner_y], dim=-1).reshape(b, j, 2) * 0.25
    coords = coords + offset
    size = torch.tensor([w, h], dtype=torch.float32, device=hm.device)
    keypoints = coords * scales / size + centers - scales * 0.5
    return keypoints, maxvals.unsqueeze(-1)


def flip_back(heatmaps: torch.Tensor, flip_pairs: Sequence[Tuple[int, int]] = COCO_FLIP_PAIRS) -> torch.Tensor:
    """Heatmaps of a mirrored input turned back: mirror them horizontally and swap the left/right joint channels."""
    perm = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return heatmaps.flip(-1)[:, perm]


@torch.no_grad()
def flip_test(model: nn.Module, images: torch.Tensor, flip_pairs: Sequence[Tuple[int, int]] = COCO_FLIP_PAIRS,
              shift: bool = True) -> torch.Tensor:
    """Flip-test heatmaps: the mean of ``model(images)`` and :func:`flip_back` of ``model(images.flip(-1))``; with
    ``shift`` (mmpose ``shift_heatmap=True``) the flipped-back heatmaps are first moved one pixel right
    (``h[..., 1:] = h[..., :-1]``), compensating the half-pixel asymmetry of the non-UDP crop/heatmap grid. The model's
    train/eval mode is left as it is."""
    heatmaps = model(images)
    flipped = flip_back(model(images.flip(-1)), flip_pairs)
    if shift:
        flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=-1)
    return (heatmaps + flipped) * 0.5


def keypoint_results(
    keypoints: Union[torch.Tensor, np.ndarray],
    maxvals: Union[torch.Tensor, np.ndarray],
    image_ids: Sequence[Union[int, torch.Tensor]],
    box_scores: Optional[Sequence[float]] = None,
    category_id: int = 1,
    score_threshold: float = 0.2,
) -> List[Dict[str, Any]]:
    """COCO keypoint result records, one per person: ``image_id``, ``category_id``, ``keypoints`` (J × (x, y,
    maxval) = 51 floats for COCO) and ``score`` = box score × mean of the maxvals above ``score_threshold`` (0 when
    none is) — mmpose's rescoring without its OKS-NMS step (duplicate persons from overlapping boxes are kept)."""
    kps = torch.as_tensor(keypoints).detach().cpu().float()
    vals = torch.as_tensor(maxvals).detach().cpu().float().reshape(kps.shape[0], -1)
    if kps.ndim != 3 or kps.shape[-1] != 2 or vals.shape[1] != kps.shape[1]:
        raise ValueError(f"keypoints must be (N, J, 2) and maxvals (N, J, 1), got {tuple(kps.shape)} and "
                         f"{tuple(torch.as_tensor(maxvals).shape)}")
    if len(image_ids) != kps.shape[0] or (box_scores is not None and len(box_scores) != kps.shape[0]):
        raise ValueError(f"{kps.shape[0]} persons but {len(image_ids)} image ids"
                         + ("" if box_scores is None else f" and {len(box_scores)} box scores"))
    results = []
    for i in range(kps.shape[0]):
        above = vals[i][vals[i] > score_threshold]
        kpt_score = float(above.mean()) if above.numel() else 0.0
        box_score = 1.0 if box_scores is None else float(box_scores[i])
        flat = torch.cat([kps[i], vals[i].unsqueeze(-1)], dim=-1).reshape(-1).tolist()
        results.append({"image_id": int(image_ids[i]), "category_id": int(category_id), "keypoints": flat,
                        "score": box_score * kpt_score})
    return results


def evaluate_keypoints(coco_gt: COCO, results: Sequence[Mapping[str, Any]], img_ids: Optional[Sequence[int]] = None,
                       quiet: bool = True) -> Dict[str, float]:
    """OKS keypoint AP of ``results`` against ``coco_gt`` with ``COCOeval(iouType='keypoints')`` (ground-truth
    annotations need ``area``, ``num_keypoints`` and ``keypoints``; :func:`uniformer.tasks.coco.load_coco` fills the
    first two if missing). Returns ``AP``, ``AP50``, ``AP75``, ``APm``, ``APl``, ``AR``, ``AR50``, ``AR75``, ``ARm``,
    ``ARl`` in percent (NaN where pycocotools reports −1); empty results give 0."""
    stats = coco_eval_stats(coco_gt, results, "keypoints", img_ids=img_ids, quiet_output=quiet)
    return stats_to_dict(stats, KEYPOINT_STAT_NAMES)


_LIMB_COLORS = ((255, 128, 0), (255, 153, 51), (255, 178, 102), (230, 230, 0), (255, 153, 255), (153, 204, 255),
                (255, 102, 255), (255, 51, 255), (102, 178, 255), (51, 153, 255), (255, 153, 153), (255, 102, 102),
                (255, 51, 51), (153, 255, 153), (102, 255, 102), (51, 255, 51), (0, 255, 0), (0, 0, 255),
                (255, 0, 0))


def save_pose_overlay(
    image: Union[torch.Tensor, np.ndarray, Image.Image],
    keypoints: Union[torch.Tensor, np.ndarray],
    output_path: PathLike,
    threshold: float = 0.3,
    skeleton: Sequence[Tuple[int, int]] = COCO_SKELETON,
) -> Path:
    """Draw each person's skeleton (``keypoints`` (N, J, 3) = x, y, score in image pixels; limbs whose two ends score
    above ``threshold``, joints as dots) on ``image`` (PIL, (3, H, W) float [0, 1] / uint8 tensor, or (H, W, 3)
    array) and write it atomically (format from the suffix, PNG by default); returns the path."""
    kps = torch.as_tensor(keypoints).detach().cpu().float()
    if kps.ndim == 2:
        kps = kps.unsqueeze(0)
    if kps.ndim != 3 or kps.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, J, 3) (x, y, score), got shape {tuple(kps.shape)}")
    img = to_pil_rgb(image)
    draw = ImageDraw.Draw(img)
    radius = max(2, round(min(img.size) / 100))
    for person in kps.tolist():
        for i, (a, b) in enumerate(skeleton):
            if max(a, b) < len(person) and person[a][2] > threshold and person[b][2] > threshold:
                draw.line([tuple(person[a][:2]), tuple(person[b][:2])], fill=_LIMB_COLORS[i % len(_LIMB_COLORS)],
                          width=max(1, radius - 1))
        for x, y, s in person:
            if s > threshold:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255),
                             outline=(0, 0, 0))
    return save_image_atomic(img, output_path)
