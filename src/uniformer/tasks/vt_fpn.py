"""VT-FPN semantic segmentation (Wu et al., ICCV 2021, §5.3): a ResNet backbone's C2–C5 maps, a Visual-Transformer
feature pyramid neck (one filter tokenizer per level, one transformer shared by all levels' tokens, one projector per
level) and the Panoptic-FPN semantic head (:class:`~uniformer.tasks.seg_heads.SemanticFPNHead`). The convolutional
FPN neck (:class:`~uniformer.tasks.necks.ConvFPNNeck`) is the baseline the paper compares MACs against. Design
decisions: ``shared/spec/vt.md`` §4; the VT building blocks are those of :mod:`uniformer.layers.vt`.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models._utils import IntermediateLayerGetter  # what torchvision's own segmentation models use

from ..data.padding import pad_to_multiple
from ..layers.vt import FilterTokenizer, Projector, TokenTransformer, init_vt_weights
from ..models.common import eval_mode
from ..layers import is_tracing
from .necks import RESNET_CHANNELS, ConvFPNNeck, check_feature_levels
from .seg_heads import SemanticFPNHead

__all__ = ["VTFPNNeck", "VTFPN", "fpn_neck_macs", "resnet_level_shapes"]

STRIDES = (4, 8, 16, 32)
SIZE_DIVISIBILITY = 32  # VTFPN pads inputs to a multiple of the coarsest stride


def resnet_level_shapes(image_size: Tuple[int, int], strides: Sequence[int] = STRIDES) -> List[Tuple[int, int]]:
    """Spatial sizes of torchvision ResNet's C2–C5 maps for an ``image_size`` (H, W) input: every stride-2 layer
    (stem conv, max-pool, first conv of a stage) maps a side n to ceil(n / 2), so 473 → 119, 60, 30, 15 (not 473 // s).
    """
    out = []
    for s in strides:
        if s < 1 or s & (s - 1):
            raise ValueError(f"strides must be powers of two, got {s}")
        h, w = image_size
        for _ in range(s.bit_length() - 1):
            h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


class VTFPNNeck(nn.Module):
    """Visual-Transformer feature pyramid (spec §4.1): per level a filter tokenizer (``num_tokens`` tokens of width
    ``token_dim``), the tokens of all levels concatenated through ONE shared transformer (cross-scale mixing), split
    back, and per level a projector to ``out_channels`` (lateral 1×1 conv + BN when the level's channels differ,
    identity otherwise). No 3×3 output convs. ``top_down=True`` adds FPN's nearest-upsample-and-add path from coarser to
    finer outputs (off by default, as in the spec). ``forward(features)`` → list of (B, out_channels, H_i, W_i); with
    ``return_attn=True`` also a dict: ``tokenizer`` (per level (B, 1, L, H_i·W_i), sums to 1 over pixels),
    ``transformer`` ((B, heads, n_levels·L, n_levels·L), rows sum to 1) and ``projector`` (per level
    (B, heads, H_i·W_i, L), sums to 1 over tokens). Weights: :func:`~uniformer.layers.vt.init_vt_weights`.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = RESNET_CHANNELS,
        out_channels: int = 256,
        num_tokens: int = 8,
        token_dim: int = 1024,
        num_heads: int = 16,
        pix_groups: int = 16,
        kqv_groups: int = 8,
        token_groups: int = 1,
        ffn_dim: int = 1024,
        pos_enc: bool = True,
        top_down: bool = False,
    ) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if not in_channels or any(not isinstance(c, int) or c <= 0 or c % pix_groups for c in in_channels):
            raise ValueError(f"in_channels must be positive multiples of pix_groups={pix_groups}, got {in_channels}")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be at least 1, got {num_tokens}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_tokens, self.top_down = num_tokens, top_down
        self.tokenizers = nn.ModuleList(
            FilterTokenizer(c, num_tokens, token_dim, pix_groups, pos_enc) for c in in_channels)
        self.transformer = TokenTransformer(token_dim, num_heads, kqv_groups, ffn_dim)
        self.projectors = nn.ModuleList(
            Projector(c, out_channels, token_dim, num_heads, pix_groups, token_groups) for c in in_channels)
        init_vt_weights(self)

    def forward(self, features: Sequence[torch.Tensor], return_attn: bool = False
                ) -> Union[List[torch.Tensor], Tuple[List[torch.Tensor], Dict[str, object]]]:
        check_feature_levels(features, self.in_channels, type(self).__name__)
        tokens, tok_attn = zip(*(tok(f) for tok, f in zip(self.tokenizers, features)))
        mixed, tr_attn = self.transformer(torch.cat(tokens, dim=1))  # (B, n_levels * L, C_T)
        parts = mixed.split(self.num_tokens, dim=1)
        outs, coefs = zip(*(proj(f, t) for proj, f, t in zip(self.projectors, features, parts)))
        outs = list(outs)
        if self.top_down:
            for i in range(len(outs) - 1, 0, -1):
                outs[i - 1] = outs[i - 1] + F.interpolate(outs[i], size=outs[i - 1].shape[-2:], mode="nearest")
        if return_attn:
            return outs, dict(tokenizer=list(tok_attn), transformer=tr_attn, projector=list(coefs))
        return outs


