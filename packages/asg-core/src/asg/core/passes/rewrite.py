"""Rebuilding a graph node by node: the one utility every rewriting pass is written with.

:func:`rewrite` walks a graph in topological order and offers each node (with its inputs already
rewritten) to a callback, which may return a replacement. The input graph is never mutated: a node
whose inputs changed is copied, an untouched node is shared, and leaves (inputs, parameters,
constants) are shared, so parameter :class:`~asg.core.graph.Variable` storage stays the same and
compiled updates still write into it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..graph import LEAF_OPS, Graph, Node
from ..registry import EFFECTFUL, add_trait, get_op, infer_type
from ..shapes import format_shape, normalize_shape

Replace = Callable[[Node], "Node | None"]


def mark_impure(op_name: str) -> None:
    """Declare that two applications of ``op_name`` to equal inputs may differ (CSE and folding skip it).

    It gives the op the :data:`~asg.core.registry.EFFECTFUL` trait. Random ops that take their key as an
    input are ordinary pure ops (equal keys, equal values) and carry :data:`~asg.core.registry.RANDOM`.
    """
    add_trait(op_name, EFFECTFUL)


def is_pure(op_name: str) -> bool:
    """True when the op's result depends only on its inputs and attributes.

    >>> is_pure("add")
    True
    """
    if op_name in LEAF_OPS:
        return True
    return not get_op(op_name).has(EFFECTFUL)


def copy_node(node: Node, inputs: Sequence[Node]) -> Node:
    """A copy of ``node`` reading ``inputs`` instead: same op, attributes, type, name, data and meta."""
    return Node(node.op, inputs, node.attrs, node.shape, node.dtype, node.name, node.data, dict(node.meta))


def make_node(op: str, inputs: Sequence[Node], attrs: Mapping[str, Any], like: Node) -> Node:
    """A new node of ``op`` whose type comes from the op's shape rule; it takes ``like``'s name and meta.

    Passes use it to build replacements (``like`` is the node being replaced, so printouts keep
    the user's name and errors still point at the user's source line).

    >>> import asg.core as ag
    >>> x = ag.input("x", (2, 3))
    >>> y = (x * 2.0).named("y")
    >>> t = make_node("transpose", [y.node], {"axes": (1, 0)}, like=y.node)
    >>> t.shape, t.name, t.op
    ((3, 2), 'y', 'transpose')
    """
    result = infer_type(get_op(op), inputs, dict(attrs))
    return Node(
        op, inputs, attrs, normalize_shape(result.shape), result.dtype, like.name, None, dict(like.meta)
    )


def rewrite(graph: Graph, replace: Replace, what: str = "rewrite", retype: bool = False) -> Graph:
    """Rebuild ``graph``, letting ``replace(node)`` substitute nodes; returns ``graph`` itself if nothing changed.

    ``replace`` sees each node in topological order with its inputs already rewritten, and
    returns a node of the same shape and dtype to use instead (an existing node or a new one),
    or ``None`` to keep it. Inputs and outputs keep their order (compiled functions rely on it).
    ``retype=True`` lets a replacement have another dtype (never another shape) and offers ``input``
    nodes too: for passes that change value types (:func:`~asg.core.passes.narrow.narrow_index_dtypes`).

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", (3,))
        >>> g = ag.Graph([(-(-x)).node])
        >>> unwrap = lambda n: n.inputs[0].inputs[0] if n.op == "neg" and n.inputs[0].op == "neg" else None
        >>> len(g), len(rewrite(g, unwrap))
        (3, 1)
    """
    mapping: dict[int, Node] = {}
    changed = False
    for node in graph.nodes:
        inputs = tuple(mapping[i.id] for i in node.inputs)
        current = node
        if any(new is not old for new, old in zip(inputs, node.inputs, strict=True)):
            current = copy_node(node, inputs)
            changed = True
        replacement = None if node.op == "input" and not retype else replace(current)
        if replacement is not None and replacement is not current:
            if replacement.shape != node.shape or (replacement.dtype != node.dtype and not retype):
                raise ValueError(
                    f"{what}: the replacement of {graph.format_node(node)} has type "
                    f"{replacement.dtype} {format_shape(replacement.shape)}; a pass must keep "
                    f"{node.dtype} {format_shape(node.shape)}"
                )
            current = replacement
            changed = True
        mapping[node.id] = current
    if not changed:
        return graph
    return Graph([mapping[n.id] for n in graph.outputs], [mapping[n.id] for n in graph.inputs])
