"""Loading a trained, saved or official model for inference — what ``predict``, ``eval`` and ``export`` share.

:func:`load_model_for_inference` takes a run directory (its ``best`` checkpoint), a saved folder (``config.json`` +
``model.safetensors``) or a weights file with a model name. It never changes the class count silently: a
``num_classes`` other than the checkpoint's is refused, because the classifier would be re-initialised at random.
``ema=True`` loads the exponential-moving-average weights instead: a run trained with ``--model-ema`` keeps them under
the ``ema`` key of each checkpoint's ``training_state.pt``; official files keep them under ``model_ema`` /
``state_dict_ema``.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .._io import atomic_path
from ..models.convert import unwrap_state_dict
from ..models.factory import create_model
from ..models.weights import SAFE_GLOBALS, load_checkpoint, read_checkpoint, read_model_config
from ..tasks.build import load_pretrained
from ..data.datasets import IMG_EXTENSIONS
from ..models.uniformer_video import video_protocol
from ..tasks.official import from_official_config
from .rundir import TRAINING_STATE, resolve_checkpoint_path

__all__ = ["default_input", "load_model_for_inference", "ema_state_dict", "official_model", "image_files",
           "check_predictions_path", "write_predictions", "class_names", "classify_images", "video_logits"]

PathLike = Union[str, os.PathLike]


def default_input(model: nn.Module, side: Optional[int] = None) -> Tuple[int, ...]:
    """(C, H, W) — or (C, T, H, W) for video, T from the checkpoint tag's protocol — at the model's default
    resolution (``pretrained_cfg["input_size"]``); ``side`` overrides the square side H = W."""
    size = model.pretrained_cfg["input_size"]  # (C, H, W), video (C, T, H, W)
    c, h = size[0], side or size[-1]
    if getattr(model, "dims", 2) == 3:
        return (c, video_protocol(model.pretrained_cfg).frames, h, h)
    return (c, h, h)


def _check_classes(requested: Optional[int], saved: Optional[int], path: Path) -> None:
    """Refuse a class count other than the checkpoint's: the classifier would be re-initialised at random."""
    if requested is None or requested == saved:
        return
    if saved is None:
        raise ValueError(f"--num-classes {requested}: {path} has no classifier head, so {requested} classes would be "
                         "randomly initialised; drop --num-classes")
    raise ValueError(f"--num-classes {requested} does not match the {saved} classes of {path}: the class head would "
                     "be re-initialised with random weights; drop --num-classes (it is read from the checkpoint)")


def _head_classes(state_dict: Dict[str, torch.Tensor]) -> Optional[int]:
    weight = state_dict.get("head.weight")
    return int(weight.shape[0]) if weight is not None else None


def ema_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """The EMA weights kept with a run checkpoint (``ema`` in the ``training_state.pt`` beside ``path``: a run
    directory — its best checkpoint —, a checkpoint folder or a file in it), with the ``module.`` prefix of timm's ``ModelEmaV3`` removed. ``ValueError`` naming the
    file when there are none (the run was trained without ``--model-ema``, or ``path`` is not a run checkpoint)."""
    path = resolve_checkpoint_path(path)
    state_file = (path if path.is_dir() else path.parent) / TRAINING_STATE
    if not state_file.is_file():
        raise ValueError(f"--ema: {path} has no EMA weights (a run checkpoint trained with --model-ema keeps them in "
                         f"its {TRAINING_STATE}); drop --ema")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling and I/O errors of every kind: one line naming the file
        raise ValueError(f"--ema: cannot read {state_file}: {type(e).__name__}: {e}") from None
    ema = state.get("ema") if isinstance(state, dict) else None
    if not ema:
        raise ValueError(f"--ema: {state_file} has no EMA weights (the run was trained without --model-ema); drop "
                         "--ema")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in ema.items()}


