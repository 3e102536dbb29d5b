"""Top-down pose (uniformer.tasks.pose): COCO keypoint parsing, affine crops and Gaussian targets, heatmap decoding as
the inverse of the crop, flip test, OKS evaluation, overlays, and an overfit run that must reach OKS AP ≥ 80 on its
own training crops."""
from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

from conftest import STANDIN_CHANNELS, StandInBackbone

import uniformer
from uniformer.data.coco import load_coco
from uniformer.data.coco_keypoints import (COCO_FLIP_PAIRS, COCO_KEYPOINT_NAMES, COCO_SKELETON, CocoKeypoints,
                                            affine_matrix)
from uniformer.tasks.pose import TopDownPoseModel, heatmap_loss
from uniformer.tasks.pose_eval import (
    decode_heatmaps,
    evaluate_keypoints,
    flip_back,
    flip_test,
    keypoint_results,
    save_pose_overlay,
)

H, W = 160, 128  # original images
INPUT = (128, 96)  # network input (H, W); heatmaps 32 x 24
CHANNELS = STANDIN_CHANNELS
StandIn = StandInBackbone
# a standing "person" (offsets from its centre) in COCO joint order
BASE = np.array([[0, -60], [-5, -64], [5, -64], [-10, -60], [10, -60], [-18, -40], [18, -40], [-26, -18], [26, -18],
                 [-30, 4], [30, 4], [-12, 10], [12, 10], [-14, 36], [14, 36], [-16, 62], [16, 62]], dtype=float)


def joint_color(j: int) -> tuple:
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(j / 17, 1, 1))


def write_dataset(root: Path, n_images: int = 4, seed: int = 0) -> Dict[str, object]:
    """PNG images of one synthetic person each: every joint a 5x5 dot of its own colour on a dark background, at
    integer coordinates; the COCO JSON has 17 x (x, y, v) keypoints (image 1: left wrist unlabelled, v = 0), bbox and
    area. Image ``n_images + 1`` has no person."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for image_id in range(1, n_images + 2):
        img = Image.new("RGB", (W, H), (40, 40, 40))
        draw = ImageDraw.Draw(img)
        if image_id <= n_images:
            kp = BASE * rng.uniform(0.85, 1.1) + rng.uniform(-6, 6, size=BASE.shape)
            kp = np.round(kp + [W / 2 + rng.uniform(-10, 10), H / 2 + rng.uniform(-6, 6)])
            for j, (x, y) in enumerate(kp):
                draw.rectangle([x - 2, y - 2, x + 2, y + 2], fill=joint_color(j))
            vis = [2] * 17
            if image_id == 1:
                vis[9] = 0
            x0, y0 = kp.min(0) - 6
            x1, y1 = kp.max(0) + 6
            keypoints = [float(v) for (x, y), s in zip(kp, vis) for v in ((x, y, s) if s else (0, 0, 0))]
            anns.append({"id": 100 + image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                         "area": float((x1 - x0) * (y1 - y0)), "num_keypoints": sum(v > 0 for v in vis),
                         "keypoints": keypoints})
        img.save(root / f"{image_id:06d}.png")
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "height": H, "width": W})
    categories = [{"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
                   "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}]
    data = {"images": images, "annotations": anns, "categories": categories}
    path = root / "person_keypoints.json"
    path.write_text(json.dumps(data))
    return {"root": root, "json": path, "data": data}


@pytest.fixture(scope="module")
def pose_data(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    return write_dataset(tmp_path_factory.mktemp("coco_pose"))


def batch_of(ds: CocoKeypoints, indices=None):
    items = [ds[i] for i in (range(len(ds)) if indices is None else indices)]
    images = torch.stack([it[0] for it in items])
    heatmaps = torch.stack([it[1] for it in items])
    weights = torch.stack([it[2] for it in items])
    metas = [it[3] for it in items]
    return images, heatmaps, weights, metas


# --------------------------------------------------------------------------------------------------- dataset ------


def test_one_sample_per_person_with_center_scale_and_meta(pose_data):
    ds = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=False)
    assert len(ds) == 4  # the person-less image gives no sample
    image, heatmaps, weight, meta = ds[0]
    assert image.shape == (3, *INPUT) and heatmaps.shape == (17, 32, 24) and weight.shape == (17, 1)
    ann = pose_data["data"]["annotations"][0]
    x, y, w, h = ann["bbox"]
    w, h = w - 1, h - 1  # mmpose's clean_bbox: x2 = x1 + w - 1 (inside the image here)
    torch.testing.assert_close(meta["center"], torch.tensor([x + w / 2, y + h / 2]))
    assert meta["scale"].dtype == torch.float32
    sw, sh = (meta["scale"] * 200).tolist()  # units of 200 px; input aspect ratio 96/128, padded by 1.25
    assert sw / sh == pytest.approx(96 / 128) and min(sw / w, sh / h) == pytest.approx(1.25)
    assert meta["image_id"] == 1 and meta["score"] == 1.0 and not meta["flipped"]
    torch.testing.assert_close(meta["joints"], torch.tensor(ann["keypoints"]).view(17, 3))


def test_heatmap_targets_peak_at_the_keypoints(pose_data):
    ds = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=False)
    _, heatmaps, weight, meta = ds[0]
    assert weight[:, 0].tolist() == [1.0] * 9 + [0.0] + [1.0] * 7  # the unlabelled wrist has weight 0
    assert heatmaps[9].abs().sum() == 0
    matrix = affine_matrix(meta["center"].numpy(), meta["scale"].numpy(), INPUT)
    joints = meta["joints"].numpy()
    crop = np.c_[joints[:, :2], np.ones(17)] @ matrix.T
    for j in range(17):
        if j == 9:
            continue
        peak = divmod(int(heatmaps[j].argmax()), 24)
        assert peak == (int(crop[j, 1] / 4 + 0.5), int(crop[j, 0] / 4 + 0.5))
        assert heatmaps[j].max() == pytest.approx(1.0)
    # sigma 2: a neighbour of the peak is exp(-1/8)
    py, px = divmod(int(heatmaps[0].argmax()), 24)
    assert heatmaps[0, py, px + 1] == pytest.approx(np.exp(-1 / 8), rel=1e-5)


def test_affine_crop_puts_each_joint_dot_where_the_matrix_says(pose_data):
    """The PIL warp and the keypoint transform agree: the crop pixel at a joint's transformed position has the
    joint's colour (pixel-centre conventions match)."""
    ds = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=False)
    image, _, _, meta = ds[1]
    rgb = image * ds.std + ds.mean
    matrix = affine_matrix(meta["center"].numpy(), meta["scale"].numpy(), INPUT)
    crop = np.c_[meta["joints"][:, :2].numpy(), np.ones(17)] @ matrix.T
    for j in range(17):
        x, y = np.round(crop[j, :2]).astype(int)
        color = rgb[:, y, x] * 255
        assert torch.allclose(color, torch.tensor(joint_color(j), dtype=torch.float32), atol=3), (j, color)


