"""Run directories: their layout, crash-safe checkpoints, one training at a time, and starting a run.

Layout::

    RUN_DIR/config.yaml                 the resolved options (what --resume continues with)
    RUN_DIR/metrics.csv                 one row per finished epoch
    RUN_DIR/checkpoints/epoch-NNNN/     model.safetensors + config.json + training_state.pt
    RUN_DIR/last -> checkpoints/epoch-NNNN   (symlink, swapped atomically)
    RUN_DIR/best -> checkpoints/epoch-MMMM
    RUN_DIR/.lock                       while a training runs in it: {"pid", "host", "started"} (JSON)

An epoch directory is written under a temporary name, fsynced and renamed; only then are the ``last``/``best``
links swapped (``os.replace`` of a symlink is atomic). A crash at any moment leaves the previous checkpoint intact.

A run directory is never lost: :func:`claim_run` refuses a folder that holds a run unless it is resumed or, with
``overwrite``, moved aside to ``RUN_DIR.old-<time>``; and :class:`RunLock` lets one training at a time write into it.
:func:`start_run` does both for a training under ``torchrun`` (rank 0 claims, every rank learns the outcome).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import random
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .._io import atomic_path, fsync_dir
from ..data import DIGITS
from ..data.frames import DEFAULT_FRAME_START, DEFAULT_FRAME_TEMPLATE
from ..models.weights import SAFE_GLOBALS, save_pretrained
from .config import TrainConfig, load_yaml, save_yaml
from .distributed import DistContext

__all__ = ["RunDir", "RunLock", "claim_run", "start_run", "absolute_paths", "rng_state", "set_rng_state",
           "resolve_checkpoint_path", "run_data", "run_frame_naming", "TRAINING_STATE", "LOCK_FILE"]

TRAINING_STATE = "training_state.pt"
LOCK_FILE = ".lock"
RUN_MARKERS = ("config.yaml", "metrics.csv", "checkpoints", "last", "best")  # any of these: the folder holds a run


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

    def holds_run(self) -> bool:
        """Whether the folder holds (part of) a training run: options, metrics, checkpoints or their links."""
        return any(os.path.lexists(self.root / name) for name in RUN_MARKERS)

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
            fsync_dir(tmp)
            if final.exists():  # the same epoch re-run after a crash: the new one replaces it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.checkpoints)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._point("last", final)
        if is_best:
            self._point("best", final)
        fsync_dir(self.root)
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
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(last / TRAINING_STATE, map_location="cpu", weights_only=True)
        state["path"] = last
        return state


# ------------------------------------------------------------------------------------------------- ownership
_LOCK_BUSY = (errno.EACCES, errno.EAGAIN)


def _describe(holder: Dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', 'unknown')} on {holder.get('host', 'an unknown host')}, started "
            f"{holder.get('started', 'at an unknown time')}")


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_holder(fd: int) -> Dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """One training at a time in a run directory: ``RUN_DIR/.lock`` holds the owner's pid, host and start time
    (JSON) and carries a POSIX record lock (``fcntl.lockf``) on the whole file.

    The kernel drops the record lock when its process ends, however it ends, and forked DataLoader workers do not
    inherit it; so a lock file that no process locks is stale (its owner died) and is taken over with a log line. On
    file systems without record locks the pid is checked instead (on this host; a lock from another host is kept).
    :meth:`release` removes the file. The owning process must not open the lock file a second time: closing any
    descriptor of a file drops the process's record locks on it.
    """

    def __init__(self, root: Union[str, os.PathLike], created: Sequence[Path] = ()) -> None:
        self.root = Path(root)
        self.created = list(created)  # folders made for this run, removed on release if still empty
        self._fd: Optional[int] = None

    @property
    def path(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at :attr:`path` (an owner releasing the lock unlinks it)."""
        try:
            st, own = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _busy(self, holder: Dict[str, Any]) -> BlockingIOError:
        return BlockingIOError(f"run directory {self.root} is in use by another training ({_describe(holder)}): "
                               "wait for it to finish, or train into another --output")

    def acquire(self, log: Callable[[str], None] = print) -> "RunLock":
        """Take the lock; ``BlockingIOError`` naming the folder and the owner's pid when a live process holds it."""
        if self._fd is not None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    kernel_lock = True
                except OSError as e:
                    if e.errno in _LOCK_BUSY:
                        holder: Dict[str, Any] = {}
                        for _ in range(20):  # the owner writes its details right after locking
                            holder = _read_holder(fd)
                            if holder:
                                break
                            time.sleep(0.05)
                        raise self._busy(holder) from None
                    kernel_lock = False  # ENOLCK, EOPNOTSUPP, ...: fall back to the recorded pid
                if not self._is_current(fd):
                    os.close(fd)
                    continue
                previous = _read_holder(fd)
                if previous and not kernel_lock and previous.get("pid") != os.getpid() and (
                        previous.get("host") != socket.gethostname() or _pid_alive(previous.get("pid"))):
                    raise self._busy(previous)
                me = dict(pid=os.getpid(), host=socket.gethostname(),
                          started=datetime.now().isoformat(timespec="seconds"))
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            if previous and previous.get("pid") != os.getpid():
                log(f"took over the stale lock of {self.root}: {_describe(previous)}, is no longer running")
            return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (then folders made for the run that stayed empty). Never raises:
        a lock file left behind (e.g. in a folder made read-only) is stale and taken over by the next training."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                if self._is_current(fd):
                    os.unlink(self.path)
            except OSError:
                pass
            finally:
                os.close(fd)
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break
        self.created = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _missing_folders(root: Path) -> List[Path]:
    """``root`` and its ancestors that do not exist yet, innermost first."""
    missing = []
    while not os.path.lexists(root) and root != root.parent:
        missing.append(root)
        root = root.parent
    return missing


