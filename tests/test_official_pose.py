"""The official mmpose 0.16 top-down model (``dense-official.md`` §4): the TopDown + TopDownSimpleHead built from the
fixture's mm config loads the official state dict strictly and reproduces the official backbone map, heatmaps, flip-
test heatmaps and decoded keypoints; mmpose's decoding rules on crafted border heatmaps; every official pose config
at full size against the official key list; OKS-NMS and the rescoring of mmpose's COCO evaluation."""
from __future__ import annotations

import copy
import json
from typing import Any, Dict

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import REFERENCE, _require, fake_state_dict, load_parity

from uniformer.data.mm_pipelines import topdown_affine_input
from uniformer.data.coco import load_coco
from uniformer.data.coco_keypoints import COCO_FLIP_PAIRS, COCO_SIGMAS, CocoKeypoints, topdown_crop
from uniformer.tasks.official_backbone import build_official_backbone
from uniformer.tasks.pose import (
    OFFICIAL_POSE_NAMES,
    TopDownPoseModel,
    build_mmpose_model,
    convert_mmpose_state_dict,
    official_pose_config,
)
from uniformer.tasks.pose_eval import (
    decode_heatmaps,
    evaluate_keypoints,
    flip_test,
    keypoint_results,
    official_heatmaps,
    official_keypoint_results,
    oks_iou,
    oks_nms,
    oks_nms_results,
)

FIXTURE = "dense_heads/pose_topdown_global"


@pytest.fixture(scope="module")
def fixture() -> Dict[str, Any]:
    return load_parity(FIXTURE)


@pytest.fixture(scope="module")
def official(fixture) -> TopDownPoseModel:
    cfg = fixture["config"]["model"]
    model = build_mmpose_model(cfg, build_official_backbone(cfg["backbone"], out_indices=(3,)))
    model.load_state_dict(convert_mmpose_state_dict(fixture["state_dict"], model), strict=True)
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ tiny official model ----


def test_fixture_model_is_the_official_structure(fixture, official):
    cfg = fixture["config"]
    assert n_params(official) == cfg["params"] == 170193
    assert list(official.state_dict()) == list(convert_mmpose_state_dict(fixture["state_dict"], official))
    assert set(official.state_dict()) == set(fixture["state_dict"])
    head = official.keypoint_head
    assert [head.deconv_layers[i].out_channels for i in (0, 3, 6)] == cfg["model"]["keypoint_head"][
        "num_deconv_filters"]
    assert head.final_layer.out_channels == 17 and head.final_layer.kernel_size == (1, 1)
    assert official.test_cfg == {"flip_test": True, "shift_heatmap": True, "post_process": "default",
                                 "use_udp": False, "modulate_kernel": 11}
    # a whole checkpoint ({'state_dict': ...}) with DDP prefixes unwraps to the same tensors
    wrapped = {"state_dict": {f"module.{k}": v for k, v in fixture["state_dict"].items()}, "meta": {}}
    converted = convert_mmpose_state_dict(wrapped, official)
    assert all(torch.equal(converted[k], v) for k, v in official.state_dict().items())


def test_backbone_heatmaps_and_flip_test_match_mmpose(fixture, official):
    out = fixture["outputs"]
    x = fixture["input"]
    with torch.no_grad():
        features = official.backbone(x)[-1]
        heatmaps = official(x)
    torch.testing.assert_close(features, out["backbone"], atol=1e-4, rtol=0)
    torch.testing.assert_close(heatmaps, out["heatmaps"], atol=1e-4, rtol=0)
    fliptest = flip_test(official, x, fixture["config"]["flip_pairs"], shift=True)
    torch.testing.assert_close(fliptest, out["heatmaps_fliptest"], atol=1e-4, rtol=0)
    torch.testing.assert_close(official_heatmaps(official, x), out["heatmaps_fliptest"], atol=1e-4, rtol=0)
    assert [tuple(p) for p in fixture["config"]["flip_pairs"]] == list(COCO_FLIP_PAIRS)


