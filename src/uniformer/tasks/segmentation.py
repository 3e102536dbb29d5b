"""Semantic segmentation on top of any four-level backbone (spec ``uniformer.md`` §5.3, ``ecosystem.md`` §5): the
Semantic FPN, VT-FPN and UperNet (+ FCN auxiliary) heads wrapped in :class:`SegmentationModel`, whole-image and
sliding-window inference, the dataset-level mIoU metric and colour overlays. The ADE20K-layout dataset and its
transforms are in :mod:`uniformer.data.ade20k`; the FPN neck in :mod:`uniformer.tasks.necks`, the VT-FPN neck in
:mod:`uniformer.tasks.vt_fpn`, the heads (mmseg's BatchNorm Semantic FPN, UperNet, FCN, and the GroupNorm Semantic
FPN) in :mod:`uniformer.tasks.seg_heads`, and the official mmseg models in :mod:`uniformer.tasks.mmseg`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import draw_segmentation_masks

from .._io import PathLike, atomic_path
from ..data import load_image
from ..data.ade20k import IGNORE_INDEX, int_pair
from ..data.padding import pad_to_multiple
from ..models.common import eval_mode
from .necks import ConvFPNNeck, check_feature_levels
from .seg_heads import AUX_LOSS_WEIGHT, FCNAuxHead, FPNHead, SemanticFPNHead, UperNetHead
from .vt_fpn import VTFPNNeck

__all__ = [
    "SegmentationModel", "slide_inference", "whole_inference", "predict_mask", "SegmentationMetric",
    "segmentation_palette", "save_overlay", "backbone_channels",
]

SIZE_DIVISOR = 32  # inputs are padded to a multiple of the coarsest backbone stride
HEADS = ("fpn", "fpn-gn", "vt-fpn", "upernet")


# ----------------------------------------------------------------------------------------------------------------------
# heads and model
# ----------------------------------------------------------------------------------------------------------------------

_FPN_KWARGS = ("neck_channels", "head_channels", "dropout")
_VT_KWARGS = ("num_tokens", "token_dim", "num_heads", "pix_groups", "kqv_groups", "token_groups", "ffn_dim",
              "pos_enc", "top_down")
_UPER_KWARGS = ("channels", "pool_scales", "dropout")
_AUX_KWARGS = ("aux_channels", "aux_in_index", "aux_dropout", "aux_weight", "aux_num_convs", "aux_kernel_size",
               "aux_concat_input")


def backbone_channels(backbone: nn.Module) -> List[int]:
    """Channels of a backbone's feature maps: its ``out_channels`` (dense UniFormers), else timm ``feature_info``."""
    channels = getattr(backbone, "out_channels", None)
    if channels is None and hasattr(backbone, "feature_info") and hasattr(backbone.feature_info, "channels"):
        channels = backbone.feature_info.channels()  # timm features_only models
    if channels is None:
        raise ValueError(f"cannot tell the channels of {type(backbone).__name__}'s feature maps: it has no "
                         "out_channels (or timm feature_info); pass in_channels")
    if isinstance(channels, int):
        raise ValueError(f"{type(backbone).__name__}.out_channels is a single int ({channels}); expected one value "
                         "per feature level (pass in_channels)")
    return [int(c) for c in channels]


