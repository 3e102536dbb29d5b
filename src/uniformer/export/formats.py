"""Writing and checking the files: ONNX (torch.export + onnxscript, or the TorchScript-based exporter for Mask
R-CNN), TorchScript (``torch.jit.trace``) and weights-only safetensors, each with its I/O contract in its metadata and
in ``OUTPUT.json`` beside it (see :mod:`uniformer.export`)."""
from __future__ import annotations

import json
import os
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .._io import atomic_path
from ..models.common import eval_mode
from .checks import (as_list, assert_close, check_example, compare, device_of, other_batch,
                     reference_outputs, shapes_text)
from .spec import MIN_SIDE, ExportSpec, export_spec, output_names, task_of

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIX_FORMATS = {".onnx": "onnx", ".safetensors": "safetensors", ".pt": "torchscript", ".ts": "torchscript",
                  ".torchscript": "torchscript"}
METADATA_KEY = "uniformer"  # ONNX metadata_props / safetensors metadata key; TorchScript extra file uniformer.json
LEGACY_OPSET = 17


# ---------------------------------------------------------------------------------------------------------- ONNX
def _sort_stable(self: Any, stable: Optional[bool] = None, dim: int = -1, descending: bool = False) -> Any:
    """ONNX translation of ``aten.sort.stable`` (the light models' ``argsort(stable=True)``): ``TopK`` over the whole
    axis. ONNX ``TopK`` breaks ties by the lower index, which is what a stable sort does."""
    from onnxscript import opset18 as op

    k = op.Reshape(op.Gather(op.Shape(self), dim, axis=0), op.Constant(value_ints=[1]))
    return op.TopK(self, k, axis=dim, largest=descending, sorted=True)


def _positive_perms(graph: Any) -> int:
    """Rewrite ``Transpose`` perms with negative axes (written by the TorchScript-based exporter for ``movedim``;
    onnxruntime refuses them) as the same permutation of positive axes; returns the number of nodes fixed."""
    import onnx

    fixed = 0
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Transpose" and attr.name == "perm" and any(p < 0 for p in attr.ints):
                perm = [p % len(attr.ints) for p in attr.ints]
                del attr.ints[:]
                attr.ints.extend(perm)
                fixed += 1
            if attr.type == onnx.AttributeProto.GRAPH:
                fixed += _positive_perms(attr.g)
            for sub in attr.graphs:
                fixed += _positive_perms(sub)
    return fixed


