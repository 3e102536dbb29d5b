"""Training and evaluation loops for image classification, built on timm's components.

``train(config)`` runs single-process or under ``torchrun`` (DistributedDataParallel, gloo on CPU, NCCL on CUDA);
rank 0 claims and locks the run directory (:func:`~uniformer.engine.checkpointing.claim_run`), logs and writes
checkpoints. ``evaluate_checkpoint`` reproduces the validation numbers of a saved run.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import sys
import time
import warnings
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from ..models import TokenLabelingOutput
from ..models.factory import create_model
from ..models.weights import load_checkpoint
from ..data import DIGITS, DropBadCollate, build_image_dataset
from ..data.frames import DEFAULT_FRAME_START, DEFAULT_FRAME_TEMPLATE
from .checkpointing import RunDir, RunLock, claim_run, resolve_checkpoint_path, rng_state, set_rng_state
from .config import TrainConfig, load_yaml, parse_views, save_yaml
from .distributed import DistContext, ShardSampler, all_reduce_sum, init_distributed
from .inference import load_model_for_inference
from .metrics import MetricsLogger, accuracy_counts

__all__ = ["train", "evaluate", "evaluate_checkpoint", "compute_loss", "build_transforms", "SkipBadLoader",
           "eval_loader", "absolute_paths"]

_logger = logging.getLogger("uniformer")


# --------------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """NumPy and Python RNGs of a DataLoader worker follow torch's per-worker seed (timm augmentations use them)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def autocast_context(config: TrainConfig, device: torch.device):
    if not config.amp:
        return nullcontext()
    dtype = getattr(torch, config.amp_dtype) if config.amp_dtype else (
        torch.float16 if device.type == "cuda" else torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    - light models ``(head, head_cls)``: ``0.5·criterion(head) + 0.5·criterion(head_cls)`` (official recipe);
    - token-labeling models (a :class:`~uniformer.models.TokenLabelingOutput`): without dense token labels (they came from an NFNet-F6 teacher),
      every token's target is its own image's label; the class target is mixed with the batch-flipped one by the
      MixToken box area, as in the official loss, and both terms have weight 1.
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
    if isinstance(outputs, tuple) and len(outputs) == 2:
        head, head_cls = outputs
        return 0.5 * criterion(head, target) + 0.5 * criterion(head_cls, target), head
    return criterion(outputs, target), outputs


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


def _datasets(config: TrainConfig, task: str, split: str, **kwargs: Any):
    if task == "video":
        from ..data.video import VideoDataset

        return VideoDataset(config.data, split, skip_bad=config.skip_bad, frame_template=config.frame_template,
                            frame_start=config.frame_start, **kwargs)
    return build_image_dataset(config.data, split, skip_bad=config.skip_bad, **kwargs)


def build_video_datasets(config: TrainConfig, model: nn.Module):
    """Video train/val datasets following the model tag's protocol unless overridden; records the protocol in
    ``model.pretrained_cfg`` so that saved checkpoints evaluate the same way."""
    from ..models.uniformer_video import video_protocol

    proto = video_protocol(model.pretrained_cfg)
    frames = config.num_frames or proto["frames"]
    stride = config.frame_stride or proto["stride"]
    sampler = config.sampler or proto["sampler"]
    size = config.img_size or model.pretrained_cfg["input_size"][-1]
    clips, crops = parse_views(config.views)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    common = dict(num_frames=frames, stride=stride, sampler=sampler, img_size=size, mean=mean, std=std)
    train_set = _datasets(config, "video", "train", train=True, hflip=0.5 if config.hflip is None else config.hflip,
                          scale=tuple(config.scale or (0.08, 1.0)), ratio=tuple(config.ratio), **common)
    val_set = _datasets(config, "video", "val", train=False, num_clips=clips, num_crops=crops, **common)
    model.pretrained_cfg = dict(
        model.pretrained_cfg, input_size=(3, size, size), label_names=None,
        notes=(f"head_dim={model.head_dim}", f"frames={frames}", f"stride={stride}", f"sampler={sampler}",
               f"views={config.views}"),
    )
    return train_set, val_set, f"{frames}x{size}x{size}"


def build_transforms(config: TrainConfig, model: nn.Module) -> Tuple[Callable, Callable, Dict[str, Any]]:
    """timm train/eval transforms and the eval data config recorded with every checkpoint."""
    from timm.data import create_transform, resolve_data_config

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
    from ..models.weights import read_checkpoint
    from ..models.convert import unwrap_state_dict
    from ..models.vt_resnet import VTResNet, is_torchvision_resnet, load_torchvision_trunk

    raw = read_checkpoint(path)
    if isinstance(model, VTResNet) and is_torchvision_resnet(unwrap_state_dict(raw)[0]):
        result = load_torchvision_trunk(model, raw)
        log(f"initialised the ResNet trunk from {path} ({len(result.loaded)} tensors; skipped layer4/fc)")
        return
    load_checkpoint(model, raw)


# ------------------------------------------------------------------------------------------------ evaluation
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
    model: nn.Module, loader: DataLoader, ctx: DistContext, autocast=nullcontext, channels_last: bool = False,
    aggregation: str = "prob",
) -> Dict[str, float]:
    """Top-1/top-5 accuracy and cross-entropy over the loader, summed over all ranks (each sample counted once), and
    ``skipped``: the bad samples a :class:`SkipBadLoader` dropped, summed over all ranks (they are not in ``count``).

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


class SkipBadLoader:
    """Iterates a DataLoader whose ``collate_fn`` is a :class:`~uniformer.data.DropBadCollate` as the batches of its
    good samples.

    Every :class:`~uniformer.data.BadSample` a dataset returned (``--skip-bad``) is dropped with a warning naming it
    and counted in ``skipped`` (this process; evaluation and the epoch summaries sum it over the ranks). ``even``
    trims a batch to an even size (Mixup/CutMix need one); a batch left with fewer than ``min_size`` samples is
    skipped (training: 2, as BatchNorm needs two samples, the reason a last partial batch is dropped too). With
    ``ctx`` (training under torchrun) the ranks agree on every step, so all of them skip a step that any rank skips
    and DistributedDataParallel never waits for a rank that has nothing.
    """

    def __init__(self, loader: DataLoader, ctx: Optional[DistContext] = None, even: bool = False,
                 min_size: int = 1) -> None:
        self.loader, self.ctx, self.even, self.min_size = loader, ctx, even, min_size
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch, bad in self.loader:
            for sample in bad:
                self.skipped += 1
                warnings.warn(f"skipping {sample.path} ({self.skipped} skipped so far in this process): "
                              f"{sample.reason}", stacklevel=2)
            if batch is not None:
                size = len(batch[0]) // 2 * 2 if self.even else len(batch[0])
                if size < self.min_size:
                    batch = None
                elif size < len(batch[0]):
                    batch = [part[:size] for part in batch]
            keep = batch is not None
            if self.ctx is not None and self.ctx.distributed:
                keep = all_reduce_sum([float(keep)], self.ctx)[0] == self.ctx.world_size
            if keep:
                yield batch


def eval_loader(dataset, batch_size: int, workers: int, ctx: DistContext,
                collate_fn: Optional[Callable] = None) -> SkipBadLoader:
    """Evaluation loader: every sample exactly once over all ranks (:class:`ShardSampler`), in order; bad samples
    (``skip_bad`` datasets) are dropped and counted (:class:`SkipBadLoader`)."""
    return SkipBadLoader(DataLoader(dataset, batch_size=batch_size,
                                    sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                                    num_workers=workers, worker_init_fn=seed_worker,
                                    collate_fn=DropBadCollate(collate_fn), pin_memory=ctx.device.type == "cuda"))


def train_loader(dataset, config: TrainConfig, ctx: DistContext, sampler: DistributedSampler,
                 collate_fn: Optional[Callable] = None, even: bool = False) -> SkipBadLoader:
    """Training loader over ``sampler`` (full batches only); bad samples are dropped and counted, a batch left with
    one sample is skipped, the ranks agreeing on skipped steps under torchrun (:class:`SkipBadLoader`)."""
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        worker_init_fn=seed_worker, drop_last=True, collate_fn=DropBadCollate(collate_fn),
                        pin_memory=ctx.device.type == "cuda", persistent_workers=False)
    return SkipBadLoader(loader, ctx if config.skip_bad else None, even=even, min_size=min(2, config.batch_size))


def _run_config_file(checkpoint: str, path: Path) -> Optional[Path]:
    """The ``config.yaml`` of the training run a checkpoint belongs to, if it is inside one."""
    return next((p / "config.yaml" for p in (Path(checkpoint), path.resolve().parent.parent)
                 if (p / "config.yaml").is_file()), None)


def run_data(checkpoint: str, path: Path) -> str:
    """The ``--data`` of the training run a checkpoint belongs to (its ``config.yaml``)."""
    run_config = _run_config_file(checkpoint, path)
    if run_config is None:
        raise ValueError("pass --data: the checkpoint is not inside a training run directory")
    return load_yaml(run_config)["data"]


def run_frame_naming(checkpoint: str, frame_template: Optional[str] = None,
                     frame_start: Optional[int] = None) -> Tuple[str, int]:
    """Frame-folder naming for evaluating / predicting with a checkpoint: the given values, else those of the
    training run the checkpoint belongs to, else the defaults (``img_{:05d}.jpg`` from 1). A ``config.yaml`` beside
    the checkpoint that is not a run's options file is not a run: the defaults apply."""
    saved: Dict[str, Any] = {}
    if frame_template is None or frame_start is None:
        run_config = _run_config_file(checkpoint, resolve_checkpoint_path(checkpoint))
        try:
            saved = load_yaml(run_config) if run_config is not None else {}
        except ValueError:
            saved = {}
    template = frame_template if frame_template is not None else saved.get("frame_template", DEFAULT_FRAME_TEMPLATE)
    start = frame_start if frame_start is not None else saved.get("frame_start", DEFAULT_FRAME_START)
    return template, start


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
    (:func:`run_frame_naming`).
    """
    from timm.data import create_transform, resolve_data_config

    from ..models.uniformer_video import video_protocol

    path = resolve_checkpoint_path(checkpoint)
    if data is None:
        data = run_data(checkpoint, path)
    ctx = init_distributed(device)
    try:
        model = load_model_for_inference(model_name, str(path), num_classes=None, ema=ema)
        cfg = model.pretrained_cfg
        size = img_size or cfg["input_size"][-1]
        if getattr(model, "dims", 2) == 3:
            from ..data.video import VideoDataset

            proto = video_protocol(cfg)
            clips, crops = parse_views(views or proto["views"])
            template, start = run_frame_naming(checkpoint, frame_template, frame_start)
            dataset = VideoDataset(data, split, train=False, num_frames=num_frames or proto["frames"],
                                   stride=frame_stride or proto["stride"], sampler=sampler or proto["sampler"],
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


# -------------------------------------------------------------------------------------------------- training
def default_output(config: TrainConfig) -> str:
    data = "digits" if config.data == DIGITS else Path(config.data).name
    return str(Path("runs") / f"{config.model}-{data}-{datetime.now():%Y%m%d-%H%M%S}")


PATH_OPTIONS = ("data", "init_checkpoint", "output", "resume", "person_boxes")  # saved absolute


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its path options (:data:`PATH_OPTIONS`) absolute and ``~`` expanded (``digits`` stays), so that
    the saved run evaluates and resumes from any working directory."""
    changes = {name: os.path.abspath(os.path.expanduser(str(value))) for name in PATH_OPTIONS
               if (value := getattr(config, name)) and not (name == "data" and value == DIGITS)}
    return dataclasses.replace(config, **changes)


