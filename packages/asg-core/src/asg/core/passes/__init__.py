"""Graph optimisation passes: each is a function ``Graph -> Graph`` that can be run alone.

:data:`DEFAULT_PASSES` is the pipeline :func:`asg.core.compile` runs; pass ``passes=[]`` to turn
optimisation off, or a list of names to choose. Memory planning runs later, per input shapes
(:mod:`asg.core.passes.memory`), and is switched with ``compile(..., memory_planning=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..graph import Graph

Pass = Callable[[Graph], Graph]
PASSES: dict[str, Pass] = {}
DEFAULT_PASSES: list[str] = []


def register_pass(name: str, default: bool = True) -> Callable[[Pass], Pass]:
    """Decorator adding a pass to :data:`PASSES` (and to the default pipeline)."""

    def wrap(fn: Pass) -> Pass:
        PASSES[name] = fn
        if default:
            DEFAULT_PASSES.append(name)
        return fn

    return wrap


def run_passes(graph: Graph, passes: Sequence[str | Pass] | None = None) -> Graph:
    """Apply passes in order (the default pipeline when ``passes`` is None)."""
    for p in DEFAULT_PASSES if passes is None else passes:
        fn = PASSES[p] if isinstance(p, str) else p
        graph = fn(graph)
    return graph
