"""Property tests (hypothesis): every model family either returns a finite output of the right batch size or raises
``ValueError`` for any input — random ranks, sizes, channel counts and dtypes — and never lets an error from inside
torch escape. Half-precision (fp16 and bf16) forwards of every family stay finite at a valid size."""
from __future__ import annotations

import functools
import math
from typing import Dict, Tuple

import pytest
import torch
from conftest import TINY, TINY_LIGHT
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import uniformer

DENSE_TINY = {k: v for k, v in TINY.items() if k != "num_classes"}
# name, model arguments, spatial dims (2 image, 3 video), what a valid input needs
FAMILIES: Dict[str, Tuple[str, dict, int]] = {
    "image": ("uniformer_small", TINY, 2),
    "hourglass": ("uniformer_xxs", TINY_LIGHT, 2),
    "token labeling": ("uniformer_small_tl", TINY, 2),
    "video": ("uniformer_video_small", TINY, 3),
    "video hourglass": ("uniformer_video_xxs", TINY_LIGHT, 3),
    "dense": ("uniformer_small", dict(DENSE_TINY, features_only=True), 2),
    "vt": ("vt_resnet18", dict(num_classes=10), 2),
}
DTYPES = [torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]
# Few examples per family: each valid draw is a real forward pass (up to 2 x 3 x 128 x 128) on one CPU thread.
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.lru_cache(maxsize=None)
def model_of(family: str) -> torch.nn.Module:
    name, kwargs, _ = FAMILIES[family]
    torch.manual_seed(0)
    return uniformer.create_model(name, **kwargs).eval()


def expected_valid(family: str, shape: Tuple[int, ...], dtype: torch.dtype) -> bool:
    """Inputs each family documents as accepted: float32 (B, 3, [T,] H, W) with H, W multiples of 32 (UniFormer
    classifiers) or at least 32 (dense backbones, VT-ResNet)."""
    dims = FAMILIES[family][2]
    if dtype != torch.float32 or len(shape) != dims + 2 or shape[1] != 3 or 0 in shape:
        return False
    h, w = shape[-2:]
    if family in ("dense", "vt"):
        return min(h, w) >= 32
    return h % 32 == 0 and w % 32 == 0


@st.composite
def inputs(draw, dims: int):
    """(shape, dtype, seed) of a random input. Half the draws have the family's rank and 3 channels with random sides
    (often a multiple of 32), so that real forward passes happen; the other half any rank 3-6, 1-4 channels and sides
    1-130. Half the dtypes are float32, the others any of DTYPES."""
    plausible = draw(st.booleans())
    ndim = dims + 2 if plausible else draw(st.integers(3, 6))
    batch = draw(st.integers(1, 2))
    channels = 3 if plausible else draw(st.integers(1, 4))
    side = st.one_of(st.sampled_from([32, 64, 96, 128]), st.integers(1, 130))
    rest = [draw(side) for _ in range(ndim - 2)]
    if ndim >= 5:  # the frame axis of video-shaped inputs: keep it short (1-8 frames) so valid clips stay cheap
        rest[0] = draw(st.integers(1, 8))
    dtype = draw(st.one_of(st.just(torch.float32), st.sampled_from(DTYPES)))
    return (batch, channels, *rest), dtype, draw(st.integers(0, 2**16))


def make_input(shape: Tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype == torch.int64:
        return torch.randint(0, 256, shape, generator=g)
    return torch.randn(shape, generator=g).to(dtype)


def outputs(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("family", list(FAMILIES))
@SETTINGS
@given(data=st.data())
def test_forward_returns_finite_output_or_raises_value_error(family, data):
    model = model_of(family)
    shape, dtype, seed = data.draw(inputs(FAMILIES[family][2]), label="shape, dtype, seed")
    x = make_input(shape, dtype, seed)
    note(f"{family}: shape {shape} dtype {dtype}")
    valid = expected_valid(family, tuple(x.shape), x.dtype)
    try:
        with torch.no_grad():
            out = model(x)
    except ValueError as e:
        event("ValueError")
        assert not valid, f"a valid input {tuple(x.shape)} {x.dtype} was refused: {e}"
        assert str(e), "the ValueError must say what is wrong"
        return
    # anything else (RuntimeError from a conv, IndexError, ...) propagates and fails the test
    event("forward ran")
    for o in outputs(out):
        assert o.shape[0] == x.shape[0], (tuple(x.shape), tuple(o.shape))
        assert torch.isfinite(o).all(), f"non-finite output for {tuple(x.shape)} {x.dtype}"


VALID_SHAPES = {"image": (2, 3, 64, 64), "hourglass": (2, 3, 64, 64), "token labeling": (2, 3, 64, 64),
                "video": (1, 3, 4, 64, 64), "video hourglass": (1, 3, 4, 64, 64), "dense": (1, 3, 64, 96),
                "vt": (2, 3, 64, 64)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_half_precision_forward_is_finite(family, dtype):
    """Model and input cast to fp16 / bf16: finite outputs in that dtype, close to the fp32 ones."""
    model = model_of(family)
    torch.manual_seed(1)
    x = torch.randn(VALID_SHAPES[family])
    half = uniformer.create_model(FAMILIES[family][0], **FAMILIES[family][1]).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(dtype)
    with torch.no_grad():
        ref = outputs(model(x))
        out = outputs(half(x.to(dtype)))
    assert len(out) == len(ref)
    for a, b in zip(ref, out):
        assert b.dtype == dtype and b.shape == a.shape and torch.isfinite(b).all(), family
        rel = float((b.float() - a).norm() / a.norm().clamp_min(1e-12))
        assert math.isfinite(rel) and rel < 0.1, (family, rel)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mismatched_and_integer_dtypes_are_value_errors_naming_the_dtype(family):
    model = model_of(family)
    x = torch.randn(VALID_SHAPES[family])
    for bad in (x.double(), x.half(), (x > 0), (x * 100).long()):
        with pytest.raises(ValueError, match=str(bad.dtype).replace("torch.", "")):
            with torch.no_grad():
                model(bad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast handles the casts itself
        for o in outputs(model(x.to(torch.bfloat16))):
            assert torch.isfinite(o).all()
