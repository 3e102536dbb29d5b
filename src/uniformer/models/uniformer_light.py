"""Light ("hourglass") UniFormer: token pruning, merging and recovery in stages 3–4 (TPAMI 2023, §light).

:class:`UniFormerLight` reuses :class:`~uniformer.models.uniformer.UniFormer` and changes only what differs: the
conv stem with 2×2 PatchEmbed downsampling, :class:`~uniformer.layers.HourglassBlock` in stages 3–4 with the
per-forward :class:`~uniformer.layers.PruneState`, a class token from stage 3, and a second head (``head_cls``)
used in training.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..layers import (ConvStem, HourglassBlock, PatchEmbed, initial_prune_state, is_tracing,
                      validate_prune_schedule)
from .dense import DenseMixin
from .uniformer import UniFormer, create_uniformer, image_cfg, per_stage

__all__ = ["UniFormerLight", "UniFormerLightDense", "LightTrainingOutput", "default_prune_schedule"]


def default_prune_schedule(depth: Sequence[int], ratio: float = 0.5) -> List[List[float]]:
    """Official schedule: stage-3 block 0 keeps all tokens, every later stage-3/4 block keeps ``ratio``."""
    return [[], [], [1.0] + [ratio] * (depth[2] - 1), [ratio] * depth[3]]


class LightTrainingOutput(NamedTuple):
    """Training-mode output of a light model: the logits of ``head`` (on the pooled map; the eval output) and of
    ``head_cls`` (on the class token). The official recipe trains both with 0.5·CE each."""

    logits: torch.Tensor
    cls_logits: torch.Tensor


class UniFormerLight(UniFormer):
    """Hourglass UniFormer (XXS/XS). Extra keywords: ``prune_ratio``, ``trade_off`` (per-stage lists, stages 1–2 empty;
    default: the official schedule for ``depth``).

    ``forward`` returns logits in eval mode and a :class:`LightTrainingOutput` (``logits``, ``cls_logits``) in
    training mode (TorchScript keeps the eval output). ``forward_features`` returns the normalised
    map only.
    """

    default_use_ema = True  # official light checkpoints were evaluated with their EMA weights

    def __init__(
        self,
        depth: Sequence[int] = (2, 5, 8, 2),
        embed_dim: Sequence[int] = (56, 112, 224, 448),
        head_dim: int = 28,
        mlp_ratio: Union[float, Sequence[float]] = 3.0,
        prune_ratio: Optional[Sequence[Sequence[float]]] = None,
        trade_off: Optional[Sequence[Sequence[float]]] = None,
        conv_stem: bool = True,
        **kwargs: Any,
    ) -> None:
        if not conv_stem:
            raise ValueError("light UniFormer models always use the convolutional stem (conv_stem=True)")
        depth = [int(d) for d in per_stage(depth, "depth")]
        self.prune_ratio = [list(map(float, s)) for s in (prune_ratio or default_prune_schedule(depth))]
        self.trade_off = [list(map(float, s)) for s in (trade_off or self.prune_ratio)]
        validate_prune_schedule(depth, self.prune_ratio, self.trade_off)
        super().__init__(depth=depth, embed_dim=embed_dim, head_dim=head_dim, mlp_ratio=mlp_ratio, conv_stem=True, **kwargs)

    def _make_downsample(self, stage: int, in_c: int, out_c: int) -> nn.Module:
        if stage == 0:  # video: spatial-only first conv, then T halved by the second
            return ConvStem(in_c, out_c, self.dims, strides=(2, 2) if self.dims == 2 else ((1, 2, 2), (2, 2, 2)))
        return PatchEmbed(in_c, out_c, 2 if self.dims == 2 else (1, 2, 2), dims=self.dims)

    def _make_block(self, stage: int, index: int, dim: int, drop_path: float, common: dict, attn: dict) -> nn.Module:
        if stage < 2:
            return super()._make_block(stage, index, dim, drop_path, common, attn)
        return HourglassBlock(
            dim,
            drop_path=drop_path,
            dims=self.dims,
            prune_ratio=self.prune_ratio[stage][index],
            trade_off=self.trade_off[stage][index],
            downsample=stage == 2 and index == self.depth[2] - 1,
            **attn,
            **common,
        )

    def _make_stage(self, stage: int, blocks: List[nn.Module]) -> nn.Module:
        # stages 3-4 pass (cls, x, state) from block to block: a ModuleList (a Sequential's forward takes one input)
        return nn.ModuleList(blocks) if stage >= 2 else super()._make_stage(stage, blocks)

    def _make_stage_tokens(self) -> None:
        """Class token entering stage 3 and its widening to stage 4 (also in the dense light backbone)."""
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim[2]))
        self.cls_upsample = nn.Linear(self.embed_dim[2], self.embed_dim[3])

    def _make_tail(self, drop_rate: float) -> None:
        super()._make_tail(drop_rate)
        self.norm_cls = nn.LayerNorm(self.num_features, eps=1e-5)
        self.head_cls = self._linear_head()

    def classifier_names(self) -> List[str]:
        return ["head", "head_cls"]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"cls_token"}

    def _light_stages(self, x: torch.Tensor, num_stages: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Stage outputs from the stem output, and the class token after the last stage run (before stage 3: the
        initial token). Stages 3–4 pass the class token and the :class:`~uniformer.layers.PruneState` block to block;
        stage 4 widens the token and starts from stage 3's pooled scores."""
        outs = self._local_stages(x, num_stages)
        cls = self.cls_token
        if num_stages > 2:
            x = self.patch_embed3(outs[-1])
            cls, state = self.cls_token.expand(x.shape[0], -1, -1), initial_prune_state(x, None)
            for block3 in self.blocks3:
                cls, x, state = block3(cls, x, state)
            outs.append(x)
            if num_stages > 3:
                x = self.patch_embed4(x)
                cls, state = self.cls_upsample(cls), initial_prune_state(x, state.score)
                for block4 in self.blocks4:  # (a new name: TorchScript cannot rebind a module variable)
                    cls, x, state = block4(cls, x, state)
                outs.append(x)
        return outs, cls

    def _stages_from_stem(self, x: torch.Tensor, num_stages: int) -> List[torch.Tensor]:
        return self._light_stages(x, num_stages)[0]

    def forward_features_with_cls(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised final map and the final class token (B, C4)."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        outs, cls = self._light_stages(self._stem(x), 4)
        return self.norm(outs[-1]), cls[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, cls = self.forward_features_with_cls(x)
        logits = self.forward_head(x)
        if self.training and not torch.jit.is_scripting():
            cls_logits = self.head_cls(self.norm_cls(cls))
            if is_tracing():  # a traced graph returns a plain pair (timm's fx tools take the output node's inputs)
                return logits, cls_logits  # type: ignore[return-value]
            return LightTrainingOutput(logits, cls_logits)  # type: ignore[return-value]
        return logits


class UniFormerLightDense(DenseMixin, UniFormerLight):
    """Dense light (hourglass) backbone: ``create_model("uniformer_xxs", features_only=True)``; the pruning stays on,
    ``norm1..4`` normalise each stage output."""

    def _frozen_parameters(self) -> List[nn.Parameter]:
        params = super()._frozen_parameters()
        if self.frozen_stages >= 2:  # the class token enters at stage 3, its widening at stage 4
            params.append(self.cls_token)
        if self.frozen_stages >= 3:
            params += list(self.cls_upsample.parameters())
        return params


# ------------------------------------------------------------------------------------------------ registration
MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    "uniformer_xxs": dict(depth=(2, 5, 8, 2), embed_dim=(56, 112, 224, 448), head_dim=28, mlp_ratio=3.0),
    "uniformer_xs": dict(depth=(3, 5, 9, 3), embed_dim=(64, 128, 256, 512), head_dim=32, mlp_ratio=3.0),
}


def _light_cfg(arch: str, size: int, head_dim: int) -> Dict[str, Any]:
    return image_cfg(
        f"{arch}_{size}_in1k.pth",
        size=size,
        head_dim=head_dim,
        first_conv="patch_embed1.proj.0",
        classifier=("head", "head_cls"),
    )


default_cfgs = generate_default_cfgs(
    {
        **{f"uniformer_xxs.in1k_{s}": _light_cfg("uniformer_xxs", s, 28) for s in (224, 128, 160, 192)},
        **{f"uniformer_xs.in1k_{s}": _light_cfg("uniformer_xs", s, 32) for s in (224, 192)},
    }
)


def _build(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> UniFormerLight:
    return create_uniformer(name, pretrained, model_cls=UniFormerLight, dense_cls=UniFormerLightDense,
                            **dict(MODEL_ARGS[name], **kwargs))


@register_model
def uniformer_xxs(pretrained: bool = False, **kwargs: Any) -> UniFormerLight:
    """UniFormer-XXS (hourglass, head_dim 28): 10.2 M params, 1.31 GFLOPs at 224."""
    return _build("uniformer_xxs", pretrained, kwargs)


@register_model
def uniformer_xs(pretrained: bool = False, **kwargs: Any) -> UniFormerLight:
    """UniFormer-XS (hourglass, head_dim 32): 16.5 M params, 1.94 GFLOPs at 224."""
    return _build("uniformer_xs", pretrained, kwargs)
