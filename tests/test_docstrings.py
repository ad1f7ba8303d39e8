"""Every public class, function, method and property of the six packages has its own docstring.

Walks every public module (no path component starting with ``_``) of asg.core, asg.data, asg.nn,
asg.gpu, asg.viz and asg.zoo, imports it, and checks every public name (not starting with ``_``) that
is *defined in that package*: module-level functions and classes, and each class's own methods,
classmethods, staticmethods and properties, overrides included, plus the public members a class
inherits from a private base of the package. An override's docstring is not
inherited here (``obj.__doc__``, not ``inspect.getdoc``): it says what this class does differently,
e.g. "Applies the linear map: (*, in) -> (*, out)." The docs build checks only ``__all__`` names
(docs/hooks.py); this checks the methods the reference pages list under each class too.

The docstrings' examples (``>>>``) of those modules run here as doctests, so the reference shows only
examples that work.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest

PACKAGES = ["core", "data", "nn", "gpu", "viz", "zoo"]
# Packages whose modules may need an optional dependency (wgpu, Qt/pyqtgraph): a module of these that
# fails to import for a missing module outside asg is skipped; anywhere else it is a failure.
OPTIONAL = {"gpu", "viz"}


def _public_modules(package: str) -> Iterator[str]:
    root = importlib.import_module(f"asg.{package}")
    yield root.__name__
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield info.name


def _import(name: str, package: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing = getattr(err, "name", None) or ""
        if package in OPTIONAL and missing and not missing.startswith("asg"):
            return None
        raise


def _own_doc(obj: Any) -> str | None:
    """The docstring written for ``obj`` itself (a class's own, not one made by dataclass/NamedTuple)."""
    if isinstance(obj, type):
        doc = obj.__dict__.get("__doc__")
        auto = f"{obj.__name__}("  # what @dataclass and NamedTuple write when there is none
        if doc and (dataclasses.is_dataclass(obj) or issubclass(obj, tuple)) and doc.startswith(auto):
            return None
        return doc
    return getattr(obj, "__doc__", None)


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            yield name, value.__func__
        elif isinstance(value, property):
            yield name, value.fget if value.fget is not None and value.__doc__ is None else value
        elif inspect.isfunction(value) or isinstance(value, type):
            yield name, value


def _undocumented(package: str) -> Iterator[str]:
    prefix = f"asg.{package}"
    seen: set[int] = set()

    def visit(qualname: str, obj: Any) -> Iterator[str]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        doc = _own_doc(obj)
        if not (doc and doc.strip()):
            yield qualname
        if isinstance(obj, type):
            # its own members, and the public members it inherits from private bases of the package
            # (``_Loss.extra_repr`` is ``MSELoss.extra_repr`` to a user)
            private = [
                b for b in obj.__mro__[1:] if b.__name__.startswith("_") and b.__module__.startswith(prefix)
            ]
            for cls in (obj, *private):
                for name, member in _members(cls):
                    module = getattr(member, "__module__", None) or cls.__module__
                    if module.startswith(prefix) or isinstance(member, property):
                        where = "" if cls is obj else f" (from {cls.__name__})"
                        yield from visit(f"{qualname}.{name}{where}", member)

    for modname in _public_modules(package):
        module = _import(modname, package)
        if module is None:
            continue
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or isinstance(obj, type)):
                continue
            if getattr(obj, "__module__", None) != modname:  # imported: checked where it is defined
                continue
            yield from visit(f"{modname}.{name}", obj)


def _import_or_skip(package: str) -> None:
    """Import ``asg.<package>``; skip when an optional package lacks a dependency outside asg."""
    try:
        importlib.import_module(f"asg.{package}")
    except ImportError as err:
        if package in OPTIONAL and not (getattr(err, "name", None) or "").startswith("asg"):
            pytest.skip(f"asg.{package} needs {err.name}")
        raise


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_member_has_a_docstring(package: str) -> None:
    _import_or_skip(package)
    missing = sorted(set(_undocumented(package)))
    assert not missing, f"{len(missing)} public members of asg.{package} have no docstring:\n" + "\n".join(
        missing
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_docstring_examples_run(package: str) -> None:
    _import_or_skip(package)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    failed = []
    for modname in _public_modules(package):
        module = _import(modname, package)
        if module is None:
            continue
        result = doctest.testmod(module, extraglobs={"np": np}, optionflags=flags, report=False)
        if result.failed:
            failed.append(f"{modname}: {result.failed} of {result.attempted} examples failed")
    assert not failed, "\n".join(failed) + "\n(run python -m doctest -v on the module to see them)"
