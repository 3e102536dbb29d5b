"""The model factory: names, tags and ``create_model`` over timm's registry (the architectures register themselves
when :mod:`uniformer.models` is imported)."""
from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Any, List, Optional, Union

import timm
import torch.nn as nn
from timm.models import get_arch_pretrained_cfgs, model_entrypoint, split_model_name_tag

from .weights import load_checkpoint

__all__ = ["create_model", "list_models", "resolve_model_name", "checkpoint_tags"]

PACKAGE = __name__.split(".")[0]  # "uniformer": the registered names are those whose entry points live under it


def list_models(pattern: str = "*", pretrained: bool = False) -> List[str]:
    """Names of the architectures this package registers; ``pretrained=True`` lists ``name.tag`` for every official
    checkpoint (tags whose files must be obtained by hand included), default tag first."""
    archs = [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith(PACKAGE + ".")]
    if not pretrained:
        return [n for n in archs if fnmatch.fnmatch(n, pattern)]
    names = [full for arch in archs for full in get_arch_pretrained_cfgs(arch)]
    return [n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(split_model_name_tag(n)[0], pattern)]


def checkpoint_tags(arch: str) -> List[str]:
    """Checkpoint tags of one architecture, default first (e.g. ``['in1k_224', 'in1k_128', …]``)."""
    return [full.split(".", 1)[1] for full in get_arch_pretrained_cfgs(arch)]


def resolve_model_name(name: str) -> str:
    """Return ``name`` if it is one of ours (optionally with a ``.tag``), else raise ``ValueError`` with suggestions."""
    arch, tag = split_model_name_tag(name)
    known = list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `uniformer models` to list them"
        raise ValueError(f"unknown model {name!r}{hint}")
    if tag and tag not in checkpoint_tags(arch):
        raise ValueError(f"unknown checkpoint tag {tag!r} for {arch}; available: {', '.join(checkpoint_tags(arch))}")
    return name


def create_model(
    model_name: str,
    pretrained: bool = False,
    checkpoint_path: Optional[Union[str, os.PathLike]] = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model by name, overriding architecture arguments with the official keyword names.

    ``checkpoint_path`` loads a local official or own checkpoint (any wrapper, ``.pth``/``.safetensors``) through
    :func:`load_checkpoint`; it works offline. ``pretrained=True`` downloads from the authors' hub repository.
    Example: ``create_model("uniformer_small", depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 128], head_dim=16,
    num_classes=10)``.
    """
    try:
        model = timm.create_model(resolve_model_name(model_name), pretrained=pretrained, **kwargs)
    except TypeError as e:  # an unknown keyword: name it without a traceback through timm's factory
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{model_name}: {str(e).split('.', 1)[-1].replace('__init__()', '').strip()}") from None
    except FileNotFoundError as e:  # huggingface_hub: not in the local cache and the Hub unreachable (or offline)
        if not (pretrained and type(e).__module__.startswith("huggingface_hub")):
            raise
        cfg = timm.models.get_pretrained_cfg(model_name)
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") \
            else ""
        raise FileNotFoundError(
            f"{model_name}: the pretrained weights {cfg.hf_hub_id}/{cfg.hf_hub_filename} are not in the local Hugging "
            f"Face cache and the Hub cannot be reached{offline}; download them once online, or pass "
            f"checkpoint_path= a local copy") from e
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model
