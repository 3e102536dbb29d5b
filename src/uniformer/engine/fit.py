"""The training loop, once for every task.

``train(config)`` runs single-process or under ``torchrun`` (DistributedDataParallel, gloo on CPU, NCCL on CUDA):
rank 0 claims and locks the run directory (:func:`~uniformer.engine.rundir.start_run`), the task of ``config.task``
(:class:`~uniformer.engine.task.Task`: image or video classification, segmentation, detection, pose) builds its
datasets and model, and :func:`fit` trains it with timm's optimiser, schedule, gradient scaler and EMA, logging one
``metrics.csv`` row and writing one checkpoint per epoch (rank 0), so that ``--resume`` continues bit-exactly.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, NamedTuple, Optional

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, dispatch_clip_grad, random_seed
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from ..layers.mhra import Attention
from .classification import ImageTask, VideoTask, probe_task
from .config import TrainConfig
from .dense import TASK_CLASSES
from .distributed import DistContext, all_reduce_sum, init_distributed
from .loaders import train_loader
from .metrics import MetricsLogger, skipped_text
from .rundir import RunDir, RunLock, rng_state, save_run_config, set_rng_state, start_run
from .task import Task, autocast_context

__all__ = ["train", "fit", "task_for", "Trainer", "make_optimizer", "make_scheduler", "make_scaler", "place_model",
           "wrap_distributed", "use_fast_kernels"]

Log = Callable[[str], None]


def train(config: TrainConfig, log: Log = print) -> Dict[str, Any]:
    """Train ``config.model`` on ``config.data`` for ``config.task``; returns the final summary (best score, run
    directory, …). The run directory is claimed and locked first and released however the training ends."""
    ctx = init_distributed(config.device)
    lock: Optional[RunLock] = None
    try:
        main_log = log if ctx.is_main else (lambda _msg: None)
        config, lock = start_run(config, ctx, main_log)
        run = RunDir(config.resume or config.output)
        resume_state = run.load_training_state() if config.resume else None
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        random_seed(config.seed)  # same initial weights on every rank
        return fit(task_for(config, resume_state), run, resume_state, ctx, main_log)
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


def task_for(config: TrainConfig, resume_state: Optional[Dict[str, Any]] = None) -> Task:
    """The task of ``config.task`` (image or video from the model when not given); a resumed dense task keeps the
    data options it was trained with."""
    if config.task in TASK_CLASSES:
        return TASK_CLASSES[config.task].for_training(config, resume_state)
    return VideoTask(config) if probe_task(config) == "video" else ImageTask(config)


# ------------------------------------------------------------------------------------------------------ the loop
class EpochTotals(NamedTuple):
    """A finished training epoch, summed over all ranks: loss x samples, samples classified right, samples, bad
    samples skipped; and the epoch's seconds (this process)."""

    loss_sum: float
    correct: float
    seen: float
    skipped: float
    seconds: float


