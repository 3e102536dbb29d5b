"""Top-down pose at test time, as mmpose 0.16 does it (spec ``uniformer.md`` §5.3, ``dense-official.md`` §4): mmpose's
argmax + quarter-offset heatmap decoding; the flip test with the 1-pixel heatmap shift; COCO keypoint results rescored
and OKS-NMS'ed as mmpose's ``TopDownCocoDataset`` does, scored with OKS by pycocotools; skeleton overlays. Centres are
in pixels and scales in units of 200 px, as in :mod:`uniformer.data.coco_keypoints`; the model is
:mod:`uniformer.tasks.pose`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from pycocotools.coco import COCO
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_keypoints

from ..data.coco import PathLike, coco_eval_stats, stats_to_dict
from ..data.coco_keypoints import COCO_FLIP_PAIRS, COCO_SIGMAS, COCO_SKELETON, PIXEL_STD
from ..data.images import save_image_atomic, to_pil_rgb

__all__ = [
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

KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# the official mmpose test settings (TopDown test_cfg, TopDownCocoDataset data_cfg)
_DEFAULT_TEST_CFG = (("flip_test", True), ("shift_heatmap", True), ("post_process", "default"), ("use_udp", False),
                     ("modulate_kernel", 11))


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
    ``test_cfg`` (a :class:`~uniformer.tasks.pose.TopDownPoseModel` attribute; mmpose's defaults for other models)
    :func:`flip_test` with ``flip_pairs`` and the one-pixel shift (``shift_heatmap``), or the plain heatmaps when
    ``flip_test`` is off. The model's train/eval mode is left as it is."""
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
    ``keypoints``; :func:`uniformer.data.coco.load_coco` fills the first two if missing). Returns ``AP``, ``AP50``,
    ``AP75``, ``APm``, ``APl``, ``AR``, ``AR50``, ``AR75``, ``ARm``, ``ARl`` in percent (NaN where pycocotools
    reports −1); empty results give 0. Rescoring happens earlier, in :func:`keypoint_results`."""
    if use_nms:
        results = oks_nms_results(results, oks_thr)
    stats = coco_eval_stats(coco_gt, results, "keypoints", img_ids=img_ids, quiet_output=quiet)
    return stats_to_dict(stats, KEYPOINT_STAT_NAMES)


def save_pose_overlay(
    image: Union[torch.Tensor, np.ndarray, Image.Image],
    keypoints: Union[torch.Tensor, np.ndarray],
    output_path: PathLike,
    threshold: float = 0.3,
    skeleton: Sequence[Tuple[int, int]] = COCO_SKELETON,
) -> Path:
    """Draw each person's skeleton (``keypoints`` (N, J, 3) = x, y, score in image pixels; limbs whose two ends score
    above ``threshold``, joints as white dots) on ``image`` (PIL, (3, H, W) float [0, 1] / uint8 tensor, or (H, W, 3)
    array) with :func:`torchvision.utils.draw_keypoints` and write it atomically (format from the suffix, PNG by
    default); returns the path."""
    kps = torch.as_tensor(keypoints).detach().cpu().float()
    if kps.ndim == 2:
        kps = kps.unsqueeze(0)
    if kps.ndim != 3 or kps.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, J, 3) (x, y, score), got shape {tuple(kps.shape)}")
    img = to_pil_rgb(image)
    radius = max(2, round(min(img.size) / 100))
    limbs = [(int(a), int(b)) for a, b in skeleton if max(a, b) < kps.shape[1]]
    drawn = draw_keypoints(pil_to_tensor(img), kps[..., :2], connectivity=limbs, colors="white", radius=radius,
                           width=max(1, radius - 1), visibility=kps[..., 2] > threshold)
    return save_image_atomic(to_pil_image(drawn), output_path)
