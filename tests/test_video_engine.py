"""Video end to end: real MP4 files written with PyAV and JPEG frame folders written with PIL, training, multi-view
evaluation, predict-video, bad videos."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, one_line_error, run_cli, write_video

import uniformer

TINY_VIDEO = ["--model", "uniformer_video_small", "--model-args",
              json.dumps({k: v for k, v in TINY.items() if k != "num_classes"}),
              "--img-size", "32", "--num-frames", "4", "--frame-stride", "2", "--sampler", "dense",
              "--batch-size", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A two-class video dataset in class folders: squares moving right vs left."""
    root = tmp_path_factory.mktemp("videos")
    for split, n in (("train", 4), ("val", 2)):
        for label, direction in (("right", 1), ("left", -1)):
            for i in range(n):
                write_video(root / split / label / f"{label}{i}.mp4", frames=12 + i, direction=direction)
    return root


@pytest.mark.slow
def test_train_eval_views_and_predict_video(videos, tmp_path):
    run = tmp_path / "run"
    out = run_cli("train", "--data", str(videos), *TINY_VIDEO, "--epochs", "2", "--views", "2x1", "--output", str(run)).stdout
    assert "8 train / 4 val videos, 2 classes, 4x32x32" in out and "epoch   2/2" in out
    best = [line for line in out.splitlines() if "*best*" in line][-1]
    correct, total = re.search(r"\((\d+)/(\d+)\)", best).groups()
    assert total == "4"
    assert f"({correct}/{total})" in run_cli("eval", "--checkpoint", str(run)).stdout  # the recorded protocol, 2x1 views
    three = run_cli("eval", "--checkpoint", str(run), "--views", "3x3", "--view-aggregation", "logits").stdout
    assert re.match(r"acc1 [\d.]+% \(\d/4\)", three)
    pred = run_cli("predict-video", "--checkpoint", str(run), "--topk", "2", str(videos / "val" / "left" / "left0.mp4")).stdout
    lines = pred.strip().splitlines()
    assert "2 clip(s) x 1 crop(s) of 4 frames, dense sampling, stride 2" in lines[0] and "ms per clip" in lines[0]
    assert {lines[1].split()[-1], lines[2].split()[-1]} == {"left", "right"}


@pytest.mark.slow
def test_light_video_model_trains_with_list_files_and_segment_sampling(videos, tmp_path):
    root = tmp_path / "listed"
    root.mkdir()
    (root / "classes.txt").write_text("right\nleft\n")
    for split in ("train", "val"):
        lines = [f"{p.relative_to(videos)} {0 if p.parent.name == 'right' else 1}" for p in sorted((videos / split).rglob("*.mp4"))]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (root / split).symlink_to(videos / split)
    args = json.dumps(dict(depth=[1, 1, 3, 2], embed_dim=[16, 32, 64, 128], head_dim=16))
    out = run_cli("train", "--data", str(root), "--model", "uniformer_video_xxs", "--model-args", args, "--img-size", "32",
              "--num-frames", "4", "--sampler", "segment", "--batch-size", "2", "--workers", "0", "--epochs", "1",
              "--views", "1x3", "--output", str(tmp_path / "run")).stdout
    assert "epoch   1/1" in out and "(" in out


