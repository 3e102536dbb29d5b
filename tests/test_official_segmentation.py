"""The official mmseg 0.13 Semantic FPN and UperNet (+ FCN auxiliary head) models: built from the mm model dicts,
official checkpoint keys loaded strictly, outputs against the oracle fixtures (``dense_heads/seg_*.pt``), and every
official segmentation config at full size against ``official_dense_keys.json``."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import REFERENCE

from uniformer.tasks.mmseg import (build_mmseg_segmentor, convert_mmseg_state_dict, mmseg_inference,
                                   official_segmentor_config, official_segmentor_names)
from uniformer.tasks.official_backbone import build_official_backbone
from uniformer.tasks.seg_heads import FCNAuxHead, FPNHead, UperNetHead
from uniformer.tasks.segmentation import SegmentationModel

REF = REFERENCE
FIXTURES = REF / "parity" / "dense_heads"
KEYS = REF / "official_dense_keys.json"
SEG_FIXTURES = ["seg_fpn_hybrid", "seg_upernet_global"]


def _fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def _build(model_cfg: dict) -> SegmentationModel:
    return build_mmseg_segmentor(model_cfg, build_official_backbone(model_cfg["backbone"]))


def _loaded(fixture: dict, **backbone_overrides) -> SegmentationModel:
    cfg = dict(fixture["config"]["model"])
    cfg["backbone"] = dict(cfg["backbone"], **backbone_overrides)
    model = _build(cfg)
    model.load_state_dict(convert_mmseg_state_dict(fixture["state_dict"], model), strict=True)
    return model.eval()


def _close(got, ref, name: str) -> None:
    if isinstance(ref, (list, tuple)):
        assert len(got) == len(ref), name
        for i, (g, r) in enumerate(zip(got, ref)):
            _close(g, r, f"{name}[{i}]")
        return
    assert got.shape == ref.shape, name
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", SEG_FIXTURES)
def test_fixture_outputs(name):
    fx = _fixture(name)
    model = _loaded(fx)
    assert sum(p.numel() for p in model.parameters()) == fx["config"]["params"]
    assert model.test_cfg == {"mode": "whole"}
    x, ref = fx["input"], fx["outputs"]
    with torch.no_grad():
        feats = model.extract_features(x)  # the input is not padded: 72x100 stays 72x100 for UperNet
        _close(feats, ref["backbone"], "backbone")
        if "neck" in ref:
            _close(model.neck(feats), ref["neck"], "neck")
        if "aux_logits" in ref:
            _close(model.auxiliary_head(feats), ref["aux_logits"], "aux_logits")
    out = mmseg_inference(model, x, fx["config"]["img_meta"]["ori_shape"])
    for key in ("decode_logits", "logits_resized", "probs_ori"):
        _close(out[key], ref[key], key)
    disagree = out["pred_ori"] != ref["pred_ori"]
    if disagree.any():  # only where the top two classes tie
        top2 = out["probs_ori"].topk(2, dim=1).values
        assert float((top2[:, 0] - top2[:, 1])[disagree].max()) < 1e-5
    assert out["pred_ori"].dtype == torch.int64


def test_fixture_structure_and_key_mapping():
    fx = _fixture("seg_fpn_hybrid")
    model = _loaded(fx)
    assert model.head_type == "fpn" and isinstance(model.decode_head, FPNHead)
    assert [len([m for m in h if isinstance(m, torch.nn.Upsample)]) for h in model.decode_head.scale_heads] == \
        [0, 1, 2, 3]
    assert all(isinstance(m, torch.nn.BatchNorm2d) for m in model.decode_head.modules()
               if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)))
    conv = convert_mmseg_state_dict(fx["state_dict"], model)
    assert "neck.fpn.inner_blocks.3.0.weight" in conv and "neck.fpn.layer_blocks.0.0.bias" in conv
    assert "decode_head.scale_heads.3.4.1.num_batches_tracked" in conv
    uper = _loaded(_fixture("seg_upernet_global"))
    assert isinstance(uper.decode_head, UperNetHead) and isinstance(uper.auxiliary_head, FCNAuxHead)
    assert isinstance(uper.neck, torch.nn.Identity) and uper.auxiliary_head.in_index == 2


def test_test_config_attention_switch_keeps_weights():
    """test_config_h32 / _w32 change only the backbone's stage-3 attention: the same weights load into all three."""
    fx = _fixture("seg_upernet_global")
    x = fx["input"]
    preds = {}
    for label, overrides in {"global": {}, "h32": dict(hybrid=True, window_size=32),
                             "w32": dict(windows=True, window_size=32)}.items():
        model = _loaded(fx, **overrides)
        backbone = model.backbone
        assert (backbone.windows, backbone.hybrid) == (label == "w32", label == "h32")
        preds[label] = mmseg_inference(model, x, (90, 125))["decode_logits"]
    torch.testing.assert_close(preds["global"], fx["outputs"]["decode_logits"], rtol=0, atol=1e-4)
    # zero-padded 32x32 windows over a 4x6 stage-3 map attend to padding: a different (valid) result
    assert not torch.allclose(preds["global"], preds["w32"], atol=1e-4)
    assert not torch.allclose(preds["global"], preds["h32"], atol=1e-4)


