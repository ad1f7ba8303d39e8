"""Graph-to-graph autograd: higher-order derivatives, Hessian-vector products, gradients of reloaded
graphs, intermediates, unused inputs and the errors that refuse to return silent zeros."""

from __future__ import annotations

import math

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import rand, scratch_ops

POINTS = np.linspace(-2.0, 2.0, 9)


def _derivatives(fn, order: int):
    """Compiled function returning fn(x) and its first ``order`` derivatives, elementwise."""
    x = ag.input("x", (POINTS.size,), "float64")
    outs = [fn(x)]
    for _ in range(order):
        (d,) = ag.grad(outs[-1].sum(), [x])
        outs.append(d)
    return ag.compile(outs, inputs=[x])


def test_derivatives_of_x_tanh_x_up_to_third_order():
    x = POINTS
    t = np.tanh(x)
    s2 = 1 - t**2  # sech^2
    want = [x * t, t + x * s2, 2 * s2 - 2 * x * t * s2, -6 * t * s2 + 2 * x * s2 * (3 * t**2 - 1)]
    got = _derivatives(lambda v: v * ag.tanh(v), 3)(x)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=f"derivative {k}")


def test_derivatives_of_exp_x_times_x_cubed_up_to_third_order():
    x = POINTS
    e = np.exp(x)
    want = [
        e * x**3,
        e * (x**3 + 3 * x**2),
        e * (x**3 + 6 * x**2 + 6 * x),
        e * (x**3 + 9 * x**2 + 18 * x + 6),
    ]
    got = _derivatives(lambda v: ag.exp(v) * v**3, 3)(x)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=f"derivative {k}")


@pytest.mark.parametrize(
    ("fn", "third"),
    [
        (lambda v: ag.sigmoid(v), lambda x: (s := 1 / (1 + np.exp(-x))) * (1 - s) * (1 - 6 * s + 6 * s**2)),
        (lambda v: ag.log(v * v + 1.0), lambda x: (4 * x**3 - 12 * x) / (x**2 + 1) ** 3),
        (lambda v: ag.sqrt(v * v + 1.0), lambda x: -3 * x / (x**2 + 1) ** 2.5),
        (lambda v: 1.0 / (v * v + 1.0), lambda x: 24 * x * (1 - x**2) / (x**2 + 1) ** 4),
        (lambda v: ag.erf(v), lambda x: 2 / math.sqrt(math.pi) * np.exp(-(x**2)) * (4 * x**2 - 2)),
    ],
    ids=["sigmoid", "log1p_x2", "sqrt1p_x2", "reciprocal", "erf"],
)
def test_third_derivative_closed_forms(fn, third):
    got = _derivatives(fn, 3)(POINTS)[3]
    np.testing.assert_allclose(got, third(POINTS), rtol=1e-9, atol=1e-10)


def _mlp():
    rng = np.random.default_rng(70)
    w1 = ag.parameter(rng.standard_normal((3, 4)) * 0.5, name="w1", dtype="float64")
    b1 = ag.parameter(rng.standard_normal(4) * 0.1, name="b1", dtype="float64")
    w2 = ag.parameter(rng.standard_normal((4, 2)) * 0.5, name="w2", dtype="float64")
    x = ag.input("x", ("B", 3), "float64")
    y = ag.input("y", ("B",), "int64")
    loss = ag.cross_entropy(ag.tanh(x @ w1 + b1) @ w2, y)
    return x, y, [w1, b1, w2], loss


def test_hessian_vector_product_of_an_mlp_matches_finite_differences_of_the_gradient():
    x, y, params, loss = _mlp()
    rng = np.random.default_rng(71)
    vs_np = [rng.standard_normal(p.shape) for p in params]
    vs = [ag.constant(v) for v in vs_np]
    hv = ag.compile(ag.hvp(loss, params, vs), inputs=[x, y])
    grads = ag.compile(ag.grad(loss, params), inputs=[x, y])
    xb, yb = rng.standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    got = hv(xb, yb)
    originals = [p.numpy().copy() for p in params]
    eps = 1e-5

    def grads_at(sign):
        for p, v, o in zip(params, vs_np, originals, strict=True):
            p.assign(o + sign * eps * v)
        return grads(xb, yb)

    up, down = grads_at(+1), grads_at(-1)
    for p, o in zip(params, originals, strict=True):
        p.assign(o)
    for g, u, d in zip(got, up, down, strict=True):
        np.testing.assert_allclose(g, (u - d) / (2 * eps), rtol=1e-6, atol=1e-8)
    # The Hessian is symmetric: u.(H v) == v.(H u).
    u_np = [rng.standard_normal(p.shape) for p in params]
    hu = ag.compile(ag.hvp(loss, params, [ag.constant(u) for u in u_np]), inputs=[x, y])(xb, yb)
    lhs = sum(float(np.sum(a * b)) for a, b in zip(u_np, got, strict=True))
    rhs = sum(float(np.sum(a * b)) for a, b in zip(vs_np, hu, strict=True))
    assert lhs == pytest.approx(rhs, rel=1e-10)


