"""verify(graph): well-formed graphs pass (forward, gradient, second order, JSON round trip, after every
pass); deliberately corrupted ones fail with the node's printed line and the broken rule."""

from __future__ import annotations

import doctest
import importlib
import re

import numpy as np
import pytest

import asg.core as ag
from asg.core.graph import Graph, Node, Variable
from asg.core.passes import DEFAULT_PASSES, PASSES
from asg.core.verify import GraphVerificationError, verify

# asg.core exports the function verify(), which shadows the submodule's attribute on the package.
verify_module = importlib.import_module("asg.core.verify")

RNG = np.random.default_rng(0)


def model() -> tuple[ag.Tensor, list[ag.Tensor], ag.Tensor]:
    """A small network using many op families; returns (loss, params, input)."""
    x = ag.input("x", ("B", 6))
    y = ag.input("y", ("B",), "int64")
    w1 = ag.parameter(RNG.standard_normal((6, 8)).astype("float32"), name="w1")
    w2 = ag.parameter(RNG.standard_normal((8, 3)).astype("float32"), name="w2")
    h = ag.tanh(x @ w1).reshape(("B", 2, 4)).permute(0, 2, 1).reshape(("B", 8))
    h = ag.concat([h[:, :4], ag.sigmoid(h[:, 4:])], axis=1)
    logits = ag.gelu(h) @ w2 + ag.constant(np.arange(3, dtype="float32"))
    loss = ag.cross_entropy(logits, y) + (ag.softmax(logits, axis=1).max(axis=1) ** 2).mean()
    return loss, [w1, w2], x


