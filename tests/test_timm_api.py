"""The timm model contract, exercised the way timm's own model tests do (CPU, tiny inputs)."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY, TINY_VARIANTS
from timm.models import group_parameters

import uniformer

X = torch.randn(2, 3, 64, 64)


def tiny(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return uniformer.create_model(name, **dict(TINY_VARIANTS[name], **kwargs)).eval()


def test_timm_create_model_after_import():
    model = timm.create_model("uniformer_small", num_classes=3, pretrained=False)
    assert isinstance(model, uniformer.UniFormer)
    assert model.pretrained_cfg["tag"] == "in1k" and model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert timm.create_model("uniformer_xxs.in1k_160").pretrained_cfg["input_size"] == (3, 160, 160)


def test_every_registered_architecture_has_a_tag_and_head_dim_note():
    for name in uniformer.list_models("uniformer_*", pretrained=True):
        cfg = timm.models.get_pretrained_cfg(name)
        assert any(n.startswith("head_dim=") for n in cfg.notes), name
        arch_head_dim = timm.create_model(name.split(".")[0], depth=[1, 1, 2, 2]).head_dim
        assert f"head_dim={arch_head_dim}" in cfg.notes, name


@pytest.mark.parametrize("name", sorted(TINY_VARIANTS))
def test_forward_backward_features_head_consistency(name):
    model = tiny(name)
    with torch.no_grad():
        out = model(X)
        feats = model.forward_features(X)
        assert feats.shape == (2, 128, 2, 2)
        torch.testing.assert_close(model.forward_head(feats), out)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    assert out.shape == (2, 10)
    model.train()
    outputs = model(X)
    loss = sum(o.float().mean() for o in (outputs if isinstance(outputs, tuple) else (outputs,)) if torch.is_tensor(o))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("aux_head")), name


@pytest.mark.parametrize("name", sorted(TINY_VARIANTS))
def test_reset_classifier(name):
    model = tiny(name)
    model.reset_classifier(5)
    for head in model.classifier_names():
        assert getattr(model, head).out_features == 5
    assert model(X).shape == (2, 5)
    model.reset_classifier(0)
    assert all(isinstance(getattr(model, h), torch.nn.Identity) for h in model.classifier_names())
    assert model(X).shape == (2, 128)
    model.reset_classifier(0, "")
    assert model(X).shape == (2, 128, 2, 2)


@pytest.mark.parametrize("name", sorted(TINY_VARIANTS))
def test_forward_intermediates_and_pruning(name):
    model = tiny(name)
    with torch.no_grad():
        final, feats = model.forward_intermediates(X)
        torch.testing.assert_close(final, model.forward_features(X))
        assert [f.shape[1:] for f in feats] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
        only = model.forward_intermediates(X, indices=[1], intermediates_only=True, stop_early=True)
        torch.testing.assert_close(only[0], feats[1])
        kept = model.prune_intermediate_layers(indices=2)
        assert kept == [2, 3]


IMAGE_MODELS = [n for n in uniformer.list_models("uniformer_*") if "_video_" not in n]


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_features_only_four_strides_every_variant(name):
    model = uniformer.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 96))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [m.shape[-2:] for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("name", sorted(TINY_VARIANTS))
def test_grad_checkpointing_leaves_outputs_unchanged(name):
    model = tiny(name).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(1)
    ref = model(X)
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    out = model(X)
    ref, out = (ref, out) if isinstance(ref, tuple) else ((ref,), (out,))
    for a, b in zip(ref, out):
        if torch.is_tensor(a):
            torch.testing.assert_close(a, b)
    sum(o.float().sum() for o in out if torch.is_tensor(o)).backward()


def test_group_matcher_and_no_weight_decay():
    for name in ("uniformer_small", "uniformer_xxs"):
        model = tiny(name)
        fine = group_parameters(model, model.group_matcher(coarse=False))
        coarse = group_parameters(model, model.group_matcher(coarse=True))
        assert len(fine) > len(coarse) >= 5
        assert "patch_embed1.proj.weight" in fine[0] or "patch_embed1.proj.0.weight" in fine[0]
        assert set(sum(fine.values(), [])) == {n for n, _ in model.named_parameters()}
    assert tiny("uniformer_xxs").no_weight_decay() == {"cls_token"}


def test_constructor_keywords():
    model = uniformer.create_model("uniformer_small", **dict(TINY, in_chans=1, drop_path_rate=0.2, global_pool=""))
    assert model.patch_embed1.proj.in_channels == 1
    assert model.blocks1[0].drop_path.__class__.__name__ == "Identity"  # rate 0 for the first block
    assert model.blocks4[0].drop_path.drop_prob == pytest.approx(0.2)
    assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 10, 2, 2)  # per-position logits, no pooling
    per_stage = uniformer.create_model("uniformer_small", **dict(TINY, mlp_ratio=[4, 4, 3, 3]))
    assert per_stage.blocks3[0].mlp.fc1.out_features == 192


def test_any_multiple_of_32_works():
    model = tiny("uniformer_small")
    for h, w in ((32, 32), (96, 160), (224, 64)):
        assert model(torch.randn(1, 3, h, w)).shape == (1, 10)
    light = tiny("uniformer_xxs")
    assert light(torch.randn(1, 3, 96, 160)).shape == (1, 10)


def test_token_labeling_eval_rule_and_training_outputs():
    model = tiny("uniformer_small_tl")
    with torch.no_grad():
        feats = model.forward_features(X)
        tokens = feats.flatten(2).transpose(1, 2)
        expected = model.head(tokens.mean(1)) + 0.5 * model.aux_head(tokens).max(dim=1).values
        torch.testing.assert_close(model(X), expected)
    model.train()
    assert model(X).shape == (2, 10)  # timm's contract: logits in training mode too (as timm's VOLO)
    model.set_token_labeling(True)  # the official token-labeling training output, MixToken included
    torch.manual_seed(0)
    out = model(torch.randn(4, 3, 64, 64))
    assert isinstance(out, uniformer.models.TokenLabelingOutput)
    cls_logits, aux, box = out
    assert cls_logits.shape == (4, 10) and aux.shape == (4, 4, 10) and len(box) == 4
    with pytest.raises(ValueError, match="no token-labeling head"):
        tiny("uniformer_small").set_token_labeling(True)


def test_mix_token_box_geometry():
    gen = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.3, 0.9, 1.0):
        x1, y1, x2, y2 = uniformer.UniFormer.mix_token_box((56, 40), lam, generator=gen)
        assert 0 <= x1 <= x2 <= 56 and 0 <= y1 <= y2 <= 40
        assert x2 - x1 <= int(56 * (1 - lam) ** 0.5) and y2 - y1 <= int(40 * (1 - lam) ** 0.5)
