"""The task interface of the training loop: what :func:`~uniformer.engine.fit.fit` asks of image classification,
video classification (:mod:`~uniformer.engine.classification`), segmentation, detection and pose
(:mod:`~uniformer.engine.dense`). The loop owns everything else: seeding, the sampler and loaders, the optimiser and
schedule, mixed precision, EMA, DistributedDataParallel, progress, the all-reduce of the epoch's numbers, the
checkpoints, resume and the skipped bad samples.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .config import TrainConfig
from .distributed import DistContext
from .loaders import to_device

__all__ = ["Task", "Setup", "Step", "autocast_context"]


class Setup(NamedTuple):
    """What a task builds for a training: the model (on the CPU, before any checkpoint is loaded into it), the two
    datasets, the output names (classes; joints for pose) and the preprocessing recorded in every checkpoint's
    ``config.json`` (None: the model's own)."""

    model: nn.Module
    train_set: Dataset
    val_set: Dataset
    classes: List[str]
    data_config: Optional[Dict[str, Any]] = None


class Step(NamedTuple):
    """One training batch: its loss, the number of samples it held and how many of them the model classified right
    (tasks that report a training accuracy)."""

    loss: torch.Tensor
    count: int
    correct: int = 0


def autocast_context(config: TrainConfig, device: torch.device) -> ContextManager:
    """``--amp``: autocast in ``--amp-dtype`` (default fp16 on CUDA, bf16 elsewhere); a no-op context otherwise."""
    if not config.amp:
        return nullcontext()
    dtype = getattr(torch, config.amp_dtype) if config.amp_dtype else (
        torch.float16 if device.type == "cuda" else torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype)


class Task(ABC):
    """A training task. ``config`` holds the run's options. ``metric`` (a key of :meth:`validate`'s metrics, higher
    is better) picks the ``best`` checkpoint and is saved in ``training_state.pt`` as ``best_key``. The class
    attributes tune the loop: ``memory_format`` (``--channels-last``), ``collate_fn`` and ``even_batches`` (the
    training loader), ``find_unused_parameters`` (DistributedDataParallel), ``rate_digits`` (images/s printed)."""

    name = ""
    metric = ""
    best_key = "best_metric"
    memory_format = torch.channels_last
    collate_fn: Optional[Callable] = None
    find_unused_parameters = False
    rate_digits = 1
    config: TrainConfig

    @property
    def even_batches(self) -> bool:
        """Whether training batches must have an even size (Mixup/CutMix)."""
        return False

    # ---------------------------------------------------------------------------------------------- building
    @abstractmethod
    def build(self, ctx: DistContext) -> Setup:
        """The datasets and the model for :attr:`config`."""

    @abstractmethod
    def init_weights(self, model: nn.Module, path: str, log: Callable[[str], None]) -> None:
        """``--init-checkpoint``: start ``model`` from the weights at ``path``."""

    @abstractmethod
    def load_weights(self, model: nn.Module, path: Any) -> None:
        """Load a checkpoint of this run (resume) into ``model``."""

    def prepare(self, model: nn.Module) -> None:
        """Switch training options on in the built model (gradient checkpointing, training outputs)."""

    def headline(self, setup: Setup, params: int) -> str:
        """The first line of a training: what is trained on what (the loop adds processes, device and folder)."""
        return f"training {self.config.model} ({params / 1e6:.2f} M params) on {self.config.data}"

    # -------------------------------------------------------------------------------------------------- steps
    def batch(self, batch: Any, device: torch.device) -> Any:
        """A training batch made ready for :meth:`loss` on ``device`` (outside autocast)."""
        return to_device(batch, device)

    @abstractmethod
    def loss(self, train_model: nn.Module, model: nn.Module, batch: Any) -> Step:
        """The loss of one training batch (under autocast); ``train_model`` is ``model`` or its DDP wrapper."""

    def progress(self, loss: float, correct: float, seen: float, seconds: float, world_size: int) -> Dict[str, str]:
        """The progress bar's postfix for the running training loss / accuracy."""
        return dict(loss=f"{loss:.4f}")

    # ----------------------------------------------------------------------------------------------- epochs
    @abstractmethod
    def validate(self, model: nn.Module, ctx: DistContext) -> Tuple[Dict[str, float], int]:
        """(metrics over the whole validation set, bad samples skipped), summed over all ranks."""

    def train_columns(self, loss: float, correct: float, seen: float) -> Dict[str, float]:
        """The training columns of ``metrics.csv`` after ``train_loss``."""
        return {}

    def val_columns(self, val: Dict[str, float]) -> Dict[str, float]:
        """The validation columns of ``metrics.csv``."""
        return {f"val_{k}": float(v) for k, v in val.items()}

    @abstractmethod
    def epoch_text(self, row: Dict[str, float], val: Dict[str, float], ema_val: Optional[Dict[str, float]]) -> str:
        """The epoch summary between ``epoch N/M`` and the learning rate."""

    def best_text(self, best: float) -> str:
        """The best validation score as the summaries print it."""
        return f"{self.metric} {best:.2f}"

    def saved_options(self) -> Dict[str, Any]:
        """Entries saved beside the options in the training state (what resuming rebuilds the task from)."""
        return {}