def test_predicted_keypoints_match_mmpose(fixture, official):
    """forward_test + decode: flip test, shift, default post-processing, center/scale of the img_meta (scale in
    units of 200 px)."""
    meta = fixture["config"]["img_meta"]
    preds = official.predict_keypoints(fixture["input"], torch.tensor([meta["center"]]), torch.tensor([meta["scale"]]),
                                       fixture["config"]["flip_pairs"])
    expected = fixture["outputs"]["preds"]
    assert preds.shape == expected.shape == (1, 17, 3)
    torch.testing.assert_close(preds[..., :2], expected[..., :2], atol=1e-3, rtol=0)
    torch.testing.assert_close(preds[..., 2], expected[..., 2], atol=1e-4, rtol=0)


def test_decode_matches_mmpose_on_crafted_border_heatmaps(fixture):
    out = fixture["outputs"]
    keypoints, maxvals = decode_heatmaps(out["decode_heatmaps"], out["decode_center"], out["decode_scale"])
    assert keypoints.shape == (4, 17, 2) and maxvals.shape == (4, 17, 1)
    torch.testing.assert_close(keypoints, out["decode_preds"], atol=1e-3, rtol=0)  # all 68 keypoints
    torch.testing.assert_close(maxvals, out["decode_maxvals"], atol=1e-3, rtol=0)
    assert (out["decode_maxvals"] <= 0).any()  # the fixture has all-negative joints (→ −1 before the transform)


def test_decode_rules():
    """argmax → −1 for non-positive maxima; quarter step on both axes only when 1 < x < w−1 and 1 < y < h−1;
    x·scale·200/w + center − scale·200/2."""
    h, w = 8, 6
    hm = torch.zeros(1, 5, h, w)
    hm[0, 0, 3, 2], hm[0, 0, 3, 3], hm[0, 0, 4, 2] = 1.0, 0.5, 0.25  # inner: +x and +y steps
    hm[0, 1, 3, 1], hm[0, 1, 3, 2], hm[0, 1, 4, 1] = 1.0, 0.5, 0.5  # x = 1: no step on either axis
    hm[0, 2, 1, 3], hm[0, 2, 2, 3] = 1.0, 0.5  # y = 1: no step
    hm[0, 3] = -1.0  # all negative: (−1, −1)
    hm[0, 3, 2, 2] = -0.5
    hm[0, 4, 5, 4], hm[0, 4, 5, 3] = 1.0, 0.9  # inner, −x step, no y step (equal neighbours)
    center, scale = torch.tensor([[100.0, 50.0]]), torch.tensor([[0.3, 0.4]])  # 60 x 80 px: 10 px per cell
    kp, vals = decode_heatmaps(hm, center, scale)
    grid = torch.tensor([[2.25, 3.25], [1, 3], [3, 1], [-1, -1], [3.75, 5]])
    torch.testing.assert_close(kp[0], grid * 10 + center - torch.tensor([30.0, 40.0]))
    assert vals[0, :, 0].tolist() == [1.0, 1.0, 1.0, -0.5, 1.0]
    kp_plain, _ = decode_heatmaps(hm, center, scale, post_process=None)
    torch.testing.assert_close(kp_plain[0, 0], torch.tensor([2.0, 3.0]) * 10 + center[0] - torch.tensor([30.0, 40.0]))
    with pytest.raises(ValueError, match="post_process='unbiased' is not supported"):
        decode_heatmaps(hm, center, scale, post_process="unbiased")


# --------------------------------------------------------------------------------------------- config building ----


def head_cfg(**overrides: Any) -> Dict[str, Any]:
    cfg = {"type": "TopDown", "backbone": {"type": "UniFormer"},
           "keypoint_head": {"type": "TopDownSimpleHead", "in_channels": 8, "out_channels": 5,
                             "num_deconv_filters": [4, 6, 7], "extra": {"final_conv_kernel": 1}},
           "test_cfg": {"flip_test": False, "post_process": "default", "shift_heatmap": True, "modulate_kernel": 11}}
    for key, value in overrides.items():
        if key in ("in_channels", "num_deconv_layers", "num_deconv_filters", "num_deconv_kernels", "extra",
                   "input_transform", "norm_cfg"):
            cfg["keypoint_head"][key] = value
        else:
            cfg[key] = value
    return cfg


