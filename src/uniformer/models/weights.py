"""Weights in and out: reading files safely, loading them into models with a loud key report, and saving a model
as a folder (``config.json`` + ``model.safetensors``) that timm and the Hugging Face Hub read.

Every file is read with ``torch.load(weights_only=True)`` (pickles that would run code are refused) or with
safetensors. Official training checkpoints also pickle an ``argparse.Namespace``; it is allow-listed because it
only holds plain values.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn

from .._io import PathLike, atomic_path
from .convert import convert_state_dict
from .uniformer_video import PROTOCOL_KEY, video_protocol

__all__ = [
    "read_checkpoint", "load_checkpoint", "LoadResult", "save_pretrained", "read_model_config", "load_task_weights",
    "HUB_FILES", "SAFE_GLOBALS",
]

_logger = logging.getLogger("uniformer")

SAFE_GLOBALS = [argparse.Namespace]
# The files of a saved model folder (or a run's best/ and last/) that make a timm model repository on the Hugging Face
# Hub, as timm's own save_for_hf writes it (+ an optional model card). Pass them as ``allow_patterns`` to
# ``huggingface_hub.upload_folder``: a run checkpoint also holds training_state.pt (optimizer, RNG), which does not
# belong there.
HUB_FILES = ("config.json", "model.safetensors", "README.md")


class LoadResult(NamedTuple):
    """Outcome of :func:`load_checkpoint`: keys the model kept at init, keys the checkpoint had in excess, heads and
    tail keys dropped, and 2-D kernels inflated to 3-D as (key, temporal size)."""

    missing_keys: List[str]
    unexpected_keys: List[str]
    dropped_heads: List[str]
    dropped_tail: List[str]
    inflated: List[Any] = []


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a ``.pth``/``.pt``/``.bin`` (weights-only unpickling) or ``.safetensors`` file into a dict on the CPU.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything unreadable
    (truncated or corrupt files, pickles that contain code or arbitrary objects).
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / "model.safetensors"
        if not candidate.is_file():
            raise FileNotFoundError(f"checkpoint directory {path} has no model.safetensors")
        path = candidate
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"cannot read safetensors checkpoint {path}: {e}") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"refusing to load {path}: it is not a plain weights file (weights-only unpickling failed: {first}). "
            f"Only tensors, containers and plain values are accepted; nothing in the file was executed"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"cannot read checkpoint {path}: the file is truncated or corrupt ({e})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def _short(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_dtypes(state_dict: Mapping[str, Any], target: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse integer / bool / complex tensors where the model has floating-point weights (``load_state_dict`` would
    silently cast them); floating-point tensors of another precision (fp16, bf16, fp64) are cast, with a log line."""
    bad, cast = [], {}
    for k, v in state_dict.items():
        if k not in target or not isinstance(v, torch.Tensor) or v.dtype == target[k].dtype:
            continue
        if target[k].is_floating_point() and not v.is_floating_point():
            bad.append(f"{k} (checkpoint {_dtype_name(v.dtype)} vs model {_dtype_name(target[k].dtype)})")
        elif target[k].is_floating_point():
            key = f"{_dtype_name(v.dtype)} to {_dtype_name(target[k].dtype)}"
            cast[key] = cast.get(key, 0) + 1
    if bad:
        raise ValueError(f"checkpoint does not match {what}: {len(bad)} dtype mismatch(es), non-floating-point tensors "
                         f"for floating-point weights: {_short(sorted(bad), 4)}")
    for key, n in cast.items():
        _logger.info("cast %d checkpoint tensor(s) from %s", n, key)


