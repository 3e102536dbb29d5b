"""Hardening (docs/reliability.md): the bad inputs and faults that no other test file covers — unusual and broken
image files through `uniformer predict`, weights of the wrong dtype, Ctrl-C, SIGKILL in the middle of a checkpoint
write, a read-only run directory, a non-finite loss after the first checkpoint — and a static scan of the sources for
code-executing deserialisation."""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import signal
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import TINY, one_line_error, run_cli

import uniformer
from uniformer.models.weights import SAFE_GLOBALS
from uniformer.data import load_image
from uniformer.engine.config import load_yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "uniformer"
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TINY_ARGS = json.dumps({"depth": [1, 1, 3, 2], "embed_dim": [16, 32, 64, 128], "head_dim": 16})
TRAIN = ["--model", "uniformer_xxs", "--model-args", TINY_ARGS, "--img-size", "32", "--workers", "0"]


def cli(*args: str, check: bool = True, timeout: int = 600):
    return run_cli(*args, check=check, timeout=timeout, OMP_NUM_THREADS="1")


def tiny_model(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return uniformer.create_model("uniformer_small", **dict(TINY, num_classes=num_classes)).eval()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A saved 3-class classifier folder (config.json + model.safetensors) that predicts at 64x64."""
    folder = tmp_path_factory.mktemp("model") / "m"
    uniformer.save_pretrained(tiny_model(), folder, label_names=["cat", "dog", "eel"],
                              data_config={"input_size": (3, 64, 64)})
    return folder


def rgb(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------- images
def write_pixel_formats(folder: Path) -> Dict[str, Path]:
    """Every pixel format and size `uniformer predict` must read (converted to 8-bit RGB, resized by the model's
    transform), as real files."""
    folder.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        files[name] = folder / name
        img.save(files[name], **kw)

    save("rgb.jpg", Image.fromarray(rgb()), quality=90)
    save("gray.png", Image.fromarray(rgb()[..., 0]))
    save("gray.jpg", Image.fromarray(rgb()[..., 1]))
    rgba = np.concatenate([rgb(), np.tile(np.arange(80, dtype=np.uint8) * 3, (60, 1))[..., None]], axis=-1)
    save("rgba.png", Image.fromarray(rgba, mode="RGBA"))
    save("la.png", Image.fromarray(rgba[..., [0, 3]], mode="LA"))
    save("gray16.png", Image.fromarray(np.linspace(0, 65535, 60 * 80).reshape(60, 80).astype(np.uint16)))
    palette = Image.fromarray(rgb()).convert("P", palette=Image.ADAPTIVE, colors=16)
    save("palette.png", palette, transparency=0)
    save("cmyk.jpg", Image.fromarray(rgb()).convert("CMYK"))
    save("float.tif", Image.fromarray(np.random.default_rng(1).normal(0, 1, (40, 30)).astype(np.float32)))
    save("tiny1x1.png", Image.fromarray(rgb(1, 1)))
    save("sliver3x200.png", Image.fromarray(rgb(3, 200)))
    return files


def test_load_image_converts_every_pixel_format_to_8bit_rgb(tmp_path):
    files = write_pixel_formats(tmp_path)
    for name, path in files.items():
        img = load_image(path)
        assert img.mode == "RGB", name
        with Image.open(path) as raw:
            assert img.size == raw.size, name
    gray16 = np.asarray(load_image(files["gray16.png"]))
    assert gray16.min() == 0 and gray16.max() == 255  # rescaled from min..max, not clipped
    assert (gray16[..., 0] == gray16[..., 2]).all()
    rgba = np.asarray(load_image(files["rgba.png"])).astype(int)
    src = rgb().astype(int)
    alpha = (np.arange(80) * 3)[None, :, None]
    expected = (src * alpha + 255 * (255 - alpha) + 127) // 255  # alpha over white
    assert np.abs(rgba - expected).max() <= 1
    assert (np.asarray(load_image(files["la.png"]))[:, 0] == 255).all()  # alpha 0 → white


@pytest.mark.slow
def test_predict_reads_every_pixel_format_and_tiny_images(tmp_path, saved_model):
    """Greyscale, RGBA, LA, 16-bit, palette with transparency, CMYK, float TIFF, 1x1 and 3x200 images all predict."""
    files = write_pixel_formats(tmp_path)
    proc = cli("predict", "--checkpoint", str(saved_model), "--topk", "3", *map(str, files.values()))
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 * len(files), proc.stdout
    for i, path in enumerate(files.values()):
        assert lines[4 * i] == str(path)
        assert all(any(name in line for name in ("cat", "dog", "eel")) for line in lines[4 * i + 1: 4 * i + 4])


def truncated(path: Path, fmt: str) -> Path:
    img = Image.fromarray(rgb(120, 160))
    full = path.with_suffix(".full" + path.suffix)
    img.save(full, fmt)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated-jpeg", "truncated-png", "empty-file", "directory"])
def test_predict_rejects_unreadable_images_in_one_line(tmp_path, saved_model, case):
    if case == "truncated-jpeg":
        bad = truncated(tmp_path / "cut.jpg", "JPEG")
    elif case == "truncated-png":
        bad = truncated(tmp_path / "cut.png", "PNG")
    elif case == "empty-file":
        bad = tmp_path / "empty.png"
        bad.write_bytes(b"")
    else:
        bad = tmp_path / "folder.jpg"
        bad.mkdir()
    with pytest.raises(ValueError if case != "directory" else FileNotFoundError, match=bad.name):
        load_image(bad)
    proc = cli("predict", "--checkpoint", str(saved_model), str(bad), check=False)
    assert proc.returncode == 1
    expected = {"truncated-jpeg": "image file is truncated", "truncated-png": "image file is truncated",
                "empty-file": "not an image file PIL recognises", "directory": "holds no images"}[case]  # a folder
    one_line_error(proc, bad.name, expected)


# --------------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_safetensors_of_another_float_precision_load_by_casting(tmp_path, caplog, dtype):
    src = tiny_model()
    path = tmp_path / "half.safetensors"
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in src.state_dict().items()}, str(path))
    dst = uniformer.create_model("uniformer_small", **dict(TINY, num_classes=3))
    with caplog.at_level(logging.INFO, logger="uniformer"):
        uniformer.load_checkpoint(dst, path)
    name = str(dtype).replace("torch.", "")
    assert f"from {name} to float32" in caplog.text
    for k, v in dst.state_dict().items():
        ref = src.state_dict()[k]
        assert v.dtype == ref.dtype, k
        assert torch.equal(v, ref.to(dtype).to(ref.dtype)), k


def test_safetensors_with_integer_weights_fail_naming_the_keys(tmp_path):
    src = tiny_model()
    state = dict(src.state_dict())
    state["head.weight"] = (state["head.weight"] * 100).round().to(torch.int64)
    state["blocks3.0.attn.qkv.weight"] = state["blocks3.0.attn.qkv.weight"] > 0
    path = tmp_path / "ints.safetensors"
    save_file(state, str(path))
    dst = uniformer.create_model("uniformer_small", **dict(TINY, num_classes=3))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"2 dtype mismatch\(es\).*blocks3\.0\.attn\.qkv\.weight \(checkpoint bool vs "
                                         r"model float32\), head\.weight \(checkpoint int64 vs model float32\)"):
        uniformer.load_checkpoint(dst, path)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing was half-loaded


@pytest.mark.slow
def test_unusable_checkpoint_locations_are_named(tmp_path, saved_model):
    from uniformer.models.weights import read_checkpoint, read_model_config
    from uniformer.engine.rundir import resolve_checkpoint_path

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint directory .*empty has no model.safetensors"):
        read_checkpoint(empty)
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="run directory .*unfinished has no finished checkpoint yet"):
        resolve_checkpoint_path(unfinished)
    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse .*broken/config.json"):
        read_model_config(broken)
    (broken / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a model config"):
        read_model_config(broken)
    image = tmp_path / "img.png"
    Image.fromarray(rgb()).save(image)
    one_line_error(cli("predict", "--checkpoint", str(empty), str(image), check=False), "empty has no config.json",
                   "pass --model NAME")


def test_eval_with_a_different_class_count_names_both_counts(tmp_path, saved_model):
    from uniformer.engine.classification import evaluate_checkpoint

    data = image_folder(tmp_path / "data", per_class=1)
    with pytest.raises(ValueError, match=r"the model has 3 classes but .*data has 2"):
        evaluate_checkpoint(str(saved_model), data=str(data), workers=0, device="cpu")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EXPLOIT_MARKER']}",))


@pytest.mark.slow
def test_cli_refuses_code_pickles_and_integer_weights_in_one_line(tmp_path, saved_model, monkeypatch):
    image = tmp_path / "img.png"
    Image.fromarray(rgb()).save(image)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    evil = tmp_path / "evil.pth"
    torch.save({"model": tiny_model().state_dict(), "payload": _Exploit()}, evil)
    proc = cli("predict", "--model", "uniformer_small", "--checkpoint", str(evil), str(image), check=False)
    one_line_error(proc, "refusing to load", "evil.pth", "nothing in the file was executed")
    assert not marker.exists()
    folder = tmp_path / "ints"
    shutil.copytree(saved_model, folder)
    state = load_file(str(folder / "model.safetensors"))
    state["head.weight"] = state["head.weight"].to(torch.int32)
    save_file(state, str(folder / "model.safetensors"))
    proc = cli("predict", "--checkpoint", str(folder), str(image), check=False)
    one_line_error(proc, "dtype mismatch", "head.weight (checkpoint int32 vs model float32)")


# ------------------------------------------------------------------------------------------------------ training
def image_folder(root: Path, per_class: int = 8) -> Path:
    """A two-class ImageFolder (train/val) of 40x48 images: dark 'cat', bright 'dog'."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, value in (("cat", 40), ("dog", 210)):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = np.clip(rng.normal(value, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def patched_cli(tmp_path: Path, name: str, patch: str) -> List[str]:
    """argv running the real CLI in a subprocess after ``patch`` (Python source) — a fault injected in-process."""
    script = tmp_path / f"{name}.py"
    run = "\nimport sys\nfrom uniformer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    script.write_text(textwrap.dedent(patch) + run)
    return [sys.executable, str(script)]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {(proc.communicate()[1] or '')[-2000:]}")
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def points_to(run: Path, name: str, epoch: int) -> bool:
    link = run / name
    return link.is_symlink() and os.readlink(link) == f"checkpoints/epoch-{epoch:04d}"


def epoch_1_saved(run: Path) -> bool:
    """Epoch 1's checkpoint is complete: ``best`` is moved after ``last``, the last write of the epoch."""
    return points_to(run, "last", 1) and points_to(run, "best", 1)


def assert_checkpoint_intact(run: Path, epoch: int) -> None:
    """``last`` points at epoch ``epoch`` and its three files load completely."""
    assert points_to(run, "last", epoch), os.readlink(run / "last")
    ckpt = run / "last"
    assert load_file(str(ckpt / "model.safetensors"))
    assert json.loads((ckpt / "config.json").read_text())["architecture"] == "uniformer_xxs"
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == epoch - 1


def temporaries(run: Path) -> List[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name)


def default_sigint() -> None:
    """A child started while SIGINT is ignored (e.g. from a background job) would inherit SIG_IGN, and Python
    would then never raise KeyboardInterrupt; a terminal's Ctrl-C reaches a process with the default handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_exit_130_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "uniformer.cli", "train", *TRAIN, "--epochs", "2",
                             "--output", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=default_sigint)
    wait_for(lambda: epoch_1_saved(run), proc)
    proc.send_signal(signal.SIGINT)  # during epoch 2
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["uniformer: interrupted"], err[-2000:]
    assert "epoch   1/2" in out and "epoch   2/2" not in out
    assert_checkpoint_intact(run, 1)
    assert temporaries(run) == [] and len((run / "metrics.csv").read_text().splitlines()) == 2
    assert not (run / ".lock").exists()  # the run directory's lock is released on Ctrl-C
    resumed = cli("train", "--resume", str(run)).stdout
    assert "resumed" in resumed and "epoch   2/2" in resumed and "epoch   1/2" not in resumed
    assert points_to(run, "last", 2) and len((run / "metrics.csv").read_text().splitlines()) == 3


SLOW_SECOND_CHECKPOINT = """
import time
import uniformer.engine.rundir as rundir

_original, _calls = rundir.save_pretrained, []

def save_pretrained(*args, **kwargs):
    result = _original(*args, **kwargs)
    _calls.append(1)
    if len(_calls) == 2:  # epoch 2: weights and config.json are in the temporary directory, training_state.pt not yet
        time.sleep(600)   # the test kills the process here
    return result

rundir.save_pretrained = save_pretrained
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_resumes_identically(tmp_path):
    data = image_folder(tmp_path / "data")
    args = ["train", "--data", str(data), *TRAIN, "--batch-size", "4", "--epochs", "3", "--model-ema",
            "--drop-path", "0.1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    cli(*args, "--output", str(full))
    proc = subprocess.Popen([*patched_cli(tmp_path, "slow_checkpoint", SLOW_SECOND_CHECKPOINT), *args, "--output",
                             str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    half_written = lambda: any((d / "config.json").is_file()  # noqa: E731
                               for d in (killed / "checkpoints").glob(".epoch-0002.tmp-*"))
    try:
        wait_for(half_written, proc, timeout=120)
        proc.send_signal(signal.SIGKILL)  # in the middle of writing epoch 2's checkpoint
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftover = temporaries(killed)
    assert len(leftover) == 1 and leftover[0].startswith(".epoch-0002.tmp-")
    assert not (killed / "checkpoints" / leftover[0] / "training_state.pt").exists()  # really interrupted mid-write
    assert_checkpoint_intact(killed, 1)
    resumed = cli("train", "--resume", str(killed)).stdout
    assert "resumed" in resumed and "epoch   2/3" in resumed and "epoch   3/3" in resumed
    assert temporaries(killed) == []  # the half-written directory is cleaned up
    a, b = load_file(str(full / "last" / "model.safetensors")), load_file(str(killed / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda text: [",".join(r.split(",")[:6]) for r in text.splitlines()]  # noqa: E731 (timings differ)
    assert strip((full / "metrics.csv").read_text()) == strip((killed / "metrics.csv").read_text())


INF_LOSS_IN_EPOCH_2 = """
import uniformer.engine.classification as classification

_original, _calls = classification.compute_loss, []

def compute_loss(*args, **kwargs):
    loss, logits = _original(*args, **kwargs)
    _calls.append(1)
    return (loss * float("inf") if len(_calls) == 5 else loss), logits  # 4 steps per epoch: epoch 2, step 1

classification.compute_loss = compute_loss
"""


@pytest.mark.slow
def test_inf_loss_after_a_checkpoint_stops_naming_the_step_and_keeps_that_checkpoint(tmp_path):
    data = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", "--data", str(data), *TRAIN, "--batch-size", "4", "--epochs", "2", "--output", str(run)]
    proc = subprocess.run([*patched_cli(tmp_path, "inf_loss", INF_LOSS_IN_EPOCH_2), *args], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 1
    one_line_error(proc, "loss is inf at epoch 2, step 1", "last good checkpoint", "epoch-0001", "is intact")
    assert_checkpoint_intact(run, 1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001"]
    assert "epoch   2/2" in cli("train", "--resume", str(run)).stdout  # the kept checkpoint resumes


AS_ORDINARY_USER = """
import ctypes, os, sys
if os.geteuid() == 0:  # root ignores file permissions: drop the two capabilities that let it (kept across exec)
    inheritable = int(next(l for l in open("/proc/self/status") if l.startswith("CapInh")).split()[1], 16)
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if inheritable >> cap & 1 or libc.prctl(24, cap, 0, 0, 0) != 0:  # 24 = PR_CAPBSET_DROP
            sys.exit(77)
os.execv(sys.executable, [sys.executable, "-m", "uniformer.cli", *sys.argv[1:]])
"""


@pytest.mark.slow
def test_read_only_run_directory_at_checkpoint_time_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", AS_ORDINARY_USER, "train", *TRAIN, "--epochs", "2", "--output",
                             str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(lambda: epoch_1_saved(run), proc)
    except AssertionError:
        if proc.returncode == 77:
            pytest.skip("cannot drop root's permission-override capabilities here")
        raise
    tree = [p for p in (run, *run.rglob("*")) if not p.is_symlink()]
    try:
        for p in tree:  # the whole run directory becomes read-only during epoch 2
            p.chmod(0o555 if p.is_dir() else 0o444)
        out, err = proc.communicate(timeout=300)
    finally:
        for p in tree:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert proc.returncode == 1, err[-2000:]
    one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "Permission denied", str(run))
    assert "epoch   1/2" in out and "epoch   2/2" not in out
    assert_checkpoint_intact(run, 1)
    assert temporaries(run) == []
    resumed = cli("train", "--resume", str(run)).stdout
    assert "resumed" in resumed and "epoch   2/2" in resumed and points_to(run, "last", 2)


# ------------------------------------------------------------------------------------------------------ --skip-bad
def bad_jpeg(path: Path) -> Path:
    """A truncated JPEG at ``path`` (the untruncated copy :func:`truncated` keeps is removed)."""
    truncated(path, "JPEG")
    path.with_suffix(".full.jpg").unlink()
    return path


def main_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI run in this process (no interpreter start), as a finished process: exit status, stdout, stderr."""
    from uniformer.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


class Listed(torch.utils.data.Dataset):
    """Items i -> (tensor [i], i); the indices in ``bad`` come back as BadSample (as a skip_bad dataset's would)."""

    def __init__(self, n: int, bad=()) -> None:
        self.n, self.bad = n, set(bad)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from uniformer.data import BadSample

        return BadSample(i, f"item{i}", "unreadable") if i in self.bad else (torch.tensor([float(i)]), i)


def test_skip_bad_loader_drops_bad_items_with_workers_and_skips_empty_batches():
    from uniformer.engine.distributed import DistContext
    from uniformer.engine.loaders import SkipBadLoader, eval_loader

    loader = eval_loader(Listed(7, bad=[2, 4, 5]), 2, 2, DistContext())  # batches [0 1] [2 3] [4 5] [6], 2 workers
    with pytest.warns(UserWarning) as caught:
        batches = [y.tolist() for _x, y in loader]
    assert batches == [[0, 1], [3], [6]] and loader.skipped == 3  # the all-bad batch [4 5] is skipped, not replaced
    assert [str(w.message) for w in caught] == [f"skipping item{i} ({k} skipped so far in this process): unreadable"
                                                for k, i in enumerate([2, 4, 5], 1)]
    from torch.utils.data import DataLoader

    from uniformer.data import DropBadCollate

    even = SkipBadLoader(DataLoader(Listed(8, bad=[1, 4, 5]), batch_size=4, collate_fn=DropBadCollate()), even=True)
    with pytest.warns(UserWarning):
        assert [y.tolist() for _x, y in even] == [[0, 2], [6, 7]]  # Mixup needs even batches: [0 2 3] -> [0 2]


def test_skip_bad_counts_videos_exactly(tmp_path, capsys):
    from conftest import write_video
    from test_video_engine import TINY_VIDEO

    data = tmp_path / "videos"
    for split, n in (("train", 2), ("val", 1)):
        for label, direction in (("right", 1), ("left", -1)):
            for i in range(n):
                write_video(data / split / label / f"{label}{i}.mp4", frames=12, direction=direction)
    bad = data / "val" / "left" / "broken.mp4"  # 3 validation videos, 2 of them good
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipping .*broken.mp4"):
        trained = main_cli(capsys, "train", "--data", str(data), *TINY_VIDEO, "--epochs", "1", "--skip-bad",
                           "--output", str(run))
    assert trained.returncode == 0, trained.stderr
    correct = re.search(r"acc1 [\d.]+% \((\d)/2\)", trained.stdout).group(1)  # the bad video is not counted
    assert "skipped 0 train / 1 val bad sample(s)" in trained.stdout
    with pytest.warns(UserWarning, match=rf"skipping {re.escape(str(bad))} \(1 skipped so far in this process\)"):
        evaluated = main_cli(capsys, "eval", "--checkpoint", str(run), "--skip-bad", "--workers", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    assert re.match(rf"acc1 [\d.]+% \({correct}/2\) .*  skipped 1 bad sample\(s\)$", evaluated.stdout.strip())
    one_line_error(main_cli(capsys, "eval", "--checkpoint", str(run), "--workers", "0"), "broken.mp4")


def test_skip_bad_image_folder_with_a_truncated_jpeg(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=4)
    bad_jpeg(data / "train" / "cat" / "bad.jpg")
    bad_jpeg(data / "val" / "dog" / "bad.jpg")
    args = ["train", "--data", str(data), *TRAIN, "--batch-size", "3", "--epochs", "1"]  # 9 train images: 3 batches
    one_line_error(main_cli(capsys, *args, "--output", str(tmp_path / "r1")), "cannot read image",
                   str(data / "train" / "cat" / "bad.jpg"), "truncated")
    run = tmp_path / "r2"
    with pytest.warns(UserWarning, match="skipping .*bad.jpg"):
        trained = main_cli(capsys, *args, "--skip-bad", "--output", str(run))
    assert trained.returncode == 0, trained.stderr
    correct = re.search(r"acc1 [\d.]+% \((\d)/8\)", trained.stdout).group(1)
    assert "skipped 1 train / 1 val bad sample(s)" in trained.stdout
    with pytest.warns(UserWarning, match=r"skipping .*val/dog/bad.jpg \(1 skipped so far in this process\): "
                                         r"cannot read image .*truncated"):
        evaluated = main_cli(capsys, "eval", "--checkpoint", str(run), "--skip-bad", "--workers", "0")
    assert re.match(rf"acc1 [\d.]+% \({correct}/8\) .*  skipped 1 bad sample\(s\)$", evaluated.stdout.strip())


def test_skip_bad_segmentation_eval_drops_the_bad_pair_exactly(tmp_path):
    """Evaluating with a bad mask dropped gives exactly the metrics of the folder without that pair."""
    from test_segmentation import CLASSES, write_split

    from uniformer.engine.config import TrainConfig
    from uniformer.engine.dense import SegmentationTask, task_data_config
    from uniformer.engine.distributed import DistContext
    from uniformer.tasks.build import build_task_model

    full, kept = tmp_path / "full", tmp_path / "kept"
    for root, seeds in ((full, [10, 11, 12]), (kept, [10, 12])):
        write_split(root, "validation", seeds, jpeg=False)
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for folder in ("images", "annotations"):  # the names of `full`, whose item 1 is the one left out
        split = kept / folder / "validation"
        (split / "validation_001.png").rename(split / "validation_002.png")
    mask = full / "annotations" / "validation" / "validation_001.png"
    values = np.array(Image.open(mask))
    values[:4, :4] = 7  # label 7 of 3 classes
    Image.fromarray(values).save(mask)
    data_config = task_data_config(TrainConfig(data=str(full), task="segmentation", img_size=64, seg_scale=[80, 64]))
    torch.manual_seed(0)
    tiny = {k: v for k, v in TINY.items() if k != "num_classes"}
    model = build_task_model("segmentation", "uniformer_small", 3, model_args=tiny,
                             head_args={"neck_channels": 32, "head_channels": 32}, data_config=data_config,
                             label_names=list(CLASSES)).eval()
    task = SegmentationTask(data_config, str(full), skip_bad=True)
    with pytest.warns(UserWarning, match=rf"skipping {re.escape(str(full))}.*validation_001.png \(1 skipped so far "
                                         r"in this process\): mask .* has label values \[7\]"):
        dropped = task.evaluate(model, task.dataset("val", train=False), DistContext(), 1, 2)
    clean = SegmentationTask(data_config, str(kept))
    assert task.skipped == 1 and dropped == clean.evaluate(model, clean.dataset("val", False), DistContext(), 1, 0)


@pytest.mark.slow
def test_skip_bad_under_torchrun_with_workers_and_an_all_bad_batch(tmp_path):
    """Two ranks with a DataLoader worker each; a batch in which every sample is bad on one rank makes every rank
    skip that step (DistributedDataParallel would otherwise wait for it forever); the counts are summed."""
    from torch.utils.data import DistributedSampler

    data = image_folder(tmp_path / "data", per_class=8)
    train = sorted((data / "train").rglob("*.png"))  # ImageFolder's order: cat/0..7, dog/0..7
    # the training sampler's order in epoch 1 (seed 0); batches of 2 per rank
    rank0, rank1 = (list(DistributedSampler(range(16), num_replicas=2, rank=r, shuffle=True, seed=0, drop_last=True))
                    for r in (0, 1))
    bad = {*rank0[:2], rank1[2]}  # rank 0's first batch is all bad; rank 1's second batch half bad
    for i in bad:
        train[i].unlink()
        bad_jpeg(train[i].with_suffix(".jpg"))
    bad_jpeg(data / "val" / "cat" / "bad.jpg")
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
         "uniformer.cli", "train", "--data", str(data), *TRAIN[:-2], "--workers", "1", "--batch-size", "2",
         "--epochs", "1", "--skip-bad", "--output", str(run)],
        capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 3 train / 1 val bad sample(s)" in proc.stdout  # summed over the two ranks
    assert re.search(r"acc1 [\d.]+% \(\d+/16\)", proc.stdout)
    assert proc.stderr.count("skipping ") == 4


# ------------------------------------------------------------------------------------------------------ security
UNSAFE_CALLS = {
    **dict.fromkeys(["eval", "exec", "builtins.eval", "builtins.exec"], "runs arbitrary code"),
    **dict.fromkeys(["pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "shelve.open"],
                    "unpickling runs code"),
    **dict.fromkeys(["marshal.load", "marshal.loads"], "loads code objects"),
    **dict.fromkeys(["yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
                     "yaml.full_load_all"], "use yaml.safe_load / safe_load_all"),
}


def unsafe_calls(source: str, filename: str) -> List[str]:
    """``file:line: call`` for every call that can execute code from data: eval/exec, pickle-family loads, YAML loaders
    other than safe_load, ``torch.load`` without a literal ``weights_only=True``, ``numpy.load(allow_pickle=True)``.
    Import aliases (``import pickle as p``, ``from torch import load``) are resolved."""
    tree = ast.parse(source, filename=filename)
    aliases: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(expr: ast.expr) -> Optional[str]:
        parts = []
        while isinstance(expr, ast.Attribute):
            parts.append(expr.attr)
            expr = expr.value
        if not isinstance(expr, ast.Name):
            return None
        return ".".join([aliases.get(expr.id, expr.id), *reversed(parts)])

    def literal(node: ast.Call, name: str):
        value = next((k.value for k in node.keywords if k.arg == name), None)
        return value.value if isinstance(value, ast.Constant) else ("<expr>" if value is not None else None)

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name is None:
            continue
        name = {"np.load": "numpy.load", "cPickle.load": "pickle.load", "_pickle.load": "pickle.load"}.get(name, name)
        if name in UNSAFE_CALLS:
            found.append(f"{filename}:{node.lineno}: {name}() — {UNSAFE_CALLS[name]}")
        elif name in ("torch.load", "torch.serialization.load") and literal(node, "weights_only") is not True:
            found.append(f"{filename}:{node.lineno}: {name}() without weights_only=True")
        elif name == "numpy.load" and literal(node, "allow_pickle") not in (None, False):
            found.append(f"{filename}:{node.lineno}: numpy.load(allow_pickle=...) unpickles")
    return found


def test_sources_never_deserialise_with_code_execution():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30, "the package sources were not found"
    found = [hit for f in files for hit in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))]
    assert not found, "unsafe loading/evaluation in the sources:\n" + "\n".join(found)
    loads = [f for f in files if "torch.load(" in f.read_text(encoding="utf-8")]
    assert loads, "expected the checkpoint readers to use torch.load(weights_only=True)"


def test_the_source_scanner_catches_every_unsafe_pattern():
    bad = textwrap.dedent("""\
        import pickle, yaml, torch, builtins
        import numpy as np
        import pickle as pk
        from torch import load as tload
        from yaml import full_load
        eval("1")
        exec("x = 1")
        builtins.eval("1")
        pickle.load(f)
        pk.loads(b"")
        yaml.load(s)
        yaml.load(s, Loader=yaml.SafeLoader)
        full_load(s)
        torch.load(p)
        torch.load(p, weights_only=False)
        tload(p, weights_only=flag)
        np.load(p, allow_pickle=True)
        model.eval()
        yaml.safe_load(s)
        torch.load(p, map_location="cpu", weights_only=True)
        np.load(p)
        """)
    lines = sorted(int(hit.split(":")[1]) for hit in unsafe_calls(bad, "bad.py"))
    assert lines == list(range(6, 18)), lines


def test_yaml_options_cannot_construct_python_objects(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="cannot parse .*evil.yaml"):
        load_yaml(evil)
    assert not marker.exists()
