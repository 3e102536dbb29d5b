"""The dense tasks of the training loop: semantic segmentation, detection / instance segmentation and top-down pose.

Each task is a :class:`DenseTask` (a :class:`~uniformer.engine.task.Task`): where its data lives on disk (ADE20K
layout, COCO layout), the datasets and their transforms, the model, the training loss of one batch, the validation
metrics (mIoU through the dataset-level metric, box/mask AP and OKS AP through pycocotools) and the prediction
overlay. :func:`~uniformer.engine.fit.fit` trains them with the same optimiser, schedule, checkpoints, resume,
``torchrun`` support and progress output as classification; :mod:`~uniformer.engine.inference` re-scores saved runs
and writes overlays.

Data layouts (``--data ROOT``):

- segmentation: ``ROOT/images/{training,validation}/*.jpg`` + ``ROOT/annotations/{training,validation}/*.png``
  (``train``/``val`` also accepted), class names in ``ROOT/classes.txt`` (else pass ``--num-classes``);
- detection: ``ROOT/annotations/instances_{train,val}*.json`` with the images in the folder named like the JSON's
  suffix (COCO: ``instances_train2017.json`` → ``ROOT/train2017/``), else ``ROOT/{train,val}/``;
- pose: the same with ``person_keypoints_{train,val}*.json``.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..data import load_image
from ..data.ade20k import SegEvalTransform, SegmentationDataset, SegTrainTransform
from ..data.coco_keypoints import COCO_KEYPOINT_NAMES, CocoKeypoints, topdown_crop
from ..data.mm_pipelines import box_to_center_scale
from ..models.weights import load_checkpoint, load_task_weights, read_checkpoint, read_model_config
from ..tasks.build import build_task_model, task_backbone
from ..tasks.detection import CocoDetection, RandomHorizontalFlip, coco_results, evaluate_coco, save_detection_overlay
from ..tasks.detection import collate_fn as detection_collate
from ..tasks.pose import heatmap_loss
from ..tasks.pose_eval import decode_heatmaps, evaluate_keypoints, flip_test, keypoint_results, save_pose_overlay
from ..tasks.segmentation import SegmentationMetric, predict_mask, save_overlay
from .config import TrainConfig
from .distributed import DistContext, all_reduce_sum, gather, init_distributed
from .loaders import eval_loader
from .metrics import format_metrics
from .rundir import resolve_checkpoint_path
from .task import Setup, Step, Task

__all__ = ["DenseTask", "SegmentationTask", "DetectionTask", "PoseTask", "TASK_CLASSES", "task_data_config",
           "coco_split", "seg_split", "data_root", "evaluate_task_checkpoint", "predict_task_images", "overlay_paths",
           "segmentation_summary", "detection_summary", "pose_summary"]


# ------------------------------------------------------------------------------------------------ data layouts
def data_root(data: str) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    return root


def seg_split(root: Path, split: str) -> str:
    """The ADE20K split folder name for ``train``/``val`` (``training``/``validation``, or the plain names)."""
    names = {"train": ("training", "train"), "val": ("validation", "val")}.get(split, (split,))
    return next((n for n in names if (root / "images" / n).is_dir()), names[0])


def coco_split(root: Path, split: str, task: str) -> Tuple[Path, Path]:
    """(images folder, annotation JSON) of a COCO-layout split (see the module docstring)."""
    prefix = "person_keypoints" if task == "pose" else "instances"
    ann_dir = root / "annotations"
    found = sorted(ann_dir.glob(f"{prefix}_{split}*.json")) if ann_dir.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no annotation file {ann_dir / f'{prefix}_{split}*.json'} (expected the COCO layout: "
                                f"annotations/{prefix}_{split}2017.json with the images in {split}2017/)")
    if len(found) > 1:
        raise ValueError(f"several {split} annotation files in {ann_dir}: {', '.join(p.name for p in found)}; keep one")
    ann = found[0]
    name = ann.stem[len(prefix) + 1:]
    for images in (root / name, root / "images" / name, root / split, root / "images" / split):
        if images.is_dir():
            return images, ann
    raise FileNotFoundError(f"no image folder for {ann.name}: expected {root / name}/ (or {root / split}/)")


# ------------------------------------------------------------------------------------------ prediction summaries
def segmentation_summary(mask: torch.Tensor, names: Sequence[str]) -> Dict[str, Any]:
    """What ``predict`` reports for a class map (H, W): ``classes``, the 5 largest classes with their pixel share in
    percent, and ``summary``, the same as one line."""
    counts = torch.bincount(mask.flatten(), minlength=len(names))
    top = [dict(label=names[int(i)], index=int(i), share=round(100.0 * float(counts[i]) / mask.numel(), 2))
           for i in counts.argsort(descending=True)[:5] if counts[i] > 0]
    return dict(summary=", ".join(f"{t['label']} {t['share']:.1f}%" for t in top), count=len(top), classes=top)


def detection_summary(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, names: Optional[Sequence[str]],
                      score_threshold: float) -> Dict[str, Any]:
    """What ``predict`` reports for one image's detections (``labels`` 0-based into ``names``): ``detections``
    scoring at least ``score_threshold`` (label, index, score, box x1 y1 x2 y2 in pixels), their ``count`` and a
    one-line ``summary``."""
    keep = scores >= score_threshold
    found = [dict(label=names[int(l)] if names else str(int(l)), index=int(l), score=round(float(s), 4),
                  box=[round(float(v), 2) for v in b])
             for b, l, s in zip(boxes[keep], labels[keep], scores[keep])]
    text = ", ".join(f"{d['label']} {d['score']:.2f}" for d in found[:10])
    return dict(summary=f"{len(found)} detection(s) with score >= {score_threshold}" + (f": {text}" if found else ""),
                count=len(found), detections=found)


def pose_summary(boxes: Sequence[Sequence[float]], keypoints: torch.Tensor, maxvals: torch.Tensor) -> Dict[str, Any]:
    """What ``predict`` reports for the people of one image: per person the box (x, y, w, h) and the keypoints
    (x, y, score) in image pixels, their ``count`` and a one-line ``summary``."""
    people = [dict(box=[round(float(v), 2) for v in box],
                   keypoints=[[round(float(x), 2), round(float(y), 2), round(float(v), 4)]
                              for (x, y), (v,) in zip(kp.tolist(), mv.tolist())])
              for box, kp, mv in zip(boxes, keypoints, maxvals)]
    return dict(summary=f"{len(people)} person(s), mean keypoint score {float(maxvals.mean()):.2f}",
                count=len(people), people=people)


# -------------------------------------------------------------------------------------------------------- tasks
class DenseTask(Task):
    """A dense task. ``data_config`` holds the data options (resolved by :func:`task_data_config` at training time
    and saved with every checkpoint, so evaluation repeats them); ``config`` the training options (training only).
    ``skipped`` is the number of bad samples (``skip_bad``) the last :meth:`evaluate` dropped, over all ranks."""

    shown: Tuple[str, ...] = ()  # metrics printed in the epoch summary

    def __init__(self, data_config: Mapping[str, Any], data: Optional[str] = None, skip_bad: bool = False,
                 config: Optional[TrainConfig] = None) -> None:
        self.data_config = dict(data_config)
        self._data, self.skip_bad = data, skip_bad
        self.skipped = 0
        if config is not None:
            self.config = config
        self.val_set: Optional[Dataset] = None

    @classmethod
    def for_training(cls, config: TrainConfig, resume_state: Optional[Mapping[str, Any]] = None) -> "DenseTask":
        """The task of a training run: the data options of ``config``, or those saved with the run it resumes."""
        data_config = (dict(resume_state["config"].get("data_config") or {}) if resume_state else {}) or \
            task_data_config(config)
        return cls(data_config, config.data, skip_bad=config.skip_bad, config=config)

    @property
    def root(self) -> Path:
        """The dataset folder (``--data``)."""
        if self._data is None:
            raise ValueError("pass --data: this task model was not given a dataset folder")
        return data_root(self._data)

    def dataset(self, split: str, train: bool) -> Dataset:
        raise NotImplementedError

    def classes(self, dataset: Dataset) -> List[str]:
        """Output names: classes (segmentation, detection) or joints (pose)."""
        return list(dataset.classes)

    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: DistContext, batch_size: int,
                 workers: int) -> Dict[str, float]:
        raise NotImplementedError

    def describe(self) -> str:
        return ""

    def predict(self, model: nn.Module, image: Path, output: Path, **options: Any) -> Dict[str, Any]:
        """Write the overlay PNG ``output`` for ``image``; returns the prediction's fields with a one-line
        ``summary`` (see :func:`segmentation_summary`, :func:`detection_summary`, :func:`pose_summary`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- training
    def build(self, ctx: DistContext) -> Setup:
        config = self.config
        train_set, self.val_set = self.dataset("train", train=True), self.dataset("val", train=False)
        classes = self.classes(train_set)
        if self.classes(self.val_set) != classes:
            raise ValueError(f"train and val classes differ: {classes} vs {self.classes(self.val_set)}")
        head_args = dict(config.head_args, **({"head": config.head} if self.name == "segmentation" else {}))
        if self.name == "detection" and (config.detector != "mask_rcnn" or "detector" not in head_args):
            head_args["detector"] = config.detector
        model = build_task_model(self.name, config.model, len(classes), model_args=config.model_args,
                                 head_args=head_args, data_config=self.data_config, label_names=classes,
                                 drop_path_rate=config.drop_path)
        return Setup(model, train_set, self.val_set, classes)

    def init_weights(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        """Start from weights: a saved task model of the same kind (every tensor whose name and shape match), else
        an official dense or ImageNet checkpoint for the backbone (``load_checkpoint``: ``backbone.`` prefixes,
        dropped heads, missing dense norms)."""
        path = str(resolve_checkpoint_path(path))  # a run directory means its best checkpoint
        saved = read_model_config(path) if Path(path).is_dir() else None
        if saved is not None and saved.get("task") == model.task_config["task"]:
            state = read_checkpoint(path)
            own = model.state_dict()
            matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(matching, strict=False)
            log(f"initialised {len(matching)}/{len(own)} tensors from {path} (the rest differ in name or shape)")
            return
        load_checkpoint(task_backbone(model), path)
        log(f"initialised the backbone from {path}; the neck and heads start from scratch")

    def load_weights(self, model: nn.Module, path: Any) -> None:
        load_task_weights(model, path)  # names as saved

    def prepare(self, model: nn.Module) -> None:
        if self.config.grad_checkpointing:
            task_backbone(model).set_grad_checkpointing(True)

    def headline(self, setup: Setup, params: int) -> str:
        c = self.config
        return (f"training {self.name} with {c.model} ({params / 1e6:.2f} M params) on {c.data}: "
                f"{len(setup.train_set)} train / {len(setup.val_set)} val samples, {len(setup.classes)} "
                f"{'joints' if self.name == 'pose' else 'classes'}, {self.describe()}")

    def validate(self, model: nn.Module, ctx: DistContext) -> Tuple[Dict[str, float], int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pycocotools / empty-prediction chatter
            metrics = self.evaluate(model, self.val_set, ctx, self.config.batch_size, self.config.workers)
        return metrics, self.skipped

    def epoch_text(self, row: Dict[str, float], val: Dict[str, float], ema_val: Optional[Dict[str, float]]) -> str:
        return f"train loss {row['train_loss']:.4f}  val {format_metrics(val, self.shown)}"

    def saved_options(self) -> Dict[str, Any]:
        return {"data_config": self.data_config}


class SegmentationTask(DenseTask):
    name, metric, shown = "segmentation", "mIoU", ("mIoU", "mAcc", "aAcc")

    def dataset(self, split: str, train: bool) -> Dataset:
        c = self.data_config
        norm = dict(mean=c["mean"], std=c["std"])
        transform = (SegTrainTransform(crop_size=c["crop_size"], scale=c["scale"], ratio_range=c["ratio_range"],
                                       cat_max_ratio=c["cat_max_ratio"], hflip=c["hflip"],
                                       photometric=c["photometric"], **norm)
                     if train else SegEvalTransform(scale=c["scale"], **norm))
        return SegmentationDataset(self.root, seg_split(self.root, split), num_classes=c.get("num_classes"),
                                   reduce_zero_label=c["reduce_zero_label"], transform=transform,
                                   skip_bad=self.skip_bad)

    def loss(self, train_model: nn.Module, model: nn.Module, batch: Any) -> Step:
        images, masks = batch
        return Step(model.loss(train_model(images), masks), len(images))

    def _predict(self, model: nn.Module, image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        c = self.data_config
        return predict_mask(model, image, size, mode=c["inference"], num_classes=model.num_classes,
                            crop=c["crop_size"], stride=c["slide_stride"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: DistContext, batch_size: int,
                 workers: int) -> Dict[str, float]:
        metric = SegmentationMetric(model.num_classes)
        model.eval()
        loader = eval_loader(dataset, 1, workers, ctx)  # images keep their own sizes
        for image, mask in loader:
            pred = self._predict(model, image.to(ctx.device), mask.shape[-2:])
            metric.update(pred.cpu(), mask[0])
        self.skipped = int(all_reduce_sum([loader.skipped], ctx)[0])
        if ctx.distributed:
            for name in ("area_intersect", "area_union", "area_pred", "area_label"):
                total = getattr(metric, name).to(ctx.device if ctx.device.type == "cuda" else "cpu")
                dist.all_reduce(total)
                setattr(metric, name, total.cpu())
        result = metric.compute()
        if math.isnan(result["mIoU"]):
            raise ValueError("the validation masks have no labelled pixel (everything is 255 = ignore)")
        return {k: float(result[k]) for k in self.shown}

    def describe(self) -> str:
        h, w = self.data_config["crop_size"]
        return f"crops {h}x{w}, {self.data_config['inference']} inference"

    @torch.no_grad()
    def predict(self, model: nn.Module, image: Path, output: Path, **options: Any) -> Dict[str, Any]:
        c = self.data_config
        img = load_image(image)
        x, _ = SegEvalTransform(scale=c["scale"], mean=c["mean"], std=c["std"])(
            img, np.zeros((img.height, img.width), dtype=np.uint8))
        mask = self._predict(model.eval(), x, (img.height, img.width))
        save_overlay(img, mask, output)
        names = model.task_config.get("label_names") or [str(i) for i in range(model.num_classes)]
        return segmentation_summary(mask, names)


class DetectionTask(DenseTask):
    name, metric = "detection", "bbox_AP"
    find_unused_parameters = True
    shown = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")

    collate_fn = staticmethod(detection_collate)  # images differ in size: lists, as Mask R-CNN takes them

    def dataset(self, split: str, train: bool) -> Dataset:
        images, ann = coco_split(self.root, split, self.name)
        flip = RandomHorizontalFlip(self.data_config["hflip"]) if train and self.data_config["hflip"] > 0 else None
        return CocoDetection(images, ann, transforms=flip, skip_bad=self.skip_bad)

    def loss(self, train_model: nn.Module, model: nn.Module, batch: Any) -> Step:
        images, targets = batch
        losses = train_model(images, targets)
        return Step(sum(losses.values()), len(images))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: DistContext, batch_size: int,
                 workers: int) -> Dict[str, float]:
        model.eval()
        results: List[Dict[str, Any]] = []
        loader = eval_loader(dataset, batch_size, workers, ctx, self.collate_fn)
        for images, targets in loader:
            outputs = model([im.to(ctx.device) for im in images])
            results += coco_results(outputs, [int(t["image_id"]) for t in targets], dataset.label_to_cat_id)
        self.skipped = int(all_reduce_sum([loader.skipped], ctx)[0])
        return evaluate_coco(dataset.coco, gather(results, ctx), img_ids=dataset.ids)

    def describe(self) -> str:
        return f"short side {self.data_config['min_size']} (long side <= {self.data_config['max_size']})"

    @torch.no_grad()
    def predict(self, model: nn.Module, image: Path, output: Path, score_threshold: float = 0.5,
                **options: Any) -> Dict[str, Any]:
        img = load_image(image)
        pred = model.eval()([pil_to_tensor(img).float() / 255.0])[0]
        names = model.task_config.get("label_names")
        save_detection_overlay(img, pred, output, class_names=names, score_threshold=score_threshold)
        return detection_summary(pred["boxes"], pred["labels"] - 1, pred["scores"], names, score_threshold)


class PoseTask(DenseTask):
    name, metric, shown = "pose", "AP", ("AP", "AP50", "AP75", "AR")

    def dataset(self, split: str, train: bool) -> Dataset:
        c = self.data_config
        images, ann = coco_split(self.root, split, self.name)
        boxes = None if train else c.get("person_boxes")
        return CocoKeypoints(images, ann, input_size=tuple(c["input_size"]), sigma=c["sigma"], train=train,
                             use_gt_boxes=boxes is None, person_boxes_json=boxes, skip_bad=self.skip_bad,
                             flip_prob=c["hflip"], scale_factor=c["scale_factor"],
                             rotation_factor=c["rotation_factor"], mean=c["mean"], std=c["std"])

    def classes(self, dataset: Dataset) -> List[str]:
        cat = dataset.coco.cats[dataset.person_cat_ids[0]]
        names = list(cat.get("keypoints") or COCO_KEYPOINT_NAMES)
        if len(names) != len(COCO_KEYPOINT_NAMES):
            raise ValueError(f"{dataset.annotation_json}: category {cat.get('name', '?')!r} lists {len(names)} "
                             f"keypoints; the COCO keypoint format (flip pairs, skeleton) has "
                             f"{len(COCO_KEYPOINT_NAMES)}")
        return names

    def loss(self, train_model: nn.Module, model: nn.Module, batch: Any) -> Step:
        images, heatmaps, weights, _meta = batch
        return Step(heatmap_loss(train_model(images), heatmaps, weights), len(images))

    def _heatmaps(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return flip_test(model, images) if self.data_config["flip_test"] else model(images)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: DistContext, batch_size: int,
                 workers: int) -> Dict[str, float]:
        model.eval()
        results: List[Dict[str, Any]] = []
        loader = eval_loader(dataset, batch_size, workers, ctx)
        for images, _hm, _w, meta in loader:
            heatmaps = self._heatmaps(model, images.to(ctx.device))
            keypoints, maxvals = decode_heatmaps(heatmaps, meta["center"], meta["scale"])
            results += keypoint_results(keypoints, maxvals, meta["image_id"].tolist(), meta["score"].tolist(),
                                        category_id=dataset.person_cat_ids[0], scales=meta["scale"])
        self.skipped = int(all_reduce_sum([loader.skipped], ctx)[0])
        return evaluate_keypoints(dataset.coco, gather(results, ctx), img_ids=sorted(dataset.coco.getImgIds()))

    def describe(self) -> str:
        h, w = self.data_config["input_size"]
        return f"person crops {h}x{w}, flip test {'on' if self.data_config['flip_test'] else 'off'}"

    @torch.no_grad()
    def predict(self, model: nn.Module, image: Path, output: Path, boxes: Optional[Sequence[Sequence[float]]] = None,
                **options: Any) -> Dict[str, Any]:
        c = self.data_config
        img = load_image(image)
        boxes = [list(b) for b in boxes] if boxes else [[0.0, 0.0, float(img.width), float(img.height)]]
        size = tuple(c["input_size"])
        centers, scales, crops = [], [], []
        for box in boxes:
            if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"a person box is X Y W H with positive W and H, got {box}")
            center, scale = box_to_center_scale(box, (size[1], size[0]))  # scale in units of 200 px (mmpose)
            centers.append(center)
            scales.append(scale)
            crops.append(topdown_crop(img, center, scale, size, mean=c["mean"], std=c["std"]))
        heatmaps = self._heatmaps(model.eval(), torch.stack(crops))
        keypoints, maxvals = decode_heatmaps(heatmaps, np.stack(centers), np.stack(scales))
        save_pose_overlay(img, torch.cat([keypoints, maxvals], dim=-1), output)
        return pose_summary(boxes, keypoints, maxvals)


TASK_CLASSES: Dict[str, type] = {t.name: t for t in (SegmentationTask, DetectionTask, PoseTask)}


def task_data_config(config: TrainConfig) -> Dict[str, Any]:
    """The data options of a dense training run, defaults resolved (saved with every checkpoint)."""
    hflip = 0.5 if config.hflip is None else float(config.hflip)
    norm = dict(mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD))
    if config.task == "segmentation":
        crop = config.img_size or 512
        scale = list(config.seg_scale) if config.seg_scale else [4 * crop, crop]  # (2048, 512) at 512 (mmseg ADE20K)
        return dict(crop_size=[crop, crop], scale=scale, ratio_range=[0.5, 2.0], cat_max_ratio=0.75, hflip=hflip,
                    photometric=config.photometric, reduce_zero_label=config.reduce_zero_label,
                    num_classes=config.num_classes, inference=config.inference,
                    slide_stride=[2 * crop // 3, 2 * crop // 3], **norm)
    if config.task == "detection":
        short = config.img_size or 800
        return dict(min_size=short, max_size=config.max_size or round(short * 1333 / 800), hflip=hflip)
    height = config.img_size or 256
    return dict(input_size=[height, height * 3 // 4], sigma=2.0 * height / 256, hflip=hflip,
                scale_factor=0.35 if config.pose_aug else 0.0, rotation_factor=40.0 if config.pose_aug else 0.0,
                flip_test=config.flip_test, person_boxes=config.person_boxes, **norm)


# --------------------------------------------------------------------------------------------- eval / predict
def _task_for(model: nn.Module, data: Optional[str], overrides: Mapping[str, Any], skip_bad: bool = False
              ) -> DenseTask:
    cfg = model.task_config
    data_config = dict(cfg.get("data_config") or {})
    data_config.update({k: v for k, v in overrides.items() if v is not None})
    return TASK_CLASSES[cfg["task"]](data_config, data, skip_bad=skip_bad)


def evaluate_task_checkpoint(model: nn.Module, data: str, split: str = "val", batch_size: int = 2, workers: int = 2,
                             device: str = "auto", skip_bad: bool = False,
                             **overrides: Any) -> Tuple[Dict[str, float], DenseTask]:
    """Score a loaded task model on ``data``'s ``split`` with the data options saved with it (``overrides``, e.g.
    ``inference='slide'`` or ``person_boxes=FILE``, replace single options). Returns (metrics, task)."""
    ctx = init_distributed(device)
    try:
        task = _task_for(model, data, overrides, skip_bad)
        dataset = task.dataset(split, train=False)
        if task.classes(dataset) != list(model.task_config.get("label_names") or task.classes(dataset)):
            warnings.warn(f"{data} names its classes differently from the checkpoint's", stacklevel=2)
        model.to(ctx.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return task.evaluate(model, dataset, ctx, batch_size, workers), task
    finally:
        ctx.close()


def predict_task_images(model: nn.Module, images: Sequence[str], output_dir: Optional[str] = None,
                        **options: Any) -> Iterator[Tuple[Path, Dict[str, Any]]]:
    """Write one overlay PNG per image (``<stem>_<task>.png`` in ``output_dir``, default beside the image); yields
    (PNG path, prediction fields with a one-line ``summary``) image by image."""
    task = _task_for(model, None, {})
    for path, png in overlay_paths(images, output_dir, task.name):
        yield png, task.predict(model, path, png, **options)


def overlay_paths(images: Sequence[str], output_dir: Optional[str], task: str) -> List[Tuple[Path, Path]]:
    """(image, overlay PNG) pairs: ``<stem>_<task>.png`` in ``output_dir`` (created), default beside each image."""
    pairs = []
    for image in images:
        path = Path(image)
        folder = Path(output_dir) if output_dir else path.parent
        folder.mkdir(parents=True, exist_ok=True)
        pairs.append((path, folder / f"{path.stem}_{task}.png"))
    return pairs
