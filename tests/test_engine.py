"""The training engine end to end: real subprocesses, real torchrun, real files on disk."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import one_line_error, run_cli

from uniformer.engine.rundir import RunDir
from uniformer.engine.config import TrainConfig, load_yaml
from uniformer.engine.classification import compute_loss
from uniformer.models import LightTrainingOutput, TokenLabelingOutput

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = json.dumps({"depth": [1, 1, 3, 2], "embed_dim": [16, 32, 64, 128], "head_dim": 16})
TINY = ["--model", "uniformer_xxs", "--model-args", TINY_ARGS, "--img-size", "32"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli(*args: str, check: bool = True, timeout: int = 600):
    return run_cli(*args, check=check, timeout=timeout, OMP_NUM_THREADS="1")


def printed_best(stdout: str) -> tuple[int, int]:
    """(correct, total) of the best epoch's validation line printed by `uniformer train`."""
    best = [line for line in stdout.splitlines() if line.startswith("epoch") and "*best*" in line][-1]
    correct, total = re.search(r"acc1 [\d.]+% \((\d+)/(\d+)\)", best).groups()
    return int(correct), int(total)


def weights(run: Path) -> dict:
    return load_file(str(run / "last" / "model.safetensors"))


@pytest.mark.slow
def test_short_training_learns_and_eval_reproduces_printed_accuracy(tmp_path):
    run = tmp_path / "run"
    out = cli("train", *TINY, "--epochs", "2", "--workers", "0", "--output", str(run)).stdout
    correct, total = printed_best(out)
    assert total == 360 and correct / total > 0.5  # chance is 10 %
    ev = cli("eval", "--checkpoint", str(run)).stdout
    assert f"({correct}/{total})" in ev
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_acc1,val_loss,val_acc1") and len(rows) == 3
    png = cli("plot", str(run)).stdout.strip()
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0002"]
    assert os.readlink(run / "best") == os.readlink(run / "last") == "checkpoints/epoch-0002"
    pred = cli("predict", "--checkpoint", str(run), "--topk", "1", str(png)).stdout
    assert re.search(r"1\.\s+[\d.]+%\s+\d$", pred.strip().splitlines()[-1])  # a digit class name


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    args = [*TINY, "--epochs", "3", "--workers", "2", "--mixup", "0.8", "--cutmix", "1.0", "--drop-path", "0.1",
            "--model-ema", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    cli("train", *args, "--output", str(full))
    proc = subprocess.Popen([sys.executable, "-m", "uniformer.cli", "train", *args, "--output", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    last = killed / "last"
    deadline = time.time() + 300
    while not (last.is_symlink() and last.resolve().name == "epoch-0001"):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # during epoch 2 (or while writing its checkpoint)
    proc.wait()
    resumed = cli("train", "--resume", str(killed)).stdout
    assert "resumed" in resumed and "epoch   3/3" in resumed and "epoch   1/3" not in resumed
    a, b = weights(full), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda text: [",".join(r.split(",")[:6]) for r in text.splitlines()]  # noqa: E731 (timings differ)
    assert strip((full / "metrics.csv").read_text()) == strip((killed / "metrics.csv").read_text())


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    run = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "uniformer.cli",
         "train", *TINY, "--epochs", "2", "--workers", "0", "--output", str(run)],
        capture_output=True, text=True, timeout=600, env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch   2/2") == 1  # rank-0 logging only
    assert "2 process(es)" in proc.stdout
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch-0002"]
    correct, total = printed_best(proc.stdout)
    assert total == 360  # every validation image counted exactly once across the two ranks
    assert f"({correct}/{total})" in cli("eval", "--checkpoint", str(run)).stdout


def _image_folder(root: Path, classes=("cat", "dog"), per_class=6) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                value = 40 if c == classes[0] else 210
                arr = np.clip(rng.normal(value, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_image_folder_training_with_yaml_config_and_flag_override(tmp_path):
    data = _image_folder(tmp_path / "data")
    config = tmp_path / "opts.yaml"
    config.write_text(f"data: {data}\nmodel: uniformer_small\nmodel_args: {{depth: [1, 1, 2, 1], embed_dim: [16, 32, "
                      f"64, 128], head_dim: 16}}\nimg_size: 32\nepochs: 5\nbatch_size: 4\nworkers: 0\n")
    run = tmp_path / "run"
    out = cli("train", "--config", str(config), "--epochs", "1", "--output", str(run)).stdout
    assert "epoch   1/1" in out and "epoch   2/" not in out  # the flag overrode the file's 5 epochs
    saved = load_yaml(run / "config.yaml")
    assert saved["epochs"] == 1 and saved["model"] == "uniformer_small" and saved["data"] == str(data)
    pred = cli("predict", "--checkpoint", str(run / "best"), str(data / "val" / "dog" / "0.png")).stdout
    assert "cat" in pred and "dog" in pred


@pytest.mark.slow
def test_bad_configuration_gives_one_line_errors(tmp_path):
    one_line_error(cli("train", "--model", "uniformer_smal", check=False), "unknown model 'uniformer_smal'",
                   "did you mean uniformer_small")
    one_line_error(cli("train", "--data", str(tmp_path / "nowhere"), check=False), "data folder not found", "nowhere")
    data = _image_folder(tmp_path / "data")
    (data / "train" / "empty_class").mkdir()
    one_line_error(cli("train", "--data", str(data), *TINY[:4], check=False), "class folder", "empty_class",
                   "contains no images")
    shutil.rmtree(data / "train" / "empty_class")
    (data / "train" / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    one_line_error(cli("train", "--data", str(data), *TINY, "--batch-size", "2", "--workers", "1", check=False),
                   "cannot read image", "0.png")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochz: 3\n")
    one_line_error(cli("train", "--config", str(bad_yaml), check=False), "unknown option(s)", "epochz",
                   "did you mean epochs")
    one_line_error(cli("train", "--img-size", "50", check=False), "--img-size must be a positive multiple of 32")
    one_line_error(cli("train", "--resume", str(tmp_path), check=False), "cannot resume")
    one_line_error(cli("eval", "--checkpoint", str(tmp_path / "none"), "--data", "digits", check=False),
                   "checkpoint not found")
    proc = cli("train", "--epochs", "many", check=False)  # the schema's message, argparse's exit status
    assert proc.returncode == 2
    one_line_error(proc, "--epochs must be a positive integer, got 'many'")


@pytest.mark.slow
def test_help_documents_every_option():
    text = cli("train", "--help").stdout
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text, name


def test_checkpoint_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from uniformer import create_model

    model = create_model("uniformer_small", depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 128], head_dim=16,
                         num_classes=3)
    run = RunDir(tmp_path)
    first = run.save(0, model, {"epoch": 0}, is_best=True)

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        run.save(1, model, {"epoch": 1}, is_best=True)
    assert run.pointer("last") == run.pointer("best") == first.resolve()
    assert [p.name for p in run.checkpoints.iterdir()] == ["epoch-0001"]  # no temporary leftovers


def test_loss_for_every_output_family():
    criterion = torch.nn.CrossEntropyLoss()
    target = torch.tensor([0, 2])
    logits = torch.randn(2, 3)
    loss, used = compute_loss(logits, target, criterion)
    assert torch.equal(used, logits) and torch.isclose(loss, criterion(logits, target))
    head, head_cls = torch.randn(2, 3), torch.randn(2, 3)
    loss, used = compute_loss(LightTrainingOutput(head, head_cls), target, criterion)
    assert torch.equal(used, head)
    assert torch.isclose(loss, 0.5 * criterion(head, target) + 0.5 * criterion(head_cls, target))
    aux = torch.randn(2, 4, 3)
    loss, used = compute_loss(TokenLabelingOutput(head, aux, (0, 0, 0, 0)), target, criterion)
    expected = criterion(head, target) + criterion(aux.reshape(-1, 3), target.repeat_interleave(4))
    assert torch.isclose(loss, expected, atol=1e-6)
    # a box covering half of the 2x2 stride-32 grid mixes the class target half-and-half with the flipped batch
    loss_box, _ = compute_loss(TokenLabelingOutput(head, aux, (0, 0, 8, 16)), target, criterion)
    soft = torch.nn.functional.one_hot(target, 3).float()
    mixed = 0.5 * soft + 0.5 * soft.flip(0)
    expected = (-mixed * head.log_softmax(-1)).sum(-1).mean() + criterion(aux.reshape(-1, 3), target.repeat_interleave(4))
    assert torch.isclose(loss_box, expected, atol=1e-6)


def test_sample_config_file_is_valid_and_matches_the_demo():
    from uniformer.demo import RECIPE

    assert load_yaml(REPO / "configs" / "digits_uniformer_xxs.yaml") == RECIPE


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step(tmp_path):
    proc = cli("train", *TINY, "--epochs", "1", "--workers", "0", "--lr", "1e30", "--warmup-epochs", "0",
               "--output", str(tmp_path / "run"), check=False)
    one_line_error(proc, "loss is nan at epoch 1, step", "last good checkpoint")
    assert not (tmp_path / "run" / "last").exists()


@pytest.mark.slow
def test_amp_channels_last_grad_checkpointing_clipping_and_progress_bar(tmp_path):
    proc = cli("train", *TINY, "--epochs", "1", "--workers", "0", "--amp", "--channels-last", "--grad-checkpointing",
               "--clip-grad", "1.0", "--progress", "true", "--output", str(tmp_path / "run"))
    assert "22/22" in proc.stderr and "img_s=" in proc.stderr and "loss=" in proc.stderr  # tqdm bar on stderr
    correct, total = printed_best(proc.stdout)
    assert correct / total > 0.3
    saved = weights(tmp_path / "run")
    assert all(v.dtype in (torch.float32, torch.int64) for v in saved.values())  # autocast leaves fp32 weights
