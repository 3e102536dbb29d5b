"""Export models for deployment: ONNX (onnxruntime), TorchScript and weights-only safetensors.

Every file is written atomically (a temporary file renamed over the target) and, by default, checked: the exported
ONNX / TorchScript model is run on the example input *and* on a batch of another size, and its outputs must match the
eager PyTorch model within ``atol`` (a ``ValueError`` reports the measured difference otherwise).

ONNX exporter choice (PyTorch 2.14, onnxscript 0.7, onnxruntime 1.31), measured for every family:

* ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) exports the image, token-labeling, video,
  dense and VT-ResNet models as is. The hourglass (light) models — ``uniformer_xxs/xs``, their video and dense
  variants — prune tokens with ``torch.argsort(..., stable=True)``, i.e. ``aten.sort.stable``, which the
  onnxscript torch library does not translate ("No ONNX function found for aten.sort.stable"). We translate it to
  ONNX ``TopK`` over the whole axis: the ONNX spec makes ``TopK`` break ties by the lower index, which is exactly a
  stable sort, so the exported light models reproduce the eager token order (ties included) and logits.
* The legacy TorchScript-based exporter (``dynamo=False``) is **not** used: it rejects the stable argsort of the
  light models ("ONNX export of operator Sort, Out parameter is not supported") and writes invalid graphs for the
  UniFormer image/video/dense models (``Transpose`` with a negative ``perm`` from ``movedim``, refused by
  onnxruntime); only VT-ResNet survives it. Falling back to it would therefore only hide errors.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .checkpoint import atomic_path

__all__ = [
    "FORMATS", "export_onnx", "export_torchscript", "export_safetensors", "example_input", "export_model",
    "add_export_parser", "cmd_export",
]

_logger = logging.getLogger("uniformer")

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript", "safetensors")
_SUFFIX_FORMATS = {".onnx": "onnx", ".safetensors": "safetensors", ".pt": "torchscript", ".ts": "torchscript",
                   ".torchscript": "torchscript"}


# ------------------------------------------------------------------------------------------------------ helpers
def _device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _as_list(out: Any) -> List[torch.Tensor]:
    """The model output as a flat list of tensors (a tensor, or a list/tuple of tensors for dense backbones)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise ValueError(f"cannot export a model whose output is {type(out).__name__}: expected a tensor or a list of "
                     f"tensors (call model.eval(); light and token-labeling models return tuples in training mode)")


def _output_names(outputs: Sequence[torch.Tensor], single: bool) -> List[str]:
    return ["logits"] if single else [f"features_{i}" for i in range(len(outputs))]


def _other_batch(example: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random input like ``example`` with a different batch size (``B + 1``), to prove the batch axis is dynamic."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((example.shape[0] + 1, *example.shape[1:]), generator=g)
    return x.to(dtype=example.dtype, device=example.device)


def _check_example(example: torch.Tensor) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"example_input must be a tensor, got {type(example).__name__}")
    if example.ndim < 1 or example.shape[0] < 1:
        raise ValueError(f"example_input needs a batch dimension of at least 1, got shape {tuple(example.shape)}")
    return example


def _max_diff(reference: Sequence[torch.Tensor], got: Sequence[Any], what: str) -> float:
    """Max |reference - got| over all outputs (NaN if any is NaN); ``ValueError`` if the outputs' count or shapes
    differ."""
    if len(reference) != len(got):
        raise ValueError(f"{what} returned {len(got)} output(s), PyTorch {len(reference)}")
    diffs = [0.0]
    for ref, out in zip(reference, got):
        out = torch.as_tensor(out).detach().cpu()
        if tuple(out.shape) != tuple(ref.shape):
            raise ValueError(f"{what} output shape {tuple(out.shape)} differs from PyTorch {tuple(ref.shape)}")
        if ref.numel():
            diffs.append((out.double() - ref.double()).abs().max().item())
    return float("nan") if any(d != d for d in diffs) else max(diffs)


def _assert_close(diff: float, atol: float, what: str) -> None:
    if not diff <= atol:  # also catches NaN
        raise ValueError(f"{what} does not match PyTorch: max abs difference {diff:.3g} exceeds atol {atol:g}")


