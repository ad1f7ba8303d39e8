"""The backend boundary: what a backend implements, what core gives it, and backend discovery.

Core turns a specialised graph into a :class:`~asg.core.schedule.Schedule` (ordered steps plus the
buffer table) and lowers each step with the backend's per-op rules
(:func:`~asg.core.registry.register_lowering`); the backend's :meth:`Backend.compile` turns both into
a :class:`Plan`. Parameters live in the backend's :class:`~asg.core.storage.Storage` between steps.
:class:`Capabilities` say which dtypes the backend runs, so core can narrow or refuse a graph at
compile time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol

import numpy as np

from ..dtypes import DTYPES
from ..graph import LEAF_OPS, Graph, Node
from ..lowering import context, lower
from ..passes.narrow import UnsupportedDTypeError
from ..schedule import Schedule, Step, build_schedule
from ..specialize import Specialization
from ..storage import Storage, store_as

OnStep = Callable[[Step, Any, float], None]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run.

    Attributes:
        dtypes: the dtypes its kernels support; a graph holding another is refused at compile time,
            naming the node (WGSL: no ``float64``, no ``int64``).
        narrow_index: int64 index values are narrowed to int32 before compiling (for backends
            without 64-bit integers).
        decompose: fused ops this backend runs faster as their formulas in simpler ops (the numpy
            backends: the attention family, whose fused CPU kernels recompute the probabilities per
            gradient op); replaced before lowering by :func:`~asg.core.passes.decompose.decompose`.
            ``compile(..., options={"decompose": ()})`` keeps them fused (for their smaller memory).
    """

    dtypes: frozenset[str] = frozenset(DTYPES)
    narrow_index: bool = False
    decompose: frozenset[str] = frozenset()


class Plan(Protocol):
    """A graph compiled for one set of input shapes.

    ``plan(feeds)`` runs one step (feeds in ``schedule.inputs`` order), applies the parameter
    updates and returns the outputs as numpy arrays. ``run_traced`` runs the same step and calls
    ``on_step(step, value, seconds)`` after each kernel (``value`` readable with ``np.asarray``;
    ``seconds``: wall time on numpy, timestamp queries on a GPU); an exception raised by ``on_step``
    stops the run before any update is applied. ``update=False`` leaves the parameters unchanged.
    """

    schedule: Schedule

    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def run_traced(
        self, feeds: Sequence[np.ndarray], on_step: OnStep, update: bool = True
    ) -> list[np.ndarray]:
        """Run one step calling ``on_step(step, value, seconds)`` after each kernel; the outputs.

        An exception from ``on_step`` stops the run before any update; ``update=False`` applies none.
        """
        ...


class Backend(ABC):
    """Base of every backend: capabilities, options, storage, and ``compile``.

    Attributes:
        capabilities: the dtypes it runs (:class:`Capabilities`).
        options: the backend's own options and their defaults (``compile(..., options=...)``);
            core adds ``memory_planning`` and ``check_numerics`` for every backend.
        storage: where parameters live between steps; ``None`` keeps them in host numpy arrays.
    """

    capabilities: ClassVar[Capabilities] = Capabilities()
    options: ClassVar[Mapping[str, Any]] = {}
    storage: Storage | None = None

    @abstractmethod
    def compile(self, schedule: Schedule, kernels: Sequence[Any], options: Mapping[str, Any]) -> Plan:
        """A plan running ``schedule``; ``kernels[i]`` is the lowered kernel of ``schedule.steps[i]``."""

    def prepare_lowerings(self) -> None:
        """Called by ``compile`` before a graph is checked for lowerings on this backend (the default does
        nothing). A backend that takes another's lowerings for the ops it has none of registers them here,
        so that ops defined after the backend was created are covered too (``"numpy-jit"``)."""
        return None


# decompose: None = the backend's Capabilities.decompose; a collection of op names overrides it
CORE_OPTIONS: dict[str, Any] = {"memory_planning": True, "check_numerics": False, "decompose": None}


def resolve_options(backend_name: str, backend: Backend, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``options``; an unknown option is a ``ValueError`` listing the known ones."""
    known = {**CORE_OPTIONS, **dict(getattr(backend, "options", {}))}
    given = dict(options or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"compile: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
            f"backend {backend_name!r}; known options: {', '.join(sorted(known))}"
        )
    return {**known, **given}


def build_plan(
    backend_name: str,
    backend: Backend,
    graph: Graph,
    spec: Specialization,
    num_outputs: int,
    updates: Sequence[tuple[Node, Node]],
    options: Mapping[str, Any],
) -> Plan:
    """Lower every compute node of ``graph`` on the backend, schedule it, and let the backend build the plan.

    Each node is lowered once per plan, with concrete types; the kernels' flags drive the buffer plan.
    On a backend that narrows index dtypes, its storage is told the dtype each int64 parameter runs as.
    """
    _store_parameters(backend_name, backend, graph)
    names = graph.names()
    compute = [n for n in graph.nodes if n.op not in LEAF_OPS]
    kernels = [lower(context(backend_name, graph, n, spec, names)) for n in compute]
    schedule = build_schedule(
        graph,
        spec,
        num_outputs,
        updates,
        {n.id: k for n, k in zip(compute, kernels, strict=True)},
        memory_planning=bool(options.get("memory_planning", True)),
    )
    return backend.compile(schedule, kernels, options)


def _store_parameters(backend_name: str, backend: Backend, graph: Graph) -> None:
    """Tell the storage of a backend that narrows index dtypes how its plans run each int64 parameter.

    A parameter narrowed to int32 (:mod:`asg.core.passes.narrow`) is kept as int32 in the backend's
    storage, its host array staying int64; a random key (left int64) is pinned as int64 there, so one
    variable run both ways on one backend is an error (:func:`asg.core.storage.store_as`).
    """
    params = [n for n in graph.parameters if n.dtype == "int64" or "narrowed_from" in n.meta]
    if not params or not getattr(getattr(backend, "capabilities", None), "narrow_index", False):
        return
    storage = backend.storage
    for node in params:
        if storage is None:
            raise UnsupportedDTypeError(
                f"backend {backend_name!r} runs {graph.format_node(node)} (named {node.name!r}) as "
                f"{node.dtype} instead of {node.meta.get('narrowed_from', node.dtype)}, but keeps parameters in "
                "their host arrays (storage is None), which keep their dtype; give the backend a Storage "
                "(asg.core.storage) that keeps the narrowed copy"
            )
        store_as(node.data, storage, node.dtype, backend_name)


_BACKENDS: dict[str, type | Backend] = {}


def register_backend(name: str, backend: type | Backend) -> None:
    """Make a backend (class or instance) available as ``compile(..., backend=name)``.

    Registering a name again replaces the backend (and drops the cached instance).
    """
    _BACKENDS[name] = backend
    _INSTANCES.pop(name, None)


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
