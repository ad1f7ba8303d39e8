"""A griffe extension: expand ``__all__ = [..., *_sub_all]`` statically.

The packages build ``__all__`` from their submodules' lists (``from .ops import __all__ as _ops_all``
then ``*_ops_all``); griffe cannot evaluate the splat, so without this the reference would show only the
literal names. Nothing is imported: the lists are read from the sources with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import griffe


def _module_file(package_dir: Path, dotted: str) -> Path | None:
    base = package_dir.joinpath(*dotted.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def static_all(path: Path) -> list[str] | None:
    """The names of a module's ``__all__``, splats of imported ``__all__`` lists expanded; None without one."""
    tree = ast.parse(path.read_text())
    package_dir = path.parent
    imported_alls: dict[str, Path] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                if alias.name == "__all__" and alias.asname:
                    target = _module_file(package_dir, node.module)
                    if target is not None:
                        imported_alls[alias.asname] = target
    names: list[str] | None = None

    def elements(value: ast.expr) -> list[str]:
        out: list[str] = []
        if isinstance(value, ast.List | ast.Tuple):
            for elt in value.elts:
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    out.append(elt.value)
                elif isinstance(elt, ast.Starred) and isinstance(elt.value, ast.Name):
                    sub = imported_alls.get(elt.value.id)
                    out.extend((static_all(sub) or []) if sub else [])
        elif isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
            out = elements(value.left) + elements(value.right)
        return out

    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value:
                names = elements(node.value)
        elif (
            isinstance(node, ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "__all__"
            and names is not None
        ):
            names += elements(node.value)
    return names


class StaticAll(griffe.Extension):
    """Set each module's exports to its statically expanded ``__all__``."""

    def on_module_members(self, *, mod: griffe.Module, **kwargs: Any) -> None:
        if isinstance(mod.filepath, Path) and mod.filepath.suffix == ".py":
            names = static_all(mod.filepath)
            if names is not None:
                mod.exports = list(dict.fromkeys(names))


def fence_doctests(text: str) -> str:
    """Wrap each run of ``>>>`` lines (with their output) in a ``pycon`` fence, so Markdown renders it as code."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                block.append(lines[i])
                i += 1
            out += [f"{indent}```pycon", *block, f"{indent}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    """Docstrings hold bare doctests (run by the test suite); fence them for the reference pages."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