def test_train_flip_mirrors_crop_and_swaps_joints(pose_data):
    plain = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=False)
    flipped = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=True, flip_prob=1.0)
    image, heatmaps, weight, meta = plain[0]
    image_f, heatmaps_f, weight_f, meta_f = flipped[0]
    assert meta_f["flipped"] and not meta["flipped"]
    # mmpose's flip: crop x' = out_w - x, i.e. the mirrored crop moved right by one pixel
    torch.testing.assert_close(image_f[..., 1:], image.flip(-1)[..., :-1], atol=1e-4, rtol=0)
    # the unlabelled left wrist (9) becomes the right wrist's channel (10)
    assert weight_f[9, 0] == 1.0 and weight_f[10, 0] == 0.0
    for left, right in COCO_FLIP_PAIRS:
        for a, b in ((left, right), (right, left)):
            if weight[a, 0] == 0:
                continue
            ya, xa = divmod(int(heatmaps[a].argmax()), 24)
            yb, xb = divmod(int(heatmaps_f[b].argmax()), 24)
            assert yb == ya and abs(xb - (24 - xa)) <= 1
    assert flipped.samples[0]["joints"][9, 2] == 0  # the stored sample is not modified


def test_random_scale_and_rotation_keep_targets_on_the_joints(pose_data):
    torch.manual_seed(0)
    ds = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=True, flip_prob=0.0,
                       scale_factor=0.25, rotation_factor=30)
    rotations = []
    for i in range(len(ds)):
        image, heatmaps, weight, meta = ds[i]
        rotations.append(meta["rotation"])
        rgb = image * ds.std + ds.mean
        matrix = affine_matrix(meta["center"].numpy(), meta["scale"].numpy(), INPUT, meta["rotation"])
        crop = np.c_[meta["joints"][:, :2].numpy(), np.ones(17)] @ matrix.T
        original = meta["joints"][:, :2].numpy()
        for j in range(17):
            x, y = np.round(crop[j, :2]).astype(int)
            if weight[j, 0] > 0 and 0 <= x < INPUT[1] and 0 <= y < INPUT[0]:
                assert divmod(int(heatmaps[j].argmax()), 24) == (int(crop[j, 1] / 4 + 0.5), int(crop[j, 0] / 4 + 0.5))
                # the colour check needs the joint's own 5x5 dot: skip joints whose dot a later one overlaps
                if any(np.abs(original[k] - original[j]).max() <= 4 for k in range(j + 1, 17)):
                    continue
                assert torch.allclose(rgb[:, y, x] * 255, torch.tensor(joint_color(j), dtype=torch.float32),
                                      atol=60), (i, j)
    assert any(abs(r) > 1 for r in rotations)


