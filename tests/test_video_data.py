"""Video data pipeline: PyAV decoding, JPEG frame folders, dense / segment samplers, clip transforms, video datasets
and bad videos."""
from __future__ import annotations

import fractions
import re
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import av
import numpy as np
import pytest
import torch

from uniformer.data import BadSample
from uniformer.data.frames import check_frame_template, count_listed_frames
from uniformer.data.video import (
    VIDEO_MEAN,
    VIDEO_STD,
    FrameFolderReader,
    VideoDataset,
    VideoReadError,
    VideoTransform,
    count_frames,
    dense_indices,
    load_video_views,
    read_video_frames,
    segment_indices,
)

STEP = 6  # frame k is a flat grey frame of value STEP * k, so its index survives lossy compression


def make_video(path: Path, frames: int = 36, size: Tuple[int, int] = (48, 64), pts: Optional[Sequence[int]] = None,
               codec: str = "mpeg4") -> Path:
    """Encode a real video with PyAV (H x W = ``size``); ``pts`` (in ms) gives irregular timestamps (VFR)."""
    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = w, h, "yuv420p", 1_000_000
        if pts is not None:
            stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), STEP * k, dtype=np.uint8), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[k], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_ids(frames: np.ndarray) -> List[int]:
    """The index encoded in each decoded uint8 frame (T, H, W, 3)."""
    return [int(round(float(f.mean()) / STEP)) for f in frames]


def view_ids(view: torch.Tensor, mean: float = VIDEO_MEAN[0], std: float = VIDEO_STD[0]) -> List[int]:
    """The frame indices of a normalised view (C, T, H, W), undoing the normalisation."""
    grey = (view.mean(dim=(0, 2, 3)) * std + mean) * 255
    return [int(round(g / STEP)) for g in grey.tolist()]


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("name,size", [("a.mp4", (48, 64)), ("b.avi", (64, 48)), ("c.mkv", (48, 64))])
def test_count_and_read_frames_in_the_requested_order_with_duplicates(tmp_path, name, size):
    path = make_video(tmp_path / name, frames=36, size=size)
    assert count_frames(path) == 36
    wanted = [30, 2, 2, 17, 0, 35, 17]
    frames = read_video_frames(path, wanted)
    assert frames.dtype == np.uint8 and frames.shape == (len(wanted), *size, 3)
    assert frame_ids(frames) == wanted
    assert np.abs(frames.astype(int) - STEP * np.array(wanted)[:, None, None, None]).max() <= 2


def test_frame_index_past_the_end_names_the_file(tmp_path):
    path = make_video(tmp_path / "ten.mp4", frames=10)
    with pytest.raises(VideoReadError, match=r"ten\.mp4.*10 decodable frames, frame 10"):
        read_video_frames(path, [0, 10])
    with pytest.raises(ValueError):
        read_video_frames(path, [-1])


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_variable_frame_rate_video_is_counted_and_decoded_exactly(tmp_path, suffix):
    pts = np.cumsum(np.random.default_rng(0).integers(10, 150, 30)).tolist()  # 10-150 ms between frames
    path = make_video(tmp_path / f"vfr{suffix}", frames=30, pts=pts)
    with av.open(str(path)) as container:
        decoded_pts = [f.pts for f in container.decode(video=0)]
    assert len(set(np.diff(decoded_pts).tolist())) > 5  # really irregular
    assert count_frames(path) == 30  # (AVI stores VFR as drop chunks: its own frame count is ~2000 here)
    assert frame_ids(read_video_frames(path, [29, 0, 13, 14])) == [29, 0, 13, 14]


# ------------------------------------------------------------------------------------------------ samplers
def test_dense_indices_test_clips_are_evenly_spaced_or_centred():
    # span (8 - 1) * 4 + 1 = 29, last start 100 - 29 = 71, 4 clips: starts 0, 23, 46, 69
    for c, start in enumerate((0, 23, 46, 69)):
        assert dense_indices(100, 8, 4, train=False, clip_index=c, num_clips=4) == list(range(start, start + 29, 4))
    assert dense_indices(100, 8, 4, train=False) == list(range(35, 64, 4))
    assert dense_indices(29, 8, 4, train=False) == list(range(0, 29, 4))


