"""Bad input shapes raise a ValueError naming the expected and the actual shape."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY_VARIANTS

import uniformer


@pytest.mark.parametrize("name", ["uniformer_small", "uniformer_small_plus", "uniformer_xxs", "uniformer_small_tl"])
def test_bad_shapes(name):
    model = uniformer.create_model(name, **TINY_VARIANTS[name]).eval()
    with pytest.raises(ValueError, match=r"expected 3 input channels \(B, C, H, W\), got shape \(1, 1, 64, 64\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"multiples of 32, got 64x70 \(shape \(1, 3, 64, 70\)\)"):
        model(torch.randn(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"expects a 4-D input \(B, C, H, W\), got shape \(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        model.forward_intermediates(torch.randn(1, 3, 48, 64))


def test_bad_configurations():
    with pytest.raises(ValueError, match="depth needs 4 per-stage values"):
        uniformer.create_model("uniformer_small", depth=[1, 1, 1])
    with pytest.raises(ValueError, match="split evenly into heads"):
        uniformer.create_model("uniformer_small", embed_dim=[16, 32, 100, 128], head_dim=32)
    with pytest.raises(ValueError, match=r"prune_ratio\[2\] needs one value per block of stage 3"):
        uniformer.create_model("uniformer_xxs", depth=[1, 1, 3, 2], prune_ratio=[[], [], [1, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="first block must not prune"):
        uniformer.create_model("uniformer_xxs", prune_ratio=[[], [], [0.5] * 8, [0.5] * 2])
    with pytest.raises(ValueError, match="last block of stage 3 must prune"):
        uniformer.create_model("uniformer_xxs", prune_ratio=[[], [], [1] * 8, [0.5] * 2])
    with pytest.raises(ValueError, match="always use the convolutional stem"):
        uniformer.create_model("uniformer_xxs", conv_stem=False)
    with pytest.raises(ValueError, match="global_pool must be 'avg' or ''"):
        uniformer.create_model("uniformer_small", global_pool="max")
