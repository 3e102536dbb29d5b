"""timm's own model test suite (``shared/reference/timm_tests/test_models.py``) on every architecture ``import uniformer``
registers, run as timm's CI runs it.

The suite is not copied into the project: the test writes it to a temporary folder with our families added to its
family lists the way timm lists its own, and runs it in a pytest subprocess with ``-p uniformer`` (the import
registers the models) and ``GITHUB_ACTIONS`` set (timm's CI mode: no hub downloads, its size limits). The additions:

- ``FEAT_INTER_FILTERS`` (models with ``forward_intermediates`` and the ``features_only`` getter): ``uniformer``,
  ``uniformer_light``, ``vt_resnet``;
- ``NON_STD_FILTERS`` ("don't support full set of spatial / feature APIs and/or have spatial output", as timm's ViTs):
  the video models (their maps are NCTHW, and timm's (C, H, W) inputs reach them as one-frame clips) and VT-ResNet
  (its features are tokens, NLC);
- ``EXCLUDE_FILTERS``: the base and large sizes except ``uniformer_base_ls`` (the only layer-scale image model
  besides L), 50–100 M parameters each — timm's CI excludes its largest models the same way — to keep the run to a
  few minutes on 2 cores. Every family (image, conv stem, layer scale, token labeling, light, video, light video, VT)
  still runs; the excluded sizes are the same classes with more blocks.
"""
from __future__ import annotations

import pytest

import ast
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

from conftest import REFERENCE

SUITE = REFERENCE / "timm_tests" / "test_models.py"
FAMILIES = {
    "FEAT_INTER_FILTERS": ["uniformer", "uniformer_light", "vt_resnet"],
    "NON_STD_FILTERS": ["uniformer_video_*", "vt_resnet*"],
    "EXCLUDE_FILTERS": ["uniformer_base", "uniformer_base.*", "uniformer_base_tl*", "uniformer_video_base*",
                        "uniformer_large*"],
}
# timm's test functions that take model names; test_model_inference needs downloads (and lists only test_* models)
EXPECTED_TESTS = ("test_model_forward", "test_model_backward", "test_model_default_cfgs",
                  "test_model_default_cfgs_non_std", "test_model_forward_torchscript", "test_model_forward_features",
                  "test_model_forward_intermediates_features", "test_model_forward_intermediates",
                  "test_model_forward_fx", "test_model_backward_fx")


def _list_assignments(source: str, name: str) -> List[ast.List]:
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.List)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)]


def add_families(source: str) -> str:
    """timm's suite with our families appended to its filter lists (every assignment of each list)."""
    lines = source.splitlines(keepends=True)
    edits = []  # (line index, column of the closing bracket, names)
    for name, ours in FAMILIES.items():
        found = _list_assignments(source, name)
        assert found, f"{name} not found in timm's suite"
        edits += [(node.end_lineno - 1, node.end_col_offset - 1, ours) for node in found]
    for line, col, ours in sorted(edits, reverse=True):  # bottom-up: earlier positions stay valid
        text = lines[line]
        assert text[col] == "]"
        before = "".join(lines[:line]) + text[:col]
        sep = "" if before.rstrip().endswith((",", "[")) else ","
        lines[line] = text[:col] + sep + "".join(f" {item!r}," for item in ours) + text[col:]
    return "".join(lines)


def test_add_families_appends_to_every_list():
    original, patched = SUITE.read_text(), add_families(SUITE.read_text())
    for name, ours in FAMILIES.items():
        before = [ast.literal_eval(node) for node in _list_assignments(original, name)]
        after = [ast.literal_eval(node) for node in _list_assignments(patched, name)]
        assert len(after) == len(before) >= 1
        assert all(a == b + ours for a, b in zip(after, before)), name


@pytest.mark.slow
def test_timm_model_suite_passes_for_every_registered_model(tmp_path: Path):
    (tmp_path / "test_models.py").write_text(add_families(SUITE.read_text()))
    env = dict(os.environ, GITHUB_ACTIONS="true", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "uniformer", "-p", "no:cacheprovider", "-q", "-rf",
         "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_models.py", "-k", "uniformer or vt_resnet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500,
    )
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    summary = re.search(r"(\d+) passed", proc.stdout)
    assert summary and "failed" not in proc.stdout.splitlines()[-1], report
    # every test function ran on our models, and on every family
    import uniformer

    names = [n for n in uniformer.list_models() if not any(fnmatch.fnmatch(n, p) for p in FAMILIES["EXCLUDE_FILTERS"])]
    assert int(summary.group(1)) >= len(names) * 8, report
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "uniformer", "-p", "no:cacheprovider", "-q", "--collect-only",
         "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_models.py", "-k", "uniformer or vt_resnet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    ).stdout
    for test in EXPECTED_TESTS:
        assert f"::{test}[" in collected, test
    for family in ("uniformer_small", "uniformer_small_plus", "uniformer_base_ls", "uniformer_xxs", "uniformer_small_tl",
                   "uniformer_video_small", "uniformer_video_xxs", "vt_resnet18"):
        assert f"-{family}]" in collected, family