def test_person_boxes_from_a_detection_file(pose_data, tmp_path):
    anns = pose_data["data"]["annotations"]
    dets = [{"image_id": 1, "category_id": 1, "bbox": anns[0]["bbox"], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": anns[1]["bbox"], "score": 0.01},
            {"image_id": 2, "category_id": 2, "bbox": anns[1]["bbox"], "score": 0.8},  # not a person
            {"image_id": 5, "category_id": 1, "bbox": [10, 10, 30, 60], "score": 0.5}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    ds = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=False, use_gt_boxes=False,
                       person_boxes_json=path, det_score_threshold=0.05)
    assert [s["image_id"] for s in ds.samples] == [1, 5]
    image, heatmaps, weight, meta = ds[0]
    assert meta["score"] == pytest.approx(0.9) and weight.sum() == 0 and heatmaps.abs().sum() == 0
    dets.append({"image_id": 77, "bbox": [0, 0, 10, 10], "score": 0.5})
    dets.append({"image_id": 1, "bbox": [0, 0, -1, 10], "score": 0.5})
    path.write_text(json.dumps(dets))
    with pytest.raises(ValueError, match=r"dets.json: detection 4 refers to unknown image id 77"):
        CocoKeypoints(pose_data["root"], pose_data["json"], train=False, use_gt_boxes=False, person_boxes_json=path)
    with pytest.warns(UserWarning) as caught:
        ds = CocoKeypoints(pose_data["root"], pose_data["json"], train=False, use_gt_boxes=False,
                           person_boxes_json=path, skip_bad=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "skipping detection 4: refers to unknown image id 77" in messages[0]
    assert "skipping detection 5: bbox must have positive width" in messages[1]
    assert [s["image_id"] for s in ds.samples] == [1, 2, 5]  # threshold 0: only the non-person box is dropped
    with pytest.raises(ValueError, match="needs person_boxes_json"):
        CocoKeypoints(pose_data["root"], pose_data["json"], train=False, use_gt_boxes=False)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda a: a.update(keypoints=a["keypoints"][:-1]), r"annotation id 101 keypoints must be a list of 51"),
        (lambda a: a.pop("keypoints"), r"annotation id 101 lacks the keys \['keypoints'\]"),
        (lambda a: a.update(image_id=42), r"annotation id 101 refers to unknown image id 42"),
        (lambda a: a.update(bbox=[10, 10, 0, 5]), r"annotation id 101 .*positive width"),
        (lambda a: a["keypoints"].__setitem__(2, 3), r"annotation id 101 keypoint visibilities must be 0, 1 or 2"),
    ],
)
def test_bad_keypoint_annotations_are_named(pose_data, tmp_path, mutate, expected):
    data = json.loads(json.dumps(pose_data["data"]))
    mutate(data["annotations"][0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=expected):
        CocoKeypoints(pose_data["root"], path)
    with pytest.warns(UserWarning, match="skipping annotation id 101"):
        assert len(CocoKeypoints(pose_data["root"], path, skip_bad=True)) == 3


# ------------------------------------------------------------------------------------------ model and loss ------


def test_model_outputs_stride_4_heatmaps():
    torch.manual_seed(0)
    body = uniformer.create_model("uniformer_small", depth=[1, 1, 2, 1], embed_dim=CHANNELS, head_dim=16,
                                  features_only=True)
    model = TopDownPoseModel(body, body.feature_info.channels()).eval()
    assert model.in_channels == 128
    with torch.no_grad():
        assert model(torch.randn(2, 3, 256, 192)).shape == (2, 17, 64, 48)
        assert model(torch.randn(1, 3, 100, 70)).shape == (1, 17, 25, 18)  # padded to 128x96, cropped back
    head = model.keypoint_head
    assert [type(m).__name__ for m in head.deconv_layers] == ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 3
    assert head.deconv_layers[0].kernel_size == (4, 4) and head.deconv_layers[0].stride == (2, 2)
    assert head.deconv_layers[0].out_channels == 256 and head.final_layer.kernel_size == (1, 1)
    single = TopDownPoseModel(nn.Conv2d(3, 8, 32, 32), 8)  # a backbone returning only the stride-32 map
    assert single(torch.randn(1, 3, 64, 64)).shape == (1, 17, 16, 16)
    with pytest.raises(ValueError, match=r"last map must be \(B, 64, H/32, W/32\), found \(1, 128, 2, 2\)"):
        TopDownPoseModel(StandIn(), 64)(torch.randn(1, 3, 64, 64))


def test_heatmap_loss_is_weighted_half_mse():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    expected = sum(0.5 * torch.mean((pred[:, j] * weight[:, j, None, None] - target[:, j] * weight[:, j, None, None])
                                    ** 2) for j in range(3)) / 3
    torch.testing.assert_close(heatmap_loss(pred, target, weight), expected)
    torch.testing.assert_close(heatmap_loss(pred, target, weight.unsqueeze(-1)), expected)
    assert heatmap_loss(pred, target, torch.zeros(2, 3)) == 0


# --------------------------------------------------------------------------------------- decoding and flip ------


def test_decode_inverts_the_crop_transform(pose_data):
    ds = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=False)
    _, heatmaps, weight, metas = batch_of(ds)
    centers = torch.stack([m["center"] for m in metas])
    scales = torch.stack([m["scale"] for m in metas])
    keypoints, maxvals = decode_heatmaps(heatmaps, centers, scales, INPUT)
    joints = torch.stack([m["joints"] for m in metas])
    visible = weight[..., 0] > 0
    pixel = scales[:, None, 0] * 200 / 24  # original pixels per heatmap pixel (scale in units of 200 px)
    error = (keypoints - joints[..., :2]).abs().amax(-1)
    assert (error[visible] <= (0.5 * pixel.expand_as(error))[visible] + 1e-4).all()  # target rounding only
    assert torch.allclose(maxvals[visible], torch.ones(1))

    # a keypoint that lands exactly on the heatmap grid comes back exactly
    center, scale = np.array([60.0, 70.0]), np.array([0.48, 0.64])  # 96 x 128 px: 1 heatmap pixel = 4 px
    point = np.array([72.0, 90.0])  # crop (60, 84) = heatmap (x, y) (15, 21)
    crop = (affine_matrix(center, scale, INPUT) @ np.r_[point, 1])[:2] / 4
    assert np.allclose(crop, [15, 21])
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(24.0), indexing="ij")
    hm = torch.exp(-((xx - 15) ** 2 + (yy - 21) ** 2) / 8).expand(1, 17, 32, 24)
    kp, _ = decode_heatmaps(hm, torch.tensor(center[None]), torch.tensor(scale[None]))
    torch.testing.assert_close(kp[0, 0], torch.tensor(point, dtype=torch.float32))
    # off-grid peaks move a quarter pixel toward the higher neighbour (x 15.3 → 15.25, y 21 stays)
    hm = torch.exp(-((xx - 15.3) ** 2 + (yy - 21) ** 2) / 8).expand(1, 17, 32, 24)
    kp, _ = decode_heatmaps(hm, torch.tensor(center[None]), torch.tensor(scale[None]))
    torch.testing.assert_close(kp[0, 0], torch.tensor([point[0] + 0.25 * 4, point[1]], dtype=torch.float32))
    with pytest.raises(ValueError, match="different strides"):
        decode_heatmaps(hm, torch.tensor(center[None]), torch.tensor(scale[None]), (128, 128))


