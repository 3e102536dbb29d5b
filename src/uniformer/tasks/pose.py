"""Top-down human pose estimation, SimpleBaseline / mmpose 0.16 ``TopDown`` style (spec ``uniformer.md`` §5.3,
``dense-official.md`` §4), the model side: a backbone's stride-32 map → deconvolutions (4×4, stride 2, BN, ReLU) →
1×1 conv → 17 heatmaps at stride 4, trained with a target-weighted MSE. Official mmpose checkpoints load through
:func:`build_mmpose_model` + :func:`convert_mmpose_state_dict`; :func:`official_pose_config` gives the official
configs. The person crops, targets and the COCO keypoint dataset are :mod:`uniformer.data.coco_keypoints`; mmpose's
decoding, flip test, rescoring, OKS-NMS and OKS AP are :mod:`uniformer.tasks.pose_eval`.

Coordinates and units follow mmpose (and OpenCV): pixel ``i`` has its centre at coordinate ``i``; a box becomes a
``center`` (pixels) and a ``scale`` = the crop's (width, height) **in units of 200 pixels** (mmpose's ``pixel_std``),
with the aspect ratio of the network input and 1.25 padding. Training, evaluation and official checkpoints share
this one convention.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data.coco_keypoints import COCO_FLIP_PAIRS
from ..data.padding import pad_to_multiple
from .pose_eval import _DEFAULT_TEST_CFG, decode_heatmaps, official_heatmaps

__all__ = [
    "OFFICIAL_POSE_NAMES",
    "SimpleBaselineHead",
    "TopDownPoseModel",
    "build_mmpose_model",
    "convert_mmpose_state_dict",
    "official_pose_config",
    "heatmap_loss",
]

SIZE_DIVISIBLE = 32
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
        x = pad_to_multiple(x, SIZE_DIVISIBLE)  # traced / exported graphs always pad
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
        """mmpose ``TopDown.forward_test`` + ``decode``: heatmaps of the (B, 3, H, W) crops (with
        :func:`~uniformer.tasks.pose_eval.flip_test` when ``test_cfg['flip_test']``, shifted per ``shift_heatmap``),
        decoded by :func:`~uniformer.tasks.pose_eval.decode_heatmaps` with the crops' ``centers`` (B, 2) pixels and
        ``scales`` (B, 2) in units of 200 px. Returns (B, J, 3): x, y in original-image pixels and the heatmap
        maximum. Call in eval mode."""
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