def test_build_per_layer_filters_and_test_cfg():
    model = build_mmpose_model(head_cfg(), nn.Conv2d(3, 8, 32, 32)).eval()
    layers = model.keypoint_head.deconv_layers
    assert [layers[i].out_channels for i in (0, 3, 6)] == [4, 6, 7] and model.keypoint_head.final_layer.in_channels == 7
    assert all(layers[i].bias is None and layers[i].kernel_size == (4, 4) for i in (0, 3, 6))
    assert model.test_cfg["flip_test"] is False
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 96)
        assert model(x).shape == (2, 5, 16, 24)
        preds = model.predict_keypoints(x, torch.zeros(2, 2), torch.ones(2, 2))  # flip_test False: plain heatmaps
    kp, vals = decode_heatmaps(model(x), torch.zeros(2, 2), torch.ones(2, 2))
    torch.testing.assert_close(preds, torch.cat([kp, vals], dim=-1))
    two = build_mmpose_model(head_cfg(num_deconv_layers=2, num_deconv_filters=[4, 4]), nn.Conv2d(3, 8, 32, 32))
    assert two(torch.randn(1, 3, 64, 64)).shape == (1, 5, 8, 8) and two.test_cfg["flip_test"] is False


@pytest.mark.parametrize("overrides, message", [
    (dict(num_deconv_kernels=[4, 3, 4]), r"num_deconv_kernels=\[4, 3, 4\] is not supported; only 4"),
    (dict(extra={"final_conv_kernel": 3}), r"extra.final_conv_kernel=3 is not supported"),
    (dict(num_deconv_filters=[4, 4]), r"num_deconv_layers=3 needs that many num_deconv_filters"),
    (dict(input_transform="resize_concat"), r"input_transform='resize_concat'"),
    (dict(norm_cfg={"type": "GN"}), r"norm_cfg type 'GN' is not supported"),
    (dict(test_cfg={"use_udp": True}), r"use_udp=True \(UDP decoding\) is not supported"),
    (dict(test_cfg={"post_process": "unbiased"}), r"post_process='unbiased' is not supported"),
    (dict(test_cfg={"flip_tset": True}), r"unknown key\(s\) \['flip_tset'\]"),
    (dict(neck={"type": "GlobalAveragePooling"}), r"a neck \('GlobalAveragePooling'\) is not supported"),
    (dict(type="AssociativeEmbedding"), r"model type 'AssociativeEmbedding' is not supported"),
    (dict(keypoint_head={"type": "TopDownMultiStageHead"}), r"keypoint_head type 'TopDownMultiStageHead'"),
])
def test_build_refuses_what_it_does_not_implement(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_mmpose_model(head_cfg(**overrides), nn.Identity())


def test_convert_is_strict(fixture, official):
    sd = dict(fixture["state_dict"])
    sd.pop("keypoint_head.final_layer.bias")
    sd["keypoint_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing 1 \['keypoint_head.final_layer.bias'\], unexpected 1 "
                                         r"\['keypoint_head.extra.weight'\]"):
        convert_mmpose_state_dict(sd, official)
    sd = dict(fixture["state_dict"], **{"keypoint_head.final_layer.bias": torch.zeros(18)})
    with pytest.raises(ValueError, match=r"keypoint_head.final_layer.bias: checkpoint \(18,\) vs model \(17,\)"):
        convert_mmpose_state_dict(sd, official)


def test_official_pose_config_names_and_copies():
    assert OFFICIAL_POSE_NAMES == tuple(f"top_down_{r}_global_{s}" for r in ("256x192", "384x288", "448x320")
                                        for s in ("small", "base"))
    cfg = official_pose_config("top_down_384x288_global_base")
    assert cfg["input_size"] == [384, 288] and cfg["image_size"] == [288, 384] and cfg["heatmap_size"] == [72, 96]
    assert cfg["official_config"] == "pose_estimation/exp/top_down_384x288_global_base/config.py"
    assert cfg["data_cfg"]["oks_thr"] == 0.9 and cfg["data_cfg"]["vis_thr"] == 0.2
    assert official_pose_config(cfg["official_config"]) == cfg
    cfg["model"]["backbone"]["layers"][0] = 99  # a fresh dict every call
    assert official_pose_config("top_down_384x288_global_base")["model"]["backbone"]["layers"][0] == 5
    with pytest.raises(ValueError, match=r"unknown official pose config 'top_down_256x192_hybrid_small'; known"):
        official_pose_config("top_down_256x192_hybrid_small")


@pytest.fixture(scope="module")
def dense_keys() -> Dict[str, Any]:
    return json.loads(_require(REFERENCE / "official_dense_keys.json").read_text())


@pytest.fixture(scope="module")
def built_once() -> Dict[tuple, TopDownPoseModel]:
    return {}  # one model per distinct structure (small / base), shared by the configs with the same keys


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFICIAL_POSE_NAMES)
def test_every_official_pose_config_builds_at_full_size(name, dense_keys, built_once, fixture):
    cfg = official_pose_config(name)
    path = cfg["official_config"]
    meta = dense_keys["_meta"]["configs"][path]
    shapes = dense_keys[path]
    # the constructed config = the official model dict with this config's backbone
    expected = copy.deepcopy(fixture["config"]["official_model"])
    expected["backbone"] = meta["backbone"]
    assert cfg["model"] == expected and meta["type"] == "TopDown" and meta["keypoint_head"] == "TopDownSimpleHead"
    key = tuple(cfg["model"]["backbone"]["layers"])
    if key not in built_once:
        built_once[key] = build_mmpose_model(cfg["model"], build_official_backbone(cfg["model"]["backbone"],
                                                                                   out_indices=(3,))).eval()
    model = built_once[key]
    state = fake_state_dict(shapes)
    assert model.load_state_dict(convert_mmpose_state_dict(state, model), strict=True)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes
    assert n_params(model) == meta["params"] == cfg["params"] and len(shapes) == meta["num_keys"]
    h, w = cfg["input_size"]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, h, w)).shape == (1, 17, cfg["heatmap_size"][1], cfg["heatmap_size"][0])


