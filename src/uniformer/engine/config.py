"""Training options, defined once: the dataclass below feeds argparse (``--help``), YAML files and the saved run
config. Precedence: built-in defaults < ``--config FILE.yaml`` < flags given on the command line."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..data.frames import DEFAULT_FRAME_START, DEFAULT_FRAME_TEMPLATE, check_frame_template

__all__ = ["TrainConfig", "add_train_arguments", "config_from_args", "load_yaml", "save_yaml", "parse_views"]


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text (and argparse extras such as ``choices``/``nargs``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=dict(help=help, **kwargs))
    return field(default=default, metadata=dict(help=help, **kwargs))


@dataclass
class TrainConfig:
    """Every option of ``uniformer train`` (names are the flags with ``-`` → ``_``)."""

    # data and model
    data: str = option("digits", "'digits' (embedded scikit-learn digits) or a folder with train/ and val/ class "
                                 "folders; video: a folder with train.txt/val.txt list files or train/ and val/ "
                                 "class folders of video files or of frame folders (docs/training.md)")
    task: Optional[str] = option(None, "image, video, segmentation, detection or pose (default: image or video from "
                                       "the model; the dense tasks build their backbone from an image model, e.g. "
                                       "uniformer_small, as timm's features_only)",
                                 choices=("image", "video", "segmentation", "detection", "pose"))
    model: str = option("uniformer_xxs", "model name (see `uniformer models`)")
    model_args: Dict[str, Any] = option({}, "architecture overrides as JSON, e.g. '{\"depth\": [1, 1, 3, 2]}'")
    init_checkpoint: Optional[str] = option(None, "weights to start from (official or ours); heads are re-initialised "
                                               "when the class count differs")
    img_size: Optional[int] = option(None, "a multiple of 32: classification: the square training/eval side (default: "
                                        "64 for digits, the model's pretrained size otherwise); segmentation: the "
                                        "crop side (512); detection: the short side (800); pose: the crop height, "
                                        "width 3/4 of it (256)")
    output: Optional[str] = option(None, "run directory (default: runs/<model>-<data>-<time>)")
    resume: Optional[str] = option(None, "continue the run in this directory exactly where it stopped")
    # schedule and optimisation (timm create_optimizer_v2 / create_scheduler_v2)
    epochs: int = option(30, "number of epochs")
    batch_size: int = option(64, "batch size per process")
    opt: str = option("adamw", "optimizer name understood by timm.optim.create_optimizer_v2")
    lr: float = option(1e-3, "peak learning rate (absolute, not scaled by batch size)")
    weight_decay: float = option(0.05, "weight decay (not applied to norms, biases, 1-D params and no_weight_decay())")
    opt_eps: float = option(1e-8, "optimizer epsilon")
    momentum: float = option(0.9, "SGD momentum")
    sched: str = option("cosine", "learning-rate schedule (timm create_scheduler_v2)")
    min_lr: float = option(1e-5, "final learning rate of the schedule")
    warmup_epochs: float = option(1.0, "linear warm-up epochs from --warmup-lr")
    warmup_lr: float = option(1e-6, "learning rate at the start of the warm-up")
    clip_grad: Optional[float] = option(None, "gradient clipping threshold (off by default)")
    clip_mode: str = option("norm", "gradient clipping mode", choices=("norm", "value", "agc"))
    # regularisation and augmentation (timm create_transform / Mixup)
    drop_path: float = option(0.0, "stochastic depth rate")
    drop: float = option(0.0, "dropout rate")
    smoothing: float = option(0.1, "label smoothing")
    mixup: float = option(0.0, "Mixup alpha (0 = off; official recipe 0.8)")
    cutmix: float = option(0.0, "CutMix alpha (0 = off; official recipe 1.0)")
    mixup_prob: float = option(1.0, "probability of applying Mixup or CutMix to a batch")
    mixup_switch_prob: float = option(0.5, "probability of CutMix instead of Mixup when both are on")
    aa: Optional[str] = option(None, "AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (official recipe)")
    reprob: float = option(0.0, "random erasing probability (official recipe 0.25)")
    color_jitter: float = option(0.0, "color jitter strength")
    hflip: Optional[float] = option(None, "horizontal flip probability (default: 0 for digits, 0.5 otherwise)")
    scale: Optional[List[float]] = option(None, "random-resized-crop area range (default: 0.5 1 for digits, "
                                             "0.08 1 otherwise)", nargs=2)
    ratio: List[float] = option([0.75, 1.3333333], "random-resized-crop aspect range", nargs=2)
    crop_pct: Optional[float] = option(None, "eval centre-crop fraction (default: 1.0 for digits, the model's "
                                          "pretrained value otherwise)")
    interpolation: str = option("bicubic", "resize interpolation")
    # video
    num_frames: Optional[int] = option(None, "video: frames per clip (default: the model tag's protocol, e.g. 16)")
    frame_stride: Optional[int] = option(None, "video: frame step of dense sampling (default: the tag's protocol)")
    sampler: Optional[str] = option(None, "video: dense (Kinetics) or segment (TSN, Something-Something) sampling "
                                          "(default: the tag's protocol)", choices=("dense", "segment"))
    views: str = option("1x1", "video: validation views as CLIPSxCROPS, e.g. 4x1 or 1x3 (crops 1 or 3)")
    view_aggregation: str = option("prob", "video: combine views by averaging softmax probabilities (prob) or by "
                                           "summing raw logits (logits, the official protocol)",
                                   choices=("prob", "logits"))
    skip_bad: bool = option(False, "video: skip unreadable or too-short videos with a warning instead of stopping")
    frame_template: str = option(DEFAULT_FRAME_TEMPLATE, "video: file names of the frames in frame-folder videos, "
                                                         "Python format syntax with one integer field (SSv1: "
                                                         "{:05d}.jpg)")
    frame_start: int = option(DEFAULT_FRAME_START, "video: number of the first frame file of a frame folder")
    # dense tasks (--task segmentation / detection / pose)
    head: str = option("fpn", "segmentation head: Semantic FPN with mmseg's BatchNorm head (fpn), the same with the "
                              "Detectron2 GroupNorm head (fpn-gn), UperNet with an FCN auxiliary head (upernet) or "
                              "VT-FPN (vt-fpn)", choices=("fpn", "fpn-gn", "upernet", "vt-fpn"))
    detector: str = option("mask_rcnn", "detection: torchvision Mask R-CNN (mask_rcnn) or the official mmdet Cascade "
                                        "Mask R-CNN 3x heads (cascade_mask_rcnn)",
                           choices=("mask_rcnn", "cascade_mask_rcnn"))
    head_args: Dict[str, Any] = option({}, "dense heads: keyword overrides as JSON, e.g. '{\"neck_channels\": 128}' "
                                           "(segmentation), '{\"fpn_channels\": 128}' (detection), "
                                           "'{\"deconv_channels\": 128}' (pose)")
    num_classes: Optional[int] = option(None, "segmentation: number of classes when the data folder has no classes.txt")
    reduce_zero_label: bool = option(False, "segmentation: label 0 means 'other' (ADE20K): ignore it and shift the "
                                            "other labels down by one")
    seg_scale: Optional[List[int]] = option(None, "segmentation: rescale target LONG SHORT (keeping the aspect "
                                                  "ratio) before the random 0.5-2x resize and crop, and for evaluation "
                                                  "(default: 4*img-size img-size, i.e. 2048 512 as mmseg's ADE20K "
                                                  "recipe)", nargs=2, metavar=("LONG", "SHORT"))
    photometric: bool = option(True, "segmentation: random brightness/contrast/saturation/hue in training (mmseg)")
    inference: str = option("whole", "segmentation: evaluate whole images or sliding img-size windows at 2/3 stride",
                            choices=("whole", "slide"))
    max_size: Optional[int] = option(None, "detection: longest image side (default: img-size * 1333 / 800)")
    pose_aug: bool = option(True, "pose: random scale (+-35%%) and rotation (+-40 degrees, p=0.6), mmpose's COCO "
                                  "recipe")
    flip_test: bool = option(True, "pose: average with the mirrored crop at evaluation (shifted heatmaps, mmpose)")
    person_boxes: Optional[str] = option(None, "pose: person detections (COCO results JSON) to evaluate on instead "
                                               "of the ground-truth boxes")
    # engineering
    model_ema: bool = option(False, "keep an exponential moving average of the weights (timm ModelEmaV3)")
    model_ema_decay: float = option(0.9998, "EMA decay")
    model_ema_warmup: bool = option(True, "ramp the EMA decay up over the first steps (useful for short runs)")
    amp: bool = option(False, "mixed precision: bf16 autocast on CPU, fp16 with a gradient scaler on CUDA")
    amp_dtype: Optional[str] = option(None, "autocast dtype override", choices=("bfloat16", "float16"))
    channels_last: bool = option(False, "use channels_last memory format")
    fast_kernels: bool = option(True, "fused attention (scaled_dot_product_attention) and the fused optimizer step; "
                                      "false runs the unoptimised baseline (explicit attention matmuls, PyTorch's "
                                      "default optimizer implementation) for speed comparisons")
    grad_checkpointing: bool = option(False, "recompute block activations in backward to save memory")
    sync_bn: bool = option(False, "convert BatchNorm to SyncBatchNorm when running distributed")
    workers: int = option(2, "data-loading worker processes per training process")
    seed: int = option(0, "random seed (runs with the same seed and settings repeat exactly on the CPU)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True) (slower on GPU)")
    progress: Optional[bool] = option(None, "per-epoch progress bar (default: only on a terminal)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _json_dict(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def _arg_type(f: dataclasses.Field) -> Any:
    hint = str(f.type)
    if "bool" in hint:
        return _bool
    if "Dict" in hint:
        return _json_dict
    if "int" in hint:
        return int
    if "float" in hint:
        return float
    return str


def add_train_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Add one flag per :class:`TrainConfig` field. Defaults are suppressed so that only flags actually given
    override the YAML file and the built-in defaults."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (keys = option names); "
                                                              "flags given on the command line override it")
    for name, f in FIELDS.items():
        if name in skip:
            continue
        meta = dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: Dict[str, Any] = dict(help=f"{meta.pop('help')} (default: {default})", default=argparse.SUPPRESS)
        arg_type = _arg_type(f)
        if arg_type is _bool:
            kwargs.update(nargs="?", const=True, type=_bool, metavar="BOOL")
        else:
            kwargs.update(type=arg_type)
        kwargs.update(meta)
        parser.add_argument(_flag(name), dest=name, **kwargs)


def load_yaml(path: str | Path) -> Dict[str, Any]:
    """Read an options file with ``yaml.safe_load``; unknown keys are an error naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option: value, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        import difflib

        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, FIELDS, 1)) else u for u in unknown]
        raise ValueError(f"unknown option(s) in {path}: {', '.join(hints)}")
    return values


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    from ..checkpoint import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_from_args(args: argparse.Namespace, base: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Defaults < ``base`` (e.g. a resumed run's saved config) < ``--config`` YAML < explicitly given flags."""
    values: Dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update({k: v for k, v in vars(args).items() if k in FIELDS})
    try:
        config = TrainConfig(**values)
    except TypeError as e:
        raise ValueError(f"bad configuration: {e}") from None
    validate(config)
    return config


def parse_views(views: str) -> tuple[int, int]:
    """'4x3' → (4 clips, 3 crops); crops must be 1 or 3."""
    clips, sep, crops = str(views).lower().partition("x")
    if not (sep and clips.isdigit() and crops.isdigit()) or int(clips) < 1 or int(crops) not in (1, 3):
        raise ValueError(f"views must look like CLIPSxCROPS with crops 1 or 3 (e.g. 4x1, 1x3), got {views!r}")
    return int(clips), int(crops)


def validate(config: TrainConfig) -> None:
    """Reject option values that cannot work, naming the option."""
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.lr > 0, f"--lr must be positive, got {config.lr}"),
        (config.workers >= 0, f"--workers must be >= 0, got {config.workers}"),
        (config.img_size is None or (config.img_size >= 32 and config.img_size % 32 == 0),
         f"--img-size must be a positive multiple of 32, got {config.img_size}"),
        (0.0 <= config.smoothing < 1.0, f"--smoothing must be in [0, 1), got {config.smoothing}"),
        (0.0 <= config.drop_path < 1.0, f"--drop-path must be in [0, 1), got {config.drop_path}"),
        (config.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {config.warmup_epochs}"),
        (config.crop_pct is None or 0.0 < config.crop_pct <= 1.0, f"--crop-pct must be in (0, 1], got {config.crop_pct}"),
        (config.num_frames is None or config.num_frames >= 1, f"--num-frames must be at least 1, got {config.num_frames}"),
        (config.frame_stride is None or config.frame_stride >= 1,
         f"--frame-stride must be at least 1, got {config.frame_stride}"),
        (isinstance(config.frame_start, int) and config.frame_start >= 0,
         f"--frame-start must be a non-negative integer, got {config.frame_start}"),
    ]
    parse_views(config.views)
    try:
        check_frame_template(config.frame_template)
    except ValueError as e:
        raise ValueError(f"--frame-template: {e}") from None
    dense = config.task in ("segmentation", "detection", "pose")
    if dense:
        classification_only = [("--mixup", config.mixup > 0), ("--cutmix", config.cutmix > 0), ("--aa", config.aa),
                               ("--model-ema", config.model_ema), ("--reprob", config.reprob > 0)]
        used = [flag for flag, on in classification_only if on]
        checks.append((not used, f"{', '.join(used)} {'applies' if len(used) == 1 else 'apply'} only to "
                                 f"classification, not to --task {config.task}"))
        checks.append((config.data != "digits", f"digits is a classification dataset; --task {config.task} needs "
                                                 "--data with a dataset folder"))
    checks += [
        (config.num_classes is None or 1 <= config.num_classes <= 255,
         f"--num-classes must be in 1..255, got {config.num_classes}"),
        (config.seg_scale is None or min(config.seg_scale) >= 1,
         f"--seg-scale needs two positive sides, got {config.seg_scale}"),
        (config.detector == "mask_rcnn" or config.task == "detection",
         f"--detector {config.detector} applies only to --task detection, not to --task {config.task}"),
        (config.max_size is None or config.max_size >= (config.img_size or 800),
         f"--max-size must be at least the short side ({config.img_size or 800}), got {config.max_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
