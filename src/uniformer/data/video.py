"""Video data: robust PyAV decoding, JPEG frame folders, dense / segment frame samplers, clip transforms and video
datasets. A video is read through a frame reader (a video file or a folder of frames: count frames, read frames at
indices), so both kinds share the samplers, transforms and views."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "VIDEO_MEAN", "VIDEO_STD", "VIDEO_EXTENSIONS", "VideoReadError", "count_frames", "read_video_frames",
    "FrameReader", "VideoFileReader", "FrameFolderReader", "open_frame_reader", "dense_indices", "segment_indices",
    "VideoTransform", "VideoDataset", "load_video_views",
]

from ..models.uniformer_video import VIDEO_MEAN, VIDEO_STD  # all UniFormer video recipes (0-1 scale)
from .datasets import IMG_EXTENSIONS, BadSample
from .frames import DEFAULT_FRAME_START, DEFAULT_FRAME_TEMPLATE, check_frame_template, count_listed_frames, frame_name
from .images import load_image
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


class FrameReader(Protocol):
    """One video as the datasets see it: ``path`` (named in errors), ``count()`` frames, ``read(indices)`` → uint8
    (len(indices), H, W, 3) RGB in the order requested. Failures raise ``VideoReadError`` naming the video."""

    path: str

    def count(self) -> int: ...

    def read(self, indices: Sequence[int]) -> np.ndarray: ...


class VideoFileReader:
    """A video file decoded with PyAV (:func:`count_frames`, :func:`read_video_frames`)."""

    def __init__(self, path: PathLike) -> None:
        self.path = str(path)

    def count(self) -> int:
        return count_frames(self.path)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return read_video_frames(self.path, indices)


class FrameFolderReader:
    """A video stored as a folder of image frames: 0-based frame k is the file ``template.format(start + k)``
    (mmaction2's rawframes: ``img_{:05d}.jpg`` from 1; Something-Something V1: ``{:05d}.jpg`` from 1). Frames are
    decoded with PIL as 8-bit RGB, only those requested; a frame whose size differs from the first one read is resized
    to it. ``num_frames`` is the count a list file gives (``listed_at`` names its line), checked against the folder;
    without it the frames present without a gap from ``start`` are counted."""

    def __init__(self, path: PathLike, template: str = DEFAULT_FRAME_TEMPLATE, start: int = DEFAULT_FRAME_START,
                 num_frames: Optional[int] = None, listed_at: Optional[str] = None) -> None:
        check_frame_template(template, start)
        self.path, self.template, self.start = str(path), template, start
        self.num_frames, self.listed_at = num_frames, listed_at

    def _file(self, k: int) -> Path:
        return Path(self.path) / frame_name(self.template, self.start + k)

    def _scan(self) -> Tuple[int, Optional[int], List[str]]:
        folder = Path(self.path)
        if not folder.is_dir():
            raise FileNotFoundError(f"frame folder not found: {folder}")
        names = sorted(e.name for e in os.scandir(folder) if e.is_file())
        return (*count_listed_frames(names, self.template, self.start), names)

    def _found(self, count: int, later: Optional[int]) -> str:
        text = f"{count} ({self.template} from {self.start})" if count else f"no frame {self._file(0).name}"
        return text + (f", then {self._file(count)} is missing although {frame_name(self.template, later)} exists"
                       if later is not None else "")

    def count(self) -> int:
        n = self.num_frames
        if n is not None and n >= 1 and self._file(n - 1).is_file() and not self._file(n).is_file():
            return n  # the listed count holds: the last listed frame exists and the next one does not
        count, later, names = self._scan()
        if n is not None:
            raise VideoReadError(self.path, f"{self.listed_at or 'the list file'} gives {n} frames, the folder has "
                                            f"{self._found(count, later)}")
        if later is not None:
            raise VideoReadError(self.path, f"missing frame {self._file(count)} although "
                                            f"{frame_name(self.template, later)} exists (frames are numbered without "
                                            f"gaps from {self.start})")
        if count == 0:
            images = [name for name in names if name.lower().endswith(IMG_EXTENSIONS)]
            found = f"it holds e.g. {images[0]}" if images else "it holds no images"
            raise VideoReadError(self.path, f"no frame file {self._file(0).name} (frames named {self.template} from "
                                            f"{self.start}; {found}: set the frame template / start index)")
        return count

    def read(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0:
            raise ValueError(f"frame indices must be a non-empty list of non-negative ints, got {indices}")
        frames, size = {}, None
        for k in sorted(set(indices)):
            file = self._file(k)
            if not file.is_file():
                raise VideoReadError(self.path, f"missing frame {file}")
            try:
                img = load_image(file)
            except ValueError as e:  # "cannot read image FILE: image file is truncated ..."
                raise VideoReadError(self.path, str(e)) from None
            size = size or img.size
            frames[k] = np.asarray(img if img.size == size else img.resize(size, Image.BILINEAR))
        return np.stack([frames[i] for i in indices])


def open_frame_reader(path: PathLike, template: str = DEFAULT_FRAME_TEMPLATE,
                      start: int = DEFAULT_FRAME_START) -> FrameReader:
    """A :class:`FrameFolderReader` for a folder, a :class:`VideoFileReader` for a file; ``FileNotFoundError``
    naming ``path`` when it is neither."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderReader(path, template, start)
    if not path.is_file():
        raise FileNotFoundError(f"video file or frame folder not found: {path}")
    return VideoFileReader(path)


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


def _load_clips(reader: FrameReader, sampler: str, num_frames: int, stride: int, num_clips: int, train: bool,
                transform: VideoTransform) -> torch.Tensor:
    """Read and transform one video: (C, T, S, S) when training, (num_clips * num_crops, C, T, S, S) otherwise."""

    def sample(total: int) -> List[int]:
        if total < num_frames:
            raise VideoReadError(reader.path, f"has {total} frames, the sampler needs {num_frames}")
        if sampler == "segment":
            return segment_indices(total, num_frames, train=train)
        return [i for c in range(1 if train else num_clips)
                for i in dense_indices(total, num_frames, stride, train=train, clip_index=c, num_clips=num_clips)]

    total = reader.count()
    try:
        frames = reader.read(sample(total))
    except VideoReadError as e:  # fewer decodable frames than packets (e.g. a stream cut before a keyframe)
        if e.decoded is None or e.decoded >= total:
            raise
        frames = reader.read(sample(e.decoded))
    if train:
        return transform(frames)
    return torch.cat([transform(clip) for clip in np.split(frames, len(frames) // num_frames)])


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _scan_class_folder(class_dir: Path, first_frame: str) -> Tuple[List[Path], List[Path]]:
    """(video files, frame folders) under one class folder. A folder that directly holds image files is one
    frame-folder video (its sub-folders are not searched); any other folder is searched for video files.
    ``first_frame`` (the first frame's file name) is only used in messages."""
    videos: List[Path] = []
    folders: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = sorted(f for f in filenames if not f.startswith("."))
        images = [f for f in files if f.lower().endswith(IMG_EXTENSIONS)]
        here = [Path(dirpath) / f for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
        if images and Path(dirpath) == class_dir:
            raise ValueError(f"class folder {class_dir} holds images directly (e.g. {images[0]}): the frames of a "
                             f"video go in a folder of their own, {class_dir}/<video>/{first_frame} …")
        if images and here:
            raise ValueError(f"{dirpath} holds both video files (e.g. {here[0].name}) and images (e.g. {images[0]}): "
                             "a folder is either one video's frames or a folder of video files")
        if images:
            folders.append(Path(dirpath))
            dirnames[:] = []
        else:
            videos += here
    return sorted(videos), sorted(folders)


class VideoDataset(Dataset):
    """Labelled videos under ``root``: video files or folders of frames, the layout detected from the data.

    * A list file ``root/{split}.txt`` (names from an optional ``root/classes.txt``) with either "relative/path LABEL"
      lines (video files) or mmaction2 "rawframes" lines "frame_dir NUM_FRAMES LABEL" (frame folders; a line is read
      so when its last two fields are integers and ``root/frame_dir`` is a folder). One kind per file.
    * Else class folders ``root/{split}/<class>/…`` holding video files, or frame folders (a folder that directly
      holds image files is one video: ``root/{split}/<class>/<video>/img_00001.jpg …``). One kind per split.

    Frame k (0-based) of a frame folder is the file ``frame_template.format(frame_start + k)`` (default
    ``img_{:05d}.jpg`` from 1, mmaction2's; Something-Something V1: ``{:05d}.jpg``). Items are (tensor, label):
    (C, T, S, S) from one random window when training (``train`` defaults to split == "train"),
    (num_clips * num_crops, C, T, S, S) clip-major views otherwise. Bad videos (corrupt, too short, a missing or
    unreadable frame, a listed frame count the folder disagrees with) raise ``VideoReadError`` naming the file or
    folder, or with ``skip_bad`` come back as a :class:`~uniformer.data.BadSample` that
    :class:`~uniformer.data.DropBadCollate` drops from its batch (never replaced by another video)."""

    def __init__(self, root: PathLike, split: str, num_frames: int = 8, stride: int = 4, sampler: str = "dense",
                 img_size: int = 224, train: Optional[bool] = None, num_clips: int = 1, num_crops: int = 1,
                 hflip: float = 0.5, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 mean: Sequence[float] = VIDEO_MEAN, std: Sequence[float] = VIDEO_STD, skip_bad: bool = False,
                 frame_template: str = DEFAULT_FRAME_TEMPLATE, frame_start: int = DEFAULT_FRAME_START) -> None:
        self.root, self.split = Path(root), split
        self.train = split == "train" if train is None else train
        _check_options(sampler, num_frames, stride, num_clips, self.train)
        check_frame_template(frame_template, frame_start)
        self.num_frames, self.stride, self.sampler, self.skip_bad = num_frames, stride, sampler, skip_bad
        self.frame_template, self.frame_start = frame_template, frame_start
        self.num_clips = 1 if self.train else num_clips
        self.num_views = 1 if self.train else num_clips * num_crops
        self.transform = VideoTransform(img_size, self.train, 1 if self.train else num_crops, scale=scale,
                                        ratio=ratio, hflip=hflip, mean=mean, std=std)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video data folder not found: {self.root}")
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            self.classes, self.samples, self.readers = self._from_list(list_file)
        elif (self.root / split).is_dir():
            self.classes, self.samples, self.readers = self._from_folders(self.root / split)
        else:
            raise FileNotFoundError(f"no {list_file.name} list file and no {split}/ class folder in {self.root}")
        self.kind = "frame folders" if isinstance(self.readers[0], FrameFolderReader) else "video files"

    def _frames(self, path: Path, num_frames: Optional[int] = None, listed_at: Optional[str] = None) -> FrameReader:
        return FrameFolderReader(path, self.frame_template, self.frame_start, num_frames, listed_at)

    def _parse_line(self, list_file: Path, n: int, line: str, kind: Optional[str]) -> Tuple[str, FrameReader, int]:
        """(kind, reader, label) of one list line; ``kind`` is the list's kind so far (None on its first line)."""
        where = f"{list_file}, line {n}"
        three, two = line.rsplit(None, 2), line.rsplit(None, 1)
        frames_ok = len(three) == 3 and _is_count(three[1]) and _is_count(three[2])
        video_ok = len(two) == 2 and _is_count(two[1])
        if frames_ok and (self.root / three[0]).is_dir():
            if int(three[1]) < 1:
                raise ValueError(f"{where}: NUM_FRAMES must be at least 1, got {line!r}")
            return "frame folders", self._frames(self.root / three[0], int(three[1]), where), int(three[2])
        if video_ok and (self.root / two[0]).is_file():
            return "video files", VideoFileReader(self.root / two[0]), int(two[1])
        if video_ok and (self.root / two[0]).is_dir():
            raise ValueError(f"{where}: {self.root / two[0]} is a folder; a frame-folder line reads "
                             f"'frame_dir NUM_FRAMES LABEL', got {line!r}")
        if frames_ok and kind != "video files":
            raise FileNotFoundError(f"frame folder listed in {where}, not found: {self.root / three[0]}")
        if video_ok and kind != "frame folders":
            raise FileNotFoundError(f"video listed in {where}, not found: {self.root / two[0]}")
        expected = {"video files": "'relative/path LABEL'", "frame folders": "'frame_dir NUM_FRAMES LABEL'"}.get(
            kind, "'relative/path LABEL' (a video file) or 'frame_dir NUM_FRAMES LABEL' (a frame folder)")
        raise ValueError(f"{where}: expected {expected}, LABEL and NUM_FRAMES non-negative integers, got {line!r}")

    def _from_list(self, list_file: Path) -> Tuple[List[str], List[Tuple[str, int]], List[FrameReader]]:
        entries = []  # (line number, line, reader, label)
        kind, first = None, 0
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line_kind, reader, label = self._parse_line(list_file, n, line, kind)
            if kind is None:
                kind, first = line_kind, n
            elif line_kind != kind:
                raise ValueError(f"{list_file}, line {n}: lists one of the {line_kind} in a list of {kind} (line "
                                 f"{first}); one kind per list file, got {line!r}")
            entries.append((n, line, reader, label))
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
        return classes, [(r.path, label) for _, _, r, label in entries], [r for _, _, r, _ in entries]

    def _from_folders(self, split_dir: Path) -> Tuple[List[str], List[Tuple[str, int]], List[FrameReader]]:
        class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<video>)")
        samples: List[Tuple[str, int]] = []
        readers: List[FrameReader] = []
        examples = {}  # kind -> first item of that kind
        first_frame = frame_name(self.frame_template, self.frame_start)
        for label, d in enumerate(class_dirs):
            videos, folders = _scan_class_folder(d, first_frame)
            if not videos and not folders:
                raise ValueError(f"class folder {d} contains no videos (extensions {', '.join(VIDEO_EXTENSIONS)}) "
                                 f"and no frame folders ({d}/<video>/{first_frame} …)")
            if videos:
                examples.setdefault("video files", videos[0])
            if folders:
                examples.setdefault("frame folders", folders[0])
            samples += [(str(p), label) for p in videos + folders]
            readers += [VideoFileReader(p) for p in videos] + [self._frames(p) for p in folders]
        if len(examples) == 2:
            raise ValueError(f"{split_dir} mixes video files (e.g. {examples['video files']}) and frame folders (e.g. "
                             f"{examples['frame folders']}): use one kind per split")
        return [d.name for d in class_dirs], samples, readers

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Union[Tuple[torch.Tensor, int], BadSample]:
        path, label = self.samples[index]
        try:
            return _load_clips(self.readers[index], self.sampler, self.num_frames, self.stride, self.num_clips,
                               self.train, self.transform), label
        except (VideoReadError, FileNotFoundError) as e:
            if not self.skip_bad:
                raise
            return BadSample(index, path, getattr(e, "reason", None) or str(e))


def load_video_views(path: PathLike, num_frames: int = 16, stride: int = 4, sampler: str = "dense",
                     img_size: int = 224, num_clips: int = 1, num_crops: int = 1, mean: Sequence[float] = VIDEO_MEAN,
                     std: Sequence[float] = VIDEO_STD, frame_template: str = DEFAULT_FRAME_TEMPLATE,
                     frame_start: int = DEFAULT_FRAME_START) -> torch.Tensor:
    """The evaluation views of one video file or frame folder (``frame_template`` / ``frame_start`` name its
    frames) for ``predict-video``: a tensor (num_clips * num_crops, C, T, S, S), clip-major. Raises
    ``FileNotFoundError`` or ``VideoReadError`` naming the file or folder."""
    _check_options(sampler, num_frames, stride, num_clips, train=False)
    check_frame_template(frame_template, frame_start)
    transform = VideoTransform(img_size, False, num_crops, mean=mean, std=std)
    return _load_clips(open_frame_reader(path, frame_template, frame_start), sampler, num_frames, stride, num_clips,
                       False, transform)
