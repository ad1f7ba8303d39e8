"""asg.core.inspection: what NonFiniteError and profile rows carry for tools (the viewer) to find the node,
and Function.check_numerics(update=...)."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag


def _step(lr: float = 0.5):
    w = ag.parameter(np.array([1.0, 2.0, 3.0], "float32"), name="w")
    x = ag.input("x", (3,))
    with ag.scope("blk"):
        h = ag.sqrt(x * w).named("blk.root")
    loss = h.sum()
    (gw,) = ag.grad(loss, [w])
    return w, h, ag.compile(loss, updates={w: w - lr * gw})


def test_nonfinite_error_names_the_node_in_its_attributes():
    *_, step = _step()
    with pytest.raises(ag.NonFiniteError) as info:
        step.check_numerics(np.array([1.0, -1.0, 2.0], "float32"))
    err = info.value
    node = next(n for n in step.graph.nodes if n.id == err.node_id)
    assert (err.node_name, err.op, err.scope) == ("blk_root", "sqrt", "blk")
    assert step.graph.names()[node.id] == err.node_name and node.op == "sqrt"
    assert f"made by {err.node_name}:f32[3] = sqrt" in str(err)


def test_nonfinite_feed_and_parameter_are_named_too():
    w, _, step = _step()
    with pytest.raises(ag.NonFiniteError) as info:
        step.check_numerics(np.array([1.0, np.nan, 2.0], "float32"))
    assert (info.value.node_name, info.value.op, info.value.scope) == ("x", "input", None)
    w.assign(np.array([1.0, np.inf, 3.0], "float32"))
    with pytest.raises(ag.NonFiniteError) as info:
        step.check_numerics(np.ones(3, "float32"))
    assert (info.value.node_name, info.value.op) == ("w", "parameter")
    assert step.graph.names()[info.value.node_id] == "w"


def test_check_numerics_applies_the_updates_unless_update_false():
    w, _, step = _step(lr=0.5)
    x = np.array([1.0, 4.0, 2.0], "float32")
    start = w.numpy().copy()
    # d/dw sum(sqrt(x * w)) = x / (2 sqrt(x * w)), in float64
    grad = x.astype("float64") / (2.0 * np.sqrt(x.astype("float64") * start))
    loss = step.check_numerics(x, update=False)
    np.testing.assert_allclose(loss, np.sqrt(x * start).sum(), rtol=1e-6)
    np.testing.assert_array_equal(w.numpy(), start)
    step.check_numerics(x)  # update defaults to True, like a plain call
    np.testing.assert_allclose(w.numpy(), start - 0.5 * grad, rtol=1e-6)


def test_profile_rows_carry_the_node_id():
    _, h, step = _step()
    profile = step.profile(np.ones(3, "float32"))
    by_id = {n.id: n for n in step.graph.nodes}
    names = step.graph.names()
    assert profile.nodes and len({t.node_id for t in profile.nodes}) == len(profile.nodes)
    for t in profile.nodes:
        node = by_id[t.node_id]
        assert (t.op, t.name, t.scope) == (node.op, names[node.id], node.meta.get("scope"))
    assert h.node.id in {t.node_id for t in profile.nodes}