def _load_strict(model: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or mismatched:
        example = (missing + unexpected + mismatched)[0]
        raise ValueError(f"{what} do not match {type(model).__name__}: {len(missing)} missing, {len(unexpected)} "
                         f"unexpected, {len(mismatched)} mismatched key(s) (e.g. {example})")
    model.load_state_dict(state)


def load_model_for_inference(model_name: Optional[str], checkpoint: PathLike, num_classes: Optional[int] = None,
                             ema: bool = False) -> nn.Module:
    """Build a model from a saved folder or run directory (``config.json``), or from ``model_name`` + an official or
    own weights file, and load its weights (the EMA weights with ``ema``).

    ``num_classes`` only confirms the checkpoint's class count: any other value is a ``ValueError`` naming both
    counts (loading would re-initialise the classifier at random). Missing files are ``FileNotFoundError``; a weights
    file without ``config.json`` and without ``model_name``, or ``ema`` without EMA weights, is a ``ValueError``."""
    path = resolve_checkpoint_path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = read_model_config(path)
    if config is not None and (model_name is None or model_name.split(".")[0] == config["architecture"]):
        saved = config.get("num_classes")
        _check_classes(num_classes, None if saved is None else int(saved), path)
        model = load_pretrained(path)
        if ema:
            _load_strict(model, ema_state_dict(path), f"the EMA weights of {path}")
        return model
    if model_name is None:
        raise ValueError(f"{path} has no config.json beside it: pass --model NAME")
    raw = read_checkpoint(path)
    try:
        state, _ = unwrap_state_dict(raw, use_ema=ema)
    except ValueError as e:
        raise ValueError(f"--ema: {path}: {e}" if ema else f"{path}: {e}") from None
    saved = _head_classes(state)
    _check_classes(num_classes, saved, path)
    model = create_model(model_name, **({} if saved is None else {"num_classes": saved}))
    load_checkpoint(model, raw, use_ema=True if ema else None)
    return model


def official_model(config: PathLike, checkpoint: PathLike) -> nn.Module:
    """The official dense model of an official mmseg / mmdet / mmpose ``config`` (a file or its name) with the
    official ``checkpoint`` (.pth) loaded strictly; ``FileNotFoundError`` naming a missing checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path} (a .pth file as the official repository "
                                "publishes it)")
    return from_official_config(config, path)


def image_files(paths: Sequence[PathLike], recursive: bool = False) -> List[str]:
    """The images to predict: files as given; a folder becomes the image files directly inside it (``recursive``:
    in all its sub-folders too), sorted by path, hidden files skipped. ``ValueError`` for a folder without images."""
    files: List[str] = []
    for item in paths:
        folder = Path(item)
        if not folder.is_dir():
            files.append(str(item))
            continue
        found = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                       if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not found:
            raise ValueError(f"folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)})"
                             + ("" if recursive else "; add --recursive to search its sub-folders"))
        files += [str(p) for p in found]
    return files


PREDICTION_FORMATS = (".json", ".csv")


def check_predictions_path(path: PathLike) -> Path:
    """``--output`` of ``predict``: a ``.json`` or ``.csv`` file in an existing folder (checked before predicting)."""
    path = Path(path)
    if path.suffix.lower() not in PREDICTION_FORMATS:
        raise ValueError(f"--output {path}: the predictions file must end in .json or .csv")
    if path.is_dir() or not path.parent.is_dir():
        raise ValueError(f"--output {path}: not a file in an existing folder")
    return path


def _csv_rows(records: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[Dict[str, Any]]]:
    """One CSV row per image: classification ``image, label_1, probability_1, index_1, …``; dense tasks ``image,
    overlay, task, count, summary``."""
    rows: List[Dict[str, Any]] = []
    header: List[str] = []
    for record in records:
        row: Dict[str, Any] = {"image": record["image"]}
        if "top" in record:
            for rank, entry in enumerate(record["top"], 1):
                row.update({f"label_{rank}": entry["label"], f"probability_{rank}": entry["probability"],
                            f"index_{rank}": entry["index"]})
        else:
            row.update({k: record.get(k) for k in ("overlay", "task", "count", "summary")})
        header += [k for k in row if k not in header]
        rows.append(row)
    return header, rows


def write_predictions(records: Sequence[Mapping[str, Any]], path: PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``predict``'s per-image ``records`` to ``path`` atomically: ``.json`` = ``{**meta, "predictions":
    records}``; ``.csv`` = one row per image (see :func:`_csv_rows`)."""
    path = check_predictions_path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps({**meta, "predictions": list(records)}, indent=1) + "\n"
    else:
        header, rows = _csv_rows(records)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- classification
def class_names(num_classes: int, labels_file: Optional[PathLike], saved: Optional[Sequence[str]]) -> List[str]:
    """Label names: ``labels_file`` (one name per line), else the names saved with the model, else ImageNet-1K for
    1000 classes, else ``class i``. ``ValueError`` for a labels file of another length."""
    if labels_file:
        path = Path(labels_file)
        if not path.is_file():
            raise FileNotFoundError(f"labels file not found: {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise ValueError(f"labels file {path} has {len(names)} names but the model has {num_classes} classes")
        return names
    if saved and len(saved) == num_classes:
        return list(saved)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def classify_images(model: nn.Module, images: Sequence[str], k: int,
                    side: Optional[int] = None) -> Iterator[Tuple[str, List[Tuple[float, int]]]]:
    """(image, [(probability, class index)] of the ``k`` most likely classes) per image, one at a time: each image
    resized and centre-cropped by timm's eval transform of the model's pretrained config (square ``side`` instead
    of its input size). ``model`` must be in eval mode."""
    from timm.data import create_transform, resolve_data_config

    from ..data import load_image

    overrides = {"input_size": (3, side, side)} if side else {}
    transform = create_transform(**resolve_data_config(overrides, model=model))
    for image in images:
        x = transform(load_image(image)).unsqueeze(0)
        with torch.inference_mode():
            probs = model(x).float().softmax(dim=-1)[0]
        top = probs.topk(k)
        yield image, list(zip(top.values.tolist(), top.indices.tolist()))


def video_logits(model: nn.Module, video: PathLike, *, frames: int, stride: int, sampler: str, size: int,
                 clips: int, crops: int, frame_template: str, frame_start: int) -> Tuple[torch.Tensor, float, List[float]]:
    """A video file or frame folder decoded into ``clips`` x ``crops`` views (the model's mean/std) and run through
    ``model`` (eval mode) clip by clip: ((1, clips x crops, K) logits, decode milliseconds, milliseconds per clip)."""
    import time

    from ..data.video import load_video_views

    cfg = model.pretrained_cfg
    t0 = time.perf_counter()
    views = load_video_views(video, num_frames=frames, stride=stride, sampler=sampler, img_size=size, num_clips=clips,
                             num_crops=crops, mean=cfg["mean"], std=cfg["std"], frame_template=frame_template,
                             frame_start=frame_start)
    decode_ms = 1000 * (time.perf_counter() - t0)
    logits, clip_ms = [], []
    with torch.inference_mode():
        for clip in views.split(crops):  # one clip = its spatial crops, timed separately
            t0 = time.perf_counter()
            logits.append(model(clip))
            clip_ms.append(1000 * (time.perf_counter() - t0))
    return torch.cat(logits).unsqueeze(0), decode_ms, clip_ms
