"""Shared test fixtures: the official reference data in ../shared (next to the repository)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNIFORMER_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"

torch.set_num_threads(min(2, torch.get_num_threads()))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"official reference data not found at {path}; set UNIFORMER_SHARED to the shared/ folder")
    return path


@pytest.fixture(scope="session")
def official_keys() -> Dict[str, Dict[str, list]]:
    return json.loads(_require(REFERENCE / "official_keys.json").read_text())


def load_parity(name: str) -> Dict[str, Any]:
    """One official parity fixture (config, state dict, input, expected output)."""
    return torch.load(_require(REFERENCE / "parity" / f"{name}.pt"), weights_only=True, map_location="cpu")


def fake_state_dict(shapes: Dict[str, list], seed: int = 0) -> Dict[str, torch.Tensor]:
    """A state dict with exactly the given keys and shapes (random values; BN counters as long scalars)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.zeros((), dtype=torch.long) if k.endswith("num_batches_tracked") else torch.rand(s, generator=g) + 0.5
        for k, s in shapes.items()
    }


TINY = dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 128], head_dim=16, num_classes=10)
TINY_LIGHT = dict(
    depth=[1, 1, 3, 2], embed_dim=[16, 32, 64, 128], head_dim=16, num_classes=10,
    prune_ratio=[[], [], [1, 0.5, 0.5], [0.5, 0.5]], trade_off=[[], [], [1, 0.5, 0.5], [0.5, 0.5]],
)
# Every image architecture with a tiny configuration of its own family.
TINY_VARIANTS = {
    "uniformer_small": TINY,
    "uniformer_small_plus": dict(TINY, head_dim=32),
    "uniformer_base_ls": TINY,
    "uniformer_small_tl": TINY,
    "uniformer_large_ls_tl": TINY,
    "uniformer_xxs": TINY_LIGHT,
    "uniformer_xs": TINY_LIGHT,
}


def write_video(path: Path, frames: int = 16, size: tuple = (64, 64), direction: int = 1, fps: int = 10) -> Path:
    """Encode a real MP4 (MPEG-4 part 2) with PyAV: a bright square moving left→right (direction 1) or right→left."""
    import av
    import numpy as np

    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(frames):
            img = np.full((h, w, 3), 30, dtype=np.uint8)
            x = int((k / max(frames - 1, 1)) * (w - 16)) if direction > 0 else int((1 - k / max(frames - 1, 1)) * (w - 16))
            img[h // 2 - 8: h // 2 + 8, x: x + 16] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_cli(*args: str, check: bool = True, timeout: int = 600, **env: str):
    """Run ``python -m uniformer.cli ARGS`` as a real subprocess (``env`` adds environment variables)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "uniformer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **env))
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line_error(proc, *fragments: str) -> str:
    """Assert the CLI failed with exactly one ``uniformer: error: ...`` line containing every fragment (argparse
    usage errors name the command: ``uniformer info: error: argument --input-size: ...``)."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"uniformer( [\w-]+)?: error: ", lines[0]), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


STANDIN_CHANNELS = [16, 32, 64, 128]


class StandInBackbone(torch.nn.Module):
    """A 4-level backbone stand-in: strided convs to strides 4/8/16/32 with 16/32/64/128 channels."""

    def __init__(self) -> None:
        super().__init__()
        c = STANDIN_CHANNELS
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(3, 16, 4, 4)] + [torch.nn.Conv2d(c[i], c[i + 1], 2, 2)
                                                                          for i in range(3)])

    def forward(self, x: torch.Tensor):
        out = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            out.append(x)
        return out
