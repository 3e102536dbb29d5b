"""VT-ResNet (Wu et al., ICCV 2021): torchvision's ResNet stem and stages 1–3, with the last stage replaced by
Visual Transformer modules on the stride-16 map; classification from the mean of the final tokens.

The trunk keeps torchvision's module names (``conv1``, ``bn1``, ``layer1..3``) so torchvision ResNet weights initialise
it (:func:`load_torchvision_trunk`). Design decisions for the paper's ambiguities: ``shared/spec/vt.md``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from ..layers import is_tracing
from ..layers.vt import VTModule, init_vt_weights
from .common import ClassifierAPI, check_global_pool, check_input_dtype

__all__ = ["VTResNet", "load_torchvision_trunk", "TrunkLoadResult"]

TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3")


class VTResNet(ClassifierAPI, nn.Module):
    """ResNet trunk (stages 1–3) + ``num_modules`` VT modules + mean-token classifier.

    Keywords: ``arch`` (torchvision ResNet name), ``num_modules``, ``num_tokens`` (L), ``token_dim`` (C_T),
    ``num_heads``, ``pix_groups``, ``kqv_groups``, ``token_groups``, ``ffn_dim``, ``vt_channels`` (module output
    channels C_out), ``pos_enc``, ``recurrent_update`` ('full' | 'half'), ``last_projector`` (False for classification:
    the last module's projected map is unused), ``drop_rate`` (dropout before the head), ``in_chans``, ``num_classes``;
    ``drop_path_rate`` is accepted for the engine's sake and must be 0.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_modules: int = 2,
        num_tokens: int = 16,
        token_dim: int = 1024,
        num_heads: int = 16,
        pix_groups: int = 16,
        kqv_groups: int = 8,
        token_groups: int = 1,
        ffn_dim: int = 1024,
        vt_channels: Optional[int] = None,
        pos_enc: bool = True,
        recurrent_update: str = "full",
        last_projector: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError("VT-ResNet has no stochastic depth (torchvision's ResNet blocks): use drop_path_rate=0")
        if num_modules < 1:
            raise ValueError(f"num_modules must be at least 1, got {num_modules}")
        check_global_pool(global_pool)  # 'avg' = mean over tokens
        resnet = getattr(torchvision.models, arch)(weights=None)
        self.conv1 = resnet.conv1 if in_chans == 3 else nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        stage4 = self.layer3[-1].conv3.out_channels if hasattr(self.layer3[-1], "conv3") else self.layer3[-1].conv2.out_channels
        out_c = vt_channels or (512 if stage4 == 256 else stage4)
        self.vt = nn.ModuleList(
            VTModule(stage4 if i == 0 else out_c, out_c, first=i == 0, num_tokens=num_tokens, token_dim=token_dim,
                     num_heads=num_heads, pix_groups=pix_groups, kqv_groups=kqv_groups, token_groups=token_groups,
                     ffn_dim=ffn_dim, pos_enc=pos_enc, recurrent_update=recurrent_update,
                     projector=last_projector or i < num_modules - 1)
            for i in range(num_modules)
        )
        init_vt_weights(self.vt)
        self.arch, self.in_chans, self.num_classes, self.global_pool = arch, in_chans, num_classes, global_pool
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.num_features = self.head_hidden_size = token_dim
        self.grad_checkpointing = False
        widths = [self.layer1[-1], self.layer2[-1]]
        chans = [getattr(b, "conv3", getattr(b, "conv2")).out_channels for b in widths] + [stage4]
        map_c = out_c if (last_projector or num_modules > 1) else stage4
        self.feature_info = [dict(num_chs=c, reduction=r, module=m) for c, r, m in
                             zip(chans + [map_c], (4, 8, 16, 16), ("layer1", "layer2", "layer3", "vt"))]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(token_dim, num_classes) if num_classes > 0 else nn.Identity()

    # ------------------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)", vt=r"^vt\.(\d+)")

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self._reset_pool_and_classes(num_classes, global_pool)
        self.head = nn.Linear(self.token_dim, num_classes) if num_classes > 0 else nn.Identity()

    def classifier_names(self) -> List[str]:
        return ["head"]

    # -------------------------------------------------------------------------------------------------- forward
    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        if is_tracing():
            return
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"input sides must be at least 32, got {x.shape[-2]}x{x.shape[-1]}")
        check_input_dtype(self, x)

    def _trunk(self, x: torch.Tensor, num_stages: int = 3) -> List[torch.Tensor]:
        """Outputs of the first ``num_stages`` ResNet stages (layer1..3, strides 4, 8, 16)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            outs = []
            for layer in (self.layer1, self.layer2, self.layer3)[:num_stages]:
                x = checkpoint(layer, x, use_reentrant=False)
                outs.append(x)
            return outs
        x = self.layer1(x)
        outs = [x]
        if num_stages > 1:
            x = self.layer2(x)
            outs.append(x)
            if num_stages > 2:
                outs.append(self.layer3(x))
        return outs

    def _vt(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[Dict[str, Optional[torch.Tensor]]]]:
        """The VT modules on the stride-16 map: final tokens, the last projected map (``x`` if none projects) and each
        module's attention maps."""
        tokens: Optional[torch.Tensor] = None
        attns: List[Dict[str, Optional[torch.Tensor]]] = []
        for module in self.vt:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                t, y, attn = checkpoint(module, x, tokens, use_reentrant=False)
            else:
                t, y, attn = module(x, tokens)
            tokens = t
            attns.append(attn)
            if y is not None:
                x = y
        assert tokens is not None  # at least one module (checked at construction)
        return tokens, x, attns

    @torch.jit.ignore
    def forward_tokens(self, x: torch.Tensor, return_attn: bool = False):
        """Final tokens (B, L, C_T); with ``return_attn`` also the list of per-module attention-map dicts."""
        self.check_input(x)
        tokens, _, attns = self._vt(self._trunk(x)[-1])
        return (tokens, attns) if return_attn else tokens

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final tokens (B, L, C_T) (layout 'NLC')."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self._vt(self._trunk(x)[-1])[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean over tokens → dropout → ``head`` (``global_pool=''`` keeps per-token outputs)."""
        x = x.mean(dim=1) if self.global_pool == "avg" else x
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """NCHW maps of layer1 (stride 4), layer2 (8), layer3 (16) and the last projected VT map (16); ``final`` is
        the token output of ``forward_features`` (None when ``stop_early`` ends before the VT modules)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(4, indices)
        early = stop_early and max_index < 3
        outs = self._trunk(x, max_index + 1 if early else 3)
        feats = [outs[i] for i in take if i < 3]
        tokens = None
        if not early:
            tokens, vt_map, _ = self._vt(outs[-1])
            if 3 in take:
                feats.append(vt_map)
        return feats if intermediates_only else (tokens, feats)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, max_index = feature_take_indices(4, indices)
        if max_index < 3:
            self.vt = nn.ModuleList()
            for name in ("layer1", "layer2", "layer3")[max_index + 1:]:
                setattr(self, name, nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take


class TrunkLoadResult(NamedTuple):
    loaded: List[str]
    skipped: List[str]


def load_torchvision_trunk(model: VTResNet, source: Union[str, os.PathLike, Mapping[str, torch.Tensor], nn.Module]) -> TrunkLoadResult:
    """Copy a torchvision ResNet's ``conv1``/``bn1``/``layer1-3`` weights (a model, a state dict or a local file)
    into ``model``'s trunk; ``layer4``/``fc`` are skipped by design. Fails listing missing or mis-shaped trunk keys."""
    from .weights import read_checkpoint
    from .convert import unwrap_state_dict

    if isinstance(source, nn.Module):
        sd = source.state_dict()
    else:
        sd = unwrap_state_dict(read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source)[0]
    target = {k: v for k, v in model.state_dict().items() if k.startswith(TRUNK)}
    missing = sorted(k for k in target if k not in sd)
    wrong = sorted(f"{k} {list(sd[k].shape)} vs {list(v.shape)}" for k, v in target.items() if k in sd and sd[k].shape != v.shape)
    extra = sorted(k for k in sd if k.startswith(tuple(f"{t}." for t in TRUNK)) and k not in target)
    if missing or wrong or extra:
        raise ValueError(f"not a torchvision {model.arch} state dict: missing {missing[:5]}, mismatched {wrong[:5]}, "
                         f"extra trunk keys {extra[:5]}")
    model.load_state_dict({k: sd[k] for k in target}, strict=False)
    return TrunkLoadResult(sorted(target), sorted(k for k in sd if k not in target))


