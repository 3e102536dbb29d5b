"""The official dense configs of the Sense-X/UniFormer repository (snapshot ``52a0415``): their names, files, what
they were evaluated at and the published numbers (TPAMI 2023 tables and the repository's READMEs).

A name is the config's folder (``mask_rcnn_1x_hybrid_small``) or, for the segmentation test configs,
``folder/test_config_h32`` etc.; :data:`OFFICIAL_DENSE_CONFIGS` maps it to an :class:`OfficialConfig`. The full
model dicts these names stand for are built by :func:`uniformer.tasks.official.official_model_config`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = ["OfficialConfig", "OFFICIAL_DENSE_CONFIGS", "official_config_entry"]


@dataclass(frozen=True)
class OfficialConfig:
    """One official dense config: ``path`` in the official repository, ``task``, the backbone ``size`` (small, base,
    xxs, xs) and stage-3 ``attention`` (global / hybrid / windows with its window size), the input size the official
    tables measure FLOPs at (H, W), the published ``metrics`` (e.g. ``{'box AP': 45.6, 'mask AP': 41.6}``; empty
    where none was published for that exact config), the head ``detector`` and the training ``schedule``."""

    name: str
    path: str
    task: str
    size: str
    attention: str
    flops_input: Tuple[int, int]
    metrics: Dict[str, float] = field(default_factory=dict)
    detector: Optional[str] = None  # detection: mask_rcnn | cascade_mask_rcnn; segmentation: fpn | upernet
    schedule: str = ""

    @property
    def family(self) -> str:
        """The head family: mask_rcnn, cascade_mask_rcnn, fpn, upernet or topdown."""
        return self.detector or "topdown"


def _det(folder: str, size: str, metrics: Dict[str, float], schedule: str) -> OfficialConfig:
    detector = "cascade_mask_rcnn" if folder.startswith("cascade") else "mask_rcnn"
    sub = "exp_light" if size in ("xxs", "xs") else "exp"
    attention = "hybrid-14" if size in ("small", "base") else "global"
    return OfficialConfig(folder, f"object_detection/{sub}/{folder}/config.py", "detection", size, attention,
                          (800, 1280), metrics, detector, schedule)


def _seg(folder: str, size: str, head: str, test: Optional[str], metrics: Dict[str, float]) -> OfficialConfig:
    light = size in ("xxs", "xs")
    root = "semantic_segmentation/fpn_seg" if head == "fpn" else "semantic_segmentation"
    path = f"{root}/{'exp_light' if light else 'exp'}/{folder}/{test or 'config'}.py"
    if test:
        attention = {"test_config_g": "global", "test_config_h32": "hybrid-32", "test_config_w32": "windows-32"}[test]
    else:
        attention = "hybrid-14" if "hybrid" in folder else "global"
    name = f"{folder}/{test}" if test else folder
    return OfficialConfig(name, path, "segmentation", size, attention, (512, 2048), metrics, head)


def _pose(size: str, hw: Tuple[int, int], ap: float) -> OfficialConfig:
    folder = f"top_down_{hw[0]}x{hw[1]}_global_{size}"
    return OfficialConfig(folder, f"pose_estimation/exp/{folder}/config.py", "pose", size, "global", hw,
                          {"AP": ap}, None, "210 epochs")


_ENTRIES = [
    _det("mask_rcnn_1x_hybrid_small", "small", {"box AP": 45.6, "mask AP": 41.6}, "1x"),
    _det("mask_rcnn_3x_ms_hybrid_small", "small", {"box AP": 48.2, "mask AP": 43.4}, "3x+MS"),
    _det("mask_rcnn_1x_hybrid_base", "base", {"box AP": 47.4, "mask AP": 43.1}, "1x"),
    _det("mask_rcnn_3x_ms_hybrid_base", "base", {"box AP": 50.3, "mask AP": 44.8}, "3x+MS"),
    _det("cascade_mask_rcnn_3x_ms_hybrid_small", "small", {"box AP": 52.1, "mask AP": 45.2}, "3x+MS"),
    _det("cascade_mask_rcnn_3x_ms_hybrid_base", "base", {"box AP": 53.8, "mask AP": 46.4}, "3x+MS"),
    _det("mask_rcnn_1x_xxs", "xxs", {"box AP": 42.8, "mask AP": 39.2}, "1x"),
    _det("mask_rcnn_1x_xs", "xs", {"box AP": 44.6, "mask AP": 40.9}, "1x"),
    # Semantic FPN (80k): h14 training configs; the global-trained ones are published at g / w32 / h32
    _seg("fpn_hybrid_small", "small", "fpn", None, {"mIoU": 46.3}),
    _seg("fpn_hybrid_base", "base", "fpn", None, {"mIoU": 47.0}),
    _seg("fpn_global_small", "small", "fpn", None, {"mIoU": 46.6}),
    _seg("fpn_global_small", "small", "fpn", "test_config_g", {"mIoU": 46.6}),
    _seg("fpn_global_small", "small", "fpn", "test_config_w32", {"mIoU": 45.6}),
    _seg("fpn_global_small", "small", "fpn", "test_config_h32", {"mIoU": 46.2}),
    _seg("fpn_global_base", "base", "fpn", None, {"mIoU": 48.0}),
    _seg("fpn_global_base", "base", "fpn", "test_config_g", {"mIoU": 48.0}),
    _seg("fpn_global_base", "base", "fpn", "test_config_w32", {"mIoU": 47.0}),
    _seg("fpn_global_base", "base", "fpn", "test_config_h32", {"mIoU": 47.7}),
    _seg("fpn_xxs", "xxs", "fpn", None, {"mIoU": 42.3}),
    _seg("fpn_xs", "xs", "fpn", None, {"mIoU": 44.4}),
    # UperNet (160k): single-scale mIoU (multi-scale in the name's "MS" entry where published)
    _seg("upernet_hybrid_small", "small", "upernet", None, {"mIoU": 46.9, "mIoU (MS)": 48.0}),
    _seg("upernet_hybrid_base", "base", "upernet", None, {"mIoU": 48.9, "mIoU (MS)": 50.0}),
    _seg("upernet_global_small", "small", "upernet", None, {"mIoU": 47.6}),
    _seg("upernet_global_small", "small", "upernet", "test_config_g", {"mIoU": 47.6}),
    _seg("upernet_global_small", "small", "upernet", "test_config_w32", {"mIoU": 46.6}),
    _seg("upernet_global_small", "small", "upernet", "test_config_h32", {"mIoU": 47.0}),
    _seg("upernet_global_base", "base", "upernet", None, {"mIoU": 50.0}),
    _seg("upernet_global_base", "base", "upernet", "test_config_g", {"mIoU": 50.0}),
    _seg("upernet_global_base", "base", "upernet", "test_config_w32", {"mIoU": 49.1}),
    _seg("upernet_global_base", "base", "upernet", "test_config_h32", {"mIoU": 49.5}),
    _pose("small", (256, 192), 74.0),
    _pose("small", (384, 288), 75.9),
    _pose("small", (448, 320), 76.2),
    _pose("base", (256, 192), 75.0),
    _pose("base", (384, 288), 76.7),
    _pose("base", (448, 320), 77.4),
]
OFFICIAL_DENSE_CONFIGS: Dict[str, OfficialConfig] = {e.name: e for e in _ENTRIES}


def official_config_entry(name: str) -> OfficialConfig:
    """The zoo entry for a config name (``mask_rcnn_1x_hybrid_small``, ``upernet_global_small/test_config_h32``) or
    an official path (``object_detection/exp/mask_rcnn_1x_hybrid_small/config.py``); ``ValueError`` with the close
    names otherwise."""
    if name in OFFICIAL_DENSE_CONFIGS:
        return OFFICIAL_DENSE_CONFIGS[name]
    for entry in OFFICIAL_DENSE_CONFIGS.values():
        if name == entry.path or name.endswith("/" + entry.path):
            return entry
    close = difflib.get_close_matches(name, list(OFFICIAL_DENSE_CONFIGS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `uniformer models --task dense` lists them"
    raise ValueError(f"unknown official dense config {name!r}{hint}")
