"""Semantic segmentation (spec uniformer.md §5.3, ecosystem.md §5): the ADE20K-layout dataset, the mmseg-style joint
transforms, the Semantic FPN / VT-FPN / UperNet heads, whole and sliding-window inference, the dataset-level mIoU
metric, overlays, and a one-batch overfit of the FPN and UperNet models."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import uniformer
from uniformer.data import BadSample
from uniformer.data.ade20k import SegEvalTransform, SegmentationDataset, SegTrainTransform
from uniformer.tasks.necks import ConvFPNNeck
from uniformer.tasks.seg_heads import FCNAuxHead, FPNHead, SemanticFPNHead, UperNetHead
from uniformer.tasks.segmentation import (SegmentationMetric, SegmentationModel, predict_mask, save_overlay,
                                          segmentation_palette, slide_inference, whole_inference)

CLASSES = ("background", "square", "disc")
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
COLOURS = np.array([(30, 90, 40), (220, 40, 40), (40, 60, 230)], dtype=np.uint8)  # per class, well separated


class TinyBackbone(nn.Module):
    """Stand-in backbone: four strided conv-BN-ReLU stages → maps at strides 4/8/16/32 with 16/32/64/128 channels."""

    def __init__(self, channels=(16, 32, 64, 128)) -> None:
        super().__init__()
        self.out_channels = list(channels)
        stages, cin = [], 3
        for i, c in enumerate(channels):
            conv = nn.Conv2d(cin, c, 4, stride=4) if i == 0 else nn.Conv2d(cin, c, 3, stride=2, padding=1)
            stages.append(nn.Sequential(conv, nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def tiny_uniformer():
    return uniformer.create_model("uniformer_small", depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 128], head_dim=16,
                                  features_only=True)


def shapes_mask(seed: int, hw=(64, 80), square=20, radius=10) -> np.ndarray:
    """Class 0 background, class 1 an axis-aligned square, class 2 a disc (drawn over the square)."""
    g = np.random.default_rng(seed)
    h, w = hw
    mask = np.zeros(hw, np.uint8)
    y, x = g.integers(2, h - square - 1), g.integers(2, w - square - 1)
    mask[y:y + square, x:x + square] = 1
    cy, cx = g.integers(radius + 1, h - radius - 1), g.integers(radius + 1, w - radius - 1)
    yy, xx = np.mgrid[:h, :w]
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = 2
    return mask


def shapes_image(mask: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed + 100).normal(0, 12, mask.shape + (3,))
    return np.clip(COLOURS[mask].astype(np.float64) + noise, 0, 255).astype(np.uint8)


def write_split(root, split, seeds, jpeg=True, palette_first=False):
    """Write images (JPEG, the last one PNG) and 8-bit label PNGs (the first in palette mode if asked)."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    masks = {}
    for i, seed in enumerate(seeds):
        stem = f"{split}_{i:03d}"
        mask = shapes_mask(seed)
        image = Image.fromarray(shapes_image(mask, seed))
        if jpeg and i < len(seeds) - 1:
            image.save(root / "images" / split / f"{stem}.jpg", quality=95)
        else:
            image.save(root / "images" / split / f"{stem}.png")
        if palette_first and i == 0:
            pm = Image.fromarray(mask, mode="P")
            pm.putpalette(segmentation_palette(256).reshape(-1).tolist())
            pm.save(root / "annotations" / split / f"{stem}.png")
        else:
            Image.fromarray(mask, mode="L").save(root / "annotations" / split / f"{stem}.png")
        masks[stem] = mask
    return masks


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    masks = write_split(root, "training", [0, 1, 2, 3], palette_first=True)
    masks.update(write_split(root, "validation", [10, 11]))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root, masks


