"""Graph optimisation passes: each is a function ``Graph -> Graph`` that can be run alone.

A pass is pure: it never mutates the graph it gets, and returns that same graph when it changes
nothing. Rewriting passes are written with :func:`asg.core.passes.rewrite.rewrite`.

:data:`DEFAULT_PASSES` is the pipeline :func:`asg.core.compile` runs (constant folding, algebraic
simplification, CSE, DCE); pass ``passes=[]`` to turn optimisation off, or a list of names (or
functions) to choose, e.g. ``compile(loss, passes=["cse", "dce"])``. Memory planning runs later, per input shapes
(:mod:`asg.core.schedule`, a core service rather than a pass), and is switched with
``compile(..., memory_planning=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..graph import Graph
from . import cse, dce, fold, narrow, simplify  # noqa: F401  (each registers itself)
from .base import DEFAULT_PASSES, PASSES, Pass, register_pass

__all__ = ["DEFAULT_PASSES", "PASSES", "Pass", "register_pass", "run_passes"]


def run_passes(graph: Graph, passes: Sequence[str | Pass] | None = None) -> Graph:
    """Apply passes in order (the default pipeline when ``passes`` is None).

    >>> import asg.core as ag
    >>> x = ag.input("x", (3,))
    >>> g = ag.Graph([(x * 1.0 + x * 1.0).node])
    >>> len(g), len(run_passes(g)), len(run_passes(g, []))
    (6, 2, 6)
    """
    for p in DEFAULT_PASSES if passes is None else passes:
        if isinstance(p, str):
            if p not in PASSES:
                raise ValueError(f"no pass named {p!r}; registered passes: {', '.join(sorted(PASSES))}")
            fn = PASSES[p]
        else:
            fn = p
        graph = fn(graph)
    return graph


# Folding exposes constants to the algebraic rules, which expose duplicates to CSE; DCE sweeps
# what the rewrites left behind. Passes registered later (by other packages) run after these.
_STANDARD = ["constant_folding", "simplify", "cse", "dce"]
DEFAULT_PASSES[:] = _STANDARD + [p for p in DEFAULT_PASSES if p not in _STANDARD]
