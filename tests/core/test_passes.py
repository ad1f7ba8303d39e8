"""The optimisation passes: each one alone, then the default pipeline.

Every pass test runs the graph before and after the pass on the same random inputs and asserts
identical results, checks that the pass removed nodes, that the input graph was not touched,
and that the result passes ``verify``.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import asg.core as ag
from asg.core.backends import build_plan, get_backend
from asg.core.graph import Graph
from asg.core.passes import DEFAULT_PASSES, PASSES, cse, dce, fold, rewrite, run_passes, simplify
from asg.core.passes.cse import common_subexpression_elimination
from asg.core.passes.dce import dead_code_elimination
from asg.core.passes.fold import constant_folding
from asg.core.passes.rewrite import make_node, mark_impure
from asg.core.passes.simplify import simplify as simplify_pass
from asg.core.registry import EFFECTFUL, ops_with
from asg.core.specialize import bind_inputs, specialize
from asg.core.testing import scratch_ops
from asg.core.verify import verify

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers
def execute(graph: Graph, *arrays: np.ndarray) -> list[np.ndarray]:
    """Run a Graph as it is (no passes, no memory planning) on input arrays."""
    spec = specialize(graph, bind_inputs(graph, arrays))
    plan = build_plan(
        "numpy", get_backend("numpy"), graph, spec, len(graph.outputs), [], {"memory_planning": False}
    )
    return plan(list(arrays))


def snapshot(graph: Graph) -> list[tuple]:
    """Everything a pass could mutate, to check that passes are pure."""
    return [
        (
            n.id,
            n.op,
            tuple(i.id for i in n.inputs),
            dict(n.attrs),
            n.shape,
            n.dtype,
            n.name,
            id(n.data),
            dict(n.meta),
        )
        for n in graph.nodes
    ] + [("in", *(n.id for n in graph.inputs)), ("out", *(n.id for n in graph.outputs))]


def check_pass(pass_fn, graph: Graph, *arrays: np.ndarray, removes: int | None = None) -> Graph:
    """Apply ``pass_fn``; assert same values (bit for bit, NaNs included), fewer nodes, purity, verify."""
    verify(graph)
    before_state = snapshot(graph)
    before = execute(graph, *arrays)
    text = str(graph)
    after_graph = pass_fn(graph)
    assert snapshot(graph) == before_state, "the pass mutated its input graph"
    assert str(graph) == text
    verify(after_graph)
    after = execute(after_graph, *arrays)
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    if removes is None:
        assert len(after_graph) < len(graph), f"no node removed:\n{after_graph}"
    else:
        assert len(graph) - len(after_graph) == removes, (
            f"{len(graph)} -> {len(after_graph)} nodes:\n{after_graph}"
        )
    if removes == 0:
        assert after_graph is not graph, "the pass changed nothing"
    assert [n.op for n in after_graph.inputs] == ["input"] * len(graph.inputs)
    assert after_graph.inputs == graph.inputs
    return after_graph


def rand(*shape: int, dtype: str = "float32") -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def graph_of(*tensors: ag.Tensor, inputs: list[ag.Tensor] | None = None) -> Graph:
    return Graph([t.node for t in tensors], None if inputs is None else [t.node for t in inputs])


# ----------------------------------------------------------------------------- registry and docs
def test_default_pipeline_and_registry():
    assert DEFAULT_PASSES[:4] == ["constant_folding", "simplify", "cse", "dce"]
    for name in ("constant_folding", "simplify", "cse", "dce"):
        assert name in PASSES
    x = ag.input("x", (3,))
    with pytest.raises(ValueError, match="no pass named 'fold'; registered passes: constant_folding, cse"):
        run_passes(graph_of(x * 2.0), ["fold"])


@pytest.mark.parametrize("module", [cse, dce, fold, rewrite, simplify, ag.passes], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- rewrite
def test_rewrite_keeps_leaves_names_meta_and_io_order():
    a, b, unused = ag.input("a", (2, 3)), ag.input("b", (2, 3)), ag.input("unused", (1,))
    w = ag.parameter(rand(2, 3), name="w")
    hidden = (ag.neg(ag.neg(a)) + w).named("hidden")
    out2 = (hidden * b).named("product")
    graph = graph_of(out2, hidden, inputs=[b, unused, a])
    result = simplify_pass(graph)
    assert result.inputs == [b.node, unused.node, a.node]
    assert [n.name for n in result.outputs] == ["product", "hidden"]
    assert result.outputs[0].meta["source"] == out2.node.meta["source"]
    (param,) = result.parameters
    assert param is w.node and param.data is w.node.data
    assert result.outputs[0] is not out2.node  # rebuilt: its input changed
    assert out2.node.inputs[0] is hidden.node  # ... and the original is untouched


def test_rewrite_returns_the_same_graph_when_nothing_changes():
    x = ag.input("x", (3,))
    graph = graph_of(ag.exp(x) + 1.0)
    assert rewrite.rewrite(graph, lambda n: None) is graph
    for name in DEFAULT_PASSES:
        assert PASSES[name](graph) is graph


def test_rewrite_rejects_a_replacement_of_another_type():
    x = ag.input("x", (2, 3))
    graph = graph_of(ag.exp(x))
    with pytest.raises(
        ValueError, match=r"bad: the replacement of a:f32\[2,3\] = exp x has type float32 \(3, 2\)"
    ):
        rewrite.rewrite(
            graph,
            lambda n: make_node("transpose", [x.node], {"axes": (1, 0)}, n) if n.op == "exp" else None,
            "bad",
        )


# ----------------------------------------------------------------------------- DCE
def test_dce_removes_nodes_no_output_reads():
    x = ag.input("x", (4, 5))
    y = ag.tanh(x) * 2.0
    graph = graph_of(y)
    dead = ag.exp(ag.tanh(x)).sum()
    graph.nodes.extend(n for n in ag.Graph([dead.node]).nodes if n not in graph.nodes)  # hand-assembled
    after = check_pass(dead_code_elimination, graph, rand(4, 5), removes=3)
    assert [n.op for n in after.nodes] == ["input", "tanh", "constant", "mul"]


def test_dce_keeps_unused_inputs_in_call_order():
    x, unused = ag.input("x", (3,)), ag.input("unused", (2,))
    graph = graph_of(x + 1.0, inputs=[unused, x])
    graph.nodes.append((x * 3.0).node)
    graph.nodes.append((x * 3.0).node.inputs[1])
    after = dead_code_elimination(graph)
    assert after.inputs == [unused.node, x.node] and len(after) == 4
    verify(after)


# ----------------------------------------------------------------------------- CSE
def test_cse_merges_repeated_subexpressions_and_commuted_operands():
    x, y = ag.input("x", (3, 4)), ag.input("y", (3, 4))
    first = ag.log(ag.exp(x) + 1.0) * y
    second = y * ag.log(1.0 + ag.exp(x))  # same value, operands commuted
    graph = graph_of(first - second, (x @ y.T).sum(axis=1) + (x @ y.T).sum(axis=1))
    after = check_pass(common_subexpression_elimination, graph, rand(3, 4), rand(3, 4))
    counts = after.op_counts()
    assert counts["exp"] == counts["log"] == counts["matmul"] == counts["transpose"] == 1
    assert counts["constant"] == 1  # the two 1.0 literals merged too


def test_cse_keeps_different_attributes_apart():
    x = ag.input("x", (3, 4))
    graph = graph_of(
        x.sum(axis=0).sum() + x.sum(axis=1).sum(),
        ag.full((3, 4), 0.0) + ag.full((3, 4), -0.0),  # 0.0 == -0.0 in Python, but not in IEEE
        ag.full((2,), 1.0, "int32") + ag.full((2,), 1.0, "int32"),
    )
    after = check_pass(common_subexpression_elimination, graph, rand(3, 4), removes=1)
    assert after.op_counts()["sum"] == 4 and after.op_counts()["full"] == 3
    zeros = execute(after, rand(3, 4))[1]
    assert not np.signbit(zeros).any()


def test_cse_never_merges_inputs_or_parameters_but_merges_equal_constants():
    a, b = ag.input("a", (2,)), ag.input("b", (2,))
    value = rand(2)
    p, q = ag.parameter(value, name="p"), ag.parameter(value, name="q")
    c1, c2 = ag.constant(np.array([1.0, 2.0], "float32")), ag.constant(np.array([1.0, 2.0], "float32"))
    c64 = ag.constant(np.array([1.0, 2.0], "float64"))
    graph = graph_of(a * c1 + b * c2, p * c1 + q * c2, ag.cast(a, "float64") * c64)
    after = check_pass(common_subexpression_elimination, graph, rand(2), rand(2), removes=1)
    counts = after.op_counts()
    assert counts["input"] == 2 and counts["parameter"] == 2 and counts["constant"] == 2
    assert {n.data for n in after.parameters} == {p.node.data, q.node.data}


def test_cse_respects_impure_ops_and_merges_keyed_random_ops():
    x = ag.input("x", (4,))
    key = ag.input("key", (), "int64")
    same_key = graph_of(x + ag.random_uniform(key, (4,)), x * ag.random_uniform(key, (4,)))
    after = check_pass(common_subexpression_elimination, same_key, rand(4), np.array(7), removes=1)
    assert after.op_counts()["random_uniform"] == 1  # same key, same numbers: one node is enough
    other_key = graph_of(ag.random_uniform(key, (4,)) - ag.random_uniform(ag.fold_in(key, 1), (4,)))
    assert common_subexpression_elimination(other_key) is other_key
    constant_key = graph_of(ag.random_normal(7, (4,)))
    assert (
        constant_folding(constant_key) is constant_key
    )  # another backend may draw differently: never folded
    name = "test_passes_stateful_sample"
    with scratch_ops():
        ag.define_op(
            name,
            infer=lambda t: t,
            kernel=lambda t: t + np.random.default_rng().random(t.shape).astype(t.dtype),
        )
        mark_impure(name)
        assert name in ops_with(EFFECTFUL)
        graph = graph_of(ag.apply(name, x) - ag.apply(name, x))
        assert common_subexpression_elimination(graph) is graph
        assert (
            constant_folding(graph_of(ag.apply(name, ag.constant(np.zeros(2, "float32"))))).op_counts()[name]
            == 1
        )


# ----------------------------------------------------------------------------- constant folding
def test_constant_folding_evaluates_constant_subgraphs_with_the_kernels():
    x = ag.input("x", (3, 4))
    c = ag.constant(rand(3, 4))
    scale = (ag.constant(2.0) * 3.0 + ag.exp(ag.constant(0.5))).sqrt()
    table = (c.T @ c).sum(axis=0) / 4.0  # (4,)
    mask = ag.constant(np.arange(4)) > 1  # bool
    counts = ag.constant(np.arange(4, dtype="int32")) * 3  # int32 arithmetic
    graph = graph_of(x * scale + ag.where(mask, table, 0.0) + ag.cast(counts, "float32"))
    after = check_pass(constant_folding, graph, rand(3, 4))
    assert set(after.op_counts()) == {"input", "constant", "mul", "add"}
    folded = [n for n in after.nodes if n.meta.get("folded")]
    assert {n.meta["folded"] for n in folded} == {"sqrt", "where", "cast"}
    for n in folded:
        assert n.data.dtype.name == n.dtype and n.data.shape == n.shape and not n.data.flags.writeable


def test_constant_folding_keeps_large_and_symbolic_full_and_failing_kernels():
    x = ag.input("x", ("B", 400, 400))
    big = ag.full((400, 400), 2.0) * 3.0  # 160 000 elements: computed at run time
    small = ag.full((4,), 2.0)
    symbolic = ag.full(("B", 400, 400), 1.0)
    graph = graph_of(x * big + symbolic, small * 2.0)
    after = check_pass(constant_folding, graph, rand(1, 400, 400), removes=2)
    counts = after.op_counts()
    assert counts["full"] == 2 and counts["mul"] == 2
    assert after.outputs[1].op == "constant" and after.outputs[1].data.tolist() == [4.0] * 4
    bad = ag.index_select(ag.constant(np.ones((3, 2), "float32")), ag.constant(np.array([5])), 0)
    graph = graph_of(bad)
    assert constant_folding(graph) is graph  # the executor reports the error with the node's line
    with pytest.raises(ag.ExecutionError, match="index 5 is out of range for axis 0 of size 3"):
        execute(graph)


def test_constant_folding_turns_the_gradient_seed_into_a_literal():
    x = ag.input("x", (5,))
    (gx,) = ag.grad((x * x).sum(), [x])
    graph = graph_of(gx)
    assert graph.op_counts().get("full") == 1
    after = check_pass(
        constant_folding, graph, rand(5), removes=2
    )  # full -> reshape -> broadcast_to: one constant
    assert "full" not in after.op_counts()
    np.testing.assert_array_equal(execute(after, np.arange(5, dtype="float32"))[0], 2 * np.arange(5))


# ----------------------------------------------------------------------------- algebraic simplification
SPECIALS = np.array([[0.0, -0.0, 1.5, -2.0], [np.inf, -np.inf, np.nan, 3e38]], "float32")


@pytest.mark.parametrize(
    "build",
    [
        lambda x: x * 1.0,
        lambda x: 1.0 * x,
        lambda x: x - 0.0,
        lambda x: x / 1.0,
        lambda x: x * ag.ones_like(x),
        lambda x: ag.neg(ag.neg(x)),
        lambda x: x.reshape(8).reshape(4, 2).reshape(2, 4),
        lambda x: x.T.T,
        lambda x: ag.apply("sum_to", x, shape=x.shape),
        lambda x: ag.apply("broadcast_to", x, shape=x.shape),
        lambda x: ag.apply("cast", x, dtype="float32"),
        lambda x: ag.apply("transpose", x, axes=(0, 1)),
        lambda x: ag.apply("reshape", x, shape=(2, 4)),
    ],
    ids=[
        "x*1",
        "1*x",
        "x-0",
        "x/1",
        "x*ones",
        "neg-neg",
        "reshape3",
        "TT",
        "sum_to",
        "broadcast_to",
        "cast",
        "transpose-id",
        "reshape-id",
    ],
)
def test_simplify_identities_vanish_bit_for_bit(build):
    x = ag.input("x", (2, 4))
    graph = graph_of(build(x) * 3.0)
    after = check_pass(simplify_pass, graph, SPECIALS)
    assert [n.op for n in after.nodes if n.op not in ("input", "constant")] == ["mul"]


def test_simplify_adding_zero_keeps_values():
    x = ag.input("x", (2, 4))
    graph = graph_of(x + 0.0, ag.zeros_like(x) + x, x + ag.zeros((2, 4)))
    after = check_pass(simplify_pass, graph, SPECIALS)
    assert all(o is x.node for o in after.outputs)  # then only the input remains (-0.0 + 0 == +0.0 == -0.0)


def test_simplify_turns_broadcasting_identities_into_views():
    x = ag.input("x", (4,))
    y = ag.input("y", (3, 4), "float64")
    graph = graph_of(x * ag.ones((3, 4)), ag.zeros((2, 1, 4)) + x, x * ag.ones((3, 4), "float64") + y)
    after = check_pass(simplify_pass, graph, SPECIALS[1], rand(3, 4, dtype="float64"), removes=2)
    assert [o.op for o in after.outputs] == ["broadcast_to", "broadcast_to", "add"]
    assert after.outputs[2].inputs[0].op == "mul"  # x * ones(float64) changes the dtype: kept


def test_simplify_keeps_what_is_not_exact():
    x = ag.input("x", (2, 4))
    i = ag.input("i", (2, 4), "int32")
    graph = graph_of(
        x * 0.0,  # inf * 0 is nan, not 0
        x - x,  # inf - inf is nan
        0.0 - x,  # +0 - +0 is +0, -(+0) is -0
        i * 1.0,  # int32 * float32 -> float32: a cast, not an identity
        ag.cast(ag.cast(x, "float16"), "float32"),  # rounding
        x * 2.0,
    )
    assert simplify_pass(graph) is graph


def test_simplify_multiplies_known_finite_values_by_zero():
    x = ag.input("x", (300, 400))
    twos = ag.full((300, 400), 2.0)  # too large to fold, but known finite
    graph = graph_of(x + twos * ag.zeros((300, 400)), x + ag.full((300, 400), np.inf) * 0.0)
    data = rand(300, 400)
    after = check_pass(simplify_pass, graph, data, removes=4)
    assert after.outputs[0] is x.node  # twos * 0 -> zeros, then x + zeros -> x
    assert np.isnan(execute(after, data)[1]).all()  # inf * 0 stays nan


def test_simplify_folds_negations_into_add_and_sub():
    x, y, z = ag.input("x", (3,)), ag.input("y", (3,)), ag.input("z", (3,))
    graph = graph_of(x + (-y), (-y) + x, x - (-y), (-x) * (-z))
    after = check_pass(simplify_pass, graph, SPECIALS[0, :3], SPECIALS[1, :3], rand(3))
    assert [o.op for o in after.outputs] == ["sub", "sub", "add", "mul"]
    assert "neg" not in after.op_counts()


def test_simplify_composes_transposes_reshapes_and_broadcasts():
    x = ag.input("x", (2, 3, 4))
    p1 = x.permute(1, 2, 0).permute(2, 0, 1).permute(0, 2, 1)  # == permute(0, 2, 1)
    r = x.reshape(6, 4).reshape(24).reshape(4, 6)
    b = ag.broadcast_to(ag.broadcast_to(x[0, 0], (3, 4)), (5, 3, 4))
    graph = graph_of(p1, r, b)
    after = check_pass(simplify_pass, graph, rand(2, 3, 4))
    (t,) = [n for n in after.nodes if n.op == "transpose"]
    assert t.attrs["axes"] == (0, 2, 1) and t.inputs[0] is x.node
    assert after.outputs[1].op == "reshape" and after.outputs[1].inputs[0] is x.node
    assert after.outputs[2].op == "broadcast_to" and after.outputs[2].inputs[0].op != "broadcast_to"


def test_simplify_keeps_the_reshape_that_copies_a_transposed_view():
    # attention's output (B, H, T, hs) -> (B, T, H, hs) -> (B, T, d): that reshape copies; a second
    # reshape of it (the weight gradient's (B*T, d)) stays a reshape of the copy, not a second copy
    x = ag.input("x", (2, 3, 4, 5))
    o = x.permute(0, 2, 1, 3).reshape(2, 4, 15)
    graph = graph_of(o * 1.0 * 2.0, o.reshape(8, 15))  # (the pass must remove a node: x * 1)
    after = check_pass(simplify_pass, graph, rand(2, 3, 4, 5))
    assert after.outputs[1].op == "reshape" and after.outputs[1].inputs[0].op == "reshape"
    assert after.outputs[1].inputs[0] is after.outputs[0].inputs[0]


def test_simplify_cleans_gradient_graphs():
    x = ag.input("x", ("B", 3))
    w = ag.parameter(rand(3, 2), name="w")
    loss = ag.tanh(x @ w).mean()
    (gw,) = ag.grad(loss, [w])
    unused = ag.parameter(rand(2), name="unused")
    (g_unused,) = ag.grad(loss, [unused])  # zeros
    graph = graph_of(gw + g_unused, gw * 1.0)
    after = check_pass(lambda g: simplify_pass(constant_folding(g)), graph, rand(5, 3))
    assert after.outputs[0] is after.outputs[1]  # gw + zeros and gw * 1 are both gw


# ----------------------------------------------------------------------------- the pipeline
def mlp_step(seed: int = 0, hidden: int = 16, optimizer: str = "sgd"):
    """A 2-layer MLP training step (cross-entropy, SGD or Adam updates)."""
    rng = np.random.default_rng(seed)
    x, y = ag.input("x", ("B", 12)), ag.input("y", ("B",), "int64")
    w1 = ag.parameter(rng.standard_normal((12, hidden)).astype("float32") * 0.3, name="w1")
    b1 = ag.parameter(np.zeros(hidden, "float32"), name="b1")
    w2 = ag.parameter(rng.standard_normal((hidden, 5)).astype("float32") * 0.3, name="w2")
    b2 = ag.parameter(np.zeros(5, "float32"), name="b2")
    loss = ag.cross_entropy(ag.relu(x @ w1 + b1) @ w2 + b2, y)
    params = [w1, b1, w2, b2]
    grads = ag.grad(loss, params)
    updates = {}
    if optimizer == "sgd":
        updates = {p: p - 0.1 * g for p, g in zip(params, grads, strict=True)}
    else:
        for p, g in zip(params, grads, strict=True):
            m = ag.state(np.zeros(p.shape, "float32"))
            v = ag.state(np.zeros(p.shape, "float32"))
            m_new = 0.9 * m + 0.1 * g
            v_new = 0.999 * v + 0.001 * g * g
            updates[m], updates[v] = m_new, v_new
            updates[p] = p - 0.01 * m_new / (ag.sqrt(v_new) + 1e-8)
    return loss, updates, params


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pipeline_keeps_training_bit_for_bit(optimizer):
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((n, 12)).astype("float32"), rng.integers(0, 5, n)) for n in (8, 8, 3)]
    results = {}
    for passes in ([], None):
        loss, updates, params = mlp_step(optimizer=optimizer)
        step = ag.compile(loss, updates=updates, passes=passes)
        verify(step.graph)
        losses = [step(xb, yb) for xb, yb in batches]
        results[passes is None] = (
            losses,
            [p.numpy().copy() for p in params],
            len(step.source_graph),
            len(step.graph),
        )
    (plain_losses, plain_params, n_source, n_plain), (opt_losses, opt_params, _, n_opt) = (
        results[False],
        results[True],
    )
    assert n_plain == n_source and n_opt < n_source
    for a, b in zip(plain_losses + plain_params, opt_losses + opt_params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_pass_can_be_chosen_or_switched_off():
    x = ag.input("x", (3,))
    y = ag.exp(x * 1.0) + ag.exp(x * 1.0) + ag.constant(2.0) * 3.0
    sizes = {}
    for passes in ([], ["constant_folding"], ["simplify"], ["cse"], None, [common_subexpression_elimination]):
        f = ag.compile(y, passes=passes)
        np.testing.assert_array_equal(f(SPECIALS[0, :3]), 2 * np.exp(SPECIALS[0, :3]) + np.float32(6.0))
        sizes[str(passes)] = len(f.graph)
    assert sizes["[]"] == 12
    assert sizes["['constant_folding']"] == 10  # 2.0 * 3.0 -> 6.0
    assert sizes["['simplify']"] == 8  # both x * 1.0 gone
    assert sizes["['cse']"] == 9  # the 1.0 literals, then x * 1.0, then exp merged
    assert sizes["None"] == 5  # x, exp, add, 6.0, add
    assert sizes[str([common_subexpression_elimination])] == 9


def test_pipeline_on_second_order_graphs():
    x = ag.input("x", (4, 3), "float64")
    w = ag.input("w", (3, 2), "float64")
    v = ag.input("v", (3, 2), "float64")
    loss = (ag.softmax(ag.tanh(x @ w), axis=1) * ag.sigmoid(x @ w)).sum()
    (hv,) = ag.hvp(loss, [w], [v])
    graph = graph_of(hv, loss)
    data = [rand(4, 3, dtype="float64"), rand(3, 2, dtype="float64"), rand(3, 2, dtype="float64")]
    after = graph
    for name in DEFAULT_PASSES:  # verify after each pass
        after = PASSES[name](after)
        verify(after)
    before_values, after_values = execute(graph, *data), execute(after, *data)
    for a, b in zip(before_values, after_values, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(after) < len(graph)


def test_pipeline_keeps_output_order_with_merged_and_leaf_outputs():
    x, unused = ag.input("x", (2, 3)), ag.input("unused", (1,))
    w = ag.parameter(rand(2, 3), name="w")
    a = ag.exp(x) + 0.0
    f = ag.compile([ag.exp(x), w * 1.0, a, x * 1.0, ag.constant(3.0) + 1.0], inputs=[unused, x])
    assert f.graph.outputs[0] is f.graph.outputs[2]
    data = rand(2, 3)
    out = f(np.zeros(1, "float32"), data)
    np.testing.assert_array_equal(out[0], np.exp(data))
    np.testing.assert_array_equal(out[1], w.numpy())
    np.testing.assert_array_equal(out[2], np.exp(data))
    np.testing.assert_array_equal(out[3], data)
    assert out[4] == 4.0
    out[3][...] = 0  # outputs that are leaves are copies
    out[1][...] = 0
    assert data.any() and w.numpy().any()


# ----------------------------------------------------------------------------- op traits
def test_traits_are_named_sets_of_ops():
    from asg.core.registry import BILINEAR, COMMUTATIVE, ELEMENTWISE, MOVEMENT, RANDOM, REDUCTION, VIEW

    assert {"add", "mul", "maximum", "minimum", "equal", "not_equal"} <= ops_with(COMMUTATIVE)
    assert not {"sub", "div", "pow", "less"} & ops_with(COMMUTATIVE)
    assert {"add", "exp", "relu", "where", "cast"} <= ops_with(ELEMENTWISE)
    assert "matmul" not in ops_with(ELEMENTWISE)
    assert {"matmul", "mul", "conv2d"} <= ops_with(BILINEAR)
    assert {"sum", "max", "min", "argmax"} <= ops_with(REDUCTION)
    assert {"random_uniform", "random_normal", "bernoulli"} <= ops_with(RANDOM)
    assert {"reshape", "transpose"} <= ops_with(VIEW) & ops_with(MOVEMENT)
    with pytest.raises(ValueError, match="unknown trait 'fast'"):
        ops_with("fast")
    with pytest.raises(ValueError, match="unknown traits"):
        ag.define_op("test_traits_bad", infer=lambda t: t, kernel=lambda t: t, traits=("fast",))
    assert "test_traits_bad" not in ag.OPS
