"""Read OpenMMLab (mmcv 1.x) Python config files **without executing them**.

An official config is a Python file of assignments (``model = dict(type='MaskRCNN', ...)``) with optional
``_base_ = [...]`` inheritance. :func:`read_mm_config` parses it with :mod:`ast` and evaluates only literals: numbers,
strings, ``True/False/None``, lists, tuples, dicts, ``dict(...)``/``list(...)``/``tuple(...)`` of literals, names
assigned earlier in the same file, unary ``-``/``+`` and arithmetic (``+ - * / // % **``) on literals. Anything else —
an import, another call, an attribute access, a lambda, a comprehension, an f-string — is refused with a
``ValueError`` naming the file, the line and the construct, and nothing in the file runs.

``_base_`` files (paths relative to the config's folder) are read the same way and merged as mmcv does: the bases'
keys must not collide, the config's own values then override them key by key (dicts merge recursively unless they
carry ``_delete_=True``; any other value, lists included, replaces the base's). ``{{ _base_.a.b }}`` references are
resolved against the merged bases.
"""
from __future__ import annotations

import ast
import copy
import operator
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Union

__all__ = ["read_mm_config", "merge_mm_config", "MAX_BASE_DEPTH"]

PathLike = Union[str, os.PathLike]
MAX_BASE_DEPTH = 16
_BASE_REF = re.compile(r"\{\{\s*_base_\.([\w.]+)\s*\}\}")
_REF_PREFIX = "\x00_base_ref:"
_BINOPS: Dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: Dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CONSTRUCTORS = {"dict": dict, "list": list, "tuple": tuple}