_CLAIM_ERRORS = {e.__name__: e for e in (FileExistsError, BlockingIOError, FileNotFoundError, NotADirectoryError,
                                         PermissionError, ValueError)}


def start_run(config: TrainConfig, ctx: DistContext, log: Callable[[str], None]
              ) -> Tuple[TrainConfig, Optional[RunLock]]:
    """Make the path options absolute and let rank 0 claim the run directory (:func:`claim_run`: refuse a folder
    holding a run unless ``--resume``/``--overwrite``, take its lock). Every rank gets rank 0's outcome: the config
    with ``output`` set to the run directory, or rank 0's error. Returns the held lock on rank 0, None elsewhere."""
    config = absolute_paths(config)
    lock, error, outcome = None, None, None
    if ctx.is_main:
        root = config.resume or config.output or os.path.abspath(default_output(config))
        try:
            lock = claim_run(root, resume=bool(config.resume), overwrite=config.overwrite, log=log)
            outcome = (root, None, None)
        except (OSError, ValueError) as e:
            error, outcome = e, (root, type(e).__name__, str(e))
    root, kind, message = ctx.broadcast_object(outcome)
    if error is not None:
        raise error
    if kind is not None:
        raise _CLAIM_ERRORS.get(kind, OSError)(message)
    return (config if config.resume else dataclasses.replace(config, output=root)), lock