def test_docstring_examples():
    result = doctest.testmod(verify_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_real_graphs_verify():
    loss, params, x = model()
    grads = ag.grad(loss, params)
    second = ag.hvp(loss, params, [ag.constant(np.ones(p.shape, "float32")) for p in params])
    (gx2,) = ag.grad(ag.grad(ag.tanh(x).sum() ** 2, [x])[0].sum(), [x])
    graphs = [
        Graph([loss.node]),
        Graph([loss.node, *(g.node for g in grads)]),
        Graph([t.node for t in second]),
        Graph([gx2.node]),
    ]
    for graph in graphs:
        assert verify(graph) is graph
        assert verify(Graph.from_json(graph.to_json())) is not None
        optimized = graph
        for name in DEFAULT_PASSES:
            optimized = verify(PASSES[name](optimized))
    step = ag.compile(loss, updates={p: p - 0.1 * g for p, g in zip(params, grads, strict=True)})
    verify(step.source_graph)
    verify(step.graph)


# ----------------------------------------------------------------------------- corrupted graphs
def fresh() -> tuple[Graph, dict[str, Node]]:
    """A small graph to corrupt, and its nodes by role."""
    x = ag.input("x", ("B", 3))
    w = ag.parameter(np.ones((3, 2), "float32"), name="w")
    h = (x @ w).named("h")
    out = ag.relu(h).sum(axis=1).named("out")
    graph = Graph([out.node])
    nodes = {n.name or n.op: n for n in graph.nodes}
    return graph, nodes


def expect_failure(graph: Graph, node: Node | None, reason: str) -> None:
    line = graph.format_node(node) if node is not None else ""
    with pytest.raises(GraphVerificationError) as info:
        verify(graph)
    message = str(info.value)
    assert message.startswith("verify: ")
    assert line in message, f"{line!r} not in {message!r}"
    assert re.search(reason, message), f"{reason!r} not in {message!r}"


def test_wrong_shape_is_reported_with_the_node_line():
    graph, nodes = fresh()
    nodes["h"].shape = ("B", 5)
    expect_failure(
        graph,
        nodes["h"],
        r"shape rule of 'matmul' gives float32 \(B, 2\), the node declares float32 \(B, 5\)",
    )


def test_wrong_dtype():
    graph, nodes = fresh()
    nodes["relu"].dtype = "float64"
    expect_failure(graph, nodes["relu"], r"gives float32 \(B, 2\), the node declares float64 \(B, 2\)")


def test_shape_rule_rejecting_inputs():
    graph, nodes = fresh()
    nodes["out"].attrs["axes"] = (4,)
    expect_failure(graph, nodes["out"], r"the shape rule of 'sum' rejects its inputs: axis 4 is out of range")
    graph, nodes = fresh()
    nodes["w"].shape = (4, 2)
    nodes["w"].data = Variable(np.ones((4, 2), "float32"), "w")
    expect_failure(graph, nodes["h"], r"rejects its inputs: inner dimensions 3 and 4 differ")


def test_unknown_op():
    graph, nodes = fresh()
    nodes["relu"].op = "relu6"
    expect_failure(graph, nodes["relu"], r"no op named 'relu6' is registered")


def test_not_in_topological_order():
    graph, nodes = fresh()
    i, j = graph.nodes.index(nodes["h"]), graph.nodes.index(nodes["relu"])
    graph.nodes[i], graph.nodes[j] = graph.nodes[j], graph.nodes[i]
    expect_failure(
        graph, nodes["relu"], r"reads h:f32\[B,2\] = matmul x w, which comes later: not in topological order"
    )


def test_duplicate_node_and_duplicate_id():
    graph, nodes = fresh()
    graph.nodes.append(nodes["relu"])
    expect_failure(graph, nodes["relu"], "appears twice in the graph")
    graph, nodes = fresh()
    nodes["relu"].id = nodes["h"].id
    with pytest.raises(GraphVerificationError, match=r"has the same id \(\d+\) as <Node h"):
        verify(graph)


def test_reading_a_node_outside_the_graph():
    graph, nodes = fresh()
    stranger = ag.input("stranger", ("B", 2)).node
    nodes["relu"].inputs = (stranger,)
    with pytest.raises(
        GraphVerificationError,
        match=r"verify: <Node relu_\d+: .*>: reads <Node stranger: f32\[B,2\] = input\(\)>, which is not in the graph",
    ):
        verify(graph)


def test_inputs_and_outputs_must_belong_to_the_graph():
    graph, nodes = fresh()
    graph.outputs.append(ag.input("other", (2,)).node)
    with pytest.raises(
        GraphVerificationError, match=r"output 1 <Node other: f32\[2\] = input\(\)> is not in the graph"
    ):
        verify(graph)
    graph, nodes = fresh()
    graph.inputs.append(ag.input("z", (1,)).node)
    with pytest.raises(
        GraphVerificationError, match=r"graph input <Node z: f32\[1\] = input\(\)> is not in the graph"
    ):
        verify(graph)
    graph, nodes = fresh()
    graph.inputs.append(nodes["w"])
    expect_failure(graph, nodes["w"], "graph inputs must be input nodes, this is a 'parameter' node")
    graph, nodes = fresh()
    graph.inputs.append(nodes["x"])
    expect_failure(graph, nodes["x"], "is listed twice in the graph's inputs")
    graph, nodes = fresh()
    graph.inputs.clear()
    expect_failure(graph, nodes["x"], "is an input node read by the graph but missing from graph.inputs")
    graph, nodes = fresh()
    twin = ag.input("x", (4,)).node  # Graph() refuses two inputs named x; an edit can still make them
    graph.nodes.insert(0, twin)
    graph.inputs.append(twin)
    expect_failure(
        graph, twin, r"shares its name with the input x_1:f32\[B,3\] = input; inputs are fed by name"
    )


def test_parameters_and_constants_hold_what_they_declare():
    graph, nodes = fresh()
    nodes["w"].data = Variable(np.ones((3, 3), "float32"), "w")
    expect_failure(
        graph,
        nodes["w"],
        r"the parameter's Variable holds float32 \(3, 3\), the node declares float32 \(3, 2\)",
    )
    graph, nodes = fresh()
    nodes["w"].data.value = nodes["w"].data.value.astype("float64")
    expect_failure(graph, nodes["w"], r"holds float64 \(3, 2\), the node declares float32")
    graph, nodes = fresh()
    nodes["w"].data = np.ones((3, 2), "float32")
    expect_failure(graph, nodes["w"], "a parameter must hold a Variable, found ndarray")
    graph, nodes = fresh()
    nodes["w"].data = Variable(None, "w")  # what graph JSON without data loads with structure_only=True
    expect_failure(
        graph, nodes["w"], r"the parameter has no value \(its graph was loaded from JSON with structure_only"
    )
    x = ag.input("x", (2,))
    c = ag.constant(np.ones(2, "float32"))
    graph = Graph([(x + c).node])
    c.node.data = np.ones(2, "int32")
    expect_failure(graph, c.node, r"the constant holds int32 \(2,\), the node declares float32 \(2,\)")
    c.node.data = [1.0, 1.0]
    expect_failure(graph, c.node, "a constant must hold a numpy array, found list")
    c.node.data = np.ones(2, "float32")
    c.node.inputs = (x.node,)
    expect_failure(graph, c.node, "a constant node must not read other nodes")


def test_failure_names_where_the_node_was_built():
    graph, nodes = fresh()
    nodes["relu"].dtype = "float16"
    with pytest.raises(GraphVerificationError, match=r"\n  built at .*test_verify.py:\d+"):
        verify(graph)
