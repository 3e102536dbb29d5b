"""torchrun integration: process-group setup from the environment, rank helpers, metric reduction (timm's
``reduce_tensor``) and BatchNorm statistics shared from rank 0 (timm's ``distribute_bn``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Sequence

import torch
import torch.distributed as dist
from timm.utils import distribute_bn, reduce_tensor
from torch.utils.data import Sampler

__all__ = ["DistContext", "init_distributed", "resolve_device", "ShardSampler", "all_reduce_sum", "gather"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_bn(self, module: torch.nn.Module) -> None:
        """Copy rank 0's BatchNorm running statistics to every rank (timm's ``distribute_bn``), so that all ranks
        evaluate — and rank 0 saves — the same model. Without SyncBN each rank's statistics drift apart during
        training; the models have no other buffers that training changes."""
        if self.distributed:
            distribute_bn(module, self.world_size, reduce=False)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (a small picklable value) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this process's GPU if CUDA is available, else the CPU; ``cuda`` → the local rank's GPU."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; start gloo (CPU) or NCCL (CUDA) when world > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, dev)


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> List[float]:
    """Sum a few scalars over all ranks (float64, so counts stay exact; timm's ``reduce_tensor`` over n=1)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    if ctx.distributed:
        t = reduce_tensor(t, 1)
    return t.tolist()


def gather(items: List[Any], ctx: DistContext) -> List[Any]:
    """Concatenate a per-rank list over all ranks (every rank gets the whole list)."""
    if not ctx.distributed:
        return items
    parts: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r takes indices r, r+W, r+2W, … — every sample exactly once over all ranks (unlike
    ``DistributedSampler``, which pads with duplicates), so reduced metrics equal a single-process evaluation."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
