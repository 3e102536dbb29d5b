"""Video data: robust PyAV decoding, dense / segment frame samplers, clip transforms and video datasets."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "VIDEO_MEAN", "VIDEO_STD", "VIDEO_EXTENSIONS", "VideoReadError", "count_frames", "read_video_frames",
    "dense_indices", "segment_indices", "VideoTransform", "VideoDataset", "load_video_views",
]

from ..models.uniformer_video import VIDEO_MEAN, VIDEO_STD  # all UniFormer video recipes (0-1 scale)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
SAMPLERS = ("dense", "segment")

PathLike = Union[str, os.PathLike]
_AV_ERRORS = (av.error.FFmpegError, OSError, EOFError, RuntimeError, UnicodeDecodeError)


class VideoReadError(ValueError):
    """A video file that cannot be used: corrupt, empty, without a video stream or too short for the sampler.

    ``VideoReadError(path, reason)`` gives the message ``"bad video {path}: {reason}"`` and keeps ``path`` and
    ``reason`` as attributes; a single argument is taken as the whole message (as when re-raised by a DataLoader).
    ``decoded`` is the number of frames actually decoded when a requested index lay past the end, else ``None``.
    """

    def __init__(self, path: PathLike, reason: Optional[str] = None, decoded: Optional[int] = None) -> None:
        self.path = None if reason is None else str(path)
        self.reason, self.decoded = reason, decoded
        super().__init__(str(path) if reason is None else f"bad video {path}: {reason}")


@contextmanager
def _open_video(path: PathLike) -> Iterator[Tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open ``path`` and yield (container, first video stream); every PyAV failure becomes ``VideoReadError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "the file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except _AV_ERRORS as e:
        raise VideoReadError(path, f"corrupt or not a video file FFmpeg can read ({e})") from None
    with container:
        if not container.streams.video:
            raise VideoReadError(path, "the file has no video stream")
        try:
            yield container, container.streams.video[0]
        except _AV_ERRORS as e:
            raise VideoReadError(path, f"corrupt video data ({e})") from None


def count_frames(path: PathLike) -> int:
    """Number of frames of the first video stream, counted exactly (variable frame rates included) by demuxing,
    without decoding, its non-empty, non-discarded packets. The container's own count is not used: AVI counts the
    empty drop chunks with which it stores variable frame rates, Matroska/WebM have none, and MP4 edit lists can
    discard frames. A damaged stream may decode fewer frames; ``VideoDataset`` then re-samples on those."""
    with _open_video(path) as (container, stream):
        return sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)


def read_video_frames(path: PathLike, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at the given 0-based ``indices`` (any order, duplicates allowed) and return them in the
    order requested as a uint8 array (len(indices), H, W, 3), RGB. Decodes sequentially and stops at the largest
    index; frames whose size changes mid-stream are rescaled to the first frame's size. An index past the last
    decodable frame raises ``VideoReadError`` naming the file."""
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0:
        raise ValueError(f"frame indices must be a non-empty list of non-negative ints, got {indices}")
    wanted, last, frames = set(indices), max(indices), {}
    decoded, size = 0, None
    with _open_video(path) as (container, stream):
        for frame in container.decode(stream):
            size = size or (frame.width, frame.height)
            if decoded in wanted:
                frames[decoded] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            decoded += 1
            if decoded > last:
                break
    if decoded <= last:
        reason = f"has {decoded} decodable frames, frame {last} was requested" if decoded else "no decodable frames"
        raise VideoReadError(path, reason, decoded=decoded)
    return np.stack([frames[i] for i in indices])


