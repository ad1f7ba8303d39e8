"""Common-subexpression elimination: one node per distinct computation."""

from __future__ import annotations

from typing import Any

from ..graph import Graph, Node
from ..registry import COMMUTATIVE, op_has
from .base import register_pass
from .rewrite import is_pure, rewrite


def attr_key(value: Any) -> Any:
    """A hashable key that tells apart values Python calls equal: ``1``, ``1.0``, ``True``, ``0.0`` and ``-0.0``.

    >>> attr_key(0.0) == attr_key(-0.0), attr_key(1) == attr_key(1.0)
    (False, False)
    """
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(attr_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, attr_key(v)) for k, v in value.items())))
    if value is None or isinstance(value, (bool, int, float, str)):
        return (type(value).__name__, repr(value))
    return ("object", id(value))  # unknown attribute types only merge with themselves


def node_key(node: Node) -> Any:
    """What makes two nodes compute the same value, or ``None`` for nodes that must stay distinct."""
    if node.op in ("input", "parameter") or not is_pure(node.op):
        return None
    if node.op == "constant":
        data = node.data
        return ("constant", node.dtype, node.shape, data.tobytes())
    inputs = tuple(i.id for i in node.inputs)
    if op_has(node.op, COMMUTATIVE):
        inputs = tuple(sorted(inputs))
    attrs = tuple(sorted((k, attr_key(v)) for k, v in node.attrs.items()))
    return (node.op, inputs, attrs, node.shape, node.dtype)


@register_pass("cse")
def common_subexpression_elimination(graph: Graph) -> Graph:
    """Merge nodes with the same op, the same inputs and equal attributes; merge equal constants.

    Inputs and parameters are never merged (each is its own storage); ops marked impure
    (:func:`~asg.core.passes.rewrite.mark_impure`) neither. Random ops with the same key are
    equal and do merge. ``add`` and ``mul`` match with their operands in either order.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", (3,))
        >>> g = ag.Graph([(x.exp() + x.exp()).node])
        >>> len(g), len(common_subexpression_elimination(g))
        (4, 3)
    """
    seen: dict[Any, Node] = {}

    def merge(node: Node) -> Node | None:
        key = node_key(node)
        if key is None:
            return None
        first = seen.setdefault(key, node)
        return None if first is node else first

    return rewrite(graph, merge, "cse")
