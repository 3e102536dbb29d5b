"""VT-FPN (spec §4): shapes, the shared transformer over all levels' tokens, exact parameter counts, the MAC reduction
against torchvision's convolutional FPN, and the attention invariants (spec §5)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork

from uniformer.layers.vt import FilterTokenizer, Projector, TokenTransformer
from uniformer.tasks.necks import ConvFPNNeck
from uniformer.tasks.seg_heads import SemanticFPNHead
from uniformer.tasks.vt_fpn import VTFPN, VTFPNNeck, fpn_neck_macs, resnet_level_shapes
from uniformer.flops import count_params

CHANNELS = (256, 512, 1024, 2048)


def _features(hw=(32, 40), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, -(-hw[0] // s), -(-hw[1] // s), generator=g)
            for c, s in zip(CHANNELS, (1, 2, 4, 8))]


@pytest.fixture(scope="module")
def vt_neck():
    torch.manual_seed(0)
    return VTFPNNeck().eval()


@pytest.fixture(scope="module")
def conv_neck():
    torch.manual_seed(0)
    return ConvFPNNeck().eval()


@pytest.fixture(scope="module")
def vtfpn():
    torch.manual_seed(0)
    return VTFPN(num_classes=5).eval()


# ------------------------------------------------------------------------------------------------------ parameters
def test_parameter_counts_match_spec(vt_neck, conv_neck):
    assert count_params(vt_neck) == 9_970_544
    assert count_params(conv_neck) == 3_344_384
    assert isinstance(conv_neck.fpn, FeaturePyramidNetwork)


def test_vt_neck_reuses_the_vt_building_blocks(vt_neck):
    assert all(isinstance(t, FilterTokenizer) for t in vt_neck.tokenizers) and len(vt_neck.tokenizers) == 4
    assert all(isinstance(p, Projector) for p in vt_neck.projectors) and len(vt_neck.projectors) == 4
    assert isinstance(vt_neck.transformer, TokenTransformer)  # exactly one, shared
    assert sum(isinstance(m, TokenTransformer) for m in vt_neck.modules()) == 1
    assert isinstance(vt_neck.projectors[0].lateral, torch.nn.Identity)  # C2 already has 256 channels
    assert all(isinstance(p.lateral, torch.nn.Sequential) for p in vt_neck.projectors[1:])


# ------------------------------------------------------------------------------------------------------------ MACs
@pytest.mark.parametrize("size, conv_target, vt_target",
                         [((800, 1216), 55.12e9, 5.88e9), ((473, 473), 12.90e9, 1.49e9)])
def test_mac_reduction_against_conv_fpn(vt_neck, conv_neck, size, conv_target, vt_target):
    conv, vt = fpn_neck_macs(conv_neck, size), fpn_neck_macs(vt_neck, size)
    assert conv == pytest.approx(conv_target, rel=0.01)
    assert vt == pytest.approx(vt_target, rel=0.01)  # our regression value (spec §4.2)
    assert conv / vt >= 6.4  # the paper's reduction


def test_mac_count_leaves_training_mode(vt_neck):
    neck = VTFPNNeck(num_tokens=2, token_dim=64, ffn_dim=64, in_channels=(32, 64, 128, 256), out_channels=32)
    neck.train()
    assert fpn_neck_macs(neck, (64, 64)) > 0
    assert neck.training


def test_level_shapes_follow_torchvision_resnet():
    backbone = VTFPN(num_classes=2, neck="conv").backbone.eval()
    for size in [(473, 473), (97, 130)]:
        with torch.no_grad():
            feats = backbone(torch.zeros(1, 3, *size))
        assert [tuple(f.shape[-2:]) for f in feats.values()] == resnet_level_shapes(size)
    assert resnet_level_shapes((473, 473)) == [(119, 119), (60, 60), (30, 30), (15, 15)]
    assert resnet_level_shapes((800, 1216)) == [(200, 304), (100, 152), (50, 76), (25, 38)]


# ---------------------------------------------------------------------------------------------------------- shapes
def test_neck_outputs_and_attention_shapes(vt_neck):
    feats = _features((32, 40))
    with torch.no_grad():
        outs, attn = vt_neck(feats, return_attn=True)
    assert [tuple(o.shape) for o in outs] == [(2, 256, f.shape[2], f.shape[3]) for f in feats]
    assert [o.shape[-1] * s for o, s in zip(outs, (4, 8, 16, 32))] == [160] * 4  # strides 4/8/16/32 of a 128×160 input
    assert tuple(attn["transformer"].shape) == (2, 16, 32, 32)  # 4 levels × 8 tokens in one transformer
    for f, a, c in zip(feats, attn["tokenizer"], attn["projector"]):
        n = f.shape[2] * f.shape[3]
        assert tuple(a.shape) == (2, 1, 8, n)
        assert tuple(c.shape) == (2, 16, n, 8)
    with torch.no_grad():
        plain = vt_neck(feats)
    assert isinstance(plain, list) and all(torch.equal(p, o) for p, o in zip(plain, outs))


def test_attention_invariants(vt_neck):
    with torch.no_grad():
        _, attn = vt_neck(_features((24, 36), seed=1), return_attn=True)
    for a in attn["tokenizer"]:  # sums to 1 over pixels, every token
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    for c in attn["projector"]:  # sums to 1 over tokens, every pixel and head
        torch.testing.assert_close(c.sum(-1), torch.ones_like(c.sum(-1)))
    t = attn["transformer"]  # rows sum to 1 over key tokens
    torch.testing.assert_close(t.sum(-1), torch.ones_like(t.sum(-1)))


def test_top_down_adds_upsampled_coarser_outputs(vt_neck):
    td = VTFPNNeck(top_down=True).eval()
    td.load_state_dict(vt_neck.state_dict())
    feats = _features((16, 24), seed=2)
    with torch.no_grad():
        plain, fused = vt_neck(feats), td(feats)
    expected = list(plain)
    for i in range(3, 0, -1):
        expected[i - 1] = expected[i - 1] + F.interpolate(expected[i], size=expected[i - 1].shape[-2:], mode="nearest")
    for e, f in zip(expected, fused):
        torch.testing.assert_close(f, e)
    assert not torch.allclose(fused[0], plain[0])


def test_conv_neck_outputs(conv_neck):
    feats = _features((16, 20))
    with torch.no_grad():
        outs = conv_neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 256, f.shape[2], f.shape[3]) for f in feats]


def test_semantic_head_structure_and_shape():
    head = SemanticFPNHead(num_classes=7).eval()
    assert [len(blocks) for blocks in head.scale_heads] == [1, 1, 2, 3]
    assert all(b[1].num_groups == 32 and b[1].num_channels == 128 for blocks in head.scale_heads for b in blocks)
    feats = [torch.randn(2, 256, h, w) for h, w in resnet_level_shapes((100, 150))]  # odd sizes: 25×38 … 4×5
    with torch.no_grad():
        out = head(feats)
    assert tuple(out.shape) == (2, 7, 25, 38)


@pytest.mark.parametrize("size", [(128, 160), (100, 150)])
def test_vtfpn_logits_at_input_size(vtfpn, size):
    seen = []
    hook = vtfpn.neck.transformer.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        with torch.no_grad():
            logits = vtfpn(torch.randn(2, 3, *size))
    finally:
        hook.remove()
    assert tuple(logits.shape) == (2, 5, *size)
    assert seen == [(2, 32, 1024)]
    assert torch.isfinite(logits).all()


def test_vtfpn_conv_neck_resnet101_and_in_chans():
    torch.manual_seed(0)
    model = VTFPN(num_classes=3, backbone="resnet101", neck="conv", in_chans=1).eval()
    assert isinstance(model.neck, ConvFPNNeck)
    assert len(model.backbone.layer3) == 23  # ResNet-101
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 1, 70, 90)).shape) == (1, 3, 70, 90)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = VTFPN(num_classes=4, num_tokens=4)
    x, target = torch.randn(2, 3, 64, 96), torch.randint(0, 4, (2, 64, 96))
    target[:, :5] = 255
    F.cross_entropy(model(x), target, ignore_index=255).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# ------------------------------------------------------------------------------------------------------ validation
def test_input_validation(vt_neck, conv_neck, vtfpn):
    feats = _features((16, 16), batch=1)
    for neck in (vt_neck, conv_neck):
        with pytest.raises(ValueError, match="4 feature maps"):
            neck(feats[:3])
        with pytest.raises(ValueError, match=r"level 2 must be a \(B, 1024, H, W\) map"):
            neck(feats[:2] + [torch.zeros(1, 512, 4, 4)] + feats[3:])
    with pytest.raises(ValueError, match="batch size"):
        vt_neck(feats[:3] + [torch.zeros(2, 2048, 2, 2)])
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        vtfpn(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="backbone must be"):
        VTFPN(num_classes=2, backbone="resnet18")
    with pytest.raises(ValueError, match="neck must be"):
        VTFPN(num_classes=2, neck="bifpn")
    with pytest.raises(ValueError, match="conv neck takes only out_channels"):
        VTFPN(num_classes=2, neck="conv", num_tokens=4)
    with pytest.raises(ValueError, match="in_channels"):
        VTFPNNeck(in_channels=(256, 500))
