"""Video UniFormer: parity with the official video code, key layouts, sizes, inflation, timm API."""
from __future__ import annotations

import logging

import pytest
import timm
import torch
from conftest import TINY, TINY_LIGHT, fake_state_dict, load_parity

import uniformer
from uniformer.models.convert import inflate_kernel

BUILDERS = {"video": "uniformer_video_small", "video_light": "uniformer_video_xxs", "inflate": "uniformer_video_small"}
CLIP = torch.randn(1, 3, 8, 64, 64)


@pytest.mark.parametrize("name", ["video_tiny", "video_light_tiny", "inflate_tiny"])
def test_parity_with_official_video_models(name, caplog):
    fixture = load_parity(name)
    config = {k: v for k, v in fixture["config"].items() if k != "family"}
    model = uniformer.create_model(BUILDERS[fixture["config"]["family"]], **config).eval()
    with caplog.at_level(logging.INFO, logger="uniformer"):
        result = uniformer.load_checkpoint(model, fixture.get("state_dict", fixture.get("image_state_dict")))
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    if name == "inflate_tiny":  # temporal sizes: stem 3, downsampling 1, DPE 3, local MHRA 5, 1x1 convs 1
        assert {t for _, t in result.inflated} == {1, 3, 5}
        assert dict(result.inflated)["patch_embed1.proj.weight"] == 3
        assert dict(result.inflated)["blocks1.0.attn.weight"] == 5
        assert "inflated 19 2-D kernels to 3-D" in caplog.text
    with torch.no_grad():
        out = model(fixture["input"])
    torch.testing.assert_close(out, fixture["output"], rtol=1e-4, atol=1e-4)


OFFICIAL = {
    "video_k400/uniformer_small": ("uniformer_video_small", 21_400_400),
    "video_k400/uniformer_base": ("uniformer_video_base", 49_813_200),
    "video_light_k400/uniformer_xxs": ("uniformer_video_xxs", 9_833_896),
    "video_light_k400/uniformer_xs": ("uniformer_video_xs", 16_099_552),
}


@pytest.mark.parametrize("entry", sorted(OFFICIAL))
def test_official_video_layouts_load_strictly(entry, official_keys):
    name, params = OFFICIAL[entry]
    model = uniformer.create_model(name, num_classes=400)
    assert uniformer.count_params(model) == params
    shapes = official_keys[entry]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes
    result = uniformer.load_checkpoint(model, {"model_state": fake_state_dict(shapes), "epoch": 100})
    assert (result.missing_keys, result.unexpected_keys, result.inflated) == ([], [], [])


def test_all_video_layouts_covered(official_keys):
    assert sorted(k for k in official_keys if k.startswith("video")) == sorted(OFFICIAL)


@pytest.mark.parametrize("k,params", [(600, 21_503_000), (174, 21_284_462)])
def test_video_small_params_for_other_label_sets(k, params):
    assert uniformer.count_params(uniformer.create_model("uniformer_video_small", num_classes=k)) == params


@pytest.mark.slow
@pytest.mark.parametrize("name,expected", [("uniformer_video_small", 41.76), ("uniformer_video_base", 96.74)])
def test_flops_per_16x224_view(name, expected):
    model = uniformer.create_model(name, num_classes=400)
    assert uniformer.count_flops(model, (1, 3, 16, 224, 224)) / 1e9 == pytest.approx(expected, rel=0.01)


@pytest.mark.slow
def test_light_video_flops_table():
    xxs = uniformer.create_model("uniformer_video_xxs", num_classes=400)
    for (t, s), g in {(4, 128): 1.00, (8, 160): 3.24, (16, 160): 6.87}.items():
        assert uniformer.count_flops(xxs, (1, 3, t, s, s)) / 1e9 == pytest.approx(g, rel=0.01)
    small8 = uniformer.create_model("uniformer_video_small", num_classes=400)
    assert uniformer.count_flops(small8, (1, 3, 8, 224, 224)) / 1e9 == pytest.approx(17.61, rel=0.01)


def test_split_attention_size_and_zero_init():
    model = uniformer.create_model("uniformer_video_small", num_classes=400, split=True)
    assert uniformer.count_params(model) == 27_847_504
    assert uniformer.count_flops(model, (1, 3, 16, 224, 224)) / 1e9 == pytest.approx(36.80, rel=0.01)
    block = uniformer.create_model("uniformer_video_small", **dict(TINY, split=True)).blocks3[0]
    assert torch.all(block.t_attn.proj.weight == 1) and torch.all(block.t_attn.qkv.weight == 0)
    with torch.no_grad():  # the temporal branch outputs 0 at init (official init)
        assert torch.count_nonzero(block.t_attn(torch.randn(4, 8, 64))) == 0
        assert block(torch.randn(1, 64, 4, 4, 4)).shape == (1, 64, 4, 4, 4)


