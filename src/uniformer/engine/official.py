"""Evaluation and prediction with the official dense models (built by
:func:`uniformer.tasks.official.from_official_config`) exactly as the official ``test.sh`` runs them: the official
test pipelines (:mod:`uniformer.data.mm_pipelines`, cv2 on uint8), whole-image mmseg inference, mmdet's
``simple_test`` and mmpose's flip test / decode / rescoring / OKS-NMS, scored with the same metrics (mIoU, pycocotools
box/mask/keypoint AP).

Data layouts are those of :mod:`uniformer.engine.dense` (ADE20K folders, COCO folders). Evaluation runs in one
process, one image at a time (batch 1, as the official test configs).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..data import BadSample, load_image
from ..data.ade20k import SegmentationDataset
from ..data.coco import load_coco, read_json
from ..data.coco_keypoints import COCO_KEYPOINT_NAMES
from ..data.mm_pipelines import box_to_center_scale, mmdet_test_input, mmseg_test_input, topdown_affine_input
from ..tasks import pose_eval
from ..tasks.detection import CocoDetection, coco_results, evaluate_coco, save_detection_overlay
from ..tasks.mmseg import mmseg_inference
from ..tasks.segmentation import SegmentationMetric, save_overlay
from .dense import (coco_split, data_root, detection_summary, overlay_paths, pose_summary, seg_split,
                    segmentation_summary)
from .distributed import resolve_device

__all__ = ["is_official", "evaluate_official", "predict_official", "OFFICIAL_SHOWN"]

OFFICIAL_SHOWN = {"segmentation": ("mIoU", "mAcc", "aAcc"), "detection": ("bbox_AP", "bbox_AP50", "segm_AP",
                                                                           "segm_AP50"),
                  "pose": ("AP", "AP50", "AP75", "AR")}


def is_official(model: nn.Module) -> bool:
    """Whether ``model`` was built from an official config (its task config carries the official model dict)."""
    return bool((getattr(model, "task_config", None) or {}).get("official_model"))


def _options(model: nn.Module) -> Dict[str, Any]:
    return dict(model.task_config.get("data_config") or {})


def _on_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device (the pipelines build CPU tensors)."""
    param = next(model.parameters(), None)
    return x if param is None else x.to(param.device)


def _rgb(image: Any) -> np.ndarray:
    img = image if isinstance(image, Image.Image) else load_image(image)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- per-image steps
