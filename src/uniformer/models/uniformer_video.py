"""Video UniFormer (ICLR 2022): the image classes with ``dims=3`` — same blocks, 3-D kernels — and their timm
registration. Each checkpoint tag records its evaluation protocol (frames, stride, sampler, views) and label set.
"""
from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Dict, Optional, Sequence, Tuple

from timm.models import generate_default_cfgs, register_model

from .uniformer import ORIGIN, UniFormer, create_uniformer
from .uniformer_light import UniFormerLight

__all__ = ["video_cfg", "video_protocol", "kinetics400_classes", "kinetics600_classes", "VIDEO_MEAN", "VIDEO_STD",
           "HUB_VIDEO"]

VIDEO_MEAN = (0.45, 0.45, 0.45)
VIDEO_STD = (0.225, 0.225, 0.225)
PAPER_VIDEO = "arXiv:2201.04676"
HUB_VIDEO = "Sense-X/uniformer_video"  # the authors' Hugging Face repository of raw .pth video checkpoints
KINETICS600_FILE = "kinetics600_classes.txt"  # package data beside this module


def kinetics400_classes() -> Tuple[str, ...]:
    """The 400 Kinetics-400 class names in the order of the official labels (alphabetical; torchvision's list)."""
    from torchvision.models._meta import _KINETICS400_CATEGORIES

    return tuple(_KINETICS400_CATEGORIES)


