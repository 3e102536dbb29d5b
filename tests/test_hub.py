"""Hugging Face Hub weights, Kinetics-600 names and the saved-folder layout that timm and the Hub accept.

The hub tests do not mock anything: they lay out a real Hugging Face cache folder (blobs/, refs/main,
snapshots/<commit>/FILE, as huggingface_hub stores a download) holding official-layout checkpoints, and load them
through timm's own pretrained loading in a subprocess with ``HF_HUB_OFFLINE=1`` (huggingface_hub reads its
environment variables at import time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import REPO, SHARED, TINY, fake_state_dict, run_cli, write_video
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from timm.models._hub import save_for_hf

import uniformer
from uniformer.models.weights import HUB_FILES
from uniformer.models.uniformer_video import (HUB_VIDEO, VideoProtocol, kinetics400_classes, kinetics600_classes,
                                              video_protocol)
from uniformer.tasks.build import build_task_model

HUB_IMAGE = "Sense-X/uniformer_image"
TINY_LIGHT_RUN = ["--model", "uniformer_xxs", "--model-args",
                  json.dumps({"depth": [1, 1, 3, 2], "embed_dim": [16, 32, 64, 128], "head_dim": 16}), "--img-size", "32"]
CLASSES = ("cat", "dog")

# The official file of every standard video tag, as the authors name them in Sense-X/uniformer_video (small; base
# the same with "base"): uniformer_{size}_k{400,600}_{T}x{τ}.pth and uniformer_{size}_sthv{1,2}[_32]_prek{400,600}.pth.
OFFICIAL_VIDEO_FILES = {
    "k400_16x4": "uniformer_small_k400_16x4.pth",
    "k400_8x8": "uniformer_small_k400_8x8.pth",
    "k400_16x8": "uniformer_small_k400_16x8.pth",
    "k400_32x4": "uniformer_small_k400_32x4.pth",
    "k600_16x4": "uniformer_small_k600_16x4.pth",
    "k600_16x8": "uniformer_small_k600_16x8.pth",
    "k600_32x4": "uniformer_small_k600_32x4.pth",
    "ssv1_16_prek400": "uniformer_small_sthv1_prek400.pth",
    "ssv1_16_prek600": "uniformer_small_sthv1_prek600.pth",
    "ssv1_32_prek400": "uniformer_small_sthv1_32_prek400.pth",
    "ssv1_32_prek600": "uniformer_small_sthv1_32_prek600.pth",
    "ssv2_16_prek400": "uniformer_small_sthv2_prek400.pth",
    "ssv2_16_prek600": "uniformer_small_sthv2_prek600.pth",
    "ssv2_32_prek400": "uniformer_small_sthv2_32_prek400.pth",
    "ssv2_32_prek600": "uniformer_small_sthv2_32_prek600.pth",
}


# ------------------------------------------------------------------------------------------------------ tag table
@pytest.mark.parametrize("size", ["small", "base"])
def test_standard_video_tags_name_the_official_hub_files(size):
    arch = f"uniformer_video_{size}"
    assert uniformer.checkpoint_tags(arch) == list(OFFICIAL_VIDEO_FILES)  # k400_16x4 stays the default tag
    for tag, filename in OFFICIAL_VIDEO_FILES.items():
        cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}").to_dict()
        assert (cfg["hf_hub_id"], cfg["hf_hub_filename"]) == (HUB_VIDEO, filename.replace("small", size)), tag
        proto = video_protocol(cfg)
        frames = int(tag.split("_")[1].split("x")[0])
        assert "head_dim=64" in cfg["notes"] and proto.frames == frames, tag
        assert cfg["mean"] == (0.45, 0.45, 0.45) and cfg["std"] == (0.225, 0.225, 0.225)
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 1.0
        if tag.startswith("ssv"):
            assert cfg["num_classes"] == 174 and proto.sampler == "segment" and proto.views == "1x3"
            assert cfg.get("label_names") is None  # no offline source for the Something-Something label list
        else:
            k = 400 if tag.startswith("k400") else 600
            assert cfg["num_classes"] == k and proto.sampler == "dense" and proto.views == "4x1"
            assert proto.stride == int(tag.split("x")[1])
            assert tuple(cfg["label_names"]) == (kinetics400_classes() if k == 400 else kinetics600_classes())


def test_every_image_tag_has_a_hub_file_and_light_video_tags_load_from_local_files():
    for name in uniformer.list_models(pretrained=True):
        cfg = timm.models.get_pretrained_cfg(name)
        if name.startswith(("uniformer_video_xxs", "uniformer_video_xs", "vt_resnet")):
            assert cfg.hf_hub_id is None and cfg.hf_hub_filename is None, name
        elif name.startswith("uniformer_video"):
            assert cfg.hf_hub_id == HUB_VIDEO, name
        else:
            assert cfg.hf_hub_id == HUB_IMAGE and cfg.hf_hub_filename.endswith(".pth"), name
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model("uniformer_video_xxs.k400_4f_128", pretrained=True, depth=[1, 1, 3, 2],
                          embed_dim=[16, 32, 64, 128], head_dim=16)


def test_renamed_something_something_tags_fail_with_the_new_names():
    with pytest.raises(ValueError, match="unknown checkpoint tag 'ssv2_16'.*ssv2_16_prek400, ssv2_16_prek600"):
        uniformer.resolve_model_name("uniformer_video_small.ssv2_16")


# ------------------------------------------------------------------------------------------------- Kinetics-600
def test_kinetics600_names_ship_as_package_data():
    names = kinetics600_classes()
    assert len(names) == len(set(names)) == 600 and list(names) == sorted(names)
    assert names[0] == "abseiling" and names[1] == "acting in play" and names[-1] == "zumba"
    assert names[17] == "backflip (human)" and names[308] == "passing American football (in game)"
    assert len(set(names) & set(kinetics400_classes())) == 368  # K600 renamed or split 32 of the K400 classes
    shipped = resources.files("uniformer.models").joinpath("kinetics600_classes.txt")
    assert shipped.read_text() == (SHARED / "data" / "kinetics600_classes.txt").read_text()
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["uniformer"]
    assert any(fnmatch("models/kinetics600_classes.txt", p) for p in patterns), patterns


@pytest.mark.slow
def test_predict_video_with_an_official_style_k600_checkpoint_prints_kinetics600_names(tmp_path):
    torch.manual_seed(0)
    state = uniformer.create_model("uniformer_video_small", num_classes=600).state_dict()
    top = ["acting in play", "zumba", "backflip (human)", "wood burning (art)", "passing American football (in game)"]
    names = kinetics600_classes()
    state["head.weight"].zero_()  # logits = bias: the top 5 are known whatever the clip
    state["head.bias"].zero_()
    for rank, name in enumerate(top):
        state["head.bias"][names.index(name)] = 5.0 - rank
    ckpt = tmp_path / "uniformer_small_k600_16x4.pth"
    torch.save({"model_state": state, "epoch": 110}, ckpt)
    clip = write_video(tmp_path / "clip.mp4", frames=12)
    out = run_cli("predict-video", "--model", "uniformer_video_small.k600_16x4", "--checkpoint", str(ckpt),
                  "--views", "1x1", "--num-frames", "4", "--img-size", "64", str(clip)).stdout
    printed = [line.split("%", 1)[1].strip() for line in out.strip().splitlines()[1:]]
    assert printed == top


# --------------------------------------------------------------------------------------- offline Hugging Face cache
def add_to_hf_cache(cache: Path, repo_id: str, filename: str, source: Path) -> Path:
    """Move ``source`` into a Hugging Face hub cache as huggingface_hub stores a download of ``repo_id``/``filename``:
    the content in ``blobs/<sha256>``, ``refs/main`` naming the commit, ``snapshots/<commit>/<filename>`` a relative
    symlink to the blob."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    blob = repo / "blobs" / digest.hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    pointer = repo / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return pointer