# ---------------------------------------------------------------------------------------------- crops and eval ----


def test_evaluation_crops_are_the_official_input(tmp_path):
    import test_pose

    data = test_pose.write_dataset(tmp_path / "coco", n_images=2)
    ds = CocoKeypoints(data["root"], data["json"], input_size=(256, 192), train=False)
    image, _, _, meta = ds[1]
    arr = np.asarray(test_pose.Image.open(data["root"] / "000002.png").convert("RGB"))
    official, official_meta = topdown_affine_input(arr, meta["center"].numpy(), meta["scale"].numpy(), (192, 256))
    assert torch.equal(image, official[0])
    assert np.array_equal(official_meta["scale"], meta["scale"].numpy())
    # a training flip is mmpose's: mirror the image and the centre, then the same warp
    flipped = topdown_crop(arr, meta["center"].numpy(), meta["scale"].numpy(), (256, 192), flip=True)
    mirrored, _ = topdown_affine_input(np.ascontiguousarray(arr[:, ::-1]),
                                       [arr.shape[1] - 1 - float(meta["center"][0]), float(meta["center"][1])],
                                       meta["scale"].numpy(), (192, 256))
    assert torch.equal(flipped, mirrored[0])


def person(dx: float = 0.0, dy: float = 0.0, score: float = 0.9) -> np.ndarray:
    base = np.stack([np.linspace(40, 80, 17), np.linspace(20, 120, 17), np.full(17, score)], axis=-1)
    base[:, 0] += dx
    base[:, 1] += dy
    return base


def reference_oks(a: np.ndarray, b: np.ndarray, area_a: float, area_b: float) -> float:
    var = (np.asarray(COCO_SIGMAS) * 2) ** 2
    d2 = ((a[:, :2] - b[:, :2]) ** 2).sum(-1)
    return float(np.mean(np.exp(-d2 / var / ((area_a + area_b) / 2) / 2)))


