"""The memory planner (asg.core.schedule) as the numpy executor uses it.

Results must be identical with planning on and off; on top, every plan is checked against an
independent recomputation of value lifetimes: two values may share a buffer only when the first
is dead (itself and every view of it) before the second is written, or dies at the very step of
an elementwise op that overwrites it in place.
"""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

import asg.core as ag
from asg.core import schedule as memory
from asg.core.graph import LEAF_OPS, Graph
from asg.core.registry import ELEMENTWISE, OPS, VIEW, get_op
from asg.core.schedule import Buffer, MemoryPlan, intermediate_bytes, plan_memory
from asg.core.specialize import Specialization, bind_inputs, specialize

RNG = np.random.default_rng(0)


def rand(*shape: int, dtype: str = "float32") -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def assert_sound(graph: Graph, plan: MemoryPlan, keep: set[int]) -> None:
    """Recompute lifetimes independently and check that no two values of a buffer are alive together."""
    order = [n for n in graph.nodes if n.op not in LEAF_OPS]
    step = {n.id: i for i, n in enumerate(order)}
    owner: dict[int, int] = {}  # node -> the node whose storage it reads (itself, or the base of a view)
    for n in graph.nodes:
        owner[n.id] = owner[n.inputs[0].id] if n.op not in LEAF_OPS and get_op(n.op).has(VIEW) else n.id
    last = {n.id: step[n.id] for n in order}
    for n in order:
        for i in n.inputs:
            last[owner[i.id]] = max(last.get(owner[i.id], -1), step[n.id])
    for k in keep | {n.id for n in graph.outputs}:
        last[owner[k]] = len(order)
    assert not (set(plan.buffer_of) & (keep | {n.id for n in graph.outputs})), "an output got a pooled buffer"
    by_buffer: dict[int, list[int]] = {}
    for node_id, b in plan.buffer_of.items():
        by_buffer.setdefault(b, []).append(node_id)
    nodes = {n.id: n for n in graph.nodes}
    for b, users in by_buffer.items():
        users.sort(key=step.__getitem__)
        for first, second in itertools.pairwise(users):
            node = nodes[second]
            if last[first] < step[second]:
                continue
            in_place = last[first] == step[second] and get_op(node.op).has(ELEMENTWISE)
            assert in_place, f"{nodes[first]!r} is still alive when {node!r} overwrites buffer {b}"


def compile_both(outputs, **kwargs):
    return ag.compile(outputs, memory_planning=True, **kwargs), ag.compile(
        outputs, memory_planning=False, **kwargs
    )


def check_same(outputs, *arrays, passes=None, inputs=None):
    """Run with planning on and off; assert identical results and a sound plan; return the planned Function."""
    planned, plain = compile_both(outputs, passes=passes, inputs=inputs)
    for _ in range(2):  # the second call reuses the buffers of the first
        a, b = planned(*arrays), plain(*arrays)
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True):
            np.testing.assert_array_equal(x, y)
    plan = planned.plan_for(*arrays)
    assert_sound(plan.graph, plan.memory, {n.id for n in plan.graph.outputs})
    assert plain.plan_for(*arrays).memory.buffers == []
    return planned


def test_docstring_examples():
    result = doctest.testmod(memory)
    assert result.attempted > 0 and result.failed == 0


def test_the_soundness_check_catches_a_bad_plan():
    x = ag.input("x", (4,))
    a = ag.exp(x)
    b = ag.tanh(x)  # a is still alive here: it is read below
    graph = Graph([(a + b).node])
    order = {n.op: n for n in graph.nodes}
    bad = MemoryPlan({order["exp"].id: 0, order["tanh"].id: 0}, [Buffer((4,), "float32", 16, 0, 2)])
    with pytest.raises(AssertionError, match="is still alive when"):
        assert_sound(graph, bad, set())
    assert_sound(graph, plan_memory(graph, specialize(graph, {}), []), set())


