"""The pass table: :func:`register_pass` adds a ``Graph -> Graph`` function under a name.

Its own module, so that the pass modules import it without importing their package (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable

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
