"""The project's documents say what the code does: their examples run, and the
design document names only files, classes and functions that exist."""

from __future__ import annotations

import ast
import builtins
import doctest
import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", ["protocol.md"])
def test_examples_in_the_docs_give_what_they_show(name):
    result = doctest.testfile(str(DOCS / name), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0, result


@pytest.mark.parametrize("module", ["yoton.transport.nats"])
def test_examples_in_docstrings_give_what_they_show(module):
    tests = doctest.DocTestFinder().find(importlib.import_module(module))
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0, result


# -- docs/design.md names the code's own files, classes and functions ----------------------

ROOT = DOCS.parent
SRC = ROOT / "src" / "yoton"
DESIGN = DOCS / "design.md"

_INLINE = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
#: in diagrams: ``Class.member`` (also ``_Class.member``) and names with an underscore
_IN_DIAGRAM = re.compile(r"(?<![\w.])(_?[A-Z]\w*\.\w+|_?[a-z]+_\w+)(?![\w.]*\.py\b)")
_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\(\))?$")
_PATH = re.compile(r"^[\w./-]+(\.py|\.md|/)$")
_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


class _Index:
    """What src/yoton defines: modules, their top-level names, classes and their members."""

    def __init__(self):
        self.modules: dict = {}  # "ioloop", "transport.ioloop", "yoton.transport.ioloop" -> dotted module
        self.top: dict = {}  # dotted module -> top-level names
        self.classes: dict = {}  # class name -> [(members, bases, dotted module)]
        self.names: set = set()  # every name defined or bound anywhere
        for path in sorted(SRC.rglob("*.py")):
            parts = path.relative_to(SRC).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            dotted = ".".join(("yoton",) + parts)
            for i in range(len(parts)):
                self.modules.setdefault(".".join(parts[i:]), dotted)
            self.modules[dotted] = dotted
            tree = ast.parse(path.read_text(encoding="utf-8"))
            self.top[dotted] = top = set()
            for node in tree.body:
                top.update(_bound(node))
            for node in ast.walk(tree):
                self.names.update(_bound(node))
                if isinstance(node, ast.arg):
                    self.names.add(node.arg)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    self.names.add(node.attr)
                if isinstance(node, ast.ClassDef):
                    members = set()
                    for sub in ast.walk(node):
                        members.update(_bound(sub) if sub in node.body else ())
                        if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                            members.add(sub.attr)
                    for item in node.body:
                        if isinstance(item, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
                        ):
                            members.update(ast.literal_eval(item.value))
                    bases = [ast.unparse(base) for base in node.bases]
                    self.classes.setdefault(node.name, []).append((members, bases, dotted))

    def has_member(self, cls: str, member: str, seen=()) -> bool:
        for members, bases, module in self.classes.get(cls, ()):
            if member in members:
                return True
            for base in bases:
                if base in self.classes and base not in seen:
                    if self.has_member(base, member, seen + (cls,)):
                        return True
                elif _getattr_path(module, base + "." + member):
                    return True
        return False

    def resolves(self, ref: str) -> bool:
        dotted = ref[:-2] if ref.endswith("()") else ref
        head, *rest = dotted.split(".")
        for i in range(len(rest) + 1, 0, -1):  # the longest module prefix: module.name...
            module = self.modules.get(".".join(([head] + rest)[:i]))
            if module is not None:
                tail = ([head] + rest)[i:]
                if not tail:
                    return True
                if tail[0] in self.classes and len(tail) > 1:
                    return tail[0] in self.top[module] and self.has_member(tail[0], tail[1])
                return tail[0] in self.top[module] and (len(tail) == 1 or _getattr_path(module, ".".join(tail)))
        if head in self.classes:
            return not rest or self.has_member(head, rest[0])
        if not rest:
            return head in self.names or hasattr(builtins, head)
        for module, top in self.top.items():  # a module-level name: look inside the object
            if head in top:
                return _getattr_path(module, dotted)
        return False


def _bound(node) -> set:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return set()


def _getattr_path(module: str, path: str) -> bool:
    try:
        obj = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return False
    return True


def references(text: str) -> tuple:
    """``(paths, names)`` a design text refers to: file paths and links, and
    identifiers in backticks (``name``, ``Class.member``, ``module.name()``);
    in its diagrams, ``Class.member`` and names with an underscore."""
    diagrams = _FENCE.findall(text)
    prose = _FENCE.sub("", text)
    paths, names = set(), set()
    for code in _INLINE.findall(prose):
        if _PATH.match(code):
            paths.add(code)
        elif _NAME.match(code):
            names.add(code)
    for block in diagrams:
        names.update(_IN_DIAGRAM.findall(block))
    paths.update(link for link, _ in _LINK.findall(prose) if "://" not in link)
    return paths, names


@pytest.mark.skipif(not hasattr(ast, "unparse"), reason="ast.unparse needs Python 3.9")
def test_design_names_only_what_exists():
    index = _Index()
    paths, names = references(DESIGN.read_text(encoding="utf-8"))
    assert len(names) > 100 and len(paths) > 20  # (the parser still finds them)
    missing_paths = sorted(p for p in paths if not any((base / p).exists() for base in (SRC, ROOT, DOCS)))
    missing = sorted(name for name in names if not index.resolves(name))
    assert not missing_paths and not missing, f"docs/design.md names what does not exist: {missing_paths + missing}"


@pytest.mark.skipif(not hasattr(ast, "unparse"), reason="ast.unparse needs Python 3.9")
def test_the_design_check_finds_a_stale_name():
    index = _Index()
    assert index.resolves("StreamLink.kick_writer") and index.resolves("SubChannel._wait_package")  # (inherited)
    assert index.resolves("events.MAX_EVENTS") and index.resolves("IOLoop._lock") and index.resolves("HEADER.pack")
    assert index.resolves("transport.ioloop.IOLoop.run_until") and index.resolves("threading.RLock")
    assert index.resolves("RequestServer.start") and index.resolves("Package.slot")  # (threading.Thread; __slots__)
    for stale in ("StreamLink.kick_writers", "Router._pump_later", "events.MAX_EVENT", "NoSuchClass", "Link.nothing"):
        assert not index.resolves(stale), stale
    sample = "`transport/gone.py` and `Router.gone()`, not `a = b`; [x](gone.md)\n```\n  Link.gone_too  any_gone\n```\n"
    paths, names = references(sample)
    assert paths == {"transport/gone.py", "gone.md"} and names == {"Router.gone()", "Link.gone_too", "any_gone"}