def _check_sampling(num_total: int, num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_total < num_frames:
        raise ValueError(f"the video has {num_total} frames, the sampler needs {num_frames}")


def dense_indices(num_total: int, num_frames: int, stride: int, *, train: bool, clip_index: int = 0,
                  num_clips: int = 1) -> List[int]:
    """Dense (Kinetics) sampling: ``num_frames`` indices ``stride`` apart in a window of span
    (num_frames-1)*stride+1 that starts uniformly at random when training (torch's global RNG) and, at test time,
    at the ``clip_index``-th of ``num_clips`` evenly spaced starts (the centred window when num_clips == 1).
    Indices past the end are clamped to the last frame; fewer than ``num_frames`` frames raise ``ValueError``."""
    _check_sampling(num_total, num_frames)
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index must be in [0, {num_clips}), got {clip_index}")
    max_start = max(0, num_total - ((num_frames - 1) * stride + 1))
    if train:
        start = int(torch.randint(0, max_start + 1, (1,)).item())
    elif num_clips == 1:
        start = max_start // 2
    else:
        start = clip_index * (max_start // (num_clips - 1))
    return [min(start + k * stride, num_total - 1) for k in range(num_frames)]


def segment_indices(num_total: int, num_frames: int, *, train: bool) -> List[int]:
    """Segment (TSN, Something-Something) sampling: split [0, num_total) into ``num_frames`` equal segments
    (boundaries floor(k * num_total / num_frames)) and take a uniformly random frame of each when training (torch's
    global RNG), the centre frame (start + end - 1) // 2 at test time. Too-short videos raise ``ValueError``."""
    _check_sampling(num_total, num_frames)
    bounds = [k * num_total // num_frames for k in range(num_frames + 1)]
    if train:
        return [int(torch.randint(a, b, (1,)).item()) for a, b in zip(bounds[:-1], bounds[1:])]
    return [(a + b - 1) // 2 for a, b in zip(bounds[:-1], bounds[1:])]


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class VideoTransform:
    """Turns a uint8 clip (T, H, W, 3) (numpy or torch) into a float tensor normalised with ``mean``/``std`` (0-1
    scale). Training: one RandomResizedCrop box (``scale``, ``ratio``) for all frames, resized to ``size`` x ``size``,
    and a flip of the whole clip with probability ``hflip`` (use 0 for direction-sensitive data); returns (C, T, S, S).
    Evaluation: short side resized to ``size``, then 1 centre crop or 3 crops along the long side (first and last
    touching the borders); returns (num_crops, C, T, S, S). Bilinear, antialiased; randomness from torch's RNG."""

    def __init__(self, size: int, train: bool, num_crops: int = 1, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5, mean: Sequence[float] = VIDEO_MEAN,
                 std: Sequence[float] = VIDEO_STD) -> None:
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        self.size, self.train, self.num_crops, self.hflip = int(size), train, num_crops, hflip
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:  # (T, C, H, W) in [0, 1] -> normalised (C, T, H, W)
        return ((x - self.mean) / self.std).permute(1, 0, 2, 3).contiguous()

    def __call__(self, clip: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(clip)) if not isinstance(clip, torch.Tensor) else clip
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected a clip of shape (T, H, W, 3), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div(255.0)  # (T, 3, H, W); never in place on the caller's tensor
        s = self.size
        if self.train:
            from torchvision.transforms import RandomResizedCrop

            i, j, h, w = RandomResizedCrop.get_params(x, list(self.scale), list(self.ratio))
            x = _resize(x[..., i:i + h, j:j + w], (s, s))
            if self.hflip > 0 and torch.rand(1).item() < self.hflip:
                x = x.flip(-1)
            return self._normalize(x)
        h, w = x.shape[-2:]
        long = max(s, int(s * max(h, w) / min(h, w)))
        x = _resize(x, (s, long) if w >= h else (long, s))
        offsets = [(long - s) // 2] if self.num_crops == 1 else [0, (long - s) // 2, long - s]
        crops = [x[..., :, o:o + s] if w >= h else x[..., o:o + s, :] for o in offsets]
        return torch.stack([self._normalize(c) for c in crops])


def _check_options(sampler: str, num_frames: int, stride: int, num_clips: int, train: bool) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if num_frames < 1 or stride < 1 or num_clips < 1:
        raise ValueError(f"num_frames, stride and num_clips must be >= 1, got {num_frames}, {stride}, {num_clips}")
    if sampler == "segment" and num_clips != 1 and not train:
        raise ValueError(f"segment sampling takes the same frames for every clip: use num_clips=1, not {num_clips}")


def _load_clips(path: PathLike, sampler: str, num_frames: int, stride: int, num_clips: int, train: bool,
                transform: VideoTransform) -> torch.Tensor:
    """Decode and transform one video: (C, T, S, S) when training, (num_clips * num_crops, C, T, S, S) otherwise."""

    def sample(total: int) -> List[int]:
        if total < num_frames:
            raise VideoReadError(path, f"has {total} frames, the sampler needs {num_frames}")
        if sampler == "segment":
            return segment_indices(total, num_frames, train=train)
        return [i for c in range(1 if train else num_clips)
                for i in dense_indices(total, num_frames, stride, train=train, clip_index=c, num_clips=num_clips)]

    total = count_frames(path)
    try:
        frames = read_video_frames(path, sample(total))
    except VideoReadError as e:  # fewer decodable frames than packets (e.g. a stream cut before a keyframe)
        if e.decoded is None or e.decoded >= total:
            raise
        frames = read_video_frames(path, sample(e.decoded))
    if train:
        return transform(frames)
    return torch.cat([transform(clip) for clip in np.split(frames, len(frames) // num_frames)])


class VideoDataset(Dataset):
    """Labelled videos under ``root``, from a list file ``root/{split}.txt`` ("relative/path LABEL" per line, names
    from an optional ``root/classes.txt``) or else from class folders ``root/{split}/<class>/<videos>``. Items are
    (tensor, label): (C, T, S, S) from one random window when training (``train`` defaults to split == "train"),
    (num_clips * num_crops, C, T, S, S) clip-major views otherwise. Bad videos raise ``VideoReadError`` naming the
    file, or with ``skip_bad`` are skipped with a warning in favour of the next sample."""

    def __init__(self, root: PathLike, split: str, num_frames: int = 8, stride: int = 4, sampler: str = "dense",
                 img_size: int = 224, train: Optional[bool] = None, num_clips: int = 1, num_crops: int = 1,
                 hflip: float = 0.5, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 mean: Sequence[float] = VIDEO_MEAN, std: Sequence[float] = VIDEO_STD, skip_bad: bool = False) -> None:
        self.root, self.split = Path(root), split
        self.train = split == "train" if train is None else train
        _check_options(sampler, num_frames, stride, num_clips, self.train)
        self.num_frames, self.stride, self.sampler, self.skip_bad = num_frames, stride, sampler, skip_bad
        self.skipped = 0  # bad videos skipped so far (per process: DataLoader workers count their own)
        self.num_clips = 1 if self.train else num_clips
        self.num_views = 1 if self.train else num_clips * num_crops
        self.transform = VideoTransform(img_size, self.train, 1 if self.train else num_crops, scale=scale,
                                        ratio=ratio, hflip=hflip, mean=mean, std=std)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video data folder not found: {self.root}")
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            self.classes, self.samples = self._from_list(list_file)
        elif (self.root / split).is_dir():
            self.classes, self.samples = self._from_folders(self.root / split)
        else:
            raise FileNotFoundError(f"no {list_file.name} list file and no {split}/ class folder in {self.root}")

    def _from_list(self, list_file: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
        entries = []  # (line number, line, path, label)
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
                raise ValueError(f"{list_file}, line {n}: expected 'relative/path LABEL' (LABEL a non-negative "
                                 f"integer), got {line!r}")
            path = self.root / parts[0]
            if not path.is_file():
                raise FileNotFoundError(f"video listed in {list_file}, line {n}, not found: {path}")
            entries.append((n, line, str(path), int(parts[1])))
        if not entries:
            raise ValueError(f"list file {list_file} lists no videos")
        names_file = self.root / "classes.txt"
        if names_file.is_file():
            classes = [name.strip() for name in names_file.read_text().splitlines()]
            while classes and not classes[-1]:
                classes.pop()
            for n, line, _, label in entries:
                if label >= len(classes):
                    raise ValueError(f"{list_file}, line {n}: label {label} is out of range, {names_file} names "
                                     f"{len(classes)} classes (labels 0..{len(classes) - 1}): {line!r}")
        else:
            classes = [str(i) for i in range(max(e[3] for e in entries) + 1)]
        return classes, [(path, label) for _, _, path, label in entries]

    @staticmethod
    def _from_folders(split_dir: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
        class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<video>)")
        samples = []
        for label, d in enumerate(class_dirs):
            videos = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS
                            and not f.name.startswith("."))
            if not videos:
                raise ValueError(f"class folder {d} contains no videos (extensions {', '.join(VIDEO_EXTENSIONS)})")
            samples += [(str(f), label) for f in videos]
        return [d.name for d in class_dirs], samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        for attempt in range(len(self.samples) if self.skip_bad else 1):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                return _load_clips(path, self.sampler, self.num_frames, self.stride, self.num_clips, self.train,
                                   self.transform), label
            except (VideoReadError, FileNotFoundError) as e:
                if not self.skip_bad:
                    raise
                self.skipped += 1
                warnings.warn(f"skipping {path} ({self.skipped} skipped so far in this process): "
                              f"{getattr(e, 'reason', None) or e}", stacklevel=2)
        raise VideoReadError(f"every video of {self.root} ({self.split}) is unreadable or too short")


def load_video_views(path: PathLike, num_frames: int = 16, stride: int = 4, sampler: str = "dense",
                     img_size: int = 224, num_clips: int = 1, num_crops: int = 1, mean: Sequence[float] = VIDEO_MEAN,
                     std: Sequence[float] = VIDEO_STD) -> torch.Tensor:
    """The evaluation views of one video file (for ``predict-video``): a tensor (num_clips * num_crops, C, T, S, S),
    clip-major. Raises ``FileNotFoundError`` or ``VideoReadError`` naming the file."""
    _check_options(sampler, num_frames, stride, num_clips, train=False)
    transform = VideoTransform(img_size, False, num_crops, mean=mean, std=std)
    return _load_clips(path, sampler, num_frames, stride, num_clips, False, transform)
