"""The official dense models through the CLI: `uniformer predict|eval --official-config CONFIG --checkpoint CKPT`
with real mmcv-style config files (``_base_`` inheritance, read without running them) and official-layout ``.pth``
checkpoints (``state_dict``/``meta`` wrapper, ``module.`` prefixes) of the fixtures' tiny official models, on
ADE20K- and COCO-layout folders written here; a folder saved from an official model predicts and evaluates the same;
`models --task dense` lists the zoo."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from PIL import Image

import test_pose
import uniformer
from conftest import REFERENCE, one_line_error, run_cli
from test_segmentation import write_split as write_ade_split
from uniformer.cli import main
from uniformer.data.mm_pipelines import mmseg_test_input
from uniformer.engine.official import evaluate_official
from uniformer.tasks.mmseg import mmseg_inference
from uniformer.tasks.official import from_official_config

FIXTURES = {"segmentation": "seg_fpn_hybrid", "detection": "det_mask_rcnn_hybrid", "pose": "pose_topdown_global"}
# small test scales keep the tiny models fast; the pipelines' structure is that of the official test configs
PIPELINES = {
    "segmentation": "data = dict(test=dict(reduce_zero_label=True, pipeline=[dict(type='LoadImageFromFile'), "
                    "dict(type='MultiScaleFlipAug', img_scale=(128, 64), flip=False, transforms=[dict(type='AlignResize',"
                    " keep_ratio=True, size_divisor=32), dict(type='Normalize'), dict(type='ImageToTensor', "
                    "keys=['img']), dict(type='Collect', keys=['img'])])]))\n",
    "detection": "data = dict(test=dict(pipeline=[dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', "
                 "img_scale=(160, 128), flip=False, transforms=[dict(type='Resize', keep_ratio=True), "
                 "dict(type='Pad', size_divisor=32)])]))\n",
    "pose": "data_cfg = dict(image_size=[192, 256], heatmap_size=[48, 64], vis_thr=0.2, oks_thr=0.9, use_gt_bbox=True, "
            "det_bbox_thr=0.0)\n",
}


def _cli(capsys, *args: str) -> tuple:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _write_coco_detection(root: Path) -> None:
    """COCO layout with the fixture detector's 3 categories: 3 PNG images of coloured rectangles, polygon masks."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    colours = {1: (220, 40, 40), 2: (40, 40, 220), 3: (40, 200, 40)}
    objects = {1: [(1, (6, 8, 30, 20)), (2, (40, 30, 20, 26))], 2: [(3, (10, 20, 36, 24))], 3: [(2, (30, 4, 28, 30))]}
    images, anns = [], []
    for image_id, objs in objects.items():
        arr = np.full((60, 80, 3), 128, np.uint8)
        for cat, (x, y, w, h) in objs:
            arr[y:y + h, x:x + w] = colours[cat]
            anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=cat, bbox=[x, y, w, h], area=w * h,
                             iscrowd=0, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        Image.fromarray(arr).save(root / "val2017" / f"{image_id}.png")
        images.append(dict(id=image_id, file_name=f"{image_id}.png", height=60, width=80))
    categories = [dict(id=i, name=n) for i, n in ((1, "red"), (2, "blue"), (3, "green"))]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps(dict(images=images, annotations=anns, categories=categories)))


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict[str, Path]]:
    """Per family: ``config`` (a child config file inheriting the model from a ``_base_`` file), ``checkpoint``
    (official layout) and ``data`` (a dataset folder in the layout the family's official test script reads)."""
    root = tmp_path_factory.mktemp("official")
    out: Dict[str, Dict[str, Path]] = {}
    for task, name in FIXTURES.items():
        fixture = torch.load(REFERENCE / "parity" / "dense_heads" / f"{name}.pt", weights_only=True)
        folder = root / task
        (folder / "_base_" / "models").mkdir(parents=True)
        (folder / "_base_" / "models" / "model.py").write_text(f"model = {fixture['config']['model']!r}\n")
        config = folder / "config.py"
        config.write_text("_base_ = ['_base_/models/model.py']\n" + PIPELINES[task])
        checkpoint = folder / "official.pth"
        torch.save({"meta": {"mmcv_version": "1.3.0", "epoch": 12},
                    "state_dict": {f"module.{k}": v for k, v in fixture["state_dict"].items()}}, checkpoint)
        out[task] = {"config": config, "checkpoint": checkpoint}
    ade = root / "ade"
    write_ade_split(ade, "validation", [10, 11, 12])
    out["segmentation"]["data"] = ade
    _write_coco_detection(root / "coco_det")
    out["detection"]["data"] = root / "coco_det"
    pose_root = root / "coco_pose"
    written = test_pose.write_dataset(pose_root / "val2017", n_images=3)
    (pose_root / "annotations").mkdir()
    written["json"].rename(pose_root / "annotations" / "person_keypoints_val2017.json")
    out["pose"]["data"] = pose_root
    return out