def progress_bar(config: TrainConfig, ctx: DistContext, total: int, desc: str):
    from tqdm import tqdm

    enabled = ctx.is_main and (config.progress if config.progress is not None else sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, dynamic_ncols=True, leave=False)



# ------------------------------------------------------------------------- pieces shared with the dense-task loop
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")  # timm names of torch optimizers with a fused kernel


def use_fast_kernels(model: nn.Module, enabled: bool) -> None:
    """Switch every UniFormer attention between ``F.scaled_dot_product_attention`` (``enabled``) and the explicit
    softmax(q kᵀ)v matmuls of the official code (the speed baseline)."""
    from ..layers.mhra import Attention

    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = enabled


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm ``create_optimizer_v2`` (no weight decay on norms, biases and ``no_weight_decay()`` parameters)."""
    from timm.optim import create_optimizer_v2

    extra: Dict[str, Any] = ({"eps": config.opt_eps} if "adam" in config.opt else
                             {"momentum": config.momentum} if config.opt in ("sgd", "momentum") else {})
    if config.fast_kernels and config.opt.lower() in FUSED_OPTIMIZERS:  # one fused kernel instead of a loop
        extra["fused"] = True
    return create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay, **extra)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """timm ``create_scheduler_v2``, stepped per update (``step_update``) and per epoch (``step``)."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(optimizer, sched=config.sched, num_epochs=config.epochs,
                                       warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
                                       min_lr=config.min_lr, step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)
    return scheduler


