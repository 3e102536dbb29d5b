"""Regenerate src/uniformer_cli/static.json (what the `uniformer` launcher prints without importing torch: the
first level of the parser and the model tables) from the real parser and models:

    .venv/bin/python tools/gen_cli_static.py

tests/test_cli_launcher.py fails when the file is out of date.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from uniformer.cli import build_parser  # noqa: E402
from uniformer.zoo import dense_models_table, models_table  # noqa: E402

STATIC = ROOT / "src" / "uniformer_cli" / "static.json"


def parser_record() -> dict:
    """Description, global options and commands (with their help) of the full parser's first level."""
    parser = build_parser()
    options = [[list(a.option_strings), a.help] for a in parser._actions
               if a.option_strings and "-h" not in a.option_strings]
    commands = next(a for a in parser._actions if a.dest == "command")._choices_actions
    return {"description": parser.description, "options": options, "commands": [[c.dest, c.help] for c in commands]}


def models_record() -> dict:
    """The classification table with GFLOPs (the launcher blanks the column for --no-flops) and the dense table."""
    header, rows, left, footer = models_table("*", None)
    _, _, _, no_flops_footer = models_table("uniformer_xxs", False)
    dense_header, dense_rows, dense_left, dense_footer = dense_models_table("*", None)
    return {
        "classification": {"header": header, "rows": rows, "left": left, "flops_column": header.index("GFLOPs"),
                           "footer_flops": footer, "footer": no_flops_footer},
        "dense": {"header": dense_header, "rows": dense_rows, "left": dense_left, "flops_column": None,
                  "footer_flops": dense_footer, "footer": dense_footer},
    }


def static_record() -> dict:
    return {"parser": parser_record(), "models": models_record()}


if __name__ == "__main__":
    STATIC.write_text(json.dumps(static_record(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {STATIC}")
