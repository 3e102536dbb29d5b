"""Export and prediction for every task: segmentation, detection (torchvision Mask R-CNN; the Cascade port's
features) and pose runs exported by `uniformer export` to ONNX (run in onnxruntime at another input size),
TorchScript and safetensors with their I/O contract; `predict` on folders with JSON / CSV output; class counts that
differ from the checkpoint's refused; `--ema` on eval / predict / export; `--version`."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import uniformer
from conftest import one_line_error, run_cli
from uniformer.cli import main
from uniformer.tasks.build import build_task_model, model_from_config
from uniformer.tasks.detection import SingleImageMaskRCNN
from uniformer.tasks.mmdet_rcnn import MMDetFeatures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::torch.jit.TracerWarning")

BACKBONE = {"depth": [1, 1, 2, 1], "embed_dim": [16, 32, 64, 128], "head_dim": 16}
NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
TASKS = {  # name -> (task, classes, head args, data config, label names)
    "seg": ("segmentation", 3, {"neck_channels": 32, "head_channels": 32},
            dict(NORM, crop_size=[64, 64], scale=[128, 64], inference="whole", slide_stride=[42, 42]),
            ["sky", "road", "tree"]),
    "det": ("detection", 2, {"fpn_channels": 64}, {"min_size": 128, "max_size": 160}, ["red", "blue"]),
    "pose": ("pose", 17, {"deconv_channels": 32}, dict(NORM, input_size=[128, 96], flip_test=False), None),
    "cascade": ("detection", 2, {"detector": "cascade_mask_rcnn"}, {"min_size": 128, "max_size": 160},
                ["red", "blue"]),
}


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Each task model saved as a run saves its checkpoints (save_pretrained: config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for name, (task, classes, head, data, labels) in TASKS.items():
        torch.manual_seed(0)
        model = build_task_model(task, "uniformer_small", classes, model_args=BACKBONE, head_args=head,
                                 data_config=data, label_names=labels)
        if task == "pose":  # mmpose's init (std 0.001) gives near-zero heatmaps: a comparison worth making
            with torch.no_grad():
                for module in model.keypoint_head.modules():
                    if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                        module.weight.normal_(std=0.2)
        uniformer.save_pretrained(model, root / name)
        out[name] = root / name
    return out


def export(capsys, checkpoint: Path, output: Path, *extra: str) -> str:
    code = main(["export", "--checkpoint", str(checkpoint), "--output", str(output), *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = out.strip()
    assert "\n" not in line and str(output) in line and f"I/O: {output}.json" in line
    return line


def printed_diff(line: str) -> float:
    return float(line.split("max abs diff vs PyTorch ")[1].split()[0])


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def contract(path: Path) -> dict:
    return json.loads(Path(f"{path}.json").read_text())


def eager(model: torch.nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def close(got, expected: List[torch.Tensor], atol: float = 1e-4, rtol: float = 0.0) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.as_tensor(np.asarray(g)).to(e.dtype), e, atol=atol, rtol=rtol)


# -------------------------------------------------------------------------------------------------------- export
@pytest.mark.slow
def test_segmentation_export_round_trips(saved, tmp_path, capsys):
    model = uniformer.load_pretrained(saved["seg"]).eval()
    onnx_file = tmp_path / "seg.onnx"
    assert printed_diff(export(capsys, saved["seg"], onnx_file)) <= 1e-4
    io = contract(onnx_file)
    assert io["task"] == "segmentation" and io["label_names"] == ["sky", "road", "tree"] and io["format"] == "onnx"
    assert io["inputs"][0]["name"] == "image" and io["inputs"][0]["mean"] == NORM["mean"]
    assert io["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert io["outputs"][0]["name"] == "logits" and io["outputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert io["check"]["inputs"] == [[1, 3, 64, 64], [2, 3, 65, 65]]
    ort_session = session(onnx_file)
    assert [i.name for i in ort_session.get_inputs()] == ["image"]
    assert json.loads(dict(ort_session.get_modelmeta().custom_metadata_map)["uniformer"])["task"] == "segmentation"
    x = torch.randn(3, 3, 80, 110)  # neither the traced batch nor the traced size, nor multiples of 32
    (logits,) = ort_session.run(None, {"image": x.numpy()})
    assert logits.shape == (3, 3, 80, 110)
    close([logits], eager(model, x))

    ts_file = tmp_path / "seg.pt"
    assert printed_diff(export(capsys, saved["seg"], ts_file)) <= 1e-4
    extra = {"uniformer.json": ""}
    traced = torch.jit.load(str(ts_file), _extra_files=extra)
    assert json.loads(extra["uniformer.json"])["outputs"][0]["name"] == "logits"
    x = torch.randn(2, 3, 96, 72)
    close(eager(traced, x), eager(model, x))

    weights = tmp_path / "seg.safetensors"
    export(capsys, saved["seg"], weights)
    with safe_open(str(weights), "pt") as f:
        config = json.loads(f.metadata()["uniformer"])["config"]
    rebuilt = model_from_config(config)  # the metadata alone rebuilds the model
    rebuilt.load_state_dict(load_file(str(weights)), strict=True)
    close(eager(rebuilt.eval(), x), eager(model, x), atol=0)


@pytest.mark.slow
def test_pose_export_round_trips(saved, tmp_path, capsys):
    model = uniformer.load_pretrained(saved["pose"]).eval()
    onnx_file = tmp_path / "pose.onnx"
    export(capsys, saved["pose"], onnx_file)
    io = contract(onnx_file)
    assert io["outputs"][0]["name"] == "heatmaps" and io["outputs"][0]["shape"][:2] == ["batch", 17]
    assert io["check"]["inputs"][0] == [1, 3, 128, 96] and io["check"]["max_abs_diff"] <= 1e-4
    x = torch.randn(2, 3, 150, 100)
    (heatmaps,) = session(onnx_file).run(None, {"image": x.numpy()})
    expected = eager(model, x)
    assert heatmaps.shape == (2, 17, 38, 25) and float(expected[0].abs().max()) > 0.1  # not a comparison of zeros
    close([heatmaps], expected)

    ts_file = tmp_path / "pose.pt"
    export(capsys, saved["pose"], ts_file)
    x = torch.randn(1, 3, 200, 136)
    close(eager(torch.jit.load(str(ts_file)), x), eager(model, x))

    weights = tmp_path / "pose.safetensors"
    export(capsys, saved["pose"], weights)
    state = load_file(str(weights))
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def paired(got: List[np.ndarray], expected: List[torch.Tensor]) -> List[torch.Tensor]:
    """``expected`` detections reordered to the order of ``got``: equal scores may come out in either order."""
    g_scores, scores = torch.as_tensor(got[2]), expected[2]
    assert len(g_scores) == len(scores) > 0
    order = []
    for i, s in enumerate(g_scores):
        candidates = [j for j in range(len(scores)) if j not in order and abs(float(scores[j] - s)) <= 1e-4
                      and int(expected[1][j]) == int(got[1][i])]
        order.append(min(candidates, key=lambda j: float((expected[0][j] - torch.as_tensor(got[0][i])).abs().max())))
    return [t[torch.tensor(order)] for t in expected]


@pytest.mark.slow
def test_mask_rcnn_export_round_trips(saved, tmp_path, capsys):
    model = uniformer.load_pretrained(saved["det"]).eval()
    onnx_file = tmp_path / "det.onnx"
    line = export(capsys, saved["det"], onnx_file)
    assert printed_diff(line) <= 1e-3
    io = contract(onnx_file)
    assert [o["name"] for o in io["outputs"]] == ["boxes", "labels", "scores", "masks"]
    assert io["inputs"][0]["shape"] == [3, "height", "width"] and io["inputs"][0]["min_size"] == 128
    assert io["label_names"] == ["red", "blue"]
    ort_session = session(onnx_file)
    torch.manual_seed(3)
    for shape in ((3, 100, 100), (3, 90, 200)):  # upscaled and downscaled by the graph's resize
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = model([x])[0]
        expected = [expected[k] for k in ("boxes", "labels", "scores", "masks")]
        got = ort_session.run(None, {"image": x.numpy()})
        assert got[3].shape[2:] == shape[1:] and set(got[1].tolist()) <= {1, 2}
        close(got, paired(got, expected), atol=1e-4, rtol=1e-5)

    ts_file = tmp_path / "det.pt"
    export(capsys, saved["det"], ts_file)
    traced = torch.jit.load(str(ts_file))
    x = torch.rand(3, 110, 150)
    got = [t.numpy() for t in eager(traced, x)]
    close(got, paired(got, eager(SingleImageMaskRCNN(model), x)), atol=1e-4, rtol=1e-5)

    weights = tmp_path / "det.safetensors"
    export(capsys, saved["det"], weights)
    again = build_task_model("detection", "uniformer_small", 2, model_args=BACKBONE, head_args=TASKS["det"][2],
                             data_config=TASKS["det"][3])
    again.load_state_dict(load_file(str(weights)), strict=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


@pytest.mark.slow
def test_cascade_exports_its_backbone_fpn_and_rpn_features(saved, tmp_path, capsys):
    model = uniformer.load_pretrained(saved["cascade"]).eval()
    onnx_file = tmp_path / "cascade.onnx"
    export(capsys, saved["cascade"], onnx_file, "--img-size", "64")
    io = contract(onnx_file)
    assert "not traceable" in io["note"]
    names = [o["name"] for o in io["outputs"]]
    assert names[:2] == ["fpn_0", "fpn_1"] and names[5] == "rpn_cls_0" and len(names) == 15
    x = torch.randn(2, 3, 96, 128)
    close(session(onnx_file).run(None, {"image": x.numpy()}), eager(MMDetFeatures(model), x))


# ------------------------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("classifier") / "model"
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_small", **dict(BACKBONE, num_classes=4))
    uniformer.save_pretrained(model, folder, label_names=["cat", "dog", "eel", "fox"], data_config={
        "input_size": (3, 64, 64)})
    return folder


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """b.png, a.jpg, sub/c.png, a text file and a hidden image."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.png", ".hidden.png"]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def test_predict_a_folder_writes_json_and_csv(classifier, images, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(classifier), str(images), "--topk", "2", "--output",
                 str(tmp_path / "p.json")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(images / "a.jpg") and printed[3] == str(images / "b.png") and len(printed) == 6
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["task"] == "classification" and result["topk"] == 2 and not result["ema"]
    assert [p["image"] for p in result["predictions"]] == [str(images / "a.jpg"), str(images / "b.png")]
    first = result["predictions"][0]["top"]
    assert [t["label"] for t in first] == [printed[1].split()[-1], printed[2].split()[-1]]
    assert f"{100 * first[0]['probability']:6.2f}%" in printed[1] and first[0]["probability"] >= first[1]["probability"]

    assert main(["predict", "--checkpoint", str(classifier), str(images), "--recursive", "--topk", "3", "--output",
                 str(tmp_path / "p.csv")]) == 0
    capsys.readouterr()
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [str(images / n) for n in ("a.jpg", "b.png", "sub/c.png")]
    assert rows[0]["label_1"] == first[0]["label"] and float(rows[0]["probability_1"]) == first[0]["probability"]
    assert {"label_3", "probability_3", "index_3"} <= set(rows[0])

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "sub").mkdir()
    for args, fragments in (([str(empty)], ("holds no images", "--recursive")),
                            ([str(images), "--output", str(tmp_path / "p.txt")], (".json or .csv",))):
        assert main(["predict", "--checkpoint", str(classifier), *args]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and all(f in err for f in fragments), err


def test_predict_dense_folder_json_has_the_overlays_and_fields(saved, images, tmp_path, capsys):
    out = tmp_path / "overlays"
    assert main(["predict", "--checkpoint", str(saved["det"]), str(images), "--output-dir", str(out),
                 "--score-threshold", "0.0", "--output", str(tmp_path / "d.json")]) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "d.json").read_text())
    first = result["predictions"][0]
    assert result["task"] == "detection" and first["image"] == str(images / "a.jpg")
    assert first["overlay"] == str(out / "a_detection.png") and Path(first["overlay"]).is_file()
    assert first["count"] == len(first["detections"]) > 0
    assert {d["label"] for d in first["detections"]} <= {"red", "blue"} and len(first["detections"][0]["box"]) == 4
    assert main(["predict", "--checkpoint", str(saved["seg"]), str(images), "--output-dir", str(out),
                 "--output", str(tmp_path / "s.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["segmentation"] * 2 and rows[1]["overlay"] == str(out / "b_segmentation.png")
    assert printed[0] == f"{rows[0]['overlay']}  {rows[0]['summary']}" and "%" in rows[0]["summary"]


@pytest.mark.slow
def test_predict_refuses_another_class_count(classifier, saved, images, tmp_path, capsys):
    image = str(images / "a.jpg")
    one_line_error(run_cli("predict", "--checkpoint", str(classifier), "--num-classes", "10", image, check=False),
                   "--num-classes 10 does not match the 4 classes of", str(classifier))
    weights = tmp_path / "official.pth"  # a weights file: the count comes from its head
    torch.save({"model": uniformer.load_pretrained(classifier).state_dict()}, weights)
    for checkpoint, extra, fragment in ((weights, ["--model", "uniformer_small"], "the 4 classes"),
                                        (saved["seg"], [], "the 3 classes")):
        assert main(["predict", "--checkpoint", str(checkpoint), *extra, "--num-classes", "10", image]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--num-classes 10 does not match" in err and fragment in err, err
    assert main(["predict", "--checkpoint", str(classifier), "--num-classes", "4", image]) == 0  # the same count


# ----------------------------------------------------------------------------------------------------------- EMA
@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    run = tmp_path_factory.mktemp("ema") / "run"
    tiny = json.dumps({"depth": [1, 1, 3, 2], "embed_dim": [16, 32, 64, 128], "head_dim": 16})
    out = run_cli("train", "--data", "digits", "--model", "uniformer_xxs", "--model-args", tiny, "--img-size", "32",
                  "--epochs", "1", "--batch-size", "64", "--workers", "0", "--model-ema", "--model-ema-decay", "0.9",
                  "--output", str(run), OMP_NUM_THREADS="1").stdout
    return {"run": str(run), "log": out}


@pytest.mark.slow
def test_ema_weights_for_eval_predict_and_export(ema_run, images, tmp_path, capsys):
    from uniformer.engine.inference import load_model_for_inference

    run = ema_run["run"]
    plain = load_model_for_inference(None, run)
    ema = load_model_for_inference(None, run, ema=True)
    state = torch.load(Path(run) / "best" / "training_state.pt", weights_only=True)["ema"]
    assert state  # ModelEmaV3 keeps its copy under module.
    differ = 0
    for k, v in ema.state_dict().items():
        assert torch.equal(v, state[f"module.{k}"]), k
        differ += not torch.equal(v, plain.state_dict()[k])
    assert differ > len(state) // 2
    # eval --ema reproduces the EMA accuracy the training printed
    printed = ema_run["log"].split("EMA acc1 ")[1].split("%")[0]
    assert main(["eval", "--checkpoint", run, "--ema", "--workers", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"acc1 {printed}%")
    assert main(["predict", "--checkpoint", run, "--ema", str(images / "a.jpg"), "--output",
                 str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "p.json").read_text())["ema"] is True
    weights = tmp_path / "ema.safetensors"
    assert main(["export", "--checkpoint", run, "--ema", "--output", str(weights)]) == 0
    capsys.readouterr()
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in load_file(str(weights)).items())


@pytest.mark.slow
def test_ema_without_ema_weights_is_one_line(ema_run, classifier, images, tmp_path, capsys):
    without = tmp_path / "no_ema"
    shutil.copytree(Path(ema_run["run"]) / "best", without)
    state = torch.load(without / "training_state.pt", weights_only=True)
    torch.save(dict(state, ema=None), without / "training_state.pt")  # as a run without --model-ema saves it
    one_line_error(run_cli("predict", "--checkpoint", str(without), "--ema", str(images / "a.jpg"), check=False),
                   "training_state.pt has no EMA weights", "--model-ema")
    for args in (["eval", "--checkpoint", str(classifier), "--ema", "--data", "digits"],
                 ["export", "--checkpoint", str(classifier), "--ema", "--output", str(tmp_path / "m.onnx")]):
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "has no EMA weights" in err and str(classifier) in err, err


@pytest.mark.slow
def test_version_prints_one_line():
    from importlib import metadata

    proc = subprocess.run([sys.executable, "-m", "uniformer.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == (f"uniformer {uniformer.__version__} (torch {metadata.version('torch')}, timm "
                           f"{metadata.version('timm')})\n")


@pytest.mark.slow
def test_official_pose_config_exports_through_the_cli(tmp_path, capsys):
    """`export --official-config CONFIG --checkpoint OFFICIAL.pth`: the official structure and weights, loaded
    strictly, in onnxruntime at another crop size."""
    from conftest import REFERENCE
    from uniformer.tasks.official import from_official_config

    fixture = torch.load(REFERENCE / "parity" / "dense_heads" / "pose_topdown_global.pt", weights_only=True)
    config = tmp_path / "config.py"
    config.write_text(f"model = {fixture['config']['model']!r}\ndata_cfg = dict(image_size=[48, 64])\n")
    checkpoint = tmp_path / "official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fixture["state_dict"].items()}}, checkpoint)
    onnx_file = tmp_path / "pose.onnx"
    assert main(["export", "--official-config", str(config), "--checkpoint", str(checkpoint), "--output",
                 str(onnx_file)]) == 0
    capsys.readouterr()
    io = contract(onnx_file)
    assert io["official"] is True and io["data_config"]["image_size"] == [48, 64]
    assert io["check"]["inputs"][0] == [1, 3, 64, 64]  # sides of at least 64
    model = from_official_config(str(config), checkpoint)
    x = torch.randn(2, 3, 96, 80)
    close(session(onnx_file).run(None, {"image": x.numpy()}), eager(model, x))
    assert main(["export", "--official-config", str(config), "--checkpoint", str(checkpoint), "--ema", "--output",
                 str(tmp_path / "x.onnx")]) == 1
    assert "neither --model nor --ema" in capsys.readouterr().err