def _dynamo_shapes(spec: ExportSpec) -> Optional[Tuple[Dict[int, Any], ...]]:
    if not spec.dynamic_axes:
        return None
    dims: Dict[int, Any] = {}
    for axis, name in spec.dynamic_axes.items():
        if name == "batch":
            dims[axis] = torch.export.Dim("batch", min=1)
        elif spec.multiple > 1:
            dims[axis] = spec.multiple * torch.export.Dim(f"{name}_over_{spec.multiple}",
                                                          min=-(-MIN_SIDE // spec.multiple))
        else:
            dims[axis] = torch.export.Dim(name, min=MIN_SIDE)
    return (dims,)


def _export_error(model: nn.Module, what: str, e: Exception) -> ValueError:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ValueError(f"{what} of {type(model).__name__} failed: {type(e).__name__}: {lines[0] if lines else ''}")


def _write_onnx(spec: ExportSpec, tmp: Path, names: List[str], opset: Optional[int]) -> None:
    """Export ``spec`` to the file ``tmp`` with its exporter, the I/O contract in the metadata."""
    import onnx

    module, example = spec.module, spec.example
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.exporter == "torchscript":
            axes = {spec.input_name: dict(spec.dynamic_axes), **spec.output_axes} if spec.dynamic_axes else None
            with torch.no_grad():
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset or LEGACY_OPSET,
                                  input_names=[spec.input_name], output_names=names, dynamic_axes=axes)
        else:
            # a size-1 example dimension invites 0/1 specialisation (size-1 broadcasting) in torch.export: trace the
            # dynamic batch with 2 samples; the check still runs the file at the example's own batch size
            if 0 in spec.dynamic_axes and example.shape[0] == 1:
                example = example.expand(2, *example.shape[1:]).contiguous()
            program = torch.onnx.export(
                module, (example,), dynamo=True, input_names=[spec.input_name], output_names=names,
                opset_version=opset, dynamic_shapes=_dynamo_shapes(spec), verbose=False,
                custom_translation_table={torch.ops.aten.sort.stable: _sort_stable})
            program.save(tmp, external_data=False)
    proto = onnx.load(str(tmp))
    if spec.exporter == "torchscript":
        _positive_perms(proto.graph)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(spec.contract)
    onnx.save(proto, str(tmp))


def _onnx(spec: ExportSpec, path: PathLike, opset: Optional[int], check: bool) -> Tuple[Path, Optional[float]]:
    path = _target(path)
    model = spec.module
    device = device_of(model)
    spec.example = spec.example.to(device)
    inputs = [x.to(device) for x in spec.checks] if check else [spec.example]
    with eval_mode(model):
        reference, single = reference_outputs(model, inputs)
        names = output_names(spec, reference[0], single)
        diff: Optional[float] = None
        with atomic_path(path) as tmp:
            try:
                _write_onnx(spec, tmp, names, opset)
            except Exception as e:  # the exporters raise many types; surface them as one clear ValueError
                raise _export_error(model, "ONNX export", e) from e
            if check:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.log_severity_level = 3  # shape-inference notes of the TorchScript-based exporter's graphs
                session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
                diff, ok = 0.0, True
                for x, ref in zip(inputs, reference):
                    try:
                        got = session.run(None, {spec.input_name: x.detach().cpu().numpy()})
                    except Exception as e:  # onnxruntime's own error types
                        raise ValueError(f"the exported ONNX model fails in onnxruntime on an input of shape "
                                         f"{tuple(x.shape)}: {e}") from e
                    d, good = compare(ref, got, f"ONNX model (input {tuple(x.shape)})", spec.atol, spec.rtol,
                                       spec.detections)
                    diff, ok = max(diff, d) if d == d else d, ok and good
                assert_close(diff, ok, spec.atol, spec.rtol, f"ONNX export of {type(model).__name__} (onnxruntime, "
                              f"inputs {shapes_text(inputs)})")
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

    A classifier's graph input is named ``input``; the output ``logits``, or ``features_0..N`` for models returning a
    list (dense backbones); ``dynamic_batch`` makes the batch axis symbolic (``batch``), spatial and temporal sizes
    stay those of ``example_input``. Task models export what :func:`export_spec` describes (dynamic axes unless
    ``dynamic_batch=False``). ``opset=None`` uses the exporter's default opset. Weights are embedded in the one file;
    the I/O contract is in its ``metadata_props['uniformer']`` (JSON).

    With ``check=True`` the file is run in onnxruntime (CPUExecutionProvider) on ``example_input`` and, with dynamic
    axes, on an input of another batch size (and size, for task models); a difference to the eager outputs above
    ``atol`` raises ``ValueError`` (and leaves no file behind). Export failures are raised as ``ValueError``. Returns
    the path.
    """
    spec = export_spec(model, check_example(example_input), dynamic=dynamic_batch)
    spec.atol = atol
    return _onnx(spec, path, opset, check)[0]


# --------------------------------------------------------------------------------------------------- TorchScript
def _torchscript(spec: ExportSpec, path: PathLike, check: bool) -> Tuple[Path, Optional[float]]:
    path = _target(path)
    model = spec.module
    device = device_of(model)
    example = spec.example.to(device)
    inputs = [x.to(device) for x in spec.checks] if check else [example]
    if check and len(inputs) == 1:
        inputs.append(other_batch(example))
    with eval_mode(model):
        reference, single = reference_outputs(model, inputs)
        output_names(spec, reference[0], single)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # tracer warnings (shape-to-int conversions, torchvision's tensor constants): the check below proves
                # the traced graph right at another input size
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, (example,), check_trace=False, strict=False)
        except Exception as e:
            raise ValueError(f"TorchScript tracing of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
    diff: Optional[float] = None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        torch.jit.save(traced, str(tmp), _extra_files={f"{METADATA_KEY}.json": json.dumps(spec.contract)})
        if check:
            loaded = torch.jit.load(str(tmp), map_location=example.device)
            diff, ok = 0.0, True
            with torch.no_grad():
                for x, ref in zip(inputs, reference):
                    try:
                        out = loaded(x)
                    except RuntimeError as e:
                        same_size = x.shape[1:] == example.shape[1:]
                        where = (f"batch {x.shape[0]} (traced at {example.shape[0]})" if same_size
                                 else f"input {tuple(x.shape)} (traced at {tuple(example.shape)})")
                        raise ValueError(f"the traced TorchScript model fails at {where}: "
                                         f"{str(e).strip().splitlines()[-1]}") from e
                    d, good = compare(ref, as_list(out), f"TorchScript model (input {tuple(x.shape)})", spec.atol,
                                       spec.rtol, spec.detections)
                    diff, ok = max(diff, d) if d == d else d, ok and good
            assert_close(diff, ok, spec.atol, spec.rtol, f"TorchScript export of {type(model).__name__} (inputs "
                          f"{shapes_text(inputs)})")
    return path, diff


def export_torchscript(
    model: nn.Module, path: PathLike, example_input: torch.Tensor, check: bool = True, atol: float = 1e-4
) -> Path:
    """Trace ``model`` (in eval mode; modes restored afterwards) with ``torch.jit.trace`` and save it at ``path``, the
    I/O contract in its extra file ``uniformer.json`` (``torch.jit.load(path, _extra_files=...)``).

    Batch sizes are traced symbolically (the light models' token pruning included; task models: their sizes too, see
    :func:`export_spec`). With ``check=True`` the saved file is loaded back with ``torch.jit.load`` and compared with
    the eager model on ``example_input`` and on an input of another batch size (and size, for task models); a
    difference above ``atol`` raises ``ValueError`` (and leaves no file behind). Returns the path.
    """
    spec = export_spec(model, check_example(example_input))
    spec.atol = atol
    return _torchscript(spec, path, check)[0]


# --------------------------------------------------------------------------------------------------- safetensors
def _weights_contract(model: nn.Module) -> Dict[str, Any]:
    if task_of(model):
        return {"exported_by": f"uniformer {version('uniformer')}", "task": task_of(model), "config": dict(model.task_config)}
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    return {"exported_by": f"uniformer {version('uniformer')}", "task": "classification",
            "architecture": cfg.get("architecture") or type(model).__name__,
            "num_classes": getattr(model, "num_classes", None),
            "label_names": list(cfg["label_names"]) if cfg.get("label_names") else None,
            "mean": list(cfg.get("mean") or IMAGENET_DEFAULT_MEAN), "std": list(cfg.get("std") or IMAGENET_DEFAULT_STD)}


def export_safetensors(model: nn.Module, path: PathLike) -> Path:
    """Write the model's ``state_dict`` (weights and buffers only, as contiguous CPU tensors) to ``path`` with
    ``safetensors.torch.save_file``, atomically; the metadata holds ``architecture`` and, under ``uniformer``, the
    model's task, classes and (task models) the config :func:`uniformer.load_pretrained` rebuilds it from. Use a
    ``.safetensors`` suffix: :func:`uniformer.load_checkpoint` and ``uniformer predict --checkpoint`` pick the reader
    by suffix. Returns the path."""
    from safetensors.torch import save_file

    path = _target(path)
    # clone: save_file refuses tensors sharing storage, and views of larger tensors would save the whole storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(_weights_contract(model))}
    arch = (getattr(model, "pretrained_cfg", None) or getattr(model, "task_config", None) or {}).get("architecture")
    if arch:
        metadata["architecture"] = str(arch)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# ------------------------------------------------------------------------------------------------------ dispatch
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


def resolve_format(output: PathLike, fmt: Optional[str] = None) -> str:
    """``fmt`` checked, or the format the suffix of ``output`` names (``.onnx``, ``.pt`` / ``.ts`` / ``.torchscript``,
    ``.safetensors``); ``ValueError`` when neither tells."""
    fmt = fmt or SUFFIX_FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {str(output)!r}: pass --format {'|'.join(FORMATS)}")
    return _format(fmt)


def contract_path(output: PathLike) -> Path:
    """Where :func:`export_model` records the I/O contract of ``output``: ``OUTPUT.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def export_with_contract(model: nn.Module, output: PathLike, fmt: str, batch_size: int = 1, size: Optional[int] = None,
                         check: bool = True) -> Tuple[Path, Optional[float], Dict[str, Any]]:
    """:func:`export_model`, returning (path, the measured max abs difference — None for safetensors or without
    ``check`` —, the I/O contract written beside it)."""
    fmt = _format(fmt)
    if fmt == "safetensors":
        path = export_safetensors(model, output)
        contract = _weights_contract(model)
    else:
        spec = export_spec(model, batch_size=batch_size, size=size)
        path, diff = (_onnx(spec, output, None, check) if fmt == "onnx" else _torchscript(spec, output, check))
        contract = dict(spec.contract, check=None if diff is None else dict(
            max_abs_diff=diff, atol=spec.atol, rtol=spec.rtol, inputs=[list(x.shape) for x in spec.checks]))
    contract = dict(contract, format=fmt, file=path.name)
    with atomic_path(contract_path(path)) as tmp:
        tmp.write_text(json.dumps(contract, indent=1) + "\n", encoding="utf-8")
    check_result = contract.get("check")
    return path, check_result["max_abs_diff"] if check_result else None, contract


def export_model(
    model: nn.Module,
    output: PathLike,
    fmt: str,
    batch_size: int = 1,
    size: Optional[int] = None,
    check: bool = True,
) -> Path:
    """Export ``model`` to ``output`` as ``fmt`` (``"onnx"``, ``"torchscript"`` or ``"safetensors"``) as
    :func:`export_spec` describes it (a random example of ``batch_size`` at the model's size or side ``size``; dynamic
    axes; with ``check``, compared with PyTorch at the example and at another size) and write its I/O contract (input
    and output names, shapes, layouts, normalisation, label names, the measured difference) to
    :func:`contract_path` ``(output)``. Unknown formats raise ``ValueError``. Returns the exported file's path."""
    return export_with_contract(model, output, fmt, batch_size, size, check)[0]
