"""The ``uniformer`` console script: a launcher that answers ``--help``, ``--version`` and the ``models`` listing
without importing torch, and hands every other command to :func:`uniformer.cli.main`.

``import uniformer`` registers every model with timm, which imports torch and torchvision (several seconds); the
launcher lives outside the package so that asking for help or for the model list costs a fraction of a second. It
reads what it prints from ``static.json`` beside it, which ``tools/gen_cli_static.py`` writes from the real parser
and the real models; ``tests/test_cli_launcher.py`` fails when that file and the code disagree.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "load_static", "format_table", "top_level_parser", "version_line"]

STATIC = Path(__file__).with_name("static.json")


def version_line() -> str:
    """``uniformer X.Y.Z (torch …, timm …)`` from the installed distributions' metadata (nothing imported)."""
    return (f"uniformer {metadata.version('uniformer')} (torch {metadata.version('torch')}, "
            f"timm {metadata.version('timm')})")


def load_static() -> Dict[str, Any]:
    """The recorded help text and model tables (see the module docstring)."""
    return json.loads(STATIC.read_text(encoding="utf-8"))


def format_table(header: Sequence[str], rows: List[Sequence[str]], left: Sequence[int]) -> str:
    """Rows under a header, columns padded to their widest cell; ``left`` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in list(rows) + [header]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in [list(header)] + [list(r) for r in rows])


def _models_listing(argv: Sequence[str], static: Dict[str, Any]) -> Optional[str]:
    """The output of ``uniformer models ARGV`` from the recorded tables, or None when the arguments ask for more
    than was recorded (dense GFLOPs, an unknown option) — the full CLI answers those."""
    pattern, task, flops, rest = "*", "classification", None, list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--no-flops":
            flops = False
        elif arg == "--flops":
            flops = True
        elif arg in ("--task",) and rest:
            task = rest.pop(0)
        elif arg.startswith("--task="):
            task = arg.split("=", 1)[1]
        elif not arg.startswith("-") and pattern == "*":
            pattern = arg
        else:
            return None
    if task not in static["models"] or (task == "dense" and flops is True):
        return None
    table = static["models"][task]
    rows = [row for row in table["rows"] if fnmatch.fnmatch(row[0], pattern)]
    if not rows:
        return None  # the full CLI explains, in its own words
    if flops is False and table["flops_column"] is not None:
        rows = [[*row[:table["flops_column"]], "-", *row[table["flops_column"] + 1:]] for row in rows]
    footer = table["footer_flops"] if flops is not False and task == "classification" else table["footer"]
    return format_table(table["header"], rows, table["left"]) + (f"\n{footer}" if footer else "")


def top_level_parser(static: Dict[str, Any]) -> argparse.ArgumentParser:
    """The ``uniformer`` parser's first level (description, global options, commands with their help) rebuilt from
    the record, so ``--help`` wraps to the terminal exactly as the full parser does."""
    recorded = static["parser"]
    parser = argparse.ArgumentParser(prog="uniformer", description=recorded["description"])
    for flags, text in recorded["options"]:
        parser.add_argument(*flags, action="store_true", help=text)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in recorded["commands"]:
        sub.add_parser(name, help=text)
    return parser


def _emit(text: str) -> int:
    """Print ``text``; a reader that stops early (``uniformer models | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``uniformer`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"], ["--version"]) or (argv and argv[0] == "models"):
        try:
            static = load_static()
        except (OSError, ValueError):
            static = None  # a broken installation: the full CLI still works
        if static is not None:
            if argv == ["--version"]:
                print(version_line())
                return 0
            if argv[0] == "models":
                text = _models_listing(argv[1:], static)
                if text is not None:
                    return _emit(text)
            else:
                top_level_parser(static).print_help()
                return 0
    from uniformer.cli import main as full_main

    return full_main(argv)
