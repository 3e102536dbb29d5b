"""Deployment export: ONNX (onnxruntime, dynamic batch), TorchScript and safetensors for every model family."""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from conftest import TINY

import uniformer
from uniformer.cli import build_parser
from uniformer.export import example_input, export_model, export_onnx, export_safetensors, export_torchscript

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and stay fast on a busy 2-core machine); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# The smallest valid hourglass schedule (stage 3: one full block then one pruning block; stage 4: one pruning block).
LIGHT = dict(TINY, prune_ratio=[[], [], [1, 0.5], [0.5]], trade_off=[[], [], [1, 0.5], [0.5]])
NO_HEAD = {k: v for k, v in TINY.items() if k != "num_classes"}
ONE_THREAD = ort.SessionOptions()
ONE_THREAD.intra_op_num_threads = ONE_THREAD.inter_op_num_threads = 1
VT_SMALL = dict(token_dim=32, ffn_dim=32, num_heads=4, num_tokens=4, num_classes=10)

# family -> (model name, overrides, square side). Video tags fix T: k400_4f_128 has 4 frames. uniformer_xs with these
# overrides is the very same network as uniformer_xxs (the two differ only in default widths/depths), so it is not
# exported twice.
FAMILIES = {
    "image": ("uniformer_small", TINY, 64),
    "token_labeling": ("uniformer_small_tl", TINY, 64),
    "light": ("uniformer_xxs", LIGHT, 64),
    "video": ("uniformer_video_small.k400_8x8", TINY, 32),
    "video_light": ("uniformer_video_xxs.k400_4f_128", LIGHT, 64),
    "dense": ("uniformer_small", dict(NO_HEAD, features_only=True), 64),
    "vt": ("vt_resnet18", VT_SMALL, 64),
}


def build(family: str, seed: int = 0) -> nn.Module:
    name, overrides, _ = FAMILIES[family]
    torch.manual_seed(seed)
    return uniformer.create_model(name, **overrides).eval()


def batch(model: nn.Module, family: str, n: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return example_input(model, n, FAMILIES[family][2])


def eager(model: nn.Module, x: torch.Tensor) -> list:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def assert_matches(got: list, expected: list, atol: float = 1e-4) -> float:
    assert len(got) == len(expected)
    worst = 0.0
    for g, e in zip(got, expected):
        g = torch.as_tensor(np.asarray(g)) if not isinstance(g, torch.Tensor) else g
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=atol, rtol=0)
        worst = max(worst, (g - e).abs().max().item())
    # guard against a degenerate comparison: different samples must give different outputs
    assert not torch.allclose(expected[-1][0], expected[-1][1])
    return worst


# ---------------------------------------------------------------------------------------------------------- ONNX
@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_matches_eager_at_two_batch_sizes(family, tmp_path):
    model = build(family)
    path = export_onnx(model, tmp_path / "model.onnx", batch(model, family, 1, seed=1))
    assert path == tmp_path / "model.onnx" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one self-contained file, no temporary left
    session = ort.InferenceSession(str(path), ONE_THREAD, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str)  # symbolic batch axis
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == (["features_0", "features_1", "features_2", "features_3"] if family == "dense" else ["logits"])
    for n, seed in ((2, 2), (3, 3)):  # neither is the traced batch size
        x = batch(model, family, n, seed)
        assert_matches(session.run(None, {"input": x.numpy()}), eager(model, x))


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_onnx_static_batch_opset_and_mode_restored(tmp_path):
    model = _toy().train()
    model[1].running_mean.uniform_(-1, 1)  # eval-mode BatchNorm differs from train-mode statistics
    x = torch.randn(2, 3, 8, 8)
    path = export_onnx(model, tmp_path / "toy.onnx", x, dynamic_batch=False, opset=20)
    assert model.training and all(m.training for m in model.modules())  # the caller's mode is restored
    import onnx

    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 20
    session = ort.InferenceSession(str(path), ONE_THREAD, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 8, 8]
    got = session.run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), eager(model.eval(), x)[0], atol=1e-5, rtol=0)


def test_onnx_check_reports_mismatch_and_writes_nothing(tmp_path, monkeypatch):
    class Wrong(ort.InferenceSession):
        def run(self, *args, **kwargs):
            return [o + 0.01 for o in super().run(*args, **kwargs)]

    monkeypatch.setattr(ort, "InferenceSession", Wrong)
    target = tmp_path / "toy.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"max abs difference 0\.01.* exceeds atol"):
        export_onnx(_toy(), target, torch.randn(1, 3, 8, 8))
    assert target.read_bytes() == b"previous"  # atomic: the old file is untouched, no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["toy.onnx"]


# --------------------------------------------------------------------------------------------------- TorchScript
@pytest.mark.parametrize("family", ["image", "token_labeling", "light", "video_light", "dense"])
def test_torchscript_matches_eager_at_other_batch_sizes(family, tmp_path):
    model = build(family)
    path = export_torchscript(model, tmp_path / "model.pt", batch(model, family, 1, seed=1))
    loaded = torch.jit.load(str(path))
    for n, seed in ((2, 2), (4, 3)):  # the light models' token gather must follow the batch size
        x = batch(model, family, n, seed)
        with torch.no_grad():
            out = loaded(x)
        assert_matches(list(out) if isinstance(out, (list, tuple)) else [out], eager(model, x))