def denormalise(x: torch.Tensor) -> np.ndarray:
    return ((x * STD + MEAN) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------------------------------

def test_dataset_reads_images_masks_and_classes(ade):
    root, masks = ade
    ds = SegmentationDataset(root, "training")
    assert ds.classes == list(CLASSES) and ds.num_classes == 3 and len(ds) == 4
    assert [p.name for p, _ in ds.samples] == ["training_000.jpg", "training_001.jpg", "training_002.jpg",
                                               "training_003.png"]
    for i, (image, mask) in enumerate(ds):
        stem = ds.samples[i][0].stem
        assert image.shape == (3, 64, 80) and image.dtype == torch.float32
        assert mask.shape == (64, 80) and mask.dtype == torch.long
        assert torch.equal(mask, torch.from_numpy(masks[stem].astype(np.int64)))  # index 0 is the palette mask
    # the PNG image round-trips exactly through the normalisation
    image, _ = ds[3]
    assert np.array_equal(denormalise(image), np.asarray(Image.open(ds.samples[3][0]).convert("RGB")))
    with Image.open(ds.samples[0][1]) as first:
        assert first.mode == "P"


def test_dataset_with_train_transform_batches(ade):
    root, _ = ade
    torch.manual_seed(0)
    ds = SegmentationDataset(root, "training", transform=SegTrainTransform(crop_size=(48, 48), scale=(160, 64)))
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert x.shape == (4, 3, 48, 48) and y.shape == (4, 48, 48) and y.dtype == torch.long
    assert set(y.unique().tolist()) <= {0, 1, 2, 255}


def test_dataset_reduce_zero_label_and_names_file(ade, tmp_path):
    root, masks = ade
    names = tmp_path / "two.txt"
    names.write_text("square\ndisc\n")
    ds = SegmentationDataset(root, "validation", reduce_zero_label=True, class_names_file=names)
    assert ds.classes == ["square", "disc"]
    _, mask = ds[0]
    raw = masks["validation_000"]
    assert torch.equal(mask == 255, torch.from_numpy(raw == 0))
    assert torch.equal(mask[torch.from_numpy(raw == 1)].unique(), torch.tensor([0]))
    assert torch.equal(mask[torch.from_numpy(raw == 2)].unique(), torch.tensor([1]))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        SegmentationDataset(root, "validation", class_names_file=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="num_classes=5 but .*classes.txt lists 3"):
        SegmentationDataset(root, "validation", num_classes=5)


def test_dataset_without_names_needs_num_classes(tmp_path):
    write_split(tmp_path, "val", [0])
    with pytest.raises(ValueError, match="pass num_classes"):
        SegmentationDataset(tmp_path, "val")
    ds = SegmentationDataset(tmp_path, "val", num_classes=3)
    assert ds.classes == ["0", "1", "2"]
    with pytest.raises(FileNotFoundError, match="nosuchsplit"):
        SegmentationDataset(tmp_path, "nosuchsplit", num_classes=3)


def test_dataset_unmatched_files_are_named(tmp_path):
    write_split(tmp_path, "val", [0, 1, 2])
    (tmp_path / "annotations" / "val" / "val_001.png").unlink()
    with pytest.raises(FileNotFoundError, match="val_001.jpg"):
        SegmentationDataset(tmp_path, "val", num_classes=3)
    Image.fromarray(shapes_mask(5)).save(tmp_path / "annotations" / "val" / "val_001.png")
    Image.fromarray(shapes_mask(6)).save(tmp_path / "annotations" / "val" / "orphan.png")
    with pytest.raises(FileNotFoundError, match="orphan.png"):
        SegmentationDataset(tmp_path, "val", num_classes=3)


def test_dataset_unexpected_mask_values_raise_or_skip(tmp_path):
    write_split(tmp_path, "val", [0, 1, 2])
    bad = shapes_mask(1)
    bad[0, 0], bad[0, 1], bad[1, 0] = 7, 9, 255  # 255 is fine (ignore)
    Image.fromarray(bad).save(tmp_path / "annotations" / "val" / "val_001.png")
    ds = SegmentationDataset(tmp_path, "val", num_classes=3)
    assert ds[0][1].max() == 2
    with pytest.raises(ValueError, match=r"val_001\.png has label values \[7, 9\]"):
        ds[1]
    skipping = SegmentationDataset(tmp_path, "val", num_classes=3, skip_bad=True)
    item = skipping[1]  # dropped from its batch by DropBadCollate, never replaced by the next item
    assert isinstance(item, BadSample) and item.index == 1 and item.path.endswith("val_001.jpg")
    assert re.search(r"val_001\.png has label values \[7, 9\]", item.reason)
    image, mask = skipping[2]
    assert torch.equal(mask, torch.from_numpy(shapes_mask(2).astype(np.int64)))
    Image.fromarray(np.stack([bad] * 3, -1)).save(tmp_path / "annotations" / "val" / "val_002.png")
    with pytest.raises(ValueError, match="val_002.png must be an 8-bit single-channel PNG .* found mode RGB"):
        ds[2]


# ----------------------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------------------

def test_train_transform_crops_and_pads_to_crop_size():
    torch.manual_seed(0)
    mask = shapes_mask(0)
    image = Image.fromarray(shapes_image(mask, 0))
    t = SegTrainTransform(crop_size=(48, 56), scale=(160, 128), ratio_range=(0.5, 2.0))
    for _ in range(10):
        x, y = t(image, mask)
        assert x.shape == (3, 48, 56) and y.shape == (48, 56) and y.dtype == torch.long
        assert set(y.unique().tolist()) <= {0, 1, 2, 255}
    # an image smaller than the crop: image padded with 0 (after normalisation), mask with 255
    small = SegTrainTransform(crop_size=(96, 100), scale=None, hflip=0.0)
    x, y = small(image, mask)
    assert x.shape == (3, 96, 100)
    assert torch.equal(y[:64, :80], torch.from_numpy(mask.astype(np.int64)))
    assert (y[64:] == 255).all() and (y[:, 80:] == 255).all()
    assert (x[:, 64:] == 0).all() and (x[:, :, 80:] == 0).all()


def test_train_transform_rescale_keeps_ratio_within_scale():
    mask = np.zeros((100, 200), np.uint8)
    image = Image.fromarray(np.zeros((100, 200, 3), np.uint8))
    t = SegTrainTransform(crop_size=(1000, 1000), scale=(300, 120), ratio_range=(1.0, 1.0), hflip=0.0)
    _, y = t(image, mask)
    valid = y != 255
    assert valid.sum(0).max() == 120 and valid.sum(1).max() == 240  # short side 120 (long side 240 ≤ 300)


def test_train_transform_honours_cat_max_ratio():
    """Mostly background (87 %) with a central 36×36 square: about one in five unconstrained 50×50 crops has one class
    covering ≥ 75 % of it; with the constraint (up to 10 tries, each succeeding with p ≈ 0.8) no chosen crop does."""
    mask = np.zeros((100, 100), np.uint8)
    mask[32:68, 32:68] = 1
    image = Image.fromarray(np.zeros((100, 100, 3), np.uint8))

    def shares(cat_max_ratio):
        torch.manual_seed(0)
        t = SegTrainTransform(crop_size=(50, 50), scale=None, cat_max_ratio=cat_max_ratio, hflip=0.0)
        out = []
        for _ in range(60):
            _, y = t(image, mask)
            counts = torch.bincount(y.flatten(), minlength=2)[:2].double()
            out.append(float(counts.max() / counts.sum()))
        return out

    assert max(shares(0.75)) < 0.75
    assert sum(s >= 0.75 for s in shares(1.0)) >= 5


def test_train_transform_flips_image_and_mask_together():
    mask = shapes_mask(3)
    image = Image.fromarray(COLOURS[mask])
    t = SegTrainTransform(crop_size=(64, 80), scale=None, hflip=1.0, cat_max_ratio=1.0)
    x, y = t(image, mask)
    assert torch.equal(y, torch.from_numpy(mask[:, ::-1].astype(np.int64)))
    assert np.array_equal(denormalise(x), COLOURS[y.numpy()])
    torch.manual_seed(1)
    flips = SegTrainTransform(crop_size=(48, 48), scale=(160, 128), hflip=0.5, photometric=True)
    for _ in range(6):  # random rescale + crop + flip keep image and mask aligned
        x, y = flips(Image.fromarray(COLOURS[mask]), mask)
        assert x.shape == (3, 48, 48) and y.shape == (48, 48)
    nophoto = SegTrainTransform(crop_size=(48, 48), scale=(160, 128), hflip=0.5)
    torch.manual_seed(2)
    for _ in range(8):  # after rescale, crop and flip, each label's pixels still carry that label's colour
        x, y = nophoto(Image.fromarray(COLOURS[mask]), mask)
        img = denormalise(x).astype(int)
        for k in y.unique().tolist():
            if k != 255:
                assert np.abs(np.median(img[(y == k).numpy()], axis=0) - COLOURS[k]).max() <= 8


def test_eval_transform_resizes_image_only():
    mask = shapes_mask(4)
    image = Image.fromarray(shapes_image(mask, 4))
    x, y = SegEvalTransform(scale=(256, 128))(image, mask)
    assert x.shape == (3, 128, 160)  # short side 64 → 128, long side 160 ≤ 256
    assert torch.equal(y, torch.from_numpy(mask.astype(np.int64)))
    x, _ = SegEvalTransform(scale=(100, 100))(image, mask)
    assert x.shape == (3, 80, 100)  # the long side caps it
    with pytest.raises(ValueError, match="mask is 10x10 but image is 80x64"):
        SegEvalTransform()(image, np.zeros((10, 10), np.uint8))


# ----------------------------------------------------------------------------------------------------------------------
# heads and model
# ----------------------------------------------------------------------------------------------------------------------

SMALL_HEADS = {
    "fpn": dict(neck_channels=32, head_channels=32),
    "fpn-gn": dict(neck_channels=32, head_channels=32, num_groups=8),
    "vt-fpn": dict(neck_channels=32, head_channels=32, num_groups=8, num_tokens=4, token_dim=32, num_heads=2,
                   ffn_dim=32),
    "upernet": dict(channels=32, aux_channels=16),
}


@pytest.mark.parametrize("head", ["fpn", "fpn-gn", "vt-fpn", "upernet"])
def test_heads_output_input_resolution_for_odd_sizes(head):
    torch.manual_seed(0)
    model = SegmentationModel(TinyBackbone(), 5, head=head, **SMALL_HEADS[head])
    x = torch.randn(2, 3, 70, 90)
    out = model(x)
    if head == "upernet":  # training mode with the default aux head
        assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 5, 70, 90)] * 2
        assert isinstance(model.auxiliary_head, FCNAuxHead) and model.aux_weight == 0.4
        assert isinstance(model.decode_head, UperNetHead)
    else:
        assert out.shape == (2, 5, 70, 90) and model.auxiliary_head is None
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 5, 33, 47)