def is_torchvision_resnet(state_dict: Mapping[str, Any]) -> bool:
    """True for a plain torchvision ResNet state dict (``layer4``/``fc`` present, no ``vt.*``)."""
    keys = set(state_dict)
    return "fc.weight" in keys and any(k.startswith("layer4.") for k in keys) and not any(k.startswith("vt.") for k in keys)


# ------------------------------------------------------------------------------------------------ registration
def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.875, interpolation="bilinear",
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="conv1", classifier="head",
                fixed_input_size=False, min_input_size=(3, 32, 32), paper_ids="arXiv:2006.03677",
                notes=("no official weights; trunk initialisable from torchvision ResNet weights",), **kwargs)


default_cfgs = generate_default_cfgs({f"vt_resnet{d}.untrained": _cfg() for d in (18, 34, 50, 101)})

MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    "vt_resnet18": dict(arch="resnet18", num_modules=2, token_groups=1),
    "vt_resnet34": dict(arch="resnet34", num_modules=3, token_groups=2),
    "vt_resnet50": dict(arch="resnet50", num_modules=3, token_groups=4),
    "vt_resnet101": dict(arch="resnet101", num_modules=3, token_groups=4),
}


def _build(name: str, pretrained: bool, kwargs: Dict[str, Any]) -> VTResNet:
    return build_model_with_cfg(VTResNet, name, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3),
                                feature_cls="getter"), **dict(MODEL_ARGS[name], **kwargs))


@register_model
def vt_resnet18(pretrained: bool = False, **kwargs: Any) -> VTResNet:
    """VT-ResNet-18: 2 VT modules (L 16, C_T 1024) replace layer4; 11.18 M params, 1.57 GMACs at 224."""
    return _build("vt_resnet18", pretrained, kwargs)


@register_model
def vt_resnet34(pretrained: bool = False, **kwargs: Any) -> VTResNet:
    """VT-ResNet-34: 3 VT modules, token_groups 2; 19.56 M params, 3.25 GMACs."""
    return _build("vt_resnet34", pretrained, kwargs)


@register_model
def vt_resnet50(pretrained: bool = False, **kwargs: Any) -> VTResNet:
    """VT-ResNet-50: 3 VT modules at 1024 channels, token_groups 4; 22.02 M params, 3.61 GMACs."""
    return _build("vt_resnet50", pretrained, kwargs)


@register_model
def vt_resnet101(pretrained: bool = False, **kwargs: Any) -> VTResNet:
    """VT-ResNet-101: 3 VT modules at 1024 channels, token_groups 4; 41.01 M params, 7.34 GMACs."""
    return _build("vt_resnet101", pretrained, kwargs)
