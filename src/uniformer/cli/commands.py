"""One function per ``uniformer`` command: it reads the parsed options, calls the library and prints the result.
Bad input raises (``CliError``, ``ValueError``, ``FileNotFoundError`` …); :func:`uniformer.cli.main` turns it into one
line and an exit status."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List

import torch

from ..engine.inference import (check_predictions_path, class_names, classify_images, image_files,
                                load_model_for_inference, video_logits, write_predictions)
from ..engine.inference import official_model as load_official_model

__all__ = ["CliError", "cmd_models", "cmd_info", "cmd_predict", "cmd_train", "cmd_eval", "cmd_predict_video",
           "cmd_visualize_tokens", "cmd_bench", "cmd_export", "cmd_plot"]

_logger = logging.getLogger("uniformer")


class CliError(Exception):
    """An error whose message is shown to the user as is."""


def _print_top(top: List[tuple], names: List[str]) -> None:
    for rank, (p, idx) in enumerate(top, 1):
        print(f"  {rank}. {100 * p:6.2f}%  {names[idx]}")


# ------------------------------------------------------------------------------------------------- models, info
def cmd_models(args: argparse.Namespace) -> int:
    from ..zoo import dense_models_table, format_table, models_table

    table = dense_models_table if args.task == "dense" else models_table
    header, rows, left, footer = table(args.pattern, args.flops)
    print(format_table(header, rows, left))
    if footer:
        print(footer)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..zoo import model_info

    print(model_info(args.model, args.input_size))
    return 0


# ------------------------------------------------------------------------------------------------------ predict
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
    from ..engine.dense import predict_task_images
    from ..engine.official import is_official, predict_official

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
    names = class_names(model.num_classes, args.labels, model.pretrained_cfg.get("label_names"))
    k = min(args.topk, model.num_classes)
    records = []
    for image_path, top in classify_images(model, images, k, args.input_size):
        print(image_path)
        _print_top(top, names)
        records.append({"image": image_path, "top": [{"label": names[i], "index": i, "probability": round(p, 6)}
                                                      for p, i in top]})
    if args.output:
        write_predictions(records, args.output, dict(meta, task="classification", topk=k))
    return 0


def cmd_predict_video(args: argparse.Namespace) -> int:
    from ..data.frames import DEFAULT_FRAME_START, DEFAULT_FRAME_TEMPLATE
    from ..engine.config import parse_views
    from ..engine.classification import aggregate_views
    from ..engine.rundir import run_frame_naming
    from ..models.uniformer_video import video_protocol

    model = load_model_for_inference(args.model, args.checkpoint, args.num_classes, ema=args.ema).eval()
    if getattr(model, "dims", 2) != 3:
        raise CliError(f"{type(model).__name__} is an image model; predict-video needs a uniformer_video_* model")
    cfg = model.pretrained_cfg
    proto = video_protocol(cfg).overridden(args.num_frames, args.frame_stride, args.sampler, args.views)
    clips, crops = parse_views(proto.views)
    frames, stride, sampler, size = proto.frames, proto.stride, proto.sampler, args.img_size or cfg["input_size"][-1]
    template, start = args.frame_template, args.frame_start
    if any(Path(video).is_dir() for video in args.videos):  # frame folders: named as in the run unless given
        template, start = run_frame_naming(args.checkpoint, template, start)
    names = class_names(model.num_classes, args.labels, cfg.get("label_names"))
    k = min(args.topk, model.num_classes)
    for video in args.videos:
        logits, decode_ms, clip_ms = video_logits(
            model, video, frames=frames, stride=stride, sampler=sampler, size=size, clips=clips, crops=crops,
            frame_template=template or DEFAULT_FRAME_TEMPLATE,
            frame_start=DEFAULT_FRAME_START if start is None else start)
        top = aggregate_views(logits, args.view_aggregation).exp()[0].topk(k)
        print(f"{video}  ({clips} clip(s) x {crops} crop(s) of {frames} frames, {sampler} sampling, stride {stride}; "
              f"decode {decode_ms:.0f} ms, {sum(clip_ms) / len(clip_ms):.0f} ms per clip)")
        _print_top(list(zip(top.values.tolist(), top.indices.tolist())), names)
    return 0


# ------------------------------------------------------------------------------------------- train / eval / plot
def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.config import config_from_args, load_yaml
    from ..engine.fit import train
    from ..models.factory import resolve_model_name
    from ..tasks.build import DENSE_TASKS, resolve_backbone_name

    base = None
    if getattr(args, "resume", None):
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {saved} not found (is {args.resume} a run directory?)")
        base = load_yaml(saved)
    config = config_from_args(args, base)
    (resolve_backbone_name if config.task in DENSE_TASKS else resolve_model_name)(config.model)
    train(config)
    return 0


def _print_metrics(metrics: dict, shown: List[str]) -> None:
    from ..engine.metrics import format_metrics

    print(format_metrics(metrics, shown))
    others = [k for k in metrics if k not in shown]
    if others:
        print("  " + format_metrics(metrics, others))


def cmd_eval(args: argparse.Namespace) -> int:
    from ..engine.classification import evaluate_checkpoint
    from ..engine.rundir import resolve_checkpoint_path, run_data
    from ..models.weights import read_model_config

    if args.official_config or args.limit is not None:
        return _eval_official(args)
    path = resolve_checkpoint_path(args.checkpoint)
    saved = read_model_config(path) if path.exists() else None
    if saved is not None and saved.get("official_model"):
        return _eval_official(args)
    if saved is not None and saved.get("task"):  # a segmentation / detection / pose model
        from ..engine.dense import evaluate_task_checkpoint

        model = load_model_for_inference(None, str(path), ema=args.ema)
        data = args.data if args.data is not None else run_data(args.checkpoint, path)
        metrics, task = evaluate_task_checkpoint(
            model, data, split=args.split, batch_size=args.batch_size or 2, workers=args.workers, device=args.device,
            skip_bad=args.skip_bad, inference=args.inference, person_boxes=args.person_boxes)
        _print_metrics(metrics, task.shown)
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
    from ..engine.official import OFFICIAL_SHOWN, evaluate_official

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
    _print_metrics(metrics, [k for k in shown if k in metrics])
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..engine.metrics import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


# ------------------------------------------------------------------------------------------ tools on top of it
def cmd_visualize_tokens(args: argparse.Namespace) -> int:
    from ..models.factory import create_model
    from ..visualize import save_token_attention_grid

    if args.checkpoint:
        model = load_model_for_inference(args.model, args.checkpoint)
    else:
        model = create_model(args.model)
    output = Path(args.output) if args.output else Path(args.image).with_name(Path(args.image).stem + "_tokens.png")
    print(save_token_attention_grid(model.eval(), args.image, output, size=args.size, columns=args.columns))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import timm

    from ..bench import PATHS, PEERS, format_table, run_benchmarks, write_report
    from ..models.factory import resolve_model_name

    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = [s for s in paths if s not in PATHS]
    if unknown or not paths:
        raise ValueError(f"--paths takes a comma-separated subset of {','.join(PATHS)}, got {args.paths!r}")
    for name in args.models:
        if name not in timm.list_models():
            resolve_model_name(name)  # one line with close-name suggestions
    peers = [m for m in PEERS if args.peers and m not in args.models]
    report = run_benchmarks(args.models, paths, batch_size=args.batch_size, size=args.img_size, threads=args.threads,
                            train=args.train, iters=args.iters, amp=args.amp, peers=peers)
    print(format_table(report))
    for path in write_report(report, args.output_dir):
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Build/load the model, export it and print one summary line."""
    from ..export import contract_path, export_with_contract, resolve_format
    from ..models.factory import create_model

    fmt = resolve_format(args.output, args.format)
    official = getattr(args, "official_config", None)
    ema = getattr(args, "ema", False)
    if official:
        if args.model or ema or not args.checkpoint:
            raise ValueError("--official-config takes the official --checkpoint .pth, and neither --model nor --ema")
        model = load_official_model(official, args.checkpoint)
    elif args.checkpoint:
        model = load_model_for_inference(args.model, args.checkpoint, ema=ema)
    elif args.model:
        if ema:
            raise ValueError("--ema needs --checkpoint (a run trained with --model-ema)")
        model = create_model(args.model)
        _logger.warning("no --checkpoint: exporting %s with random initial weights", args.model)
    else:
        raise ValueError("pass --model NAME and/or --checkpoint FILE_OR_RUN_DIR")
    model.eval()
    path, diff, contract = export_with_contract(model, args.output, fmt, 1, args.img_size, args.check)
    if fmt == "safetensors":
        note = ""
    elif diff is None:
        note = "  (not checked)"
    else:
        shapes = ", ".join("x".join(map(str, s)) for s in contract["check"]["inputs"])
        note = f"  max abs diff vs PyTorch {diff:.3g} (inputs {shapes})"
    print(f"{path}  {fmt}{note}  I/O: {contract_path(path)}")
    return 0