def test_flip_test_is_symmetric_and_shifts_one_pixel():
    torch.manual_seed(0)
    model = TopDownPoseModel(StandIn(), 128, deconv_channels=32).eval()
    for m in model.keypoint_head.modules():  # non-trivial outputs
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.1)
    x = torch.randn(2, 3, 64, 64)
    out = flip_test(model, x, shift=False)
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
    # flipping the input flips the (unshifted) flip-test output: it is an average over both views
    torch.testing.assert_close(flip_test(model, x.flip(-1), shift=False), flip_back(out), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, (plain + flip_back(mirrored)) * 0.5)
    back = flip_back(mirrored)
    assert torch.equal(back[:, 1], mirrored[:, 2].flip(-1)) and torch.equal(back[:, 0], mirrored[:, 0].flip(-1))
    shifted = back.clone()
    shifted[..., 1:] = back[..., :-1].clone()
    torch.testing.assert_close(flip_test(model, x), (plain + shifted) * 0.5)
    assert model.training is False


# --------------------------------------------------------------------------------------- results and eval ------


def perfect_results(coco) -> List[dict]:
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": list(a["keypoints"]), "score": 1.0,
             "area": float(a["area"])} for a in coco.dataset["annotations"]]


def test_keypoint_results_and_oks_ap(pose_data):
    coco = load_coco(pose_data["json"], keypoints=17)
    metrics = evaluate_keypoints(coco, perfect_results(coco))
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AR"] == pytest.approx(100.0)
    assert evaluate_keypoints(coco, [])["AP"] == 0.0
    far = [dict(r, keypoints=[v + 30 if i % 3 < 2 else v for i, v in enumerate(r["keypoints"])])
           for r in perfect_results(coco)]
    assert evaluate_keypoints(coco, far)["AP"] == pytest.approx(0.0)
    # OKS-NMS (on by default) needs each record's crop area; without it the error says what to do
    bare = [{k: v for k, v in r.items() if k != "area"} for r in perfect_results(coco)]
    with pytest.raises(ValueError, match=r"no 'area' for OKS-NMS.*scales=.*use_nms=False"):
        evaluate_keypoints(coco, bare)
    assert evaluate_keypoints(coco, bare, use_nms=False)["AP"] == pytest.approx(100.0)

    kps = torch.tensor([[[1.0, 2.0]] * 17])
    vals = torch.full((1, 17, 1), 0.1)
    vals[0, :4, 0] = torch.tensor([0.9, 0.7, 0.5, 0.3])
    (record,) = keypoint_results(kps, vals, [7], box_scores=[0.5], scales=torch.tensor([[0.6, 0.8]]))
    assert record["image_id"] == 7 and record["category_id"] == 1 and len(record["keypoints"]) == 51
    assert record["area"] == pytest.approx(120 * 160)  # mmpose: prod(scale * 200)
    assert record["keypoints"][:3] == pytest.approx([1.0, 2.0, 0.9])
    assert record["score"] == pytest.approx(0.5 * 0.6)  # box score x mean of maxvals above 0.2
    json.dumps(record)

    raw = load_coco(pose_data["json"], keypoints=17)
    del raw.dataset["annotations"][2]["num_keypoints"]
    with pytest.raises(ValueError, match=r"annotation id 103 lacks \['num_keypoints'\]"):
        evaluate_keypoints(raw, perfect_results(coco))


