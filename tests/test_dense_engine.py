"""End to end through the CLI: segmentation, detection and pose datasets written to disk in their real layouts
(ADE20K folders with PNG masks, COCO JSON with polygons / RLE / keypoints), trained with `uniformer train --task`,
scored with `uniformer eval` (the mIoU code, pycocotools), drawn with `uniformer predict`, resumed, and run under
torchrun."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch
from PIL import Image

import test_detection
import test_pose
import uniformer
from conftest import one_line_error, run_cli
from test_segmentation import CLASSES, write_split

TINY = ["--model", "uniformer_small", "--model-args",
        '{"depth": [1, 1, 2, 1], "embed_dim": [16, 32, 64, 128], "head_dim": 16}',
        "--workers", "0", "--batch-size", "2", "--warmup-epochs", "0"]
SEG = ["--task", "segmentation", *TINY, "--head-args", '{"neck_channels": 32, "head_channels": 32}',
       "--img-size", "64", "--seg-scale", "80", "64"]
DET = ["--task", "detection", *TINY, "--head-args", '{"fpn_channels": 64, "box_batch_size_per_image": 64}',
       "--img-size", "128", "--max-size", "160"]
POSE = ["--task", "pose", *TINY, "--head-args", '{"deconv_channels": 32}', "--img-size", "128"]
ENV = {"OMP_NUM_THREADS": "1"}


def cli(*args: str, check: bool = True):
    return run_cli(*args, check=check, **ENV)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("dense")
    ade = root / "ade"
    write_split(ade, "training", [0, 1, 2, 3])
    write_split(ade, "validation", [10, 11])  # 64x80 images: not multiples of 32
    (ade / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name, module, prefix in (("coco_det", test_detection, "instances"), ("coco_pose", test_pose, "person_keypoints")):
        for split in ("train2017", "val2017"):
            written = module.write_dataset(root / name / split)
            (root / name / "annotations").mkdir(exist_ok=True)
            shutil.move(str(written["json"]), root / name / "annotations" / f"{prefix}_{split}.json")
    return {"segmentation": ade, "detection": root / "coco_det", "pose": root / "coco_pose"}


def printed_metrics(text: str, key: str) -> str:
    """The metrics printed for the best epoch of a training log, as `uniformer eval` prints them."""
    best = [line for line in text.splitlines() if "*best*" in line][-1]
    return re.search(rf"val ({key} .*?)  lr ", best).group(1)


def assert_png(path: Path, size) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == size


@pytest.mark.slow
def test_segmentation_train_eval_predict_resume(data, tmp_path):
    run = tmp_path / "seg"
    out = cli("train", *SEG, "--data", str(data["segmentation"]), "--epochs", "2", "--output", str(run)).stdout
    assert "3 classes, crops 64x64" in out and "epoch   2/2" in out
    assert (run / "best" / "model.safetensors").is_file()
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["task"] == "segmentation" and config["label_names"] == list(CLASSES)
    # eval on the run reproduces the validation mIoU/mAcc/aAcc the training printed
    assert cli("eval", "--checkpoint", str(run)).stdout.splitlines()[0] == printed_metrics(out, "mIoU")
    slide = cli("eval", "--checkpoint", str(run), "--inference", "slide").stdout
    assert slide.startswith("mIoU ")
    image = data["segmentation"] / "images" / "validation" / "validation_000.jpg"
    pred = cli("predict", "--checkpoint", str(run), str(image), "--output-dir", str(tmp_path / "out")).stdout
    png = tmp_path / "out" / "validation_000_segmentation.png"
    assert str(png) in pred and "%" in pred
    assert_png(png, (80, 64))
    resumed = cli("train", "--resume", str(run), "--epochs", "3").stdout
    assert "resumed" in resumed and "epoch   3/3" in resumed and "epoch   1/3" not in resumed
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_mIoU,val_mAcc,val_aAcc") and len(rows) == 4
    assert str(run / "curves.png") in cli("plot", str(run)).stdout
    with Image.open(run / "curves.png") as img:
        assert img.format == "PNG"
    # the saved folder is a complete model: the Python API rebuilds and loads it
    model = uniformer.load_pretrained(run / "best")
    assert type(model).__name__ == "SegmentationModel" and model.num_classes == 3
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 70, 90)).shape == (1, 3, 70, 90)


@pytest.mark.slow
def test_segmentation_learns_through_the_engine(data, tmp_path):
    """40 epochs of 2 steps on 4 images: the validation mIoU rises well above the all-background prediction (28.7:
    what the untrained model scores); measured 51 at lr 1e-2 in ~15 s."""
    out = cli("train", *SEG, "--data", str(data["segmentation"]), "--epochs", "40", "--lr", "1e-2",
              "--weight-decay", "0", "--output", str(tmp_path / "learn")).stdout
    best = float(re.search(r"best val mIoU ([\d.]+)", out).group(1))
    assert best > 40.0, out[-1500:]


@pytest.mark.slow
def test_detection_train_eval_predict(data, tmp_path):
    run = tmp_path / "det"
    out = cli("train", *DET, "--data", str(data["detection"]), "--epochs", "2", "--lr", "1e-3",
              "--output", str(run)).stdout
    assert "2 classes, short side 128" in out
    assert json.loads((run / "best" / "config.json").read_text())["label_names"] == ["red", "blue"]
    evaluated = cli("eval", "--checkpoint", str(run)).stdout.splitlines()
    assert evaluated[0] == printed_metrics(out, "bbox_AP")  # pycocotools box and mask AP, as in training
    assert "bbox_AP75" in evaluated[1] and "segm_APm" in evaluated[1]
    image = data["detection"] / "val2017" / "img1.png"
    pred = cli("predict", "--checkpoint", str(run), str(image), "--output-dir", str(tmp_path),
               "--score-threshold", "0.01").stdout
    assert "detection(s) with score >= 0.01" in pred
    assert_png(tmp_path / "img1_detection.png", (test_detection.W, test_detection.H))


@pytest.mark.slow
def test_pose_train_eval_predict_and_initialise_from_a_run(data, tmp_path):
    run = tmp_path / "pose"
    out = cli("train", *POSE, "--data", str(data["pose"]), "--epochs", "2", "--output", str(run)).stdout
    assert "17 joints, person crops 128x96, flip test on" in out
    assert cli("eval", "--checkpoint", str(run)).stdout.splitlines()[0] == printed_metrics(out, "AP")
    on_train = cli("eval", "--checkpoint", str(run), "--data", str(data["pose"]), "--split", "train").stdout
    assert on_train.startswith("AP ")
    image = data["pose"] / "val2017" / "000001.png"
    pred = cli("predict", "--checkpoint", str(run), str(image), "--output-dir", str(tmp_path),
               "--box", "20", "10", "90", "140", "--box", "0", "0", "128", "160").stdout
    assert "2 person(s)" in pred
    assert_png(tmp_path / "000001_pose.png", (test_pose.W, test_pose.H))
    # a new run starts from the trained one: every tensor matches by name and shape
    again = cli("train", *POSE, "--data", str(data["pose"]), "--epochs", "1", "--init-checkpoint",
                str(run / "best"), "--output", str(tmp_path / "again")).stdout
    total = sum(1 for _ in uniformer.load_pretrained(run / "best").state_dict())
    assert f"initialised {total}/{total} tensors" in again


@pytest.mark.slow
def test_torchrun_segmentation_two_processes(data, tmp_path):
    """Two gloo processes: metrics are reduced over both ranks' images, so the printed mIoU equals a one-process
    `uniformer eval` of the saved checkpoint."""
    run = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "uniformer.cli",
         "train", *SEG, "--data", str(data["segmentation"]), "--epochs", "1", "--batch-size", "1",
         "--output", str(run)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch   1/1") == 1 and "2 process(es)" in proc.stdout
    assert cli("eval", "--checkpoint", str(run)).stdout.splitlines()[0] == printed_metrics(proc.stdout, "mIoU")


@pytest.mark.slow
@pytest.mark.parametrize("args, fragments", [
    (["--task", "detection", "--data", "{segmentation}"], ["no annotation file", "instances_train*.json"]),
    (["--task", "pose", "--data", "{missing}"], ["data folder not found"]),
    (["--task", "segmentation", "--data", "digits"], ["digits is a classification dataset"]),
    (["--task", "segmentation", "--data", "{segmentation}", "--mixup", "0.8"], ["--mixup applies only to classification"]),
    (["--data", "{segmentation}"], ["ADE20K-style segmentation dataset", "--task segmentation"]),
    (["--task", "segmentation", "--data", "{segmentation}", "--head", "deeplab"], None),
])
def test_bad_dense_configuration_is_one_line(data, tmp_path, args, fragments):
    args = [a.format(missing=tmp_path / "nope", **data) for a in args]
    model = ["--model", "uniformer_small", "--epochs", "1", "--workers", "0", "--output", str(tmp_path / "r")]
    proc = cli("train", *model, *args, check=False)
    if fragments is None:  # argparse rejects the choice itself
        assert proc.returncode == 2 and "invalid choice: 'deeplab'" in proc.stderr
    else:
        one_line_error(proc, *fragments)


@pytest.mark.slow
def test_predict_box_needs_a_pose_model(data, tmp_path):
    run = tmp_path / "seg"
    cli("train", *SEG, "--data", str(data["segmentation"]), "--epochs", "1", "--output", str(run))
    image = data["segmentation"] / "images" / "validation" / "validation_001.png"
    one_line_error(cli("predict", "--checkpoint", str(run), str(image), "--box", "0", "0", "5", "5", check=False),
                   "--box gives person boxes for pose models only")
