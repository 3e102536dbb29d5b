"""The model zoo as tables and text: every registered model (params, GFLOPs, default input, checkpoint tags), the
official dense configs (published numbers, exact params), and one model's architecture, size, features and
checkpoints — what ``uniformer models`` and ``uniformer info`` print."""
from __future__ import annotations

import fnmatch
from typing import List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn

from .engine.inference import default_input
from .flops import count_flops, count_params, official_dense_flops
from .models.factory import checkpoint_tags, create_model, list_models
from .models.vt_resnet import VTResNet
from .tasks.mmdet_weights import mmdet_num_parameters
from .tasks.official import from_official_config
from .tasks.official_zoo import OFFICIAL_DENSE_CONFIGS

__all__ = ["ModelsTable", "models_table", "dense_models_table", "format_table", "model_info"]

ModelsTable = Tuple[Tuple[str, ...], List[Tuple[str, ...]], Tuple[int, ...], str]


def _gflops(model: nn.Module, size: Sequence[int]) -> float:
    return count_flops(model, (1, *size)) / 1e9


def format_table(header: Sequence[str], rows: List[Sequence[str]], left: Sequence[int]) -> str:
    """Rows under a header, columns padded to their widest cell; ``left`` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in list(rows) + [header]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in [list(header)] + [list(r) for r in rows])


def dense_models_table(pattern: str = "*", flops: Optional[bool] = None) -> ModelsTable:
    """The official dense configs (header, rows, left-aligned columns, footer): task, head, backbone, published
    numbers, exact params, GFLOPs with ``flops=True``. ``ValueError`` when no config matches ``pattern``."""
    entries = [e for e in OFFICIAL_DENSE_CONFIGS.values() if fnmatch.fnmatch(e.name, pattern)]
    if not entries:
        raise ValueError(f"no official dense config matches {pattern!r}; run `uniformer models --task dense`")
    rows = []
    for e in entries:
        with torch.device("meta"):  # exact parameter counts without allocating the weights
            model = from_official_config(e.name)
        # torchvision's detectors carry background box-regression rows mmdet has not: count as mmdet does
        params = mmdet_num_parameters(model) if e.task == "detection" else sum(p.numel() for p in model.parameters())
        gflops = "-"
        if flops is True:
            gflops = f"{official_dense_flops(from_official_config(e.name), e) / 1e9:.1f}"
        metrics = ", ".join(f"{k} {v}" for k, v in e.metrics.items())
        rows.append((e.name, e.task, e.family, f"{e.size} {e.attention}", f"{params / 1e6:.2f}", gflops,
                     "x".join(map(str, e.flops_input)), metrics))
    footer = ("\nRun one: uniformer predict --official-config NAME_OR_FILE --checkpoint OFFICIAL.pth IMAGE "
              "(docs/dense.md)." + ("" if flops is True else " GFLOPs: add --flops (fvcore, a few seconds per config)."))
    return (("official config", "task", "head", "backbone", "params (M)", "GFLOPs", "at", "published"), rows,
            (0, 1, 2, 3, 6, 7), footer)


def models_table(pattern: str = "*", flops: Optional[bool] = None) -> ModelsTable:
    """The registered models (header, rows, left-aligned columns, footer): params, GFLOPs (unless ``flops=False``),
    default input, checkpoint tags. ``ValueError`` when no model matches ``pattern``."""
    names = list_models(pattern)
    if not names:
        raise ValueError(f"no model matches {pattern!r}; run `uniformer models` to list them all")
    rows = []
    for name in names:
        model = create_model(name)
        size = default_input(model)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflops = f"{_gflops(model, size):.3f}" if flops is not False else "-"
        rows.append((name, f"{params:.2f}", gflops, "x".join(map(str, size[1:])), ", ".join(checkpoint_tags(name))))
        del model
    footer = "" if flops is False else ("\nGFLOPs: fvcore multiply-adds at the default input, batch 1 (the papers' "
                                        "convention); video: per view (T x H x W).")
    return ("model", "params (M)", "GFLOPs", "input", "checkpoint tags"), rows, (0, 3, 4), footer


def _architecture(model: nn.Module) -> List[str]:
    """The lines naming a model's shape: trunk and tokens of a VT-ResNet, stages and heads of a UniFormer."""
    if isinstance(model, VTResNet):
        heads = model.vt[0].transformer.num_heads
        return [f"  trunk       torchvision {model.arch}, stages 1-3", f"  vt modules  {len(model.vt)}",
                f"  tokens      {model.num_tokens} x {model.token_dim}  (heads per VT module: {heads})"]
    lines = [f"  depth       {model.depth}", f"  embed_dim   {model.embed_dim}",
             f"  head_dim    {model.head_dim}  (heads per attention stage: "
             f"{[c // model.head_dim for c in model.embed_dim[2:]]})"]
    for attr in ("conv_stem", "return_dense", "prune_ratio"):
        if getattr(model, attr, None):
            lines.append(f"  {attr:<11} {getattr(model, attr)}")
    return lines


def model_info(name: str, input_size: Optional[int] = None) -> str:
    """``uniformer info NAME``: class, architecture, params, GFLOPs at the default input (square side
    ``input_size``), feature channels and strides, and every official checkpoint with its input, crop, notes and
    source. ``ValueError`` with close-name suggestions for an unknown name."""
    model = create_model(name)
    size = default_input(model, input_size)
    lines = [f"{name}  ({type(model).__name__})", *_architecture(model),
             f"  params      {count_params(model):,}",
             f"  GFLOPs      {_gflops(model, size):.3f} at {'x'.join(map(str, size[1:]))}"]
    channels = [f["num_chs"] for f in model.feature_info]
    lines += [f"  features    channels {channels}, strides {[f['reduction'] for f in model.feature_info]}",
              "  checkpoints"]
    for full in list_models(name.split(".")[0], pretrained=True):
        pc = timm.models.get_pretrained_cfg(full)
        source = f"{pc.hf_hub_id}/{pc.hf_hub_filename}" if pc.hf_hub_id else (pc.file or "official zoo (local file)")
        notes = ", ".join(pc.notes or ())
        side = "x".join(map(str, pc.input_size[1:]))
        names = f"  {len(pc.label_names)} class names" if getattr(pc, "label_names", None) else ""
        lines.append(f"    {full:<40} input {side}  crop_pct {pc.crop_pct}  {notes}{names}  {source}")
    return "\n".join(lines)