OFFLINE_SCRIPT = r"""
import sys

import timm
import torch
from huggingface_hub import constants

import uniformer
from uniformer.models.weights import read_checkpoint

assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE == sys.argv[3]
expected = {"uniformer_xxs.in1k_128": read_checkpoint(sys.argv[1])["model_ema"],  # light: the evaluated EMA weights
            "uniformer_video_small.k400_16x8": read_checkpoint(sys.argv[2])["model_state"]}
for create, (name, state) in zip((uniformer.create_model, timm.create_model), expected.items()):
    loaded = create(name, pretrained=True).state_dict()
    assert loaded.keys() == state.keys(), (name, sorted(set(loaded) ^ set(state))[:4])
    assert all(torch.equal(loaded[k], state[k]) for k in state), name
    print("loaded", name, "via", create.__module__)
# a saved folder uploaded as HUB_FILES loads as a timm Hub repository
shared = timm.create_model("hf-hub:me/uniformer-tiny", pretrained=True).state_dict()
state = read_checkpoint(sys.argv[4])
assert shared.keys() == state.keys() and all(torch.equal(shared[k], state[k]) for k in state)
print("loaded hf-hub:me/uniformer-tiny")
try:
    timm.create_model("uniformer_video_small.k400_8x8", pretrained=True)
except Exception as e:
    chain = []
    while e is not None:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__
    print("missing:", " <- ".join(chain))
else:
    raise SystemExit("a checkpoint that is not in the offline cache loaded")
try:
    uniformer.create_model("uniformer_video_small.k400_8x8", pretrained=True)
except FileNotFoundError as e:
    print("ours:", e)
"""