def _aside(root: Path) -> Path:
    """A free sibling name for a run moved aside: ``RUN.old-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, … if taken)."""
    base = f"{root.name}.old-{datetime.now():%Y%m%d-%H%M%S}"
    candidate, n = root.with_name(base), 2
    while os.path.lexists(candidate):
        candidate, n = root.with_name(f"{base}-{n}"), n + 1
    return candidate


def claim_run(root: Union[str, os.PathLike], resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = print) -> RunLock:
    """Take ``root`` for a training and return its held :class:`RunLock` (release it when the training ends).

    ``resume``: the folder must hold a run; it is continued. Otherwise a missing or run-less folder is used as is,
    and a folder that holds a run (``config.yaml``, ``metrics.csv``, checkpoints) is refused with ``FileExistsError``
    unless ``overwrite``, which moves that run aside to ``RUN.old-<time>`` (logged; nothing is deleted). A folder
    another training holds raises ``BlockingIOError`` naming its pid, in every mode.
    """
    root = Path(os.path.abspath(root))
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite starts it again: pass one of them")
    if os.path.lexists(root) and not root.is_dir():
        raise NotADirectoryError(f"run directory {root} is not a folder: pass another --output")
    if resume:
        if not RunDir(root).holds_run():
            raise FileNotFoundError(f"cannot resume: {root} holds no training run (no config.yaml)")
        return RunLock(root).acquire(log)
    created = _missing_folders(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(root, created)
    try:
        lock.acquire(log)
        if RunDir(root).holds_run():  # checked under the lock: a run that just finished counts
            if not overwrite:
                raise FileExistsError(f"{root} already holds a training run: pass --resume {root} to continue it, "
                                      "or --overwrite to start again (the old run is moved aside, never deleted)")
            old = _aside(root)
            os.rename(root, old)
            lock.root, lock.created = old, []  # our lock moved with the folder
            log(f"moved the previous run in {root} aside to {old}")
            root.mkdir()
            fresh = RunLock(root, [root]).acquire(log)
            lock.release()
            lock = fresh
    except BaseException:
        lock.release()
        raise
    return lock


# --------------------------------------------------------------------------------------------- starting a run
def default_output(config: TrainConfig) -> str:
    data = "digits" if config.data == DIGITS else Path(config.data).name
    return str(Path("runs") / f"{config.model}-{data}-{datetime.now():%Y%m%d-%H%M%S}")


PATH_OPTIONS = ("data", "init_checkpoint", "output", "resume", "person_boxes")  # saved absolute


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its path options (:data:`PATH_OPTIONS`) absolute and ``~`` expanded (``digits`` stays), so that
    the saved run evaluates and resumes from any working directory."""
    changes = {name: os.path.abspath(os.path.expanduser(str(value))) for name in PATH_OPTIONS
               if (value := getattr(config, name)) and not (name == "data" and value == DIGITS)}
    return dataclasses.replace(config, **changes)


_CLAIM_ERRORS = {e.__name__: e for e in (FileExistsError, BlockingIOError, FileNotFoundError, NotADirectoryError,
                                         PermissionError, ValueError)}


def start_run(config: TrainConfig, ctx: DistContext, log: Callable[[str], None]
              ) -> Tuple[TrainConfig, Optional[RunLock]]:
    """Make the path options absolute and let rank 0 claim the run directory (:func:`claim_run`: refuse a folder
    holding a run unless ``--resume``/``--overwrite``, take its lock). Every rank gets rank 0's outcome: the config
    with ``output`` set to the run directory, or rank 0's error. Returns the held lock on rank 0, None elsewhere."""
    config = absolute_paths(config)
    lock, error, outcome = None, None, None
    if ctx.is_main:
        root = config.resume or config.output or os.path.abspath(default_output(config))
        try:
            lock = claim_run(root, resume=bool(config.resume), overwrite=config.overwrite, log=log)
            outcome = (root, None, None)
        except (OSError, ValueError) as e:
            error, outcome = e, (root, type(e).__name__, str(e))
    root, kind, message = ctx.broadcast_object(outcome)
    if error is not None:
        raise error
    if kind is not None:
        raise _CLAIM_ERRORS.get(kind, OSError)(message)
    return (config if config.resume else dataclasses.replace(config, output=root)), lock


def save_run_config(config: TrainConfig, run: RunDir) -> None:
    """Write the options as the run's ``config.yaml``: what ``--resume`` continues with."""
    save_yaml(dataclasses.replace(config, output=str(run.root), resume=None, overwrite=False), run.config_file)


# ------------------------------------------------------------------------------------- a checkpoint's training run
def _run_config_file(checkpoint: str, path: Path) -> Optional[Path]:
    """The ``config.yaml`` of the training run a checkpoint belongs to, if it is inside one."""
    return next((p / "config.yaml" for p in (Path(checkpoint), path.resolve().parent.parent)
                 if (p / "config.yaml").is_file()), None)


def run_data(checkpoint: str, path: Path) -> str:
    """The ``--data`` of the training run a checkpoint belongs to (its ``config.yaml``)."""
    run_config = _run_config_file(checkpoint, path)
    if run_config is None:
        raise ValueError("pass --data: the checkpoint is not inside a training run directory")
    return load_yaml(run_config)["data"]


def run_frame_naming(checkpoint: str, frame_template: Optional[str] = None,
                     frame_start: Optional[int] = None) -> Tuple[str, int]:
    """Frame-folder naming for evaluating / predicting with a checkpoint: the given values, else those of the
    training run the checkpoint belongs to, else the defaults (``img_{:05d}.jpg`` from 1). A ``config.yaml`` beside
    the checkpoint that is not a run's options file is not a run: the defaults apply."""
    saved: Dict[str, Any] = {}
    if frame_template is None or frame_start is None:
        run_config = _run_config_file(checkpoint, resolve_checkpoint_path(checkpoint))
        try:
            saved = load_yaml(run_config) if run_config is not None else {}
        except ValueError:
            saved = {}
    template = frame_template if frame_template is not None else saved.get("frame_template", DEFAULT_FRAME_TEMPLATE)
    start = frame_start if frame_start is not None else saved.get("frame_start", DEFAULT_FRAME_START)
    return template, start