@pytest.mark.parametrize("std", [False, True])
def test_std_downsampling_kernels(std):
    model = uniformer.create_model("uniformer_video_small", **dict(TINY, std=std))
    assert model.patch_embed2.proj.kernel_size == ((3, 2, 2) if std else (1, 2, 2))
    assert model.patch_embed2.proj.stride == (1, 2, 2)
    assert model.eval()(CLIP).shape == (1, 10)


@pytest.mark.parametrize("name", ["uniformer_video_small", "uniformer_video_xxs"])
def test_video_timm_api(name):
    kwargs = TINY if name.endswith("small") else TINY_LIGHT
    model = uniformer.create_model(name, **kwargs).eval()
    for frames in (2, 4, 6, 16):
        assert model(torch.randn(1, 3, frames, 64, 64)).shape == (1, 10)
    with torch.no_grad():
        final, feats = model.forward_intermediates(CLIP, output_fmt="NCTHW")
        torch.testing.assert_close(final, model.forward_features(CLIP))
        assert [f.shape[1:] for f in feats] == [(16, 4, 16, 16), (32, 4, 8, 8), (64, 4, 4, 4), (128, 4, 2, 2)]
    assert [f["temporal_reduction"] for f in model.feature_info] == [2] * 4
    features = timm.create_model(name, features_only=True, **{k: v for k, v in kwargs.items() if k != "num_classes"})
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    model.reset_classifier(3)
    assert model(CLIP).shape == (1, 3)
    model.train()
    ref = model(CLIP)
    model.set_grad_checkpointing(True)
    out = model(CLIP)
    for a, b in zip(ref if isinstance(ref, tuple) else (ref,), out if isinstance(out, tuple) else (out,)):
        torch.testing.assert_close(a, b)
    model.eval()  # a (B, C, H, W) batch is a batch of one-frame clips (how timm's tools feed models)
    torch.testing.assert_close(model(CLIP[:, :, :1]), model(CLIP[:, :, 0]))
    with pytest.raises(ValueError, match=r"expects a 5-D input \(B, C, T, H, W\), got shape \(1, 3, 64\)"):
        model(torch.randn(1, 3, 64))


def test_inflation_rule_reproduces_the_image_response_on_a_constant_clip():
    torch.manual_seed(0)
    conv2d = torch.nn.Conv2d(3, 4, 5, padding=2)
    conv3d = torch.nn.Conv3d(3, 4, 5, padding=2)
    with torch.no_grad():
        conv3d.weight.copy_(inflate_kernel(conv2d.weight, 5))
        conv3d.bias.copy_(conv2d.bias)
        frame = torch.randn(1, 3, 16, 16)
        clip = frame.unsqueeze(2).expand(-1, -1, 9, -1, -1)
        out = conv3d(clip)
    for t in range(2, 7):  # away from the two temporal borders
        torch.testing.assert_close(out[:, :, t], conv2d(frame), rtol=1e-5, atol=1e-5)


def test_image_checkpoints_inflate_through_load_checkpoint(caplog):
    light2d = uniformer.create_model("uniformer_xxs", **TINY_LIGHT)
    light3d = uniformer.create_model("uniformer_video_xxs", **dict(TINY_LIGHT, num_classes=5))
    with caplog.at_level(logging.INFO, logger="uniformer"):
        result = uniformer.load_checkpoint(light3d, {"model": light2d.state_dict()}, use_ema=False)
    assert dict(result.inflated)["patch_embed1.proj.0.weight"] == 3  # light conv stem 3x3 -> 3x3x3
    assert sorted(result.dropped_heads) == ["head.bias", "head.weight", "head_cls.bias", "head_cls.weight"]
    tl = uniformer.create_model("uniformer_small_tl", **TINY)
    video = uniformer.create_model("uniformer_video_small", **TINY)
    result = uniformer.load_checkpoint(video, {"state_dict": tl.state_dict()})
    assert sorted(result.dropped_tail) == ["aux_head.bias", "aux_head.weight"]


def test_video_tags_record_protocol_and_labels():
    from uniformer.models.uniformer_video import VideoProtocol, video_protocol

    cfg = timm.models.get_pretrained_cfg("uniformer_video_small.k400_16x4").to_dict()
    assert video_protocol(cfg) == VideoProtocol(frames=16, stride=4, sampler="dense", views="4x1")
    assert cfg["num_classes"] == 400 and len(cfg["label_names"]) == 400 and cfg["label_names"][0] == "abseiling"
    assert cfg["mean"] == (0.45, 0.45, 0.45) and "head_dim=64" in cfg["notes"]
    ssv2 = timm.create_model("uniformer_video_small.ssv2_16_prek400", depth=[1, 1, 2, 1])
    assert ssv2.num_classes == 174 and video_protocol(ssv2.pretrained_cfg).views == "1x3"
