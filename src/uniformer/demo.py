"""``make demo``: build a model, save it, load it back from disk and classify an image (CPU, seconds).

Run with ``python -m uniformer.demo [OUT_DIR]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import cli, create_model, count_params, save_pretrained


def main(out_dir: str = "demo_out") -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("uniformer_xxs")
    print(f"built uniformer_xxs: {count_params(model):,} parameters")
    save_pretrained(model, out / "uniformer_xxs")
    print(f"saved {out / 'uniformer_xxs'} (model.safetensors + config.json)")
    yy, xx = np.mgrid[0:224, 0:224]
    pattern = np.stack([(xx * 255 // 223), (yy * 255 // 223), ((xx + yy) % 64) * 4], axis=-1).astype(np.uint8)
    image = out / "pattern.png"
    Image.fromarray(pattern).save(image)
    print("predicting with the reloaded model (random weights until you load a checkpoint):")
    return cli.main(["predict", "--checkpoint", str(out / "uniformer_xxs"), "--topk", "3", str(image)])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
