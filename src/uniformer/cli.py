"""The ``uniformer`` command line: model zoo, model info and prediction.

Every subcommand turns bad input into one line on stderr (``uniformer: error: ...``) and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple

import torch

from .engine.config import (OptionError, clips_x_crops, device_name, frame_file_template, multiple_of_32,
                            non_negative_int, number, positive_int, probability)
from .engine.inference import (check_predictions_path, default_input, image_files, load_model_for_inference,
                               write_predictions)
from .engine.inference import official_model as load_official_model

__all__ = ["main", "build_parser"]

EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's status for usage errors; also ours for bad option values


class CliError(Exception):
    """An error whose message is shown to the user as is."""


def version_line() -> str:
    """``uniformer X.Y.Z (torch …, timm …)``, the installed distributions' versions (as the console-script launcher
    prints them): what ``uniformer --version`` prints."""
    from importlib import metadata

    import timm

    from . import __version__

    def version(name: str, fallback: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:  # run from a source tree
            return fallback

    return (f"uniformer {version('uniformer', __version__)} (torch {version('torch', torch.__version__)}, "
            f"timm {version('timm', timm.__version__)})")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``uniformer info: error: argument --input-size: must be a positive
    multiple of 32, got -64``, exit status 2 (``--help`` shows the usage). Sub-commands inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}\n")


# ------------------------------------------------------------------------------------------------------- models
def _gflops(model: torch.nn.Module, size: Sequence[int]) -> float:
    from .flops import count_flops

    return count_flops(model, (1, *size)) / 1e9


def _print_table(header: Sequence[str], rows: List[Sequence[str]], left: Sequence[int]) -> None:
    widths = [max(len(r[i]) for r in list(rows) + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())


ModelsTable = Tuple[Tuple[str, ...], List[Tuple[str, ...]], Tuple[int, ...], str]


def dense_models_table(pattern: str = "*", flops: Optional[bool] = None) -> ModelsTable:
    """The official dense configs (header, rows, left-aligned columns, footer): task, head, backbone, published
    numbers, exact params, GFLOPs with ``flops=True``."""
    import fnmatch

    from .flops import official_dense_flops
    from .tasks.mmdet_rcnn import mmdet_num_parameters
    from .tasks.official import from_official_config
    from .tasks.official_zoo import OFFICIAL_DENSE_CONFIGS

    entries = [e for e in OFFICIAL_DENSE_CONFIGS.values() if fnmatch.fnmatch(e.name, pattern)]
    if not entries:
        raise CliError(f"no official dense config matches {pattern!r}; run `uniformer models --task dense`")
    rows = []
    for e in entries:
        with torch.device("meta"):  # exact parameter counts without allocating the weights
            model = from_official_config(e.name)
        # torchvision's detectors carry background box-regression rows mmdet has not: count as mmdet does
        params = mmdet_num_parameters(model) if e.task == "detection" else sum(p.numel() for p in model.parameters())
        gflops = "-"
        if flops is True:
            gflops = f"{official_dense_flops(from_official_config(e.name), e) / 1e9:.1f}"
        metrics = ", ".join(f"{k} {v}" for k, v in e.metrics.items())
        rows.append((e.name, e.task, e.family, f"{e.size} {e.attention}", f"{params / 1e6:.2f}", gflops,
                     "x".join(map(str, e.flops_input)), metrics))
    footer = ("\nRun one: uniformer predict --official-config NAME_OR_FILE --checkpoint OFFICIAL.pth IMAGE "
              "(docs/dense.md)." + ("" if flops is True else " GFLOPs: add --flops (fvcore, a few seconds per config)."))
    return (("official config", "task", "head", "backbone", "params (M)", "GFLOPs", "at", "published"), rows,
            (0, 1, 2, 3, 6, 7), footer)


def models_table(pattern: str = "*", flops: Optional[bool] = None) -> ModelsTable:
    """The registered models (header, rows, left-aligned columns, footer): params, GFLOPs (unless ``flops=False``),
    default input, checkpoint tags."""
    from .models.factory import checkpoint_tags, create_model, list_models

    names = list_models(pattern)
    if not names:
        raise CliError(f"no model matches {pattern!r}; run `uniformer models` to list them all")
    rows = []
    for name in names:
        model = create_model(name)
        size = default_input(model)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflops = f"{_gflops(model, size):.3f}" if flops is not False else "-"
        rows.append((name, f"{params:.2f}", gflops, "x".join(map(str, size[1:])), ", ".join(checkpoint_tags(name))))
        del model
    footer = "" if flops is False else ("\nGFLOPs: fvcore multiply-adds at the default input, batch 1 (the papers' "
                                        "convention); video: per view (T x H x W).")
    return ("model", "params (M)", "GFLOPs", "input", "checkpoint tags"), rows, (0, 3, 4), footer


def cmd_models(args: argparse.Namespace) -> int:
    table = dense_models_table if args.task == "dense" else models_table
    header, rows, left, footer = table(args.pattern, args.flops)
    _print_table(header, rows, left)
    if footer:
        print(footer)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import timm

    from .models.factory import create_model, list_models
    from .flops import count_params

    model = create_model(args.model)
    size = default_input(model, args.input_size)
    print(f"{args.model}  ({type(model).__name__})")
    print(f"  depth       {model.depth}")
    print(f"  embed_dim   {model.embed_dim}")
    print(f"  head_dim    {model.head_dim}  (heads per attention stage: "
          f"{[c // model.head_dim for c in model.embed_dim[2:]]})")
    for attr in ("conv_stem", "return_dense", "prune_ratio"):
        if getattr(model, attr, None):
            print(f"  {attr:<11} {getattr(model, attr)}")
    print(f"  params      {count_params(model):,}")
    print(f"  GFLOPs      {_gflops(model, size):.3f} at {'x'.join(map(str, size[1:]))}")
    channels = [f["num_chs"] for f in model.feature_info]
    print(f"  features    channels {channels}, strides {[f['reduction'] for f in model.feature_info]}")
    print("  checkpoints")
    arch = args.model.split(".")[0]
    for full in list_models(arch, pretrained=True):
        pc = timm.models.get_pretrained_cfg(full)
        source = f"{pc.hf_hub_id}/{pc.hf_hub_filename}" if pc.hf_hub_id else (pc.file or "official zoo (local file)")
        notes = ", ".join(pc.notes or ())
        size = "x".join(map(str, pc.input_size[1:]))
        names = f"  {len(pc.label_names)} class names" if getattr(pc, "label_names", None) else ""
        print(f"    {full:<40} input {size}  crop_pct {pc.crop_pct}  {notes}{names}  {source}")
    return 0


# ------------------------------------------------------------------------------------------------------ predict
def class_names(num_classes: int, labels_file: Optional[str], saved: Optional[Sequence[str]]) -> List[str]:
    """Label names: ``--labels`` file, else the names saved with the model, else ImageNet-1K for 1000 classes."""
    if labels_file:
        path = Path(labels_file)
        if not path.is_file():
            raise FileNotFoundError(f"labels file not found: {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise CliError(f"labels file {path} has {len(names)} names but the model has {num_classes} classes")
        return names
    if saved and len(saved) == num_classes:
        return list(saved)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def official_model(args: argparse.Namespace) -> torch.nn.Module:
    """The official dense model of ``--official-config`` with the official ``--checkpoint`` loaded strictly."""
    for flag, value in (("--model", args.model), ("--num-classes", getattr(args, "num_classes", None)),
                        ("--ema", getattr(args, "ema", False) or None)):
        if value is not None:
            raise CliError(f"{flag} does not apply with --official-config (the config defines the model and the "
                           "official checkpoints carry no EMA weights)")
    return load_official_model(args.official_config, args.checkpoint)


def _dense_predictions(model: torch.nn.Module, images: List[str], args: argparse.Namespace) -> List[dict]:
    """Overlay PNGs of a segmentation / detection / pose model (ours or official), printed as they are written."""
    from .engine.dense import predict_task_images
    from .engine.official import is_official, predict_official

    task = model.task_config["task"]
    if args.box and task != "pose":
        raise CliError("--box gives person boxes for pose models only")
    run = predict_official if is_official(model) else predict_task_images
    records = []
    for image, (png, fields) in zip(images, run(model, images, args.output_dir, boxes=args.box,
                                                score_threshold=args.score_threshold)):
        print(f"{png}  {fields['summary']}")
        records.append({"image": image, "overlay": str(png), "task": task, **fields})
    return records


def cmd_predict(args: argparse.Namespace) -> int:
    from timm.data import create_transform, resolve_data_config

    from .data import load_image

    if args.output:
        check_predictions_path(args.output)
    images = image_files(args.images, recursive=args.recursive)
    if args.official_config:
        model = official_model(args)
    else:
        model = load_model_for_inference(args.model, args.checkpoint, args.num_classes, ema=args.ema).eval()
    meta = {"checkpoint": str(args.checkpoint), "ema": bool(args.ema)}
    if getattr(model, "task_config", None) is not None:  # segmentation / detection / pose: overlay PNGs
        records = _dense_predictions(model, images, args)
        if args.output:
            write_predictions(records, args.output, dict(meta, task=model.task_config["task"]))
        return 0
    if model.num_classes < 1:
        raise CliError("the model has no classifier (num_classes=0); nothing to predict")
    overrides = {"input_size": (3, args.input_size, args.input_size)} if args.input_size else {}
    data_cfg = resolve_data_config(overrides, model=model)
    transform = create_transform(**data_cfg)
    names = class_names(model.num_classes, args.labels, model.pretrained_cfg.get("label_names"))
    k = min(args.topk, model.num_classes)
    records = []
    for image_path in images:
        x = transform(load_image(image_path)).unsqueeze(0)
        with torch.inference_mode():
            probs = model(x).float().softmax(dim=-1)[0]
        top = probs.topk(k)
        print(image_path)
        for rank, (p, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            print(f"  {rank}. {100 * p:6.2f}%  {names[idx]}")
        records.append({"image": image_path, "top": [{"label": names[i], "index": i, "probability": round(p, 6)}
                                                      for p, i in zip(top.values.tolist(), top.indices.tolist())]})
    if args.output:
        write_predictions(records, args.output, dict(meta, task="classification", topk=k))
    return 0


# ------------------------------------------------------------------------------------------- train / eval / plot
def cmd_train(args: argparse.Namespace) -> int:
    from .models.factory import resolve_model_name
    from .engine.config import config_from_args, load_yaml
    from .engine.trainer import train

    base = None
    if getattr(args, "resume", None):
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {saved} not found (is {args.resume} a run directory?)")
        base = load_yaml(saved)
    config = config_from_args(args, base)
    resolve_model_name(config.model)
    train(config)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .models.weights import read_model_config
    from .engine.checkpointing import resolve_checkpoint_path
    from .engine.trainer import evaluate_checkpoint, run_data

    if args.official_config or args.limit is not None:
        return _eval_official(args)
    path = resolve_checkpoint_path(args.checkpoint)
    saved = read_model_config(path) if path.exists() else None
    if saved is not None and saved.get("official_model"):
        return _eval_official(args)
    if saved is not None and saved.get("task"):  # a segmentation / detection / pose model
        from .engine.dense import evaluate_task_checkpoint, format_metrics

        model = load_model_for_inference(None, str(path), ema=args.ema)
        data = args.data if args.data is not None else run_data(args.checkpoint, path)
        metrics, task = evaluate_task_checkpoint(
            model, data, split=args.split, batch_size=args.batch_size or 2, workers=args.workers, device=args.device,
            skip_bad=args.skip_bad, inference=args.inference, person_boxes=args.person_boxes)
        print(format_metrics(metrics, task.shown))
        others = [k for k in metrics if k not in task.shown]
        if others:
            print("  " + format_metrics(metrics, others))
        if task.skipped:
            print(f"skipped {task.skipped} bad sample(s)")
        return 0
    if args.inference or args.person_boxes:
        raise CliError("--inference and --person-boxes apply to segmentation and pose models only")
    result = evaluate_checkpoint(args.checkpoint, data=args.data, model_name=args.model, batch_size=args.batch_size or 64,
                                 workers=args.workers, img_size=args.img_size, split=args.split, device=args.device,
                                 views=args.views, num_frames=args.num_frames, frame_stride=args.frame_stride,
                                 sampler=args.sampler, aggregation=args.view_aggregation, skip_bad=args.skip_bad,
                                 frame_template=args.frame_template, frame_start=args.frame_start, ema=args.ema)
    print(f"acc1 {result['acc1']:.2f}% ({int(result['correct1'])}/{int(result['count'])})  "
          f"acc5 {result['acc5']:.2f}%  loss {result['loss']:.4f}"
          + (f"  skipped {int(result['skipped'])} bad sample(s)" if result["skipped"] else ""))
    return 0


def _eval_official(args: argparse.Namespace) -> int:
    """``eval`` of an official dense model (``--official-config`` + official checkpoint, or a folder saved from one):
    the official test pipeline and metrics on ``--data``."""
    from .engine.dense import format_metrics
    from .engine.official import OFFICIAL_SHOWN, evaluate_official

    for flag, value in (("--inference", args.inference), ("--img-size", args.img_size), ("--views", args.views),
                        ("--num-frames", args.num_frames), ("--frame-stride", args.frame_stride),
                        ("--sampler", args.sampler), ("--frame-template", args.frame_template),
                        ("--frame-start", args.frame_start)):
        if value is not None:
            raise CliError(f"{flag} does not apply to official dense models (their config fixes the test pipeline)")
    if args.official_config:
        model = official_model(args)
    else:
        model = load_model_for_inference(None, args.checkpoint, ema=args.ema)
        if not (getattr(model, "task_config", None) or {}).get("official_model"):
            raise CliError("--limit applies to official dense models only (--official-config or a folder saved "
                           "from one)")
    if args.data is None:
        raise CliError("--data is required for an official model: an ADE20K-layout folder (segmentation) or a "
                       "COCO-layout folder (detection, pose); see docs/dense.md")
    metrics = evaluate_official(model, args.data, split=args.split, person_boxes=args.person_boxes,
                                skip_bad=args.skip_bad, limit=args.limit, device=args.device)
    shown = OFFICIAL_SHOWN[model.task_config["task"]]
    print(format_metrics(metrics, [k for k in shown if k in metrics]))
    others = [k for k in metrics if k not in shown]
    if others:
        print("  " + format_metrics(metrics, others))
    return 0


def cmd_predict_video(args: argparse.Namespace) -> int:
    import time

    from .data.frames import DEFAULT_FRAME_START, DEFAULT_FRAME_TEMPLATE
    from .data.video import load_video_views
    from .engine.config import parse_views
    from .engine.trainer import aggregate_views, run_frame_naming
    from .models.uniformer_video import video_protocol

    model = load_model_for_inference(args.model, args.checkpoint, args.num_classes, ema=args.ema).eval()
    if getattr(model, "dims", 2) != 3:
        raise CliError(f"{type(model).__name__} is an image model; predict-video needs a uniformer_video_* model")
    cfg = model.pretrained_cfg
    proto = video_protocol(cfg)
    clips, crops = parse_views(args.views or proto["views"])
    frames, stride = args.num_frames or proto["frames"], args.frame_stride or proto["stride"]
    sampler, size = args.sampler or proto["sampler"], args.img_size or cfg["input_size"][-1]
    template, start = args.frame_template, args.frame_start
    if any(Path(video).is_dir() for video in args.videos):  # frame folders: named as in the run unless given
        template, start = run_frame_naming(args.checkpoint, template, start)
    names = class_names(model.num_classes, args.labels, cfg.get("label_names"))
    k = min(args.topk, model.num_classes)
    for video in args.videos:
        t0 = time.perf_counter()
        views = load_video_views(video, num_frames=frames, stride=stride, sampler=sampler, img_size=size,
                                 num_clips=clips, num_crops=crops, mean=cfg["mean"], std=cfg["std"],
                                 frame_template=template or DEFAULT_FRAME_TEMPLATE,
                                 frame_start=DEFAULT_FRAME_START if start is None else start)
        decode_ms = 1000 * (time.perf_counter() - t0)
        logits, clip_ms = [], []
        with torch.inference_mode():
            for clip in views.split(crops):  # one clip = its spatial crops, timed separately
                t0 = time.perf_counter()
                logits.append(model(clip))
                clip_ms.append(1000 * (time.perf_counter() - t0))
        probs = aggregate_views(torch.cat(logits).unsqueeze(0), args.view_aggregation).exp()[0]
        top = probs.topk(k)
        print(f"{video}  ({clips} clip(s) x {crops} crop(s) of {frames} frames, {sampler} sampling, stride {stride}; "
              f"decode {decode_ms:.0f} ms, {sum(clip_ms) / len(clip_ms):.0f} ms per clip)")
        for rank, (p, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            print(f"  {rank}. {100 * p:6.2f}%  {names[idx]}")
    return 0


def cmd_visualize_tokens(args: argparse.Namespace) -> int:
    from .models.factory import create_model
    from .visualize import save_token_attention_grid

    if args.checkpoint:
        model = load_model_for_inference(args.model, args.checkpoint)
    else:
        model = create_model(args.model)
    output = Path(args.output) if args.output else Path(args.image).with_name(Path(args.image).stem + "_tokens.png")
    print(save_token_attention_grid(model.eval(), args.image, output, size=args.size, columns=args.columns))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .engine.metrics import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="uniformer",
        description="UniFormer and Visual Transformer models: list, inspect, train, evaluate, predict.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show informational log messages")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print 'uniformer X.Y.Z (torch …, timm …)' and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the models with params, GFLOPs, input size and checkpoint tags; "
                                      "--task dense: the official detection / segmentation / pose configs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'uniformer_*tl*' or "
                                                           "'mask_rcnn*'")
    p.add_argument("--task", choices=("classification", "dense"), default="classification",
                   help="classification backbones (default) or the official dense configs with their published "
                        "numbers")
    p.add_argument("--flops", dest="flops", action="store_true", default=None,
                   help="count fvcore GFLOPs (default for classification; dense: at the official tables' input)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the fvcore FLOP count (faster)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="architecture, size, FLOPs, features and checkpoints of one model")
    p.add_argument("model", help="model name, e.g. uniformer_small")
    p.add_argument("--input-size", type=multiple_of_32, default=None,
                   help="square input side for the FLOP count, a multiple of 32 (default: the model's)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "predict",
        help="top-k classes for images, or overlay PNGs from segmentation / detection / pose models",
        description="Classify images with an official checkpoint (.pth/.safetensors, any official wrapper) or a "
        "folder saved by uniformer (config.json + model.safetensors). A segmentation, detection or pose run writes "
        "a colour-mask, box-and-mask or skeleton overlay PNG per image instead. With --official-config (an official "
        "Sense-X/UniFormer mmseg / mmdet / mmpose config or its name) and the official --checkpoint .pth, the whole "
        "official dense model runs with the official test pipeline. Predictions are printed and, with --output, "
        "written as JSON or CSV.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (any format PIL reads) or folders: every image file directly inside, sorted by "
                        "name (with --recursive: in all sub-folders too)")
    _prediction_arguments(p, "names saved with the model or ImageNet-1K")
    p.add_argument("--recursive", action="store_true", help="IMAGE folders: also take the images in their sub-folders")
    p.add_argument("--output", metavar="FILE.json|FILE.csv",
                   help="also write the predictions there: per image its path and the top-k labels with "
                        "probabilities (classification), or the overlay path, task, count and summary (dense tasks; "
                        "JSON adds every class share, detection or keypoint)")
    p.add_argument("--input-size", type=multiple_of_32,
                   help="square input side, a multiple of 32 (default: the model's pretrained config)")
    p.add_argument("--output-dir", help="segmentation / detection / pose models: folder for the overlay PNGs "
                                        "IMAGE_<task>.png (default: beside each image)")
    p.add_argument("--score-threshold", type=probability, default=0.5,
                   help="detection models: draw detections scoring at least this (default: 0.5)")
    p.add_argument("--box", type=number, nargs=4, action="append", metavar=("X", "Y", "W", "H"),
                   help="pose models: a person box in pixels; repeat for several people (default: the whole image)")
    _official_argument(p)
    p.set_defaults(func=cmd_predict)

    from .engine.config import add_train_arguments

    p = sub.add_parser(
        "train",
        help="train a classifier (images, videos) or a segmentation / detection / pose model (torchrun-ready)",
        description="Train on 'digits' (embedded), a folder with train/ and val/ class sub-folders (images or "
        "videos), an ADE20K-layout folder (--task segmentation) or a COCO-layout folder (--task detection / pose; "
        "see docs/dense.md). Options come "
        "from flags and/or --config FILE.yaml (flags win). Checkpoints are written every epoch to RUN_DIR (last, "
        "best); --resume RUN_DIR continues exactly. Scale out with: torchrun --nproc-per-node N -m uniformer.cli "
        "train ...",
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy (classification), mIoU (segmentation), box/mask AP (detection) or OKS "
                                    "AP (pose) of a run, a saved model or an official checkpoint",
                       description="Score a run, a saved model or an official checkpoint. With --official-config and "
                       "the official --checkpoint .pth, an ADE20K-layout (segmentation) or COCO-layout (detection, "
                       "pose) --data folder is scored as the official test.sh does: the config's test pipeline, one "
                       "image at a time, mIoU / pycocotools box, mask and keypoint AP (pose: OKS-NMS first).")
    p.add_argument("--checkpoint", required=True, help="run directory (uses best), saved model folder, or weights file")
    p.add_argument("--data", help="'digits' or a dataset folder (default: the run's data)")
    p.add_argument("--model", help="model name, for weights files without config.json")
    p.add_argument("--split", default="val", choices=("train", "val"), help="dataset split (default: val)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: 64; dense tasks 2)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data-loading workers (default: 2)")
    p.add_argument("--img-size", type=multiple_of_32,
                   help="square input side, a multiple of 32 (default: the checkpoint's recorded size)")
    p.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    _video_arguments(p)
    p.add_argument("--skip-bad", action="store_true", help="drop unreadable samples (images, corrupt or too-short "
                                                           "videos, bad segmentation pairs) with a warning; the "
                                                           "count skipped is printed")
    p.add_argument("--inference", choices=("whole", "slide"), help="segmentation: whole-image or sliding-window "
                                                                   "inference (default: as trained)")
    p.add_argument("--person-boxes", help="pose: evaluate on these person detections (COCO results JSON) instead "
                                          "of the ground-truth boxes")
    _official_argument(p)
    p.add_argument("--limit", type=positive_int,
                   help="official dense models: score only the first N images (a quick check)")
    _ema_argument(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict-video",
        help="top-k classes for video files or frame folders (multi-view), with per-clip timing",
        description="Classify videos with a video checkpoint: an official one (--model NAME.TAG gives the protocol "
        "and Kinetics-400 names, e.g. uniformer_video_small.k400_16x4) or a uniformer run / saved folder. A VIDEO "
        "that is a folder is read as a video's frames, named by --frame-template from --frame-start.",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any format PyAV/FFmpeg decodes) or frame "
                                                              "folders (image files, one per frame)")
    _prediction_arguments(p, "names saved with the model or the checkpoint tag's label set")
    p.add_argument("--img-size", type=multiple_of_32, help="crop side, a multiple of 32 (default: the checkpoint's)")
    _video_arguments(p)
    p.set_defaults(func=cmd_predict_video)

    p = sub.add_parser(
        "visualize-tokens",
        help="PNG grid of what each Visual Transformer token attends to in an image",
        description="Overlay the first (filter) tokenizer's attention maps of a VT-ResNet on an image, one panel per "
        "token, as in the paper's figure.",
    )
    p.add_argument("image", help="image file")
    p.add_argument("--model", default="vt_resnet18", help="VT model name (default: vt_resnet18)")
    p.add_argument("--checkpoint", help="weights file, saved model folder or run directory (default: random init)")
    p.add_argument("--output", help="PNG path (default: IMAGE_tokens.png next to the image)")
    p.add_argument("--size", type=multiple_of_32, default=224, help="input side, a multiple of 32 (default: 224)")
    p.add_argument("--columns", type=positive_int, default=4, help="panels per row (default: 4)")
    p.set_defaults(func=cmd_visualize_tokens)

    from .bench import add_bench_parser
    from .export import add_export_parser

    add_bench_parser(sub)
    add_export_parser(sub)

    p = sub.add_parser("plot", help="write a run's loss / accuracy / learning-rate curves as a PNG")
    p.add_argument("run_dir", help="training run directory (holds metrics.csv)")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_plot)
    return parser


def one_line(error: BaseException) -> str:
    """The user-facing line of an error; DataLoader workers re-raise with the worker's whole traceback as the
    message, whose last line is the original error."""
    text = str(error).strip() or type(error).__name__
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = last.partition(": ")[2] or last
    return " ".join(text.split())


def _prediction_arguments(p: argparse.ArgumentParser, default_labels: str) -> None:
    p.add_argument("--model", help="model name, optionally with its checkpoint tag (e.g. uniformer_small.in1k); "
                                   "optional for saved folders and run directories")
    p.add_argument("--checkpoint", required=True, help="weights file, saved model folder or run directory")
    p.add_argument("--topk", type=positive_int, default=5, help="number of classes to show (default 5)")
    p.add_argument("--labels", help=f"text file with one class name per line (default: {default_labels})")
    p.add_argument("--num-classes", type=positive_int,
                   help="the checkpoint's class count, as a check: another count is refused (it would mean a randomly "
                        "initialised classifier)")
    _ema_argument(p)


def _ema_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ema", action="store_true",
                   help="use the EMA weights (a run trained with --model-ema, or an official file with model_ema); "
                        "an error if the checkpoint has none")


def _official_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--official-config", metavar="CONFIG",
                   help="an official mmseg / mmdet / mmpose config file of Sense-X/UniFormer (read without running "
                        "it) or its name from `uniformer models --task dense`; --checkpoint is then the official .pth")


def _video_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--views", type=clips_x_crops,
                   help="video: CLIPSxCROPS, e.g. 4x1 or 1x3 (default: the checkpoint's protocol)")
    p.add_argument("--num-frames", type=positive_int,
                   help="video: frames per clip (default: the checkpoint's protocol)")
    p.add_argument("--frame-stride", type=positive_int, help="video: dense-sampling frame step (default: the protocol)")
    p.add_argument("--sampler", choices=("dense", "segment"), help="video: frame sampler (default: the protocol)")
    p.add_argument("--view-aggregation", choices=("prob", "logits"), default="prob",
                   help="video: average softmax probabilities (default) or sum raw logits (official protocol)")
    p.add_argument("--frame-template", type=frame_file_template,
                   help="video: file names of the frames in frame folders, one integer field (default: the run's, "
                        "else img_{:05d}.jpg; SSv1: {:05d}.jpg)")
    p.add_argument("--frame-start", type=non_negative_int,
                   help="video: number of the first frame file of a frame folder (default: the run's, else 1)")


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except (CliError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError,
            FloatingPointError, OSError) as e:
        print(f"uniformer: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, OptionError) else EXIT_ERROR
    except KeyboardInterrupt:
        print("uniformer: interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    return _run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