def test_dense_indices_clamp_at_the_end_and_reject_too_short_videos():
    assert dense_indices(20, 8, 4, train=False) == [0, 4, 8, 12, 16, 19, 19, 19]
    assert dense_indices(20, 8, 4, train=True) == [0, 4, 8, 12, 16, 19, 19, 19]
    assert dense_indices(8, 8, 1, train=False) == list(range(8))
    with pytest.raises(ValueError, match="7 frames, the sampler needs 8"):
        dense_indices(7, 8, 4, train=True)
    with pytest.raises(ValueError):
        dense_indices(100, 8, 4, train=False, clip_index=4, num_clips=4)


def test_dense_indices_train_uses_torch_rng_and_covers_every_start():
    torch.manual_seed(0)
    runs = [dense_indices(40, 4, 3, train=True) for _ in range(300)]  # span 10, starts 0..30
    starts = {r[0] for r in runs}
    assert starts == set(range(31))
    assert all(r == list(range(r[0], r[0] + 10, 3)) for r in runs)
    torch.manual_seed(0)
    assert [dense_indices(40, 4, 3, train=True) for _ in range(300)] == runs


def test_segment_indices_centres_and_random_frames_inside_segments():
    # boundaries floor(k * 30 / 8): 0 3 7 11 15 18 22 26 30
    assert segment_indices(30, 8, train=False) == [1, 4, 8, 12, 16, 19, 23, 27]
    assert segment_indices(8, 8, train=False) == list(range(8))
    bounds = [0, 3, 7, 11, 15, 18, 22, 26, 30]
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        idx = segment_indices(30, 8, train=True)
        assert all(bounds[k] <= i < bounds[k + 1] for k, i in enumerate(idx))
        seen.update(idx)
    assert seen == set(range(30))
    with pytest.raises(ValueError, match="5 frames, the sampler needs 8"):
        segment_indices(5, 8, train=False)


# ------------------------------------------------------------------------------------------------ transforms
def ramp(t: int, h: int, w: int, vertical: bool = False) -> np.ndarray:
    """A clip whose value grows along x (or y): 4 * column (or row)."""
    line = 4 * np.arange(h if vertical else w, dtype=np.uint8)
    img = np.broadcast_to(line[:, None] if vertical else line[None, :], (h, w))
    return np.ascontiguousarray(np.broadcast_to(img[None, :, :, None], (t, h, w, 3)))


def normalised(values: np.ndarray) -> torch.Tensor:
    return (torch.as_tensor(values, dtype=torch.float32) / 255 - 0.45) / 0.225