def load_checkpoint(
    model: nn.Module,
    source: Union[PathLike, Mapping[str, Any]],
    strict: bool = True,
    use_ema: Optional[bool] = None,
    allow_layer_scale_drop: bool = False,
) -> LoadResult:
    """Load official or our own weights into ``model``.

    ``source`` is a file path (``.pth``, ``.pt``, ``.safetensors``, or a directory with ``model.safetensors``) or an
    in-memory checkpoint in any official wrapper (``model``, ``state_dict``, ``model_state``; ``module.`` and
    ``backbone.`` prefixes). Classifier heads whose class count differs are dropped with a warning and keep their
    init. ``strict=True`` raises ``ValueError`` listing missing and unexpected keys. Layer-scale (γ) weights are never
    dropped silently: loading a layer-scale checkpoint into a model without layer scale fails unless
    ``allow_layer_scale_drop=True``. ``use_ema=None`` uses the EMA weights only for models whose official checkpoints
    were evaluated with EMA (the light models), when the file has them.
    """
    checkpoint = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    state_dict, report = convert_state_dict(checkpoint, model, use_ema=use_ema)
    model_keys = set(model.state_dict())
    gammas = sorted(k for k in state_dict if k not in model_keys and k.rsplit(".", 1)[-1].startswith("gamma_"))
    if gammas and not allow_layer_scale_drop:
        raise ValueError(
            f"checkpoint has layer-scale weights the model lacks ({_short(gammas, 4)}): build the layer-scale "
            f"variant (e.g. uniformer_base_ls) or pass allow_layer_scale_drop=True"
        )
    state_dict = {k: v for k, v in state_dict.items() if k not in gammas}
    target = model.state_dict()
    mismatched = [
        f"{k} (checkpoint {list(v.shape)} vs model {list(target[k].shape)})"
        for k, v in state_dict.items()
        if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: {len(mismatched)} shape mismatch(es): "
            f"{_short(mismatched, 4)}"
        )
    _check_dtypes(state_dict, target, type(model).__name__)
    if report.dropped_heads:
        _logger.warning(
            "checkpoint classifier has a different class count; re-initialised %s", _short(report.dropped_heads)
        )
    if report.dropped_tail:
        _logger.info("model has no such tail modules; skipped %s", _short(report.dropped_tail))
    if report.inflated:
        sizes: Dict[int, int] = {}
        for _, t in report.inflated:
            sizes[t] = sizes.get(t, 0) + 1
        by_size = ", ".join(f"{n} with temporal size {t}" for t, n in sorted(sizes.items()))
        _logger.info("inflated %d 2-D kernels to 3-D (repeated over time, divided by the size): %s",
                     len(report.inflated), by_size)
        for key, t in report.inflated:
            _logger.debug("inflated %s over %d frames", key, t)
    result = model.load_state_dict(state_dict, strict=False)
    allowed_missing = set(report.dropped_heads)
    init_only = tuple(getattr(model, "init_only_prefixes", ()))
    if init_only and not any(k.startswith(init_only) for k in state_dict):
        # e.g. the dense backbones' norm1..4, absent from ImageNet checkpoints: they keep their init (documented)
        kept = [k for k in result.missing_keys if k.startswith(init_only)]
        allowed_missing.update(kept)
        if kept:
            _logger.info("checkpoint has no %s keys; they keep their initial values", "/".join(init_only))
    missing = [k for k in result.missing_keys if k not in allowed_missing]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_short(unexpected)}")
        raise ValueError(f"checkpoint does not match {type(model).__name__}: " + "; ".join(parts))
    if missing or unexpected:
        _logger.warning("non-strict load: %d missing, %d unexpected keys", len(missing), len(unexpected))
    return LoadResult(missing, unexpected, report.dropped_heads, report.dropped_tail, report.inflated)


def _save_weights(model: nn.Module, directory: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(directory / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))