@pytest.mark.slow
def test_pretrained_tags_load_official_files_from_the_offline_hf_cache(tmp_path, official_keys):
    cache = tmp_path / "hf" / "hub"
    image = fake_state_dict(official_keys["image_light/uniformer_xxs"], seed=1)
    image_ema = fake_state_dict(official_keys["image_light/uniformer_xxs"], seed=2)
    image_file = tmp_path / "image.pth"
    torch.save({"model": image, "model_ema": image_ema, "epoch": 599, "max_accuracy": 76.8,
                "args": argparse.Namespace(model="uniformer_xxs", input_size=128, model_ema=True)}, image_file)
    video_file = tmp_path / "video.pth"
    torch.save({"epoch": 110, "model_state": fake_state_dict(official_keys["video_k400/uniformer_small"], seed=3),
                "cfg": "MODEL:\n  ARCH: uniformer\nDATA:\n  NUM_FRAMES: 16\n  SAMPLING_RATE: 8\n"}, video_file)
    image_file = add_to_hf_cache(cache, HUB_IMAGE, "uniformer_xxs_128_in1k.pth", image_file)
    video_file = add_to_hf_cache(cache, HUB_VIDEO, "uniformer_small_k400_16x8.pth", video_file)
    torch.manual_seed(0)
    folder = uniformer.save_pretrained(uniformer.create_model("uniformer_small", **TINY), tmp_path / "tiny",
                                       label_names=[f"c{i}" for i in range(10)])
    for name in filter_repo_objects(sorted(p.name for p in folder.iterdir()), allow_patterns=list(HUB_FILES)):
        shutil.copyfile(folder / name, tmp_path / "upload")
        add_to_hf_cache(cache, "me/uniformer-tiny", name, tmp_path / "upload")
    before = sorted(str(p) for p in cache.rglob("*"))
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(image_file), str(video_file), str(cache),
                           str(folder / "model.safetensors")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("loaded uniformer_") == 2 and "loaded hf-hub:me/uniformer-tiny" in proc.stdout
    missing = proc.stdout.split("missing: ", 1)[1]
    assert missing.startswith("LocalEntryNotFoundError") and "offline mode is enabled" in missing
    assert "HF_HUB_OFFLINE" in missing and "Sense-X/uniformer_video/resolve/main/uniformer_small_k400_8x8.pth" in missing
    ours = proc.stdout.split("ours: ", 1)[1].splitlines()[0]  # uniformer.create_model: one actionable sentence
    assert ours == ("uniformer_video_small.k400_8x8: the pretrained weights Sense-X/uniformer_video/"
                    "uniformer_small_k400_8x8.pth are not in the local Hugging Face cache and the Hub cannot be "
                    "reached (HF_HUB_OFFLINE is set); download them once online, or pass checkpoint_path= a local copy")
    assert sorted(str(p) for p in cache.rglob("*")) == before  # nothing downloaded or written