def _numpy_miou(ade: Path, model, num_classes: int) -> float:
    """mIoU of the official whole-image predictions with ADE20K's reduce_zero_label (0 → ignore, k → k - 1),
    written out here independently of the library's metric."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for image_path in sorted((ade / "images" / "validation").iterdir()):
        image = np.asarray(Image.open(image_path).convert("RGB"))
        gt = np.asarray(Image.open(ade / "annotations" / "validation" / f"{image_path.stem}.png")).astype(np.int64)
        gt = np.where(gt == 0, 255, gt - 1)
        x, meta = mmseg_test_input(image, (128, 64), align=True)
        pred = mmseg_inference(model, x, meta["ori_shape"][:2])["pred_ori"][0].numpy()
        valid = gt != 255
        for k in range(num_classes):
            p, g = (pred == k) & valid, (gt == k) & valid
            inter[k] += (p & g).sum()
            union[k] += (p | g).sum()
    seen = union > 0
    return float(100 * (inter[seen] / union[seen]).mean())


def test_segmentation_eval_is_the_official_mIoU(official, capsys):
    paths = official["segmentation"]
    code, out, err = _cli(capsys, "eval", "--official-config", str(paths["config"]), "--checkpoint",
                          str(paths["checkpoint"]), "--data", str(paths["data"]))
    assert code == 0, err
    model = from_official_config(paths["config"], paths["checkpoint"])
    assert model.task_config["data_config"] == {"img_scale": [128, 64], "align": True, "reduce_zero_label": True}
    miou = float(re.search(r"mIoU (\S+)", out).group(1))
    assert miou == pytest.approx(_numpy_miou(paths["data"], model, 5), abs=0.006)
    assert "mAcc" in out and "aAcc" in out


def test_predict_draws_every_family(official, tmp_path, capsys):
    boxes = {"pose": ["--box", "4", "4", "100", "140"]}
    for task, paths in official.items():
        image = next(p for p in sorted(Path(paths["data"]).rglob("*")) if p.suffix in (".png", ".jpg")
                     and "annotations" not in p.parts)
        code, out, err = _cli(capsys, "predict", str(image), "--official-config", str(paths["config"]),
                              "--checkpoint", str(paths["checkpoint"]), "--output-dir", str(tmp_path),
                              "--score-threshold", "0.0", *boxes.get(task, []))
        assert code == 0, err
        png = tmp_path / f"{image.stem}_{task}.png"
        assert out.startswith(str(png)), out
        with Image.open(png) as drawn, Image.open(image) as original:
            assert drawn.format == "PNG" and drawn.size == original.size
        if task == "segmentation":  # the printed class shares are those of the official class map
            model = from_official_config(paths["config"], paths["checkpoint"])
            x, meta = mmseg_test_input(np.asarray(Image.open(image).convert("RGB")), (128, 64), align=True)
            pred = mmseg_inference(model, x, meta["ori_shape"][:2])["pred_ori"][0]
            top = int(torch.bincount(pred.flatten()).argmax())
            share = 100 * float((pred == top).float().mean())
            assert f"{top} {share:.1f}%" in out
        if task == "pose":
            assert "1 person(s)" in out


def test_detection_and_pose_eval_through_the_official_path(official, capsys):
    for task, keys in (("detection", ("bbox_AP", "segm_AP")), ("pose", ("AP", "AR"))):
        paths = official[task]
        code, out, err = _cli(capsys, "eval", "--official-config", str(paths["config"]), "--checkpoint",
                              str(paths["checkpoint"]), "--data", str(paths["data"]), "--limit", "2")
        assert code == 0, err
        model = from_official_config(paths["config"], paths["checkpoint"])
        expected = evaluate_official(model, str(paths["data"]), limit=2)
        for key in keys:
            assert f"{key} {expected[key]:.2f}" in out, out


def test_saved_official_model_round_trips_through_predict_and_eval(official, tmp_path, capsys):
    paths = official["segmentation"]
    model = from_official_config(paths["config"], paths["checkpoint"])
    saved = uniformer.save_pretrained(model, tmp_path / "saved")
    back = uniformer.load_pretrained(saved)
    assert back.task_config == model.task_config
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    args = ["--data", str(paths["data"]), "--split", "val"]
    _, direct, _ = _cli(capsys, "eval", "--official-config", str(paths["config"]), "--checkpoint",
                        str(paths["checkpoint"]), *args)
    code, from_folder, err = _cli(capsys, "eval", "--checkpoint", str(saved), *args)
    assert code == 0 and from_folder == direct, err
    image = next((paths["data"] / "images" / "validation").iterdir())
    outs = []
    for source in (["--official-config", str(paths["config"]), "--checkpoint", str(paths["checkpoint"])],
                   ["--checkpoint", str(saved)]):
        code, out, err = _cli(capsys, "predict", str(image), *source, "--output-dir", str(tmp_path))
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]


@pytest.mark.slow
def test_bad_official_input_is_one_line(official, tmp_path, capsys):
    seg, det = official["segmentation"], official["detection"]
    evil = tmp_path / "evil.py"
    evil.write_text("import os\nmodel = dict(type='EncoderDecoder')\n")
    image = str(next((seg["data"] / "images" / "validation").iterdir()))
    two = tmp_path / "coco2"  # the detector has 3 classes, this folder 2 categories
    (two / "annotations").mkdir(parents=True)
    (two / "val2017").symlink_to(det["data"] / "val2017")
    data = json.loads((det["data"] / "annotations" / "instances_val2017.json").read_text())
    data["categories"] = data["categories"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] <= 2]
    (two / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    cases = [
        (["predict", image, "--official-config", str(tmp_path / "missing.py"), "--checkpoint", str(seg["checkpoint"])],
         ("config file", "not found")),
        (["predict", image, "--official-config", str(evil), "--checkpoint", str(seg["checkpoint"])], ("import",)),
        (["predict", image, "--official-config", str(det["config"]), "--checkpoint", str(seg["checkpoint"])],
         ("is the config the checkpoint's",)),
        (["predict", image, "--official-config", str(seg["config"]), "--checkpoint", str(tmp_path / "no.pth")],
         ("official checkpoint not found",)),
        (["predict", image, "--official-config", str(seg["config"]), "--checkpoint", str(seg["checkpoint"]),
          "--model", "uniformer_small"], ("--model does not apply",)),
        (["eval", "--official-config", str(seg["config"]), "--checkpoint", str(seg["checkpoint"])], ("--data is required",)),
        (["eval", "--official-config", str(det["config"]), "--checkpoint", str(det["checkpoint"]), "--data",
          str(official["pose"]["data"])], ("no annotation file", "instances_val")),
        (["eval", "--official-config", str(det["config"]), "--checkpoint", str(det["checkpoint"]), "--data",
          str(two)], ("the model predicts 3 classes", "has 2 categories")),
        (["eval", "--official-config", "no_such_config", "--checkpoint", str(seg["checkpoint"]), "--data",
          str(seg["data"])], ("no_such_config",)),
    ]
    one_line_error(run_cli(*cases[0][0], check=False), *cases[0][1])  # a real process once
    for args, fragments in cases[1:]:
        code, _, err = _cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("uniformer: error: "), err
        assert all(f in lines[0] for f in fragments), lines[0]


def test_models_task_dense_lists_the_zoo(capsys):
    code, out, err = _cli(capsys, "models", "--task", "dense", "cascade*")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("cascade")]
    assert len(rows) == 2 and all("box AP" in row and "mask AP" in row for row in rows)
    base = next(row for row in rows if "hybrid_base" in row)
    assert "107.27" in base  # Cascade Mask R-CNN B-h14: 107,267,186 parameters as the official table's 107 M
    code, _, err = _cli(capsys, "models", "--task", "dense", "nothing*")
    assert code != 0 and "no official dense config matches" in err