def test_mmseg_inference_does_not_pad_and_restores_mode():
    fx = _fixture("seg_upernet_global")
    model = _loaded(fx).train()
    out = mmseg_inference(model, fx["input"], (90, 125, 3))
    assert model.training
    assert out["decode_logits"].shape[-2:] == (18, 25) and out["logits_resized"].shape[-2:] == (72, 100)
    assert out["probs_ori"].shape == (1, 5, 90, 125) and out["pred_ori"].shape == (1, 90, 125)
    torch.testing.assert_close(out["probs_ori"].sum(1), torch.ones(1, 90, 125))
    model.test_cfg = {"mode": "slide"}
    with pytest.raises(ValueError, match="slide"):
        mmseg_inference(model, fx["input"], (90, 125))
    with pytest.raises(ValueError, match="ori_shape"):
        mmseg_inference(model, fx["input"], (0, 4))


def _tiny_cfg(kind: str) -> dict:
    fx = _fixture("seg_fpn_hybrid" if kind == "fpn" else "seg_upernet_global")
    return json.loads(json.dumps(fx["config"]["model"]))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(type="CascadeEncoderDecoder"), "model type 'CascadeEncoderDecoder'"),
    (lambda c: c["decode_head"].update(type="PSPHead"), "decode_head type 'PSPHead'"),
    (lambda c: c["neck"].update(add_extra_convs="on_input"), "add_extra_convs"),
    (lambda c: c["neck"].update(num_outs=5), "num_outs=5"),
    (lambda c: c["neck"].update(in_channels=[16, 32, 48, 65]), "do not match the backbone"),
    (lambda c: c["decode_head"].update(norm_cfg=dict(type="GN", num_groups=8)), "norm_cfg"),
    (lambda c: c["decode_head"].update(align_corners=True), "align_corners"),
    (lambda c: c["decode_head"].update(in_index=[1, 2, 3]), "in_index"),
    (lambda c: c["decode_head"].update(feature_strides=[8, 16, 32, 64]), "feature_strides"),
    (lambda c: c["decode_head"].update(channels_typo=3), r"unsupported option\(s\) \['channels_typo'\]"),
    (lambda c: c["decode_head"].update(loss_decode=dict(type="LovaszLoss")), "loss_decode"),
    (lambda c: c.pop("neck"), "without a neck"),
])
def test_fpn_config_refusals(edit, message):
    cfg = _tiny_cfg("fpn")
    edit(cfg)
    with pytest.raises(ValueError, match=message):
        _build(cfg)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["auxiliary_head"].update(type="ASPPHead"), "auxiliary_head type 'ASPPHead'"),
    (lambda c: c["auxiliary_head"].update(in_channels=32), "level 2's 48 channels"),
    (lambda c: c["auxiliary_head"].update(num_classes=7), "num_classes 7"),
    (lambda c: c.update(neck=dict(type="FPN", in_channels=[16, 32, 48, 64], out_channels=16, num_outs=4)),
     "UPerHead after a neck"),
    (lambda c: c.update(test_cfg=dict(mode="sliding")), "test_cfg mode"),
])
def test_upernet_config_refusals(edit, message):
    cfg = _tiny_cfg("upernet")
    edit(cfg)
    with pytest.raises(ValueError, match=message):
        _build(cfg)


