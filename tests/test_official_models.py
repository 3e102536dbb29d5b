"""from_official_config end to end: the fixtures' official configs and state dicts, config files, zoo names."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import REFERENCE

from uniformer.tasks.mmdet_weights import mmdet_num_parameters
from uniformer.tasks.official import from_official_config, load_official_checkpoint
from uniformer.tasks.official_zoo import OFFICIAL_DENSE_CONFIGS

FIXTURES = ["seg_fpn_hybrid", "seg_upernet_global", "pose_topdown_global", "det_mask_rcnn_hybrid",
            "det_cascade_mask_rcnn_hybrid"]


def _fixture(name):
    return torch.load(REFERENCE / "parity" / "dense_heads" / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_config_and_official_checkpoint_load_strictly(name):
    f = _fixture(name)
    wrapped = {"meta": {"epoch": 1}, "state_dict": {f"module.{k}": v for k, v in f["state_dict"].items()}}
    model = from_official_config(f["config"], checkpoint=wrapped)
    assert not model.training and model.task_config["official_model"]["type"] == f["config"]["model"]["type"]
    if name.startswith("seg"):
        from uniformer.tasks.mmseg import mmseg_inference

        out = mmseg_inference(model, f["input"], f["config"]["img_meta"]["ori_shape"][:2])
        torch.testing.assert_close(out["probs_ori"], f["outputs"]["probs_ori"], rtol=1e-4, atol=1e-4)
    # our own layout loads back as it is; a missing key is a one-line strict error
    load_official_checkpoint(model, model.state_dict())
    broken = dict(f["state_dict"])
    broken.pop(next(iter(broken)))
    with pytest.raises(ValueError, match="missing 1|1 model key"):
        load_official_checkpoint(model, {"state_dict": broken})


def test_config_file_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.py"
    path.write_text("import os\nmodel = dict(type='MaskRCNN')\n")
    with pytest.raises(ValueError, match="an import"):
        from_official_config(path)


@pytest.mark.slow
def test_zoo_covers_every_official_config_with_exact_params():
    meta = json.loads((REFERENCE / "official_dense_keys.json").read_text())["_meta"]["configs"]
    assert sorted(e.path for e in OFFICIAL_DENSE_CONFIGS.values()) == sorted(meta)
    for entry in OFFICIAL_DENSE_CONFIGS.values():
        with torch.device("meta"):
            model = from_official_config(entry.name)
        # torchvision's detectors carry background rows mmdet has not: count as mmdet does
        params = mmdet_num_parameters(model) if entry.task == "detection" else \
            sum(p.numel() for p in model.parameters())
        assert params == meta[entry.path]["params"], entry.name


@pytest.mark.slow
@pytest.mark.parametrize("name, gflops", [
    ("top_down_256x192_global_small", 4.69), ("top_down_448x320_global_small", 14.77),
    ("top_down_384x288_global_base", 22.11),  # the official README's 14.8 G is wrong (spec §5.3)
])
def test_pose_flops_match_the_corrected_official_table(name, gflops):
    from uniformer.flops import official_dense_flops

    assert official_dense_flops(from_official_config(name), OFFICIAL_DENSE_CONFIGS[name]) / 1e9 == \
        pytest.approx(gflops, abs=0.006)


@pytest.mark.slow
def test_detection_flops_count_every_stage_and_roi_batch():
    """Mask R-CNN S-h14 at 800x1280: 269 G as the official table; Cascade counts its 3 box and 3 mask heads."""
    from uniformer.flops import DETECTION_ROIS, MASK_ROIS, official_dense_flops
    from uniformer.tasks.mmdet_rcnn import roi_head_modules

    mask_rcnn = from_official_config("mask_rcnn_1x_hybrid_small")
    assert official_dense_flops(mask_rcnn, OFFICIAL_DENSE_CONFIGS["mask_rcnn_1x_hybrid_small"]) / 1e9 == \
        pytest.approx(269.16, abs=0.05)
    with torch.device("meta"):
        cascade = from_official_config("cascade_mask_rcnn_3x_ms_hybrid_small")
    kinds = [(kind, size) for _, size, kind in roi_head_modules(cascade)]
    assert kinds == [("box", 7)] * 3 + [("mask", 14)] * 3 and (DETECTION_ROIS, MASK_ROIS) == (1000, 100)
