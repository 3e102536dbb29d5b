"""VT-FPN semantic segmentation (Wu et al., ICCV 2021, §5.3): a ResNet backbone's C2–C5 maps, a Visual-Transformer
feature pyramid neck (one filter tokenizer per level, one transformer shared by all levels' tokens, one projector per
level) and the Panoptic-FPN semantic head. The convolutional FPN neck (torchvision) is the baseline the paper compares
MACs against. Design decisions: ``shared/spec/vt.md`` §4; the VT building blocks are those of
:mod:`uniformer.layers.vt`.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models._utils import IntermediateLayerGetter  # what torchvision's own segmentation models use
from torchvision.ops import FeaturePyramidNetwork

from ..layers.vt import FilterTokenizer, Projector, TokenTransformer, init_vt_weights

__all__ = ["VTFPNNeck", "ConvFPNNeck", "SemanticFPNHead", "VTFPN", "fpn_neck_macs", "resnet_level_shapes",
           "check_feature_levels"]

RESNET_CHANNELS = (256, 512, 1024, 2048)  # C2–C5 of ResNet-50/101
STRIDES = (4, 8, 16, 32)
SIZE_DIVISIBILITY = 32  # VTFPN pads inputs to a multiple of the coarsest stride


def _tracing() -> bool:
    """True while ``torch.jit`` traces/scripts or ``torch.export`` (ONNX) captures a model: shape checks are skipped."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting()


def check_feature_levels(features: Sequence[torch.Tensor], in_channels: Sequence[int], owner: str) -> None:
    """Raise ``ValueError`` unless ``features`` is a list of ``len(in_channels)`` NCHW maps with those channels."""
    if _tracing():
        return
    if not isinstance(features, (list, tuple)) or len(features) != len(in_channels):
        found = f"{len(features)} levels" if isinstance(features, (list, tuple)) else type(features).__name__
        raise ValueError(f"{owner} expects a list of {len(in_channels)} feature maps, got {found}")
    for i, (f, c) in enumerate(zip(features, in_channels)):
        if not isinstance(f, torch.Tensor) or f.ndim != 4 or f.shape[1] != c:
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{owner}: level {i} must be a (B, {c}, H, W) map, got {shape}")
    if len({f.shape[0] for f in features}) != 1:
        raise ValueError(f"{owner}: all levels must share the batch size, got {[f.shape[0] for f in features]}")


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


class ConvFPNNeck(nn.Module):
    """The convolutional FPN baseline: torchvision's ``FeaturePyramidNetwork`` (lateral 1×1 convs, nearest top-down
    path, 3×3 output convs, all at ``out_channels``), taking and returning lists of maps like :class:`VTFPNNeck`."""

    def __init__(self, in_channels: Sequence[int] = RESNET_CHANNELS, out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels, self.out_channels = tuple(in_channels), out_channels
        if not self.in_channels or any(not isinstance(c, int) or c <= 0 for c in self.in_channels):
            raise ValueError(f"in_channels must be positive integers, got {self.in_channels}")
        self.fpn = FeaturePyramidNetwork(list(self.in_channels), out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        check_feature_levels(features, self.in_channels, type(self).__name__)
        return list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())


class SemanticFPNHead(nn.Module):
    """Panoptic-FPN semantic branch (Kirillov et al. 2019, as in Detectron2's ``SemSegFPNHead``): level i (stride
    4·2^i) runs max(1, i) blocks of [3×3 conv → ``channels``, GroupNorm(``num_groups``), ReLU, ×2 bilinear upsample
    (omitted for the stride-4 level)], the levels are summed, then optional dropout and a 1×1 conv to ``num_classes``.
    Each upsample targets the next finer level's exact size, so odd ResNet map sizes line up. ``dropout`` defaults to
    0 (the spec names none; Detectron2 uses none either). ``forward(features)`` → stride-4 logits (B, K, H_0, W_0).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128, num_levels: int = 4,
                 num_groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if channels % num_groups:
            raise ValueError(f"head channels {channels} must be a multiple of num_groups={num_groups}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.scale_heads = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                              nn.GroupNorm(num_groups, channels), nn.ReLU(inplace=True))
                for k in range(max(1, i)))
            for i in range(num_levels))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():  # Detectron2: MSRA fill for the convs, N(0, 0.001) for the predictor
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_feature_levels(features, (self.in_channels,) * len(self.scale_heads), type(self).__name__)
        sizes = [f.shape[-2:] for f in features]
        out = None
        for i, (blocks, f) in enumerate(zip(self.scale_heads, features)):
            for k, block in enumerate(blocks):
                f = block(f)
                if i > 0:
                    f = F.interpolate(f, size=sizes[i - 1 - k], mode="bilinear", align_corners=False)
            out = f if out is None else out + f
        return self.predictor(self.dropout(out))


class VTFPN(nn.Module):
    """Semantic segmentation model: torchvision ResNet-50/101 (``weights=None``; C2–C5 from ``layer1..layer4``) →
    ``neck`` ('vt': :class:`VTFPNNeck`, 'conv': :class:`ConvFPNNeck`; ``neck_kwargs`` go to it) →
    :class:`SemanticFPNHead` → ×4 bilinear upsample. ``forward(x)`` → logits (B, num_classes, H, W) for any H, W: the
    input is zero-padded on the right/bottom to a multiple of 32 and the logits are cropped back. The loss is the
    caller's: the paper's recipe is ``F.cross_entropy(logits, target, ignore_index=255)``.
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
        if not _tracing() and (x.ndim != 4 or x.shape[1] != self.in_chans):
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % SIZE_DIVISIBILITY, (-W) % SIZE_DIVISIBILITY
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
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
    was_training = neck.training
    neck.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(neck, (feats,))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            return int(analysis.total())
    finally:
        neck.train(was_training)
