"""Dense-prediction UniFormer backbones (TPAMI 2023 §dense): the classification classes without their tail, returning
LayerNorm-normalised stage maps at strides 4/8/16/32 (official keys ``norm1..norm4``), with window / hybrid attention
in stage 3 for large inputs.

Stage-3 attention (official keywords): default global; ``windows=True`` all blocks attend in ``window_size`` windows;
``hybrid=True`` makes block j global iff (j + 1) % 4 == 0 and windowed otherwise. The weights are the same in all
modes. Zero padding of incomplete windows is left unmasked (``window_mask=True`` masks it), as the published
numbers require.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..layers import ChannelLayerNorm
from .common import check_input_dtype
from .uniformer import BASE, SMALL, UniFormer, create_uniformer, image_cfg
from .uniformer_light import MODEL_ARGS as LIGHT_ARGS
from .uniformer_light import UniFormerLight

__all__ = ["UniFormerDense", "UniFormerLightDense"]


class DenseMixin:
    """Shared by the standard and light dense backbones: per-stage norms, ``out_indices``, ``frozen_stages``,
    ``norm_eval``, any input size with sides of at least 32 (odd sizes floor as in the official code), list output."""

    # Keys a classification checkpoint lacks; they keep their init (weight 1, bias 0) when loading ImageNet weights.
    init_only_prefixes: Tuple[str, ...] = ("norm1.", "norm2.", "norm3.", "norm4.")

    def __init__(self, *args: Any, windows: bool = False, hybrid: bool = False, window_size: int = 14,
                 window_mask: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, **kwargs: Any) -> None:
        if not out_indices or not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"out_indices must be a non-empty subset of (0, 1, 2, 3), got {tuple(out_indices)}")
        if not -1 <= frozen_stages <= 3:
            raise ValueError(f"frozen_stages must be in -1..3, got {frozen_stages}")
        self.windows, self.hybrid, self.window_size, self.window_mask = windows, hybrid, int(window_size), window_mask
        self.out_indices, self.frozen_stages, self.norm_eval = tuple(sorted(out_indices)), frozen_stages, norm_eval
        kwargs.pop("num_classes", None)  # no classifier (timm passes the cfg's class count)
        kwargs.pop("global_pool", None)
        super().__init__(*args, num_classes=0, **kwargs)
        self.out_channels = [self.embed_dim[i] for i in self.out_indices]
        self.feature_info = [self.feature_info[i] for i in self.out_indices]
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)
        if isinstance(self, UniFormerLight) and self.frozen_stages >= 2:
            self.cls_token.requires_grad_(False)  # enters at stage 3

    def _window_args(self, stage: int, index: int) -> Dict[str, Any]:
        if stage != 2 or not (self.windows or (self.hybrid and (index + 1) % 4 != 0)):
            return {}
        return dict(window_size=self.window_size, window_mask=self.window_mask)

    def _make_tail(self, drop_rate: float) -> None:
        if isinstance(self, UniFormerLight):
            self._make_cls_token()
        for i, c in enumerate(self.embed_dim):
            setattr(self, f"norm{i + 1}", ChannelLayerNorm(c, eps=1e-6))

    def classifier_names(self) -> List[str]:
        return []

    def reset_classifier(self, num_classes: int, global_pool: Any = None) -> None:
        """Removing the (absent) classifier is a no-op; adding one is an error."""
        if num_classes:
            raise ValueError("dense backbones have no classifier; build the classification model instead")

    def check_input(self, x: torch.Tensor) -> None:
        """Dense backbones accept any size of at least 32 (one stride-32 cell): (B, in_chans, H, W)."""
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_chans or 0 in x.shape:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"{type(self).__name__} needs input sides of at least 32 (its coarsest stride), got "
                             f"{x.shape[-2]}x{x.shape[-1]} (shape {tuple(x.shape)})")
        check_input_dtype(self, x)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Normalised stage maps for ``out_indices`` (default all four: strides 4, 8, 16, 32)."""
        self.check_input(x)
        outs, ctx = [], None
        for stage in range(self.out_indices[-1] + 1):
            x, ctx = self._stage(stage, x, ctx)
            if stage in self.out_indices:
                outs.append(getattr(self, f"norm{stage + 1}")(x))
        return outs

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward(x)

    def _frozen_modules(self) -> List[nn.Module]:
        """Stem and stages 1..frozen_stages+1 with their output norms (light: the class token path with stage 3/4)."""
        mods: List[nn.Module] = []
        for i in range(self.frozen_stages + 1):
            mods += [getattr(self, f"patch_embed{i + 1}"), getattr(self, f"blocks{i + 1}"), getattr(self, f"norm{i + 1}")]
        if isinstance(self, UniFormerLight) and self.frozen_stages >= 3:
            mods.append(self.cls_upsample)
        return mods

    def train(self, mode: bool = True):
        """Training mode, keeping frozen stages (and with ``norm_eval`` every BatchNorm) in eval mode; returns self."""
        nn.Module.train(self, mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self



class UniFormerDense(DenseMixin, UniFormer):
    """Dense UniFormer-S/B backbone (``windows``, ``hybrid``, ``window_size``, ``window_mask``, ``out_indices``,
    ``frozen_stages``, ``norm_eval`` plus every UniFormer keyword). ``forward`` returns a list of NCHW maps."""


class UniFormerLightDense(DenseMixin, UniFormerLight):
    """Dense light (hourglass) backbone: the pruning algorithm stays on; ``norm1..4`` normalise each stage output."""


# ------------------------------------------------------------------------------------------------ registration
def _dense_cfg(filename: str, head_dim: int, first_conv: str = "patch_embed1.proj") -> Dict[str, Any]:
    cfg = image_cfg(filename, head_dim=head_dim, first_conv=first_conv, num_classes=0, classifier=None)
    cfg["notes"] = cfg["notes"] + ("ImageNet weights; norm1..4 start at identity",)
    return cfg


default_cfgs = generate_default_cfgs({
    "uniformer_small_dense.in1k": _dense_cfg("uniformer_small_in1k.pth", 64),
    "uniformer_base_dense.in1k": _dense_cfg("uniformer_base_in1k.pth", 64),
    "uniformer_xxs_dense.in1k": _dense_cfg("uniformer_xxs_224_in1k.pth", 28, "patch_embed1.proj.0"),
    "uniformer_xs_dense.in1k": _dense_cfg("uniformer_xs_224_in1k.pth", 32, "patch_embed1.proj.0"),
})

MODEL_ARGS: Dict[str, Tuple[type, Dict[str, Any]]] = {
    "uniformer_small_dense": (UniFormerDense, dict(SMALL, head_dim=64)),
    "uniformer_base_dense": (UniFormerDense, dict(BASE, head_dim=64)),
    "uniformer_xxs_dense": (UniFormerLightDense, LIGHT_ARGS["uniformer_xxs"]),
    "uniformer_xs_dense": (UniFormerLightDense, LIGHT_ARGS["uniformer_xs"]),
}


def _build(name: str, pretrained: bool, kwargs: Dict[str, Any]):
    cls, args = MODEL_ARGS[name]
    return create_uniformer(name, pretrained, model_cls=cls, **dict(args, **kwargs))


@register_model
def uniformer_small_dense(pretrained: bool = False, **kwargs: Any) -> UniFormerDense:
    """Dense UniFormer-S backbone: 21,033,280 params; use hybrid=True, window_size=14 for detection sizes."""
    return _build("uniformer_small_dense", pretrained, kwargs)


@register_model
def uniformer_base_dense(pretrained: bool = False, **kwargs: Any) -> UniFormerDense:
    """Dense UniFormer-B backbone: 49,264,576 params."""
    return _build("uniformer_base_dense", pretrained, kwargs)


@register_model
def uniformer_xxs_dense(pretrained: bool = False, **kwargs: Any) -> UniFormerLightDense:
    """Dense light UniFormer-XXS backbone (token pruning kept on): 9,317,168 params."""
    return _build("uniformer_xxs_dense", pretrained, kwargs)


@register_model
def uniformer_xs_dense(pretrained: bool = False, **kwargs: Any) -> UniFormerLightDense:
    """Dense light UniFormer-XS backbone: 15,483,136 params."""
    return _build("uniformer_xs_dense", pretrained, kwargs)
