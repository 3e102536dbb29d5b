"""The official mmdet 2.11 Mask R-CNN and Cascade Mask R-CNN on torchvision (uniformer.tasks.mmdet_rcnn) against the
reference outputs of the official code (shared/reference/parity/dense_heads/det_*.pt): every intermediate step, the
final detections and masks, the official key layouts of all full-size detection configs, and Cascade training
through the torchvision interface, in process and through `uniformer train --detector cascade_mask_rcnn`."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

import uniformer
from conftest import REFERENCE, _require, fake_state_dict, load_parity
from test_dense_engine import TINY, cli
from test_detection import rect_polygon
from uniformer.tasks.build import build_task_model, model_from_config
from uniformer.tasks.detection import CocoDetection, coco_results, collate_fn, evaluate_coco
from uniformer.tasks.mmdet_configs import (
    OFFICIAL_DETECTORS,
    cascade_task_config,
    coco80_class_names,
    official_detector_config,
)
from uniformer.tasks.mmdet_rcnn import MMDetCascadeRCNN, MMDetMaskRCNN, build_mmdet_detector
from uniformer.tasks.mmdet_weights import convert_mmdet_state_dict, mmdet_num_parameters, to_mmdet_state_dict
from uniformer.tasks.official_backbone import build_official_backbone

FIXTURES = ("det_mask_rcnn_hybrid", "det_cascade_mask_rcnn_hybrid")
TOL = dict(atol=1e-4, rtol=0.0)
# end-to-end box coordinates: the backbone's float32 noise (~1e-6 relative, seen in the neck maps) is amplified by
# anchors / RoIs of up to ~360 px and exp(dw); measured <= 3.4e-4 px, while every step fed the official inputs is
# within 1e-4 (proposals bit-exact from the official RPN outputs, detections from the official proposals)
BOX_TOL = dict(atol=5e-4, rtol=0.0)


def unpack_masks(packed: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    shape = tuple(int(s) for s in shape.tolist())
    bits = np.unpackbits(packed.numpy())[:int(np.prod(shape))]
    return torch.from_numpy(bits.reshape(shape).astype(bool))


def dets_of(result: Dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([result["boxes"], result["scores"][:, None]], dim=1)


def assert_masks_agree(ours: torch.Tensor, packed: torch.Tensor, shape: torch.Tensor) -> int:
    """Masks equal to the official ones except pixels on ties (>= 99.9 % equal); returns the disagreement count."""
    ref = unpack_masks(packed, shape)
    assert ours.dtype == torch.bool and ours.shape == ref.shape
    wrong = int((ours != ref).sum())
    assert wrong <= 1e-3 * ref.numel(), f"{wrong} of {ref.numel()} mask pixels differ"
    return wrong


@pytest.fixture(scope="module", params=FIXTURES)
def parity(request) -> Dict[str, Any]:
    data = load_parity(f"dense_heads/{request.param}")
    cfg = data["config"]
    model = build_mmdet_detector(cfg["model"], build_official_backbone(cfg["model"]["backbone"])).eval()
    loaded = model.load_state_dict(convert_mmdet_state_dict(data["state_dict"], model), strict=True)
    with torch.no_grad():
        feats = model.neck(data["input"])
    return dict(name=request.param, data=data, cfg=cfg, out=data["outputs"], meta=cfg["img_meta"], model=model,
                feats=feats, loaded=loaded)


# ------------------------------------------------------------------------------------- fixture parity ------------
def test_official_state_dict_converts_strictly_and_counts_match(parity):
    model, data = parity["model"], parity["data"]
    assert not parity["loaded"].missing_keys and not parity["loaded"].unexpected_keys
    assert isinstance(model, MMDetCascadeRCNN if "cascade" in parity["name"] else MMDetMaskRCNN)
    assert mmdet_num_parameters(model) == parity["cfg"]["params"]
    back = to_mmdet_state_dict(model.state_dict(), model)  # the inverse restores every official tensor
    assert set(back) == set(data["state_dict"])
    for key, value in data["state_dict"].items():
        assert torch.equal(back[key], value), key


def test_neck_rpn_head_and_anchors(parity):
    out, model, feats = parity["out"], parity["model"], parity["feats"]
    assert len(feats) == 5
    for ours, ref in zip(feats, out["neck"]):
        torch.testing.assert_close(ours, ref, **TOL)
    with torch.no_grad():
        cls, reg = model.rpn_head_outputs(feats)
    for ours, ref in zip(cls + reg, out["rpn_cls"] + out["rpn_reg"]):
        torch.testing.assert_close(ours, ref, **TOL)
    for ours, ref in zip(model.base_anchors(), out["base_anchors"]):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0.0)  # unrounded, fixed strides


def test_proposals_keep_zero_size_boxes_like_mmdet_2_11(parity):
    out, model, meta = parity["out"], parity["model"], parity["meta"]
    rpn = model.rpn
    anchors = rpn.anchor_generator.grid_anchors([tuple(f.shape[-2:]) for f in out["neck"]])
    for drop_empty, ref in ((False, out["proposals"]), (True, out["released"]["proposals"])):
        # from the official RPN outputs: the same proposals in the same order (2.11, and 2.28's zero-size filter),
        # coordinates equal up to float32 rounding: the vectorised exp/sigmoid of the CPU at hand may differ from the
        # oracle's by an ulp (seen on CI: 1.5e-5 px on a 360 px coordinate, 4e-7 relative)
        exact = rpn.proposals_single([c[0] for c in out["rpn_cls"]], [r[0] for r in out["rpn_reg"]], anchors,
                                     meta["img_shape"][:2], cfg=rpn.test_cfg, drop_empty=drop_empty)
        assert exact.shape == ref.shape
        torch.testing.assert_close(exact, ref, atol=1e-4, rtol=0.0)
        # end to end from our own neck
        torch.testing.assert_close(model.proposals(parity["feats"], meta, drop_empty=drop_empty), ref, **BOX_TOL)
    assert len(out["proposals"]) > len(out["released"]["proposals"])  # 2.11 keeps the degenerate boxes


def test_roi_levels_and_roi_align_features(parity):
    out, model, feats = parity["out"], parity["model"], parity["feats"]
    boxes = out["fixed_proposals"][:, :4]
    assert torch.equal(model.roi_levels(boxes), out["fixed_roi_levels"])
    assert set(out["fixed_roi_levels"].tolist()) == {0, 1, 2, 3}
    n = out["fixed_roi_feats"].shape[0]
    with torch.no_grad():
        torch.testing.assert_close(model.roi_features(feats, boxes[:n]), out["fixed_roi_feats"], **TOL)


def test_box_heads_on_fixed_rois(parity):
    out, model, feats, meta = parity["out"], parity["model"], parity["feats"], parity["meta"]
    boxes = out["fixed_proposals"][:, :4]
    with torch.no_grad():
        if "fixed_cls" in out:
            cls, reg = model.bbox_forward(feats, boxes)
            torch.testing.assert_close(cls, out["fixed_cls"], **TOL)
            torch.testing.assert_close(reg, out["fixed_reg"], **TOL)
            return
        rois, cls, reg = model.cascade_chain(feats, boxes, meta)
    assert len(rois) == 3
    for s in range(3):
        torch.testing.assert_close(rois[s], out["fixed_chain_rois"][s][:, 1:], **BOX_TOL)
        torch.testing.assert_close(cls[s], out["fixed_chain_cls"][s], **TOL)
        torch.testing.assert_close(reg[s], out["fixed_chain_reg"][s], **TOL)


def test_mask_heads_on_fixed_rois(parity):
    out, model, feats = parity["out"], parity["model"], parity["feats"]
    ref = out["fixed_mask_logits"]
    cascade = "cascade" in parity["name"]
    n = ref.shape[1] if cascade else ref.shape[0]
    boxes = out["fixed_proposals"][:n, :4]
    with torch.no_grad():
        if cascade:
            for s in range(3):
                torch.testing.assert_close(model.mask_logits(feats, boxes, stage=s), ref[s], **TOL)
        else:
            torch.testing.assert_close(model.mask_logits(feats, boxes), ref, **TOL)


def test_detections_from_fixed_proposals(parity):
    out, model = parity["out"], parity["model"]
    result = model.simple_test_proposals(parity["feats"], out["fixed_proposals"], parity["meta"])
    torch.testing.assert_close(dets_of(result), out["fixed_dets"], **TOL)
    assert torch.equal(result["labels"], out["fixed_labels"])
    assert_masks_agree(result["masks"], out["fixed_masks_packed"], out["fixed_masks_shape"])


def test_full_simple_test(parity):
    data, out, model, meta = parity["data"], parity["out"], parity["model"], parity["meta"]
    (result,) = model.simple_test(data["input"], [meta])
    assert len(result["scores"]) == 100 and bool((result["scores"][:-1] >= result["scores"][1:]).all())
    torch.testing.assert_close(dets_of(result), out["dets"], **BOX_TOL)
    assert torch.equal(result["labels"], out["labels"])
    assert_masks_agree(result["masks"], out["masks_packed"], out["masks_shape"])
    # from the official proposals the RoI stage alone matches to 1e-4 absolute
    exact = model.simple_test_proposals(parity["feats"], out["proposals"], meta)
    torch.testing.assert_close(dets_of(exact), out["dets"], **TOL)
    released = out["released"]
    if "dets" in released:  # mmdet 2.28 drops zero-size proposals, which changes these detections
        result = model.simple_test(data["input"], [meta], proposals=[model.proposals(parity["feats"], meta, True)])[0]
        torch.testing.assert_close(dets_of(result), released["dets"], **BOX_TOL)
        assert torch.equal(result["labels"], released["labels"])
        assert_masks_agree(result["masks"], released["masks_packed"], out["masks_shape"])


def test_torchvision_eval_interface_uses_the_same_post_processing(parity):
    model, meta = parity["model"], parity["meta"]
    h, w = meta["img_shape"][:2]
    image = torch.rand(3, h, w)
    saved = model.transform.min_size, model.transform.max_size
    model.transform.min_size, model.transform.max_size = (min(h, w),), max(h, w)  # no resize: identity scale
    try:
        with torch.no_grad():
            (ours,) = model([image])
    finally:
        model.transform.min_size, model.transform.max_size = saved
    with torch.no_grad():
        x = (image - torch.tensor(model.transform.image_mean)[:, None, None]) / torch.tensor(
            model.transform.image_std)[:, None, None]
        x = torch.nn.functional.pad(x, (0, 128 - w, 0, 96 - h))[None]
        (ref,) = model.simple_test(x, [dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=1.0)],
                                   mask_probabilities=True)
    torch.testing.assert_close(ours["boxes"], ref["boxes"])
    assert torch.equal(ours["labels"], ref["labels"] + 1)  # torchvision labels are 1-based
    assert ours["masks"].shape == (len(ref["scores"]), 1, h, w) and ours["masks"].dtype == torch.float32


def test_fixture_is_required():
    with pytest.raises(pytest.fail.Exception, match="official reference data not found"):
        _require(REFERENCE / "parity" / "dense_heads" / "no_such_fixture.pt")


# -------------------------------------------------------------------------------------- errors and data ----------
def test_unsupported_configs_and_state_dicts_are_named(parity):
    cfg = parity["cfg"]["model"]
    with pytest.raises(ValueError, match="'RetinaNet'"):
        build_mmdet_detector(dict(cfg, type="RetinaNet"), torch.nn.Identity())
    bad_head = json.loads(json.dumps(cfg))
    head = bad_head["roi_head"]["bbox_head"]
    (head[0] if isinstance(head, list) else head)["reg_class_agnostic"] = True
    with pytest.raises(ValueError, match="reg_class_agnostic"):
        build_mmdet_detector(bad_head, build_official_backbone(cfg["backbone"]))
    model, sd = parity["model"], dict(parity["data"]["state_dict"])
    with pytest.raises(ValueError, match="roi_head.extra.weight"):
        convert_mmdet_state_dict(dict(sd, **{"roi_head.extra.weight": torch.zeros(1)}), model)
    sd.pop("rpn_head.rpn_cls.bias")
    with pytest.raises(ValueError, match="rpn.head.cls_logits.bias"):
        convert_mmdet_state_dict(sd, model)


def test_coco80_class_names():
    names = coco80_class_names()
    assert len(names) == 80 == len(set(names))
    assert names[:5] == ["person", "bicycle", "car", "motorcycle", "airplane"]
    assert names[9] == "traffic light" and names[62] == "tv" and names[-1] == "toothbrush"


# ---------------------------------------------------------------------------------- full-size official -----------
@pytest.fixture(scope="module")
def dense_keys() -> Dict[str, Any]:
    return json.loads(_require(REFERENCE / "official_dense_keys.json").read_text())


def test_every_official_detection_config_is_covered(dense_keys):
    paths = sorted(p for p in dense_keys["_meta"]["configs"] if p.startswith("object_detection/"))
    assert paths == sorted(OFFICIAL_DETECTORS.values())
    for name, path in OFFICIAL_DETECTORS.items():
        meta, cfg = dense_keys["_meta"]["configs"][path], official_detector_config(name)
        assert cfg["type"] == meta["type"]
        assert {k: cfg["backbone"][k] for k in meta["backbone"]} == meta["backbone"]
        heads = cfg["roi_head"]["bbox_head"]
        heads = heads if isinstance(heads, list) else [heads]
        assert [h["type"] for h in heads] == meta["roi_head"]["bbox_head"]
        assert [h["bbox_coder"]["target_stds"] for h in heads] == meta["roi_head"]["target_stds"]
        assert heads[0]["num_classes"] == meta["roi_head"]["num_classes"] == 80
        same = meta.get("same_keys_as")
        if same:  # same structure as another config: built once, under that name
            assert dense_keys[path] == dense_keys[same]
            other = next(n for n, p in OFFICIAL_DETECTORS.items() if p == same)
            assert cfg == official_detector_config(other)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, p in OFFICIAL_DETECTORS.items() if "_3x_ms_" not in p or "cascade" in p])
def test_full_size_official_layout_loads_strictly(name, dense_keys):
    """The full-size model of each distinct official structure: a random state dict with exactly the official keys
    and shapes converts and loads strictly, and the parameter count is the official one. (Built on the meta device and
    materialised uninitialised: the structure is what is checked, not the random initialisation.)"""
    path = OFFICIAL_DETECTORS[name]
    meta = dense_keys["_meta"]["configs"][path]
    assert "same_keys_as" not in meta
    cfg = official_detector_config(name)
    with torch.device("meta"):
        model = build_mmdet_detector(cfg, build_official_backbone(cfg["backbone"]))
    model = model.to_empty(device="cpu")
    shapes = dense_keys[path]
    converted = convert_mmdet_state_dict(fake_state_dict(shapes), model)
    loaded = model.load_state_dict(converted, strict=True)
    assert not loaded.missing_keys and not loaded.unexpected_keys
    assert len(shapes) == meta["num_keys"]
    assert mmdet_num_parameters(model) == meta["params"]
    back = to_mmdet_state_dict(model.state_dict(), model)
    assert {k: list(v.shape) for k, v in back.items()} == {k: list(s) for k, s in shapes.items()}


# -------------------------------------------------------------------------------------------- training -----------
SIDE = 64
COLORS = {1: (220, 40, 40), 2: (40, 60, 220)}
OBJECTS = {1: [(1, (6, 8, 24, 20)), (2, (36, 30, 22, 28))], 2: [(2, (10, 34, 30, 22))], 3: [(1, (30, 6, 28, 26))],
           4: [(1, (4, 36, 20, 22)), (2, (34, 4, 26, 20))], 5: [(2, (18, 18, 28, 28))],
           6: [(1, (12, 10, 36, 18)), (2, (8, 40, 20, 18))]}
TINY_BACKBONE = dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 128], head_dim=16)
TINY_HEADS = dict(fpn_channels=16, conv_channels=8, fc_channels=32, mask_channels=8, box_batch_size_per_image=32,
                  rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=100, box_detections_per_img=20)


def write_split(root: Path, split: str, image_ids: List[int]) -> None:
    """COCO layout: ``root/{split}2017/*.png`` (64x64, coloured rectangles) + ``annotations/instances_{split}2017.json``
    with polygon masks, categories 1 (red) and 2 (blue)."""
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for image_id in image_ids:
        arr = np.full((SIDE, SIDE, 3), 128, np.uint8)
        for cat, (x, y, w, h) in OBJECTS[image_id]:
            arr[y:y + h, x:x + w] = COLORS[cat]
            anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=cat, bbox=[x, y, w, h], area=w * h,
                             iscrowd=0, segmentation=rect_polygon(x, y, w, h)))
        Image.fromarray(arr).save(root / f"{split}2017" / f"{image_id}.png")
        images.append(dict(id=image_id, file_name=f"{image_id}.png", height=SIDE, width=SIDE))
    data = dict(images=images, annotations=anns, categories=[dict(id=1, name="red"), dict(id=2, name="blue")])
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cascade_coco")
    write_split(root, "train", sorted(OBJECTS))
    write_split(root, "val", [1, 4])
    return root


@pytest.mark.slow
def test_cascade_trains_through_the_torchvision_interface(tiny_coco):
    """30 steps of 2 images: the summed loss falls and the box / mask AP on the training images is far above chance
    (measured: loss 4.1 → 2.7, bbox AP 42, AP50 91 in ~30 s)."""
    torch.manual_seed(0)
    ds = CocoDetection(tiny_coco / "train2017", tiny_coco / "annotations" / "instances_train2017.json")
    backbone = uniformer.create_model("uniformer_small", features_only=True, **TINY_BACKBONE)
    cfg = cascade_task_config(ds.num_classes, TINY_BACKBONE["embed_dim"], **TINY_HEADS)
    assert cfg["roi_head"]["bbox_head"][2]["bbox_coder"]["target_stds"] == [0.033, 0.033, 0.067, 0.067]
    model = build_mmdet_detector(cfg, backbone, min_size=SIDE, max_size=SIDE)
    assert [t.pos_iou_thr for t in model.roi_heads.train_cfgs] == [0.5, 0.6, 0.7]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    items = [ds[i] for i in range(len(ds))]
    rng, history = random.Random(0), []
    model.train()
    for _ in range(30):
        images, targets = collate_fn(rng.sample(items, 2))
        losses = model(images, targets)
        assert {"s0_loss_cls", "s1_loss_bbox", "s2_loss_mask", "loss_objectness"} <= set(losses)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = float(np.mean(history[:5])), float(np.mean(history[-5:]))
    assert last < 0.8 * first, history
    model.eval()
    with torch.no_grad():
        outputs = model([image for image, _ in items])
    assert outputs[0]["masks"].shape[1:] == (1, SIDE, SIDE)
    metrics = evaluate_coco(ds.coco, coco_results(outputs, [int(t["image_id"]) for _, t in items],
                                                  ds.label_to_cat_id))
    assert metrics["bbox_AP"] > 15.0 and metrics["bbox_AP50"] > 30.0 and metrics["segm_AP50"] > 30.0, metrics


def test_build_task_model_cascade_round_trips_its_config():
    model = build_task_model("detection", "uniformer_small", 3, model_args=TINY_BACKBONE,
                             head_args=dict(detector="cascade_mask_rcnn", **TINY_HEADS),
                             data_config=dict(min_size=64, max_size=64))
    assert isinstance(model, MMDetCascadeRCNN) and model.roi_heads.num_stages == 3
    assert model.roi_heads.box_predictor[0].cls_score.out_features == 4
    again = model_from_config(json.loads(json.dumps(model.task_config)))
    assert isinstance(again, MMDetCascadeRCNN)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    full = build_task_model("detection", "uniformer_small", 3, model_args=TINY_BACKBONE,
                            head_args=dict(detector="cascade_mask_rcnn"))
    head = full.roi_heads.box_head[0]
    assert full.backbone.out_channels == 256 and head[0][0].out_channels == 256 and head[5].out_features == 1024
    with pytest.raises(ValueError, match="unknown cascade_mask_rcnn option"):
        build_task_model("detection", "uniformer_small", 3, model_args=TINY_BACKBONE,
                         head_args=dict(detector="cascade_mask_rcnn", num_fcs=3))
    with pytest.raises(ValueError, match="'retinanet'"):
        build_task_model("detection", "uniformer_small", 3, model_args=TINY_BACKBONE,
                         head_args=dict(detector="retinanet"))


@pytest.mark.slow
def test_cli_trains_and_resumes_a_cascade(tiny_coco, tmp_path):
    run = tmp_path / "cascade"
    head_args = json.dumps({k: v for k, v in TINY_HEADS.items()})
    out = cli("train", "--task", "detection", "--detector", "cascade_mask_rcnn", *TINY, "--head-args", head_args,
              "--img-size", "64", "--max-size", "64", "--data", str(tiny_coco), "--epochs", "2", "--lr", "2e-3",
              "--output", str(run)).stdout
    assert "2 classes, short side 64" in out and "epoch   2/2" in out
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["head_args"]["detector"] == "cascade_mask_rcnn" and config["label_names"] == ["red", "blue"]
    resumed = cli("train", "--resume", str(run), "--epochs", "3").stdout
    assert "resumed" in resumed and "epoch   3/3" in resumed and "epoch   1/3" not in resumed
    model = uniformer.load_pretrained(run / "last")
    assert isinstance(model, MMDetCascadeRCNN)
    with torch.no_grad():
        (pred,) = model.eval()([torch.rand(3, SIDE, SIDE)])
    assert set(pred) == {"boxes", "labels", "scores", "masks"}
    bad = cli("train", "--task", "segmentation", "--detector", "cascade_mask_rcnn", "--data", str(tiny_coco),
              check=False)
    assert bad.returncode != 0 and "--detector cascade_mask_rcnn applies only to --task detection" in bad.stderr