class BatchScaled(nn.Module):
    """Multiplies by the batch size as a Python float, which tracing freezes: right at the traced batch size only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.shape[0])


class BatchReshaped(nn.Module):
    """Reshapes with the batch size as a Python int: the traced graph fails at another batch size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), -1)


def test_torchscript_check_catches_a_batch_size_baked_in(tmp_path):
    with pytest.raises(ValueError, match=r"TorchScript export of BatchScaled .*max abs difference"):
        export_torchscript(BatchScaled(), tmp_path / "bad.pt", torch.ones(2, 3))
    with pytest.raises(ValueError, match="fails at batch 3 .traced at 2"):
        export_torchscript(BatchReshaped(), tmp_path / "bad.pt", torch.ones(2, 3))
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------- safetensors
@pytest.mark.parametrize("family", ["light", "dense"])
def test_safetensors_round_trip(family, tmp_path):
    from safetensors.torch import load_file

    model = build(family, seed=0)
    path = export_safetensors(model, tmp_path / "model.safetensors")
    fresh = build(family, seed=1)
    assert not torch.equal(fresh.state_dict()["patch_embed1.proj.0.weight" if family == "light" else
                                              "patch_embed1.proj.weight"],
                           model.state_dict()["patch_embed1.proj.0.weight" if family == "light" else
                                              "patch_embed1.proj.weight"])
    fresh.load_state_dict(load_file(str(path)), strict=True)
    expected = model.state_dict()
    assert set(fresh.state_dict()) == set(expected)
    for k, v in fresh.state_dict().items():
        assert v.dtype == expected[k].dtype and torch.equal(v, expected[k]), k
    also = build(family, seed=2)
    uniformer.load_checkpoint(also, path)  # the library's own loader reads it too
    x = batch(model, family, 2, seed=4)
    assert_matches(eager(also, x), eager(model, x), atol=0)


# ------------------------------------------------------------------------------------------------ dispatch, CLI
def test_example_input_shapes():
    assert example_input(build("image"), 2).shape == (2, 3, 224, 224)
    assert example_input(build("video_light"), 1).shape == (1, 3, 4, 128, 128)  # T and side from the tag
    assert example_input(build("video"), 3, size=64).shape == (3, 3, 8, 64, 64)
    with pytest.raises(ValueError, match="batch_size"):
        example_input(build("image"), 0)


def test_unknown_format_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'.*onnx, torchscript, safetensors"):
        export_model(_toy(), tmp_path / "m.tflite", "tflite")
    assert not any(tmp_path.iterdir())


def test_cli_export_end_to_end(tmp_path, capsys):
    from uniformer.models.weights import save_pretrained

    model = build("light")
    saved = save_pretrained(model, tmp_path / "saved")
    parser = build_parser()

    out = tmp_path / "deploy" / "light.pt"
    args = parser.parse_args(["export", "--checkpoint", str(saved), "--format", "torchscript", "--output", str(out),
                              "--img-size", "64"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "torchscript" in lines[0]
    diff = float(lines[0].split("max abs diff vs PyTorch ")[1].split()[0])
    assert 0 <= diff <= 1e-4
    x = batch(model, "light", 3, seed=5)
    with torch.no_grad():
        assert_matches([torch.jit.load(str(out))(x)], eager(model, x))  # the saved weights were exported

    args = parser.parse_args(["export", "--checkpoint", str(saved), "--output", str(tmp_path / "w.safetensors")])
    assert args.func(args) == 0  # format from the suffix
    line = capsys.readouterr().out.strip()
    assert "safetensors" in line and "\n" not in line
    fresh = build("light", seed=3)
    uniformer.load_checkpoint(fresh, tmp_path / "w.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())

    with pytest.raises(ValueError, match="cannot tell the format"):
        args = parser.parse_args(["export", "--model", "uniformer_small", "--output", str(tmp_path / "m.bin")])
        args.func(args)
    with pytest.raises(ValueError, match="--model"):
        args = parser.parse_args(["export", "--output", str(tmp_path / "m.onnx")])
        args.func(args)
    with pytest.raises(FileNotFoundError):
        args = parser.parse_args(["export", "--model", "uniformer_small", "--checkpoint", str(tmp_path / "nope.pth"),
                                  "--output", str(tmp_path / "m.onnx")])
        args.func(args)
    with pytest.raises(SystemExit):  # argparse rejects an unknown --format
        parser.parse_args(["export", "--model", "uniformer_small", "--format", "tflite", "--output", "m"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy", "saved", "w.safetensors", "w.safetensors.json"]
    assert sorted(os.listdir(tmp_path / "deploy")) == ["light.pt", "light.pt.json"]  # + the I/O contract
