"""Video UniFormer (ICLR 2022): the image classes with ``dims=3`` — same blocks, 3-D kernels — and their timm
registration. Each checkpoint tag has its evaluation protocol (:class:`VideoProtocol`: frames, stride, sampler, views;
the table :data:`VIDEO_PROTOCOLS`) and its label set.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from timm.models import generate_default_cfgs, register_model

from .uniformer import ORIGIN, UniFormer, create_uniformer
from .uniformer_light import UniFormerLight

__all__ = ["VideoProtocol", "VIDEO_PROTOCOLS", "PROTOCOL_KEY", "video_cfg", "video_protocol", "with_video_protocol",
           "kinetics400_classes", "kinetics600_classes", "VIDEO_MEAN", "VIDEO_STD", "HUB_VIDEO"]

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


@dataclass(frozen=True)
class VideoProtocol:
    """How a video checkpoint is evaluated (and, unless overridden, trained): clips of ``frames`` frames taken
    ``stride`` frames apart by the ``sampler`` (``dense``: Kinetics; ``segment``: TSN / Something-Something), scored
    over ``views`` = CLIPSxCROPS."""

    frames: int = 16
    stride: int = 4
    sampler: str = "dense"
    views: str = "1x1"

    @property
    def notes(self) -> Tuple[str, ...]:
        """The protocol as pretrained-cfg notes (``frames=16``, ``stride=4``, …): what ``uniformer info`` shows and
        what a folder saved for timm keeps (timm's pretrained cfg has no field of our own)."""
        return tuple(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))

    @classmethod
    def from_notes(cls, notes: Optional[Iterable[Any]]) -> Optional["VideoProtocol"]:
        """The protocol written as notes (folders saved before config.json had a ``video_protocol`` entry, folders
        read by timm's ``local-dir:``), defaults for fields not noted; None when the notes carry none of it."""
        values: Dict[str, Any] = {}
        for note in notes or ():
            key, _, value = str(note).partition("=")
            if key in ("frames", "stride"):
                values[key] = int(value)
            elif key in ("sampler", "views"):
                values[key] = value
        return cls(**values) if values else None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "VideoProtocol":
        """The protocol of a ``video_protocol`` entry of a saved ``config.json``."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def overridden(self, frames: Optional[int] = None, stride: Optional[int] = None, sampler: Optional[str] = None,
                   views: Optional[str] = None) -> "VideoProtocol":
        """This protocol with the given (not None / empty) options in place of its own: a checkpoint's protocol as
        ``--num-frames``, ``--frame-stride``, ``--sampler`` and ``--views`` change it."""
        given = dict(frames=frames, stride=stride, sampler=sampler, views=views)
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v})


PROTOCOL_KEY = "video_protocol"  # a model's VideoProtocol in its pretrained_cfg, and its entry in a saved config.json

_KINETICS = "dense", "4x1"  # 4 clips x 1 crop
_SSV = "segment", "1x3"  # 1 clip x 3 crops
_STANDARD: Dict[str, VideoProtocol] = {  # uniformer_video_small and _base
    **{f"k400_{t}x{s}": VideoProtocol(t, s, *_KINETICS) for t, s in ((16, 4), (8, 8), (16, 8), (32, 4))},
    **{f"k600_{t}x{s}": VideoProtocol(t, s, *_KINETICS) for t, s in ((16, 4), (16, 8), (32, 4))},
    **{f"ssv{v}_{t}_prek{k}": VideoProtocol(t, 1, *_SSV) for v in (1, 2) for t in (16, 32) for k in (400, 600)},
}
_LIGHT_SIZES = {  # the light models' K400 tags: (frames, side), sparse segment sampling, 1x1 view
    "uniformer_video_xxs": ((16, 160), (4, 128), (4, 160), (8, 128), (8, 160), (16, 128), (32, 160)),
    "uniformer_video_xs": ((32, 192),),
}
VIDEO_PROTOCOLS: Dict[str, VideoProtocol] = {  # "architecture.tag" -> the protocol of that official checkpoint
    **{f"uniformer_video_{size}.{tag}": p for size in ("small", "base") for tag, p in _STANDARD.items()},
    **{f"{arch}.k400_{t}f_{side}": VideoProtocol(t, 1, "segment", "1x1") for arch, sizes in _LIGHT_SIZES.items()
       for t, side in sizes},
}


def video_cfg(
    num_classes: int, protocol: VideoProtocol, head_dim: int, size: int = 224,
    label_names: Optional[Sequence[str]] = None, first_conv: str = "patch_embed1.proj",
    classifier: Any = "head", filename: str = "", **kwargs: Any,
) -> Dict[str, Any]:
    """Pretrained config of one official video checkpoint; its ``notes`` show the ``protocol``.

    ``filename`` names the checkpoint in the authors' Hub repository (:data:`HUB_VIDEO`), so that
    ``pretrained=True`` downloads it (or reads it from the Hugging Face cache offline); without it the weights are
    loaded from a local file (``checkpoint_path=``).
    """
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label names for a {num_classes}-class checkpoint")
    cfg = dict(
        num_classes=num_classes,
        input_size=(3, size, size),  # timm's (C, H, W); the frame count is the protocol's
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
        notes=(f"head_dim={head_dim}", *protocol.notes),
        label_names=tuple(label_names) if label_names else None,
    )
    if filename:
        cfg.update(hf_hub_id=HUB_VIDEO, hf_hub_filename=filename)
    cfg.update(kwargs)
    return cfg


def video_protocol(pretrained_cfg: Mapping[str, Any]) -> VideoProtocol:
    """The protocol of a video model's pretrained cfg: its own (:data:`PROTOCOL_KEY`, set by training and by
    loading a saved folder), else the one its notes record (folders saved by older versions or read through timm),
    else its tag's (:data:`VIDEO_PROTOCOLS`), else the default (16 frames, stride 4, dense, 1x1)."""
    own = pretrained_cfg.get(PROTOCOL_KEY)
    if own is not None:
        return own if isinstance(own, VideoProtocol) else VideoProtocol.from_dict(own)
    noted = VideoProtocol.from_notes(pretrained_cfg.get("notes"))
    if noted is not None:
        return noted
    name = f"{pretrained_cfg.get('architecture')}.{pretrained_cfg.get('tag')}"
    return VIDEO_PROTOCOLS.get(name, VideoProtocol())