def test_transform_shapes_and_normalisation():
    clip = np.full((5, 48, 64, 3), 100, dtype=np.uint8)
    torch.manual_seed(0)
    train = VideoTransform(32, train=True)(clip)
    one = VideoTransform(32, train=False)(clip)
    three = VideoTransform(32, train=False, num_crops=3)(torch.from_numpy(clip))
    assert train.shape == (3, 5, 32, 32) and one.shape == (1, 3, 5, 32, 32) and three.shape == (3, 3, 5, 32, 32)
    assert VideoTransform(32, train=False, num_crops=3)(clip[:, :, :40]).shape == (3, 3, 5, 32, 32)  # portrait
    expected = (100 / 255 - 0.45) / 0.225
    for out in (train, one, three):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, torch.full_like(out, expected), rtol=0, atol=1e-5)
    custom = VideoTransform(32, train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(clip)
    torch.testing.assert_close(custom, torch.full_like(custom, (100 / 255 - 0.5) / 0.5), rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        VideoTransform(32, train=False, num_crops=2)


def test_three_crops_run_along_the_long_side_and_touch_the_borders():
    crops = VideoTransform(32, train=False, num_crops=3)(ramp(2, 32, 64))  # short side already 32: no resize
    row = 4 * np.arange(64)
    for crop, offset in zip(crops, (0, 16, 32)):  # left, centre, right
        torch.testing.assert_close(crop[0, 0, 0], normalised(row[offset:offset + 32]))
    centre = VideoTransform(32, train=False)(ramp(2, 32, 64))
    torch.testing.assert_close(centre[0], crops[1])
    tall = VideoTransform(32, train=False, num_crops=3)(ramp(2, 64, 32, vertical=True))
    for crop, offset in zip(tall, (0, 16, 32)):  # top, centre, bottom
        torch.testing.assert_close(crop[0, 0, :, 0], normalised(row[offset:offset + 32]))
    resized = VideoTransform(16, train=False, num_crops=3)(ramp(2, 48, 64))  # resized to 16 x 21 first
    means = [c.mean().item() for c in resized]
    assert means[0] < means[1] < means[2]


def test_train_crop_is_shared_by_all_frames_and_flips_with_probability_hflip():
    clip = ramp(4, 32, 32)
    full = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the crop box is the whole frame
    row = normalised(4 * np.arange(32))
    torch.manual_seed(0)
    for _ in range(10):
        flipped = VideoTransform(32, train=True, hflip=1.0, **full)(clip)
        kept = VideoTransform(32, train=True, hflip=0.0, **full)(clip)
        torch.testing.assert_close(flipped[0, :, 5], row.flip(0).expand(4, 32))
        torch.testing.assert_close(kept[0, :, 5], row.expand(4, 32))
    outs = [VideoTransform(16, train=True)(ramp(3, 48, 64)) for _ in range(20)]
    for out in outs:
        assert out.shape == (3, 3, 16, 16)
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # one box, one flip decision
    assert len({round(out.mean().item(), 4) for out in outs}) > 1  # different random boxes


# ------------------------------------------------------------------------------------------------ datasets
@pytest.fixture
def listed(tmp_path) -> Path:
    """List-file layout: names with spaces, comments and blank lines, classes.txt."""
    root = tmp_path / "listed"
    make_video(root / "videos" / "jump high.mp4", frames=36)
    make_video(root / "videos" / "walk.avi", frames=30, size=(64, 48))
    make_video(root / "videos" / "run.mkv", frames=24)
    (root / "train.txt").write_text("# path label\nvideos/jump high.mp4 2\n\nvideos/walk.avi  0\nvideos/run.mkv\t1\n")
    (root / "classes.txt").write_text("walk\nrun\njump\n")
    return root


def test_list_file_dataset(listed):
    ds = VideoDataset(listed, "train", num_frames=4, stride=2, img_size=32)
    assert ds.classes == ["walk", "run", "jump"] and ds.num_views == 1 and ds.train
    assert ds.samples == [(str(listed / "videos" / "jump high.mp4"), 2), (str(listed / "videos" / "walk.avi"), 0),
                          (str(listed / "videos" / "run.mkv"), 1)]
    torch.manual_seed(0)
    for i, label in enumerate((2, 0, 1)):
        x, y = ds[i]
        assert x.shape == (3, 4, 32, 32) and y == label
        ids = view_ids(x)
        assert np.diff(ids).tolist() == [2, 2, 2]  # one dense window, stride 2
    ev = VideoDataset(listed, "train", train=False, num_frames=4, stride=2, img_size=32, num_clips=2, num_crops=3)
    assert ev.num_views == 6
    views, label = ev[0]
    assert views.shape == (6, 3, 4, 32, 32) and label == 2
    for v, c in enumerate((0, 0, 0, 1, 1, 1)):  # clip-major: clip 0's three crops, then clip 1's
        assert view_ids(views[v]) == dense_indices(36, 4, 2, train=False, clip_index=c, num_clips=2)
    (listed / "classes.txt").unlink()
    assert VideoDataset(listed, "train").classes == ["0", "1", "2"]


def test_segment_sampling_dataset_and_option_errors(listed):
    ds = VideoDataset(listed, "train", train=False, num_frames=6, sampler="segment", img_size=16, num_crops=3)
    views, _ = ds[2]  # run.mkv, 24 frames: segments of 4, centres 1 5 9 ...
    assert views.shape == (3, 3, 6, 16, 16) and view_ids(views[1]) == [1, 5, 9, 13, 17, 21]
    with pytest.raises(ValueError, match="num_clips=1"):
        VideoDataset(listed, "train", train=False, sampler="segment", num_clips=2)
    with pytest.raises(ValueError, match="sampler"):
        VideoDataset(listed, "train", sampler="random")


@pytest.mark.parametrize("line", ["videos/walk.avi", "videos/walk.avi x", "videos/walk.avi -1", "videos/walk.avi 1.5"])
def test_malformed_list_line_names_the_file_and_line(listed, line):
    (listed / "val.txt").write_text(f"# header\nvideos/run.mkv 1\n{line}\n")
    with pytest.raises(ValueError, match=r"val\.txt, line 3: .*" + line.split()[0]):
        VideoDataset(listed, "val")


def test_list_label_beyond_classes_and_missing_video(listed):
    (listed / "val.txt").write_text("videos/run.mkv 1\nvideos/walk.avi 3\n")
    with pytest.raises(ValueError, match=r"val\.txt, line 2: label 3 .*classes\.txt names 3 classes"):
        VideoDataset(listed, "val")
    (listed / "val.txt").write_text("videos/run.mkv 1\nvideos/gone.mp4 0\n")
    with pytest.raises(FileNotFoundError, match=r"line 2.*gone\.mp4"):
        VideoDataset(listed, "val")


def test_class_folder_dataset(tmp_path):
    for cls, n in (("b_walk", 2), ("a_run", 1)):
        for i in range(n):
            make_video(tmp_path / "val" / cls / f"{cls}{i}.mp4", frames=20)
    (tmp_path / "val" / "a_run" / "notes.txt").write_text("not a video")
    ds = VideoDataset(tmp_path, "val", num_frames=4, stride=4, img_size=24, num_clips=3)
    assert not ds.train and ds.num_views == 3
    assert ds.classes == ["a_run", "b_walk"] and [label for _, label in ds.samples] == [0, 1, 1]
    views, label = ds[1]
    assert views.shape == (3, 3, 4, 24, 24) and label == 1
    with pytest.raises(FileNotFoundError, match="train"):
        VideoDataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError):
        VideoDataset(tmp_path / "nowhere", "val")
    (tmp_path / "val" / "c_empty").mkdir()
    with pytest.raises(ValueError, match="c_empty"):
        VideoDataset(tmp_path, "val")


# ------------------------------------------------------------------------------------------------ bad videos
def write_bad(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        make_video(path, frames=3)
    return path


@pytest.mark.parametrize("kind,message", [("corrupt", "corrupt"), ("empty", "empty"),
                                          ("short", "has 3 frames, the sampler needs 4")])
def test_bad_video_fails_naming_the_file_or_is_skipped(tmp_path, kind, message):
    bad = write_bad(tmp_path / "train" / "a" / f"{kind} clip.mp4", kind)
    make_video(tmp_path / "train" / "b" / "good.mp4", frames=20)
    ds = VideoDataset(tmp_path, "train", num_frames=4, stride=2, img_size=16)
    with pytest.raises(VideoReadError, match=message) as info:
        ds[0]
    assert str(bad) in str(info.value) and info.value.path == str(bad)
    skipping = VideoDataset(tmp_path, "train", num_frames=4, stride=2, img_size=16, skip_bad=True)
    item = skipping[0]  # dropped by the loader's collate, never replaced by another video
    assert isinstance(item, BadSample) and item.index == 0 and item.path == str(bad)
    assert re.search(message, item.reason)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, label = skipping[1]  # good samples load as usual
    assert x.shape == (3, 4, 16, 16) and label == 1


def test_every_bad_video_skipped_still_raises(tmp_path):
    from uniformer.engine.distributed import DistContext
    from uniformer.engine.classification import evaluate
    from uniformer.engine.loaders import eval_loader

    write_bad(tmp_path / "val" / "a" / "x.mp4", "corrupt")
    write_bad(tmp_path / "val" / "b" / "y.mp4", "empty")
    loader = eval_loader(VideoDataset(tmp_path, "val", skip_bad=True), 1, 0, DistContext())
    with pytest.warns(UserWarning, match="skipping .*y.mp4 \\(2 skipped so far"), \
            pytest.raises(ValueError, match=r"every sample of the evaluation set was unreadable \(2 skipped\)"):
        evaluate(torch.nn.Identity(), loader, DistContext())


def test_readers_wrap_pyav_errors(tmp_path):
    for kind in ("corrupt", "empty"):
        path = write_bad(tmp_path / f"{kind}.mp4", kind)
        for fn in (count_frames, lambda p: read_video_frames(p, [0])):
            with pytest.raises(VideoReadError, match=f"{kind}.mp4"):
                fn(path)
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoReadError, match="audio.m4a.*no video stream"):
        count_frames(audio)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video_frames(tmp_path / "missing.mp4", [0])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video_views(tmp_path / "missing.mp4")


def test_load_video_views(tmp_path):
    path = make_video(tmp_path / "clip.mp4", frames=40, size=(64, 48))
    views = load_video_views(path, num_frames=8, stride=2, img_size=32, num_clips=2, num_crops=3)
    assert views.shape == (6, 3, 8, 32, 32) and views.dtype == torch.float32
    assert view_ids(views[3]) == dense_indices(40, 8, 2, train=False, clip_index=1, num_clips=2)
    seg = load_video_views(path, num_frames=4, sampler="segment", img_size=32)
    assert seg.shape == (1, 3, 4, 32, 32) and view_ids(seg[0]) == [4, 14, 24, 34]
    with pytest.raises(VideoReadError, match="has 40 frames, the sampler needs 48"):
        load_video_views(path, num_frames=48)


def test_frames_the_decoder_cannot_produce_are_never_sampled(tmp_path):
    """A stream cut just after its first keyframe: 27 packets, but H.264 decodes only from the next keyframe on."""
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    with av.open(str(whole), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "10", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), STEP * k, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(whole)) as src, av.open(str(cut), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for n, packet in enumerate(src.demux(video=0)):
            if packet.dts is not None and n >= 3:
                packet.stream = out
                dst.mux(packet)
    assert count_frames(cut) == 27  # packets; frames 10..29 (20) are decodable
    with pytest.raises(VideoReadError, match="20 decodable frames"):
        read_video_frames(cut, [26])
    views = load_video_views(cut, num_frames=8, stride=2, img_size=16)  # re-sampled on the 20 decodable frames
    assert view_ids(views[0]) == [12, 14, 16, 18, 20, 22, 24, 26]


# ------------------------------------------------------------------------------------------------ frame folders
def make_frames(folder: Path, frames: int, size: Tuple[int, int] = (24, 32), template: str = "img_{:05d}.jpg",
                start: int = 1) -> Path:
    """Write a frame-folder video of real JPEG files: frame k is flat grey STEP * k (``template.format(start + k)``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        Image.new("RGB", size[::-1], (STEP * k,) * 3).save(folder / template.format(start + k), quality=95)
    return folder


@pytest.fixture
def rawframes(tmp_path) -> Path:
    """mmaction2 rawframes layout: a list of 'frame_dir NUM_FRAMES LABEL' lines (a folder name with a space)."""
    root = tmp_path / "rawframes"
    make_frames(root / "frames" / "jump high", 36)
    make_frames(root / "frames" / "walk", 24, size=(32, 24))
    (root / "train.txt").write_text("# frame_dir num_frames label\nframes/jump high 36 1\n\nframes/walk\t24  0\n")
    (root / "classes.txt").write_text("walk\njump\n")
    return root


@pytest.fixture
def opened(monkeypatch) -> List[str]:
    """The names of the frame files the dataset decodes, in order."""
    from uniformer.data import video

    names: List[str] = []

    def spy(path):
        names.append(Path(path).name)
        return real(path)

    real = video.load_image
    monkeypatch.setattr(video, "load_image", spy)
    return names


def test_rawframes_list_dataset_decodes_exactly_the_sampled_frames(rawframes, opened):
    ds = VideoDataset(rawframes, "train", num_frames=4, stride=3, img_size=16)
    assert ds.kind == "frame folders" and ds.classes == ["walk", "jump"] and ds.train
    assert ds.samples == [(str(rawframes / "frames" / "jump high"), 1), (str(rawframes / "frames" / "walk"), 0)]
    torch.manual_seed(0)
    starts = set()
    for _ in range(12):
        opened.clear()
        x, label = ds[0]
        ids = view_ids(x)
        assert x.shape == (3, 4, 16, 16) and label == 1
        assert ids == list(range(ids[0], ids[0] + 10, 3)) and 0 <= ids[0] <= 36 - 10  # one window, stride 3
        assert opened == [f"img_{i + 1:05d}.jpg" for i in ids]  # only the sampled frames, file number = index + 1
        starts.add(ids[0])
    assert len(starts) > 3  # random windows
    ev = VideoDataset(rawframes, "train", train=False, num_frames=4, stride=2, img_size=16, num_clips=2, num_crops=3)
    opened.clear()
    views, label = ev[0]
    assert views.shape == (6, 3, 4, 16, 16) and label == 1 and ev.num_views == 6
    for v, c in enumerate((0, 0, 0, 1, 1, 1)):  # clip-major, as for video files
        assert view_ids(views[v]) == dense_indices(36, 4, 2, train=False, clip_index=c, num_clips=2)
    assert sorted(opened) == sorted(f"img_{i + 1:05d}.jpg" for c in range(2)
                                    for i in dense_indices(36, 4, 2, train=False, clip_index=c, num_clips=2))


def test_frame_folders_with_segment_sampling(rawframes, opened):
    ev = VideoDataset(rawframes, "train", train=False, num_frames=6, sampler="segment", img_size=16, num_crops=3)
    views, label = ev[1]  # walk: 24 frames, segments of 4, centres 1 5 9 ...
    assert views.shape == (3, 3, 6, 16, 16) and label == 0
    assert all(view_ids(v) == [1, 5, 9, 13, 17, 21] for v in views)
    assert opened == [f"img_{i + 1:05d}.jpg" for i in (1, 5, 9, 13, 17, 21)]
    ds = VideoDataset(rawframes, "train", num_frames=6, sampler="segment", img_size=16)
    torch.manual_seed(0)
    for _ in range(10):
        ids = view_ids(ds[1][0])
        assert all(4 * k <= i < 4 * k + 4 for k, i in enumerate(ids))


def test_class_folders_of_frame_folders_with_the_ssv1_template(tmp_path, opened):
    for cls, videos in (("b_push", {"v0": 20, "v1": 16}), ("a_pull", {"deeper/v2": 12})):
        for name, n in videos.items():
            make_frames(tmp_path / "val" / cls / name, n, template="{:05d}.jpg")
    (tmp_path / "val" / "b_push" / "v0" / "notes.txt").write_text("not a frame")
    ds = VideoDataset(tmp_path, "val", num_frames=4, sampler="segment", img_size=16, num_crops=3,
                      frame_template="{:05d}.jpg")
    assert ds.kind == "frame folders" and ds.classes == ["a_pull", "b_push"] and not ds.train
    assert ds.samples == [(str(tmp_path / "val" / "a_pull" / "deeper" / "v2"), 0),
                          (str(tmp_path / "val" / "b_push" / "v0"), 1), (str(tmp_path / "val" / "b_push" / "v1"), 1)]
    assert [r.count() for r in ds.readers] == [12, 20, 16]  # frames found by the template, contiguous from 1
    views, label = ds[1]
    assert views.shape == (3, 3, 4, 16, 16) and label == 1 and view_ids(views[0]) == [2, 7, 12, 17]
    assert opened == [f"{i + 1:05d}.jpg" for i in (2, 7, 12, 17)]
    zero = tmp_path / "zero"
    make_frames(zero / "val" / "a" / "v", 10, template="frame{}.png", start=0)
    ds = VideoDataset(zero, "val", num_frames=3, stride=2, img_size=16, frame_template="frame{}.png", frame_start=0)
    assert view_ids(ds[0][0][0]) == [2, 4, 6] and "frame2.png" in opened
    wrong = VideoDataset(tmp_path, "val", num_frames=4, img_size=16)  # the default img_{:05d}.jpg names no file
    with pytest.raises(VideoReadError, match=r"v2: no frame file img_00001\.jpg .*it holds e\.g\. 00001\.jpg"):
        wrong[0]


def test_frames_of_another_size_are_resized_to_the_first(tmp_path):
    folder = make_frames(tmp_path / "v", 8, size=(24, 32))
    make_frames(tmp_path / "big", 8, size=(48, 64))
    (folder / "img_00005.jpg").write_bytes((tmp_path / "big" / "img_00005.jpg").read_bytes())
    frames = FrameFolderReader(folder).read([4, 0, 4])
    assert frames.shape == (3, 24, 32, 3) and frame_ids(frames) == [4, 0, 4]


def test_frame_template_naming_and_counting():
    check_frame_template("img_{:05d}.jpg")
    check_frame_template("{}.png", 0)
    for bad in ("img.jpg", "img_%05d.jpg", "{}_{}.jpg", "{name}.jpg", "{:s}.jpg", "{:.1f}.jpg", "sub/{:05d}.jpg", "{"):
        with pytest.raises(ValueError, match="frame template"):
            check_frame_template(bad)
    with pytest.raises(ValueError, match="not %05d"):
        check_frame_template("img_%05d.jpg")
    with pytest.raises(ValueError, match="first frame index"):
        check_frame_template("{}.jpg", -1)
    names = ["img_00001.jpg", "img_00002.jpg", "img_00003.jpg", "img_00006.jpg", "img_4.jpg", "x_00004.jpg"]
    assert count_listed_frames(names, "img_{:05d}.jpg", 1) == (3, 6)  # img_4.jpg is not frame 4 of this template
    assert count_listed_frames(names[:3], "img_{:05d}.jpg", 1) == (3, None)
    assert count_listed_frames(names, "img_{:05d}.jpg", 0) == (0, 1)
    with pytest.raises(ValueError, match="frame template"):
        VideoDataset(".", "train", frame_template="frames.jpg")


def test_layout_detection_errors(tmp_path, rawframes):
    mixed = tmp_path / "mixed"
    make_video(mixed / "train" / "a" / "clip.mp4", frames=8)
    make_frames(mixed / "train" / "b" / "v0", 8)
    with pytest.raises(ValueError, match=r"mixes video files \(e\.g\. .*clip\.mp4\) and frame folders \(e\.g\. .*v0\)"):
        VideoDataset(mixed, "train")
    make_frames(mixed / "val" / "a", 3)  # images right in the class folder: an image dataset, not frame folders
    with pytest.raises(ValueError, match=r"class folder .*val/a holds images directly \(e\.g\. img_00001\.jpg\)"):
        VideoDataset(mixed, "val")
    both = tmp_path / "both"
    make_frames(both / "val" / "a" / "v0", 8)
    make_video(both / "val" / "a" / "v0" / "clip.mp4", frames=8)
    with pytest.raises(ValueError, match=r"v0 holds both video files \(e\.g\. clip\.mp4\) and images"):
        VideoDataset(both, "val")
    make_video(rawframes / "clip.mp4", frames=8)
    cases = [("frames/walk 24 0\nclip.mp4 1\n", ValueError, r"val\.txt, line 2: lists one of the video files in a "
                                                            r"list of frame folders \(line 1\)"),
             ("clip.mp4 1\nframes/walk 24 0\n", ValueError, r"val\.txt, line 2: lists one of the frame folders"),
             ("frames/walk 0\n", ValueError, r"val\.txt, line 1: .*frames/walk is a folder; a frame-folder line reads"),
             ("frames/walk 0 0\n", ValueError, r"val\.txt, line 1: NUM_FRAMES must be at least 1"),
             ("frames/walk 24 0\nframes/gone 24 1\n", FileNotFoundError, r"frame folder listed in .*val\.txt, line 2, "
                                                                         r"not found: .*frames/gone"),
             ("frames/walk\n", ValueError, r"val\.txt, line 1: expected 'relative/path LABEL' \(a video file\) or "
                                           r"'frame_dir NUM_FRAMES LABEL' \(a frame folder\)"),
             ("frames/walk 24 0\nframes/walk x 0\n", ValueError, r"val\.txt, line 2: expected 'frame_dir NUM_FRAMES "
                                                                 r"LABEL', .*got 'frames/walk x 0'")]
    for text, error, message in cases:
        (rawframes / "val.txt").write_text(text)
        with pytest.raises(error, match=message):
            VideoDataset(rawframes, "val")


def break_frames(root: Path, kind: str) -> Tuple[Path, str]:
    """Damage frame-folder video 'frames/bad' of a rawframes root; returns (folder, expected message)."""
    bad = root / "frames" / "bad"
    make_frames(bad, 3 if kind == "short" else 20)
    listed = {"short": 3, "count": 30}.get(kind, 20)
    (root / "train.txt").write_text(f"frames/bad {listed} 1\nframes/walk 24 0\n")
    if kind == "missing":  # the centred window below reads frames 5 8 11 14 (files 6 9 12 15)
        (bad / "img_00012.jpg").unlink()
        return bad, rf"missing frame {re.escape(str(bad / 'img_00012.jpg'))}"
    if kind == "truncated":
        data = (bad / "img_00012.jpg").read_bytes()
        (bad / "img_00012.jpg").write_bytes(data[: len(data) // 2])
        return bad, rf"cannot read image {re.escape(str(bad / 'img_00012.jpg'))}: .*[Tt]runcated"
    if kind == "count":
        return bad, r"train\.txt, line 1 gives 30 frames, the folder has 20 \(img_\{:05d\}\.jpg from 1\)"
    return bad, "has 3 frames, the sampler needs 4"


@pytest.mark.parametrize("kind", ["missing", "truncated", "count", "short"])
def test_bad_frame_folder_fails_naming_the_folder_and_file_or_is_skipped(rawframes, kind):
    bad, message = break_frames(rawframes, kind)
    ds = VideoDataset(rawframes, "train", train=False, num_frames=4, stride=3, img_size=16)
    with pytest.raises(VideoReadError, match=message) as info:
        ds[0]
    assert info.value.path == str(bad) and str(info.value).startswith(f"bad video {bad}: ")
    assert len(str(info.value).splitlines()) == 1
    skipping = VideoDataset(rawframes, "train", train=False, num_frames=4, stride=3, img_size=16, skip_bad=True)
    item = skipping[0]
    assert isinstance(item, BadSample) and item.path == str(bad) and re.search(message, item.reason)
    views, label = skipping[1]
    assert views.shape == (1, 3, 4, 16, 16) and label == 0


def test_gap_in_a_class_folder_frame_folder_names_the_missing_frame(tmp_path):
    folder = make_frames(tmp_path / "train" / "a" / "v0", 12)
    (folder / "img_00005.jpg").unlink()
    ds = VideoDataset(tmp_path, "train", num_frames=2, img_size=16)
    missing = re.escape(str(folder / "img_00005.jpg"))
    with pytest.raises(VideoReadError, match=rf"bad video .*v0: missing frame {missing} although img_00006\.jpg "
                                             r"exists \(frames are numbered without gaps from 1\)"):
        ds[0]


def test_load_video_views_of_a_frame_folder(tmp_path):
    folder = make_frames(tmp_path / "clip", 40, size=(32, 24))
    views = load_video_views(folder, num_frames=8, stride=2, img_size=16, num_clips=2, num_crops=3)
    assert views.shape == (6, 3, 8, 16, 16) and views.dtype == torch.float32
    assert view_ids(views[3]) == dense_indices(40, 8, 2, train=False, clip_index=1, num_clips=2)
    ssv1 = make_frames(tmp_path / "ssv1", 16, template="{:05d}.jpg")
    seg = load_video_views(ssv1, num_frames=4, sampler="segment", img_size=16, frame_template="{:05d}.jpg")
    assert view_ids(seg[0]) == [1, 5, 9, 13]
    with pytest.raises(VideoReadError, match=r"clip: has 40 frames, the sampler needs 48"):
        load_video_views(folder, num_frames=48)
    with pytest.raises(FileNotFoundError, match="video file or frame folder not found: .*nowhere"):
        load_video_views(tmp_path / "nowhere")
