"""Every official image / light / token-labeling state-dict layout loads strictly into the named model."""
from __future__ import annotations

import pytest
import torch
from conftest import fake_state_dict

import uniformer

OFFICIAL = {
    "image/uniformer_small": ("uniformer_small", 21_545_256, "model"),
    "image/uniformer_small_plus": ("uniformer_small_plus", 24_032_552, "model"),
    "image/uniformer_small_plus_dim64": ("uniformer_small_plus_dim64", 24_032_552, "model"),
    "image/uniformer_base": ("uniformer_base", 49_776_552, "model"),
    "image/uniformer_base_ls": ("uniformer_base_ls", 49_796_520, "model"),
    "image_light/uniformer_xxs": ("uniformer_xxs", 10_215_280, "model"),
    "image_light/uniformer_xs": ("uniformer_xs", 16_509_264, "model"),
    "token_labeling/uniformer_small": ("uniformer_small_tl", 22_058_256, "state_dict"),
    "token_labeling/uniformer_small_plus": ("uniformer_small_plus_tl", 24_545_552, "state_dict"),
    "token_labeling/uniformer_base": ("uniformer_base_tl", 50_289_552, "state_dict"),
    "token_labeling/uniformer_large_ls": ("uniformer_large_ls_tl", 100_103_888, "state_dict"),
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(OFFICIAL))
def test_official_layout_loads_strictly_with_exact_param_count(entry, official_keys):
    name, params, wrapper = OFFICIAL[entry]
    shapes = official_keys[entry]
    model = uniformer.create_model(name)
    assert uniformer.count_params(model) == params
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes, f"key/shape differences: {set(ours.items()) ^ set(shapes.items())}"

    sd = fake_state_dict(shapes)
    result = uniformer.load_checkpoint(model, {wrapper: sd, "epoch": 300})
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_all_covered(official_keys):
    families = ("image/", "image_light/", "token_labeling/")
    assert sorted(k for k in official_keys if k.startswith(families)) == sorted(OFFICIAL)


@pytest.mark.parametrize("name", ["uniformer_small_tl", "uniformer_small_tl_dim64", "uniformer_base_tl_dim64"])
def test_head_dim_changes_no_parameter(name):
    """head_dim cannot be read from a checkpoint: the dim32/dim64 twins have identical layouts."""
    twin = name.replace("_dim64", "") if name.endswith("_dim64") else name + "_dim64"
    a, b = uniformer.create_model(name), uniformer.create_model(twin)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert a.blocks3[0].attn.num_heads != b.blocks3[0].attn.num_heads