def test_recipe_defaults():
    fpn = SegmentationModel(TinyBackbone(), 150, head="fpn")  # mmseg's Semantic FPN: BatchNorm head
    assert isinstance(fpn.decode_head, FPNHead) and isinstance(fpn.neck, ConvFPNNeck)
    assert fpn.neck.out_channels == 256 and fpn.decode_head.conv_seg.in_channels == 128
    assert fpn.decode_head.dropout.p == 0.1 and fpn.decode_head.feature_strides == (4, 8, 16, 32)
    assert not any(isinstance(m, nn.GroupNorm) for m in fpn.modules())
    gn = SegmentationModel(TinyBackbone(), 150, head="fpn-gn")  # the Detectron2 GroupNorm head
    assert isinstance(gn.decode_head, SemanticFPNHead) and gn.decode_head.predictor.in_channels == 128
    assert gn.decode_head.dropout.p == 0.1 and gn.decode_head.scale_heads[0][0][1].num_groups == 32
    uper = SegmentationModel(TinyBackbone(), 150, head="upernet")
    assert uper.decode_head.channels == 512 and uper.decode_head.pool_scales == (1, 2, 3, 6)
    assert uper.auxiliary_head.in_channels == 64 and uper.auxiliary_head.convs[0].out_channels == 256
    assert SegmentationModel(TinyBackbone(), 3, head="upernet", aux_head=False).auxiliary_head is None
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['channels'\] for head='fpn'"):
        SegmentationModel(TinyBackbone(), 3, head="fpn", channels=64)
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['num_groups'\] for head='fpn'"):
        SegmentationModel(TinyBackbone(), 3, head="fpn", num_groups=8)
    with pytest.raises(ValueError, match="pass in_channels"):
        SegmentationModel(nn.Conv2d(3, 8, 1), 3)
    with pytest.raises(ValueError, match="head must be one of"):
        SegmentationModel(TinyBackbone(), 3, head="deeplab")