def test_full_hessian_of_a_quadratic_form():
    a_np = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, -1.0], [0.0, -1.0, 4.0]])
    x = ag.input("x", (3,), "float64")
    loss = 0.5 * (x * (ag.constant(a_np) @ x)).sum() + (x * x * x).sum()
    point = np.array([0.5, -1.0, 2.0])
    columns = []
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1.0
        columns.append(ag.compile(ag.hvp(loss, [x], [ag.constant(e)]))(point)[0])
    np.testing.assert_allclose(np.stack(columns, axis=1), a_np + np.diag(6 * point), rtol=1e-12)


def test_grad_of_a_grad_graph_that_was_compiled_printed_and_reloaded_from_json():
    x = ag.input("x", (4,), "float64")
    w = ag.parameter(np.array([0.5, -1.0, 2.0, 0.25]), name="w", dtype="float64")
    (dx,) = ag.grad((ag.tanh(x * w) * x).sum(), [x])
    data = np.array([0.3, -0.7, 1.1, 2.0])
    first = ag.compile(dx, inputs=[x])(data)
    text = str(ag.Graph([dx.node], [x.node]))
    assert "tanh" in text and "w:f64[4]" in text

    loaded = ag.Graph.from_json(ag.Graph([dx.node], [x.node]).to_json())
    assert (
        ag.Graph([n for n in loaded.outputs], loaded.inputs).to_json()
        == ag.Graph([dx.node], [x.node]).to_json()
    )
    lx, ldx = ag.Tensor(loaded.inputs[0]), ag.Tensor(loaded.outputs[0])
    np.testing.assert_allclose(ag.compile(ldx, inputs=[lx])(data), first, rtol=1e-15)
    # Second derivative of the reloaded graph against the closed form:
    # d/dx [tanh(wx) + w x sech^2(wx)] = 2 w sech^2(wx) - 2 w^2 x tanh(wx) sech^2(wx).
    (d2,) = ag.grad(ldx.sum(), [lx])
    wv = w.numpy()
    t = np.tanh(wv * data)
    s2 = 1 - t**2
    np.testing.assert_allclose(
        ag.compile(d2, inputs=[lx])(data), 2 * wv * s2 - 2 * wv**2 * data * t * s2, rtol=1e-12
    )
    assert str(loaded) == text


def test_check_grads_second_order_through_every_family():
    def fn(x, w):
        h = ag.softmax(x @ w, axis=-1)
        return ag.logsumexp(ag.concat([h, ag.pad(x[:, ::2], [(0, 0), (1, 0)])], axis=1), axis=1) * ag.var(x)

    ag.check_grads(fn, [rand(2, 3, seed=72), rand(3, 2, seed=73)], order=2)


def test_check_grads_detects_a_wrong_rule():
    with scratch_ops():
        ag.define_op(
            "test_autograd_wrong_square",
            infer=lambda x: x,
            kernel=lambda x: x * x,
            grad=lambda g, out, x: (g * x,),
        )  # should be 2 * g * x
        with pytest.raises(
            AssertionError, match="first-order gradient of input 0 differs from finite differences"
        ):
            ag.check_grads(lambda v: ag.apply("test_autograd_wrong_square", v), [np.array([1.0, 2.0])])


def test_grad_with_respect_to_intermediates():
    x = ag.input("x", (3,), "float64")
    h = x * 2.0
    u = ag.exp(h)
    loss = (u * h).sum()
    gh, gu, gx = ag.grad(loss, [h, u, x])
    data = np.array([0.1, -0.2, 0.3])
    got_h, got_u, got_x = ag.compile([gh, gu, gx])(data)
    hv = 2 * data
    np.testing.assert_allclose(got_h, np.exp(hv) * hv + np.exp(hv))
    np.testing.assert_allclose(got_u, hv)
    np.testing.assert_allclose(got_x, 2 * (np.exp(hv) * hv + np.exp(hv)))