def with_video_protocol(pretrained_cfg: Mapping[str, Any], protocol: VideoProtocol, head_dim: int) -> Dict[str, Any]:
    """``pretrained_cfg`` recording ``protocol`` as the model's own, with notes that show it."""
    return dict(pretrained_cfg, **{PROTOCOL_KEY: protocol}, notes=(f"head_dim={head_dim}", *protocol.notes))


def _standard_tags(size: str, head_dim: int) -> Dict[str, Dict[str, Any]]:
    """Tags of ``uniformer_video_{size}``, each naming its official file (``uniformer_{size}_…``):

    - ``k400_{T}x{τ}`` / ``k600_{T}x{τ}``: Kinetics, T frames at stride τ (dense sampling, 4 clips × 1 crop), with the
      Kinetics class names;
    - ``ssv{1,2}_{T}_prek{400,600}``: Something-Something V1/V2 (174 classes, T segments, 1 clip × 3 crops),
      fine-tuned from the Kinetics-400 or -600 model named by the tag (different weights, different accuracy).
    """
    k400, k600 = kinetics400_classes(), kinetics600_classes()
    tags = {}
    for tag, protocol in _STANDARD.items():
        if tag.startswith("k"):
            classes = k400 if tag.startswith("k400") else k600
            tags[tag] = video_cfg(len(classes), protocol, head_dim, label_names=classes,
                                  filename=f"uniformer_{size}_{tag}.pth")
        else:  # official names mark only the 32-frame files, e.g. …_sthv2_32_prek600
            version, frames, source = tag.split("_")
            clip = "" if frames == "16" else f"_{frames}"
            tags[tag] = video_cfg(174, protocol, head_dim, filename=f"uniformer_{size}_sthv{version[3:]}{clip}_{source}.pth")
    return tags


def _light_tags(arch: str, head_dim: int) -> Dict[str, Dict[str, Any]]:
    """K400 tags of a light video model (sparse segment sampling, 1×1 view). No Hub file is recorded: the weights come
    from the official model zoo as local files (``checkpoint_path=``)."""
    k400 = kinetics400_classes()
    return {
        f"k400_{frames}f_{size}": video_cfg(
            400, VIDEO_PROTOCOLS[f"{arch}.k400_{frames}f_{size}"], head_dim, size=size, label_names=k400,
            first_conv="patch_embed1.proj.0", classifier=("head", "head_cls"),
        )
        for frames, size in _LIGHT_SIZES[arch]
    }


default_cfgs = generate_default_cfgs(
    {
        **{f"uniformer_video_small.{t}": c for t, c in _standard_tags("small", 64).items()},
        **{f"uniformer_video_base.{t}": c for t, c in _standard_tags("base", 64).items()},
        **{f"uniformer_video_xxs.{t}": c for t, c in _light_tags("uniformer_video_xxs", 28).items()},
        **{f"uniformer_video_xs.{t}": c for t, c in _light_tags("uniformer_video_xs", 32).items()},
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
