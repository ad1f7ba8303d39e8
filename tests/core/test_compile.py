"""compile: plans cached by input shapes, feeds by name, in-place updates, no aliasing, and training."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag


def test_plans_are_cached_by_input_shapes():
    x = ag.input("x", ("B", 3), "float64")
    w = ag.parameter(np.arange(6.0).reshape(3, 2), name="w", dtype="float64")
    f = ag.compile((x @ w).relu().sum(axis=1))
    full, last = np.ones((8, 3)), np.ones((3, 3))
    np.testing.assert_allclose(f(full), np.full(8, 15.0))
    assert f.num_plans == 1
    np.testing.assert_allclose(f(full * 2), np.full(8, 30.0))
    assert f.num_plans == 1  # same shapes: the cached plan
    np.testing.assert_allclose(f(last), np.full(3, 15.0))  # a smaller last batch just works
    assert f.num_plans == 2
    assert f.plan_for(full) is f.plan_for(np.zeros((8, 3)))
    np.testing.assert_allclose(f(full), np.full(8, 15.0))
    assert f.num_plans == 2
    f(np.ones((8, 3), "float32"))  # converted to float64 before lookup: no new plan
    assert f.num_plans == 2


def test_single_output_and_list_outputs():
    x = ag.input("x", (2,))
    assert isinstance(ag.compile(x * 2.0)(np.ones(2)), np.ndarray)
    out = ag.compile([x * 2.0])(np.ones(2))
    assert isinstance(out, list) and len(out) == 1


def test_inputs_by_position_and_keyword():
    a, b = ag.input("a", (2,), "float64"), ag.input("b", (2,), "float64")
    f = ag.compile(a - b)
    want = np.array([1.0, -3.0])
    np.testing.assert_array_equal(f(np.array([2.0, 0.0]), np.array([1.0, 3.0])), want)
    np.testing.assert_array_equal(f(b=np.array([1.0, 3.0]), a=np.array([2.0, 0.0])), want)
    np.testing.assert_array_equal(f(np.array([2.0, 0.0]), b=np.array([1.0, 3.0])), want)
    g = ag.compile(a - b, inputs=[b, a])  # explicit call order
    np.testing.assert_array_equal(g(np.array([1.0, 3.0]), np.array([2.0, 0.0])), want)
    np.testing.assert_array_equal(f([2, 0], [1, 3]), want)  # lists and ints are converted


def test_sgd_updates_are_applied_in_place_and_match_numpy():
    rng = np.random.default_rng(80)
    w0, b0 = rng.standard_normal((3, 2)), rng.standard_normal(2)
    w = ag.parameter(w0, name="w", dtype="float64")
    b = ag.parameter(b0, name="b", dtype="float64")
    storage = w.node.data.value
    x, y = ag.input("x", ("B", 3), "float64"), ag.input("y", ("B", 2), "float64")
    loss = (((x @ w + b) - y) ** 2).mean()
    gw, gb = ag.grad(loss, [w, b])
    lr = 0.1
    step = ag.compile(loss, updates={w: w - lr * gw, b: b - lr * gb})
    wn, bn = w0.copy(), b0.copy()
    for i in range(5):
        xb, yb = rng.standard_normal((4 + i, 3)), rng.standard_normal((4 + i, 2))
        err = xb @ wn + bn - yb
        want_loss = np.mean(err**2)
        gwn = 2 * xb.T @ err / err.size
        gbn = 2 * err.sum(axis=0) / err.size
        got_loss = step(xb, yb)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-12)
        wn -= lr * gwn
        bn -= lr * gbn
        np.testing.assert_allclose(w.numpy(), wn, rtol=1e-12)
        np.testing.assert_allclose(b.numpy(), bn, rtol=1e-12)
    assert w.node.data.value is storage  # updated in place, not rebound


def test_updates_read_old_values_and_state_counters():
    a = ag.parameter(np.array([1.0, 2.0]), name="a", dtype="float64")
    b = ag.parameter(np.array([10.0, 20.0]), name="b", dtype="float64")
    count = ag.state(np.array(0, "int64"), name="count")
    # Swap a and b: each update must see the values from before the step.
    f = ag.compile(a + b, updates={a: b * 1.0, b: a * 1.0, count: count + 1})
    np.testing.assert_array_equal(f(), [11.0, 22.0])
    np.testing.assert_array_equal(a.numpy(), [10.0, 20.0])
    np.testing.assert_array_equal(b.numpy(), [1.0, 2.0])
    f()
    np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])
    assert int(count.numpy()) == 2
    # An update that is the parameter itself is a no-op.
    ag.compile(a.sum(), updates={a: a})()
    np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])


def test_assign_changes_what_the_next_call_reads():
    w = ag.parameter(np.ones(3, "float32"), name="w")
    f = ag.compile(w * 2.0)
    np.testing.assert_array_equal(f(), [2, 2, 2])
    w.assign(np.array([1, 2, 3]))
    np.testing.assert_array_equal(f(), [2, 4, 6])


@pytest.mark.parametrize("memory_planning", [True, False])
def test_outputs_are_not_aliased_to_internal_buffers_across_calls(memory_planning):
    x = ag.input("x", (4,), "float64")
    w = ag.parameter(np.ones(4), name="w", dtype="float64")
    c = ag.constant(np.arange(4.0))
    h = ag.exp(x) * 2.0
    outs = [h, h + 1.0, x, w, c, x.reshape(2, 2), h[1:], (h * 3.0).sum(), ag.stop_gradient(h)]
    f = ag.compile(outs, updates={w: w + 1.0}, memory_planning=memory_planning)
    first_in = np.zeros(4)
    first = f(first_in)
    snapshot = [o.copy() for o in first]
    second = f(np.ones(4))
    for held, snap in zip(first, snapshot, strict=True):
        np.testing.assert_array_equal(held, snap)  # the held results did not change
    for a, b in zip(first, second, strict=True):
        assert not np.shares_memory(a, b)
    assert not np.shares_memory(first[3], w.numpy())
    assert not np.shares_memory(first[2], first_in)
    first[4][...] = -1  # writing into a result must not change the graph's constant
    np.testing.assert_array_equal(f(np.ones(4))[4], np.arange(4.0))


def test_passes_and_memory_planning_do_not_change_results():
    x = ag.input("x", ("B", 5), "float64")
    w = ag.parameter(np.random.default_rng(81).standard_normal((5, 3)), name="w", dtype="float64")
    h = ag.tanh(x @ w)
    loss = ag.logsumexp(h * h + h, axis=1).mean() + (h * 0.0).sum() + (w * 1.0).sum()
    (gw,) = ag.grad(loss, [w])
    data = np.random.default_rng(82).standard_normal((6, 5))
    reference = ag.compile([loss, gw], passes=[], memory_planning=False)(data)
    for kwargs in ({}, {"passes": []}, {"memory_planning": False}):
        got = ag.compile([loss, gw], **kwargs)(data)
        for g, r in zip(got, reference, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-15)


def test_mlp_trained_with_sgd_separates_a_toy_problem():
    rng = np.random.default_rng(83)
    n = 400
    points = rng.uniform(-1, 1, size=(n, 2)).astype("float32")
    labels = (points[:, 0] * points[:, 1] > 0).astype("int64")  # XOR-like quadrants: not linearly separable
    w1 = ag.parameter(rng.standard_normal((2, 32)) * 0.8, name="w1", dtype="float32")
    b1 = ag.parameter(np.zeros(32), name="b1", dtype="float32")
    w2 = ag.parameter(rng.standard_normal((32, 2)) * 0.3, name="w2", dtype="float32")
    b2 = ag.parameter(np.zeros(2), name="b2", dtype="float32")
    params = [w1, b1, w2, b2]
    x, y = ag.input("x", ("B", 2)), ag.input("y", ("B",), "int64")
    logits = (x @ w1 + b1).relu() @ w2 + b2
    loss = ag.cross_entropy(logits, y)
    grads = ag.grad(loss, params)
    step = ag.compile(loss, updates={p: p - 0.5 * g for p, g in zip(params, grads, strict=True)})
    predict = ag.compile(logits.argmax(axis=1), inputs=[x])
    batch = 64
    losses = []
    for _ in range(60):
        order = rng.permutation(n)
        for start in range(0, n, batch):  # 400 = 6 * 64 + 16: a smaller last batch each epoch
            idx = order[start : start + batch]
            losses.append(float(step(points[idx], labels[idx])))
    assert step.num_plans == 2
    accuracy = float(np.mean(predict(points) == labels))
    assert accuracy > 0.95, accuracy
    assert np.mean(losses[-7:]) < 0.5 * np.mean(losses[:7])


def sgd_step_parts(seed: int = 3):
    rng = np.random.default_rng(seed)
    w = ag.parameter(rng.standard_normal((3, 2)), name="w", dtype="float64")
    x = ag.input("x", ("B", 3), "float64")
    loss = ((x @ w) ** 2).mean()
    (gw,) = ag.grad(loss, [w])
    return w, x, loss, w - 0.1 * gw


def test_updates_accept_a_list_of_pairs_like_a_dict():
    batch = np.random.default_rng(4).standard_normal((5, 3))
    results = []
    for as_list in (False, True):
        w, _, loss, new_w = sgd_step_parts()
        step = ag.compile(loss, updates=[(w, new_w)] if as_list else {w: new_w})
        results.append(([float(step(batch)) for _ in range(3)], w.numpy().copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_updates_of_the_wrong_form_say_what_to_pass():
    w, _, loss, new_w = sgd_step_parts()
    with pytest.raises(
        TypeError, match=r"updates= takes \{parameter: new_value\} or a list of \(parameter, "
    ):
        ag.compile(loss, updates=[w, new_w])
    with pytest.raises(ValueError, match="compile: updates= lists parameter w twice"):
        ag.compile(loss, updates=[(w, new_w), (w, new_w)])


def test_from_graph_runs_an_optimised_graph_without_passes_and_continues_training():
    batch = np.random.default_rng(5).standard_normal((5, 3))
    w, _, loss, new_w = sgd_step_parts()
    step = ag.compile(loss, updates={w: new_w})
    assert step.updates[0][0] is w.node and step.updates[0][1] is step.graph.outputs[1]
    assert step.inputs == step.graph.inputs and step.backend_name == "numpy" and step.num_outputs == 1
    w0 = w.numpy().copy()
    want = [float(step(batch)) for _ in range(4)]
    w.assign(w0)
    again = ag.Function.from_graph(step.graph, step.num_outputs, step.updates, single=step.single)
    assert again.graph is step.graph and again.options == step.options
    got = [float(again(batch)) for _ in range(2)] + [float(step(batch)) for _ in range(2)]
    assert got == want  # the same parameter storage, updated by either function
    with pytest.raises(
        ValueError, match=r"graph\.outputs must be the num_outputs results followed by the update"
    ):
        ag.Function.from_graph(step.graph, 2, step.updates)
