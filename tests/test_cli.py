"""The ``uniformer`` console script, run as a real subprocess."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import TINY, TINY_LIGHT, one_line_error, run_cli

import uniformer
import uniformer.data


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_models_table_lists_every_model_with_flops():
    out = run_cli("models", "uniformer_xx*").stdout
    assert "uniformer_xxs" in out and "10.22" in out and "1.306" in out and "in1k_128" in out
    out = run_cli("models", "--no-flops").stdout
    assert all(name in out for name in uniformer.list_models())


def test_info():
    out = run_cli("info", "uniformer_small_plus").stdout
    assert "head_dim    32" in out and "24,032,552" in out and "4.213 at 224x224" in out
    assert "uniformer_small_plus.in1k" in out


@pytest.mark.parametrize("name, lines", [
    ("vt_resnet18", ["trunk       torchvision resnet18, stages 1-3", "tokens      16 x 1024", "vt_resnet18.untrained"]),
    ("uniformer_xxs", ["head_dim    28", "prune_ratio [[], [], [1.0, 0.5", "uniformer_xxs.in1k_128"]),
    ("uniformer_video_xxs", ["GFLOPs      1.003 at 16x64x64", "uniformer_video_xxs.k400_4f_128"]),
    ("uniformer_small_tl", ["return_dense True", "uniformer_small_tl.in1k_384"]),
])
def test_info_works_for_every_family(name, lines, capsys):
    """``uniformer info`` of one model per family (VT-ResNet, light, video, token labeling), in this process."""
    from uniformer.cli import main

    assert main(["info", name, "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name}  (") and "  params      " in out and "  features    channels [" in out
    assert all(line in out for line in lines), out


@pytest.mark.slow
def test_predict_official_style_checkpoint_with_imagenet_names(tmp_path, image):
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_xxs", **dict(TINY_LIGHT, num_classes=1000)).eval()
    ckpt = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "epoch": 1}, ckpt)
    overrides = ["--input-size", "64"]
    # the architecture kwargs of a tiny model are not those of the registered name: strict loading must refuse
    one_line_error(run_cli("predict", "--model", "uniformer_xxs", "--checkpoint", str(ckpt), str(image), check=False),
                   "checkpoint does not match")
    saved = tmp_path / "saved"
    uniformer.save_pretrained(model, saved)
    out = run_cli("predict", "--checkpoint", str(saved), *overrides, str(image)).stdout.splitlines()
    assert out[0].endswith("img.png") and len(out) == 6
    expected = model(uniformer_transform(model, image)).softmax(-1)[0].topk(5)
    from timm.data import ImageNetInfo

    assert ImageNetInfo().index_to_description(int(expected.indices[0])) in out[1]
    assert f"{100 * float(expected.values[0].detach()):6.2f}%" in out[1]


def uniformer_transform(model, image):
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    return create_transform(**cfg)(uniformer.data.load_image(image)).unsqueeze(0)


@pytest.mark.slow
def test_predict_with_labels_file_and_weights_file(tmp_path, image):
    model = uniformer.create_model("uniformer_small", **dict(TINY, num_classes=3)).eval()
    uniformer.save_pretrained(model, tmp_path / "m", label_names=["cat", "dog", "eel"])
    out = run_cli("predict", "--checkpoint", str(tmp_path / "m" / "model.safetensors"), "--input-size", "64",
              "--topk", "9", str(image)).stdout
    assert sum(name in out for name in ("cat", "dog", "eel")) == 3
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    one_line_error(run_cli("predict", "--checkpoint", str(tmp_path / "m"), "--labels", str(labels), str(image), check=False),
                   "has 2 names but the model has 3 classes")


@pytest.mark.slow
def test_bad_input_gives_one_line_errors(tmp_path, image):
    one_line_error(run_cli("info", "uniformer_smal", check=False), "unknown model 'uniformer_smal'", "did you mean uniformer_small")
    one_line_error(run_cli("predict", "--model", "uniformer_small", "--checkpoint", str(tmp_path / "x.pth"), str(image),
                       check=False), "checkpoint not found", "x.pth")
    model = uniformer.create_model("uniformer_small", **dict(TINY, num_classes=3))
    uniformer.save_pretrained(model, tmp_path / "m")
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    one_line_error(run_cli("predict", "--checkpoint", str(tmp_path / "m"), str(not_image), check=False),
                   "cannot read image", "notes.txt")
    one_line_error(run_cli("predict", "--checkpoint", str(tmp_path / "m"), str(tmp_path / "missing.jpg"), check=False),
                   "image not found", "missing.jpg")
    one_line_error(run_cli("models", "nothing*", check=False), "no model matches")
    proc = run_cli("predict", "--checkpoint", str(tmp_path / "m"), "--topk", "0", str(image), check=False)
    assert proc.returncode == 2  # refused by argparse, never replaced by the default
    one_line_error(proc, "uniformer predict: error: argument --topk: must be a positive integer, got 0")


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "uniformer.demo", "--output", str(tmp_path), "--epochs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation accuracy" in proc.stdout and "val0_label" in proc.stdout
    assert (tmp_path / "digits-uniformer_xxs" / "curves.png").is_file()