class SegmentationModel(nn.Module):
    """Backbone + segmentation head. The backbone's ``forward`` returns a list (or dict) of NCHW maps at strides
    4/8/16/32 with channels ``in_channels`` (default: ``backbone.out_channels`` or timm ``feature_info``). ``head``:
    'fpn' (Semantic FPN as mmseg and the official UniFormer models: :class:`~uniformer.tasks.necks.ConvFPNNeck` to
    ``neck_channels`` (256) + the BatchNorm :class:`~uniformer.tasks.seg_heads.FPNHead` with ``head_channels`` (128)
    and ``dropout`` (0.1)), 'fpn-gn' (the same neck + the GroupNorm Detectron2 head
    :class:`~uniformer.tasks.seg_heads.SemanticFPNHead`, which also takes ``num_groups`` (32)), 'vt-fpn'
    (:class:`~uniformer.tasks.vt_fpn.VTFPNNeck`, which also takes its own keywords, + the GroupNorm head) or
    'upernet' (:class:`~uniformer.tasks.seg_heads.UperNetHead` with ``channels`` (512), ``pool_scales``, ``dropout``
    (0.1)). ``aux_head`` (default: True for UperNet only) adds an :class:`~uniformer.tasks.seg_heads.FCNAuxHead`
    (``aux_channels`` 256, ``aux_in_index`` 2, ``aux_dropout`` 0.1, ``aux_weight`` 0.4, ``aux_num_convs`` 1,
    ``aux_kernel_size`` 3, ``aux_concat_input`` False). mmseg module names: ``backbone``, ``neck``, ``decode_head``,
    ``auxiliary_head``; official mmseg models are built by :func:`~uniformer.tasks.mmseg.build_mmseg_segmentor`.
    ``forward(x)`` pads x to a multiple of 32, upsamples the logits bilinearly and crops them back → (B, K, H, W) for
    any H, W (mmseg's own test, without padding, is :func:`~uniformer.tasks.mmseg.mmseg_inference`); in training mode
    with an aux head it returns ``(logits, aux_logits)``, both at input resolution. :meth:`loss` is cross-entropy with
    ignore index 255 (+ ``aux_weight`` × the aux CE).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "fpn",
                 in_channels: Optional[Sequence[int]] = None, aux_head: Optional[bool] = None,
                 **head_kwargs: Any) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.backbone, self.num_classes, self.head_type = backbone, num_classes, head
        self.in_channels = tuple(int(c) for c in in_channels) if in_channels is not None else \
            tuple(backbone_channels(backbone))
        if not self.in_channels or any(c <= 0 for c in self.in_channels):
            raise ValueError(f"in_channels must be positive ints, got {self.in_channels}")
        self.ignore_index, self.size_divisor = IGNORE_INDEX, SIZE_DIVISOR
        use_aux = head == "upernet" if aux_head is None else bool(aux_head)
        allowed = {"fpn": _FPN_KWARGS, "fpn-gn": _FPN_KWARGS + ("num_groups",),
                   "vt-fpn": _FPN_KWARGS + ("num_groups",) + _VT_KWARGS, "upernet": _UPER_KWARGS}[head]
        allowed = allowed + (_AUX_KWARGS if use_aux else ())
        unknown = sorted(set(head_kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"unknown keyword(s) {unknown} for head={head!r}"
                             f"{' with aux_head' if use_aux else ''}; expected some of {sorted(allowed)}")
        kw = dict(head_kwargs)
        aux_kw = {k: kw.pop(k) for k in _AUX_KWARGS if k in kw}
        if head == "upernet":
            self.neck: nn.Module = nn.Identity()
            self.decode_head: nn.Module = UperNetHead(self.in_channels, num_classes, **kw)
        else:
            neck_channels = int(kw.pop("neck_channels", 256))
            channels, dropout = int(kw.pop("head_channels", 128)), float(kw.pop("dropout", 0.1))
            if head == "vt-fpn":
                self.neck = VTFPNNeck(self.in_channels, neck_channels, **{k: kw.pop(k) for k in _VT_KWARGS if k in kw})
            else:
                self.neck = ConvFPNNeck(self.in_channels, neck_channels)
            if head == "fpn":
                strides = tuple(4 * 2 ** i for i in range(len(self.in_channels)))
                self.decode_head = FPNHead(num_classes, neck_channels, channels, strides, dropout)
            else:
                self.decode_head = SemanticFPNHead(num_classes, neck_channels, channels, len(self.in_channels),
                                                   num_groups=int(kw.pop("num_groups", 32)), dropout=dropout)
        self.auxiliary_head: Optional[FCNAuxHead] = None
        if use_aux:
            index = int(aux_kw.get("aux_in_index", 2))
            if not -len(self.in_channels) <= index < len(self.in_channels):
                raise ValueError(f"aux_in_index {index} is out of range for {len(self.in_channels)} feature levels")
            self.auxiliary_head = FCNAuxHead(self.in_channels[index], num_classes,
                                             channels=int(aux_kw.get("aux_channels", 256)), in_index=index,
                                             dropout=float(aux_kw.get("aux_dropout", 0.1)),
                                             loss_weight=float(aux_kw.get("aux_weight", AUX_LOSS_WEIGHT)),
                                             num_convs=int(aux_kw.get("aux_num_convs", 1)),
                                             kernel_size=int(aux_kw.get("aux_kernel_size", 3)),
                                             concat_input=bool(aux_kw.get("aux_concat_input", False)))

    def extract_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The backbone's feature maps as a list, checked against ``in_channels``."""
        feats = self.backbone(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        if isinstance(feats, torch.Tensor) or not isinstance(feats, (list, tuple)):
            raise ValueError(f"the backbone {type(self.backbone).__name__} must return a list of feature maps, got "
                             f"{type(feats).__name__}")
        feats = list(feats)
        check_feature_levels(feats, self.in_channels, f"{type(self).__name__} (backbone output)")
        return feats

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        x = pad_to_multiple(x, self.size_divisor)  # traced / exported graphs always pad
        feats = self.extract_features(x)
        logits = self.decode_head(self.neck(feats))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :H, :W]
        if self.training and self.auxiliary_head is not None:
            aux = F.interpolate(self.auxiliary_head(feats), size=x.shape[-2:], mode="bilinear",
                                align_corners=False)[..., :H, :W]
            return logits, aux
        return logits

    @property
    def aux_weight(self) -> float:
        """Weight of the auxiliary CE in :meth:`loss` (0 without an aux head)."""
        return self.auxiliary_head.loss_weight if self.auxiliary_head is not None else 0.0

    def _ce(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        valid = mask != self.ignore_index
        if not bool(valid.any()):  # every pixel ignored: a zero that keeps the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits, mask, ignore_index=self.ignore_index)

    def loss(self, outputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]], mask: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy averaged over the non-ignored pixels of ``mask`` (B, H, W) (labels 0..K−1, 255 =
        ignore); with ``(logits, aux_logits)`` adds ``aux_weight`` × the aux CE. Logits of another size are resized
        bilinearly to the mask's size first. An all-ignored batch gives a zero loss."""
        logits, aux = (outputs[0], outputs[1]) if isinstance(outputs, (tuple, list)) else (outputs, None)
        if mask.ndim != 3 or mask.shape[0] != logits.shape[0]:
            raise ValueError(f"mask must be (B, H, W) with B = {logits.shape[0]}, got shape {tuple(mask.shape)}")
        mask = mask.long()
        bad = (mask < 0) | ((mask >= self.num_classes) & (mask != self.ignore_index))
        if bool(bad.any()):
            raise ValueError(f"mask holds labels {sorted(set(mask[bad].unique().tolist()))[:10]}; expected "
                             f"0..{self.num_classes - 1} or {self.ignore_index} = ignore")
        total = self._ce(logits, mask)
        if aux is not None:
            weight = self.aux_weight if self.auxiliary_head is not None else AUX_LOSS_WEIGHT
            total = total + weight * self._ce(aux, mask)
        return total


