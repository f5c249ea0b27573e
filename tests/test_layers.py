"""The layers talk through their public names only.

yoton's layers -- wire, transport, the context (routing), channels, sugar --
each use the one below through names without a leading underscore; within a
layer (a package, or the context module) modules may share private names.
This test reads every module of the package and fails on ``x._name`` where
``_name`` is defined nowhere in the reading module's own layer: a read of
another layer's internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "yoton"

#: layer of each top-level module or package (what is not listed is its own layer)
LAYERS = {
    "wire": "wire",
    "transport": "transport",
    "context.py": "context",
    "channels": "channels",
    "sugar": "sugar",
    "cli": "sugar",
    "_compat22": "compat",
    "__main__.py": "sugar",
}


def _layer(path: Path) -> str:
    first = path.relative_to(SRC).parts[0]
    return LAYERS.get(first, first)


def _defined_names(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            names.add(node.value)  # (__slots__ entries, getattr names)
    return names


def _private_reads(tree: ast.AST):
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            continue
        yield node


def _modules():
    return sorted(p for p in SRC.rglob("*.py"))


def cross_layer_reads() -> list:
    """Every ``x._name`` in the package that reads another layer's private name."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in _modules()}
    defined: dict = {}
    for path, tree in trees.items():
        defined.setdefault(_layer(path), set()).update(_defined_names(tree))
    found = []
    for path, tree in trees.items():
        own = defined[_layer(path)]
        for node in _private_reads(tree):
            if node.attr not in own:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.skipif(not hasattr(ast, "unparse"), reason="ast.unparse needs Python 3.9")
def test_no_layer_reads_another_layers_private_names():
    assert cross_layer_reads() == []