class _Evaluator:
    """Evaluates one config file's literal expressions; ``names`` holds the file's earlier assignments."""

    def __init__(self, path: str, names: Dict[str, Any]) -> None:
        self.path, self.names = path, names

    def refuse(self, node: ast.AST, what: str) -> ValueError:
        return ValueError(f"{self.path}, line {getattr(node, 'lineno', '?')}: {what} is not allowed in a config "
                          "(only literals, dict(...)/list(...)/tuple(...), arithmetic and earlier names are read; "
                          "nothing is executed)")

    def __call__(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self.refuse(node, "'**' unpacking")
            return {self(k): self(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return copy.deepcopy(self.names[node.id])
            raise ValueError(f"{self.path}, line {node.lineno}: name {node.id!r} is not defined earlier in the file")
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = self(node.left), self(node.right)
            if isinstance(node.op, (ast.Mult, ast.Pow)) and any(isinstance(v, (str, list, tuple)) for v in (left, right)):
                count = right if isinstance(right, int) else left
                if isinstance(count, int) and abs(count) > 10_000:
                    raise self.refuse(node, "a sequence repetition this large")
            try:
                return _BINOPS[type(node.op)](left, right)
            except (TypeError, ZeroDivisionError, OverflowError) as e:
                raise ValueError(f"{self.path}, line {node.lineno}: cannot evaluate the expression ({e})") from None
        if isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else None
            if func not in _CONSTRUCTORS or func in self.names:
                name = ast.unparse(node.func)
                raise self.refuse(node, f"a function call ({name}(...))")
            if any(k.arg is None for k in node.keywords):
                raise self.refuse(node, "'**' unpacking")
            if any(isinstance(a, ast.Starred) for a in node.args):
                raise self.refuse(node, "'*' unpacking")
            args = [self(a) for a in node.args]
            kwargs = {k.arg: self(k.value) for k in node.keywords}
            try:
                return _CONSTRUCTORS[func](*args, **kwargs)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self.path}, line {node.lineno}: bad {func}(...) ({e})") from None
        if isinstance(node, ast.Attribute):
            raise self.refuse(node, f"an attribute access ({ast.unparse(node)})")
        raise self.refuse(node, f"a {type(node).__name__} expression")


def _parse_file(path: Path) -> Dict[str, Any]:
    """The assignments of one config file, evaluated as literals (no ``_base_`` merging yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from None
    # mmcv's base-variable references become marker strings, resolved once the bases are merged
    text = _BASE_REF.sub(lambda m: repr(_REF_PREFIX + m.group(1)), text)
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"config {path} is not valid Python: {e.msg} (line {e.lineno})") from None
    names: Dict[str, Any] = {}
    evaluate = _Evaluator(str(path), names)
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            raise evaluate.refuse(stmt, "an import")
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            names[stmt.targets[0].id] = evaluate(stmt.value)
            continue
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names[stmt.target.id] = evaluate(stmt.value)
            continue
        raise evaluate.refuse(stmt, f"a {type(stmt).__name__} statement")
    return names


def merge_mm_config(child: Mapping[str, Any], base: Mapping[str, Any]) -> Dict[str, Any]:
    """mmcv ``Config._merge_a_into_b``: ``child`` over ``base``, dicts recursively (a child dict with
    ``_delete_=True`` replaces the base's whole), everything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        if isinstance(value, Mapping) and not value.get("_delete_", False) and isinstance(out.get(key), Mapping):
            out[key] = merge_mm_config(value, out[key])
        else:
            out[key] = _strip_delete(copy.deepcopy(value))
    return out


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    return value


def _lookup(config: Mapping[str, Any], dotted: str, where: Path) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ValueError(f"{where}: {{{{_base_.{dotted}}}}} names nothing in its _base_ files")
    return copy.deepcopy(node)


def _resolve_refs(value: Any, bases: Mapping[str, Any], where: Path) -> Any:
    if isinstance(value, str) and value.startswith(_REF_PREFIX):
        return _lookup(bases, value[len(_REF_PREFIX):], where)
    if isinstance(value, dict):
        return {k: _resolve_refs(v, bases, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, bases, where) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve_refs(v, bases, where) for v in value)
    return value


def _read(path: Path, seen: List[Path]) -> Dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"config {path} inherits from itself through _base_ ({' -> '.join(p.name for p in seen)})")
    if len(seen) >= MAX_BASE_DEPTH:
        raise ValueError(f"config {path}: _base_ nesting deeper than {MAX_BASE_DEPTH} files")
    if not path.is_file():
        where = f" (a _base_ of {seen[-1]})" if seen else ""
        raise FileNotFoundError(f"config file {path} not found{where}")
    own = _parse_file(path)
    base_files = own.pop("_base_", [])
    if isinstance(base_files, str):
        base_files = [base_files]
    if not isinstance(base_files, (list, tuple)) or not all(isinstance(b, str) for b in base_files):
        raise ValueError(f"{path}: _base_ must be a file name or a list of file names, got {base_files!r}")
    bases: Dict[str, Any] = {}
    owners: Dict[str, str] = {}
    for name in base_files:
        sub = _read(path.parent / name, seen + [path])
        clash: Set[str] = set(sub) & set(bases)
        if clash:
            key = sorted(clash)[0]
            raise ValueError(f"{path}: _base_ files {owners[key]} and {name} both define {key!r} (mmcv refuses "
                             "duplicate keys across bases)")
        bases.update(sub)
        owners.update({k: name for k in sub})
    own = _resolve_refs(own, bases, path)
    return merge_mm_config(own, bases)


def read_mm_config(source: Union[PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
    """The merged config dict of an official config file (``_base_`` resolved), or a deep copy of a dict given
    directly. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything that is not a
    literal-only config (see the module docstring)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"a config is a file path or a dict, got {type(source).__name__}")
    path = Path(source)
    if path.suffix != ".py":
        raise ValueError(f"config {path}: expected an mmcv-style Python config file (*.py)")
    return _read(path, [])


def config_get(config: Mapping[str, Any], *keys: str, default: Optional[Any] = None) -> Any:
    """``config[k1][k2]...`` or ``default`` when any level is missing."""
    node: Any = config
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return default
        node = node[k]
    return node
