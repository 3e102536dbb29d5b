"""Shared COCO helpers for the detection and pose tasks: loading and validating a COCO annotation file into a
``pycocotools`` :class:`~pycocotools.coco.COCO` object (bad annotations raise ``ValueError`` naming the file and the
annotation id, or are skipped with a warning when ``skip_bad=True``), encoding binary masks as JSON-ready RLE, and
running :class:`~pycocotools.cocoeval.COCOeval` quietly (spec ``ecosystem.md`` §5). Nothing here re-implements what
pycocotools provides; this module only checks inputs before they reach it, because pycocotools fails on bad input with
bare ``KeyError``/``AssertionError`` or, worse, silently.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = [
    "load_coco",
    "mask_to_rle",
    "quiet",
    "coco_eval_stats",
    "check_results",
    "check_gt_for_eval",
    "xywh_is_valid",
    "read_json",
    "stats_to_dict",
    "label_maps",
]

PathLike = Union[str, Path]
IOU_TYPES = ("bbox", "segm", "keypoints")


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Context manager that swallows what pycocotools prints on stdout ("loading annotations...", the summary
    table) when ``enabled``; the numbers are returned by the callers instead."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def xywh_is_valid(bbox: Any) -> Optional[str]:
    """``None`` when ``bbox`` is a list of 4 finite numbers ``[x, y, w, h]`` with ``w > 0`` and ``h > 0``, else a short
    description of what is wrong (used in the error messages)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox must be [x, y, w, h], found {bbox!r}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return f"bbox must hold 4 finite numbers, found {bbox!r}"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox must have positive width and height, found w={bbox[2]}, h={bbox[3]}"
    return None