def save_pretrained(
    model: nn.Module,
    directory: PathLike,
    label_names: Optional[Sequence[str]] = None,
    data_config: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write ``model.safetensors`` and a timm-style ``config.json`` (architecture, model args incl. head_dim,
    preprocessing, label names; for video models the :class:`~uniformer.models.uniformer_video.VideoProtocol` as
    ``video_protocol``) into ``directory``; both files are replaced atomically. ``data_config`` overrides
    the recorded preprocessing (e.g. ``{"input_size": (3, 64, 64)}`` for a model trained at 64²).

    For a classifier, ``config.json`` is what timm's ``save_for_hf`` writes for the same model (``architecture``,
    ``num_classes``, ``num_features``, ``global_pool``, ``model_args``, ``pretrained_cfg``, ``label_names``) with the
    real head_dim in the notes, so the folder loads with :func:`load_pretrained`, ``uniformer predict --checkpoint
    DIR``, ``timm.create_model("local-dir:DIR", pretrained=True)`` (after ``import uniformer``) and, uploaded as is
    (:data:`HUB_FILES`), ``timm.create_model("hf-hub:USER/REPO", pretrained=True)``. A dense task model writes its
    own task config instead (``task``, backbone ``architecture``, heads): only :func:`load_pretrained` rebuilds it.
    """
    from timm.models._hub import save_config_for_hf

    directory = Path(directory)
    task_config = getattr(model, "task_config", None)
    if task_config is not None:  # a dense task model (uniformer.tasks.build): its own config, rebuilt by load_pretrained
        task_config = dict(task_config, label_names=list(label_names) if label_names is not None
                           else task_config.get("label_names"))
        _save_weights(model, directory)
        with atomic_path(directory / "config.json") as tmp:
            tmp.write_text(json.dumps(task_config, indent=2))
        return directory
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    notes = [str(n) for n in cfg.get("notes") or () if not str(n).startswith("head_dim=")]
    model_config: Dict[str, Any] = {"pretrained_cfg": {"notes": [f"head_dim={getattr(model, 'head_dim', None)}", *notes]}}
    if getattr(model, "dims", 2) == 3:  # video: the protocol as a typed entry (the notes keep showing it for timm)
        model_config[PROTOCOL_KEY] = video_protocol(cfg).to_dict()
    if PROTOCOL_KEY in cfg:  # not a timm pretrained-cfg field: timm sees the model without it
        model = copy.copy(model)
        model.pretrained_cfg = {k: v for k, v in cfg.items() if k != PROTOCOL_KEY}
    if label_names is not None:
        if len(label_names) != getattr(model, "num_classes", len(label_names)):
            raise ValueError(f"{len(label_names)} label names for a model with {model.num_classes} classes")
        # at the top level (timm's field) and in pretrained_cfg (where timm keeps the names of the classes a model
        # has; it drops a source checkpoint's names when the class count changed, hence num_classes here)
        model_config["label_names"] = list(label_names)
        model_config["pretrained_cfg"].update(label_names=list(label_names), num_classes=model.num_classes)
    _save_weights(model, directory)
    with atomic_path(directory / "config.json") as tmp:
        save_config_for_hf(model, str(tmp), model_config=model_config, data_config=data_config)
    return directory


def read_model_config(path: PathLike) -> Optional[Dict[str, Any]]:
    """The ``config.json`` of a saved model folder (or beside a weights file), or None if there is none."""
    path = Path(path)
    cfg_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse {cfg_file}: {e}") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise ValueError(f"{cfg_file} is not a model config (no 'architecture' entry)")
    return config


def load_task_weights(model: nn.Module, path: PathLike) -> None:
    """Strictly load a saved dense task model's weights (names as saved; no official-format conversion, which would
    keep only the backbone of a ``backbone.``-prefixed state dict)."""
    state = read_checkpoint(path)
    own = model.state_dict()
    mismatched = [f"{k} (checkpoint {list(v.shape)} vs model {list(own[k].shape)})" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        parts = [f"{len(x)} {what}: {_short(x, 4)}" for what, x in (("shape mismatch(es)", mismatched),
                 ("missing key(s)", missing), ("unexpected key(s)", unexpected)) if x]
        raise ValueError(f"{path} does not match its config.json ({type(model).__name__}): " + "; ".join(parts))
    _check_dtypes(state, own, f"{path} ({type(model).__name__})")
    model.load_state_dict(state)