@torch.no_grad()
def segment(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """The official class map (H, W) of one RGB uint8 image."""
    opts = _options(model)
    x, meta = mmseg_test_input(image, tuple(opts.get("img_scale", (2048, 512))), align=bool(opts.get("align")))
    return mmseg_inference(model.eval(), _on_model(model, x), meta["ori_shape"][:2])["pred_ori"][0].cpu()


@torch.no_grad()
def detect(model: nn.Module, image: np.ndarray) -> Dict[str, torch.Tensor]:
    """mmdet ``simple_test`` on one RGB uint8 image: boxes (original pixels), scores, labels (0-based), masks."""
    x, meta = mmdet_test_input(image, tuple(_options(model).get("img_scale", (1333, 800))))
    out = model.eval().simple_test(_on_model(model, x), [meta])[0]
    return {k: v.cpu() for k, v in out.items()}


@torch.no_grad()
def estimate_poses(model: nn.Module, image: np.ndarray, boxes: Sequence[Sequence[float]]
                   ) -> Tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Keypoints (N, J, 2) in image pixels and maxvals (N, J, 1) for person boxes (x, y, w, h), with the official
    TopDownAffine crops, flip test (pairs + shift, per the model's test_cfg) and mmpose decoding. Also returns the
    boxes' centers and scales (mmpose units)."""
    opts = _options(model)
    size = tuple(opts.get("image_size", (192, 256)))
    crops, centers, scales = [], [], []
    for box in boxes:
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"a person box is X Y W H with positive W and H, got {list(box)}")
        center, scale = box_to_center_scale(box, size)
        x, _ = topdown_affine_input(image, center, scale, size)
        crops.append(x)
        centers.append(center)
        scales.append(scale)
    heatmaps = pose_eval.official_heatmaps(model.eval(), _on_model(model, torch.cat(crops))).cpu()
    keypoints, maxvals = pose_eval.decode_heatmaps(heatmaps, np.stack(centers), np.stack(scales))
    return keypoints, maxvals, np.stack(centers), np.stack(scales)


# -------------------------------------------------------------------------------------------------- evaluation
def _seg_eval(model: nn.Module, root: Path, split: str, skip_bad: bool, limit: Optional[int]) -> Dict[str, float]:
    opts = _options(model)
    k = int(model.task_config["num_classes"])
    dataset = SegmentationDataset(root, seg_split(root, split), num_classes=k,
                                  reduce_zero_label=bool(opts.get("reduce_zero_label", True)),
                                  transform=lambda image, mask: (image, mask), skip_bad=skip_bad)
    metric = SegmentationMetric(k)
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        item = dataset[i]
        if isinstance(item, BadSample):  # --skip-bad: dropped, not replaced
            warnings.warn(f"skipping {item.path}: {item.reason}", stacklevel=2)
            continue
        image, mask = item
        metric.update(segment(model, _rgb(image)), torch.from_numpy(mask.astype(np.int64)))
    result = metric.compute()
    if math.isnan(result["mIoU"]):
        raise ValueError("the validation masks have no labelled pixel (everything is 255 = ignore)")
    return {key: float(result[key]) for key in OFFICIAL_SHOWN["segmentation"]}


def _det_eval(model: nn.Module, root: Path, split: str, skip_bad: bool, limit: Optional[int]) -> Dict[str, float]:
    images, ann = coco_split(root, split, "detection")
    dataset = CocoDetection(images, ann, skip_bad=skip_bad)
    k = int(model.task_config["num_classes"])
    if dataset.num_classes != k:
        raise ValueError(f"the model predicts {k} classes but {ann} has {dataset.num_classes} categories; mmdet maps "
                         "prediction i to the i-th category id in ascending order, so they must match")
    ids = dataset.ids if limit is None else dataset.ids[:limit]
    results: List[Dict[str, Any]] = []
    for image_id in ids:
        out = detect(model, _rgb(dataset.load_image(image_id)))
        tv = {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"] + 1,
              "masks": out["masks"].float()[:, None]}
        results += coco_results([tv], [image_id], dataset.label_to_cat_id)
    return evaluate_coco(dataset.coco, results, img_ids=ids)


def _person_samples(coco: Any, person_boxes: Optional[str], det_bbox_thr: float
                    ) -> Iterator[Tuple[int, List[float], float]]:
    """(image id, box xywh, box score) for every person to estimate: ground-truth boxes, or a detections JSON."""
    if person_boxes:
        for det in read_json(Path(person_boxes)):
            if det.get("category_id", 1) == 1 and float(det.get("score", 1.0)) > det_bbox_thr:
                yield int(det["image_id"]), [float(v) for v in det["bbox"]], float(det.get("score", 1.0))
        return
    for ann in coco.loadAnns(coco.getAnnIds(iscrowd=False)):
        if ann.get("num_keypoints", 0) > 0 and ann["bbox"][2] > 0 and ann["bbox"][3] > 0:
            yield int(ann["image_id"]), [float(v) for v in ann["bbox"]], 1.0


def _pose_eval(model: nn.Module, root: Path, split: str, person_boxes: Optional[str], skip_bad: bool,
               limit: Optional[int]) -> Dict[str, float]:
    opts = _options(model)
    images, ann = coco_split(root, split, "pose")
    coco = load_coco(ann, keypoints=len(COCO_KEYPOINT_NAMES), skip_bad=skip_bad)
    by_image: Dict[int, List[Tuple[List[float], float]]] = {}
    for image_id, box, score in _person_samples(coco, person_boxes, float(opts.get("det_bbox_thr", 0.0))):
        by_image.setdefault(image_id, []).append((box, score))
    image_ids = sorted(by_image) if limit is None else sorted(by_image)[:limit]
    person_cat = sorted(coco.getCatIds())[0]
    results: List[Dict[str, Any]] = []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        image = _rgb(images / info["file_name"])
        boxes = [b for b, _ in by_image[image_id]]
        keypoints, maxvals, centers, scales = estimate_poses(model, image, boxes)
        results += pose_eval.official_keypoint_results(
            keypoints, maxvals, [image_id] * len(boxes), [s for _, s in by_image[image_id]], centers, scales,
            category_id=person_cat, vis_thr=float(opts.get("vis_thr", 0.2)), oks_thr=float(opts.get("oks_thr", 0.9)))
    return pose_eval.evaluate_keypoints(coco, results, img_ids=sorted(coco.getImgIds()))


def evaluate_official(model: nn.Module, data: str, split: str = "val", person_boxes: Optional[str] = None,
                      skip_bad: bool = False, limit: Optional[int] = None, device: str = "auto") -> Dict[str, float]:
    """Score an official model on an ADE20K-layout (segmentation) or COCO-layout (detection, pose) folder as the
    official test scripts do; ``limit`` evaluates only the first N images (a quick check). Returns the metrics in
    percent (mIoU/mAcc/aAcc; bbox_/segm_ AP; keypoint AP/AR)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if person_boxes and model.task_config["task"] != "pose":
        raise ValueError("--person-boxes applies to pose models only")
    root = data_root(data)
    model.to(resolve_device(device))
    task = model.task_config["task"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if task == "segmentation":
            return _seg_eval(model, root, split, skip_bad, limit)
        if task == "detection":
            return _det_eval(model, root, split, skip_bad, limit)
        return _pose_eval(model, root, split, person_boxes, skip_bad, limit)


# -------------------------------------------------------------------------------------------------- prediction
def _names(model: nn.Module) -> List[str]:
    k = int(model.task_config["num_classes"])
    return list(model.task_config.get("label_names") or [str(i) for i in range(k)])


def _predict_one(model: nn.Module, path: Path, png: Path, score_threshold: float,
                 boxes: Optional[Sequence[Sequence[float]]]) -> Dict[str, Any]:
    img = load_image(path)
    image = _rgb(img)
    task = model.task_config["task"]
    names = _names(model)
    if task == "segmentation":
        mask = segment(model, image)
        save_overlay(img, mask, png)
        return segmentation_summary(mask, names)
    if task == "detection":
        out = detect(model, image)
        tv = {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"] + 1,
              "masks": out["masks"].float()}
        save_detection_overlay(img, tv, png, class_names=names, score_threshold=score_threshold)
        return detection_summary(out["boxes"], out["labels"], out["scores"], names, score_threshold)
    boxes = [list(b) for b in boxes] if boxes else [[0.0, 0.0, float(img.width), float(img.height)]]
    keypoints, maxvals, _, _ = estimate_poses(model, image, boxes)
    pose_eval.save_pose_overlay(img, torch.cat([keypoints, maxvals], dim=-1), png)
    return pose_summary(boxes, keypoints, maxvals)


def predict_official(model: nn.Module, images: Sequence[str], output_dir: Optional[str] = None,
                     score_threshold: float = 0.5, boxes: Optional[Sequence[Sequence[float]]] = None
                     ) -> Iterator[Tuple[Path, Dict[str, Any]]]:
    """One overlay PNG per image (``<stem>_<task>.png`` in ``output_dir``, default beside the image) with the
    official prediction: colour mask (segmentation), boxes + masks with class names (detection), skeletons for
    ``boxes`` (pose; default the whole image). Yields (PNG path, prediction fields with a one-line ``summary``)
    image by image (the fields of :func:`~uniformer.engine.dense.segmentation_summary` and its siblings)."""
    if boxes and model.task_config["task"] != "pose":
        raise ValueError("--box gives person boxes for pose models only")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    for path, png in overlay_paths(images, output_dir, model.task_config["task"]):
        yield png, _predict_one(model, path, png, score_threshold, boxes)
