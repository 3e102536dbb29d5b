"""UniFormer (Li et al., ICLR 2022 / TPAMI 2023): image models, the token-labeling family, and their timm registration.

One class, :class:`UniFormer`, builds every non-light variant from the blocks in :mod:`uniformer.layers`. The module
tree uses the official attribute names (``patch_embed1..4``, ``blocks1..4``, ``norm``, ``head``, ``aux_head``) so
official state dicts load with ``strict=True``. Architectures are registered with timm at import time; each name fixes
``head_dim``, which no checkpoint reveals.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import feature_take_indices

from .convert import checkpoint_filter_fn
from ..layers import (CheckpointedBlock, ConvDown, ConvStem, GlobalBlock, LocalBlock, PatchEmbed, batch_norm_nd,
                      check_dims, is_tracing)
from .common import ClassifierAPI, check_global_pool, check_input_dtype
from .dense import DenseMixin
from .token_labeling import TokenLabelingMixin

__all__ = ["UniFormer", "UniFormerDense", "per_stage"]

INPUT_MULTIPLE = 32  # total stride: sides that are multiples of it give the same grid for every stem


def per_stage(value: Any, name: str, num_stages: int = 4) -> List[Any]:
    """Broadcast a scalar to a per-stage list, or check a given list has one entry per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} needs {num_stages} per-stage values, got {len(value)}: {list(value)}")
        return list(value)
    return [value] * num_stages