class VTFPN(nn.Module):
    """Semantic segmentation model: torchvision ResNet-50/101 (``weights=None``; C2–C5 from ``layer1..layer4``) →
    ``neck`` ('vt': :class:`VTFPNNeck`, 'conv': :class:`~uniformer.tasks.necks.ConvFPNNeck`; ``neck_kwargs`` go to
    it) → :class:`~uniformer.tasks.seg_heads.SemanticFPNHead` → ×4 bilinear upsample. ``forward(x)`` → logits
    (B, num_classes, H, W) for any H, W: the input is zero-padded on the right/bottom to a multiple of 32 and the
    logits are cropped back. The loss is the caller's: the paper's recipe is
    ``F.cross_entropy(logits, target, ignore_index=255)``.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", neck: str = "vt", in_chans: int = 3,
                 head_channels: int = 128, dropout: float = 0.0, **neck_kwargs: object) -> None:
        super().__init__()
        if backbone not in ("resnet50", "resnet101"):
            raise ValueError(f"backbone must be 'resnet50' or 'resnet101', got {backbone!r}")
        if neck not in ("vt", "conv"):
            raise ValueError(f"neck must be 'vt' or 'conv', got {neck!r}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be at least 1, got {in_chans}")
        resnet = getattr(torchvision.models, backbone)(weights=None)
        if in_chans != 3:
            resnet.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
        # a real module tree (stem, layer1..4 as nn.Sequential; avgpool/fc dropped) with torchvision's state-dict keys
        self.backbone = IntermediateLayerGetter(resnet, return_layers={f"layer{i + 1}": f"c{i + 2}" for i in range(4)})
        self.in_chans, self.num_classes = in_chans, num_classes
        out_channels = int(neck_kwargs.get("out_channels", 256))
        if neck == "vt":
            self.neck: nn.Module = VTFPNNeck(RESNET_CHANNELS, **neck_kwargs)
        else:
            unknown = set(neck_kwargs) - {"out_channels"}
            if unknown:
                raise ValueError(f"the conv neck takes only out_channels, got {sorted(unknown)}")
            self.neck = ConvFPNNeck(RESNET_CHANNELS, out_channels)
        self.head = SemanticFPNHead(num_classes, out_channels, head_channels, len(RESNET_CHANNELS), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_tracing() and (x.ndim != 4 or x.shape[1] != self.in_chans):
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        x = pad_to_multiple(x, SIZE_DIVISIBILITY)
        logits = self.head(self.neck(list(self.backbone(x).values())))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :H, :W]


def fpn_neck_macs(neck: nn.Module, image_size: Tuple[int, int] = (800, 1216),
                  in_channels: Optional[Sequence[int]] = None) -> int:
    """fvcore MACs of one eval-mode forward of a pyramid ``neck`` alone (batch 1) on zero C2–C5 maps shaped as
    torchvision ResNet produces them for an ``image_size`` (H, W) input (:func:`resnet_level_shapes`, strides 4–32).
    ``in_channels`` defaults to the neck's own ``in_channels`` (else ResNet-50's). Norm layers and upsampling count,
    as in :func:`uniformer.flops.count_flops`; softmax and additions do not (fvcore's convention).
    """
    with warnings.catch_warnings():  # fvcore scripts a loss function at import; torch deprecates jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    chans = tuple(in_channels if in_channels is not None else getattr(neck, "in_channels", RESNET_CHANNELS))
    shapes = resnet_level_shapes(image_size, STRIDES[: len(chans)] if len(chans) <= len(STRIDES) else
                                 [4 * 2 ** i for i in range(len(chans))])
    param = next(neck.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    feats = [torch.zeros(1, c, h, w, device=device) for c, (h, w) in zip(chans, shapes)]
    with eval_mode(neck, no_grad=True):
        analysis = FlopCountAnalysis(neck, (feats,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        return int(analysis.total())
