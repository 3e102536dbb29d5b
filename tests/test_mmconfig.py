"""The official-config reader: literal-only parsing, mmcv's _base_ merge, and refusal of anything that is code."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from uniformer.tasks.mmconfig import merge_mm_config, read_mm_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_literals_names_arithmetic_and_dict_calls(tmp_path):
    cfg = read_mm_config(write(tmp_path / "c.py", """
        '''a docstring'''
        norm_cfg = dict(type='SyncBN', requires_grad=True)
        data_root = 'data/ade/'
        model = dict(type='EncoderDecoder', decode_head=dict(norm_cfg=norm_cfg, num_classes=150, ratio=-0.5 * 2),
                     scales=[(2048, 512), (1024, 256)], flags=(True, False, None), neg=-3)
        ann = data_root + 'annotations'
        steps = [8 * 1000, 11 ** 2, 7 // 2, 7 % 4, 1 / 4]
        pipeline = [dict(type='Resize')] * 2
        lst = list([1, 2])
        tup = tuple([3])
    """))
    assert cfg["model"]["decode_head"] == dict(norm_cfg=dict(type="SyncBN", requires_grad=True), num_classes=150,
                                               ratio=-1.0)
    assert cfg["model"]["scales"] == [(2048, 512), (1024, 256)] and cfg["model"]["neg"] == -3
    assert cfg["ann"] == "data/ade/annotations" and cfg["steps"] == [8000, 121, 3, 3, 0.25]
    assert cfg["pipeline"] == [dict(type="Resize"), dict(type="Resize")]
    assert cfg["lst"] == [1, 2] and cfg["tup"] == (3,)
    # names are copied: changing one use never changes another
    cfg["model"]["decode_head"]["norm_cfg"]["type"] = "BN"
    assert cfg["norm_cfg"]["type"] == "SyncBN"


def test_base_inheritance_merges_like_mmcv(tmp_path):
    write(tmp_path / "_base_" / "models" / "net.py", """
        model = dict(type='MaskRCNN', backbone=dict(type='ResNet', depth=50),
                     neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
                     roi_head=dict(bbox_head=dict(type='Shared2FCBBoxHead', num_classes=80)))
    """)
    write(tmp_path / "_base_" / "schedule.py", "optimizer = dict(type='SGD', lr=0.02)\nlr_config = dict(step=[8, 11])\n")
    write(tmp_path / "exp" / "base_cfg.py", """
        _base_ = ['../_base_/models/net.py', '../_base_/schedule.py']
        model = dict(neck=dict(in_channels=[64, 128, 320, 512]))
    """)
    cfg = read_mm_config(write(tmp_path / "exp" / "child.py", """
        _base_ = 'base_cfg.py'
        model = dict(backbone=dict(_delete_=True, type='UniFormer', layers=[3, 4, 8, 3]),
                     roi_head=dict(bbox_head=[dict(type='ConvFCBBoxHead'), dict(type='ConvFCBBoxHead')]))
        optimizer = dict(_delete_=True, type='AdamW', lr=0.0001)
        lr = {{ _base_.optimizer.lr }}
    """))
    assert "_base_" not in cfg
    assert cfg["model"]["backbone"] == dict(type="UniFormer", layers=[3, 4, 8, 3])  # replaced whole, no _delete_
    assert cfg["model"]["neck"] == dict(type="FPN", in_channels=[64, 128, 320, 512], out_channels=256, num_outs=5)
    assert cfg["model"]["type"] == "MaskRCNN"
    assert [h["type"] for h in cfg["model"]["roi_head"]["bbox_head"]] == ["ConvFCBBoxHead"] * 2  # a list replaces
    assert cfg["optimizer"] == dict(type="AdamW", lr=0.0001) and cfg["lr_config"] == dict(step=[8, 11])
    assert cfg["lr"] == 0.02  # {{_base_.x}} reads the merged bases


def test_merge_keeps_inputs_unchanged():
    base = dict(a=dict(b=1, c=[1, 2]))
    child = dict(a=dict(b=2))
    out = merge_mm_config(child, base)
    assert out == dict(a=dict(b=2, c=[1, 2])) and base == dict(a=dict(b=1, c=[1, 2]))


def test_dict_input_is_copied():
    given = dict(model=dict(type="TopDown"))
    cfg = read_mm_config(given)
    cfg["model"]["type"] = "x"
    assert given["model"]["type"] == "TopDown"


@pytest.mark.parametrize("code,what", [
    ("import os\nmodel = dict()", "an import"),
    ("from os import path\nmodel = dict()", "an import"),
    ("model = dict(type=open('/etc/passwd').read())", "a function call (open('/etc/passwd').read(...))"),
    ("model = __import__('os').system('touch PWNED')", "a function call (__import__('os').system(...))"),
    ("import numpy as np\nx = np.pi", "an import"),
    ("model = dict(a=(1).real)", "an attribute access"),
    ("model = [i for i in range(3)]", "ListComp"),
    ("f = lambda: 1", "Lambda"),
    ("model = f'{1}'", "JoinedStr"),
    ("if True:\n    model = 1", "If statement"),
    ("def f():\n    pass", "FunctionDef"),
    ("x, y = 1, 2", "Assign statement"),
    ("model = dict(**{'a': 1})", "'**' unpacking"),
    ("dict = 1\nmodel = dict(a=1)", "a function call (dict(...))"),
    ("model = print('hi')", "a function call (print(...))"),
    ("model = 'x' * 10**9", "repetition"),
    ("model = undefined_name", "not defined earlier"),
])
def test_code_is_refused_without_running(tmp_path, code, what):
    path = write(tmp_path / "evil.py", code)
    with pytest.raises(ValueError) as err:
        read_mm_config(path)
    assert what in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_bad_files_and_bases(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_mm_config(tmp_path / "missing.py")
    with pytest.raises(ValueError, match="expected an mmcv-style Python config"):
        read_mm_config(write(tmp_path / "c.yaml", "a: 1"))
    with pytest.raises(ValueError, match="not valid Python"):
        read_mm_config(write(tmp_path / "bad.py", "model = dict(\n"))
    with pytest.raises(FileNotFoundError, match="a _base_ of"):
        read_mm_config(write(tmp_path / "c1.py", "_base_ = 'nope.py'\n"))
    write(tmp_path / "loop_a.py", "_base_ = 'loop_b.py'\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        read_mm_config(write(tmp_path / "loop_b.py", "_base_ = 'loop_a.py'\n"))
    write(tmp_path / "b1.py", "x = 1\n")
    write(tmp_path / "b2.py", "x = 2\n")
    with pytest.raises(ValueError, match="both define 'x'"):
        read_mm_config(write(tmp_path / "c2.py", "_base_ = ['b1.py', 'b2.py']\n"))
    with pytest.raises(ValueError, match="names nothing"):
        read_mm_config(write(tmp_path / "c3.py", "_base_ = 'b1.py'\ny = {{ _base_.z }}\n"))
    with pytest.raises(ValueError, match="file path or a dict"):
        read_mm_config(3)
