"""docs/cli.md holds every command's ``--help`` as the parser prints it; a changed option without a doc update fails
here. Regenerate with ``UPDATE_DOCS=1 python -m pytest tests/test_cli_reference.py``."""
from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

from conftest import REPO
from uniformer.cli import build_parser

DOC = REPO / "docs" / "cli.md"
SECTION = re.compile(r"(## `uniformer(?P<command>[^`]*)`\n\n```\n)(?P<help>.*?)(\n```)", re.S)


def _help(command: str) -> str:
    os.environ["COLUMNS"] = "116"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    return out.getvalue().rstrip()


def test_cli_reference_is_the_parsers_help():
    text = DOC.read_text()
    commands = [m.group("command").strip() for m in SECTION.finditer(text)]
    listed = set(build_parser()._subparsers._group_actions[0].choices)
    assert set(commands) - {""} == listed, "docs/cli.md needs a section per command"
    fresh = SECTION.sub(lambda m: m.group(1) + _help(m.group("command").strip()) + m.group(4), text)
    if os.environ.get("UPDATE_DOCS"):
        DOC.write_text(fresh)
    assert fresh == text, "docs/cli.md differs from the parser's --help; rerun with UPDATE_DOCS=1"
