"""Per-epoch metrics: CSV (always), TensorBoard (when installed), the curves PNG of ``uniformer plot``, and the
metric helpers the epoch summaries use."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from timm.utils import accuracy

from .._io import atomic_path

__all__ = ["MetricsLogger", "read_metrics", "plot_run", "accuracy_counts", "format_metrics", "skipped_text"]


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> List[int]:
    """Number of samples whose target is in the top-k logits, for each k (k capped at the class count): timm's
    ``accuracy`` percentages turned back into exact counts."""
    return [round(float(percent) * len(target) / 100.0) for percent in accuracy(logits, target, topk=tuple(ks))]


def format_metrics(metrics: Mapping[str, float], names: Sequence[str]) -> str:
    """``mIoU 41.20  mAcc 52.10`` — the named metrics present in ``metrics``, two decimals each."""
    return "  ".join(f"{k} {metrics[k]:.2f}" for k in names if k in metrics)


def skipped_text(train_skipped: float, val_skipped: float) -> str:
    """The epoch summary's note of the bad samples ``--skip-bad`` dropped ('' when none)."""
    if not train_skipped and not val_skipped:
        return ""
    return f"  skipped {int(train_skipped)} train / {int(val_skipped)} val bad sample(s)"


def read_metrics(path: Union[str, os.PathLike]) -> List[Dict[str, float]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file: {path}")
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


class MetricsLogger:
    """Appends one row per epoch to ``metrics.csv``; on resume, rows after the resumed epoch are dropped first."""

    def __init__(self, run_dir: Path, resume_epoch: Optional[int] = None) -> None:
        self.path = run_dir / "metrics.csv"
        if resume_epoch is not None and self.path.is_file():
            rows = [r for r in self._rows() if int(float(r["epoch"])) <= resume_epoch]
            self._write(rows, list(rows[0]) if rows else None)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # TensorBoard is optional
            pass

    def _rows(self) -> List[Dict[str, str]]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: List[Dict[str, str]], fields: Optional[List[str]]) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            if fields:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

    def log(self, row: Dict[str, float]) -> None:
        rows = self._rows() if self.path.is_file() and self.path.stat().st_size else []
        fields = list(rows[0]) if rows else list(row)
        for k in row:
            if k not in fields:
                fields.append(k)
        rows.append({k: f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in row.items()})
        self._write(rows, fields)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.tb.add_scalar(k, v, int(row["epoch"]))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_run(run_dir: Union[str, os.PathLike], output: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Write loss, accuracy and learning-rate curves of a run as a PNG (default ``RUN_DIR/curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    rows = read_metrics(run_dir / "metrics.csv")
    if not rows:
        raise ValueError(f"{run_dir / 'metrics.csv'} has no finished epoch yet")
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    classification = any("val_acc1" in r for r in rows)
    if classification:
        scores = [("train_acc1", "train"), ("val_acc1", "val top-1"), ("val_acc5", "val top-5"),
                  ("ema_val_acc1", "EMA val top-1")]
        primary, score_title = "val_acc1", "accuracy (%)"
    else:  # dense tasks: every validation metric, the first (mIoU, bbox_AP, AP) being the one 'best' follows
        keys = [k for k in rows[0] if k.startswith("val_") and k != "val_loss"]
        scores = [(k, k[4:]) for k in keys]
        primary, score_title = (keys[0] if keys else "val_acc1"), "validation metrics"
    panels = [
        ("loss", [("train_loss", "train"), ("val_loss", "val")], False),
        (score_title, scores, False),
        ("learning rate", [("lr", "lr")], True),
    ]
    for ax, (title, series, log) in zip(axes, panels):
        for key, label in series:
            if any(key in r for r in rows):
                ax.plot(epochs, [r.get(key, float("nan")) for r in rows], marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
        ax.legend()
    best = max(rows, key=lambda r: r.get(primary, float("-inf")))
    what = "top-1" if classification else primary[4:]
    fig.suptitle(f"{run_dir.name}: best val {what} {best.get(primary, float('nan')):.2f}"
                 f"{'%' if classification else ''} at epoch {int(best['epoch'])}")
    fig.tight_layout()
    out = Path(output) if output else run_dir / "curves.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
