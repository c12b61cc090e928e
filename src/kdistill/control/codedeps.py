"""A stage's code deps: the project modules its script imports, directly or not, lazy imports included.

Computed from the source (``ast``), never by hand: dvc.yaml lists them, and a training's resume
point is valid only while their contents are unchanged. A module that imports others by name at
run time declares what it scans as ``__discovers__ = "<package>.*.<module>"``: every module that
the pattern matches is then a dep.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "kdistill"
SRC = Path(__file__).resolve().parents[2]  # the folder that holds the package


def _module_file(src: Path, name: str) -> Path | None:
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, src: Path) -> Iterable[str]:
    for node in ast.walk(tree):  # every node, so imports inside functions count too
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__discovers__" for t in node.targets):
            yield from _package_modules(src, ast.literal_eval(node.value))


def _package_modules(src: Path, pattern: str) -> Iterable[str]:
    matches = sorted(src.glob(pattern.replace(".", "/") + ".py"))
    return (path.relative_to(src).with_suffix("").as_posix().replace("/", ".") for path in matches)


def closure(script: Path, src: Path) -> list[Path]:
    """``script`` and every module of ``src/kdistill`` it reaches, parents' ``__init__`` included."""
    seen: dict[Path, None] = {}
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = None
        for name in _imported_names(ast.parse(path.read_text(), str(path)), src):
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                found = _module_file(src, ".".join(parts[:depth]))
                if found is not None and found not in seen:
                    todo.append(found)
    return sorted(seen, key=lambda p: (p != script, str(p)))


def digest(files: Iterable[Path]) -> str:
    """One hash over the files' names and contents: equal exactly when the code is the same."""
    hasher = hashlib.sha256()
    for path in sorted(files):
        hasher.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()
