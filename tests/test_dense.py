"""Dense-prediction backbones: parity with the official segmentation backbone, layouts, sizes, window attention."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY, TINY_LIGHT, fake_state_dict, load_parity

import uniformer

DENSE_TINY = {k: v for k, v in TINY.items() if k != "num_classes"}
LIGHT_TINY = {k: v for k, v in TINY_LIGHT.items() if k != "num_classes"}


def test_parity_with_official_hybrid_backbone():
    fixture = load_parity("dense_tiny_hybrid")
    config = {k: v for k, v in fixture["config"].items() if k != "family"}
    model = uniformer.create_model("uniformer_small", features_only=True, **config).eval()
    result = uniformer.load_checkpoint(model, {"state_dict": {f"backbone.{k}": v for k, v in fixture["state_dict"].items()}})
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert [b.window_size for b in model.blocks3] == [4, 4, 4, 0]  # hybrid: global every fourth block
    with torch.no_grad():
        outputs = model(fixture["input"])  # 64x96: stage 3 is 4x6, windows padded to 4x8 (unmasked)
    for out, ref in zip(outputs, fixture["output"]):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("entry,name,params", [("dense/uniformer_small_h14", "uniformer_small", 21_033_280),
                                               ("dense/uniformer_base_h14", "uniformer_base", 49_264_576)])
def test_official_dense_layouts(entry, name, params, official_keys):
    model = uniformer.create_model(name, features_only=True, hybrid=True)
    assert uniformer.count_params(model) == params
    shapes = official_keys[entry]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes
    checkpoint = {"state_dict": {**{f"backbone.{k}": v for k, v in fake_state_dict(shapes).items()},
                                 "decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1),
                                 "auxiliary_head.conv_seg.bias": torch.zeros(150)}}
    result = uniformer.load_checkpoint(model, checkpoint)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])


@pytest.mark.parametrize("name,params", [("uniformer_xxs", 9_317_168), ("uniformer_xs", 15_483_136)])
def test_light_dense_params(name, params):
    assert uniformer.count_params(uniformer.create_model(name, features_only=True)) == params


@pytest.mark.slow
@pytest.mark.parametrize("kwargs,size,gflops", [({}, (512, 512), 23.55), ({"hybrid": True}, (512, 512), 22.67),
                                                ({"windows": True}, (512, 512), 22.37),
                                                ({"hybrid": True}, (800, 1280), 99.04)])
def test_dense_flops(kwargs, size, gflops):
    model = uniformer.create_model("uniformer_small", features_only=True, **kwargs)
    assert uniformer.count_flops(model, (1, 3, *size)) / 1e9 == pytest.approx(gflops, rel=0.01)


def test_window_equals_global_when_the_map_is_one_window_and_mask_removes_padding():
    torch.manual_seed(0)
    glob = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY).eval()
    win = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY, windows=True, window_size=4).eval()
    win.load_state_dict(glob.state_dict())
    x = torch.randn(1, 3, 64, 64)  # stage 3 is exactly 4x4
    with torch.no_grad():
        for a, b in zip(glob(x), win(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        y = torch.randn(1, 3, 64, 96)  # stage 3 is 4x6: one 8x8 window with padding
        big = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY, windows=True, window_size=8).eval()
        masked = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY, windows=True, window_size=8,
                                        window_mask=True).eval()
        big.load_state_dict(glob.state_dict())
        masked.load_state_dict(glob.state_dict())
        ref = glob(y)[2]
        torch.testing.assert_close(masked(y)[2], ref, rtol=1e-5, atol=1e-5)  # masked padding = global attention
        assert not torch.allclose(big(y)[2], ref, atol=1e-4)  # unmasked zero padding takes part (official)


def test_any_input_size_floors_like_the_official_backbone():
    model = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY, hybrid=True, window_size=4).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 200, 300))
    assert [o.shape[-2:] for o in outs] == [(50, 75), (25, 37), (12, 18), (6, 9)]
    light = uniformer.create_model("uniformer_xxs", features_only=True, **LIGHT_TINY).eval()
    with torch.no_grad():
        outs = light(torch.randn(1, 3, 256, 192))
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 64, 48), (32, 32, 24), (64, 16, 12), (128, 8, 6)]


def test_imagenet_checkpoint_initialises_a_dense_backbone():
    image = uniformer.create_model("uniformer_small", **TINY)
    dense = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY)
    result = uniformer.load_checkpoint(dense, {"model": image.state_dict()})
    assert result.missing_keys == [] and "head.weight" in result.dropped_tail and "norm.weight" in result.dropped_tail
    assert torch.equal(dense.norm1.weight, torch.ones(16)) and torch.equal(dense.norm4.bias, torch.zeros(128))
    assert torch.equal(dense.blocks3[1].attn.qkv.weight, image.blocks3[1].attn.qkv.weight)


def test_out_indices_frozen_stages_norm_eval_and_checkpointing():
    pose = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY, out_indices=(3,)).eval()
    assert "norm1.weight" in pose.state_dict()  # pose checkpoints keep the unused norms
    assert [o.shape[1] for o in pose(torch.randn(1, 3, 64, 64))] == [128] and pose.out_channels == [128]
    model = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY, frozen_stages=1, norm_eval=True)
    assert model.train() is model
    assert not any(p.requires_grad for p in model.patch_embed1.parameters())
    assert not any(p.requires_grad for p in model.blocks2.parameters())
    assert all(p.requires_grad for p in model.blocks3.parameters())
    assert not model.blocks1.training and model.blocks3.training
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    light = uniformer.create_model("uniformer_xxs", features_only=True, **LIGHT_TINY, frozen_stages=3)
    assert not any(p.requires_grad for p in light.parameters())
    model = uniformer.create_model("uniformer_small", features_only=True, **DENSE_TINY, hybrid=True, window_size=4).train()
    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(0)
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    out = model(x)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in out).backward()
    with pytest.raises(ValueError, match="out_indices"):
        uniformer.create_model("uniformer_small", features_only=True, out_indices=(4,))
    with pytest.raises(ValueError, match="no classifier"):
        model.reset_classifier(10)


def test_any_timm_model_with_stride_4_to_32_maps_is_a_dense_backbone():
    from uniformer.tasks.build import build_backbone, build_task_model, model_from_config

    backbone = build_backbone("resnet18")
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 64)
    for task, head_args in (("segmentation", {}), ("pose", {}), ("detection", {"detector": "mask_rcnn"})):
        model = build_task_model(task, "resnet18", 3, head_args=head_args,
                                 data_config={"min_size": 64, "max_size": 64}).eval()
        rebuilt = model_from_config(model.task_config)
        assert rebuilt.state_dict().keys() == model.state_dict().keys()
        with torch.no_grad():
            out = model([x[0]]) if task == "detection" else model(x)
        assert out is not None
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224 cannot serve as a dense backbone: .*strides \[16, 16, 16\]"):
        build_backbone("vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="unknown model 'resnet1'"):
        build_backbone("resnet1")