def test_pose_overlay_is_written_as_png(pose_data, tmp_path):
    coco = load_coco(pose_data["json"], keypoints=17)
    kps = torch.tensor(coco.dataset["annotations"][1]["keypoints"]).view(1, 17, 3)
    image = Image.open(pose_data["root"] / "000002.png").convert("RGB")
    path = save_pose_overlay(image, kps, tmp_path / "pose.png")
    with Image.open(path) as out:
        assert out.format == "PNG" and out.size == (W, H)
        arr = np.asarray(out, dtype=np.int32)
    assert (arr != np.asarray(image, dtype=np.int32)).any()
    x, y = kps[0, 0, :2].int().tolist()
    assert (arr[y, x] == 255).all()  # joints drawn as white dots
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pose.png"]


# ------------------------------------------------------------------------------------------------- overfit ------


@pytest.mark.slow
def test_pose_model_overfits_one_batch(pose_data):
    """The SimpleBaseline head (256 channels) on the stand-in backbone, Adam, 150 steps on one batch of 4 person
    crops, must reach OKS AP ≥ 80 on them through flip test + decode + keypoint_results + evaluate_keypoints
    (measured: 100 for seeds 0-3, ~6 s)."""
    torch.manual_seed(0)
    ds = CocoKeypoints(pose_data["root"], pose_data["json"], input_size=INPUT, train=False)
    images, heatmaps, weights, metas = batch_of(ds)
    model = TopDownPoseModel(StandIn(), 128)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(150):
        loss = heatmap_loss(model(images), heatmaps, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    centers = torch.stack([m["center"] for m in metas])
    scales = torch.stack([m["scale"] for m in metas])
    keypoints, maxvals = decode_heatmaps(flip_test(model, images), centers, scales, INPUT)
    results = keypoint_results(keypoints, maxvals, [m["image_id"] for m in metas], [m["score"] for m in metas],
                               scales=scales)
    metrics = evaluate_keypoints(ds.coco, results)
    assert metrics["AP"] >= 80.0, metrics