def test_oks_iou_and_nms_threshold():
    area = 100.0 * 120.0
    a = person()
    near, far = person(dx=3.0), person(dx=6.0)  # OKS ≈ 0.957 and ≈ 0.850 with a
    ious = oks_iou(a.reshape(-1), np.stack([near.reshape(-1), far.reshape(-1)]), area, [area, area])
    assert ious.dtype == np.float32
    np.testing.assert_allclose(ious, [reference_oks(a, near, area, area), reference_oks(a, far, area, area)],
                               rtol=1e-6)
    assert ious[0] > 0.9 > ious[1]
    # the best person is kept, its near duplicate (OKS > 0.9) suppressed, the farther one (OKS ≤ 0.9) kept
    assert oks_nms([near, a, far], [0.5, 0.9, 0.4], [area] * 3, thr=0.9) == [1, 2]
    assert oks_nms([near, a, far], [0.5, 0.9, 0.4], [area] * 3, thr=0.99) == [1, 0, 2]
    assert oks_nms([], [], []) == []
    # the area scales the tolerance: with a 16x smaller area the near duplicate falls below 0.9 and survives
    small = area / 16
    assert reference_oks(a, near, small, small) < 0.9
    assert oks_nms([near, a], [0.5, 0.9], [small, small], thr=0.9) == [1, 0]


def test_oks_nms_results_is_per_image_and_evaluation_uses_it(tmp_path):
    import test_pose

    data = test_pose.write_dataset(tmp_path / "coco", n_images=2)
    coco = load_coco(data["json"], keypoints=17)
    gt = {a["image_id"]: np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3)
          for a in coco.dataset["annotations"]}
    for k in gt.values():
        k[:, 2] = 1.0
    gt[1][9] = gt[1][8]  # image 1's unlabelled wrist: any position
    scale = torch.tensor([[0.6, 0.8]])
    records = []
    # image 1: the right person (0.9) and a near duplicate (0.8); image 2: the right person (0.7)
    for image_id, kp, box_score in ((1, gt[1], 0.9), (1, gt[1] + [0.5, 0.0, 0.0], 0.8), (2, gt[2], 0.7)):
        records += keypoint_results(torch.tensor(kp[None, :, :2]), torch.ones(1, 17, 1), [image_id], [box_score],
                                    scales=scale)
    assert [r["area"] for r in records] == pytest.approx([120 * 160] * 3)
    kept = oks_nms_results(records)
    assert [(r["image_id"], r["score"]) for r in kept] == [(1, pytest.approx(0.9)), (2, pytest.approx(0.7))]
    # official_keypoint_results = rescoring + area + per-image NMS in one call
    official = official_keypoint_results(torch.tensor(np.stack([gt[1], gt[1] + [0.5, 0, 0]])[..., :2]),
                                         torch.tensor([[[0.9]] * 17, [[0.1]] * 16 + [[0.5]]]), [1, 1], [0.9, 0.8],
                                         np.zeros((2, 2)), torch.cat([scale, scale]))
    assert len(official) == 1 and official[0]["score"] == pytest.approx(0.9 * 0.9)
    assert official[0]["area"] == pytest.approx(120 * 160)
    kept_all = official_keypoint_results(torch.tensor(np.stack([gt[1], gt[1] + [0.5, 0, 0]])[..., :2]),
                                         torch.tensor([[[0.9]] * 17, [[0.1]] * 16 + [[0.5]]]), [1, 1], [0.9, 0.8],
                                         np.zeros((2, 2)), torch.cat([scale, scale]), oks_thr=None)
    assert [r["score"] for r in kept_all] == pytest.approx([0.81, 0.8 * 0.5])  # only joints above 0.2 count
    # the same duplicate in another image is not suppressed
    moved = [records[0], dict(records[1], image_id=2)]
    assert len(oks_nms_results(moved)) == 2
    # without NMS the duplicate is a false positive ranked above image 2's person: AP drops below 100
    with_nms = evaluate_keypoints(coco, records)
    without = evaluate_keypoints(coco, records, use_nms=False)
    assert with_nms["AP"] == pytest.approx(100.0) and without["AP"] < 90.0
