"""Dense-prediction backbones (TPAMI 2023 §dense): a classification model without its tail, returning LayerNorm-
normalised stage maps at strides 4/8/16/32 (official keys ``norm1..norm4``).

:class:`DenseMixin` turns a classification class into its dense backbone (``UniFormerDense``, ``UniFormerLightDense``);
users get one with timm's ``create_model("uniformer_small", features_only=True, hybrid=True, window_size=14)``.
Official dense checkpoints (``backbone.`` keys) and ImageNet checkpoints (``norm1..4`` keep their identity init)
both load into it.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import FeatureInfo

from ..layers import ChannelLayerNorm, is_tracing
from .common import check_input_dtype

__all__ = ["DenseMixin"]


class DenseMixin:
    """Per-stage norms, ``out_indices``, ``frozen_stages``, ``norm_eval``, any input size with sides of at least 32
    (odd sizes floor as in the official code), list output. Mixed in before a UniFormer class."""

    # Keys a classification checkpoint lacks; they keep their init (weight 1, bias 0) when loading ImageNet weights.
    init_only_prefixes: Tuple[str, ...] = ("norm1.", "norm2.", "norm3.", "norm4.")

    def __init__(self, *args: Any, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, **kwargs: Any) -> None:
        if not out_indices or not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"out_indices must be a non-empty subset of (0, 1, 2, 3), got {tuple(out_indices)}")
        if not -1 <= frozen_stages <= 3:
            raise ValueError(f"frozen_stages must be in -1..3, got {frozen_stages}")
        self.out_indices, self.frozen_stages, self.norm_eval = tuple(sorted(out_indices)), frozen_stages, norm_eval
        kwargs.pop("num_classes", None)  # no classifier (timm passes the cfg's class count)
        kwargs.pop("global_pool", None)
        super().__init__(*args, num_classes=0, **kwargs)  # type: ignore[call-arg]
        self.out_channels = [self.embed_dim[i] for i in self.out_indices]
        self.feature_info = FeatureInfo([self.feature_info[i] for i in self.out_indices],
                                        tuple(range(len(self.out_indices))))
        for p in self._frozen_parameters():
            p.requires_grad_(False)

    def _make_tail(self, drop_rate: float) -> None:
        self._make_stage_tokens()
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
        if is_tracing():
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
        outs = self._forward_stages(x, self.out_indices[-1] + 1)
        return [getattr(self, f"norm{i + 1}")(outs[i]) for i in self.out_indices]

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward(x)

    def _frozen_modules(self) -> List[nn.Module]:
        """Stem and stages 1..frozen_stages+1 with their output norms."""
        mods: List[nn.Module] = []
        for i in range(self.frozen_stages + 1):
            mods += [getattr(self, f"patch_embed{i + 1}"), getattr(self, f"blocks{i + 1}"), getattr(self, f"norm{i + 1}")]
        return mods

    def _frozen_parameters(self) -> List[nn.Parameter]:
        """Parameters that ``frozen_stages`` freezes (the light backbone adds its class-token path)."""
        return [p for m in self._frozen_modules() for p in m.parameters()]

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