# ----------------------------------------------------------------------------- training steps
def mlp_step(hidden: int = 32, optimizer: str = "sgd", seed: int = 0):
    rng = np.random.default_rng(seed)
    x, y = ag.input("x", ("B", 20)), ag.input("y", ("B",), "int64")
    params = [
        ag.parameter(rng.standard_normal((20, hidden)).astype("float32") * 0.2, name="w1"),
        ag.parameter(np.zeros(hidden, "float32"), name="b1"),
        ag.parameter(rng.standard_normal((hidden, 7)).astype("float32") * 0.2, name="w2"),
        ag.parameter(np.zeros(7, "float32"), name="b2"),
    ]
    w1, b1, w2, b2 = params
    loss = ag.cross_entropy(ag.tanh(x @ w1 + b1) @ w2 + b2, y)
    grads = ag.grad(loss, params)
    updates = {}
    for p, g in zip(params, grads, strict=True):
        if optimizer == "sgd":
            updates[p] = p - 0.1 * g
        else:  # Adam: the new moments are both update values and inputs of the parameter update
            m, v = ag.state(np.zeros(p.shape, "float32")), ag.state(np.zeros(p.shape, "float32"))
            m_new, v_new = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * (g * g)
            updates.update({m: m_new, v: v_new, p: p - 0.01 * m_new / (ag.sqrt(v_new) + 1e-8)})
    return loss, updates, params


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("passes", [None, []], ids=["optimized", "unoptimized"])
def test_training_steps_match_with_and_without_planning(optimizer, passes):
    rng = np.random.default_rng(1)
    batches = [
        (rng.standard_normal((n, 20)).astype("float32"), rng.integers(0, 7, n)) for n in (16, 16, 5, 16)
    ]
    runs = []
    for planning in (True, False):
        loss, updates, params = mlp_step(optimizer=optimizer)
        step = ag.compile(loss, updates=updates, passes=passes, memory_planning=planning)
        losses = [step(xb, yb) for xb, yb in batches]
        runs.append((losses, [p.numpy().copy() for p in params], step))
    (planned_losses, planned_params, step), (plain_losses, plain_params, _) = runs
    for a, b in zip(planned_losses + planned_params, plain_losses + plain_params, strict=True):
        np.testing.assert_array_equal(a, b)
    plan = step.plan_for(*batches[0])
    assert plan.memory.planned_values > 0 and len(plan.memory.buffers) < plan.memory.planned_values
    assert_sound(plan.graph, plan.memory, {n.id for n in plan.graph.outputs})


def test_update_values_read_by_other_updates_are_never_overwritten():
    g = ag.input("g", (6,))
    m = ag.state(np.zeros(6, "float32"), name="m")
    w = ag.parameter(np.ones(6, "float32"), name="w")
    m_new = m * 0.5 + g  # an update value, also read by w's update: in-place over it would corrupt m
    step = ag.compile([], updates={m: m_new, w: w - m_new * 0.25}, inputs=[g], passes=[])
    step(np.ones(6, "float32"))
    np.testing.assert_array_equal(m.numpy(), np.ones(6))
    np.testing.assert_array_equal(w.numpy(), np.full(6, 0.75))
    graph = step.graph
    plan = plan_memory(graph, specialize(graph, {}), keep_alive=[])  # outputs are kept alive regardless
    assert m_new.node.id not in plan.buffer_of


# ----------------------------------------------------------------------------- views and in-place ops
def test_views_feeding_in_place_elementwise_ops():
    x = ag.input("x", (6, 6))
    a = x * 2.0 + 1.0  # a pooled buffer
    t = a.T * 3.0 - 1.0  # reads a transposed view of the buffer it may overwrite
    row = ag.broadcast_to(t[0:1, :], (6, 6)) + t  # broadcast view of the same storage
    r = row.reshape(4, 9).T.reshape(6, 6) * a.reshape(36).reshape(6, 6)
    out = ag.exp(r * 0.01).sum(axis=0)
    data = rand(6, 6)
    f = check_same(out, data, passes=[])
    a_ = data * 2 + 1
    t_ = a_.T * 3 - 1
    row_ = t_[0:1] + t_
    want = np.exp(row_.reshape(4, 9).T.reshape(6, 6) * a_ * np.float32(0.01)).sum(axis=0)
    np.testing.assert_allclose(f(data), want, rtol=1e-5)
    assert f.plan_for(data).memory.in_place > 0


