"""One schema for every option value: ``uniformer train`` flags, ``--config`` YAML values and ``TrainConfig(...)`` go
through the same checks, and the other commands' argparse options use the same check functions. Every bad value is
one line naming the option, the value given and what is allowed, with exit status 2 and no traceback; 0 and negative
values are refused where they make no sense, never replaced by a default."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import List, Optional

import pytest
import yaml
from conftest import one_line_error, run_cli

from uniformer.cli import build_parser, main
from uniformer.engine.config import (DEVICES, INTERPOLATIONS, SCHEMA, OptionError, TrainConfig, config_from_args,
                                     load_yaml, option, positive_int, schema)

TINY_ARGS = json.dumps({"depth": [1, 1, 3, 2], "embed_dim": [16, 32, 64, 128], "head_dim": 16})


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """``uniformer ARGS`` run by :func:`uniformer.cli.main` in this process, as a finished process (exit status,
    stdout, stderr) for ``one_line_error``; argparse usage errors end in ``SystemExit``."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["uniformer", *args], code, out, err)


def assert_bad_option(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    one_line_error(proc, *fragments)


CHECKPOINT = ["--checkpoint", "run"]  # never read: the bad value stops the command first
FLAG_CASES = [
    # uniformer train: the schema, after parsing ("uniformer: error: --FLAG must be ..., got ...")
    (["train", "--epochs", "0"], ["uniformer: error: --epochs must be a positive integer, got 0"]),
    (["train", "--epochs", "many"], ["--epochs must be a positive integer, got 'many'"]),
    (["train", "--epochs", "2.5"], ["--epochs must be a positive integer, got 2.5"]),
    (["train", "--batch-size", "0"], ["--batch-size must be a positive integer, got 0"]),
    (["train", "--workers", "-1"], ["--workers must be a non-negative integer, got -1"]),
    (["train", "--img-size", "0"], ["--img-size must be a positive multiple of 32, got 0"]),
    (["train", "--img-size", "50"], ["--img-size must be a positive multiple of 32, got 50"]),
    (["train", "--num-frames", "0"], ["--num-frames must be a positive integer, got 0"]),
    (["train", "--frame-stride", "0"], ["--frame-stride must be a positive integer, got 0"]),
    (["train", "--frame-start", "-1"], ["--frame-start must be a non-negative integer, got -1"]),
    (["train", "--frame-template", "img.jpg"], ["--frame-template: frame template must be a file name with one "
                                                "integer field", "got 'img.jpg'"]),
    (["train", "--lr", "fast"], ["--lr must be a positive number, got 'fast'"]),
    (["train", "--lr", "0"], ["--lr must be a positive number, got 0"]),
    (["train", "--lr", "nan"], ["--lr must be a positive number, got nan"]),
    (["train", "--smoothing", "1"], ["--smoothing must be a number in [0, 1), got 1"]),
    (["train", "--reprob", "2"], ["--reprob must be a probability in [0, 1], got 2"]),
    (["train", "--crop-pct", "0"], ["--crop-pct must be a number in (0, 1], got 0"]),
    (["train", "--scale", "0.9", "0.1"], ["--scale must be two numbers LOW HIGH in (0, 1] with LOW <= HIGH, "
                                          "got [0.9, 0.1]"]),
    (["train", "--seg-scale", "2048", "0"], ["--seg-scale must be two positive integers LONG SHORT, got [2048, 0]"]),
    (["train", "--num-classes", "256"], ["--num-classes must be an integer in 1..255, got 256"]),
    (["train", "--aa", "garbage"], ["--aa must be a timm augmentation policy such as rand-m9-mstd0.5-inc1",
                                    "got 'garbage' (timm: Unknown AA policy garbage)"]),
    (["train", "--aa", "rand-m-1"], ["--aa must be a timm augmentation policy", "got 'rand-m-1' (timm: "]),
    (["train", "--device", "tpu"], [f"--device must be one of {DEVICES}, got 'tpu'"]),
    (["train", "--device", "cuda:x"], ["--device must be one of", "got 'cuda:x'"]),
    (["train", "--model-args", "{depth: [1]}"], ["--model-args must be a JSON object", "got '{depth: [1]}' "
                                                 "(not valid JSON: Expecting property name"]),
    (["train", "--model-args", "[1, 2]"], ["--model-args must be a JSON object", "got '[1, 2]'"]),
    (["train", "--head-args", "3"], ["--head-args must be a JSON object", "got 3"]),
    (["train", "--views", "4x2"], ["--views must be CLIPSxCROPS with at least 1 clip and 1 or 3 crops", "got '4x2'"]),
    (["train", "--views", "0x1"], ["--views must be CLIPSxCROPS", "got '0x1'"]),
    (["train", "--amp", "maybe"], ["--amp must be true or false", "got 'maybe'"]),
    (["train", "--output", ""], ["--output must be a non-empty string, got ''"]),
    (["train", "--task", "segmentation", "--data", "ade", "--mixup", "0.8"],
     ["--mixup applies only to classification, not to --task segmentation"]),
    # uniformer train: argparse's own choice check, one line
    (["train", "--interpolation", "cubicx"], ["uniformer train: error: argument --interpolation: invalid choice: "
                                              "'cubicx'", "'bicubic'", "'lanczos'"]),
    (["train", "--head", "deeplab"], ["argument --head: invalid choice: 'deeplab'", "'upernet'"]),
    # the other commands: argparse types ("uniformer CMD: error: argument --FLAG: must be ..., got ...")
    (["info", "uniformer_small", "--input-size", "-64"],
     ["uniformer info: error: argument --input-size: must be a positive multiple of 32, got -64"]),
    (["info", "uniformer_small", "--input-size", "0"], ["argument --input-size: must be a positive multiple of 32"]),
    (["predict", *CHECKPOINT, "--topk", "0", "a.png"], ["uniformer predict: error: argument --topk: must be a "
                                                        "positive integer, got 0"]),
    (["predict", *CHECKPOINT, "--topk", "x", "a.png"], ["argument --topk: must be a positive integer, got 'x'"]),
    (["predict", *CHECKPOINT, "--input-size", "0", "a.png"], ["argument --input-size: must be a positive multiple "
                                                              "of 32, got 0"]),
    (["predict", *CHECKPOINT, "--score-threshold", "2", "a.png"],
     ["argument --score-threshold: must be a probability in [0, 1], got 2"]),
    (["predict", *CHECKPOINT, "--num-classes", "0", "a.png"], ["argument --num-classes: must be a positive integer"]),
    (["predict", *CHECKPOINT, "--box", "0", "0", "inf", "5", "a.png"], ["argument --box: must be a finite number, "
                                                                        "got inf"]),
    (["eval", *CHECKPOINT, "--limit", "0"], ["uniformer eval: error: argument --limit: must be a positive integer, "
                                             "got 0"]),
    (["eval", *CHECKPOINT, "--batch-size", "0"], ["argument --batch-size: must be a positive integer, got 0"]),
    (["eval", *CHECKPOINT, "--workers", "-1"], ["argument --workers: must be a non-negative integer, got -1"]),
    (["eval", *CHECKPOINT, "--img-size", "0"], ["argument --img-size: must be a positive multiple of 32, got 0"]),
    (["eval", *CHECKPOINT, "--device", "tpu"], [f"argument --device: must be one of {DEVICES}, got 'tpu'"]),
    (["eval", *CHECKPOINT, "--views", "4x2"], ["argument --views: must be CLIPSxCROPS", "got '4x2'"]),
    (["predict-video", *CHECKPOINT, "--num-frames", "0", "v.mp4"],
     ["uniformer predict-video: error: argument --num-frames: must be a positive integer, got 0"]),
    (["predict-video", *CHECKPOINT, "--frame-stride", "0", "v.mp4"], ["argument --frame-stride: must be a positive "
                                                                      "integer, got 0"]),
    (["predict-video", *CHECKPOINT, "--img-size", "-32", "v.mp4"], ["argument --img-size: must be a positive "
                                                                    "multiple of 32, got -32"]),
    (["predict-video", *CHECKPOINT, "--frame-template", "img_%05d.jpg", "v.mp4"],
     ["argument --frame-template: frame template must be", "got 'img_%05d.jpg'", "not %05d"]),
    (["predict-video", *CHECKPOINT, "--frame-start", "-1", "v.mp4"], ["argument --frame-start: must be a "
                                                                      "non-negative integer, got -1"]),
    (["visualize-tokens", "a.png", "--columns", "0"], ["uniformer visualize-tokens: error: argument --columns: must "
                                                       "be a positive integer, got 0"]),
    (["visualize-tokens", "a.png", "--size", "0"], ["argument --size: must be a positive multiple of 32, got 0"]),
    (["bench", "--iters", "0"], ["uniformer bench: error: argument --iters: must be a positive integer, got 0"]),
    (["bench", "--batch-size", "0"], ["argument --batch-size: must be a positive integer, got 0"]),
    (["bench", "--threads", "-2"], ["argument --threads: must be a positive integer, got -2"]),
    (["bench", "--img-size", "100"], ["argument --img-size: must be a positive multiple of 32, got 100"]),
    (["export", "--output", "m.onnx", "--img-size", "0"], ["uniformer export: error: argument --img-size: must be a "
                                                           "positive multiple of 32, got 0"]),
]


@pytest.mark.parametrize("args, fragments", FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flag_value_is_one_line_exit_2(capsys, args, fragments):
    assert_bad_option(in_process(capsys, *args), *fragments)


YAML_CASES = [
    ("lr: fast", "lr in {file} must be a positive number, got 'fast'"),
    ("lr: -1e-3", "lr in {file} must be a positive number, got -1e-3"),
    ("epochs: 0", "epochs in {file} must be a positive integer, got 0"),
    ("epochs: 2.5", "epochs in {file} must be a positive integer, got 2.5"),
    ("epochs:", "epochs in {file} must be a positive integer, got None"),
    ("batch-size: '0'", "batch-size in {file} must be a positive integer, got 0"),
    ("workers: -1", "workers in {file} must be a non-negative integer, got -1"),
    ("img_size: 0", "img_size in {file} must be a positive multiple of 32, got 0"),
    ("num_frames: 0", "num_frames in {file} must be a positive integer, got 0"),
    ("frame_stride: -4", "frame_stride in {file} must be a positive integer, got -4"),
    ("device: tpu", "device in {file} must be one of {devices}, got 'tpu'"),
    ("aa: garbage", "aa in {file} must be a timm augmentation policy"),
    ("interpolation: cubicx", "interpolation in {file} must be one of bicubic, bilinear, nearest, box, hamming, "
                              "lanczos, got 'cubicx'"),
    ("head: deeplab", "head in {file} must be one of fpn, fpn-gn, upernet, vt-fpn, got 'deeplab'"),
    ("model_args: [1, 2]", "model_args in {file} must be a JSON object such as '{{\"depth\": [1, 1, 3, 2]}}', "
                           "got [1, 2]"),
    ("amp: maybe", "amp in {file} must be true or false (also yes/no, on/off, 1/0), got 'maybe'"),
    ("views: 4x2", "views in {file} must be CLIPSxCROPS"),
    ("scale: [0.5]", "scale in {file} must be two numbers LOW HIGH in (0, 1] with LOW <= HIGH, got [0.5]"),
    ("hflip: 1.5", "hflip in {file} must be a probability in [0, 1], got 1.5"),
    ("data: 7", "data in {file} must be a non-empty string, got 7"),
    ("epochz: 3", "unknown option(s) in {file}: epochz (did you mean epochs?)"),
]


@pytest.mark.parametrize("line, expected", YAML_CASES, ids=[line for line, _ in YAML_CASES])
def test_bad_yaml_value_is_one_line_exit_2_naming_key_and_file(capsys, tmp_path, line, expected):
    config = tmp_path / "opts.yaml"
    config.write_text(f"model: uniformer_xxs\n{line}\n")
    proc = in_process(capsys, "train", "--config", str(config))
    assert_bad_option(proc, "uniformer: error: " + expected.format(file=config, devices=DEVICES))


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "--epochs must be a positive integer, got 0"),
    (dict(lr="fast"), "--lr must be a positive number, got 'fast'"),
    (dict(num_frames=-1), "--num-frames must be a positive integer, got -1"),
    (dict(device="tpu"), "--device must be one of"),
    (dict(model_args="{}x"), "--model-args must be a JSON object"),
    (dict(task="detection", data="coco", detector="cascade_mask_rcnn", aa="rand-m9"), "--aa applies only to "
                                                                                      "classification"),
])
def test_train_config_built_in_python_is_checked_the_same_way(kwargs, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        TrainConfig(**kwargs)
    assert issubclass(OptionError, ValueError)  # library callers catch ValueError


def test_yaml_strings_that_are_numbers_become_the_declared_type(tmp_path):
    config = tmp_path / "opts.yaml"
    config.write_text('lr: 5e-4\nepochs: "3"\nwarmup_epochs: 0\nmodel_ema: yes\namp: "false"\nscale: ["0.5", 1]\n'
                      'hflip: "0"\nimg-size: "64"\nmodel_args: \'{"depth": [1, 1, 2, 1]}\'\nviews: 4X1\n')
    values = load_yaml(config)
    assert isinstance(values["lr"], float) and values["lr"] == 5e-4  # YAML 1.1 reads 5e-4 as a string
    assert values["epochs"] == 3 and type(values["epochs"]) is int
    assert values["warmup_epochs"] == 0.0 and type(values["warmup_epochs"]) is float
    assert values["model_ema"] is True and values["amp"] is False
    assert values["scale"] == [0.5, 1.0] and values["hflip"] == 0.0 and values["img_size"] == 64
    assert values["model_args"] == {"depth": [1, 1, 2, 1]} and values["views"] == "4x1"
    args = build_parser().parse_args(["train", "--config", str(config), "--batch-size", "8", "--amp",
                                      "--ratio", "0.5", "2", "--workers", "0", "--progress", "off"])
    train = config_from_args(args)
    assert (train.lr, train.epochs, train.batch_size, train.amp, train.ratio, train.progress) == \
           (5e-4, 3, 8, True, [0.5, 2.0], False)
    assert type(train.batch_size) is int and type(train.lr) is float
    assert TrainConfig(lr="5e-4", epochs="3", hflip=1).to_dict() == dict(TrainConfig().to_dict(), lr=5e-4, epochs=3,
                                                                         hflip=1.0)


def test_good_values_pass_and_timm_knows_every_interpolation():
    from timm.data.transforms import str_to_interp_mode

    for name in INTERPOLATIONS:
        str_to_interp_mode(name)
        assert TrainConfig(interpolation=name).interpolation == name
    for policy in ("rand-m9-mstd0.5-inc1", "augmix-m5", "original", "v0"):
        assert TrainConfig(aa=policy).aa == policy
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert TrainConfig(device=device).device == device
    assert TrainConfig(views="4x3", frame_template="{:05d}.jpg", frame_start=0, workers=0, seed=0).views == "4x3"


def test_schema_covers_every_option_and_the_help_shows_the_ranges():
    assert list(SCHEMA) == list(TrainConfig.__dataclass_fields__)
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "(a positive integer; default: 30)" in help_text  # --epochs
    assert "(a probability in [0, 1]; default: 0.0)" in help_text  # --reprob
    assert "(a positive multiple of 32; default: None)" in help_text  # --img-size


def test_fields_added_with_option_get_a_check_from_their_type():
    @dataclasses.dataclass
    class Options:
        overwrite: bool = option(False, "start again")
        count: Optional[int] = option(None, "how many", check=positive_int)
        mode: str = option("a", "which", choices=("a", "b"))
        speed: float = option(1.0, "how fast")

    specs = schema(Options)
    assert specs["overwrite"].coerce("yes", "--overwrite") is True
    assert specs["count"].coerce(None, "--count") is None and specs["count"].coerce("4", "--count") == 4
    assert specs["speed"].coerce("5e-4", "speed in x.yaml") == 5e-4
    with pytest.raises(OptionError, match=r"^--overwrite must be true or false .*, got 'maybe'$"):
        specs["overwrite"].coerce("maybe", "--overwrite")
    with pytest.raises(OptionError, match=r"^mode in x.yaml must be one of a, b, got 'c'$"):
        specs["mode"].coerce("c", "mode in x.yaml")

    @dataclasses.dataclass
    class Unchecked:
        sizes: List[int] = option([1], "sizes")

    with pytest.raises(TypeError, match="Unchecked.sizes: declare check="):
        schema(Unchecked)


@pytest.mark.slow
def test_real_processes_print_one_line_and_exit_2(tmp_path):
    proc = run_cli("info", "uniformer_small", "--input-size", "-64", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "uniformer info: error: argument --input-size: must be a positive multiple of 32, got -64\n"
    config = tmp_path / "opts.yaml"
    config.write_text("lr: fast\n")
    proc = run_cli("train", "--config", str(config), check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"uniformer: error: lr in {config} must be a positive number, got 'fast'\n"


@pytest.mark.slow
def test_yaml_numbers_as_strings_train_end_to_end(tmp_path):
    config, run = tmp_path / "opts.yaml", tmp_path / "run"
    config.write_text(f"lr: 5e-4\nepochs: \"1\"\nbatch_size: \"128\"\nworkers: 0\nwarmup_epochs: 0\nimg_size: 32\n"
                      f"model: uniformer_xxs\nmodel_args: '{TINY_ARGS}'\n")
    out = run_cli("train", "--config", str(config), "--output", str(run), OMP_NUM_THREADS="1").stdout
    assert "epoch   1/1" in out and "*best*" in out
    saved = yaml.safe_load(Path(run / "config.yaml").read_text())
    assert saved["lr"] == 5e-4 and saved["epochs"] == 1 and saved["batch_size"] == 128
    assert saved["model_args"] == json.loads(TINY_ARGS)