class UniFormer(TokenLabelingMixin, ClassifierAPI, nn.Module):
    """UniFormer backbone + classifier for images (``dims=2``) and videos (``dims=3``).

    Args use the official keyword names: ``depth``/``embed_dim`` (per stage), ``head_dim`` (heads = C // head_dim),
    ``mlp_ratio`` (float or per stage), ``qkv_bias``, ``qk_scale``, ``conv_stem`` (S†: conv stem + conv downsampling),
    ``layer_scale`` (bool or per-stage bools) with ``init_value``, ``drop_rate`` (dropout before the head),
    ``attn_drop_rate``, ``drop_path_rate``. ``return_dense=True`` adds the token-labeling ``aux_head`` (output
    ``head + 0.5·max over tokens of aux_head``); ``set_token_labeling(True)`` makes training-mode ``forward`` return
    a :class:`TokenLabelingOutput` instead (with MixToken when ``mix_token=True``), as the official training does.
    Video (``dims=3``, input NCTHW): the stem halves T (kernel 3×4×4, stride 2×4×4); ``std=True`` uses 3×2×2 instead
    of 1×2×2 downsampling kernels; ``split=True`` uses divided space-time attention in stages 3–4.
    Stage-3 attention of the dense models (images; the weights are the same in every mode): ``windows=True`` attends
    in ``window_size`` windows in every block, ``hybrid=True`` makes block j global iff (j + 1) % 4 == 0 and windowed
    otherwise; incomplete windows are zero-padded and, as the published numbers require, not masked
    (``window_mask=True`` masks them).
    """

    def __init__(
        self,
        depth: Sequence[int] = (3, 4, 8, 3),
        embed_dim: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        mlp_ratio: Union[float, Sequence[float]] = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        conv_stem: bool = False,
        layer_scale: Union[bool, Sequence[bool]] = False,
        init_value: float = 1e-6,
        return_dense: bool = False,
        mix_token: bool = False,
        dims: int = 2,
        std: bool = False,
        split: bool = False,
        windows: bool = False,
        hybrid: bool = False,
        window_size: int = 14,
        window_mask: bool = False,
    ) -> None:
        super().__init__()
        self.dims = check_dims(dims)
        if dims == 2 and (std or split):
            raise ValueError("std and split are video options: they need dims=3")
        if dims == 3 and (return_dense or mix_token):
            raise ValueError("token labeling (return_dense, mix_token) is an image-only option")
        if dims == 3 and (windows or hybrid):
            raise ValueError("window / hybrid attention (windows, hybrid) is an image-only option")
        if (windows or hybrid) and int(window_size) < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        self.std, self.split = std, split
        self.windows, self.hybrid, self.window_size, self.window_mask = windows, hybrid, int(window_size), window_mask
        self.depth = [int(d) for d in per_stage(depth, "depth")]
        self.embed_dim = [int(c) for c in per_stage(embed_dim, "embed_dim")]
        if head_dim < 1 or any(c < head_dim for c in self.embed_dim[2:]):
            raise ValueError(f"head_dim must be in [1, embed_dim of stages 3-4], got {head_dim} for {self.embed_dim}")
        check_global_pool(global_pool)
        self.head_dim = head_dim
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim[-1]
        self.conv_stem = conv_stem
        self.return_dense = return_dense
        self.mix_token = mix_token
        self.token_labeling = False
        self.grad_checkpointing = False
        mlp_ratios = per_stage(mlp_ratio, "mlp_ratio")
        layer_scales = per_stage(layer_scale, "layer_scale")
        dpr = torch.linspace(0, drop_path_rate, sum(self.depth), device="cpu").tolist()  # also under torch.device("meta")

        in_c = in_chans
        block_idx = 0
        self.feature_info = []
        for i, (d, c) in enumerate(zip(self.depth, self.embed_dim)):
            self.add_module(f"patch_embed{i + 1}", self._make_downsample(i, in_c, c))
            if i == 0:
                self.pos_drop = nn.Dropout(drop_rate)
            common = dict(mlp_ratio=mlp_ratios[i], drop=drop_rate, layer_scale=layer_scales[i], init_value=init_value)
            attn = dict(num_heads=c // head_dim, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop_rate)
            blocks = [self._make_block(i, j, c, dpr[block_idx + j], common, attn) for j in range(d)]
            self.add_module(f"blocks{i + 1}", self._make_stage(i, blocks))
            block_idx += d
            info = dict(num_chs=c, reduction=4 * 2**i, module=f"blocks{i + 1}")
            self.feature_info.append(info if dims == 2 else dict(info, temporal_reduction=2))
            in_c = c
        self._make_tail(drop_rate)
        self.apply(self._init_weights)
        for block in self.modules():
            if isinstance(block, GlobalBlock) and block.split:
                block.init_split()

    # ----------------------------------------------------------------------------------------------- construction
    def _make_downsample(self, stage: int, in_c: int, out_c: int) -> nn.Module:
        if self.dims == 3:
            if self.conv_stem:
                raise ValueError("conv_stem is not available for the standard video models (only the light ones)")
            if stage == 0:  # halves T: T1 = floor((T - 1) / 2) + 1
                return PatchEmbed(in_c, out_c, (3, 4, 4), stride=(2, 4, 4), padding=(1, 0, 0), dims=3)
            kernel = (3, 2, 2) if self.std else (1, 2, 2)
            return PatchEmbed(in_c, out_c, kernel, stride=(1, 2, 2), padding=(1, 0, 0) if self.std else 0, dims=3)
        if self.conv_stem:
            return ConvStem(in_c, out_c, self.dims) if stage == 0 else ConvDown(in_c, out_c, self.dims)
        return PatchEmbed(in_c, out_c, 4 if stage == 0 else 2, dims=self.dims)

    def _make_block(self, stage: int, index: int, dim: int, drop_path: float, common: dict, attn: dict) -> nn.Module:
        if stage < 2:
            return LocalBlock(dim, drop_path=drop_path, dims=self.dims, **common)
        return GlobalBlock(dim, drop_path=drop_path, dims=self.dims, split=self.split,
                           **self._window_args(stage, index), **attn, **common)

    def _make_stage(self, stage: int, blocks: List[nn.Module]) -> nn.Module:
        """The container of one stage's blocks (keys ``blocks{stage + 1}.{j}``): a Sequential, run as one call."""
        return nn.Sequential(*blocks)

    def _window_args(self, stage: int, index: int) -> Dict[str, Any]:
        """Window-attention settings of one block: stage 3 only, every block (``windows``) or all but every 4th
        (``hybrid``)."""
        if stage != 2 or not (self.windows or (self.hybrid and (index + 1) % 4 != 0)):
            return {}
        return dict(window_size=self.window_size, window_mask=self.window_mask)

    def _make_stage_tokens(self) -> None:
        """Parameters that enter between stages (the light models' class token); none here."""

    def _make_tail(self, drop_rate: float) -> None:
        self._make_stage_tokens()
        self.norm = batch_norm_nd(self.dims)(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._linear_head()
        self.aux_head = self._linear_head() if self.return_dense else None

    def _linear_head(self) -> nn.Module:
        return nn.Linear(self.num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed1\.|^pos_drop",
            blocks=[(r"^patch_embed(\d+)", None), (r"^blocks(\d+)", None), (r"^norm", (99999,))]
            if coarse
            else [
                (r"^patch_embed(\d+)", (0,)),
                (r"^blocks(\d+)\.(\d+)", None),
                (r"^cls_token", (3, 0)),
                (r"^cls_upsample", (4, 0)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block's activations in backward (each block checkpoints itself)."""
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, CheckpointedBlock):
                module.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace every classifier (``head``, and ``aux_head``/``head_cls`` where present) with ``num_classes``."""
        self._reset_pool_and_classes(num_classes, global_pool)
        for name in self.classifier_names():
            head = self._linear_head()
            if isinstance(head, nn.Linear):
                self._init_weights(head)
            setattr(self, name, head)

    def classifier_names(self) -> List[str]:
        return ["head", "aux_head"] if self.return_dense else ["head"]

    # --------------------------------------------------------------------------------------------------- forward
    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (B, in_chans, [T,] H, W) with H and W multiples of 32 (and T ≥ 1; a
        video model also takes (B, C, H, W) as one frame). Skipped while tracing (``torch.jit.trace``, TorchScript,
        ``torch.fx``)."""
        if is_tracing():
            return
        layout = "(B, C, H, W)" if self.dims == 2 else "(B, C, T, H, W)"
        if x.ndim != self.dims + 2 and not (self.dims == 3 and x.ndim == 4):
            raise ValueError(f"{type(self).__name__} expects a {self.dims + 2}-D input {layout}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels {layout}, got shape {tuple(x.shape)}")
        if 0 in x.shape:
            raise ValueError(f"input has an empty dimension {layout}: shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(
                f"input height and width must be multiples of {INPUT_MULTIPLE}, got {h}x{w} (shape {tuple(x.shape)})"
            )
        check_input_dtype(self, x)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:  # a (B, C, H, W) input is a one-frame clip; a reshape, not a branch on the rank (tracers)
            x = x.reshape(x.shape[0], x.shape[1], -1, x.shape[-2], x.shape[-1])
        return self.pos_drop(self.patch_embed1(x))

    def _local_stages(self, x: torch.Tensor, num_stages: int) -> List[torch.Tensor]:
        """Stages 1–2 (convolutional) from the stem output."""
        x = self.blocks1(x)
        outs = [x]
        if num_stages > 1:
            outs.append(self.blocks2(self.patch_embed2(x)))
        return outs

    def _stages_from_stem(self, x: torch.Tensor, num_stages: int) -> List[torch.Tensor]:
        """Outputs of the first ``num_stages`` stages from the stem output. Stages are written out (no loop over
        ``getattr``) so that TorchScript and ``torch.fx`` follow them."""
        outs = self._local_stages(x, num_stages)
        if num_stages > 2:
            x = self.blocks3(self.patch_embed3(outs[-1]))
            outs.append(x)
            if num_stages > 3:
                outs.append(self.blocks4(self.patch_embed4(x)))
        return outs

    def _forward_stages(self, x: torch.Tensor, num_stages: int = 4) -> List[torch.Tensor]:
        """Outputs of the first ``num_stages`` stages (strides 4, 8, 16, 32), before any norm."""
        return self._stages_from_stem(self._stem(x), num_stages)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled final map after the BatchNorm ``norm``: (B, C4, H/32, W/32) (video: (B, C4, T/2, H/32, W/32))."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self.norm(self._forward_stages(x)[-1])

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs at strides 4/8/16/32 (timm contract); ``norm=True`` applies ``norm`` to the last one."""
        if output_fmt not in ("NCHW", "NCTHW"):
            raise ValueError(f"output_fmt must be 'NCHW' (channels first), got {output_fmt!r}")
        self.check_input(x)
        take_indices, max_index = feature_take_indices(4, indices)
        outs = self._forward_stages(x, max_index + 1 if stop_early else 4)
        intermediates = [self.norm(outs[i]) if norm and i == 3 else outs[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        return (self.norm(outs[-1]) if len(outs) == 4 else outs[-1]), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages after the last requested index (and the tail); return the kept indices."""
        take_indices, max_index = feature_take_indices(4, indices)
        for stage in range(max_index + 1, 4):
            setattr(self, f"patch_embed{stage + 1}", nn.Identity())
            setattr(self, f"blocks{stage + 1}", nn.Sequential())
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool → dropout → ``head`` (``global_pool=''``: the head applied at every position of the map).
        Token-labeling models add ``0.5 · max over tokens of aux_head(tokens)`` to the pooled logits."""
        if self.global_pool != "avg":
            x = self.head_drop(x)
            return x if pre_logits else self.head(x.movedim(1, -1)).movedim(-1, 1)
        pooled = self.head_drop(x.flatten(2).mean(-1))
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if self.aux_head is not None and self.num_classes > 0:
            logits = logits + 0.5 * self.aux_head(x.flatten(2).transpose(1, 2)).amax(dim=1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) — in training mode too, unless ``set_token_labeling(True)``."""
        if self.token_labeling and self.training and not torch.jit.is_scripting():
            return self.forward_token_labeling(x)  # type: ignore[return-value]
        return self.forward_head(self.forward_features(x))

class UniFormerDense(DenseMixin, UniFormer):
    """Dense UniFormer-S/B backbone: ``create_model("uniformer_small", features_only=True, ...)``. Keywords
    ``out_indices``, ``frozen_stages``, ``norm_eval`` plus every UniFormer keyword (``windows``, ``hybrid``,
    ``window_size``); ``forward`` returns the list of normalised NCHW maps (official keys ``norm1..4``)."""


# ------------------------------------------------------------------------------------------------ registration
PAPER_IMAGE = "arXiv:2201.09450"
ORIGIN = "https://github.com/Sense-X/UniFormer"
HUB_IMAGE = "Sense-X/uniformer_image"


def image_cfg(filename: str = "", *, size: int = 224, head_dim: int = 64, **kwargs: Any) -> Dict[str, Any]:
    """Pretrained config of one official ImageNet-1K checkpoint (``head_dim`` recorded in ``notes``)."""
    cfg = dict(
        num_classes=1000,
        input_size=(3, size, size),
        pool_size=(size // 32, size // 32),
        min_input_size=(3, 32, 32),
        fixed_input_size=False,
        crop_pct=0.875,
        crop_mode="center",
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed1.proj",
        classifier="head",
        license="mit",
        paper_ids=PAPER_IMAGE,
        origin_url=ORIGIN,
        notes=(f"head_dim={head_dim}",),
    )
    if filename:
        cfg.update(hf_hub_id=HUB_IMAGE, hf_hub_filename=filename)
    cfg.update(kwargs)
    return cfg


def create_uniformer(variant: str, pretrained: bool = False, model_cls: type = UniFormer,
                     dense_cls: Optional[type] = UniFormerDense, **kwargs: Any) -> nn.Module:
    """Build a registered variant through timm (pretrained cfg, pretrained filter).

    ``features_only=True`` gives the dense backbone ``dense_cls`` (timm's convention for feature extractors): the
    same weights plus the per-stage norms ``norm1..4`` of the official dense checkpoints, returning the list of
    normalised stage maps; ``windows``/``hybrid``/``window_size``, ``out_indices``, ``frozen_stages`` and
    ``norm_eval`` configure it. ``feature_cls='getter'`` (or a model without a dense class, e.g. video) uses timm's
    generic wrapper over :meth:`UniFormer.forward_intermediates` instead.
    """
    if kwargs.get("features_only") and dense_cls is not None and kwargs.get("feature_cls") in (None, "dense"):
        kwargs.pop("features_only")
        kwargs.pop("feature_cls", None)
        model = build_model_with_cfg(dense_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                     **kwargs)
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
        return model
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )


# Architecture arguments of every image variant (official values; user keyword arguments override them).
SMALL = dict(depth=(3, 4, 8, 3), embed_dim=(64, 128, 320, 512))
SMALL_PLUS = dict(depth=(3, 5, 9, 3), embed_dim=(64, 128, 320, 512), conv_stem=True)
BASE = dict(depth=(5, 8, 20, 7), embed_dim=(64, 128, 320, 512))
LARGE = dict(depth=(5, 10, 24, 7), embed_dim=(128, 192, 448, 640))
TL = dict(return_dense=True, mix_token=True)

MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    "uniformer_small": dict(SMALL, head_dim=64),
    "uniformer_small_plus": dict(SMALL_PLUS, head_dim=32),
    "uniformer_small_plus_dim64": dict(SMALL_PLUS, head_dim=64),
    "uniformer_base": dict(BASE, head_dim=64),
    "uniformer_base_ls": dict(BASE, head_dim=64, layer_scale=(False, False, True, True)),
    "uniformer_small_tl": dict(SMALL, head_dim=32, **TL),
    "uniformer_small_tl_dim64": dict(SMALL, head_dim=64, **TL),
    "uniformer_small_plus_tl": dict(SMALL_PLUS, head_dim=32, **TL),
    "uniformer_small_plus_tl_dim64": dict(SMALL_PLUS, head_dim=64, **TL),
    "uniformer_base_tl": dict(BASE, head_dim=32, **TL),
    "uniformer_base_tl_dim64": dict(BASE, head_dim=64, **TL),
    "uniformer_large_ls_tl": dict(LARGE, head_dim=64, layer_scale=True, **TL),
}


def _tl_cfgs(arch: str, head_dim: int, file_224: str, file_384: str = "", first_conv: str = "patch_embed1.proj"):
    common = dict(head_dim=head_dim, classifier=("head", "aux_head"), first_conv=first_conv, paper_ids=PAPER_IMAGE)
    cfgs = {f"{arch}.in1k": image_cfg(file_224, **common)}
    if file_384:
        cfgs[f"{arch}.in1k_384"] = image_cfg(file_384, size=384, **common)
    return cfgs


default_cfgs = generate_default_cfgs(
    {
        "uniformer_small.in1k": image_cfg("uniformer_small_in1k.pth"),
        "uniformer_small_plus.in1k": image_cfg(
            "uniformer_small_plus_in1k.pth", head_dim=32, first_conv="patch_embed1.proj.0"
        ),
        "uniformer_small_plus_dim64.in1k": image_cfg(
            "uniformer_small_plus_dim64_in1k.pth", first_conv="patch_embed1.proj.0"
        ),
        "uniformer_base.in1k": image_cfg("uniformer_base_in1k.pth"),
        "uniformer_base_ls.in1k": image_cfg("uniformer_base_ls_in1k.pth"),
        **_tl_cfgs("uniformer_small_tl", 32, "uniformer_small_tl_224.pth", "uniformer_small_tl_384.pth"),
        **_tl_cfgs("uniformer_small_tl_dim64", 64, "uniformer_small_tl_dim64_224.pth"),
        **_tl_cfgs(
            "uniformer_small_plus_tl", 32, "uniformer_small_plus_tl_224.pth", "uniformer_small_plus_tl_384.pth",
            first_conv="patch_embed1.proj.0",
        ),
        **_tl_cfgs(
            "uniformer_small_plus_tl_dim64", 64, "uniformer_small_plus_tl_dim64_224.pth",
            first_conv="patch_embed1.proj.0",
        ),
        **_tl_cfgs("uniformer_base_tl", 32, "uniformer_base_tl_224.pth", "uniformer_base_tl_384.pth"),
        **_tl_cfgs("uniformer_base_tl_dim64", 64, "uniformer_base_tl_dim64_224.pth"),
        **_tl_cfgs("uniformer_large_ls_tl", 64, "uniformer_large_ls_tl_224.pth", "uniformer_large_ls_tl_384.pth"),
    }
)


def _build(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> UniFormer:
    return create_uniformer(name, pretrained, **dict(MODEL_ARGS[name], **kwargs))


@register_model
def uniformer_small(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """UniFormer-S, ImageNet-1K (head_dim 64): 21.5 M params, 3.64 GFLOPs at 224."""
    return _build("uniformer_small", pretrained, kwargs)


@register_model
def uniformer_small_plus(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """UniFormer-S† (conv stem, head_dim 32): 24.0 M params, 4.21 GFLOPs."""
    return _build("uniformer_small_plus", pretrained, kwargs)


@register_model
def uniformer_small_plus_dim64(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """UniFormer-S† with head_dim 64."""
    return _build("uniformer_small_plus_dim64", pretrained, kwargs)


@register_model
def uniformer_base(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """UniFormer-B (head_dim 64): 49.8 M params, 8.27 GFLOPs."""
    return _build("uniformer_base", pretrained, kwargs)


@register_model
def uniformer_base_ls(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """UniFormer-B with layer scale in stages 3–4."""
    return _build("uniformer_base_ls", pretrained, kwargs)


@register_model
def uniformer_small_tl(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Token-labeling UniFormer-S (head_dim 32, aux head)."""
    return _build("uniformer_small_tl", pretrained, kwargs)


@register_model
def uniformer_small_tl_dim64(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Token-labeling UniFormer-S with head_dim 64."""
    return _build("uniformer_small_tl_dim64", pretrained, kwargs)


@register_model
def uniformer_small_plus_tl(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Token-labeling UniFormer-S† (conv stem, head_dim 32)."""
    return _build("uniformer_small_plus_tl", pretrained, kwargs)


@register_model
def uniformer_small_plus_tl_dim64(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Token-labeling UniFormer-S† with head_dim 64."""
    return _build("uniformer_small_plus_tl_dim64", pretrained, kwargs)


@register_model
def uniformer_base_tl(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Token-labeling UniFormer-B (head_dim 32)."""
    return _build("uniformer_base_tl", pretrained, kwargs)


@register_model
def uniformer_base_tl_dim64(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Token-labeling UniFormer-B with head_dim 64."""
    return _build("uniformer_base_tl_dim64", pretrained, kwargs)


@register_model
def uniformer_large_ls_tl(pretrained: bool = False, **kwargs: Any) -> UniFormer:
    """Token-labeling UniFormer-L with layer scale in all four stages: 100.1 M params, 19.76 GFLOPs."""
    return _build("uniformer_large_ls_tl", pretrained, kwargs)
