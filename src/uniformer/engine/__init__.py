"""Training engine: options, loops, crash-safe checkpoints, metrics, torchrun integration."""
from .config import TrainConfig
from .trainer import evaluate_checkpoint, train

__all__ = ["TrainConfig", "train", "evaluate_checkpoint"]