@pytest.mark.parametrize("head", ["fpn", "upernet"])
def test_real_uniformer_backbone(head):
    torch.manual_seed(0)
    backbone = tiny_uniformer()
    model = SegmentationModel(backbone, 4, head=head, **SMALL_HEADS[head])
    assert model.in_channels == (16, 32, 64, 128)  # from timm's feature_info
    out = model(torch.randn(2, 3, 70, 90))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 4, 70, 90)
    model.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 96)
        torch.testing.assert_close(slide_inference(model, x, 4, crop=(64, 96), stride=(32, 32)),
                                   whole_inference(model, x))


def test_loss_ignores_255_and_weights_aux():
    torch.manual_seed(0)
    model = SegmentationModel(TinyBackbone(), 3, head="upernet", **SMALL_HEADS["upernet"])
    logits = torch.randn(2, 3, 8, 9, requires_grad=True)
    mask = torch.randint(0, 3, (2, 8, 9))
    mask[0, :4] = 255
    keep = mask != 255
    expected = -F.log_softmax(logits, 1).gather(1, mask.clamp(max=2)[:, None])[:, 0][keep].mean()
    torch.testing.assert_close(model.loss(logits, mask), expected)
    changed = logits.detach().clone()
    changed[0, :, :4] = 100 * torch.randn(3, 4, 9)  # whatever is predicted at ignored pixels does not matter
    torch.testing.assert_close(model.loss(changed, mask), expected.detach())
    aux = torch.randn(2, 3, 8, 9)
    torch.testing.assert_close(model.loss((logits, aux), mask), expected + 0.4 * model.loss(aux, mask))
    empty = model.loss(logits, torch.full((2, 8, 9), 255))
    assert empty.item() == 0 and empty.requires_grad
    with pytest.raises(ValueError, match=r"labels \[7\]"):
        model.loss(logits, torch.full((2, 8, 9), 7))


