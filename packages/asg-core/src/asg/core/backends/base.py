"""The executor interface every backend implements, and backend discovery."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Protocol

import numpy as np

from ..graph import Graph, Node
from ..specialize import Specialization


class Plan(Protocol):
    """A graph compiled for one set of input shapes: call it with the input arrays."""

    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Backend(Protocol):
    """Builds plans. ``updates`` pairs parameter nodes with the nodes computing their new values."""

    name: str

    def compile(
        self,
        graph: Graph,
        spec: Specialization,
        num_outputs: int,
        updates: Sequence[tuple[Node, Node]],
    ) -> Plan: ...


_BACKENDS: dict[str, type | Backend] = {}


def register_backend(name: str, backend: type | Backend) -> None:
    """Make a backend (class or instance) available as ``compile(..., backend=name)``."""
    _BACKENDS[name] = backend


def available_backends() -> list[str]:
    """Names of the built-in, registered and installed (entry point) backends."""
    names = set(_BACKENDS)
    names.update(ep.name for ep in entry_points(group="asg.backends"))
    return sorted(names)


_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, loading its entry point on first use."""
    if name in _INSTANCES:
        return _INSTANCES[name]
    found = _BACKENDS.get(name)
    if found is None:
        for ep in entry_points(group="asg.backends"):
            if ep.name == name:
                found = ep.load()
                break
    if found is None:
        raise ValueError(
            f"no backend named {name!r}; available: {', '.join(available_backends())} "
            "(install asg-gpu for 'wgpu')"
        )
    instance = found() if isinstance(found, type) else found
    _INSTANCES[name] = instance
    return instance
