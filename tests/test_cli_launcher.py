"""The ``uniformer`` console script's launcher (src/uniformer_cli): ``--help``, ``--version`` and ``models`` answered
from a record without importing torch, equal to what the full CLI prints; everything else handed to the full CLI."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import uniformer_cli
from conftest import REPO
from uniformer.cli import main as full_main


def _tool():
    spec = importlib.util.spec_from_file_location("gen_cli_static", REPO / "tools" / "gen_cli_static.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _output(main, argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse --help
            code = e.code
    assert code == 0, (argv, out.getvalue())
    return out.getvalue()


@pytest.mark.slow
def test_the_record_is_up_to_date():
    """Regenerate with: .venv/bin/python tools/gen_cli_static.py"""
    fresh = json.loads(json.dumps(_tool().static_record()))  # tuples → lists, as stored
    assert uniformer_cli.load_static() == fresh, "src/uniformer_cli/static.json is stale: run tools/gen_cli_static.py"


@pytest.mark.parametrize("argv, columns", [
    (["--help"], "80"), (["-h"], "140"),  # argparse wraps the recorded first level to the terminal, as the full CLI
    (["models", "uniformer_xx*"], "80"), (["models", "vt_*", "--no-flops"], "80"),  # filter, blanked GFLOPs column
    (["models", "--task", "dense", "mask_rcnn*"], "80"), (["models", "--task=dense", "fpn_x*"], "80"),
])
def test_launcher_prints_what_the_full_cli_prints(argv, columns, monkeypatch):
    """Formatting and filtering equal the full CLI's (the recorded data itself: test_the_record_is_up_to_date)."""
    monkeypatch.setenv("COLUMNS", columns)
    assert _output(uniformer_cli.main, argv) == _output(full_main, argv)


def test_version_line_names_the_installed_versions():
    from importlib import metadata

    line = uniformer_cli.version_line()
    assert line == f"uniformer {metadata.version('uniformer')} (torch {metadata.version('torch')}, timm " \
                   f"{metadata.version('timm')})"
    assert _output(uniformer_cli.main, ["--version"]).strip() == line


@pytest.mark.slow
def test_answers_without_importing_torch_and_delegates_the_rest(tmp_path):
    script = ("import sys, uniformer_cli\n"
              "for argv in (['--help'], ['--version'], ['models', '--no-flops'], ['models', '--task', 'dense']):\n"
              "    assert uniformer_cli.main(argv) == 0\n"
              "assert 'torch' not in sys.modules and 'uniformer' not in sys.modules, 'heavy imports'\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "uniformer_small_plus" in proc.stdout and "mask_rcnn_1x_hybrid_small" in proc.stdout
    # the installed console script: other commands and unrecorded cases reach the full CLI
    console = Path(sys.executable).with_name("uniformer")
    info = subprocess.run([str(console), "info", "uniformer_xxs"], capture_output=True, text=True, timeout=300)
    assert info.returncode == 0 and "head_dim    28" in info.stdout, info.stderr
    unknown = subprocess.run([str(console), "models", "nothing_like_this*"], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, COLUMNS="100"))
    assert unknown.returncode == 1 and unknown.stderr.startswith("uniformer: error: no model matches")
