"""Image and video classification as tasks of the training loop (:class:`ImageTask`, :class:`VideoTask`), and the
classification metrics shared with ``uniformer eval``.

The training recipe is timm's: ``create_transform`` (RandAugment, random erasing), Mixup/CutMix, label smoothing,
ModelEmaV3 (in the loop). Every model family's training output has its loss (:func:`compute_loss`): plain logits,
the light models' :class:`~uniformer.models.LightTrainingOutput` and the token-labeling models'
:class:`~uniformer.models.TokenLabelingOutput`. Video models train on the protocol of their checkpoint tag
(:class:`~uniformer.models.uniformer_video.VideoProtocol`) unless overridden, and record the one they used.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch.utils.data import DataLoader

from ..data import DIGITS, build_image_dataset
from ..data.video import VideoDataset
from ..models import LightTrainingOutput, TokenLabelingOutput
from ..models.convert import unwrap_state_dict
from ..models.factory import create_model
from ..models.uniformer_video import VideoProtocol, video_protocol, with_video_protocol
from ..models.vt_resnet import VTResNet, is_torchvision_resnet, load_torchvision_trunk
from ..models.weights import load_checkpoint, read_checkpoint
from .config import TrainConfig, parse_views
from .distributed import DistContext, all_reduce_sum, init_distributed
from .inference import load_model_for_inference
from .loaders import eval_loader
from .metrics import accuracy_counts
from .rundir import resolve_checkpoint_path, run_data, run_frame_naming
from .task import Setup, Step, Task, autocast_context

__all__ = ["ImageTask", "VideoTask", "compute_loss", "probe_task", "build_transforms", "init_weights", "evaluate",
           "evaluate_checkpoint", "aggregate_views"]


# ------------------------------------------------------------------------------------------------------- losses
def _soft(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    if target.ndim == 2:
        return target
    return F.one_hot(target, num_classes).float() * (1.0 - smoothing) + smoothing / num_classes


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def compute_loss(
    outputs: Any, target: torch.Tensor, criterion: Callable, smoothing: float = 0.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Loss and the logits used for accuracy, for every model family's training output.

    - plain logits: ``criterion(logits, target)``;
    - light models (a :class:`~uniformer.models.LightTrainingOutput`): ``0.5·criterion(logits) +
      0.5·criterion(cls_logits)`` (official recipe);
    - token-labeling models (a :class:`~uniformer.models.TokenLabelingOutput`): without dense token labels (they came
      from an NFNet-F6 teacher), every token's target is its own image's label; the class target is mixed with the
      batch-flipped one by the MixToken box area, as in the official loss, and both terms have weight 1.
    """
    if isinstance(outputs, TokenLabelingOutput):
        cls_logits, aux, (x1, y1, x2, y2) = outputs
        num_classes = cls_logits.shape[-1]
        soft = _soft(target, num_classes, smoothing)
        area = max(0, x2 // 8 - x1 // 8) * max(0, y2 // 8 - y1 // 8)
        lam = 1.0 - area / aux.shape[1]
        cls_target = lam * soft + (1.0 - lam) * soft.flip(0)
        token_target = soft.unsqueeze(1).expand(-1, aux.shape[1], -1)
        loss = _soft_ce(cls_logits, cls_target) + _soft_ce(aux.reshape(-1, num_classes), token_target.reshape(-1, num_classes))
        return loss, cls_logits
    if isinstance(outputs, LightTrainingOutput):
        return 0.5 * criterion(outputs.logits, target) + 0.5 * criterion(outputs.cls_logits, target), outputs.logits
    return criterion(outputs, target), outputs


# --------------------------------------------------------------------------------------------------- evaluation
def aggregate_views(logits: torch.Tensor, mode: str = "prob") -> torch.Tensor:
    """(B, V, K) per-view logits → (B, K) log-probabilities: mean of softmax probabilities (``prob``) or softmax of
    the summed raw logits (``logits``, the official UniFormer video protocol)."""
    if mode == "prob":
        return logits.float().softmax(dim=-1).mean(dim=1).clamp_min(1e-12).log()
    if mode == "logits":
        return logits.float().sum(dim=1).log_softmax(dim=-1)
    raise ValueError(f"view aggregation must be 'prob' or 'logits', got {mode!r}")


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, ctx: DistContext, autocast: Callable[[], ContextManager] = nullcontext,
    channels_last: bool = False, aggregation: str = "prob",
) -> Dict[str, float]:
    """Top-1/top-5 accuracy and cross-entropy over the loader, summed over all ranks (each sample counted once), and
    ``skipped``: the bad samples a :class:`~uniformer.engine.loaders.SkipBadLoader` dropped, summed over all ranks
    (they are not in ``count``).

    Video batches with several views per sample (B, V, C, T, H, W) are scored on the aggregated views.
    """
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    skipped_before = getattr(loader, "skipped", 0)
    for x, y in loader:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        views = x.shape[1] if x.ndim == 6 else 0
        if views:
            x = x.flatten(0, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        with autocast():
            logits = model(x)
        logits = logits.float()
        if views:
            logits = aggregate_views(logits.reshape(len(y), views, -1), aggregation)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        c1, c5 = accuracy_counts(logits, y)
        correct1, correct5, count = correct1 + c1, correct5 + c5, count + len(y)
    skipped = getattr(loader, "skipped", 0) - skipped_before
    loss_sum, correct1, correct5, count, skipped = all_reduce_sum([loss_sum, correct1, correct5, count, skipped], ctx)
    if count == 0:
        raise ValueError(f"every sample of the evaluation set was unreadable ({int(skipped)} skipped)" if skipped
                         else "the evaluation set is empty")
    return dict(loss=loss_sum / count, acc1=100.0 * correct1 / count, acc5=100.0 * correct5 / count,
                correct1=correct1, count=count, skipped=skipped)


def evaluate_checkpoint(
    checkpoint: str,
    data: Optional[str] = None,
    model_name: Optional[str] = None,
    batch_size: int = 64,
    workers: int = 2,
    img_size: Optional[int] = None,
    split: str = "val",
    device: str = "auto",
    views: Optional[str] = None,
    num_frames: Optional[int] = None,
    frame_stride: Optional[int] = None,
    sampler: Optional[str] = None,
    aggregation: str = "prob",
    skip_bad: bool = False,
    frame_template: Optional[str] = None,
    frame_start: Optional[int] = None,
    ema: bool = False,
) -> Dict[str, float]:
    """Evaluate a run directory, a saved model folder, or an official weights file (with ``model_name``); ``ema``
    evaluates the checkpoint's EMA weights (:func:`~uniformer.engine.inference.load_model_for_inference`).

    The preprocessing (and for video the frames, stride, sampler and views) is the one recorded with the checkpoint
    unless overridden; ``data`` defaults to the run's data, and the frame-folder naming to the run's
    (:func:`~uniformer.engine.rundir.run_frame_naming`).
    """
    path = resolve_checkpoint_path(checkpoint)
    if data is None:
        data = run_data(checkpoint, path)
    ctx = init_distributed(device)
    try:
        model = load_model_for_inference(model_name, str(path), num_classes=None, ema=ema)
        cfg = model.pretrained_cfg
        size = img_size or cfg["input_size"][-1]
        if getattr(model, "dims", 2) == 3:
            protocol = video_protocol(cfg).overridden(num_frames, frame_stride, sampler, views)
            clips, crops = parse_views(protocol.views)
            template, start = run_frame_naming(checkpoint, frame_template, frame_start)
            dataset = VideoDataset(data, split, train=False, num_frames=protocol.frames, stride=protocol.stride,
                                   sampler=protocol.sampler,
                                   img_size=size, num_clips=clips, num_crops=crops, mean=cfg["mean"], std=cfg["std"],
                                   skip_bad=skip_bad, frame_template=template, frame_start=start)
        else:
            data_config = resolve_data_config({"input_size": (3, size, size)} if img_size else {}, model=model)
            dataset = build_image_dataset(data, split, transform=create_transform(**data_config), img_size=size,
                                          skip_bad=skip_bad)
        if model.num_classes != len(dataset.classes):
            raise ValueError(f"the model has {model.num_classes} classes but {data} has {len(dataset.classes)}")
        model.to(ctx.device)
        return evaluate(model, eval_loader(dataset, batch_size, workers, ctx), ctx, aggregation=aggregation)
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------- data and weights
def probe_task(config: TrainConfig) -> str:
    """'image' or 'video' — ``--task`` if given (checked against the model), else from the model's dimensionality."""
    with torch.device("meta"):  # builds no weights
        dims = getattr(create_model(config.model, num_classes=0, **config.model_args), "dims", 2)
    task = config.task or ("video" if dims == 3 else "image")
    if (task == "video") != (dims == 3):
        raise ValueError(f"--task {task} does not fit {config.model} (a {'video' if dims == 3 else 'image'} model)")
    if task == "video" and config.data == DIGITS:
        raise ValueError("digits is an image dataset; video models need --data with videos")
    if task == "video" and config.aa:
        raise ValueError("--aa (RandAugment) is for images; video training uses random-resized crops and flips")
    return task


def build_transforms(config: TrainConfig, model: nn.Module) -> Tuple[Callable, Callable, Dict[str, Any]]:
    """timm train/eval transforms and the eval data config recorded with every checkpoint."""
    digits = config.data == DIGITS
    size = config.img_size or (64 if digits else model.pretrained_cfg["input_size"][-1])
    overrides: Dict[str, Any] = {"input_size": (3, size, size), "interpolation": config.interpolation}
    crop_pct = config.crop_pct if config.crop_pct is not None else (1.0 if digits else None)
    if crop_pct is not None:
        overrides["crop_pct"] = crop_pct
    data_config = resolve_data_config(overrides, model=model)
    train_tf = create_transform(
        input_size=data_config["input_size"],
        is_training=True,
        scale=tuple(config.scale) if config.scale else ((0.5, 1.0) if digits else (0.08, 1.0)),
        ratio=tuple(config.ratio),
        hflip=config.hflip if config.hflip is not None else (0.0 if digits else 0.5),
        color_jitter=config.color_jitter,
        auto_augment=config.aa,
        interpolation=config.interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=config.reprob,
    )
    eval_tf = create_transform(**data_config)
    return train_tf, eval_tf, data_config


def init_weights(model: nn.Module, path: str, log: Callable[[str], None] = print) -> None:
    """Start from a checkpoint: ours or official (``load_checkpoint``, heads re-initialised on a class-count change,
    image weights inflated for video models), or a torchvision ResNet for a VT-ResNet trunk."""
    raw = read_checkpoint(path)
    if isinstance(model, VTResNet) and is_torchvision_resnet(unwrap_state_dict(raw)[0]):
        result = load_torchvision_trunk(model, raw)
        log(f"initialised the ResNet trunk from {path} ({len(result.loaded)} tensors; skipped layer4/fc)")
        return
    load_checkpoint(model, raw)


# ------------------------------------------------------------------------------------------------------- tasks
class ImageTask(Task):
    """Image classification on ``digits`` or an ImageFolder (``train/`` and ``val/`` class folders)."""

    name, metric, best_key, rate_digits = "image", "acc1", "best_acc1", 0
    unit = "images"

    def __init__(self, config: TrainConfig) -> None:
        if (config.mixup > 0 or config.cutmix > 0) and config.batch_size % 2:
            raise ValueError(f"Mixup/CutMix need an even --batch-size, got {config.batch_size}")
        self.config = config
        self.shape = ""
        self.val_loader: Any = None
        self.mixup: Optional[Mixup] = None
        self.criterion: nn.Module = nn.CrossEntropyLoss()

    @property
    def even_batches(self) -> bool:
        return self.config.mixup > 0 or self.config.cutmix > 0

    def dataset(self, split: str, **kwargs: Any):
        return build_image_dataset(self.config.data, split, skip_bad=self.config.skip_bad, **kwargs)

    def datasets(self, model: nn.Module) -> Tuple[Any, Any, Optional[Dict[str, Any]]]:
        """Train and val datasets for ``model`` (its preprocessing, unless overridden) and the data config
        recorded with every checkpoint; sets :attr:`shape` (what the headline shows)."""
        train_tf, eval_tf, data_config = build_transforms(self.config, model)
        size = data_config["input_size"][-1]
        self.shape = f"{size}x{size}"
        return (self.dataset("train", transform=train_tf, img_size=size),
                self.dataset("val", transform=eval_tf, img_size=size), data_config)

    def build(self, ctx: DistContext) -> Setup:
        config = self.config
        train_probe, val_probe = self.dataset("train"), self.dataset("val")
        classes = list(train_probe.classes)
        if list(val_probe.classes) != classes:
            raise ValueError(f"train and val classes differ: {classes} vs {list(val_probe.classes)}")
        model = create_model(config.model, num_classes=len(classes), drop_rate=config.drop,
                             drop_path_rate=config.drop_path, **config.model_args)
        train_set, val_set, data_config = self.datasets(model)
        self.val_loader = eval_loader(val_set, config.batch_size, config.workers, ctx)
        if config.mixup > 0 or config.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                               switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing,
                               num_classes=len(classes))
            self.criterion = SoftTargetCrossEntropy()
        elif config.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
        return Setup(model, train_set, val_set, classes, data_config)

    def init_weights(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        init_weights(model, path, log)

    def load_weights(self, model: nn.Module, path: Any) -> None:
        load_checkpoint(model, path)

    def prepare(self, model: nn.Module) -> None:
        if self.config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if getattr(model, "return_dense", False):
            model.set_token_labeling(True)  # train with the class and per-token logits (official token labeling)

    def headline(self, setup: Setup, params: int) -> str:
        return (f"{super().headline(setup, params)}: {len(setup.train_set)} train / {len(setup.val_set)} val "
                f"{self.unit}, {len(setup.classes)} classes, {self.shape}")

    def batch(self, batch: Any, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, target, hard labels): Mixup/CutMix mix the input and soften the target; the accuracy counts the
        hard labels."""
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.config.channels_last:
            x = x.contiguous(memory_format=self.memory_format)
        hard = y
        if self.mixup is not None:  # clips are mixed as (B, C·T, H, W) so CutMix boxes cut H and W
            shape = x.shape
            x, y = self.mixup(x.flatten(1, 2) if x.ndim == 5 else x, y)
            x = x.reshape(shape)
        return x, y, hard

    def loss(self, train_model: nn.Module, model: nn.Module, batch: Any) -> Step:
        x, y, hard = batch
        loss, logits = compute_loss(train_model(x), y, self.criterion, self.config.smoothing)
        return Step(loss, len(hard), int((logits.argmax(dim=1) == hard).sum()))

    def progress(self, loss: float, correct: float, seen: float, seconds: float, world_size: int) -> Dict[str, str]:
        return dict(loss=f"{loss:.4f}", acc=f"{100 * correct / seen:.1f}%", img_s=f"{seen * world_size / seconds:.0f}")

    def validate(self, model: nn.Module, ctx: DistContext) -> Tuple[Dict[str, float], int]:
        config = self.config
        val = evaluate(model, self.val_loader, ctx, lambda: autocast_context(config, ctx.device),
                       config.channels_last, config.view_aggregation)
        return val, int(val["skipped"])

    def train_columns(self, loss: float, correct: float, seen: float) -> Dict[str, float]:
        return dict(train_acc1=100 * correct / seen)

    def val_columns(self, val: Dict[str, float]) -> Dict[str, float]:
        return dict(val_loss=val["loss"], val_acc1=val["acc1"], val_acc5=val["acc5"])

    def epoch_text(self, row: Dict[str, float], val: Dict[str, float], ema_val: Optional[Dict[str, float]]) -> str:
        ema_text = f"  EMA acc1 {ema_val['acc1']:.2f}%" if ema_val is not None else ""
        return (f"train loss {row['train_loss']:.4f} acc {row['train_acc1']:.2f}%  val loss {val['loss']:.4f} acc1 "
                f"{val['acc1']:.2f}% ({int(val['correct1'])}/{int(val['count'])}) acc5 {val['acc5']:.2f}%{ema_text}")

    def best_text(self, best: float) -> str:
        return f"top-1 {best:.2f}%"


class VideoTask(ImageTask):
    """Video classification on video files or frame folders (:class:`~uniformer.data.video.VideoDataset`), clips
    sampled by the model tag's :class:`~uniformer.models.uniformer_video.VideoProtocol` unless overridden."""

    name, unit = "video", "videos"
    memory_format = torch.channels_last_3d

    def dataset(self, split: str, **kwargs: Any):
        c = self.config
        return VideoDataset(c.data, split, skip_bad=c.skip_bad, frame_template=c.frame_template,
                            frame_start=c.frame_start, **kwargs)

    def protocol(self, model: nn.Module) -> VideoProtocol:
        """The model tag's protocol with the options' overrides."""
        c = self.config
        return video_protocol(model.pretrained_cfg).overridden(c.num_frames, c.frame_stride, c.sampler, c.views)

    def datasets(self, model: nn.Module) -> Tuple[Any, Any, Optional[Dict[str, Any]]]:
        """Train/val datasets of the protocol; records it in ``model.pretrained_cfg`` so that saved checkpoints
        evaluate the same way (no data config: the model's own is recorded)."""
        c, protocol = self.config, self.protocol(model)
        size = c.img_size or model.pretrained_cfg["input_size"][-1]
        clips, crops = parse_views(c.views)
        common = dict(num_frames=protocol.frames, stride=protocol.stride, sampler=protocol.sampler, img_size=size,
                      mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"])
        train_set = self.dataset("train", train=True, hflip=0.5 if c.hflip is None else c.hflip,
                                 scale=tuple(c.scale or (0.08, 1.0)), ratio=tuple(c.ratio), **common)
        val_set = self.dataset("val", train=False, num_clips=clips, num_crops=crops, **common)
        model.pretrained_cfg = with_video_protocol(dict(model.pretrained_cfg, input_size=(3, size, size),
                                                        label_names=None), protocol, model.head_dim)
        self.shape = f"{protocol.frames}x{size}x{size}"
        return train_set, val_set, None