# ------------------------------------------------------------------------------------ saved folders: timm and Hub
def image_folder(root: Path, per_class: int = 4) -> Path:
    """A two-class ImageFolder (train/ and val/) of small noisy dark vs bright images."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for value, name in zip((40, 210), CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(value, 20, (36, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_training_run_checkpoint_loads_with_timm_local_dir_and_has_the_hub_layout(tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--data", str(image_folder(tmp_path / "data")), *TINY_LIGHT_RUN, "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--output", str(run), OMP_NUM_THREADS="1")
    best = run / "best"
    ours = uniformer.load_pretrained(best).eval()
    theirs = timm.create_model(f"local-dir:{best}", pretrained=True).eval()
    assert type(theirs) is type(ours) and theirs.head_dim == ours.head_dim == 16
    assert (theirs.depth, theirs.embed_dim, theirs.prune_ratio) == (ours.depth, ours.embed_dim, ours.prune_ratio)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert list(theirs.pretrained_cfg["label_names"]) == list(ours.pretrained_cfg["label_names"]) == list(CLASSES)
    assert timm.data.resolve_data_config({}, model=theirs)["input_size"] == (3, 32, 32)

    # config.json: a superset of what timm's save_for_hf writes for the same model, equal where both have a value
    reference = tmp_path / "timm_saved"
    save_for_hf(ours, str(reference), safe_serialization=True)
    saved, timm_cfg = (json.loads((d / "config.json").read_text()) for d in (best, reference))
    assert set(timm_cfg) <= set(saved) and set(timm_cfg["pretrained_cfg"]) <= set(saved["pretrained_cfg"])
    assert {k: v for k, v in saved.items() if k in timm_cfg} == timm_cfg
    assert saved["model_args"]["head_dim"] == 16 and saved["pretrained_cfg"]["notes"] == ["head_dim=16"]

    # the files an upload of the folder takes (huggingface_hub's own filter) are exactly the timm repository files
    files = sorted(p.name for p in best.iterdir())
    assert files == ["config.json", "model.safetensors", "training_state.pt"]
    uploaded = sorted(filter_repo_objects(files, allow_patterns=list(HUB_FILES)))
    assert uploaded == sorted(p.name for p in reference.iterdir()) == ["config.json", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert all((best / f).stat().st_mode & 0o777 == 0o666 & ~umask for f in uploaded)  # not private 0600 files


def test_video_folder_keeps_protocol_and_kinetics600_names_through_timm_local_dir(tmp_path):
    torch.manual_seed(0)
    model = uniformer.create_model("uniformer_video_small.k600_16x8", **dict(TINY, num_classes=600)).eval()
    folder = uniformer.save_pretrained(model, tmp_path / "video", label_names=kinetics600_classes())
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert theirs.dims == 3 and theirs.head_dim == 16
    assert video_protocol(theirs.pretrained_cfg) == VideoProtocol(frames=16, stride=8, sampler="dense", views="4x1")
    assert tuple(theirs.pretrained_cfg["label_names"]) == kinetics600_classes()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(theirs(x), model(x))
    with pytest.raises(ValueError, match="3 label names for a model with 600 classes"):
        uniformer.save_pretrained(model, tmp_path / "bad", label_names=["a", "b", "c"])


def test_dense_task_folder_is_not_a_timm_model(tmp_path):
    model = build_task_model("segmentation", "uniformer_small", 3,
                             model_args={k: v for k, v in TINY.items() if k != "num_classes"})
    folder = uniformer.save_pretrained(model, tmp_path / "seg")
    assert json.loads((folder / "config.json").read_text())["task"] == "segmentation"
    with pytest.raises(TypeError, match="unexpected keyword argument 'task'"):  # refused, never a bare backbone
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    back = uniformer.load_pretrained(folder)
    assert back.task_config["task"] == "segmentation"
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
