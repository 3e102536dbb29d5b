"""Running an exported model against the eager one: the reference outputs, the comparison (detections paired across
near-tied scores) and the one-line ``ValueError`` when they differ."""
from __future__ import annotations

import itertools
from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn


def device_of(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def as_list(out: Any) -> List[torch.Tensor]:
    """The model output as a flat list of tensors (a tensor, or a list/tuple of tensors for dense backbones)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise ValueError(f"cannot export a model whose output is {type(out).__name__}: expected a tensor or a list of "
                     f"tensors (call model.eval(); light and token-labeling models return tuples in training mode)")


def other_batch(example: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random input like ``example`` with a different batch size (``B + 1``), to prove the batch axis is dynamic."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((example.shape[0] + 1, *example.shape[1:]), generator=g)
    return x.to(dtype=example.dtype, device=example.device)


def check_example(example: torch.Tensor) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"example_input must be a tensor, got {type(example).__name__}")
    if example.ndim < 1 or example.shape[0] < 1:
        raise ValueError(f"example_input needs a batch dimension of at least 1, got shape {tuple(example.shape)}")
    return example


def _match_detections(reference: List[torch.Tensor], got: List[torch.Tensor], atol: float,
                      what: str) -> List[torch.Tensor]:
    """``reference`` (boxes, labels, scores, masks) reordered to pair with ``got`` detection by detection: scores equal
    to float precision may come out in either order, so each detection pairs with the reference one of its label whose
    score is within ``atol``, the closest box first. ``ValueError`` if the counts differ or one has no partner."""
    boxes, labels, scores = reference[0], reference[1], reference[2]
    got_boxes, got_labels, got_scores = got[0], got[1], got[2]
    if len(got_scores) != len(scores):
        raise ValueError(f"{what} returned {len(got_scores)} detection(s), PyTorch {len(scores)}")
    free, order = set(range(len(scores))), []
    for i in range(len(got_scores)):
        partners = [j for j in free if int(labels[j]) == int(got_labels[i])
                    and abs(float(scores[j]) - float(got_scores[i])) <= atol]
        if not partners:
            raise ValueError(f"{what}: detection {i} (label {int(got_labels[i])}, score {float(got_scores[i]):.6f}) "
                             f"has no PyTorch counterpart")
        j = min(partners, key=lambda j: (float((boxes[j].double() - got_boxes[i].double()).abs().max()), abs(j - i)))
        free.remove(j)
        order.append(j)
    index = torch.tensor(order, dtype=torch.long)
    return [t[index] for t in reference]


def compare(reference: Sequence[torch.Tensor], got: Sequence[Any], what: str, atol: float, rtol: float = 0.0,
             detections: bool = False) -> Tuple[float, bool]:
    """(max |reference - got| over all outputs — NaN if any is NaN —, whether every element is within ``atol`` +
    ``rtol`` × |reference|); ``ValueError`` if the outputs' count or shapes differ."""
    got = [torch.as_tensor(out).detach().cpu() for out in got]
    reference = list(reference)
    if len(reference) != len(got):
        raise ValueError(f"{what} returned {len(got)} output(s), PyTorch {len(reference)}")
    if detections:
        reference = _match_detections(reference, got, atol, what)
    diffs, ok = [0.0], True
    for ref, out in zip(reference, got):
        if tuple(out.shape) != tuple(ref.shape):
            raise ValueError(f"{what} output shape {tuple(out.shape)} differs from PyTorch {tuple(ref.shape)}")
        if ref.numel():
            d = (out.double() - ref.double()).abs()
            diffs.append(d.max().item())
            ok = ok and bool((d <= atol + rtol * ref.double().abs()).all())
    diff = float("nan") if any(x != x for x in diffs) else max(diffs)
    return diff, ok and diff == diff


def assert_close(diff: float, ok: bool, atol: float, rtol: float, what: str) -> None:
    if not ok:
        bound = f"atol {atol:g}" + (f" + rtol {rtol:g} x |PyTorch|" if rtol else "")
        raise ValueError(f"{what} does not match PyTorch: max abs difference {diff:.3g} exceeds {bound}")


def reference_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Tuple[List[List[torch.Tensor]], bool]:
    """Eager outputs for each input, and whether the model returns a single tensor."""
    outs, single = [], True
    with torch.no_grad():
        for x in inputs:
            out = model(x)
            single = isinstance(out, torch.Tensor)
            outs.append([t.detach().cpu() for t in as_list(out)])
    return outs, single


def shapes_text(inputs: Sequence[torch.Tensor]) -> str:
    return ", ".join("x".join(map(str, x.shape)) for x in inputs)
