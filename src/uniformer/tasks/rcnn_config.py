"""The mm config pieces of the mmdet 2.11 R-CNN port (:mod:`uniformer.tasks.mmdet_rcnn`): the test / train settings
as NamedTuples (:class:`ProposalConfig`, :class:`RCNNTestConfig`, :class:`StageTrainConfig`) and the helpers that
read them, and other sizes, from an mm model dict, raising ``ValueError`` naming the key or option at fault.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "ProposalConfig",
    "RCNNTestConfig",
    "StageTrainConfig",
    "require_key",
    "check_type",
    "square_size",
    "coder_stats",
    "proposal_config",
    "rcnn_test_config",
    "stage_train_config",
]


def require_key(cfg: Any, key: str, where: str) -> Any:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a dict, found {type(cfg).__name__}")
    if key not in cfg:
        raise ValueError(f"{where} lacks {key!r} (found keys {sorted(cfg)})")
    return cfg[key]


def check_type(cfg: Any, allowed: Sequence[str], where: str) -> str:
    kind = require_key(cfg, "type", where)
    if kind not in allowed:
        raise ValueError(f"{where}: type {kind!r} is not supported; expected one of {list(allowed)}")
    return kind


def square_size(value: Any, where: str) -> int:
    """An mmdet size (int or (h, w) with h == w) as an int."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or int(value[0]) != int(value[1]):
            raise ValueError(f"{where} must be a square size, found {value}")
        value = value[0]
    return int(value)


def _iou_threshold(cfg: Mapping[str, Any], where: str) -> float:
    nms_cfg = cfg.get("nms")
    if nms_cfg is None:
        if "nms_thr" in cfg:
            return float(cfg["nms_thr"])
        raise ValueError(f"{where} lacks 'nms' (e.g. dict(type='nms', iou_threshold=0.7))")
    if nms_cfg.get("type", "nms") != "nms":
        raise ValueError(f"{where}.nms: type {nms_cfg.get('type')!r} is not supported; expected 'nms'")
    return float(require_key(nms_cfg, "iou_threshold", f"{where}.nms"))


def coder_stats(coder: Optional[Mapping[str, Any]], where: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(target_means, target_stds) of a DeltaXYWHBBoxCoder dict."""
    coder = coder or {}
    if coder.get("type", "DeltaXYWHBBoxCoder") != "DeltaXYWHBBoxCoder":
        raise ValueError(f"{where}: bbox_coder type {coder.get('type')!r} is not supported; expected "
                         "'DeltaXYWHBBoxCoder'")
    means = tuple(float(v) for v in coder.get("target_means", (0.0, 0.0, 0.0, 0.0)))
    stds = tuple(float(v) for v in coder.get("target_stds", (1.0, 1.0, 1.0, 1.0)))
    if len(means) != 4 or len(stds) != 4 or min(stds) <= 0:
        raise ValueError(f"{where}: bbox_coder needs 4 target_means and 4 positive target_stds, found {means}, {stds}")
    return means, stds


class ProposalConfig(NamedTuple):
    """RPN post-processing settings (mmdet ``test_cfg.rpn`` / ``train_cfg.rpn_proposal``)."""

    nms_pre: int
    max_per_img: int
    iou_threshold: float
    min_bbox_size: float


class RCNNTestConfig(NamedTuple):
    """Final detection settings (mmdet ``test_cfg.rcnn``)."""

    score_thr: float
    iou_threshold: float
    max_per_img: int
    mask_thr_binary: float


class StageTrainConfig(NamedTuple):
    """One R-CNN stage's training settings (mmdet ``train_cfg.rcnn``: MaxIoUAssigner + RandomSampler)."""

    pos_iou_thr: float
    neg_iou_thr: float
    match_low_quality: bool
    num: int
    pos_fraction: float
    add_gt_as_proposals: bool


def proposal_config(cfg: Optional[Mapping[str, Any]], where: str, default_pre: int, default_post: int
                     ) -> ProposalConfig:
    cfg = dict(cfg or {})
    if cfg.get("nms_across_levels"):
        raise ValueError(f"{where}: nms_across_levels=True is not supported (mmdet's RPNHead does per-level NMS)")
    post = cfg.get("max_per_img", cfg.get("nms_post", cfg.get("max_num", default_post)))
    iou = _iou_threshold(cfg, where) if ("nms" in cfg or "nms_thr" in cfg) else 0.7
    return ProposalConfig(int(cfg.get("nms_pre", default_pre)), int(post), iou, float(cfg.get("min_bbox_size", 0)))


def rcnn_test_config(cfg: Optional[Mapping[str, Any]], where: str) -> RCNNTestConfig:
    cfg = dict(cfg or {})
    iou = _iou_threshold(cfg, where) if "nms" in cfg else 0.5
    return RCNNTestConfig(float(cfg.get("score_thr", 0.05)), iou, int(cfg.get("max_per_img", 100)),
                          float(cfg.get("mask_thr_binary", 0.5)))


def stage_train_config(cfg: Optional[Mapping[str, Any]], where: str, default_iou: float = 0.5) -> StageTrainConfig:
    cfg = dict(cfg or {})
    assigner = dict(cfg.get("assigner") or {})
    sampler = dict(cfg.get("sampler") or {})
    if assigner.get("type", "MaxIoUAssigner") != "MaxIoUAssigner":
        raise ValueError(f"{where}.assigner: type {assigner.get('type')!r} is not supported; expected MaxIoUAssigner")
    if sampler.get("type", "RandomSampler") != "RandomSampler":
        raise ValueError(f"{where}.sampler: type {sampler.get('type')!r} is not supported; expected RandomSampler")
    pos = float(assigner.get("pos_iou_thr", default_iou))
    neg = assigner.get("neg_iou_thr", pos)
    if isinstance(neg, (list, tuple)):
        raise ValueError(f"{where}.assigner: a (low, high) neg_iou_thr range is not supported, found {neg}")
    return StageTrainConfig(pos, float(neg), bool(assigner.get("match_low_quality", True)),
                            int(sampler.get("num", 512)), float(sampler.get("pos_fraction", 0.25)),
                            bool(sampler.get("add_gt_as_proposals", True)))
