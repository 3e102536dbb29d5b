"""Run directories are never lost: a folder holding a run is refused unless resumed or overwritten (moved aside),
one training at a time holds a folder's lock, stale locks are taken over, and saved paths are absolute.

Scenarios about processes (two trainings at once, torchrun) run real CLI subprocesses; the others call the CLI's
``main`` in this process, which is the same code without an interpreter start."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Union

import pytest

from conftest import one_line_error
from test_reliability import ENV, TRAIN, cli, image_folder, patched_cli, wait_for

import uniformer.engine.rundir as rundir
from uniformer.cli import main
from uniformer.engine.rundir import LOCK_FILE, RunLock, claim_run
from uniformer.engine.config import load_yaml
from uniformer.engine.metrics import read_metrics

ARGS = [*TRAIN, "--batch-size", "4"]


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI run in this process, as a finished process (exit status, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def snapshot(folder: Path) -> Dict[str, Union[bytes, str]]:
    """Every entry under ``folder`` (links not followed): file bytes, link targets, '/' for folders."""
    entries: Dict[str, Union[bytes, str]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(folder))
            entries[key] = (f"-> {os.readlink(path)}" if path.is_symlink() else "/" if path.is_dir()
                            else path.read_bytes())
    return entries


def accuracy(stdout: str) -> str:
    """The '(correct/total)' of the last accuracy printed (training's epoch line or eval)."""
    return re.findall(r"acc1 [\d.]+% (\(\d+/\d+\))", stdout)[-1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Dict[str, Union[Path, str]]:
    """A finished one-epoch run on a small image folder, and the accuracy its training printed."""
    root = tmp_path_factory.mktemp("finished")
    data = image_folder(root / "data")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "--data", str(data), *ARGS, "--epochs", "1", "--output", str(root / "run")]) == 0
    return dict(data=data, run=root / "run", accuracy=accuracy(out.getvalue()))


def copy_run(finished, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished["run"], run, symlinks=True)
    return run


def test_training_into_a_finished_run_is_refused_and_changes_nothing(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    for extra in ([], ["--epochs", "2", "--lr", "5e-4"]):
        proc = run_main(capsys, "train", "--data", str(finished["data"]), *ARGS, *extra, "--output", str(run))
        one_line_error(proc, f"{run} already holds a training run", f"--resume {run}", "--overwrite")
        assert "training" not in proc.stdout
    assert snapshot(run) == before  # the same files, links and bytes; no lock left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_moves_the_old_run_aside_intact_and_evaluable(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    proc = run_main(capsys, "train", "--data", str(finished["data"]), *ARGS, "--epochs", "1", "--overwrite",
                    "--output", str(run))
    assert proc.returncode == 0, proc.stderr
    old = [p for p in tmp_path.iterdir() if p != run]
    assert len(old) == 1 and re.fullmatch(r"run\.old-\d{8}-\d{6}", old[0].name)
    assert f"moved the previous run in {run} aside to {old[0]}" in proc.stdout
    assert snapshot(old[0]) == before
    assert len(read_metrics(run / "metrics.csv")) == 1 and not load_yaml(run / "config.yaml")["overwrite"]
    assert not (run / LOCK_FILE).exists()
    evaluated = run_main(capsys, "eval", "--checkpoint", str(old[0]), "--workers", "0")
    assert evaluated.returncode == 0, evaluated.stderr
    assert accuracy(evaluated.stdout) == finished["accuracy"]


def test_an_empty_folder_is_used_and_a_failed_start_leaves_no_folder(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=4)
    (tmp_path / "empty").mkdir()
    proc = run_main(capsys, "train", "--data", str(data), *ARGS, "--epochs", "1", "--output", str(tmp_path / "empty"))
    assert proc.returncode == 0, proc.stderr
    failed = tmp_path / "new" / "run"
    proc = run_main(capsys, "train", "--data", str(tmp_path / "nowhere"), *ARGS, "--output", str(failed))
    one_line_error(proc, "data folder not found")
    assert not (tmp_path / "new").exists()  # the folders made for the run are removed again
    one_line_error(run_main(capsys, "train", "--data", str(data), *ARGS, "--overwrite", "--resume",
                            str(tmp_path / "empty")), "--resume", "--overwrite", "one of them")


HOLD_BEFORE_THE_FIRST_CHECKPOINT = """
import os, time
import uniformer.engine.rundir as rundir

_save = rundir.RunDir.save

def save(self, *args, **kwargs):
    while not os.path.exists(os.environ["UNIFORMER_TEST_GO"]):  # the test lets the run go on
        time.sleep(0.02)
    return _save(self, *args, **kwargs)

rundir.RunDir.save = save
"""


