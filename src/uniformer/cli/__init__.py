"""The ``uniformer`` command line: model zoo, model info, training, evaluation, prediction, export, benchmarks.

The parser lives in :mod:`uniformer.cli.parser`, one function per command in :mod:`uniformer.cli.commands`; the
libraries do the work. Every command turns bad input into one line on stderr (``uniformer: error: ...``) and a
non-zero exit code: 1, or 2 for a bad option value (as argparse's usage errors).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from ..engine.config import OptionError
from .commands import CliError
from .parser import EXIT_USAGE, build_parser

__all__ = ["main", "build_parser"]

EXIT_ERROR = 1


def one_line(error: BaseException) -> str:
    """The user-facing line of an error; DataLoader workers re-raise with the worker's whole traceback as the
    message, whose last line is the original error."""
    text = str(error).strip() or type(error).__name__
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = last.partition(": ")[2] or last
    return " ".join(text.split())


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except (CliError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError,
            FloatingPointError, OSError) as e:
        # One write call, so the lines of several torchrun ranks never interleave.
        sys.stderr.write(f"uniformer: error: {one_line(e)}\n")
        sys.stderr.flush()
        return EXIT_USAGE if isinstance(e, OptionError) else EXIT_ERROR
    except KeyboardInterrupt:
        print("uniformer: interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    return _run(args.func, args)