# ----------------------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------------------

def test_slide_equals_whole_when_the_crop_covers_the_image():
    torch.manual_seed(0)
    model = SegmentationModel(TinyBackbone(), 3, head="fpn", **SMALL_HEADS["fpn"]).train()
    x = torch.randn(1, 3, 70, 90)
    whole = whole_inference(model, x)
    assert model.training  # mode restored
    torch.testing.assert_close(slide_inference(model, x, 3, crop=(96, 96), stride=(64, 64)), whole)
    torch.testing.assert_close(slide_inference(model, x, 3, crop=(70, 90), stride=(10, 10)), whole)


def test_slide_averages_overlapping_windows():
    """With a per-pixel model every window agrees with the whole image, so the average equals it exactly; the window
    count per pixel follows mmseg's grid."""
    conv = nn.Conv2d(3, 4, 1)
    calls = []

    def model_fn(x):
        calls.append(tuple(x.shape[-2:]))
        return conv(x)

    model = nn.Module()
    model.forward = model_fn
    x = torch.randn(1, 3, 70, 90)
    out = slide_inference(model, x, 4, crop=(32, 48), stride=(20, 30))
    torch.testing.assert_close(out, conv(x).detach())
    assert len(calls) == 3 * 3 and set(calls) == {(32, 48)}  # mmseg grid: (70-32+19)//20+1, (90-48+29)//30+1


def test_predict_mask_returns_original_size():
    torch.manual_seed(0)
    model = SegmentationModel(TinyBackbone(), 3, head="fpn", **SMALL_HEADS["fpn"])
    x = torch.randn(3, 40, 50)
    for mode in ("whole", "slide"):
        pred = predict_mask(model, x, (64, 80), mode=mode, crop=(32, 32), stride=(24, 24), flip=mode == "slide")
        assert pred.shape == (64, 80) and pred.dtype == torch.long and pred.max() < 3


# ----------------------------------------------------------------------------------------------------------------------
# metric
# ----------------------------------------------------------------------------------------------------------------------

def test_metric_perfect_prediction_is_100():
    metric = SegmentationMetric(3)
    target = torch.from_numpy(shapes_mask(0).astype(np.int64))
    metric.update(target, target)
    r = metric.compute()
    assert r["mIoU"] == r["mAcc"] == r["aAcc"] == 100 and r["per_class_iou"] == [100.0] * 3


