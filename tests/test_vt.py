"""Visual Transformer: module invariants, VT-ResNet sizes and MACs, timm API, torchvision trunk, training."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
import torchvision

import uniformer
from uniformer.layers.vt import FilterTokenizer, Projector, RecurrentTokenizer, TokenTransformer, VTModule
from uniformer.models.vt_resnet import load_torchvision_trunk

PAPER_PARAMS = {18: 11.7e6, 34: 19.2e6, 50: 21.4e6, 101: 41.5e6}
OUR_PARAMS = {18: 11_181_664, 34: 19_559_676, 50: 22_015_228, 101: 41_007_356}
SMALL = dict(token_dim=64, ffn_dim=64, num_heads=4, num_tokens=8)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_params_exact_and_within_paper_and_fewer_macs_than_resnet(depth):
    model = uniformer.create_model(f"vt_resnet{depth}")
    params = uniformer.count_params(model)
    assert params == OUR_PARAMS[depth]
    assert abs(params / PAPER_PARAMS[depth] - 1) <= 0.10
    resnet = getattr(torchvision.models, f"resnet{depth}")()
    ours, base = (uniformer.count_flops(m, (1, 3, 224, 224)) for m in (model, resnet))
    assert ours < base
    expected = {18: 1.567, 34: 3.251, 50: 3.614, 101: 7.337}[depth]
    assert ours / 1e9 == pytest.approx(expected, rel=0.01)


def test_attention_normalisation_and_shapes():
    torch.manual_seed(0)
    model = uniformer.create_model("vt_resnet18").eval()
    with torch.no_grad():
        tokens, attns = model.forward_tokens(torch.randn(2, 3, 224, 224), return_attn=True)
    assert tokens.shape == (2, 16, 1024)
    first, second = attns
    assert first["tokenizer"].shape == (2, 1, 16, 196) and second["tokenizer"].shape == (2, 16, 16, 196)
    assert first["transformer"].shape == (2, 16, 16, 16) and first["projector"].shape == (2, 16, 196, 16)
    assert second["projector"] is None  # last_projector=False
    one = torch.ones(())
    torch.testing.assert_close(first["tokenizer"].sum(-1), one.expand(2, 1, 16))  # over pixels
    torch.testing.assert_close(second["tokenizer"].sum(-1), one.expand(2, 16, 16))
    torch.testing.assert_close(first["transformer"].sum(-1), one.expand(2, 16, 16))  # over key tokens
    torch.testing.assert_close(first["projector"].sum(-1), one.expand(2, 16, 196))  # over tokens


@pytest.mark.parametrize("size", [(224, 224), (160, 160), (96, 128), (64, 64), (32, 48)])
def test_any_input_size(size):
    model = uniformer.create_model("vt_resnet18", num_classes=7, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 7)


def test_recurrent_tokenizer_depends_on_incoming_tokens_and_half_update():
    torch.manual_seed(0)
    tok = RecurrentTokenizer(64, token_dim=32, num_heads=4, pix_groups=4).eval()
    x = torch.randn(1, 64, 6, 6)
    t1, t2 = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    with torch.no_grad():
        (_, a1), (_, a2) = tok(x, t1), tok(x, t2)
    assert not torch.allclose(a1, a2)
    half = RecurrentTokenizer(64, token_dim=32, num_heads=4, pix_groups=4, update="half").eval()
    with torch.no_grad():
        out, attn = half(x, t1)
    assert out.shape == (1, 8, 32) and attn.shape == (1, 4, 4, 36)
    assert torch.equal(out[:, :4], t1[:, 4:])


def test_filter_tokenizer_on_a_constant_map():
    tok = FilterTokenizer(32, num_tokens=4, token_dim=16, pix_groups=4, pos_enc=False).eval()
    x = torch.full((1, 32, 5, 5), 0.7)
    with torch.no_grad():
        _, attn = tok(x)
        torch.testing.assert_close(attn, torch.full_like(attn, 1 / 25))
        raw = attn[:, 0] @ tok.value(x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(raw[0, 0], tok.value(x)[0, :, 0, 0])


def test_permutation_properties_without_position_code():
    torch.manual_seed(0)
    C, L, CT = 32, 4, 16
    x = torch.randn(1, C, 1, 12)  # a 1-row map: permuting pixels = permuting the last axis
    perm = torch.randperm(12)
    ft = FilterTokenizer(C, L, CT, pix_groups=4, pos_enc=False).eval()
    rt = RecurrentTokenizer(C, CT, num_heads=4, pix_groups=4, pos_enc=False).eval()
    proj = Projector(C, C, CT, num_heads=4, pix_groups=4).eval()
    tr = TokenTransformer(CT, num_heads=4, kqv_groups=2, ffn_dim=8).eval()
    tokens = torch.randn(1, L, CT)
    with torch.no_grad():
        torch.testing.assert_close(ft(x)[0], ft(x[..., perm])[0])  # tokenizers: invariant to pixel order
        torch.testing.assert_close(rt(x, tokens)[0], rt(x[..., perm], tokens)[0])
        torch.testing.assert_close(proj(x, tokens)[0][..., perm], proj(x[..., perm], tokens)[0])  # equivariant
        tperm = torch.randperm(L)
        torch.testing.assert_close(tr(tokens)[0][:, tperm], tr(tokens[:, tperm])[0])  # token-equivariant


def test_torchvision_weights_initialise_the_trunk(tmp_path):
    resnet = torchvision.models.resnet18().eval()
    model = uniformer.create_model("vt_resnet18").eval()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    result = load_torchvision_trunk(model, path)
    assert "fc.weight" in result.skipped and any(k.startswith("layer4.") for k in result.skipped)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))))
        ours = model.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
    torch.testing.assert_close(ours, ref)
    with pytest.raises(ValueError, match="not a torchvision resnet18 state dict"):
        load_torchvision_trunk(model, torchvision.models.resnet34().state_dict())


def test_no_unused_parameters_in_classification():
    model = uniformer.create_model("vt_resnet18", num_classes=5, **SMALL)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_timm_api():
    model = uniformer.create_model("vt_resnet18", num_classes=5, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 8, 64)
        torch.testing.assert_close(model.forward_head(tokens), model(x))
        assert model.forward_head(tokens, pre_logits=True).shape == (2, 64)
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, tokens)
        assert [f.shape[1:] for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 4, 4)]
    features = timm.create_model("vt_resnet34", features_only=True, **SMALL)
    assert features.feature_info.reduction() == [4, 8, 16, 16]
    assert [m.shape[1] for m in features(x)] == features.feature_info.channels() == [64, 128, 256, 512]
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.train()
    torch.manual_seed(0)
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    torch.testing.assert_close(model(x), ref)
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert set(sum(groups.values(), [])) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="no stochastic depth"):
        uniformer.create_model("vt_resnet18", drop_path_rate=0.1)


def test_vt_module_composition():
    module = VTModule(32, 64, first=True, num_tokens=4, token_dim=16, num_heads=4, pix_groups=4, kqv_groups=2,
                      ffn_dim=8)
    tokens, y, attn = module(torch.randn(1, 32, 6, 6))
    assert tokens.shape == (1, 4, 16) and y.shape == (1, 64, 6, 6) and set(attn) == {"tokenizer", "transformer", "projector"}


@pytest.mark.slow
def test_short_training_on_digits_learns(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "uniformer.cli", "train", "--model", "vt_resnet18", "--model-args", json.dumps(SMALL),
         "--img-size", "32", "--epochs", "2", "--workers", "0", "--lr", "2e-3", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import re

    best = max(float(v) for v in re.findall(r"val loss [\d.]+ acc1 ([\d.]+)%", proc.stdout))
    assert best > 50.0  # chance is 10 %


@pytest.mark.slow
def test_visualize_tokens_cli_writes_a_png(tmp_path):
    import numpy as np
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    model = uniformer.create_model("vt_resnet18", num_classes=3, **SMALL)
    uniformer.save_pretrained(model, tmp_path / "vt")
    proc = subprocess.run([sys.executable, "-m", "uniformer.cli", "visualize-tokens", str(image), "--checkpoint",
                           str(tmp_path / "vt"), "--size", "64", "--output", str(tmp_path / "t.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "uniformer.cli", "visualize-tokens", str(image), "--model",
                          "uniformer_xxs"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "is not a VT-ResNet" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
