"""uniformer: UniFormer and Visual Transformer backbones, timm-native, loading the official checkpoints.

Importing the package registers every model with timm, so ``timm.create_model("uniformer_small")`` works too. This
module only gathers the public API; the code lives in the layers below (see README, "Layout").
"""
from __future__ import annotations

from importlib.metadata import version as _version

from .fast import optimize_for_inference, reparameterize
from .flops import count_flops, count_params
from .models import UniFormer, UniFormerLight
from .models.factory import checkpoint_tags, create_model, list_models, resolve_model_name
from .models.weights import LoadResult, load_checkpoint, read_checkpoint, save_pretrained
from .tasks.build import load_pretrained

__version__ = _version("uniformer")
__all__ = [
    "create_model", "list_models", "load_checkpoint", "read_checkpoint", "LoadResult", "count_params",
    "count_flops", "UniFormer", "UniFormerLight", "resolve_model_name", "checkpoint_tags", "save_pretrained",
    "load_pretrained", "optimize_for_inference", "reparameterize",
]