def test_metric_hand_computed_case_with_ignore_and_absent_class():
    target = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [0, 0, 0, 3]])  # class 2 and 3: absent from both (3 only at an ignored pixel)
    metric = SegmentationMetric(4)
    metric.update(pred, target)
    r = metric.compute()
    # class 0: I=3, pred 4, label 4 → U=5, IoU 60, acc 75; class 1: I=2, pred 3, label 3 → U=4, IoU 50, acc 66.7
    assert r["per_class_iou"][:2] == pytest.approx([60.0, 50.0])
    assert math.isnan(r["per_class_iou"][2]) and math.isnan(r["per_class_iou"][3])
    assert r["mIoU"] == pytest.approx(55.0)
    assert r["mAcc"] == pytest.approx((75 + 200 / 3) / 2)
    assert r["aAcc"] == pytest.approx(500 / 7)


def test_metric_accumulates_over_the_dataset_and_rejects_bad_input():
    metric = SegmentationMetric(2)
    metric.update(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 1]]))  # image IoUs: 75 / 0
    metric.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))  # batch form; image IoU for class 1: 100
    r = metric.compute()
    # accumulated: class 0 I=3 U=4 → 75; class 1 I=2 U=3 → 66.7 (the mean of per-image IoUs would differ)
    assert r["per_class_iou"] == pytest.approx([75.0, 200 / 3])
    metric.update(torch.tensor([[1]]), torch.tensor([[255]]))  # ignored pixel: no change
    assert metric.compute()["per_class_iou"] == pytest.approx([75.0, 200 / 3])
    with pytest.raises(ValueError, match="same"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target holds class indices \[5\]"):
        metric.update(torch.zeros(1, 1, dtype=torch.long), torch.full((1, 1), 5))
    with pytest.raises(ValueError, match="integer class indices"):
        metric.update(torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long))
    metric.reset()
    assert math.isnan(metric.compute()["mIoU"])


# ----------------------------------------------------------------------------------------------------------------------
# overlay
# ----------------------------------------------------------------------------------------------------------------------

def test_save_overlay_writes_a_blended_png(ade, tmp_path):
    root, masks = ade
    image_path = root / "images" / "validation" / "validation_001.png"
    mask = masks["validation_001"].astype(np.int64)
    mask[:5] = 255
    out = save_overlay(image_path, torch.from_numpy(mask), tmp_path / "out" / "overlay.png")
    assert out == tmp_path / "out" / "overlay.png" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["overlay.png"]  # no temporary file left behind
    written = np.asarray(Image.open(out)).astype(int)
    original = np.asarray(Image.open(image_path)).astype(int)
    assert np.array_equal(written[:5], original[:5])  # 255 = transparent
    palette = segmentation_palette(3).astype(int)
    expected = (0.5 * original[10:] + 0.5 * palette[mask[10:]] + 0.5).astype(int)
    assert np.abs(written[10:] - expected).max() <= 1
    assert np.array_equal(segmentation_palette(3), segmentation_palette(150)[:3])  # deterministic, prefix-stable
    with pytest.raises(ValueError, match="palette has 2 colours"):
        save_overlay(image_path, torch.from_numpy(mask), tmp_path / "x.png", palette=[(0, 0, 0), (1, 1, 1)])


# ----------------------------------------------------------------------------------------------------------------------
# overfitting one batch
# ----------------------------------------------------------------------------------------------------------------------

def _overfit(head: str, steps: int, lr: float, target: float, **kwargs) -> float:
    """Train on one batch of two 64×64 ADE-style images until the eval-mode mIoU on it reaches ``target``."""
    torch.manual_seed(0)
    t = SegEvalTransform(scale=None)
    pairs = [t(Image.fromarray(shapes_image(m, s)), m)
             for s, m in ((s, shapes_mask(s, (64, 64), square=28, radius=14)) for s in (0, 1))]
    x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    model = SegmentationModel(TinyBackbone(), 3, head=head, **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best = 0.0
    for step in range(steps):
        model.train()
        loss = model.loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            metric = SegmentationMetric(3)
            metric.update(predict_mask(model, x[0], (64, 64)), y[0])
            metric.update(predict_mask(model, x[1], (64, 64)), y[1])
            best = metric.compute()["mIoU"]
            if best >= target:
                break
    return best


def test_overfit_semantic_fpn_on_one_batch():
    assert _overfit("fpn", 150, 1e-2, 95.0, **SMALL_HEADS["fpn"]) >= 90


def test_overfit_upernet_on_one_batch():
    assert _overfit("upernet", 100, 3e-3, 90.0, **SMALL_HEADS["upernet"]) >= 80
