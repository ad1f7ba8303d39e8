"""``verify(graph)``: check that a graph is well formed, by re-running every op's shape rule.

Like JAX's ``typecheck_jaxpr`` or torch.fx's ``Graph.lint``: passes and hand-built graphs can be
checked before they are compiled, and a failure names the node by its printed line.
"""

from __future__ import annotations

import numpy as np

from .errors import ASGError
from .graph import LEAF_OPS, Graph, Node, Variable
from .registry import OPS, TensorType
from .shapes import format_shape, normalize_shape


class GraphVerificationError(ASGError, ValueError):
    """A graph breaks an invariant: the message names the node (its printed line) and the rule broken."""


def _line(graph: Graph, node: Node) -> str:
    try:
        return graph.format_node(node)
    except KeyError:  # the node reads values the graph does not hold
        return repr(node)


def _fail(graph: Graph, node: Node, reason: str) -> GraphVerificationError:
    where = f"\n  built at {node.meta['source']}" if node.meta.get("source") else ""
    return GraphVerificationError(f"verify: {_line(graph, node)}: {reason}{where}")


def _check_leaf(graph: Graph, node: Node) -> None:
    if node.inputs:
        raise _fail(graph, node, f"a {node.op} node must not read other nodes")
    if node.op == "parameter":
        var = node.data
        if not isinstance(var, Variable):
            raise _fail(graph, node, f"a parameter must hold a Variable, found {type(var).__name__}")
        if not var.has_value:
            raise _fail(
                graph,
                node,
                "the parameter has no value (its graph was loaded from JSON with structure_only=True); "
                "load it with parameter_values= or assign node.data.value before compiling",
            )
        value = var.value
        if not isinstance(value, np.ndarray):
            raise _fail(graph, node, f"the parameter's Variable holds a {type(value).__name__}, not an array")
        if tuple(value.shape) != node.shape or value.dtype.name != node.dtype:
            raise _fail(
                graph,
                node,
                f"the parameter's Variable holds {value.dtype.name} {format_shape(value.shape)}, "
                f"the node declares {node.dtype} {format_shape(node.shape)}",
            )
    elif node.op == "constant":
        data = node.data
        if not isinstance(data, np.ndarray):
            raise _fail(graph, node, f"a constant must hold a numpy array, found {type(data).__name__}")
        if tuple(data.shape) != node.shape or data.dtype.name != node.dtype:
            raise _fail(
                graph,
                node,
                f"the constant holds {data.dtype.name} {format_shape(data.shape)}, "
                f"the node declares {node.dtype} {format_shape(node.shape)}",
            )


def _check_op(graph: Graph, node: Node) -> None:
    op = OPS.get(node.op)
    if op is None:
        raise _fail(graph, node, f"no op named {node.op!r} is registered")
    types = [TensorType(i.shape, i.dtype) for i in node.inputs]
    try:
        result = op.infer(*types, **node.attrs)
    except (ValueError, TypeError) as err:
        raise _fail(graph, node, f"the shape rule of {node.op!r} rejects its inputs: {err}") from None
    shape, dtype = normalize_shape(result.shape), result.dtype
    if shape != node.shape or dtype != node.dtype:
        raise _fail(
            graph,
            node,
            f"the shape rule of {node.op!r} gives {dtype} {format_shape(shape)}, "
            f"the node declares {node.dtype} {format_shape(node.shape)}",
        )


def verify(graph: Graph) -> Graph:
    """Check ``graph`` and return it; raise :class:`GraphVerificationError` naming the first bad node.

    Checked: node ids are unique; every node comes after the nodes it reads (topological order)
    and reads only nodes of the graph; inputs and outputs belong to the graph, inputs are
    ``input`` nodes listed once, with distinct names, and every ``input`` node read is listed; parameters hold a
    :class:`~asg.core.graph.Variable` with a value of the declared shape and dtype, constants an array of it;
    every op is registered and its shape rule, re-run on the inputs' types, gives the node's type.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B", 3))
        >>> g = verify(ag.Graph([(x * 2.0).sum(axis=1).node]))
        >>> bad = ag.Graph([(x * 2.0).node])
        >>> bad.nodes[-1].shape = ("B", 4)  # corrupt the graph
        >>> verify(bad)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        asg.core.verify.GraphVerificationError: verify: a:f32[B,4] = mul x 2.0:f32: the shape rule of 'mul' gives float32 (B, 3), the node declares float32 (B, 4)
          built at ...
    """
    position: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        if node.id in position:
            other = graph.nodes[position[node.id]]
            what = (
                "appears twice in the graph" if other is node else f"has the same id ({node.id}) as {other!r}"
            )
            raise _fail(graph, node, what)
        position[node.id] = index
    for index, node in enumerate(graph.nodes):
        for i in node.inputs:
            if i.id not in position or graph.nodes[position[i.id]] is not i:
                raise _fail(graph, node, f"reads {i!r}, which is not in the graph")
            if position[i.id] > index:
                raise _fail(
                    graph, node, f"reads {graph.format_node(i)}, which comes later: not in topological order"
                )
        if node.op in LEAF_OPS:
            _check_leaf(graph, node)
        else:
            _check_op(graph, node)
    listed: set[int] = set()
    named: dict[str, Node] = {}
    for node in graph.inputs:
        if node.id not in position or graph.nodes[position[node.id]] is not node:
            raise GraphVerificationError(f"verify: graph input {node!r} is not in the graph")
        if node.op != "input":
            raise _fail(graph, node, f"graph inputs must be input nodes, this is a {node.op!r} node")
        if node.id in listed:
            raise _fail(graph, node, "is listed twice in the graph's inputs")
        listed.add(node.id)
        other = named.setdefault(node.name, node) if node.name else node
        if other is not node:
            raise _fail(
                graph,
                node,
                f"shares its name with the input {graph.format_node(other)}; inputs are fed by name",
            )
    for node in graph.nodes:
        if node.op == "input" and node.id not in listed:
            raise _fail(graph, node, "is an input node read by the graph but missing from graph.inputs")
    for k, node in enumerate(graph.outputs):
        if node.id not in position or graph.nodes[position[node.id]] is not node:
            raise GraphVerificationError(f"verify: output {k} {node!r} is not in the graph")
    return graph