class _EvalMode:
    """Put a model in eval mode for the duration of a ``with`` block and restore its previous modes afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: Dict[nn.Module, bool] = {}

    def __enter__(self) -> nn.Module:
        self.modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self.modes.items():
            m.training = mode


def _reference(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Tuple[List[List[torch.Tensor]], bool]:
    """Eager outputs for each input, and whether the model returns a single tensor."""
    outs, single = [], True
    with torch.no_grad():
        for x in inputs:
            out = model(x)
            single = isinstance(out, torch.Tensor)
            outs.append([t.detach().cpu() for t in _as_list(out)])
    return outs, single


# ---------------------------------------------------------------------------------------------------------- ONNX
def _sort_stable(self: Any, stable: Optional[bool] = None, dim: int = -1, descending: bool = False) -> Any:
    """ONNX translation of ``aten.sort.stable`` (the light models' ``argsort(stable=True)``): ``TopK`` over the whole
    axis. ONNX ``TopK`` breaks ties by the lower index, which is what a stable sort does."""
    from onnxscript import opset18 as op

    k = op.Reshape(op.Gather(op.Shape(self), dim, axis=0), op.Constant(value_ints=[1]))
    return op.TopK(self, k, axis=dim, largest=descending, sorted=True)


def _onnx(
    model: nn.Module, path: PathLike, example: torch.Tensor, dynamic_batch: bool, opset: Optional[int],
    check: bool, atol: float,
) -> Tuple[Path, Optional[float]]:
    path = _target(path)
    example = _check_example(example).to(_device(model))
    with _EvalMode(model):
        inputs = [example] + ([_other_batch(example)] if check and dynamic_batch else [])
        reference, single = _reference(model, inputs)
        names = _output_names(reference[0], single)
        # a size-1 example dimension invites 0/1 specialisation (size-1 broadcasting) in torch.export: trace the
        # dynamic batch with 2 samples; the check below still runs the file at the example's own batch size
        trace_input = example
        if dynamic_batch and example.shape[0] == 1:
            trace_input = example.expand(2, *example.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model, (trace_input,), dynamo=True, input_names=["input"], output_names=names,
                    opset_version=opset, dynamic_shapes=dynamic_shapes, verbose=False,
                    custom_translation_table={torch.ops.aten.sort.stable: _sort_stable},
                )
        except Exception as e:  # the exporter raises many types; surface them as one clear ValueError
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise ValueError(f"ONNX export of {type(model).__name__} failed: {type(e).__name__}: "
                             f"{lines[0] if lines else ''}") from e
    diff: Optional[float] = None
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        if check:
            import onnxruntime as ort

            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            diff = 0.0
            for x, ref in zip(inputs, reference):
                try:
                    got = session.run(None, {"input": x.detach().cpu().numpy()})
                except Exception as e:  # onnxruntime's own error types
                    raise ValueError(f"the exported ONNX model fails in onnxruntime at batch {x.shape[0]}: {e}") from e
                diff = max(diff, _max_diff(ref, got, f"ONNX model (batch {x.shape[0]})"))
            _assert_close(diff, atol, f"ONNX export of {type(model).__name__} (onnxruntime, batch sizes "
                                      f"{', '.join(str(x.shape[0]) for x in inputs)})")
    return path, diff


def export_onnx(
    model: nn.Module,
    path: PathLike,
    example_input: torch.Tensor,
    dynamic_batch: bool = True,
    opset: Optional[int] = None,
    check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export ``model`` (run in eval mode; its modes are restored afterwards) to an ONNX file at ``path``.

    The graph input is named ``input``; the output ``logits``, or ``features_0..N`` for models returning a list (dense
    backbones). ``dynamic_batch`` makes the batch axis symbolic (``batch``); spatial and temporal sizes stay those of
    ``example_input``. ``opset=None`` uses the exporter's default opset. Exporter: ``torch.onnx.export(dynamo=True)``
    for every family, with ``aten.sort.stable`` translated to ``TopK`` for the light models (see the module docstring
    for why the legacy ``dynamo=False`` exporter is not a usable fallback). Weights are embedded in the one file.

    With ``check=True`` the file is run in onnxruntime (CPUExecutionProvider) on ``example_input`` and, with a dynamic
    batch, on a random batch of another size; a max abs difference to the eager outputs above ``atol`` raises
    ``ValueError`` (and leaves no file behind). Export failures are raised as ``ValueError``. Returns the path.
    """
    return _onnx(model, path, example_input, dynamic_batch, opset, check, atol)[0]


# --------------------------------------------------------------------------------------------------- TorchScript
def _torchscript(model: nn.Module, path: PathLike, example: torch.Tensor, check: bool,
                 atol: float) -> Tuple[Path, Optional[float]]:
    path = _target(path)
    example = _check_example(example).to(_device(model))
    with _EvalMode(model):
        inputs = [example, _other_batch(example)] if check else [example]
        reference, _ = _reference(model, inputs)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # shape-to-int conversions in input checks are skipped while tracing; the check below proves the
                # traced graph is right at another batch size
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
                traced = torch.jit.trace(model, (example,), check_trace=False, strict=False)
        except Exception as e:
            raise ValueError(f"TorchScript tracing of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
    diff: Optional[float] = None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        torch.jit.save(traced, str(tmp))
        if check:
            loaded = torch.jit.load(str(tmp), map_location=example.device)
            diff = 0.0
            with torch.no_grad():
                for x, ref in zip(inputs, reference):
                    try:
                        out = loaded(x)
                    except RuntimeError as e:
                        raise ValueError(f"the traced TorchScript model fails at batch {x.shape[0]} (traced at "
                                         f"{example.shape[0]}): {str(e).strip().splitlines()[-1]}") from e
                    diff = max(diff, _max_diff(ref, _as_list(out), f"TorchScript model (batch {x.shape[0]})"))
            _assert_close(diff, atol, f"TorchScript export of {type(model).__name__} (batch sizes "
                                      f"{', '.join(str(x.shape[0]) for x in inputs)})")
    return path, diff


def export_torchscript(
    model: nn.Module, path: PathLike, example_input: torch.Tensor, check: bool = True, atol: float = 1e-4
) -> Path:
    """Trace ``model`` (in eval mode; modes restored afterwards) with ``torch.jit.trace`` and save it at ``path``.

    Batch sizes are traced symbolically (the light models' token pruning included); spatial and temporal sizes are
    those of ``example_input``. With ``check=True`` the saved file is loaded back with ``torch.jit.load`` and compared
    with the eager model on ``example_input`` and on a batch of another size; a max abs difference above ``atol``
    raises ``ValueError`` (and leaves no file behind). Returns the path.
    """
    return _torchscript(model, path, example_input, check, atol)[0]


# --------------------------------------------------------------------------------------------------- safetensors
def export_safetensors(model: nn.Module, path: PathLike) -> Path:
    """Write the model's ``state_dict`` (weights and buffers only, as contiguous CPU tensors) to ``path`` with
    ``safetensors.torch.save_file``, atomically. Use a ``.safetensors`` suffix: :func:`uniformer.load_checkpoint`
    and ``uniformer predict --checkpoint`` pick the reader by suffix. Returns the path."""
    from safetensors.torch import save_file

    path = _target(path)
    # clone: save_file refuses tensors sharing storage, and views of larger tensors would save the whole storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch:
        metadata["architecture"] = str(arch)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# -------------------------------------------------------------------------------------------------------- inputs
def example_input(model: nn.Module, batch_size: int = 1, size: Optional[int] = None) -> torch.Tensor:
    """A random ``(batch_size, 3, H, W)`` input at the model's default resolution (``pretrained_cfg["input_size"]``),
    or ``(batch_size, 3, T, H, W)`` for video models, T from the checkpoint tag's protocol. ``size`` overrides the
    square side H = W."""
    from .cli import default_input

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive side length, got {size}")
    return torch.randn(batch_size, *default_input(model, size))


def _target(path: PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {path} is a directory: give a file path, e.g. {path / 'model.onnx'}")
    return path


def _format(fmt: str) -> str:
    name = str(fmt).lower()
    if name not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return name


def _export(model: nn.Module, output: PathLike, fmt: str, batch_size: int, size: Optional[int],
            check: bool) -> Tuple[Path, Optional[float]]:
    fmt = _format(fmt)
    if fmt == "safetensors":
        return export_safetensors(model, output), None
    x = example_input(model, batch_size, size)
    if fmt == "onnx":
        return _onnx(model, output, x, True, None, check, 1e-4)
    return _torchscript(model, output, x, check, 1e-4)


def export_model(
    model: nn.Module,
    output: PathLike,
    fmt: str,
    batch_size: int = 1,
    size: Optional[int] = None,
    check: bool = True,
) -> Path:
    """Export ``model`` to ``output`` as ``fmt`` (``"onnx"``, ``"torchscript"`` or ``"safetensors"``), tracing with a
    random :func:`example_input` of ``batch_size`` at the default resolution (or ``size``), with a dynamic batch
    axis and, with ``check``, a numerical check against PyTorch (atol 1e-4). Unknown formats raise ``ValueError``."""
    return _export(model, output, fmt, batch_size, size, check)[0]


# ----------------------------------------------------------------------------------------------------------- CLI
def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an argparse sub-parsers object; returns the new parser (handler
    :func:`cmd_export` in ``func``)."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or safetensors (checked against PyTorch)",
        description="Export a model for deployment: ONNX (onnxruntime, dynamic batch axis, input 'input', output "
        "'logits' or 'features_0..3' for dense backbones), TorchScript (torch.jit.trace) or weights-only "
        "safetensors. ONNX and TorchScript files are run on a random input at two batch sizes and compared with "
        "PyTorch; the max abs difference is printed. Spatial sizes (and for video the frame count, from the "
        "checkpoint tag's protocol) are fixed at export.",
    )
    p.add_argument("--model", metavar="NAME",
                   help="model name, e.g. uniformer_small or uniformer_video_small.k400_16x4 (the tag sets the video "
                        "frame count); optional with a saved folder or run directory")
    p.add_argument("--checkpoint", metavar="FILE_OR_RUN_DIR",
                   help="weights file, saved model folder or run directory (default: random initialisation, for "
                        "testing deployment only)")
    p.add_argument("--format", dest="format", choices=FORMATS,
                   help="output format (default: from the --output suffix: .onnx, .pt/.ts = torchscript, "
                        ".safetensors)")
    p.add_argument("--output", required=True, metavar="PATH", help="output file path (written atomically)")
    p.add_argument("--img-size", type=int, metavar="N",
                   help="square input side the graph is exported at (default: the model's pretrained config; "
                        "ignored for safetensors)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the exported model and comparing it with PyTorch")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``uniformer export``: build/load the model, export it and print one summary line."""
    from . import create_model

    fmt = args.format or _SUFFIX_FORMATS.get(Path(args.output).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {args.output!r}: pass --format {'|'.join(FORMATS)}")
    fmt = _format(fmt)
    if args.img_size is not None and args.img_size < 1:
        raise ValueError(f"--img-size must be positive, got {args.img_size}")
    if args.checkpoint:
        from .cli import CliError, load_model_for_inference

        try:
            model = load_model_for_inference(args.model, args.checkpoint)
        except CliError as e:  # e.g. a weights file without config.json and no --model
            raise ValueError(str(e)) from None
    elif args.model:
        model = create_model(args.model)
        _logger.warning("no --checkpoint: exporting %s with random initial weights", args.model)
    else:
        raise ValueError("pass --model NAME and/or --checkpoint FILE_OR_RUN_DIR")
    model.eval()
    path, diff = _export(model, args.output, fmt, 1, args.img_size, args.check)
    if fmt == "safetensors":
        note = ""
    elif diff is None:
        note = "  (not checked)"
    else:
        note = f"  max abs diff vs PyTorch {diff:.3g} (batch 1 and 2)"
    print(f"{path}  {fmt}{note}")
    return 0
