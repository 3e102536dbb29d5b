"""The ``uniformer`` argument parser: every command's options and help, each command's function in ``func``
(:mod:`uniformer.cli.commands`). Option values are checked by the same functions as the ``train`` schema
(:mod:`uniformer.engine.config`); a bad value is one usage line, exit status 2."""
from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any, NoReturn

import timm
import torch

from .. import __version__
from ..bench import PATHS, PEERS
from ..engine.config import (add_train_arguments, clips_x_crops, device_name, frame_file_template, multiple_of_32,
                             non_negative_int, number, positive_int, probability)
from ..export import FORMATS
from . import commands

__all__ = ["EXIT_USAGE", "OneLineParser", "build_parser", "version_line"]

EXIT_USAGE = 2  # argparse's status for usage errors; also ours for bad option values


def version_line() -> str:
    """``uniformer X.Y.Z (torch …, timm …)``, the installed distributions' versions (as the console-script launcher
    prints them): what ``uniformer --version`` prints."""

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


def build_parser() -> argparse.ArgumentParser:
    """The ``uniformer`` parser; every command's function is in ``func``."""
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
    p.set_defaults(func=commands.cmd_models)

    p = sub.add_parser("info", help="architecture, size, FLOPs, features and checkpoints of one model")
    p.add_argument("model", help="model name, e.g. uniformer_small")
    p.add_argument("--input-size", type=multiple_of_32, default=None,
                   help="square input side for the FLOP count, a multiple of 32 (default: the model's)")
    p.set_defaults(func=commands.cmd_info)

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
    p.set_defaults(func=commands.cmd_predict)

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
    p.set_defaults(func=commands.cmd_train)

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
    p.set_defaults(func=commands.cmd_eval)

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
    p.set_defaults(func=commands.cmd_predict_video)

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
    p.set_defaults(func=commands.cmd_visualize_tokens)

    _add_bench_parser(sub)
    _add_export_parser(sub)

    p = sub.add_parser("plot", help="write a run's loss / accuracy / learning-rate curves as a PNG")
    p.add_argument("run_dir", help="training run directory (holds metrics.csv)")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=commands.cmd_plot)
    return parser


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


def _add_bench_parser(sub: Any) -> None:
    """The ``uniformer bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="images/s, latency, training steps/s, memory and %% of matmul peak, with timm peers",
        description="Benchmark models on this machine (timm benchmark.py conventions; every model in a fresh "
        "subprocess). Paths: baseline (explicit attention matmuls, the official implementation's way), eager "
        "(scaled_dot_product_attention), fast (BatchNorms folded, channels-last), compile (fast + torch.compile). "
        "Writes bench.json, bench.md and a bench.png speed chart to --output-dir.",
    )
    p.add_argument("models", nargs="*", default=["uniformer_small"], metavar="MODEL",
                   help="uniformer or timm model names (default: uniformer_small)")
    p.add_argument("--peers", action="store_true", help=f"add the timm peers on their eager path: {', '.join(PEERS)}")
    p.add_argument("--paths", default="baseline,eager,fast", help="comma-separated subset of "
                                                                  f"{','.join(PATHS)} (default: baseline,eager,fast)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="batch for throughput and training (default: 32)")
    p.add_argument("--img-size", type=multiple_of_32,
                   help="input side, a multiple of 32 (default: each model's pretrained size)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's default, the core count)")
    p.add_argument("--iters", type=positive_int, default=5, help="timed iterations, median reported (default: 5)")
    p.add_argument("--no-train", dest="train", action="store_false", help="skip the training-step measurement")
    p.add_argument("--amp", action="store_true", help="measure under bf16 autocast (AMX/AVX-512 bf16 CPUs)")
    p.add_argument("--output-dir", default="bench", help="where bench.json/md/png go (default: ./bench)")
    p.set_defaults(func=commands.cmd_bench)


def _add_export_parser(sub: Any) -> None:
    """The ``uniformer export`` subcommand."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or safetensors (checked against PyTorch)",
        description="Export a model for deployment: ONNX (onnxruntime), TorchScript (torch.jit.trace) or weights-only "
        "safetensors, with its input/output contract (names, shapes, layouts, normalisation, label names) in "
        "OUTPUT.json and in the file's metadata. Classifiers: input 'input' (dynamic batch; spatial sizes and the "
        "video frame count fixed) -> 'logits' ('features_0..3' for dense backbones). Segmentation runs: 'image' (B, 3, H, W) "
        "-> 'logits' at the input size; pose runs: person crops -> 'heatmaps' at stride 4 (dynamic batch, height, "
        "width); Mask R-CNN runs: one (3, H, W) image in [0, 1] of any size -> 'boxes', 'labels', 'scores', 'masks'; "
        "Cascade Mask R-CNN runs and official mmdet models: backbone + FPN + RPN head outputs only. ONNX and "
        "TorchScript files are run on random inputs of two sizes and compared with PyTorch; the max abs difference is "
        "printed.",
    )
    p.add_argument("--model", metavar="NAME",
                   help="model name, e.g. uniformer_small or uniformer_video_small.k400_16x4 (the tag sets the video "
                        "frame count); optional with a saved folder or run directory")
    p.add_argument("--checkpoint", metavar="FILE_OR_RUN_DIR",
                   help="weights file, saved model folder or run directory (default: random initialisation, for "
                        "testing deployment only)")
    p.add_argument("--official-config", metavar="CONFIG",
                   help="an official mmseg / mmdet / mmpose config file or name (`uniformer models --task dense`); "
                        "--checkpoint is then the official .pth")
    p.add_argument("--ema", action="store_true",
                   help="export the EMA weights of a run trained with --model-ema (an error if it has none)")
    p.add_argument("--format", dest="format", choices=FORMATS,
                   help="output format (default: from the --output suffix: .onnx, .pt/.ts = torchscript, "
                        ".safetensors)")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="output file path (written atomically; the I/O contract goes to PATH.json)")
    p.add_argument("--img-size", type=multiple_of_32, metavar="N",
                   help="input side the graph is traced at, a multiple of 32 (default: the model's pretrained config; "
                        "task models: their training size, and the graph takes other sizes too; ignored for "
                        "safetensors)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the exported model and comparing it with PyTorch")
    p.set_defaults(func=commands.cmd_export)