@functools.lru_cache(maxsize=None)
def kinetics600_classes() -> Tuple[str, ...]:
    """The 600 Kinetics-600 class names in the order of the official labels (alphabetical), read from the package
    data file ``kinetics600_classes.txt``. Raises ``RuntimeError`` if the installed file is missing or incomplete."""
    try:
        text = resources.files(__package__).joinpath(KINETICS600_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuntimeError(f"{KINETICS600_FILE} is missing from the uniformer.models package: reinstall uniformer "
                           "(it is package data)") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 600 or len(set(names)) != 600:
        raise RuntimeError(f"{KINETICS600_FILE} in uniformer.models has {len(set(names))} distinct names, expected 600: "
                           "reinstall uniformer")
    return names


def video_cfg(
    num_classes: int, frames: int, stride: int, sampler: str, views: str, head_dim: int, size: int = 224,
    label_names: Optional[Sequence[str]] = None, first_conv: str = "patch_embed1.proj",
    classifier: Any = "head", filename: str = "", **kwargs: Any,
) -> Dict[str, Any]:
    """Pretrained config of one official video checkpoint; the protocol lives in ``notes`` (see video_protocol).

    ``filename`` names the checkpoint in the authors' Hub repository (:data:`HUB_VIDEO`), so that
    ``pretrained=True`` downloads it (or reads it from the Hugging Face cache offline); without it the weights are
    loaded from a local file (``checkpoint_path=``).
    """
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label names for a {num_classes}-class checkpoint")
    cfg = dict(
        num_classes=num_classes,
        input_size=(3, size, size),  # timm's (C, H, W); the frame count is in the notes (video_protocol)
        fixed_input_size=False,
        crop_pct=1.0,
        interpolation="bilinear",
        mean=VIDEO_MEAN,
        std=VIDEO_STD,
        first_conv=first_conv,
        classifier=classifier,
        license="mit",
        paper_ids=PAPER_VIDEO,
        origin_url=ORIGIN,
        notes=(f"head_dim={head_dim}", f"frames={frames}", f"stride={stride}", f"sampler={sampler}", f"views={views}"),
        label_names=tuple(label_names) if label_names else None,
    )
    if filename:
        cfg.update(hf_hub_id=HUB_VIDEO, hf_hub_filename=filename)
    cfg.update(kwargs)
    return cfg


def video_protocol(pretrained_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Frames, stride, sampler and views recorded in a video tag's notes (defaults: 16 frames, stride 4, dense, 1x1)."""
    proto: Dict[str, Any] = dict(frames=16, stride=4, sampler="dense", views="1x1")
    for note in pretrained_cfg.get("notes") or ():
        key, _, value = str(note).partition("=")
        if key in ("frames", "stride"):
            proto[key] = int(value)
        elif key in ("sampler", "views"):
            proto[key] = value
    return proto


def _standard_tags(size: str, head_dim: int) -> Dict[str, Dict[str, Any]]:
    """Tags of ``uniformer_video_{size}``, each naming its official file (``uniformer_{size}_…``):

    - ``k400_{T}x{τ}`` / ``k600_{T}x{τ}``: Kinetics, T frames at stride τ (dense sampling, 4 clips × 1 crop), with the
      Kinetics class names;
    - ``ssv{1,2}_{T}_prek{400,600}``: Something-Something V1/V2 (174 classes, T segments, 1 clip × 3 crops),
      fine-tuned from the Kinetics-400 or -600 model named by the tag (different weights, different accuracy).
    """
    k400, k600 = kinetics400_classes(), kinetics600_classes()
    tags = {}
    for frames, stride in ((16, 4), (8, 8), (16, 8), (32, 4)):
        tags[f"k400_{frames}x{stride}"] = video_cfg(400, frames, stride, "dense", "4x1", head_dim, label_names=k400,
                                                    filename=f"uniformer_{size}_k400_{frames}x{stride}.pth")
    for frames, stride in ((16, 4), (16, 8), (32, 4)):
        tags[f"k600_{frames}x{stride}"] = video_cfg(600, frames, stride, "dense", "4x1", head_dim, label_names=k600,
                                                    filename=f"uniformer_{size}_k600_{frames}x{stride}.pth")
    for version in (1, 2):
        for frames in (16, 32):
            for source in (400, 600):
                clip = "" if frames == 16 else f"_{frames}"  # official names mark only the 32-frame files
                tags[f"ssv{version}_{frames}_prek{source}"] = video_cfg(
                    174, frames, 1, "segment", "1x3", head_dim,
                    filename=f"uniformer_{size}_sthv{version}{clip}_prek{source}.pth",  # e.g. …_sthv2_32_prek600
                )
    return tags


def _light_tags(head_dim: int, settings: Sequence[tuple]) -> Dict[str, Dict[str, Any]]:
    """K400 tags of a light video model (sparse segment sampling, 1×1 view). No Hub file is recorded: the weights come
    from the official model zoo as local files (``checkpoint_path=``)."""
    k400 = kinetics400_classes()
    return {
        f"k400_{frames}f_{size}": video_cfg(
            400, frames, 1, "segment", "1x1", head_dim, size=size, label_names=k400,
            first_conv="patch_embed1.proj.0", classifier=("head", "head_cls"),
        )
        for frames, size in settings
    }


default_cfgs = generate_default_cfgs(
    {
        **{f"uniformer_video_small.{t}": c for t, c in _standard_tags("small", 64).items()},
        **{f"uniformer_video_base.{t}": c for t, c in _standard_tags("base", 64).items()},
        **{f"uniformer_video_xxs.{t}": c for t, c in _light_tags(
            28, ((16, 160), (4, 128), (4, 160), (8, 128), (8, 160), (16, 128), (32, 160))).items()},
        **{f"uniformer_video_xs.{t}": c for t, c in _light_tags(32, ((32, 192),)).items()},
    }
)

MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    "uniformer_video_small": dict(depth=(3, 4, 8, 3), embed_dim=(64, 128, 320, 512), head_dim=64, dims=3),
    "uniformer_video_base": dict(depth=(5, 8, 20, 7), embed_dim=(64, 128, 320, 512), head_dim=64, dims=3),
    "uniformer_video_xxs": dict(depth=(2, 5, 8, 2), embed_dim=(56, 112, 224, 448), head_dim=28, mlp_ratio=3.0, dims=3),
    "uniformer_video_xs": dict(depth=(3, 5, 9, 3), embed_dim=(64, 128, 256, 512), head_dim=32, mlp_ratio=3.0, dims=3),
}


def _build(name: str, pretrained: bool, kwargs: Dict[str, Any], model_cls: type = UniFormer):
    # no dense video backbone: features_only uses timm's wrapper over forward_intermediates (NCTHW maps)
    return create_uniformer(name, pretrained, model_cls=model_cls, dense_cls=None, **dict(MODEL_ARGS[name], **kwargs))


@register_model
def uniformer_video_small(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Video UniFormer-S (head_dim 64): 21.4 M params (K400), 41.76 GFLOPs per 16×224² view."""
    return _build("uniformer_video_small", pretrained, kwargs)


@register_model
def uniformer_video_base(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Video UniFormer-B (head_dim 64): 49.8 M params (K400), 96.74 GFLOPs per 16×224² view."""
    return _build("uniformer_video_base", pretrained, kwargs)


@register_model
def uniformer_video_xxs(pretrained: bool = False, **kwargs: Any) -> UniFormerLight:
    """Light video UniFormer-XXS (hourglass, head_dim 28): 9.8 M params (K400)."""
    return _build("uniformer_video_xxs", pretrained, kwargs, UniFormerLight)


@register_model
def uniformer_video_xs(pretrained: bool = False, **kwargs: Any) -> UniFormerLight:
    """Light video UniFormer-XS (hourglass, head_dim 32): 16.1 M params (K400)."""
    return _build("uniformer_video_xs", pretrained, kwargs, UniFormerLight)