def lock_holder(run: Path) -> dict:
    try:
        return json.loads((run / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_a_second_training_into_a_locked_folder_fails_at_once(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=4)
    run, go = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([*patched_cli(tmp_path, "hold", HOLD_BEFORE_THE_FIRST_CHECKPOINT), "train", "--data",
                              str(data), *ARGS, "--epochs", "2", "--output", str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(ENV, UNIFORMER_TEST_GO=str(go)))
    try:
        wait_for(lambda: lock_holder(run).get("pid") == first.pid and (run / "config.yaml").is_file(), first)
        holder = lock_holder(run)
        assert holder["host"] == socket.gethostname() and holder["started"]
        second = cli("train", "--data", str(data), *ARGS, "--epochs", "1", "--lr", "5e-4", "--output", str(run),
                     check=False)  # a real second process, started while the first one holds the folder
        one_line_error(second, f"run directory {run} is in use by another training", f"pid {first.pid}")
        assert "training" not in second.stdout and first.poll() is None  # refused without waiting for the first
        resumed = run_main(capsys, "train", "--resume", str(run))  # --resume takes the lock too
        one_line_error(resumed, "is in use by another training", f"pid {first.pid}")
        go.touch()
        out, err = first.communicate(timeout=300)
    finally:
        go.touch()
        first.kill()
        first.wait()
    assert first.returncode == 0, err[-2000:]
    assert "epoch   2/2" in out
    assert [row["epoch"] for row in read_metrics(run / "metrics.csv")] == [1.0, 2.0]  # its own rows only
    assert load_yaml(run / "config.yaml")["lr"] == 1e-3 and not (run / LOCK_FILE).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    run.mkdir()
    pid = dead_pid()
    (run / LOCK_FILE).write_text(json.dumps(dict(pid=pid, host=socket.gethostname(), started="2020-01-01T00:00:00")))
    proc = run_main(capsys, "train", "--data", str(data), *ARGS, "--epochs", "1", "--output", str(run))
    assert proc.returncode == 0, proc.stderr
    assert f"took over the stale lock of {run}: pid {pid} on {socket.gethostname()}" in proc.stdout
    assert not (run / LOCK_FILE).exists()


def no_record_locks(fd: int, operation: int) -> None:
    raise OSError(errno.ENOLCK, "No locks available")


def test_without_record_locks_the_recorded_pid_decides(tmp_path, monkeypatch):
    """File systems without POSIX record locks (``ENOLCK``): a live pid of this host keeps the lock, a dead one or a
    garbled file does not."""
    monkeypatch.setattr(rundir.fcntl, "lockf", no_record_locks)
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps(dict(pid=os.getppid(), host=socket.gethostname(), started="t")))
    with pytest.raises(BlockingIOError, match=rf"in use by another training \(pid {os.getppid()} on "):
        RunLock(tmp_path).acquire()
    for stale in (json.dumps(dict(pid=dead_pid(), host=socket.gethostname())), "garbled"):
        lock_file.write_text(stale)
        messages = []
        lock = RunLock(tmp_path).acquire(log=messages.append)
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        assert len(messages) == (stale != "garbled")
        lock.release()
        assert not lock_file.exists()


def test_a_lock_on_another_host_is_never_taken_over_by_pid(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.fcntl, "lockf", no_record_locks)
    (tmp_path / LOCK_FILE).write_text(json.dumps(dict(pid=dead_pid(), host="elsewhere", started="t")))
    with pytest.raises(BlockingIOError, match="on elsewhere"):
        claim_run(tmp_path)


def test_relative_paths_are_saved_absolute_and_work_from_any_folder(tmp_path, capsys, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    image_folder(work / "data", per_class=4)
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    trained = run_main(capsys, "train", "--data", "data", *ARGS, "--epochs", "1", "--output", "run")
    assert trained.returncode == 0, trained.stderr
    saved = load_yaml(work / "run" / "config.yaml")
    assert saved["data"] == str(work / "data") and saved["output"] == str(work / "run")
    warm = run_main(capsys, "train", "--data", "data", *ARGS, "--epochs", "1", "--init-checkpoint", "run/best",
                    "--output", "warm")
    assert warm.returncode == 0, warm.stderr
    assert load_yaml(work / "warm" / "config.yaml")["init_checkpoint"] == str(work / "run" / "best")
    monkeypatch.chdir(elsewhere)
    evaluated = run_main(capsys, "eval", "--checkpoint", str(work / "run"), "--workers", "0")
    assert evaluated.returncode == 0, evaluated.stderr
    assert accuracy(evaluated.stdout) == accuracy(trained.stdout)
    resumed = run_main(capsys, "train", "--resume", "../work/run", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch   2/2" in resumed.stdout and len(read_metrics(work / "run" / "metrics.csv")) == 2
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # nothing written into the other folder


@pytest.mark.slow
def test_torchrun_into_a_finished_run_fails_on_every_rank_without_hanging(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
         "uniformer.cli", "train", "--data", str(finished["data"]), *ARGS, "--output", str(run)],
        capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode != 0 and time.time() - start < 300
    # Count messages, not lines: two ranks write to one stderr pipe.
    assert proc.stderr.count("uniformer: error: ") == 2, proc.stderr
    assert proc.stderr.count(f"uniformer: error: {run} already holds a training run") == 2, proc.stderr
    assert snapshot(run) == before
