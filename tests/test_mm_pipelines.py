"""The official mmcv/mmpose test pipelines (cv2 on uint8) against the oracle's ``preprocess.pt``."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from conftest import REFERENCE

from uniformer.data import mm_pipelines as mp

FIXTURE = REFERENCE / "parity" / "dense_heads" / "preprocess.pt"  # a hard requirement, as every official fixture


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def rgb(ref):
    return np.ascontiguousarray(ref["image_bgr"].numpy()[..., ::-1])


def _check_tensor(x: torch.Tensor, entry: dict) -> None:
    assert list(x.shape[1:]) == entry["shape"].tolist()
    chw = x[0].double()
    torch.testing.assert_close(chw.flatten(1).sum(1), entry["channel_sum"], rtol=1e-6, atol=0.05)
    torch.testing.assert_close(chw.abs().flatten(1).sum(1), entry["channel_abs_sum"], rtol=1e-6, atol=0.05)
    got = x[0].flatten()[entry["sample_index"]]
    torch.testing.assert_close(got, entry["sample_value"], rtol=0, atol=1e-4)
    # cv2 on uint8 then float32 normalisation: bit-identical to the oracle
    assert torch.equal(got, entry["sample_value"])


def _check_meta(meta: dict, ref_meta: dict) -> None:
    for key in ("ori_shape", "img_shape", "pad_shape"):
        assert tuple(meta[key]) == tuple(ref_meta[key]), key
    assert meta["scale_factor"].dtype == np.float32
    np.testing.assert_array_equal(meta["scale_factor"], np.asarray(ref_meta["scale_factor"], dtype=np.float32))
    assert meta["flip"] is False


def test_mmdet_resize_normalize_pad(ref, rgb):
    x, meta = mp.mmdet_test_input(rgb, img_scale=(1333, 800))
    _check_meta(meta, ref["det"]["meta"])
    _check_tensor(x, ref["det"])
    # padding is zero after normalisation, right/bottom
    h, w = meta["img_shape"][:2]
    assert h == x.shape[-2] and x[..., :, w:].abs().sum() == 0 and x[..., :, :w].abs().sum() > 0


def test_mmseg_upernet_resize(ref, rgb):
    x, meta = mp.mmseg_test_input(rgb, img_scale=(2048, 512), align=False)
    _check_meta(meta, ref["seg_upernet"]["meta"])
    _check_tensor(x, ref["seg_upernet"])


def test_mmseg_fpn_align_resize(ref, rgb):
    x, meta = mp.mmseg_test_input(rgb, img_scale=(2048, 512), align=True)
    _check_meta(meta, ref["seg_fpn_alignresize"]["meta"])
    _check_tensor(x, ref["seg_fpn_alignresize"])


def test_topdown_affine(ref, rgb):
    entry = ref["pose"]
    center, scale = mp.box_to_center_scale(entry["bbox_xywh"], image_size=(192, 256))
    np.testing.assert_array_equal(center, np.asarray(entry["meta"]["center"], dtype=np.float32))
    np.testing.assert_allclose(scale, np.asarray(entry["meta"]["scale"], dtype=np.float32), rtol=1e-7)
    x, meta = mp.topdown_affine_input(rgb, center, scale, image_size=(192, 256))
    assert meta["rotation"] == entry["meta"]["rotation"]
    _check_tensor(x, entry)


def test_rescale_size_rounds_half_up():
    # 45x67 with (1333, 800): factor min(1333/67, 800/45) = 800/45; 67 * 17.78 = 1191.1 -> 1191
    (w, h), f = mp.rescale_size((67, 45), (1333, 800))
    assert (w, h) == (1191, 800) and f == pytest.approx(800 / 45)
    # the scale pair is order-free (long, short)
    assert mp.rescale_size((67, 45), (800, 1333))[0] == (1191, 800)
    # x.5 rounds up (int(x + 0.5)), unlike floor
    assert mp.rescale_size((3, 2), (6, 3))[0] == (5, 3)  # 3 * 1.5 = 4.5 -> 5


def test_pad_to_multiple_tensor_and_array():
    t = torch.ones(1, 3, 33, 64)
    p = mp.pad_to_multiple(t, 32)
    assert p.shape == (1, 3, 64, 64) and p[..., 33:, :].sum() == 0
    a = np.ones((33, 65, 3), np.float32)
    assert mp.pad_to_multiple(a, 32).shape == (64, 96, 3)


def test_input_validation():
    with pytest.raises(ValueError, match="uint8"):
        mp.mmseg_test_input(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        mp.mmdet_test_input(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="box_xywh"):
        mp.box_to_center_scale((1, 2, 3))


def test_ade20k_class_names():
    names = mp.ade20k_class_names()
    assert len(names) == 150 == len(set(names))
    assert names[:3] == ["wall", "building", "sky"] and names[44] == "chest of drawers" and names[-1] == "flag"


def test_affine_transform_geometry():
    # the box centre goes to the output centre; the box width (scale * 200) spans the output width
    t = mp.get_affine_transform((50.0, 60.0), (0.3, 0.4), 0, (192, 256))
    np.testing.assert_allclose(t @ np.array([50.0, 60.0, 1.0]), [96.0, 128.0], atol=1e-4)
    np.testing.assert_allclose(t[:, :2], np.eye(2) * 192 / 60.0, atol=1e-5)
    rot = mp.get_affine_transform((50.0, 60.0), (0.3, 0.4), 30, (192, 256))
    inv = mp.get_affine_transform((50.0, 60.0), (0.3, 0.4), 30, (192, 256), inv=True)
    np.testing.assert_allclose(inv @ np.append(rot @ np.array([10.0, 20.0, 1.0]), 1.0), [10.0, 20.0], atol=1e-3)
