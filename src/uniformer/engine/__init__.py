"""Training engine: options, one training loop for every task, run directories, metrics, inference, torchrun."""
from .classification import evaluate_checkpoint
from .config import TrainConfig
from .fit import train

__all__ = ["TrainConfig", "train", "evaluate_checkpoint"]
