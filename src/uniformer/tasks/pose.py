"""Top-down human pose estimation, SimpleBaseline / mmpose 0.16 ``TopDown`` style (spec ``uniformer.md`` §5.3,
``dense-official.md`` §4): a backbone's stride-32 map → deconvolutions (4×4, stride 2, BN, ReLU) → 1×1 conv → 17
heatmaps at stride 4, trained with a target-weighted MSE; person crops from boxes with mmpose's affine warp (cv2 on
uint8, :mod:`uniformer.data.mm_pipelines`); mmpose's argmax + quarter-offset decoding; flip test with the 1-pixel
heatmap shift; COCO keypoint results rescored and OKS-NMS'ed as mmpose's ``TopDownCocoDataset`` does, scored with
OKS by pycocotools. Official mmpose checkpoints load through :func:`build_mmpose_model` +
:func:`convert_mmpose_state_dict`; :func:`official_pose_config` gives the official configs.

Coordinates and units follow mmpose (and OpenCV): pixel ``i`` has its centre at coordinate ``i``; a box becomes a
``center`` (pixels) and a ``scale`` = the crop's (width, height) **in units of 200 pixels** (mmpose's ``pixel_std``),
with the aspect ratio of the network input and 1.25 padding. Training, evaluation and official checkpoints share
this one convention.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ..data import load_image
from ..data.mm_pipelines import box_to_center_scale, get_affine_transform
from .coco import (PathLike, read_json, coco_eval_stats, load_coco, save_image_atomic, stats_to_dict, to_pil_rgb,
                   xywh_is_valid)

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_FLIP_PAIRS",
    "COCO_SKELETON",
    "COCO_SIGMAS",
    "PIXEL_STD",
    "OFFICIAL_POSE_NAMES",
    "SimpleBaselineHead",
    "TopDownPoseModel",
    "build_mmpose_model",
    "convert_mmpose_state_dict",
    "official_pose_config",
    "heatmap_loss",
    "box_to_center_scale",
    "affine_matrix",
    "gaussian_heatmaps",
    "topdown_crop",
    "person_crop",
    "CocoKeypoints",
    "decode_heatmaps",
    "flip_back",
    "flip_test",
    "official_heatmaps",
    "keypoint_results",
    "official_keypoint_results",
    "oks_iou",
    "oks_nms",
    "oks_nms_results",
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
# COCO's per-joint OKS constants (sigmas), as pycocotools and mmpose use them
COCO_SIGMAS = tuple(v / 10.0 for v in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
                                        .89, .89))
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
PADDING = 1.25
PIXEL_STD = 200.0  # mmpose's unit of ``scale``
SIZE_DIVISIBLE = 32
# the official mmpose test settings (TopDown test_cfg, TopDownCocoDataset data_cfg)
_DEFAULT_TEST_CFG = (("flip_test", True), ("shift_heatmap", True), ("post_process", "default"), ("use_udp", False),
                     ("modulate_kernel", 11))
# official pose configs: (input H, W) per resolution, backbone layers per size
_OFFICIAL_RESOLUTIONS = (("256x192", (256, 192)), ("384x288", (384, 288)), ("448x320", (448, 320)))
_OFFICIAL_LAYERS = (("small", (3, 4, 8, 3), 25233489), ("base", (5, 8, 20, 7), 53464785))
OFFICIAL_POSE_NAMES = tuple(f"top_down_{res}_global_{size}" for res, _ in _OFFICIAL_RESOLUTIONS
                            for size, _, _ in _OFFICIAL_LAYERS)


class SimpleBaselineHead(nn.Module):
    """SimpleBaseline / mmpose ``TopDownSimpleHead``: ``num_deconv`` × (ConvTranspose2d 4×4 stride 2 padding 1
    without bias, BN, ReLU), then a 1×1 conv to ``num_joints`` heatmaps. ``deconv_channels`` is one channel count for
    every deconvolution or a list with one per layer (mmpose ``num_deconv_filters``). Module names
    (``deconv_layers.{0..3n-1}``, ``final_layer``) and init (normal std 0.001, BN 1/0) follow mmpose so official
    ``keypoint_head.*`` weights load."""

    def __init__(self, in_channels: int, num_joints: int = 17, deconv_channels: Union[int, Sequence[int]] = 256,
                 num_deconv: int = 3) -> None:
        super().__init__()
        widths = ([int(deconv_channels)] * max(num_deconv, 0) if isinstance(deconv_channels, int)
                  else [int(c) for c in deconv_channels])
        if len(widths) != num_deconv:
            raise ValueError(f"deconv_channels lists {len(widths)} channel counts for num_deconv={num_deconv} "
                             f"deconvolutions; give one per layer (or a single int)")
        if in_channels < 1 or num_joints < 1 or num_deconv < 0 or any(c < 1 for c in widths):
            raise ValueError(f"invalid head sizes: in_channels={in_channels}, num_joints={num_joints}, "
                             f"deconv_channels={deconv_channels}, num_deconv={num_deconv}")
        layers: List[nn.Module] = []
        c = in_channels
        for width in widths:
            layers += [nn.ConvTranspose2d(c, width, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
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


def _resolve_test_cfg(test_cfg: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """mmpose's ``test_cfg`` with defaults filled (flip_test, shift_heatmap, post_process 'default', use_udp False,
    modulate_kernel 11), refusing by name what this port does not implement (UDP, unbiased / megvii decoding)."""
    cfg = dict(_DEFAULT_TEST_CFG)
    given = dict(test_cfg or {})
    known = set(cfg) | {"target_type", "unbiased_decoding", "valid_radius_factor"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"pose test_cfg: unknown key(s) {unknown}; supported: {sorted(known)}")
    if given.get("use_udp", False):
        raise ValueError("pose test_cfg: use_udp=True (UDP decoding) is not supported; only the default "
                         "(non-UDP) mmpose decoding is implemented")
    if given.get("unbiased_decoding", False):
        raise ValueError("pose test_cfg: unbiased_decoding=True (DARK) is not supported; use post_process='default'")
    target = given.get("target_type", "GaussianHeatmap")
    if str(target).lower() != "gaussianheatmap":
        raise ValueError(f"pose test_cfg: target_type={target!r} is not supported; only 'GaussianHeatmap'")
    post = given.get("post_process", "default")
    if post is True:
        post = "default"
    elif post is False:
        post = None
    if post not in ("default", None):
        raise ValueError(f"pose test_cfg: post_process={post!r} is not supported; use 'default' (quarter-pixel "
                         f"shift) or None (plain argmax)")
    cfg.update({k: given[k] for k in ("flip_test", "shift_heatmap", "modulate_kernel") if k in given})
    cfg["flip_test"], cfg["shift_heatmap"] = bool(cfg["flip_test"]), bool(cfg["shift_heatmap"])
    cfg["post_process"], cfg["use_udp"] = post, False
    return cfg


class TopDownPoseModel(nn.Module):
    """Top-down pose model: ``backbone`` (4 maps, or only the stride-32 map as UniFormer's pose backbone returns) →
    :class:`SimpleBaselineHead` on the LAST (stride-32) map, whose channels are ``in_channels`` (an int, or the list of
    all 4 levels). ``forward(x)`` on a (B, 3, H, W) crop batch returns (B, num_joints, H/4, W/4) heatmaps (inputs are
    zero-padded right/bottom to multiples of 32 for the backbone and the output cropped back to ceil(H/4) ×
    ceil(W/4)). Submodules are named ``backbone`` and ``keypoint_head`` like mmpose's ``TopDown``. ``test_cfg``
    (mmpose keys: ``flip_test``, ``shift_heatmap``, ``post_process``, ``use_udp`` (False only), ``modulate_kernel``)
    is kept, defaults filled, as ``self.test_cfg`` and used by :meth:`predict_keypoints`."""

    def __init__(self, backbone: nn.Module, in_channels: Union[int, Sequence[int]], num_joints: int = 17,
                 deconv_channels: Union[int, Sequence[int]] = 256, num_deconv: int = 3,
                 test_cfg: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        if not isinstance(in_channels, int):
            in_channels = int(list(in_channels)[-1])
        self.backbone = backbone
        self.in_channels = in_channels
        self.num_joints = num_joints
        self.keypoint_head = SimpleBaselineHead(in_channels, num_joints, deconv_channels, num_deconv)
        self.stride = 2 ** (5 - num_deconv)
        self.test_cfg = _resolve_test_cfg(test_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % SIZE_DIVISIBLE, (-w) % SIZE_DIVISIBLE
        # traced / exported graphs always pad (tested first: no guard on the size), by what the input size needs
        if torch.jit.is_tracing() or torch.compiler.is_exporting() or pad_h or pad_w:
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
        # ceil(h / stride) without negative floor division, which the ONNX exporter translates as truncation
        return heatmaps[..., : (h + self.stride - 1) // self.stride, : (w + self.stride - 1) // self.stride]

    @torch.no_grad()
    def predict_keypoints(self, images: torch.Tensor, centers: Union[torch.Tensor, np.ndarray],
                          scales: Union[torch.Tensor, np.ndarray],
                          flip_pairs: Sequence[Tuple[int, int]] = COCO_FLIP_PAIRS) -> torch.Tensor:
        """mmpose ``TopDown.forward_test`` + ``decode``: heatmaps of the (B, 3, H, W) crops (with :func:`flip_test`
        when ``test_cfg['flip_test']``, shifted per ``shift_heatmap``), decoded by :func:`decode_heatmaps` with the
        crops' ``centers`` (B, 2) pixels and ``scales`` (B, 2) in units of 200 px. Returns (B, J, 3): x, y in
        original-image pixels and the heatmap maximum. Call in eval mode."""
        heatmaps = official_heatmaps(self, images, flip_pairs)
        keypoints, maxvals = decode_heatmaps(heatmaps, centers, scales, post_process=self.test_cfg["post_process"])
        return torch.cat([keypoints, maxvals], dim=-1)


_HEAD_TYPES = ("TopDownSimpleHead", "TopdownHeatmapSimpleHead")
_HEAD_KEYS = frozenset({"type", "in_channels", "out_channels", "num_deconv_layers", "num_deconv_filters",
                        "num_deconv_kernels", "extra", "in_index", "input_transform", "align_corners",
                        "loss_keypoint", "train_cfg", "test_cfg", "norm_cfg"})
_MODEL_KEYS = frozenset({"type", "backbone", "keypoint_head", "train_cfg", "test_cfg", "pretrained", "neck",
                         "loss_pose"})


def build_mmpose_model(model_cfg: Mapping[str, Any], backbone: nn.Module) -> TopDownPoseModel:
    """Our :class:`TopDownPoseModel` for an mmpose 0.16 ``model`` dict (``type='TopDown'`` with a
    ``TopDownSimpleHead``; the fork's ``norm_cfg`` BN/SyncBN both become BatchNorm2d) around ``backbone`` (e.g.
    :func:`~uniformer.tasks.official_backbone.build_official_backbone` of ``model_cfg['backbone']`` with
    ``out_indices=(3,)``). Head keywords: ``in_channels``, ``out_channels`` (joints), ``num_deconv_layers`` (3),
    ``num_deconv_filters`` (one per layer, default 256 each), ``num_deconv_kernels`` (4 only),
    ``extra.final_conv_kernel`` (1 only). The top-level ``test_cfg`` (mmpose hands it to the head, overriding the
    head's own) is stored as ``model.test_cfg``. Anything this port does not implement raises ``ValueError`` naming
    it; training-only entries (loss, train_cfg, pretrained) are accepted and ignored."""
    cfg = dict(model_cfg)
    if cfg.get("type") != "TopDown":
        raise ValueError(f"model type {cfg.get('type')!r} is not supported; only mmpose 'TopDown'")
    unknown = sorted(set(cfg) - _MODEL_KEYS)
    if unknown:
        raise ValueError(f"TopDown model: unknown key(s) {unknown}; expected some of {sorted(_MODEL_KEYS)}")
    if cfg.get("neck") is not None:
        raise ValueError(f"TopDown model: a neck ({cfg['neck'].get('type', cfg['neck'])!r}) is not supported")
    head = dict(cfg.get("keypoint_head") or {})
    if head.get("type") not in _HEAD_TYPES:
        raise ValueError(f"keypoint_head type {head.get('type')!r} is not supported; expected one of {_HEAD_TYPES}")
    unknown = sorted(set(head) - _HEAD_KEYS)
    if unknown:
        raise ValueError(f"{head['type']}: unknown key(s) {unknown}; expected some of {sorted(_HEAD_KEYS)}")
    for key in ("in_channels", "out_channels"):
        if key not in head:
            raise ValueError(f"{head['type']}: '{key}' is required")
    num = int(head.get("num_deconv_layers", 3))
    filters = [int(c) for c in head.get("num_deconv_filters", (256,) * num)]
    kernels = [int(k) for k in head.get("num_deconv_kernels", (4,) * num)]
    if len(filters) != num or len(kernels) != num:
        raise ValueError(f"{head['type']}: num_deconv_layers={num} needs that many num_deconv_filters and "
                         f"num_deconv_kernels, got {filters} and {kernels}")
    if any(k != 4 for k in kernels):
        raise ValueError(f"{head['type']}: num_deconv_kernels={kernels} is not supported; only 4 (padding 1, "
                         f"output_padding 0) as in every official config")
    extra = dict(head.get("extra") or {})
    bad_extra = sorted(set(extra) - {"final_conv_kernel", "num_conv_layers", "num_conv_kernels"})
    if bad_extra:
        raise ValueError(f"{head['type']}: unknown extra key(s) {bad_extra}")
    if int(extra.get("final_conv_kernel", 1)) != 1:
        raise ValueError(f"{head['type']}: extra.final_conv_kernel={extra['final_conv_kernel']} is not supported; "
                         f"only 1")
    if int(extra.get("num_conv_layers", 0)) != 0:
        raise ValueError(f"{head['type']}: extra.num_conv_layers={extra['num_conv_layers']} is not supported; only 0")
    if head.get("input_transform") is not None or head.get("in_index", 0) not in (0, -1):
        raise ValueError(f"{head['type']}: input_transform={head.get('input_transform')!r} / in_index="
                         f"{head.get('in_index')!r} are not supported; the head reads the backbone's last map")
    norm = (head.get("norm_cfg") or {"type": "BN"}).get("type", "BN")
    if norm not in ("BN", "BN2d", "SyncBN"):
        raise ValueError(f"{head['type']}: norm_cfg type {norm!r} is not supported; only BN / SyncBN")
    test_cfg = cfg.get("test_cfg") if cfg.get("test_cfg") is not None else head.get("test_cfg")
    return TopDownPoseModel(backbone, int(head["in_channels"]), num_joints=int(head["out_channels"]),
                            deconv_channels=filters, num_deconv=num, test_cfg=test_cfg)


def convert_mmpose_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """An official mmpose TopDown ``state_dict`` (``backbone.*``, ``keypoint_head.*``; a whole checkpoint with a
    ``state_dict`` entry and DDP ``module.`` prefixes are unwrapped) as ``model``'s state dict (``model`` from
    :func:`build_mmpose_model` with an official backbone: the names coincide). Strict: every key of ``model`` must be
    present with the same shape and nothing else may be left over, else ``ValueError`` lists the missing /
    unexpected / mis-shaped keys. Returns the tensors in ``model``'s key order."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    source = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in source]
    unexpected = [k for k in source if k not in own]
    shapes = [f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in source and tuple(source[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(keys: List[str]) -> str:
            return f"{len(keys)} {keys[:8]}{' ...' if len(keys) > 8 else ''}"
        raise ValueError(f"the mmpose state dict does not match the model: missing {show(missing)}, unexpected "
                         f"{show(unexpected)}, shape mismatches {show(shapes)} (is the config the checkpoint's?)")
    return {k: source[k] for k in own}


def official_pose_config(name: str) -> Dict[str, Any]:
    """The official UniFormer mmpose config ``name`` (one of :data:`OFFICIAL_POSE_NAMES`, e.g.
    ``'top_down_256x192_global_small'``, or its path ``pose_estimation/exp/<name>/config.py``) as a fresh dict:
    ``model`` (the mm model dict for :func:`build_mmpose_model`; the backbone's training-only ``drop_path_rate`` is
    not recorded), ``input_size`` (H, W), ``image_size`` and ``heatmap_size`` (mmpose's (W, H)), ``data_cfg`` (the
    evaluation settings: person boxes file, ``det_bbox_thr`` 0, ``vis_thr`` 0.2, ``oks_thr`` 0.9), ``flip_pairs``,
    ``official_config`` (the path) and ``params`` (the parameter count of the full model)."""
    key = str(name)
    if key.startswith("pose_estimation/exp/"):
        key = key[len("pose_estimation/exp/"):].rsplit("/", 1)[0]
    if key not in OFFICIAL_POSE_NAMES:
        raise ValueError(f"unknown official pose config {name!r}; known: {list(OFFICIAL_POSE_NAMES)}")
    res, size = key[len("top_down_"):].split("_global_")
    h, w = dict(_OFFICIAL_RESOLUTIONS)[res]
    layers, params = {n: (l, p) for n, l, p in _OFFICIAL_LAYERS}[size]
    test_cfg = dict(_DEFAULT_TEST_CFG)
    test_cfg.pop("use_udp")
    model = {
        "type": "TopDown",
        "backbone": {"type": "UniFormer", "embed_dim": [64, 128, 320, 512], "layers": list(layers), "head_dim": 64,
                     "windows": False, "hybrid": False},
        "keypoint_head": {"type": "TopDownSimpleHead", "in_channels": 512, "out_channels": 17,
                          "norm_cfg": {"type": "SyncBN", "requires_grad": True}, "extra": {"final_conv_kernel": 1},
                          "loss_keypoint": {"type": "JointsMSELoss", "use_target_weight": True}},
        "train_cfg": {},
        "test_cfg": test_cfg,
    }
    return {
        "name": key,
        "official_config": f"pose_estimation/exp/{key}/config.py",
        "model": model,
        "input_size": [h, w],
        "image_size": [w, h],
        "heatmap_size": [w // 4, h // 4],
        "num_joints": 17,
        "flip_pairs": [list(p) for p in COCO_FLIP_PAIRS],
        "data_cfg": {"image_size": [w, h], "heatmap_size": [w // 4, h // 4], "num_joints": 17, "soft_nms": False,
                     "nms_thr": 1.0, "oks_thr": 0.9, "vis_thr": 0.2, "use_gt_bbox": False, "det_bbox_thr": 0.0,
                     "bbox_file": "data/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json"},
        "params": params,
    }


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


def decode_heatmaps(heatmaps: torch.Tensor, centers: Union[torch.Tensor, np.ndarray],
                    scales: Union[torch.Tensor, np.ndarray], input_size: Optional[Tuple[int, int]] = None,
                    post_process: Optional[str] = "default") -> Tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in original-image coordinates from (B, J, h, w) heatmaps, exactly as mmpose's
    ``keypoints_from_heatmaps`` (non-UDP): per joint the argmax of the flattened map (first maximum) and its value;
    a non-positive maximum gives coordinates (−1, −1); with ``post_process='default'`` the peak moves a quarter
    pixel toward the higher neighbour on both axes (``sign`` of the neighbour differences) only when ``1 < x < w − 1``
    and ``1 < y < h − 1`` (``None``: no shift); then ``x · scale·200 / w + center − scale·200 / 2`` per axis, with
    ``centers`` (B, 2) in pixels and ``scales`` (B, 2) in units of 200 px (float32 arithmetic as mmpose; no
    rotation). Returns (keypoints (B, J, 2), maxvals (B, J, 1)). ``input_size`` (H, W), if given, is checked to
    have the heatmaps' aspect ratio."""
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, J, h, w), got shape {tuple(heatmaps.shape)}")
    if post_process not in ("default", None):
        raise ValueError(f"post_process={post_process!r} is not supported; use 'default' or None")
    b, j, h, w = heatmaps.shape
    if input_size is not None and abs(input_size[0] / h - input_size[1] / w) > 1e-6:
        raise ValueError(f"input_size {tuple(input_size)} and heatmap size {(h, w)} have different strides")
    hm = heatmaps.detach().float()
    centers = torch.as_tensor(centers, dtype=torch.float32, device=hm.device).reshape(b, 1, 2)
    scales = torch.as_tensor(scales, dtype=torch.float32, device=hm.device).reshape(b, 1, 2)
    flat = hm.reshape(b, j, -1)
    idx = flat.argmax(dim=-1)  # the first maximum, as numpy
    maxvals = flat.gather(-1, idx.unsqueeze(-1))
    px, py = idx % w, torch.div(idx, w, rounding_mode="floor")
    coords = torch.stack([px, py], dim=-1).float()
    coords = torch.where(maxvals > 0, coords, torch.full_like(coords, -1.0))
    if post_process is not None:
        pxf, pyf = coords[..., 0].long().reshape(-1), coords[..., 1].long().reshape(-1)
        inner = (pxf > 1) & (pxf < w - 1) & (pyf > 1) & (pyf < h - 1)
        maps = hm.reshape(b * j, h, w)
        n = torch.arange(b * j, device=hm.device)
        xs, ys = pxf.clamp(1, max(w - 2, 1)), pyf.clamp(1, max(h - 2, 1))
        if w >= 3 and h >= 3:
            dx = maps[n, ys, xs + 1] - maps[n, ys, xs - 1]
            dy = maps[n, ys + 1, xs] - maps[n, ys - 1, xs]
            step = torch.stack([torch.sign(dx), torch.sign(dy)], dim=-1) * inner.unsqueeze(-1)
            coords = coords + step.reshape(b, j, 2) * 0.25
    scale_px = scales * PIXEL_STD
    size = torch.tensor([w, h], dtype=torch.float32, device=hm.device)
    keypoints = coords * (scale_px / size) + centers - scale_px * 0.5
    return keypoints, maxvals


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


@torch.no_grad()
def official_heatmaps(model: nn.Module, images: torch.Tensor,
                      flip_pairs: Sequence[Tuple[int, int]] = COCO_FLIP_PAIRS) -> torch.Tensor:
    """The test-time heatmaps of mmpose's ``TopDown.forward_test`` for (B, 3, H, W) crops: per the model's
    ``test_cfg`` (a :class:`TopDownPoseModel` attribute; mmpose's defaults for other models) :func:`flip_test`
    with ``flip_pairs`` and the one-pixel shift (``shift_heatmap``), or the plain heatmaps when ``flip_test`` is
    off. The model's train/eval mode is left as it is."""
    cfg = getattr(model, "test_cfg", None) or dict(_DEFAULT_TEST_CFG)
    if cfg.get("flip_test", True):
        return flip_test(model, images, flip_pairs, shift=bool(cfg.get("shift_heatmap", True)))
    return model(images)


def keypoint_results(
    keypoints: Union[torch.Tensor, np.ndarray],
    maxvals: Union[torch.Tensor, np.ndarray],
    image_ids: Sequence[Union[int, torch.Tensor]],
    box_scores: Optional[Sequence[float]] = None,
    category_id: int = 1,
    score_threshold: float = 0.2,
    scales: Optional[Union[torch.Tensor, np.ndarray]] = None,
) -> List[Dict[str, Any]]:
    """COCO keypoint result records, one per person: ``image_id``, ``category_id``, ``keypoints`` (J × (x, y,
    maxval) = 51 floats for COCO) and ``score`` = box score × mean of the maxvals above ``score_threshold`` (0 when
    none is) — mmpose ``TopDownCocoDataset.evaluate``'s rescoring (``vis_thr`` 0.2). With ``scales`` (N, 2, units
    of 200 px) each record also gets ``area`` = ∏(scale·200), the crop area mmpose's OKS-NMS uses
    (:func:`oks_nms_results`; pycocotools recomputes ``area`` of results itself, so it does not affect scoring)."""
    kps = torch.as_tensor(keypoints).detach().cpu().float()
    vals = torch.as_tensor(maxvals).detach().cpu().float().reshape(kps.shape[0], -1)
    if kps.ndim != 3 or kps.shape[-1] != 2 or vals.shape[1] != kps.shape[1]:
        raise ValueError(f"keypoints must be (N, J, 2) and maxvals (N, J, 1), got {tuple(kps.shape)} and "
                         f"{tuple(torch.as_tensor(maxvals).shape)}")
    if len(image_ids) != kps.shape[0] or (box_scores is not None and len(box_scores) != kps.shape[0]):
        raise ValueError(f"{kps.shape[0]} persons but {len(image_ids)} image ids"
                         + ("" if box_scores is None else f" and {len(box_scores)} box scores"))
    areas = None
    if scales is not None:
        sc = torch.as_tensor(scales).detach().cpu().float()
        if sc.shape != (kps.shape[0], 2):
            raise ValueError(f"scales must be (N, 2) = ({kps.shape[0]}, 2), got {tuple(sc.shape)}")
        areas = (sc * PIXEL_STD).prod(dim=-1).tolist()
    results = []
    for i in range(kps.shape[0]):
        above = vals[i][vals[i] > score_threshold]
        kpt_score = float(above.sum()) / above.numel() if above.numel() else 0.0
        box_score = 1.0 if box_scores is None else float(box_scores[i])
        flat = torch.cat([kps[i], vals[i].unsqueeze(-1)], dim=-1).reshape(-1).tolist()
        record = {"image_id": int(image_ids[i]), "category_id": int(category_id), "keypoints": flat,
                  "score": kpt_score * box_score}
        if areas is not None:
            record["area"] = float(areas[i])
        results.append(record)
    return results


def official_keypoint_results(
    keypoints: Union[torch.Tensor, np.ndarray],
    maxvals: Union[torch.Tensor, np.ndarray],
    image_ids: Sequence[Union[int, torch.Tensor]],
    box_scores: Sequence[float],
    centers: Union[torch.Tensor, np.ndarray],
    scales: Union[torch.Tensor, np.ndarray],
    category_id: int = 1,
    vis_thr: float = 0.2,
    oks_thr: Optional[float] = 0.9,
    sigmas: Sequence[float] = COCO_SIGMAS,
) -> List[Dict[str, Any]]:
    """Keypoint result records as mmpose's ``TopDownCocoDataset.evaluate`` makes them: rescoring (box score × mean
    of the maxvals above ``vis_thr``, :func:`keypoint_results`), ``area`` = ∏(scale·200) of each person's crop
    (``scales`` (N, 2) in units of 200 px; ``centers`` (N, 2) are checked for shape only — mmpose keeps them but
    they do not enter the scoring), then the per-image OKS-NMS with ``oks_thr`` (:func:`oks_nms_results`; ``None``
    skips it). Feed the records of all images to :func:`evaluate_keypoints` (whose own NMS then keeps them all)."""
    c = np.asarray(centers.detach().cpu() if isinstance(centers, torch.Tensor) else centers,
                   dtype=np.float64).reshape(-1, 2)
    if c.shape[0] != len(image_ids):
        raise ValueError(f"{len(image_ids)} persons but {c.shape[0]} centers")
    records = keypoint_results(keypoints, maxvals, image_ids, box_scores, category_id, vis_thr, scales=scales)
    return records if oks_thr is None else oks_nms_results(records, oks_thr, sigmas)


def oks_iou(keypoints: Union[np.ndarray, Sequence[float]], others: Union[np.ndarray, Sequence[Sequence[float]]],
            area: float, other_areas: Union[np.ndarray, Sequence[float]],
            sigmas: Sequence[float] = COCO_SIGMAS) -> np.ndarray:
    """Object keypoint similarity of one person's ``keypoints`` (J × (x, y, score), flat or (J, 3)) with each of
    ``others`` (N persons), as mmpose's ``oks_iou`` (no visibility filter): per joint ``exp(−d² / (2·(2σ)²·ā))``
    with ``ā = (area + other_area) / 2`` (+ float64 eps), averaged over the joints. Returns (N,) float32."""
    g = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(others, dtype=np.float64).reshape(-1, g.shape[0], 3) if len(others) else np.zeros((0,) + g.shape)
    var = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    if var.shape[0] != g.shape[0]:
        raise ValueError(f"{g.shape[0]} joints but {var.shape[0]} OKS sigmas")
    a_d = np.asarray(other_areas, dtype=np.float64).reshape(-1)
    if a_d.shape[0] != d.shape[0]:
        raise ValueError(f"{d.shape[0]} persons but {a_d.shape[0]} areas")
    sq = (d[..., 0] - g[None, :, 0]) ** 2 + (d[..., 1] - g[None, :, 1]) ** 2
    e = sq / var / ((float(area) + a_d[:, None]) / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(axis=-1).astype(np.float32) if d.shape[0] else np.zeros(0, dtype=np.float32)


def oks_nms(keypoints: Union[np.ndarray, Sequence[Sequence[float]]], scores: Sequence[float],
            areas: Sequence[float], thr: float = 0.9, sigmas: Sequence[float] = COCO_SIGMAS) -> List[int]:
    """Greedy OKS non-maximum suppression (mmpose ``oks_nms``): visit the persons by decreasing ``scores`` (numpy's
    ``argsort`` reversed, so ties resolve as mmpose's), keep each one not yet suppressed and suppress every remaining
    person whose :func:`oks_iou` with it is above ``thr``. ``keypoints`` (N, J, 3) or (N, 3J), ``areas`` (N,).
    Returns the kept indices in visiting order."""
    n = len(scores)
    if n == 0:
        return []
    kpts = np.asarray(keypoints, dtype=np.float64).reshape(n, -1)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    if areas.shape[0] != n:
        raise ValueError(f"{n} persons but {areas.shape[0]} areas")
    order = np.asarray(scores, dtype=np.float64).argsort()[::-1]
    keep: List[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        overlap = oks_iou(kpts[i], kpts[rest], areas[i], areas[rest], sigmas)
        order = rest[overlap <= thr]
    return keep


def oks_nms_results(results: Sequence[Mapping[str, Any]], oks_thr: float = 0.9,
                    sigmas: Sequence[float] = COCO_SIGMAS) -> List[Dict[str, Any]]:
    """mmpose ``TopDownCocoDataset.evaluate``'s per-image OKS-NMS of keypoint result records (from
    :func:`keypoint_results` with ``scales``: each needs ``area``, the crop area ∏(scale·200)): the records of each
    image (images in order of first appearance) go through :func:`oks_nms` with ``oks_thr``; the kept ones are
    returned in keep order."""
    by_image: Dict[int, List[Mapping[str, Any]]] = {}
    for i, r in enumerate(results):
        if "area" not in r:
            raise ValueError(f"keypoint result {i} (image {r.get('image_id')!r}) has no 'area' for OKS-NMS: make the "
                             f"records with keypoint_results(..., scales=...) or evaluate with use_nms=False")
        by_image.setdefault(int(r["image_id"]), []).append(r)
    kept: List[Dict[str, Any]] = []
    for records in by_image.values():
        keep = oks_nms([r["keypoints"] for r in records], [r["score"] for r in records],
                       [r["area"] for r in records], oks_thr, sigmas)
        kept += [dict(records[k]) for k in keep]
    return kept


def evaluate_keypoints(coco_gt: COCO, results: Sequence[Mapping[str, Any]], img_ids: Optional[Sequence[int]] = None,
                       quiet: bool = True, use_nms: bool = True, oks_thr: float = 0.9) -> Dict[str, float]:
    """OKS keypoint AP of ``results`` against ``coco_gt`` as mmpose's ``TopDownCocoDataset.evaluate``: first the
    per-image OKS-NMS (:func:`oks_nms_results`, ``oks_thr`` 0.9; ``use_nms=False`` skips it and then ``area`` is not
    needed), then ``COCOeval(iouType='keypoints')`` (ground-truth annotations need ``area``, ``num_keypoints`` and
    ``keypoints``; :func:`uniformer.tasks.coco.load_coco` fills the first two if missing). Returns ``AP``, ``AP50``,
    ``AP75``, ``APm``, ``APl``, ``AR``, ``AR50``, ``AR75``, ``ARm``, ``ARl`` in percent (NaN where pycocotools
    reports −1); empty results give 0. Rescoring happens earlier, in :func:`keypoint_results`."""
    if use_nms:
        results = oks_nms_results(results, oks_thr)
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