def make_scaler(config: TrainConfig, ctx: DistContext):
    """A gradient scaler for fp16 autocast on CUDA; None otherwise (bf16 and fp32 need none)."""
    from timm.utils import NativeScaler

    use = config.amp and ctx.device.type == "cuda" and (config.amp_dtype or "float16") == "float16"
    return NativeScaler(device="cuda") if use else None


def restore_training_state(state: Dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                           scaler: Any, ema: Optional[nn.Module], config: TrainConfig,
                           log: Callable[[str], None]) -> int:
    """Load a ``last`` checkpoint's weights, optimiser, schedule, scaler, EMA and RNG state; returns the epoch to
    start from."""
    if getattr(model, "task_config", None) is not None:  # dense task models: names as saved
        from ..models.weights import load_task_weights

        load_task_weights(model, state["path"])
    else:
        load_checkpoint(model, state["path"])
    optimizer.load_state_dict(state["optimizer"])
    if state["config"]["epochs"] == config.epochs:
        scheduler.load_state_dict(state["scheduler"])
    else:  # the saved state would keep the old length; the schedule is a function of (step, options) anyway
        log(f"learning-rate schedule recomputed for {config.epochs} epochs (was {state['config']['epochs']})")
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    return int(state["epoch"]) + 1


def place_model(model: nn.Module, config: TrainConfig, ctx: DistContext,
                memory_format: torch.memory_format = torch.channels_last) -> nn.Module:
    """The model on its device, in ``memory_format`` with ``--channels-last``, with SyncBatchNorm if asked."""
    model.to(ctx.device)
    if config.channels_last:
        model.to(memory_format=memory_format)
    if config.sync_bn and ctx.distributed:
        if ctx.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); on the CPU each "
                             "process keeps its own BatchNorm statistics")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def open_run(config: TrainConfig, run: RunDir, ctx: DistContext,
             resume_epoch: Optional[int]) -> Optional[MetricsLogger]:
    """On rank 0: write the resolved ``config.yaml`` into the claimed run directory and return the metrics logger
    (which drops rows past ``resume_epoch`` when resuming); None on the other ranks."""
    if not ctx.is_main:
        return None
    save_yaml(with_output(config, run.root), run.config_file)
    return MetricsLogger(run.root, resume_epoch=resume_epoch)


def check_finite(loss: torch.Tensor, epoch: int, step: int, run: RunDir) -> None:
    """Stop on a NaN/inf loss, naming the step; the last good checkpoint stays as it is."""
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: stopping; the last "
                                 f"good checkpoint ({run.pointer('last') or 'none yet'}) is intact")


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                   config: TrainConfig) -> None:
    """Backward, optional gradient clipping, optimiser step (through the scaler for fp16)."""
    from timm.utils import dispatch_clip_grad

    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler(loss, optimizer, clip_grad=config.clip_grad, clip_mode=config.clip_mode, parameters=model.parameters())
        return
    loss.backward()
    if config.clip_grad is not None:
        dispatch_clip_grad(model.parameters(), config.clip_grad, mode=config.clip_mode)
    optimizer.step()