# ----------------------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------------------

def _eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``x`` resized to x's size (first element if the model returns a tuple)."""
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _check_batch(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected an image batch (B, C, H, W), got {shape}")


def whole_inference(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """mmseg 'whole' mode: one forward of the full (B, 3, H, W) ``image`` → logits (B, K, H, W). Runs with the model
    in eval mode and without autograd (the previous mode is restored)."""
    _check_batch(image)
    with eval_mode(model, no_grad=True):
        return _eval_logits(model, image)


def slide_inference(model: nn.Module, image: torch.Tensor, num_classes: int,
                    crop: Union[int, Sequence[int]] = (512, 512),
                    stride: Union[int, Sequence[int]] = (341, 341)) -> torch.Tensor:
    """mmseg 'slide' mode: ``crop`` (h, w) windows every ``stride`` pixels (the last row/column of windows shifted to
    end at the border; windows are clipped to images smaller than the crop, and the model pads them internally), the
    logits of overlapping windows averaged per pixel → (B, K, H, W). Eval mode, no autograd (mode restored)."""
    _check_batch(image)
    (ch, cw), (sh, sw) = int_pair(crop, "crop"), int_pair(stride, "stride")
    B, _, H, W = image.shape
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    logits = image.new_zeros((B, num_classes, H, W))
    count = image.new_zeros((1, 1, H, W))
    with eval_mode(model, no_grad=True):
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                out = _eval_logits(model, image[:, :, y1:y2, x1:x2])
                if out.shape[1] != num_classes:
                    raise ValueError(f"slide_inference: num_classes={num_classes} but the model returns "
                                     f"{out.shape[1]} channels")
                logits[:, :, y1:y2, x1:x2] += out
                count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def predict_mask(model: nn.Module, image_tensor: torch.Tensor, original_size: Sequence[int], mode: str = "whole",
                 num_classes: Optional[int] = None, crop: Union[int, Sequence[int]] = (512, 512),
                 stride: Union[int, Sequence[int]] = (341, 341), flip: bool = False) -> torch.Tensor:
    """Class map (H, W) long for one image: a (3, h, w) or (1, 3, h, w) ``image_tensor`` (e.g. from
    :class:`~uniformer.data.ade20k.SegEvalTransform`) through :func:`whole_inference` or :func:`slide_inference`
    (``mode``; ``num_classes`` defaults to ``model.num_classes``), optionally averaged with the un-flipped prediction
    of the horizontally flipped image (``flip``), the logits resized bilinearly to ``original_size`` (H, W), then
    argmax."""
    if image_tensor.ndim == 3:
        image_tensor = image_tensor.unsqueeze(0)
    if image_tensor.ndim != 4 or image_tensor.shape[0] != 1:
        raise ValueError(f"predict_mask takes one image (3, H, W) or (1, 3, H, W), got {tuple(image_tensor.shape)}")
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    size = int_pair(tuple(int(s) for s in original_size), "original_size")
    if mode == "slide":
        k = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if k is None:
            raise ValueError(f"slide mode needs num_classes ({type(model).__name__} has no num_classes attribute)")

        def infer(x: torch.Tensor) -> torch.Tensor:
            return slide_inference(model, x, int(k), crop, stride)
    else:
        def infer(x: torch.Tensor) -> torch.Tensor:
            return whole_inference(model, x)
    logits = infer(image_tensor)
    if flip:
        logits = (logits + infer(image_tensor.flip(-1)).flip(-1)) / 2
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits[0].argmax(0)


# ----------------------------------------------------------------------------------------------------------------------
# metric
# ----------------------------------------------------------------------------------------------------------------------

def _nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries (NaN when there are none, without NumPy's empty-slice warning)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


class SegmentationMetric:
    """Dataset-level semantic-segmentation metrics (mmseg ``eval_metrics``): per class, the intersection, union,
    predicted area and label area are summed over every :meth:`update` (pixels whose target is ``ignore_index`` are
    excluded), and :meth:`compute` returns percentages: ``mIoU`` = mean of intersection/union over classes with a
    non-zero union, ``mAcc`` = mean of intersection/label-area over classes present in the targets, ``aAcc`` = correct
    / labelled pixels, plus ``per_class_iou`` and ``per_class_acc`` (NaN for the excluded classes). All NaN before any
    labelled pixel was seen.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_names: Optional[Sequence[str]] = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names; expected num_classes={num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        k = self.num_classes
        self.area_intersect, self.area_union = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        self.area_pred, self.area_label = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)

    def update(self, pred: Union[torch.Tensor, np.ndarray], target: Union[torch.Tensor, np.ndarray]) -> None:
        """Add a prediction (H, W) or (B, H, W) of class indices and its same-shaped target (255 = ignore)."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape or pred.ndim not in (2, 3):
            raise ValueError(f"pred and target must have the same (H, W) or (B, H, W) shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype} "
                                 "(take the argmax of logits first)")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        for name, t in (("target", target), ("pred", pred)):
            bad = (t < 0) | (t >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(f"{name} holds class indices {sorted(t[bad].unique().tolist())[:10]} at labelled "
                                 f"pixels; expected 0..{self.num_classes - 1} (or {self.ignore_index} = ignore "
                                 "in the target)")
        k = self.num_classes
        inter = torch.bincount(pred[pred == target], minlength=k).double()
        area_pred = torch.bincount(pred, minlength=k).double()
        area_label = torch.bincount(target, minlength=k).double()
        self.area_intersect += inter
        self.area_pred += area_pred
        self.area_label += area_label
        self.area_union += area_pred + area_label - inter

    def compute(self) -> Dict[str, Any]:
        """``dict(mIoU, mAcc, aAcc, per_class_iou, per_class_acc)`` in percent (NaN-aware means, as mmseg)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = (self.area_intersect / self.area_union).numpy() * 100
            acc = (self.area_intersect / self.area_label).numpy() * 100
        total = float(self.area_label.sum())
        return dict(mIoU=_nanmean(iou), mAcc=_nanmean(acc),
                    aAcc=float(self.area_intersect.sum()) / total * 100 if total else math.nan,
                    per_class_iou=[float(v) for v in iou], per_class_acc=[float(v) for v in acc])


# ----------------------------------------------------------------------------------------------------------------------
# visualisation
# ----------------------------------------------------------------------------------------------------------------------

def segmentation_palette(num_classes: int = IGNORE_INDEX, seed: int = 0) -> np.ndarray:
    """A fixed (num_classes, 3) uint8 RGB palette: colours drawn from a NumPy generator seeded with ``seed`` (the same
    on every call and machine), class 0 of the default palette being (120, 120, 120) like ADE20K's first colour."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if num_classes > 256:
        raise ValueError(f"num_classes must be at most 256 for an 8-bit palette, got {num_classes}")
    palette = np.random.default_rng(seed).integers(0, 256, size=(256, 3), dtype=np.uint8)  # prefix-stable
    if seed == 0:
        palette[0] = (120, 120, 120)
    return palette[:num_classes]


def save_overlay(image: Union[Image.Image, PathLike], mask: Union[torch.Tensor, np.ndarray], output_path: PathLike,
                 palette: Optional[Union[np.ndarray, Sequence[Sequence[int]]]] = None, alpha: float = 0.5) -> Path:
    """Write ``image`` (PIL or a path read with :func:`~uniformer.data.load_image`) with ``mask`` (H, W) blended in
    as colours by torchvision's ``draw_segmentation_masks`` (``alpha`` × palette colour + (1 − ``alpha``) × pixel;
    label 255 left unchanged) to a PNG at ``output_path``, atomically. ``palette``: (N, 3) RGB values, default
    :func:`segmentation_palette`. Returns the path."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = load_image(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    labels = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if labels.ndim != 2 or labels.shape != (img.height, img.width):
        raise ValueError(f"mask shape {labels.shape} does not match the image size {img.width}x{img.height}; "
                         f"expected (H, W) = ({img.height}, {img.width})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"mask must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    valid = labels != IGNORE_INDEX
    top = int(labels[valid].max()) + 1 if valid.any() else 1
    colours = segmentation_palette(max(top, 1)) if palette is None else np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3:
        raise ValueError(f"palette must be (N, 3) RGB values, got shape {colours.shape}")
    if valid.any() and (labels[valid].min() < 0 or top > len(colours)):
        raise ValueError(f"mask labels span {int(labels[valid].min())}..{top - 1} but the palette has "
                         f"{len(colours)} colours")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # float [0, 1]: no truncation
    present = np.unique(labels[valid])
    if present.size:
        lab = torch.from_numpy(labels)
        x = draw_segmentation_masks(x, torch.stack([lab == int(k) for k in present]), alpha=alpha,
                                    colors=[tuple(float(c) for c in colours[k]) for k in present])
    result = Image.fromarray(np.clip(x.permute(1, 2, 0).numpy() * 255 + 0.5, 0, 255).astype(np.uint8))
    path = Path(output_path)
    with atomic_path(path) as tmp:
        result.save(tmp, format="PNG")
    return path