def test_outputs_that_are_views_are_not_clobbered_by_later_calls():
    x = ag.input("x", (3, 4))
    a = ag.exp(x) * 2.0
    later = ag.tanh(a + 1.0) * 3.0  # same shape: would love a's buffer
    outputs = [a.T, a.reshape(12), ag.broadcast_to(a[1], (2, 4)), later, (later * 2.0).T]
    f = check_same(outputs, rand(3, 4), passes=[])
    first_input = rand(3, 4)
    first = f(first_input)
    copies = [o.copy() for o in first]
    f(rand(3, 4))
    for o, c in zip(first, copies, strict=True):
        np.testing.assert_array_equal(o, c)
    np.testing.assert_allclose(first[0], (np.exp(first_input) * 2).T, rtol=1e-6)


def elementwise_out_ops() -> list[str]:
    return sorted(name for name, op in OPS.items() if op.has(ELEMENTWISE) and op.kernels["numpy"].out_arg)


def build_elementwise(name: str, *xs: ag.Tensor) -> ag.Tensor | None:
    """``name`` applied to float operands (bool ones for logical ops), or None if it needs other inputs."""
    special = {"clamp": {"min": -0.5, "max": 0.7}, "cast": {"dtype": "float64"}}
    for arity in (1, 2, 3):
        args = list(xs[:arity])
        for convert in (lambda t: t, lambda t: t > 0.0):
            try:
                return ag.apply(name, *map(convert, args), **special.get(name, {}))
            except (ValueError, TypeError):
                continue
    return None


@pytest.mark.parametrize("name", elementwise_out_ops())
def test_every_out_arg_elementwise_kernel_is_safe_in_place(name):
    """The planner lets these ops write over an input that dies there, also when it reads it as a view."""
    x, y = ag.input("x", (5, 5)), ag.input("y", (5, 5))
    dying = [x * 1.0 + 0.5, (y * 1.0 + 0.25).T]  # fresh buffers whose last reader is the op
    result = build_elementwise(name, *dying, x * 1.0)
    assert result is not None, f"cannot build a test graph for {name!r}"
    data = [np.linspace(-2, 2, 25, dtype="float32").reshape(5, 5), rand(5, 5)]
    f = check_same([ag.cast(result, "float64") * 2.0], *data, passes=[], inputs=[x, y])
    assert f.plan_for(*data).memory.in_place > 0 or result.dtype != "float32"


# ----------------------------------------------------------------------------- sizes
def test_a_long_chain_reuses_few_buffers_and_runs_in_place():
    x = ag.input("x", (8, 16))
    h = x
    for i in range(40):
        h = ag.tanh(h * 1.01 + 0.1) if i % 10 else ag.softmax(h, axis=1) * 4.0
    f = check_same(h.sum(), rand(8, 16), passes=[])
    plan = f.plan_for(rand(8, 16)).memory
    assert plan.planned_values >= 100
    assert len(plan.buffers) <= 3 < plan.planned_values
    assert plan.in_place >= 90
    assert plan.bytes() * 30 < plan.planned_bytes(specialize(f.graph, {}))


def test_mlp_step_peak_bytes_below_the_naive_sum():
    """784-256-10, batch 128, SGD: planned buffers against one buffer per intermediate value."""
    rng = np.random.default_rng(0)
    x, y = ag.input("x", ("B", 784)), ag.input("y", ("B",), "int64")
    w1 = ag.parameter(rng.standard_normal((784, 256)).astype("float32") * 0.05, name="w1")
    b1 = ag.parameter(np.zeros(256, "float32"), name="b1")
    w2 = ag.parameter(rng.standard_normal((256, 10)).astype("float32") * 0.05, name="w2")
    b2 = ag.parameter(np.zeros(10, "float32"), name="b2")
    params = [w1, b1, w2, b2]
    loss = ag.cross_entropy(ag.relu(x @ w1 + b1) @ w2 + b2, y)
    step = ag.compile(
        loss, updates={p: p - 0.1 * g for p, g in zip(params, ag.grad(loss, params), strict=True)}
    )
    feeds = (rng.standard_normal((128, 784)).astype("float32"), rng.integers(0, 10, 128))
    plan = step.plan_for(*feeds)
    spec: Specialization = specialize(step.graph, bind_inputs(step.graph, feeds))
    naive = intermediate_bytes(step.graph, spec)
    ratio = plan.memory.bytes() / naive
    print(f"MLP step: planned buffers {plan.memory.bytes()} B, naive {naive} B, ratio {ratio:.2f}")
    assert 0 < plan.memory.bytes() < naive and ratio < 0.5
    assert_sound(plan.graph, plan.memory, {n.id for n in plan.graph.outputs})