def read_json(path: Path) -> Any:
    """Parse ``path`` as JSON, or raise ``FileNotFoundError``/``ValueError`` naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _check_entries(path: Path, entries: Any, what: str, keys: Sequence[str]) -> Dict[int, dict]:
    """Index a list of ``images``/``categories`` entries by id; raise ``ValueError`` naming the file and entry on a
    missing key, a non-integer id or a duplicate id."""
    if not isinstance(entries, list):
        raise ValueError(f"{path}: '{what}' must be a list, found {type(entries).__name__}")
    index: Dict[int, dict] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {what}[{i}] must be an object, found {type(entry).__name__}")
        missing = [k for k in keys if k not in entry]
        if missing:
            raise ValueError(f"{path}: {what}[{i}] (id {entry.get('id', '?')}) lacks the keys {missing}; "
                             f"expected {list(keys)}")
        if not isinstance(entry["id"], int) or isinstance(entry["id"], bool):
            raise ValueError(f"{path}: {what}[{i}] id must be an integer, found {entry['id']!r}")
        if entry["id"] in index:
            raise ValueError(f"{path}: duplicate {what} id {entry['id']}")
        for k in ("height", "width"):
            if k in keys and not (isinstance(entry[k], int) and not isinstance(entry[k], bool) and entry[k] > 0):
                raise ValueError(f"{path}: {what}[{i}] (id {entry['id']}) {k} must be a positive integer, "
                                 f"found {entry[k]!r}")
        index[entry["id"]] = entry
    return index


def _annotation_problem(ann: dict, images: Mapping[int, dict], categories: Mapping[int, dict], masks: bool,
                        keypoints: Optional[int]) -> Optional[str]:
    """What is wrong with one annotation (``None`` if nothing): missing keys, unknown image/category id, invalid
    bbox, missing segmentation (``masks``) or malformed keypoints (``keypoints`` = expected joint count)."""
    required = ["id", "image_id", "category_id", "bbox"]
    if masks:
        required.append("segmentation")
    if keypoints is not None:
        required.append("keypoints")
    missing = [k for k in required if k not in ann]
    if missing:
        return f"lacks the keys {missing} (expected {required}, found {sorted(ann)})"
    if ann["image_id"] not in images:
        return f"refers to unknown image id {ann['image_id']!r}"
    if ann["category_id"] not in categories:
        return f"refers to unknown category id {ann['category_id']!r} (known: {sorted(categories)})"
    problem = xywh_is_valid(ann["bbox"])
    if problem:
        return problem
    img = images[ann["image_id"]]
    x, y, w, h = ann["bbox"]
    if x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0:
        return f"bbox {ann['bbox']} lies outside its {img['width']}x{img['height']} image {img['id']}"
    if ann.get("iscrowd", 0) not in (0, 1):
        return f"iscrowd must be 0 or 1, found {ann['iscrowd']!r}"
    if masks:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
                return "segmentation polygons must be a non-empty list of [x1, y1, x2, y2, ...] with >= 3 points"
        elif isinstance(seg, dict):
            if "counts" not in seg or "size" not in seg:
                return f"RLE segmentation lacks 'counts' or 'size' (found keys {sorted(seg)})"
            if list(seg["size"]) != [img["height"], img["width"]]:
                return (f"RLE size {list(seg['size'])} does not match the image's [height, width] "
                        f"[{img['height']}, {img['width']}]")
        else:
            return f"segmentation must be polygons (list) or RLE (dict), found {type(seg).__name__}"
    if keypoints is not None:
        kps = ann["keypoints"]
        if not isinstance(kps, list) or len(kps) != 3 * keypoints:
            found = len(kps) if isinstance(kps, list) else type(kps).__name__
            return f"keypoints must be a list of {3 * keypoints} numbers (x, y, v per joint), found {found}"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in kps):
            return "keypoints must hold finite numbers"
        if any(v not in (0, 1, 2) for v in kps[2::3]):
            return f"keypoint visibilities must be 0, 1 or 2, found {sorted(set(kps[2::3]))}"
    return None


def load_coco(annotation_json: PathLike, *, masks: bool = False, keypoints: Optional[int] = None,
              skip_bad: bool = False) -> COCO:
    """Read a COCO annotation file, validate it and return a pycocotools ``COCO`` built from the checked data.

    Top level: ``images`` (id, file_name, height, width) and ``categories`` (id, name) are required, ``annotations``
    may be absent (test-set files). Each annotation needs id, image_id, category_id and a valid ``[x, y, w, h]`` bbox
    (w, h > 0, overlapping its image); ``segmentation`` (polygons or RLE) too when ``masks``, and 3 × ``keypoints``
    numbers when ``keypoints`` (the joint count) is given. Problems raise ``ValueError`` naming the file and the
    annotation id, expected and found; with ``skip_bad=True`` the annotation is dropped with a warning instead.
    Missing optional fields are filled in the returned object so pycocotools' evaluation works: ``iscrowd`` = 0,
    ``area`` = bbox w × h (COCO's own files store the mask area), ``num_keypoints`` = count of visibility > 0.
    """
    path = Path(annotation_json)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO file must hold a JSON object, found {type(data).__name__}")
    missing = [k for k in ("images", "categories") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing top-level keys {missing}; expected 'images', 'categories' "
                         f"(and 'annotations'), found {sorted(data)}")
    images = _check_entries(path, data["images"], "images", ("id", "file_name", "height", "width"))
    categories = _check_entries(path, data["categories"], "categories", ("id", "name"))
    anns_in = data.get("annotations", [])
    if not isinstance(anns_in, list):
        raise ValueError(f"{path}: 'annotations' must be a list, found {type(anns_in).__name__}")
    anns: List[dict] = []
    seen: set = set()
    for i, ann in enumerate(anns_in):
        if not isinstance(ann, dict):
            problem, name = f"must be an object, found {type(ann).__name__}", f"annotations[{i}]"
        else:
            name = f"annotation id {ann['id']}" if "id" in ann else f"annotations[{i}] (no id)"
            problem = _annotation_problem(ann, images, categories, masks, keypoints)
            if problem is None and ann["id"] in seen:
                problem = "duplicates an earlier annotation id"
        if problem is not None:
            if not skip_bad:
                raise ValueError(f"{path}: {name} {problem}")
            warnings.warn(f"{path}: skipping {name}: {problem}", stacklevel=3)
            continue
        seen.add(ann["id"])
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        if "keypoints" in ann and "num_keypoints" not in ann:
            ann["num_keypoints"] = int(sum(1 for v in ann["keypoints"][2::3] if v > 0))
        anns.append(ann)
    if len(anns) < len(anns_in):
        warnings.warn(f"{path}: skipped {len(anns_in) - len(anns)} bad annotation(s) of {len(anns_in)}", stacklevel=2)
    dataset = dict(data, images=list(images.values()), categories=list(categories.values()), annotations=anns)
    coco = COCO()
    coco.dataset = dataset
    with quiet():
        coco.createIndex()
    return coco


def mask_to_rle(mask: Union[np.ndarray, torch.Tensor]) -> Dict[str, Any]:
    """Encode a binary (H, W) mask with ``pycocotools.mask.encode`` (Fortran-ordered uint8) and return the RLE with
    ``counts`` decoded to ``str`` so that it is JSON-serialisable."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects a (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def check_gt_for_eval(coco_gt: COCO, iou_type: str) -> None:
    """Raise ``ValueError`` naming the annotation id when a ground-truth annotation lacks what ``COCOeval`` reads for
    ``iou_type`` (``area`` and ``iscrowd`` always; ``bbox``, ``segmentation`` or ``keypoints``/``num_keypoints``)."""
    need = {"bbox": ("area", "iscrowd", "bbox"), "segm": ("area", "iscrowd", "segmentation"),
            "keypoints": ("area", "iscrowd", "keypoints", "num_keypoints")}[iou_type]
    for ann in coco_gt.dataset.get("annotations", []):
        missing = [k for k in need if k not in ann]
        if missing:
            raise ValueError(f"ground-truth annotation id {ann.get('id', '?')} lacks {missing}, which {iou_type} "
                             f"evaluation needs (expected {list(need)})")


def check_results(coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str) -> None:
    """Raise ``ValueError`` naming the result index when a result record does not fit ``coco_gt``: missing keys for
    ``iou_type``, an image id not in the ground truth, or a category id that is not one of its (original) ids."""
    need = {"bbox": ("image_id", "category_id", "score", "bbox"),
            "segm": ("image_id", "category_id", "score", "segmentation"),
            "keypoints": ("image_id", "category_id", "score", "keypoints")}[iou_type]
    img_ids, cat_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        missing = [k for k in need if k not in r]
        if missing:
            raise ValueError(f"result {i} lacks {missing} needed for {iou_type} evaluation (found {sorted(r)})")
        if r["image_id"] not in img_ids:
            raise ValueError(f"result {i} refers to image id {r['image_id']!r}, which is not in the ground truth")
        if r["category_id"] not in cat_ids:
            raise ValueError(f"result {i} has category id {r['category_id']!r}, not one of the ground truth's "
                             f"original ids {sorted(cat_ids)} (map contiguous labels back with label_to_cat_id)")


def coco_eval_stats(coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str,
                    img_ids: Optional[Iterable[int]] = None, quiet_output: bool = True) -> np.ndarray:
    """Run ``COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)`` (``evaluate``, ``accumulate``, ``summarize``) on
    ``img_ids`` (default: every ground-truth image) and return its ``stats`` array (−1 where pycocotools finds a
    metric undefined). Empty ``results`` give all-zero stats without calling pycocotools (``loadRes`` fails on an
    empty list). The records are copied: ``loadRes`` would otherwise add keys to the caller's dicts."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    check_gt_for_eval(coco_gt, iou_type)
    results = [dict(r) for r in results]
    n_stats = 10 if iou_type == "keypoints" else 12
    if not results:
        return np.zeros(n_stats)
    check_results(coco_gt, results, iou_type)
    if iou_type == "segm":  # loadRes would take the bbox branch and give every result a box-polygon otherwise
        for r in results:
            r.pop("bbox", None)
    with quiet(quiet_output):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def stats_to_dict(stats: np.ndarray, names: Sequence[str], prefix: str = "") -> Dict[str, float]:
    """``{prefix + name: stats[i] * 100}``, with pycocotools' −1 ("undefined") turned into NaN."""
    return {f"{prefix}{n}": (float(s) * 100.0 if s >= 0 else float("nan")) for n, s in zip(names, stats)}


def label_maps(coco: COCO) -> Tuple[List[int], Dict[int, int], Dict[int, int], List[str]]:
    """Sorted original category ids, ``cat_id → label`` (contiguous 1..K, 0 is background), ``label → cat_id`` and
    the K class names in label order."""
    cat_ids = sorted(coco.getCatIds())
    cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
    label_to_cat = {i + 1: c for i, c in enumerate(cat_ids)}
    names = [coco.cats[c]["name"] for c in cat_ids]
    return cat_ids, cat_to_label, label_to_cat, names