@dataclass
class Trainer:
    """The objects that train one task: the model (and its DDP wrapper), the optimiser, schedule, gradient scaler,
    EMA, the training loader and its sampler; ``num_updates`` counts optimiser steps (the schedule's clock)."""

    task: Task
    ctx: DistContext
    run: RunDir
    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ema: Optional[ModelEmaV3]
    loader: Any
    sampler: DistributedSampler
    num_updates: int = 0

    def train_epoch(self, epoch: int) -> EpochTotals:
        """One pass over the training set (a bar on rank 0); stops on a non-finite loss."""
        config, ctx = self.task.config, self.ctx
        self.sampler.set_epoch(epoch)
        self.train_model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        skipped_before = self.loader.skipped
        bar = progress_bar(config, ctx, len(self.loader), f"epoch {epoch + 1}/{config.epochs}")
        try:
            for step, batch in enumerate(self.loader):
                batch = self.task.batch(batch, ctx.device)
                with autocast_context(config, ctx.device):
                    result = self.task.loss(self.train_model, self.model, batch)
                loss = result.loss.item()
                check_finite(loss, epoch, step, self.run)
                optimizer_step(result.loss, self.model, self.optimizer, self.scaler, config)
                self.num_updates += 1
                self.scheduler.step_update(num_updates=self.num_updates)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.num_updates)
                loss_sum += loss * result.count
                correct += result.correct
                seen += result.count
                bar.update(1)
                bar.set_postfix(self.task.progress(loss_sum / seen, correct, seen, time.perf_counter() - t0,
                                                   ctx.world_size))
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        loss_sum, correct, seen, skipped = all_reduce_sum(
            [loss_sum, correct, seen, self.loader.skipped - skipped_before], ctx)
        if seen == 0:
            raise ValueError(f"every training batch of epoch {epoch + 1} was unreadable ({int(skipped)} bad samples "
                             "skipped)")
        return EpochTotals(loss_sum, correct, seen, skipped, seconds)

    def state(self, epoch: int, best: float, best_epoch: int) -> Dict[str, Any]:
        """The training state saved with the checkpoint of ``epoch``: what ``--resume`` restores."""
        task = self.task
        return {"epoch": epoch, task.best_key: best, "best_epoch": best_epoch, "metric": task.metric,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema is not None else None, "rng": rng_state(),
                "config": dict(task.config.to_dict(), **task.saved_options())}

    def restore(self, state: Dict[str, Any], log: Log) -> int:
        """Load a ``last`` checkpoint's weights, optimiser, schedule, scaler, EMA and RNG state; returns the epoch to
        start from."""
        config = self.task.config
        self.task.load_weights(self.model, state["path"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["config"]["epochs"] == config.epochs:
            self.scheduler.load_state_dict(state["scheduler"])
        else:  # the saved state would keep the old length; the schedule is a function of (step, options) anyway
            log(f"learning-rate schedule recomputed for {config.epochs} epochs (was {state['config']['epochs']})")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        return int(state["epoch"]) + 1


def fit(task: Task, run: RunDir, resume_state: Optional[Dict[str, Any]], ctx: DistContext,
        log: Log = print) -> Dict[str, Any]:
    """Train ``task`` in an initialised process (group) into the claimed ``run`` directory, continuing from
    ``resume_state`` (the ``last`` checkpoint's training state) if given; returns the final summary."""
    config = task.config
    setup = task.build(ctx)
    model = setup.model
    if len(setup.train_set) < config.batch_size * ctx.world_size:
        raise ValueError(f"the training set has {len(setup.train_set)} samples, fewer than one batch "
                         f"({config.batch_size} x {ctx.world_size} processes)")
    if config.init_checkpoint and resume_state is None:
        task.init_weights(model, config.init_checkpoint, log)
    task.prepare(model)
    use_fast_kernels(model, config.fast_kernels)
    model = place_model(model, config, ctx, task.memory_format)
    optimizer = make_optimizer(config, model)
    sampler = DistributedSampler(setup.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    loader = train_loader(setup.train_set, config, ctx, sampler, collate_fn=task.collate_fn, even=task.even_batches)
    scheduler = make_scheduler(config, optimizer, len(loader))
    ema = ModelEmaV3(model, decay=config.model_ema_decay, use_warmup=config.model_ema_warmup) if config.model_ema else None
    trainer = Trainer(task, ctx, run, model, model, optimizer, scheduler, make_scaler(config, ctx), ema, loader, sampler)

    start_epoch, best, best_epoch = 0, -math.inf, -1
    if resume_state is not None:
        start_epoch = trainer.restore(resume_state, log)
        best, best_epoch = float(resume_state[task.best_key]), int(resume_state["best_epoch"])
        log(f"resumed {run.root} after epoch {start_epoch} (best val {task.best_text(best)} at epoch "
            f"{best_epoch + 1})")
    else:
        torch.manual_seed(config.seed + ctx.rank)  # augmentation streams differ between ranks
    metrics = None
    if ctx.is_main:
        save_run_config(config, run)
        metrics = MetricsLogger(run.root, resume_epoch=start_epoch if resume_state else None)
    trainer.train_model = wrap_distributed(model, ctx, task.find_unused_parameters)
    if start_epoch == 0:
        log(f"{task.headline(setup, sum(p.numel() for p in model.parameters()))}, {ctx.world_size} process(es) on "
            f"{ctx.device}, run dir {run.root}")

    trainer.num_updates = start_epoch * len(loader)
    for epoch in range(start_epoch, config.epochs):
        totals = trainer.train_epoch(epoch)
        scheduler.step(epoch + 1)
        ctx.broadcast_bn(model)
        if ema is not None:
            ctx.broadcast_bn(ema)
        val, val_skipped = task.validate(model, ctx)
        ema_val = task.validate(ema.module, ctx)[0] if ema is not None else None
        score = val[task.metric]
        is_best = not math.isnan(score) and score > best
        if is_best:
            best, best_epoch = score, epoch
        lr = optimizer.param_groups[0]["lr"]
        row: Dict[str, float] = dict(epoch=epoch + 1, train_loss=totals.loss_sum / totals.seen,
                                     **task.train_columns(totals.loss_sum, totals.correct, totals.seen),
                                     **task.val_columns(val), lr=lr, epoch_time=totals.seconds,
                                     images_per_sec=totals.seen / totals.seconds)
        if ema_val is not None:
            row[f"ema_val_{task.metric}"] = ema_val[task.metric]
        if ctx.is_main:
            state = trainer.state(epoch, best, best_epoch)
            metrics.log(row)  # first: a kill between the two leaves a row that resume drops, never a gap
            run.save(epoch, model, state, is_best, label_names=setup.classes, data_config=setup.data_config)
        ctx.barrier()
        log(f"epoch {epoch + 1:>3}/{config.epochs}  {task.epoch_text(row, val, ema_val)}  lr {lr:.2e}  "
            f"{row['images_per_sec']:.{task.rate_digits}f} img/s  {totals.seconds:.1f}s"
            + skipped_text(totals.skipped, val_skipped) + ("  *best*" if is_best else ""))
    if metrics is not None:
        metrics.close()
    log(f"best val {task.best_text(best)} at epoch {best_epoch + 1}; checkpoints in {run.root} (best, last)")
    return {task.best_key: best, "metric": task.metric, "best_epoch": best_epoch + 1, "run_dir": str(run.root),
            "classes": setup.classes}


# -------------------------------------------------------------------------------------------------- scaffolding
def progress_bar(config: TrainConfig, ctx: DistContext, total: int, desc: str):
    """The epoch's tqdm bar on stderr: rank 0 only, and only on a terminal unless ``--progress`` says otherwise."""
    enabled = ctx.is_main and (config.progress if config.progress is not None else sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, dynamic_ncols=True, leave=False)


FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")  # timm names of torch optimizers with a fused kernel


def use_fast_kernels(model: nn.Module, enabled: bool) -> None:
    """Switch every UniFormer attention between ``F.scaled_dot_product_attention`` (``enabled``) and the explicit
    softmax(q kᵀ)v matmuls of the official code (the speed baseline)."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = enabled


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm ``create_optimizer_v2`` (no weight decay on norms, biases and ``no_weight_decay()`` parameters)."""
    extra: Dict[str, Any] = ({"eps": config.opt_eps} if "adam" in config.opt else
                             {"momentum": config.momentum} if config.opt in ("sgd", "momentum") else {})
    if config.fast_kernels and config.opt.lower() in FUSED_OPTIMIZERS:  # one fused kernel instead of a loop
        extra["fused"] = True
    return create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay, **extra)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """timm ``create_scheduler_v2``, stepped per update (``step_update``) and per epoch (``step``)."""
    scheduler, _ = create_scheduler_v2(optimizer, sched=config.sched, num_epochs=config.epochs,
                                       warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
                                       min_lr=config.min_lr, step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)
    return scheduler


def make_scaler(config: TrainConfig, ctx: DistContext):
    """A gradient scaler for fp16 autocast on CUDA; None otherwise (bf16 and fp32 need none)."""
    use = config.amp and ctx.device.type == "cuda" and (config.amp_dtype or "float16") == "float16"
    return NativeScaler(device="cuda") if use else None


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


def check_finite(loss: float, epoch: int, step: int, run: RunDir) -> None:
    """Stop on a NaN/inf loss, naming the step; the last good checkpoint stays as it is."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at epoch {epoch + 1}, step {step + 1}: stopping; the last "
                                 f"good checkpoint ({run.pointer('last') or 'none yet'}) is intact")


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                   config: TrainConfig) -> None:
    """Backward, optional gradient clipping, optimiser step (through the scaler for fp16)."""
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
