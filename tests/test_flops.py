"""fvcore FLOPs (multiply-adds) at 224² match the published numbers (with the spec's corrections for L)."""
from __future__ import annotations

import pytest

import uniformer

EXPECTED_GFLOPS = {
    "uniformer_small": 3.644,
    "uniformer_small_plus": 4.213,
    "uniformer_small_plus_dim64": 4.213,
    "uniformer_base": 8.273,
    "uniformer_base_ls": 8.273,
    "uniformer_xxs": 1.306,
    "uniformer_xs": 1.941,
    "uniformer_small_tl": 3.669,
    "uniformer_small_plus_tl": 4.239,
    "uniformer_base_tl": 8.298,
    "uniformer_large_ls_tl": 19.755,  # the official README's 12.6 G hid checkpointed layers
}


@pytest.mark.parametrize("name", sorted(EXPECTED_GFLOPS))
def test_flops_at_224_within_one_percent(name):
    model = uniformer.create_model(name)
    model.set_grad_checkpointing(True)  # must not hide layers from the count
    gflops = uniformer.count_flops(model, (1, 3, 224, 224)) / 1e9
    assert gflops == pytest.approx(EXPECTED_GFLOPS[name], rel=0.01)
    assert model.grad_checkpointing  # restored afterwards


def test_light_flops_at_lower_resolutions():
    model = uniformer.create_model("uniformer_xxs")
    for size, expected in ((128, 0.427), (160, 0.661), (192, 0.956)):
        assert uniformer.count_flops(model, (1, 3, size, size)) / 1e9 == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name,expected", [("uniformer_small", 11.869), ("uniformer_base", 27.210)])
def test_flops_at_384(name, expected):
    model = uniformer.create_model(name)
    assert uniformer.count_flops(model, (1, 3, 384, 384)) / 1e9 == pytest.approx(expected, rel=0.01)