def test_unused_inputs_get_zero_gradients_of_their_shape_and_dtype():
    x, z = ag.input("x", (2, 3), "float64"), ag.input("z", ("B", 4), "float32")
    w = ag.parameter(np.ones(5, "float32"), name="w")
    gx, gz, gw = ag.grad((x * x).sum(), [x, z, w])
    assert gz.shape == ("B", 4) and gz.dtype == "float32" and gw.shape == (5,)
    got_x, got_z, got_w = ag.compile([gx, gz, gw], inputs=[x, z])(
        np.ones((2, 3)), np.ones((3, 4), np.float32)
    )
    np.testing.assert_array_equal(got_x, 2 * np.ones((2, 3)))
    np.testing.assert_array_equal(got_z, np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(got_w, np.zeros(5, np.float32))
    (single,) = ag.grad((x * 3.0).sum(), x)  # wrt may be one tensor
    np.testing.assert_array_equal(ag.compile(single, inputs=[x])(np.zeros((2, 3))), 3 * np.ones((2, 3)))


def test_gradients_accumulate_over_fan_out_and_broadcasting():
    x = ag.input("x", (3, 1), "float64")
    b = ag.input("b", (4,), "float64")
    y = (x + b) * (x - b) + x * x * x + b
    gx, gb = ag.grad(y.sum(), [x, b])
    xd, bd = rand(3, 1, seed=74), rand(4, seed=75)
    got_x, got_b = ag.compile([gx, gb])(xd, bd)
    np.testing.assert_allclose(got_x, (2 * xd + 3 * xd**2) * 4)
    np.testing.assert_allclose(got_b, (-2 * bd + 1) * 3)


def test_mixed_precision_gradients_come_back_in_the_input_dtype():
    x = ag.input("x", (3,), "float16")
    w = ag.parameter(np.array([1.0, 2.0, 3.0]), name="w", dtype="float32")
    (gx, gw) = ag.grad((x * w).sum(), [x, w])  # x is promoted to float32
    assert gx.dtype == "float16" and gw.dtype == "float32"
    got_x, got_w = ag.compile([gx, gw])(np.array([1.0, 0.5, -1.0], np.float16))
    assert got_x.dtype == np.float16 and got_w.dtype == np.float32
    np.testing.assert_array_equal(got_x, [1, 2, 3])
    np.testing.assert_array_equal(got_w, [1, 0.5, -1])


def test_grad_output_seeds_a_non_scalar_output():
    x = ag.input("x", (2, 3), "float64")
    cot = rand(2, 3, seed=76)
    (gx,) = ag.grad(x * x, [x], grad_output=ag.constant(cot))
    data = rand(2, 3, seed=77)
    np.testing.assert_allclose(ag.compile(gx, inputs=[x])(data), 2 * data * cot)


def test_grad_refuses_ambiguous_or_impossible_requests():
    x = ag.input("x", (2, 3))
    with pytest.raises(
        ag.ShapeError,
        match=r"grad: output a \(2, 3\)|grad: output .* has shape \(2, 3\); "
        r"differentiate a scalar \(e.g. loss.sum\(\)\) or pass grad_output",
    ):
        ag.grad(x * 2.0, [x])
    with pytest.raises(ag.ShapeError, match=r"grad: grad_output \(3,\) must match output .* \(2, 3\)"):
        ag.grad(x * 2.0, [x], grad_output=ag.input("g", (3,)))
    with pytest.raises(
        ag.ShapeError, match=r"grad: cannot differentiate with respect to i: its dtype is int64"
    ):
        ag.grad(x.sum(), [ag.input("i", (2,), "int64")])
    with pytest.raises(ag.ShapeError, match=r"grad: output .* has dtype int64; it must be floating point"):
        ag.grad(ag.input("j", (2,), "int64").sum(), [x])
    with pytest.raises(TypeError, match="grad: wrt must hold Tensors, got ndarray"):
        ag.grad(x.sum(), [np.zeros(3)])


@pytest.fixture
def scratch():
    with scratch_ops():
        yield


def test_missing_gradient_rule_raises_naming_the_op(scratch):
    name = "test_autograd_no_rule"
    ag.define_op(name, infer=lambda x: x, kernel=lambda x: np.cos(x))
    x = ag.input("x", (3,), "float64")
    y = ag.apply(name, x * 2.0).named("cosine")
    with pytest.raises(ag.MissingRuleError, match=rf"op '{name}' has no gradient rule.*needed for cosine"):
        ag.grad(y.sum(), [x])
    # Not differentiating through it is fine: the op only feeds a branch we don't ask about.
    (gx,) = ag.grad((x * 3.0).sum() + ag.stop_gradient(y).sum(), [x])
    np.testing.assert_array_equal(ag.compile(gx, inputs=[x])(np.zeros(3)), [3.0, 3.0, 3.0])


def test_gradient_rule_returning_wrong_count_is_an_error(scratch):
    name = "test_autograd_bad_rule"
    ag.define_op(name, infer=lambda a, b: a, kernel=lambda a, b: a + b, grad=lambda g, out, a, b: (g,))
    x = ag.input("x", (3,), "float64")
    with pytest.raises(
        ag.MissingRuleError, match=rf"gradient rule of '{name}' returned 1 cotangents for 2 inputs"
    ):
        ag.grad(ag.apply(name, x, x).sum(), [x])


def test_non_differentiable_ops_stop_gradients():
    x = ag.input("x", (4,), "float64")
    y = ag.where(x > 0, x, 0.0) + ag.sign(x) * 5.0 + ag.one_hot(ag.argmax(x, 0), 4, "float64").sum()
    (gx,) = ag.grad(y.sum(), [x])
    np.testing.assert_array_equal(ag.compile(gx)(np.array([1.0, -1.0, 2.0, -3.0])), [1, 0, 1, 0])


def test_value_and_grad():
    x = ag.input("x", (2,), "float64")
    value, (gx,) = ag.value_and_grad((x * x).sum(), [x])
    v, g = ag.compile([value, gx])(np.array([1.0, 2.0]))
    assert v == 5.0
    np.testing.assert_array_equal(g, [2.0, 4.0])


# ----------------------------------------------------------------------------- provenance of gradient nodes
def test_gradient_nodes_record_the_forward_node_and_its_scope():
    x = ag.input("x", ("B", 3))
    w = ag.parameter(np.ones((3, 2), "float32"), name="w")
    with ag.scope("layer"):
        h = (x @ w).named("h")
    with ag.scope("head"):
        loss = h.tanh().sum()
    with ag.scope("called.elsewhere"):  # gradient nodes take the forward node's scope, not this one
        (gw,) = ag.grad(loss, [w])
    graph = ag.Graph([loss.node, gw.node])
    forward = {n.id for n in ag.Graph([loss.node]).nodes}
    backward = [n for n in graph.nodes if n.id not in forward]
    assert backward and all("grad_of" in n.meta for n in backward)
    by_id = {n.id: n for n in graph.nodes}
    for n in backward:
        source = by_id[n.meta["grad_of"]]
        assert source.id in forward
        assert n.meta.get("scope") == source.meta.get("scope")
    assert {n.meta.get("scope") for n in backward} <= {"layer", "head", None}
    assert gw.node.meta["scope"] == "layer" and by_id[gw.node.meta["grad_of"]].op == "matmul"
    assert not any("grad_of" in n.meta for n in graph.nodes if n.id in forward)

    loaded = ag.Graph.from_json(graph.to_json())
    loaded_by_id = {n.id: n for n in loaded.nodes}
    pairs = [
        (n.op, n.meta.get("scope"), loaded_by_id[n.meta["grad_of"]].op)
        for n in loaded.nodes
        if "grad_of" in n.meta
    ]
    assert pairs == [(n.op, n.meta.get("scope"), by_id[n.meta["grad_of"]].op) for n in backward]


def test_grad_of_in_json_must_name_a_node_of_the_document():
    import json

    x = ag.input("x", (3,))
    loss = (x * x).sum()
    (gx,) = ag.grad(loss, [x])
    doc = json.loads(ag.Graph([loss.node, gx.node]).to_json())
    marked = next(i for i, rec in enumerate(doc["nodes"]) if "grad_of" in rec)
    doc["nodes"][marked]["grad_of"] = 10_000
    with pytest.raises(ValueError, match=f"node {marked} .*field 'grad_of' must be the index of a node"):
        ag.Graph.from_json(json.dumps(doc))
