"""Crash-safe run directories.

Layout::

    RUN_DIR/config.yaml                 the resolved options (what --resume continues with)
    RUN_DIR/metrics.csv                 one row per finished epoch
    RUN_DIR/checkpoints/epoch-NNNN/     model.safetensors + config.json + training_state.pt
    RUN_DIR/last -> checkpoints/epoch-NNNN   (symlink, swapped atomically)
    RUN_DIR/best -> checkpoints/epoch-MMMM

An epoch directory is written under a temporary name, fsynced and renamed; only then are the ``last``/``best``
links swapped (``os.replace`` of a symlink is atomic). A crash at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import atomic_path, save_pretrained

__all__ = ["RunDir", "rng_state", "set_rng_state", "resolve_checkpoint_path", "TRAINING_STATE"]

TRAINING_STATE = "training_state.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> Dict[str, Any]:
    """All random generators that affect training (torch CPU/CUDA, NumPy, Python), as weights-only-safe values."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_checkpoint_path(path: Union[str, os.PathLike]) -> Path:
    """A run directory means its ``best`` checkpoint (``last`` if no best yet); anything else is returned as is."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").exists():
        for name in ("best", "last"):
            if (path / name / "config.json").is_file():
                return path / name
        if (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
            raise FileNotFoundError(f"run directory {path} has no finished checkpoint yet")
    return path


class RunDir:
    """A training run's directory (see the module docstring for the layout)."""

    def __init__(self, root: Union[str, os.PathLike]) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.csv"

    def pointer(self, name: str) -> Optional[Path]:
        """Resolved ``last``/``best`` checkpoint directory, or None."""
        link = self.root / name
        return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None

    def _point(self, name: str, target: Path) -> None:
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, self.root / name)

    def save(
        self,
        epoch: int,
        model: nn.Module,
        training_state: Dict[str, Any],
        is_best: bool,
        label_names: Optional[Sequence[str]] = None,
        data_config: Optional[Dict[str, Any]] = None,
    ) -> Path:
        """Write the checkpoint of a finished ``epoch`` (0-based) and move ``last`` (and ``best``) to it."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints / f"epoch-{epoch + 1:04d}"
        tmp = self.checkpoints / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            save_pretrained(model, tmp, label_names=label_names, data_config=data_config)
            with atomic_path(tmp / TRAINING_STATE) as p:
                torch.save(training_state, p)
            _fsync_dir(tmp)
            if final.exists():  # the same epoch re-run after a crash: the new one replaces it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.checkpoints)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._point("last", final)
        if is_best:
            self._point("best", final)
        _fsync_dir(self.root)
        self._prune()
        return final

    def _prune(self) -> None:
        keep = {p for p in (self.pointer("last"), self.pointer("best")) if p is not None}
        for d in self.checkpoints.iterdir():
            if d.is_dir() and d.resolve() not in keep and (d.name.startswith("epoch-") or ".tmp-" in d.name):
                shutil.rmtree(d, ignore_errors=True)

    def load_training_state(self) -> Dict[str, Any]:
        """The ``last`` checkpoint's training state (weights-only unpickling)."""
        last = self.pointer("last")
        if last is None:
            raise FileNotFoundError(f"cannot resume: {self.root} has no finished checkpoint (no 'last' link)")
        from ..checkpoint import SAFE_GLOBALS

        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(last / TRAINING_STATE, map_location="cpu", weights_only=True)
        state["path"] = last
        return state