@pytest.mark.slow
def test_bad_videos_fail_naming_the_file_or_are_skipped(videos, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(videos, data)
    (data / "train" / "left" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    proc = run_cli("train", "--data", str(data), *TINY_VIDEO, "--epochs", "1", "--output", str(tmp_path / "r1"),
               check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "broken.mp4" in lines[0], proc.stderr[-2000:]
    proc = run_cli("train", "--data", str(data), *TINY_VIDEO, "--epochs", "1", "--skip-bad", "--output", str(tmp_path / "r2"))
    assert "skipping" in proc.stderr and "broken.mp4" in proc.stderr and "epoch   1/1" in proc.stdout
    short = tmp_path / "short.mp4"
    write_video(short, frames=2)
    one = run_cli("predict-video", "--checkpoint", str(tmp_path / "r2"), str(short), check=False)
    assert one.returncode == 1 and "short.mp4" in one.stderr and len(one.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_predict_video_with_an_official_style_checkpoint_prints_kinetics_names(tmp_path, videos):
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_video_small", num_classes=400)
    ckpt = tmp_path / "uniformer_small_k400_16x4.pth"
    torch.save({"model_state": model.state_dict(), "epoch": 110}, ckpt)
    out = run_cli("predict-video", "--model", "uniformer_video_small.k400_16x4", "--checkpoint", str(ckpt),
              "--views", "1x1", "--num-frames", "4", "--img-size", "64", str(videos / "val" / "right" / "right0.mp4")).stdout
    from torchvision.models._meta import _KINETICS400_CATEGORIES

    names = [line.split("%", 1)[1].strip() for line in out.strip().splitlines()[1:]]
    assert len(names) == 5 and all(n in _KINETICS400_CATEGORIES for n in names)


# ------------------------------------------------------------------------------------------------ frame folders
def write_frames(folder: Path, frames: int, direction: int, template: str = "{:05d}.jpg", side: int = 32) -> Path:
    """A frame-folder video of real JPEG files numbered from 1: a bright square moving right (1) or left (-1)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        img = np.full((side, side, 3), 30, dtype=np.uint8)
        x = round((k if direction > 0 else frames - 1 - k) / (frames - 1) * (side - 8))
        img[side // 2 - 4: side // 2 + 4, x: x + 8] = 230
        Image.fromarray(img).save(folder / template.format(k + 1), quality=95)
    return folder


@pytest.mark.slow
def test_frame_folders_train_eval_with_2x3_views_and_predict_video(tmp_path):
    """Something-Something V1 style frames ({:05d}.jpg): train/ in class folders of frame folders, val from a
    rawframes list file; eval and predict-video reuse the run's frame template."""
    data = tmp_path / "frames"
    for label, direction in (("left", -1), ("right", 1)):
        for i in range(3):
            write_frames(data / "train" / label / f"{label}{i}", 10 + i, direction)
    lines = []
    for i, (label, direction) in enumerate((("left", -1), ("right", 1), ("left", -1), ("right", 1))):
        write_frames(data / "val_frames" / f"clip {i}", 9 + i, direction)
        lines.append(f"val_frames/clip {i} {9 + i} {0 if label == 'left' else 1}")
    (data / "val.txt").write_text("\n".join(lines) + "\n")
    (data / "classes.txt").write_text("left\nright\n")
    run = tmp_path / "run"
    out = run_cli("train", "--data", str(data), *TINY_VIDEO, "--frame-template", "{:05d}.jpg", "--hflip", "0",
                  "--epochs", "2", "--views", "2x3", "--output", str(run)).stdout
    assert "6 train / 4 val videos, 2 classes, 4x32x32" in out and "epoch   2/2" in out
    best = [line for line in out.splitlines() if "*best*" in line][-1]
    correct, total = re.search(r"\((\d+)/(\d+)\)", best).groups()
    assert total == "4"
    assert f"({correct}/{total})" in run_cli("eval", "--checkpoint", str(run)).stdout  # 2x3 views, the run's template
    bad = write_frames(tmp_path / "bad clip", 12, 1)
    (bad / "00007.jpg").write_bytes((bad / "00007.jpg").read_bytes()[:300])
    proc = run_cli("predict-video", "--checkpoint", str(run), "--topk", "2", str(data / "val_frames" / "clip 0"),
                   str(bad), check=False)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(str(data / "val_frames" / "clip 0"))
    assert "2 clip(s) x 3 crop(s) of 4 frames, dense sampling, stride 2" in lines[0]
    assert {lines[1].split()[-1], lines[2].split()[-1]} == {"left", "right"} and len(lines) == 3
    one_line_error(proc, f"bad video {bad}: cannot read image {bad / '00007.jpg'}")


def test_frame_options_are_validated():
    from uniformer.engine.config import TrainConfig, validate

    for template in ("img.jpg", "img_%05d.jpg", "sub/{:05d}.jpg"):
        with pytest.raises(ValueError, match=r"^--frame-template: frame template must be"):
            validate(TrainConfig(frame_template=template))
    with pytest.raises(ValueError, match="--frame-start must be a non-negative integer, got -1"):
        validate(TrainConfig(frame_start=-1))
    validate(TrainConfig(frame_template="{:05d}.jpg", frame_start=0))
