"""Data loaders of the engine: training batches over a ``DistributedSampler``, evaluation over every sample exactly
once, and bad samples (``--skip-bad``) dropped and counted on the way."""
from __future__ import annotations

import random
import warnings
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..data import DropBadCollate
from .config import TrainConfig
from .distributed import DistContext, ShardSampler, all_reduce_sum

__all__ = ["SkipBadLoader", "train_loader", "eval_loader", "seed_worker", "to_device"]


def seed_worker(worker_id: int) -> None:
    """NumPy and Python RNGs of a DataLoader worker follow torch's per-worker seed (timm augmentations use them)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensors in dicts, lists and tuples) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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
