"""Dead-code elimination: keep only the nodes the outputs depend on."""

from __future__ import annotations

from ..graph import Graph, topological_order
from .base import register_pass


@register_pass("dce")
def dead_code_elimination(graph: Graph) -> Graph:
    """Drop nodes that no output depends on (inputs stay, since callers feed them by position).

    A :class:`~asg.core.graph.Graph` built from outputs holds only reachable nodes; nodes become
    dead when other passes rewrite their users away, or when a graph is assembled by hand.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", (3,))
        >>> g = ag.Graph([(x + 1.0).node])
        >>> g.nodes.append((x * 2.0).node)  # a dead node
        >>> len(g), len(dead_code_elimination(g))
        (4, 3)
    """
    live = topological_order([*graph.outputs, *graph.inputs])
    if len(live) == len(graph.nodes):
        return graph
    return Graph(graph.outputs, graph.inputs)