def test_config_sizes_are_taken_from_the_config():
    cfg = _tiny_cfg("upernet")
    cfg["decode_head"].update(pool_scales=[1, 3], channels=8, dropout_ratio=0.0)
    cfg["auxiliary_head"].update(num_convs=2, concat_input=True, kernel_size=1, in_index=1, in_channels=32,
                                 channels=12, loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.25))
    cfg["test_cfg"] = dict(mode="slide", crop_size=(64, 64), stride=(32, 32))
    model = _build(cfg)
    head, aux = model.decode_head, model.auxiliary_head
    assert head.pool_scales == (1, 3) and head.conv_seg.in_channels == 8 and isinstance(head.dropout, torch.nn.Identity)
    assert aux.in_index == 1 and aux.num_convs == 2 and aux.conv_cat is not None and model.aux_weight == 0.25
    assert aux.conv_cat[0].kernel_size == (1, 1) and aux.conv_cat[0].in_channels == 32 + 12
    assert model.test_cfg["mode"] == "slide"
    # mmseg's FCNHead defaults (2 convs, concat_input) apply when the config leaves them out
    cfg = _tiny_cfg("upernet")
    for key in ("num_convs", "concat_input"):
        cfg["auxiliary_head"].pop(key)
    aux = _build(cfg).auxiliary_head
    assert aux.num_convs == 2 and aux.concat_input


def test_converter_rejects_other_models_and_passes_unknown_keys():
    model = _build(_tiny_cfg("fpn"))
    out = convert_mmseg_state_dict({"rpn_head.rpn_conv.weight": torch.zeros(1)}, model)
    assert list(out) == ["rpn_head.rpn_conv.weight"]  # left for the strict load to report
    gn = SegmentationModel(model.backbone, 5, head="fpn-gn", neck_channels=32, head_channels=16, num_groups=8)
    with pytest.raises(ValueError, match="head 'fpn' or 'upernet'"):
        convert_mmseg_state_dict({}, gn)


def test_official_config_names():
    names = official_segmentor_names()
    assert len(names) == 22 and "upernet_global_small/test_config_h32" in names and "fpn_xxs" in names
    h32 = official_segmentor_config("upernet_global_small/test_config_h32")["backbone"]
    assert h32["hybrid"] and h32["window_size"] == 32 and not h32["windows"]
    w32 = official_segmentor_config("semantic_segmentation/fpn_seg/exp/fpn_global_base/test_config_w32.py")
    assert w32["backbone"]["windows"] and w32["neck"]["type"] == "FPN"
    hybrid = official_segmentor_config("fpn_hybrid_small")["backbone"]
    assert hybrid["hybrid"] and "window_size" not in hybrid  # the backbone default, 14
    for bad in ("upernet_hybrid_small/test_config_h32", "deeplab_small", "fpn_xxs/test_config_w32"):
        with pytest.raises(ValueError, match="unknown official segmentation config"):
            official_segmentor_config(bad)


def _official_seg_paths() -> list:
    if not KEYS.exists():
        return []
    return sorted(p for p in json.loads(KEYS.read_text()) if p.startswith("semantic_segmentation/"))


def _name(path: str) -> str:
    folder, file = path.split("/")[-2:]
    return folder if file == "config.py" else f"{folder}/{file[:-3]}"


@pytest.fixture(scope="module")
def official_keys():
    return json.loads(KEYS.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in _official_seg_paths()])
def test_full_size_official_config(official_keys, path):
    """Every official segmentation config builds at full size from official_segmentor_config; the distinct
    structures load a random state dict with exactly the official keys/shapes strictly; the test/alias configs
    (same keys) are built on the meta device and compared key for key."""
    meta = official_keys["_meta"]["configs"][path]
    cfg = official_segmentor_config(_name(path))
    assert cfg["backbone"] == meta["backbone"]
    assert cfg["decode_head"]["type"] == meta["decode_head"]
    assert cfg.get("auxiliary_head", {}).get("type") == meta.get("auxiliary_head")
    assert cfg.get("neck", {}).get("type") == meta.get("neck")
    keys = official_keys[path]
    alias = "same_keys_as" in meta
    if alias:
        with torch.device("meta"):
            model = _build(cfg)
    else:
        model = _build(cfg)
    assert sum(p.numel() for p in model.parameters()) == meta["params"]
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else
             torch.empty(s, device="meta") if alias else torch.randn(s, generator=gen) for k, s in keys.items()}
    converted = convert_mmseg_state_dict(state, model)
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    assert all(tuple(converted[k].shape) == tuple(own[k].shape) for k in own)
    if not alias:
        model.load_state_dict(converted, strict=True)
        key = next(k for k in keys if k.startswith("decode_head.conv_seg.weight"))
        assert torch.equal(model.decode_head.conv_seg.weight, state[key])
