"""Training options, defined once: the dataclass below feeds argparse (``--help``), YAML files and the saved run
config, and one schema checks every value wherever it comes from. Each :func:`option` declares its type (the
annotation), its range (``check=``, e.g. :data:`positive_int`) and its ``choices``; the same :class:`Check` converts
and validates flag text, YAML values and ``TrainConfig(...)`` arguments, and the argparse options of the other
commands use the same checks. Precedence: built-in defaults < ``--config FILE.yaml`` < flags given on the command
line."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

from .._io import atomic_path
from ..data.frames import DEFAULT_FRAME_START, DEFAULT_FRAME_TEMPLATE, check_frame_template

__all__ = [
    "TrainConfig", "OptionError", "Check", "Spec", "SCHEMA", "schema", "option", "add_train_arguments",
    "config_from_args", "load_yaml", "save_yaml", "parse_views", "validate", "one_of", "pair", "integer",
    "positive_int", "non_negative_int", "multiple_of_32", "class_count", "number", "positive_number",
    "non_negative_number", "probability", "rate", "fraction", "boolean", "text", "json_object", "device_name",
    "augment_policy", "clips_x_crops", "frame_file_template", "INTERPOLATIONS",
]


# ------------------------------------------------------------------------------------------------ option values
class OptionError(argparse.ArgumentTypeError, ValueError):
    """A bad option value. A :class:`Check` says what is allowed and what was given ("must be a positive integer,
    got 0"); the schema and argparse put the option in front, as the user wrote it. The CLI prints it as one line
    and exits with status 2, as argparse does for its own usage errors."""


class _Because(ValueError):
    """A conversion failure whose reason is worth adding to the message (a JSON or a timm parse error)."""


def _shown(value: Any) -> str:
    """A value as an error message quotes it: numbers as written, other text quoted, lists item by item."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return repr(value)
        return value.strip()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return repr(value)


def _labelled(label: str, message: str) -> str:
    """``--lr must be …`` / ``--frame-template: frame template must be …``."""
    return f"{label} {message}" if message.startswith("must ") else f"{label}: {message}"


def _anything(value: Any) -> bool:
    """The range test of checks without a range."""
    return True


class Check:
    """One option's conversion and validation, usable as an argparse ``type=`` and by the training schema:
    ``check(value)`` turns ``value`` (flag text, or a YAML or Python value) into the option's type, or raises
    :class:`OptionError` "must be ALLOWED, got VALUE". ``convert`` raises ``TypeError``/``ValueError`` for values
    it cannot convert, ``test`` tells whether a converted value is in range; ``documented`` adds ``allowed`` to the
    training ``--help``."""

    def __init__(self, allowed: str, convert: Callable[[Any], Any], test: Callable[[Any], bool] = _anything,
                 documented: bool = True) -> None:
        self.allowed, self.convert, self.test, self.documented = allowed, convert, test, documented
        self.__name__ = allowed  # argparse names a type by it

    def __call__(self, value: Any) -> Any:
        detail = ""
        try:
            converted = self.convert(value)
        except OptionError:
            raise
        except _Because as e:
            detail = f" ({e})"
        except (TypeError, ValueError):
            pass
        else:
            if self.test(converted):
                return converted
        raise OptionError(f"must be {self.allowed}, got {_shown(value)}{detail}")

    def __repr__(self) -> str:
        return f"Check({self.allowed!r})"


def _to_int(value: Any) -> int:
    """An int, or text of one; never a bool or a float (``3.5`` epochs is a mistake, not 3)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(value)
    return int(value)


def _to_float(value: Any) -> float:
    """A finite float from a number or its text (``5e-4``, which YAML 1.1 reads as a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(value)
    return result


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _to_bool(value: Any) -> bool:
    """A bool, 0/1, or true/false, yes/no, on/off text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(value)


def _to_text(value: Any) -> str:
    """Non-blank text, unchanged (a YAML number for a text option is refused, not turned into text)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value


def _to_dict(value: Any) -> Dict[str, Any]:
    """A mapping with string keys: a YAML / Python dict, or the JSON text of an object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _Because(f"not valid JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(value)
    return dict(value)


_MPS = torch.backends.mps.is_built()
DEVICES = "cpu, cuda, cuda:N, mps or auto" if _MPS else "cpu, cuda, cuda:N or auto"


def _to_device(value: Any) -> str:
    """A device name ``init_distributed`` understands; whether CUDA is there is checked when the run starts."""
    if isinstance(value, str) and (value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value, re.ASCII)
                                   or (value == "mps" and _MPS)):
        return value
    raise ValueError(value)


_POLICY_ERRORS = (AssertionError, KeyError, IndexError, TypeError, ValueError)  # timm rejects policies with asserts


def _to_policy(value: Any) -> str:
    """A policy string that timm's own parser accepts, tried the way ``timm.data.create_transform`` dispatches it."""
    policy = _to_text(value)
    build = (rand_augment_transform if policy.startswith("rand") else
             augment_and_mix_transform if policy.startswith("augmix") else auto_augment_transform)
    try:
        build(policy, dict(translate_const=100, img_mean=(124, 116, 104)))
    except _POLICY_ERRORS as e:
        reason = " ".join(str(e).split())
        raise _Because(f"timm: {reason}" if reason else "timm cannot parse it") from None
    return policy


def _to_views(value: Any) -> str:
    """``CLIPSxCROPS`` text, normalised (``04X1`` → ``4x1``)."""
    match = re.fullmatch(r"(\d+)x(\d+)", value.strip().lower(), re.ASCII) if isinstance(value, str) else None
    if match is None or int(match[1]) < 1 or int(match[2]) not in (1, 3):
        raise ValueError(value)
    return f"{int(match[1])}x{int(match[2])}"


def _to_frame_template(value: Any) -> str:
    """A frame-file template :func:`check_frame_template` accepts."""
    if not isinstance(value, str):
        raise TypeError(value)
    try:
        check_frame_template(value)
    except ValueError as e:
        raise OptionError(str(e)) from None  # its own message names the template rule and the value
    return value


integer = Check("an integer", _to_int)
positive_int = Check("a positive integer", _to_int, lambda v: v >= 1)
non_negative_int = Check("a non-negative integer", _to_int, lambda v: v >= 0)
multiple_of_32 = Check("a positive multiple of 32", _to_int, lambda v: v >= 32 and v % 32 == 0)
class_count = Check("an integer in 1..255", _to_int, lambda v: 1 <= v <= 255)
number = Check("a finite number", _to_float)
positive_number = Check("a positive number", _to_float, lambda v: v > 0)
non_negative_number = Check("a non-negative number", _to_float, lambda v: v >= 0)
probability = Check("a probability in [0, 1]", _to_float, lambda v: 0 <= v <= 1)
rate = Check("a number in [0, 1)", _to_float, lambda v: 0 <= v < 1)
fraction = Check("a number in (0, 1]", _to_float, lambda v: 0 < v <= 1)
boolean = Check("true or false (also yes/no, on/off, 1/0)", _to_bool, documented=False)
text = Check("a non-empty string", _to_text, documented=False)
json_object = Check("a JSON object such as '{\"depth\": [1, 1, 3, 2]}'", _to_dict, documented=False)
device_name = Check(f"one of {DEVICES}", _to_device, documented=False)
augment_policy = Check("a timm augmentation policy such as rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5 (AugMix) "
                       "or original (AutoAugment)", _to_policy, documented=False)
clips_x_crops = Check("CLIPSxCROPS with at least 1 clip and 1 or 3 crops, e.g. 4x1 or 1x3", _to_views,
                      documented=False)
frame_file_template = Check("a file name with one integer field such as img_{:05d}.jpg or {:05d}.jpg",
                            _to_frame_template, documented=False)
# timm's resize interpolations (timm.data.transforms.str_to_interp_mode); 'random' is for training crops only
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")


def one_of(*choices: str) -> Check:
    """A check accepting exactly one of ``choices`` (what argparse ``choices=`` does for a flag)."""
    def convert(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(value)

    return Check(f"one of {', '.join(choices)}", convert, documented=False)


def pair(item: Check, allowed: str, ordered: bool = True) -> Check:
    """A check of two values (an ``nargs=2`` flag, a two-element YAML list), each passing ``item``; ``ordered``:
    the first must not exceed the second."""
    def convert(value: Any) -> List[Any]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != 2:
            raise TypeError(value)
        try:
            return [item(v) for v in value]
        except OptionError:
            raise ValueError(value) from None

    return Check(allowed, convert, (lambda v: v[0] <= v[1]) if ordered else _anything)


def option(default: Any, help: str, check: Optional[Check] = None, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text, its :class:`Check` (default: from ``choices`` or from the annotated
    type, see :func:`schema`) and argparse extras such as ``choices``/``nargs``."""
    metadata = dict(help=help, **kwargs)
    if check is not None:
        metadata["check"] = check
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


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
                                        "width 3/4 of it (256)", check=multiple_of_32)
    output: Optional[str] = option(None, "run directory (default: runs/<model>-<data>-<time>)")
    resume: Optional[str] = option(None, "continue the run in this directory exactly where it stopped")
    overwrite: bool = option(False, "start again in an --output folder that holds a run: the old run is first moved "
                                    "aside to FOLDER.old-<time> (never deleted); without it such a folder is refused")
    # schedule and optimisation (timm create_optimizer_v2 / create_scheduler_v2)
    epochs: int = option(30, "number of epochs", check=positive_int)
    batch_size: int = option(64, "batch size per process", check=positive_int)
    opt: str = option("adamw", "optimizer name understood by timm.optim.create_optimizer_v2")
    lr: float = option(1e-3, "peak learning rate (absolute, not scaled by batch size)", check=positive_number)
    weight_decay: float = option(0.05, "weight decay (not applied to norms, biases, 1-D params and no_weight_decay())",
                                 check=non_negative_number)
    opt_eps: float = option(1e-8, "optimizer epsilon", check=positive_number)
    momentum: float = option(0.9, "SGD momentum", check=rate)
    sched: str = option("cosine", "learning-rate schedule (timm create_scheduler_v2)")
    min_lr: float = option(1e-5, "final learning rate of the schedule", check=non_negative_number)
    warmup_epochs: float = option(1.0, "linear warm-up epochs from --warmup-lr", check=non_negative_number)
    warmup_lr: float = option(1e-6, "learning rate at the start of the warm-up", check=non_negative_number)
    clip_grad: Optional[float] = option(None, "gradient clipping threshold (off by default)", check=positive_number)
    clip_mode: str = option("norm", "gradient clipping mode", choices=("norm", "value", "agc"))
    # regularisation and augmentation (timm create_transform / Mixup)
    drop_path: float = option(0.0, "stochastic depth rate", check=rate)
    drop: float = option(0.0, "dropout rate", check=rate)
    smoothing: float = option(0.1, "label smoothing", check=rate)
    mixup: float = option(0.0, "Mixup alpha (0 = off; official recipe 0.8)", check=non_negative_number)
    cutmix: float = option(0.0, "CutMix alpha (0 = off; official recipe 1.0)", check=non_negative_number)
    mixup_prob: float = option(1.0, "probability of applying Mixup or CutMix to a batch", check=probability)
    mixup_switch_prob: float = option(0.5, "probability of CutMix instead of Mixup when both are on",
                                      check=probability)
    aa: Optional[str] = option(None, "AutoAugment/RandAugment/AugMix policy as timm parses it, e.g. "
                                     "rand-m9-mstd0.5-inc1 (official recipe)", check=augment_policy)
    reprob: float = option(0.0, "random erasing probability (official recipe 0.25)", check=probability)
    color_jitter: float = option(0.0, "color jitter strength", check=non_negative_number)
    hflip: Optional[float] = option(None, "horizontal flip probability (default: 0 for digits, 0.5 otherwise)",
                                    check=probability)
    scale: Optional[List[float]] = option(None, "random-resized-crop area range (default: 0.5 1 for digits, "
                                             "0.08 1 otherwise)", nargs=2,
                                          check=pair(fraction, "two numbers LOW HIGH in (0, 1] with LOW <= HIGH"))
    ratio: List[float] = option([0.75, 1.3333333], "random-resized-crop aspect range", nargs=2,
                                check=pair(positive_number, "two positive numbers LOW HIGH with LOW <= HIGH"))
    crop_pct: Optional[float] = option(None, "eval centre-crop fraction (default: 1.0 for digits, the model's "
                                          "pretrained value otherwise)", check=fraction)
    interpolation: str = option("bicubic", "resize interpolation", choices=INTERPOLATIONS)
    # video
    num_frames: Optional[int] = option(None, "video: frames per clip (default: the model tag's protocol, e.g. 16)",
                                       check=positive_int)
    frame_stride: Optional[int] = option(None, "video: frame step of dense sampling (default: the tag's protocol)",
                                         check=positive_int)
    sampler: Optional[str] = option(None, "video: dense (Kinetics) or segment (TSN, Something-Something) sampling "
                                          "(default: the tag's protocol)", choices=("dense", "segment"))
    views: str = option("1x1", "video: validation views as CLIPSxCROPS, e.g. 4x1 or 1x3 (crops 1 or 3)",
                        check=clips_x_crops)
    view_aggregation: str = option("prob", "video: combine views by averaging softmax probabilities (prob) or by "
                                           "summing raw logits (logits, the official protocol)",
                                   choices=("prob", "logits"))
    skip_bad: bool = option(False, "drop unreadable samples (images, corrupt or too-short videos, bad segmentation "
                                   "pairs) with a warning, and count them, instead of stopping")
    frame_template: str = option(DEFAULT_FRAME_TEMPLATE, "video: file names of the frames in frame-folder videos, "
                                                         "Python format syntax with one integer field (SSv1: "
                                                         "{:05d}.jpg)", check=frame_file_template)
    frame_start: int = option(DEFAULT_FRAME_START, "video: number of the first frame file of a frame folder",
                              check=non_negative_int)
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
    num_classes: Optional[int] = option(None, "segmentation: number of classes when the data folder has no classes.txt",
                                        check=class_count)
    reduce_zero_label: bool = option(False, "segmentation: label 0 means 'other' (ADE20K): ignore it and shift the "
                                            "other labels down by one")
    seg_scale: Optional[List[int]] = option(None, "segmentation: rescale target LONG SHORT (keeping the aspect "
                                                  "ratio) before the random 0.5-2x resize and crop, and for evaluation "
                                                  "(default: 4*img-size img-size, i.e. 2048 512 as mmseg's ADE20K "
                                                  "recipe)", nargs=2, metavar=("LONG", "SHORT"),
                                            check=pair(positive_int, "two positive integers LONG SHORT", ordered=False))
    photometric: bool = option(True, "segmentation: random brightness/contrast/saturation/hue in training (mmseg)")
    inference: str = option("whole", "segmentation: evaluate whole images or sliding img-size windows at 2/3 stride",
                            choices=("whole", "slide"))
    max_size: Optional[int] = option(None, "detection: longest image side (default: img-size * 1333 / 800)",
                                     check=positive_int)
    pose_aug: bool = option(True, "pose: random scale (+-35%%) and rotation (+-40 degrees, p=0.6), mmpose's COCO "
                                  "recipe")
    flip_test: bool = option(True, "pose: average with the mirrored crop at evaluation (shifted heatmaps, mmpose)")
    person_boxes: Optional[str] = option(None, "pose: person detections (COCO results JSON) to evaluate on instead "
                                               "of the ground-truth boxes")
    # engineering
    model_ema: bool = option(False, "keep an exponential moving average of the weights (timm ModelEmaV3)")
    model_ema_decay: float = option(0.9998, "EMA decay", check=rate)
    model_ema_warmup: bool = option(True, "ramp the EMA decay up over the first steps (useful for short runs)")
    amp: bool = option(False, "mixed precision: bf16 autocast on CPU, fp16 with a gradient scaler on CUDA")
    amp_dtype: Optional[str] = option(None, "autocast dtype override", choices=("bfloat16", "float16"))
    channels_last: bool = option(False, "use channels_last memory format")
    fast_kernels: bool = option(True, "fused attention (scaled_dot_product_attention) and the fused optimizer step; "
                                      "false runs the unoptimised baseline (explicit attention matmuls, PyTorch's "
                                      "default optimizer implementation) for speed comparisons")
    grad_checkpointing: bool = option(False, "recompute block activations in backward to save memory")
    sync_bn: bool = option(False, "convert BatchNorm to SyncBatchNorm when running distributed")
    workers: int = option(2, "data-loading worker processes per training process", check=non_negative_int)
    seed: int = option(0, "random seed (runs with the same seed and settings repeat exactly on the CPU)",
                       check=non_negative_int)
    device: str = option("auto", "cpu, cuda, cuda:N or auto", check=device_name)
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True) (slower on GPU)")
    progress: Optional[bool] = option(None, "per-epoch progress bar (default: only on a terminal)")

    def __post_init__(self) -> None:
        """Convert and check every value, as for flags and YAML (:func:`validate`)."""
        validate(self)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

_TYPE_CHECKS: Dict[type, Check] = {bool: boolean, int: integer, float: number, str: text, dict: json_object}


@dataclass(frozen=True)
class Spec:
    """How one option is checked: its :class:`Check`, and whether None (unset: the default of ``Optional`` options)
    is allowed."""

    name: str
    check: Check
    optional: bool

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any, label: str) -> Any:
        """``value`` converted to the option's type, or :class:`OptionError` naming ``label`` (``--lr``,
        ``lr in opts.yaml``), what was given and what is allowed."""
        if value is None and self.optional:
            return None
        try:
            return self.check(value)
        except OptionError as e:
            raise OptionError(_labelled(label, str(e))) from None


def schema(cls: type) -> Dict[str, Spec]:
    """The :class:`Spec` of every field of an options dataclass: the ``check=`` given to :func:`option`, else one of
    its ``choices``, else the check of the annotated type (bool, int, float, str, dict); ``Optional[...]`` fields also
    take None. A field of another type without ``check=`` is a ``TypeError`` at import."""
    hints = typing.get_type_hints(cls)
    specs: Dict[str, Spec] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        check = f.metadata.get("check")
        if check is None and "choices" in f.metadata:
            check = one_of(*f.metadata["choices"])
        if check is None:
            check = _TYPE_CHECKS.get(typing.get_origin(base) or base)
        if check is None:
            raise TypeError(f"{cls.__name__}.{f.name}: declare check= in option(...) for the type {hint}")
        specs[f.name] = Spec(f.name, check, optional)
    return specs


SCHEMA = schema(TrainConfig)


def add_train_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Add one flag per :class:`TrainConfig` field. Flags take text (argparse checks only ``choices`` and the number
    of values); :func:`config_from_args` converts and checks it with the schema. Defaults are suppressed so that
    only flags actually given override the YAML file and the built-in defaults."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (keys = option names); "
                                                              "flags given on the command line override it")
    for name, spec in SCHEMA.items():
        if name in skip:
            continue
        f = FIELDS[name]
        extras = {k: v for k, v in f.metadata.items() if k not in ("help", "check")}
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = f"{spec.check.allowed}; " if spec.check.documented else ""
        kwargs: Dict[str, Any] = dict(help=f"{f.metadata['help']} ({allowed}default: {default})",
                                      default=argparse.SUPPRESS)
        if spec.check is boolean:
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        kwargs.update(extras)
        parser.add_argument(spec.flag, dest=name, **kwargs)


def load_yaml(path: str | Path) -> Dict[str, Any]:
    """Read an options file with ``yaml.safe_load``: each value converted and checked by the schema (``lr: 5e-4``,
    which YAML reads as text, becomes a float); a bad value or an unknown key is an :class:`OptionError` naming the
    key and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of option: value, got {type(raw).__name__}")
    names = {key: str(key).replace("-", "_") for key in raw}
    unknown = sorted(str(key) for key, name in names.items() if name not in SCHEMA)
    if unknown:
        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, SCHEMA, 1)) else u
                 for u in unknown]
        raise OptionError(f"unknown option(s) in {path}: {', '.join(hints)}")
    return {names[key]: SCHEMA[names[key]].coerce(value, f"{key} in {path}") for key, value in raw.items()}


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_from_args(args: argparse.Namespace, base: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Defaults < ``base`` (e.g. a resumed run's saved config) < ``--config`` YAML < explicitly given flags, each
    value checked by the schema; errors name the flag (``--lr``) or the YAML key and file (``lr in opts.yaml``)."""
    values: Dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update({name: SCHEMA[name].coerce(value, SCHEMA[name].flag) for name, value in vars(args).items()
                   if name in SCHEMA})
    unknown = sorted(set(values) - set(SCHEMA))
    if unknown:
        raise OptionError(f"unknown option(s): {', '.join(unknown)}")
    return TrainConfig(**values)


def parse_views(value: str) -> Tuple[int, int]:
    """'4x3' → (4 clips, 3 crops); an :class:`OptionError` unless CLIPSxCROPS with crops 1 or 3."""
    clips, _, crops = SCHEMA["views"].coerce(value, "views").partition("x")
    return int(clips), int(crops)


def validate(config: TrainConfig) -> None:
    """Convert every option of ``config`` to its declared type in place and reject values and combinations that
    cannot work: an :class:`OptionError` naming the option as a flag, the value and what is allowed."""
    for name, spec in SCHEMA.items():
        setattr(config, name, spec.coerce(getattr(config, name), spec.flag))
    checks = []
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
        (config.detector == "mask_rcnn" or config.task == "detection",
         f"--detector {config.detector} applies only to --task detection, not to --task {config.task}"),
        (config.max_size is None or config.max_size >= (config.img_size or 800),
         f"--max-size must be at least the short side ({config.img_size or 800}), got {config.max_size}"),
        (config.seed < 2**32, f"--seed must be below 2**32 (NumPy's seed range), got {config.seed}"),
    ]
    for ok, message in checks:
        if not ok:
            raise OptionError(message)
