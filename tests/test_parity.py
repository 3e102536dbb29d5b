"""Parity with the official implementation: tiny official models with random weights and recorded outputs."""
from __future__ import annotations

import pytest
import torch
from conftest import load_parity

import uniformer

BUILDERS = {"image": "uniformer_small", "light": "uniformer_xxs"}


def build_from_fixture(fixture: dict) -> torch.nn.Module:
    config = {k: v for k, v in fixture["config"].items() if k != "family"}
    model = uniformer.create_model(BUILDERS[fixture["config"]["family"]], **config)
    result = uniformer.load_checkpoint(model, fixture["state_dict"])
    assert result.missing_keys == [] and result.unexpected_keys == []
    return model


@pytest.mark.parametrize("name", ["image_tiny", "image_tiny_convstem", "light_tiny"])
def test_eval_output_matches_official(name):
    fixture = load_parity(name)
    model = build_from_fixture(fixture).eval()
    assert uniformer.count_params(model) == sum(
        v.numel() for k, v in fixture["state_dict"].items() if "running" not in k and "num_batches" not in k
    )
    with torch.no_grad():
        out = model(fixture["input"])
    torch.testing.assert_close(out, fixture["output"], rtol=1e-4, atol=1e-4)


def test_light_train_mode_returns_both_official_heads():
    fixture = load_parity("light_tiny")
    model = build_from_fixture(fixture).train()  # dropout and drop path are 0 in the fixture config
    with torch.no_grad():
        head, head_cls = model(fixture["input"])
    ref_head, ref_cls = fixture["output_train"]
    torch.testing.assert_close(head, ref_head, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(head_cls, ref_cls, rtol=1e-4, atol=1e-4)


def test_light_train_and_eval_paths_agree_with_frozen_bn():
    fixture = load_parity("light_tiny")
    model = build_from_fixture(fixture).eval()
    with torch.no_grad():
        eval_out = model(fixture["input"])
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        train_head, _ = model(fixture["input"])
    torch.testing.assert_close(train_head, eval_out, rtol=1e-5, atol=1e-5)
