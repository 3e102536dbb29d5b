"""Every command and Python snippet in README.md and docs/*.md matches the code, so a doc mismatch fails CI.

Each ``uniformer …`` line of a fenced code block (``$``-prompted or not, ``\\``-continued, ``torchrun … -m uniformer.cli``
included) is parsed by the real CLI parser (options, choices and types exist) and then checked as its command would
use it: model names and checkpoint tags exist, ``train`` options build a valid configuration (and a dense task's
backbone builds, on the meta device), ``--official-config`` names an official config, ``--config`` files exist and
parse. ``models`` (without its FLOP column) and ``info`` lines, which need no data, run for real. Python blocks parse, and every name they
import exists. Commands that need data, checkpoints or runs (``~/data/…``, ``runs/…``, ``*.pth``) are executed by the
feature tests themselves (tests/test_engine.py, test_dense_engine.py, test_official_cli.py, …) on files they create.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path
from typing import List, NamedTuple

import pytest
import torch

from uniformer import resolve_model_name
from uniformer.cli import build_parser, main
from uniformer.engine.config import config_from_args
from uniformer.tasks.build import DENSE_TASKS, build_backbone, resolve_backbone_name
from uniformer.tasks.official_zoo import OFFICIAL_DENSE_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)


class Snippet(NamedTuple):
    where: str  # file:line
    text: str


def _blocks(path: Path, languages: tuple) -> List[Snippet]:
    text = path.read_text()
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) in languages:
            found.append(Snippet(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 2}", m.group(2)))
    return found


def doc_commands() -> List[Snippet]:
    """``uniformer`` command lines of the shell blocks, continuation lines joined, prompts stripped."""
    commands = []
    for path in DOCS:
        for block in _blocks(path, ("", "bash", "sh", "console", "shell")):
            lines = block.text.replace("\\\n", " ").splitlines()
            for offset, line in enumerate(lines):
                line = line.strip().removeprefix("$ ")
                # a subcommand (a word) or an option follows; help text that merely starts with the word does not match
                m = re.match(r"(?:uniformer|torchrun .*?-m uniformer\.cli)\s+((?:[a-z][a-z-]*|-)(?:\s.*)?)$", line)
                if m and not line.startswith("uniformer:"):  # (an error message shown in a block is not a command)
                    commands.append(Snippet(f"{block.where.rsplit(':', 1)[0]}:{int(block.where.rsplit(':', 1)[1]) + offset}",
                                            m.group(1)))
    return commands


COMMANDS = doc_commands()
PYTHON = [s for path in DOCS for s in _blocks(path, ("python",))]


def test_the_docs_have_commands_and_snippets_to_check():
    assert len(COMMANDS) >= 60 and len(PYTHON) >= 5
    assert {c.text.split()[0] for c in COMMANDS} >= {"models", "info", "predict", "train", "eval", "predict-video",
                                                    "export", "bench", "plot", "visualize-tokens"}


def _check_model(name: str) -> None:
    if name and not Path(name).suffix and not name.startswith(("runs/", "~")):
        resolve_model_name(name)


def _check_train(args) -> None:
    if getattr(args, "resume", None):  # continues a run the docs cannot provide; its flags parsed above
        return
    if args.config and not Path(args.config).is_file():  # the reader's own YAML file (my_run.yaml): flags only
        args.config = None
    config = config_from_args(args)
    (resolve_backbone_name if config.task in DENSE_TASKS else resolve_model_name)(config.model)
    if config.task in DENSE_TASKS:
        with torch.device("meta"):
            build_backbone(config.model, config.model_args)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_matches_the_cli(command: Snippet, monkeypatch):
    monkeypatch.chdir(ROOT)  # documented relative paths (configs/…) are relative to the repository
    argv = shlex.split(command.text, comments=True)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{command.where}: `uniformer {command.text}` does not parse (exit {e.code})")
    name = argv[0]
    if name != "train":  # train: the task decides (dense tasks take any timm backbone), see _check_train
        _check_model(getattr(args, "model", None) or "")
    official = getattr(args, "official_config", None)
    if official and not official.endswith(".py"):
        assert official in OFFICIAL_DENSE_CONFIGS, f"{command.where}: unknown official config {official}"
    if name == "train":
        _check_train(args)
    elif name == "bench":
        for model in args.models:
            resolve_model_name(model)
    elif name in ("models", "info"):
        # models: without the FLOP column (fvcore over the zoo takes minutes; tests/test_cli.py and
        # test_official_models.py check the counts)
        run = argv if name == "info" else [a for a in argv if a != "--flops"] + ["--no-flops"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(run) == 0, f"{command.where}: `uniformer {' '.join(run)}` failed"
        assert out.getvalue().strip(), command.where


def _imported_names(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("snippet", PYTHON, ids=[s.where for s in PYTHON])
def test_documented_python_parses_and_its_imports_exist(snippet: Snippet):
    tree = ast.parse(snippet.text, filename=snippet.where)
    for module, name in _imported_names(tree):
        mod = importlib.import_module(module)
        if name is not None and name != "*":
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), \
                f"{snippet.where}: `from {module} import {name}` fails"


def test_make_targets_named_in_the_readme_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([\w-]+)`", (ROOT / "README.md").read_text()))
    assert named and named <= targets, named - targets
