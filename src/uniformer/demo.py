"""``make demo``: train UniFormer-XXS on the embedded digits set on the CPU, evaluate it, predict held-out digits
and plot the curves — the whole library in a few minutes. Run with
``python -m uniformer.demo [--output DIR] [--epochs N]``."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


from . import cli
from .data import DigitsDataset
from .engine import TrainConfig, evaluate_checkpoint, train
from .engine.metrics import plot_run

RECIPE = dict(data="digits", model="uniformer_xxs", img_size=64, epochs=8, batch_size=64, lr=2e-3, warmup_epochs=1,
              weight_decay=0.05, smoothing=0.1, model_ema=True, workers=2, seed=0)  # = configs/digits_uniformer_xxs.yaml


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uniformer.demo", description=__doc__)
    parser.add_argument("--output", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="training epochs (default: 8)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    run_dir = out / "digits-uniformer_xxs"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    print("== 1/4 train uniformer_xxs on digits (64x64, CPU)")
    summary = train(TrainConfig(**dict(RECIPE, output=str(run_dir), epochs=args.epochs)))

    print(f"\n== 2/4 evaluate the best checkpoint ({run_dir / 'best'})")
    result = evaluate_checkpoint(str(run_dir), workers=2)
    print(f"validation accuracy: {result['acc1']:.2f}% ({int(result['correct1'])}/{int(result['count'])} held-out digits)")

    print("\n== 3/4 predict held-out digits with the saved model")
    val = DigitsDataset("val", img_size=64)
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in (0, 1, 2, 3):
        img, label = val[i]
        path = samples / f"val{i}_label{label}.png"
        img.save(path)
        paths.append(str(path))
    code = cli.main(["predict", "--checkpoint", str(run_dir), "--topk", "3", *paths])
    if code:
        return code

    print("\n== 4/4 plot the training curves")
    png = plot_run(run_dir)
    print(f"wrote {png}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s: best val top-1 {summary['best_acc1']:.2f}% "
          f"(epoch {summary['best_epoch']}); run directory {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