def wrap_distributed(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise."""
    if not ctx.distributed:
        return model
    # depthwise-conv grads come back channels_last; layouts of size-1 dims are irrelevant to DDP's buckets
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train ``config.model`` on ``config.data``; returns the final summary (best accuracy, run directory, …).
    ``--task segmentation|detection|pose`` runs :func:`uniformer.engine.dense.train_dense` instead. The run
    directory is claimed and locked first (:func:`start_run`) and released however the training ends."""
    from ..tasks.build import DENSE_TASKS

    if config.task in DENSE_TASKS:
        from .dense import train_dense as loop
    else:
        loop = _train
    ctx = init_distributed(config.device)
    lock: Optional[RunLock] = None
    try:
        main_log = log if ctx.is_main else (lambda _msg: None)
        config, lock = start_run(config, ctx, main_log)
        return loop(config, ctx, main_log)
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


def _train(config: TrainConfig, ctx: DistContext, log: Callable[[str], None]) -> Dict[str, Any]:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    if (config.mixup > 0 or config.cutmix > 0) and config.batch_size % 2:
        raise ValueError(f"Mixup/CutMix need an even --batch-size, got {config.batch_size}")
    run = RunDir(config.resume or config.output)  # claimed by start_run
    resume_state = run.load_training_state() if config.resume else None
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(config.seed)  # same initial weights on every rank

    task = probe_task(config)
    train_probe, val_probe = _datasets(config, task, "train"), _datasets(config, task, "val")
    classes = list(train_probe.classes)
    if list(val_probe.classes) != classes:
        raise ValueError(f"train and val classes differ: {classes} vs {list(val_probe.classes)}")
    model = create_model(config.model, num_classes=len(classes), drop_rate=config.drop,
                         drop_path_rate=config.drop_path, **config.model_args)
    data_config: Optional[Dict[str, Any]] = None
    if task == "video":
        train_set, val_set, shape = build_video_datasets(config, model)
    else:
        train_tf, eval_tf, data_config = build_transforms(config, model)
        size = data_config["input_size"][-1]
        shape = f"{size}x{size}"
        train_set = build_image_dataset(config.data, "train", transform=train_tf, img_size=size,
                                        skip_bad=config.skip_bad)
        val_set = build_image_dataset(config.data, "val", transform=eval_tf, img_size=size, skip_bad=config.skip_bad)
    if len(train_set) < config.batch_size * ctx.world_size:
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than one batch "
                         f"({config.batch_size} x {ctx.world_size} processes)")
    if config.init_checkpoint and resume_state is None:
        init_weights(model, config.init_checkpoint, log)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if getattr(model, "return_dense", False):
        model.set_token_labeling(True)  # train with the class and per-token logits (official token labeling)
    memory_format = torch.channels_last_3d if task == "video" else torch.channels_last
    use_fast_kernels(model, config.fast_kernels)
    model = place_model(model, config, ctx, memory_format)

    optimizer = make_optimizer(config, model)
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    loader = train_loader(train_set, config, ctx, sampler, even=config.mixup > 0 or config.cutmix > 0)
    val_loader = eval_loader(val_set, config.batch_size, config.workers, ctx)
    scheduler = make_scheduler(config, optimizer, len(loader))
    ema = ModelEmaV3(model, decay=config.model_ema_decay, use_warmup=config.model_ema_warmup) if config.model_ema else None
    mixup_fn = None
    if config.mixup > 0 or config.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                         switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing,
                         num_classes=len(classes))
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif config.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    scaler = make_scaler(config, ctx)

    start_epoch, best_acc1, best_epoch = 0, -1.0, -1
    if resume_state is not None:
        start_epoch = restore_training_state(resume_state, model, optimizer, scheduler, scaler, ema, config, log)
        best_acc1, best_epoch = float(resume_state["best_acc1"]), int(resume_state["best_epoch"])
        log(f"resumed {run.root} after epoch {start_epoch} (best val top-1 {best_acc1:.2f}% at epoch {best_epoch + 1})")
    else:
        torch.manual_seed(config.seed + ctx.rank)  # augmentation streams differ between ranks
    metrics = open_run(config, run, ctx, start_epoch if resume_state else None)
    train_model = wrap_distributed(model, ctx)
    autocast = lambda: autocast_context(config, ctx.device)  # noqa: E731
    params = sum(p.numel() for p in model.parameters())
    if start_epoch == 0:
        unit = "videos" if task == "video" else "images"
        log(f"training {config.model} ({params / 1e6:.2f} M params) on {config.data}: {len(train_set)} train / "
            f"{len(val_set)} val {unit}, {len(classes)} classes, {shape}, {ctx.world_size} process(es) on "
            f"{ctx.device}, run dir {run.root}")

    num_updates = start_epoch * len(loader)
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        train_model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        skipped_before = loader.skipped
        bar = progress_bar(config, ctx, len(loader), f"epoch {epoch + 1}/{config.epochs}")
        try:
            for step, (x, y) in enumerate(loader):
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                if config.channels_last:
                    x = x.contiguous(memory_format=memory_format)
                hard = y
                if mixup_fn is not None:  # clips are mixed as (B, C·T, H, W) so CutMix boxes cut H and W
                    shape = x.shape
                    x, y = mixup_fn(x.flatten(1, 2) if x.ndim == 5 else x, y)
                    x = x.reshape(shape)
                with autocast():
                    loss, logits = compute_loss(train_model(x), y, criterion, config.smoothing)
                check_finite(loss, epoch, step, run)
                optimizer_step(loss, model, optimizer, scaler, config)
                num_updates += 1
                scheduler.step_update(num_updates=num_updates)
                if ema is not None:
                    ema.update(model, step=num_updates)
                n = len(hard)
                loss_sum += loss.item() * n
                correct += int((logits.argmax(dim=1) == hard).sum())
                seen += n
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.1f}%",
                                img_s=f"{seen * ctx.world_size / (time.perf_counter() - t0):.0f}")
        finally:
            bar.close()
        train_time = time.perf_counter() - t0
        loss_sum, correct, seen, train_skipped = all_reduce_sum(
            [loss_sum, correct, seen, loader.skipped - skipped_before], ctx)
        if seen == 0:
            raise ValueError(f"every training batch of epoch {epoch + 1} was unreadable ({int(train_skipped)} bad "
                             "samples skipped)")
        scheduler.step(epoch + 1)
        ctx.broadcast_buffers(model)
        if ema is not None:
            ctx.broadcast_buffers(ema)
        val = evaluate(model, val_loader, ctx, autocast, config.channels_last, config.view_aggregation)
        ema_val = (evaluate(ema.module, val_loader, ctx, autocast, config.channels_last, config.view_aggregation)
                   if ema is not None else None)
        is_best = val["acc1"] > best_acc1
        if is_best:
            best_acc1, best_epoch = val["acc1"], epoch
        lr = optimizer.param_groups[0]["lr"]
        row = dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc1=100 * correct / seen, val_loss=val["loss"],
                   val_acc1=val["acc1"], val_acc5=val["acc5"], lr=lr, epoch_time=train_time,
                   images_per_sec=seen / train_time)
        if ema_val is not None:
            row["ema_val_acc1"] = ema_val["acc1"]
        if ctx.is_main:
            state = dict(epoch=epoch, best_acc1=best_acc1, best_epoch=best_epoch, optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), scaler=scaler.state_dict() if scaler else None,
                         ema=ema.state_dict() if ema is not None else None, rng=rng_state(), config=config.to_dict())
            metrics.log(row)  # first: a kill between the two leaves a row that resume drops, never a gap
            run.save(epoch, model, state, is_best, label_names=classes, data_config=data_config)
        ctx.barrier()
        ema_text = f"  EMA acc1 {ema_val['acc1']:.2f}%" if ema_val is not None else ""
        log(f"epoch {epoch + 1:>3}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc1']:.2f}%  "
            f"val loss {val['loss']:.4f} acc1 {val['acc1']:.2f}% ({int(val['correct1'])}/{int(val['count'])}) "
            f"acc5 {val['acc5']:.2f}%{ema_text}  lr {lr:.2e}  {row['images_per_sec']:.0f} img/s  {train_time:.1f}s"
            + skipped_text(train_skipped, val["skipped"]) + ("  *best*" if is_best else ""))
    if metrics is not None:
        metrics.close()
    log(f"best val top-1 {best_acc1:.2f}% at epoch {best_epoch + 1}; checkpoints in {run.root} (best, last)")
    return dict(best_acc1=best_acc1, best_epoch=best_epoch + 1, run_dir=str(run.root), classes=classes)


def skipped_text(train_skipped: float, val_skipped: float) -> str:
    """The epoch summary's note of the bad samples ``--skip-bad`` dropped ('' when none)."""
    if not train_skipped and not val_skipped:
        return ""
    return f"  skipped {int(train_skipped)} train / {int(val_skipped)} val bad sample(s)"


def with_output(config: TrainConfig, root: Path) -> TrainConfig:
    """The options saved as the run's ``config.yaml``: what ``--resume`` continues with."""
    return dataclasses.replace(config, output=str(root), resume=None, overwrite=False)
