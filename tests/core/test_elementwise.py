"""Elementwise ops: forward against numpy (float64), gradients against finite differences to second
order, and forward + gradients against PyTorch; broadcasting for every binary op; dtype rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import check_op, rand, run, torch_or_skip
from asg.core.testing.cases import ANY, POSITIVE

torch = torch_or_skip

# ----------------------------------------------------------------------------- unary ops
# Parity of every unary op (with its attributes) with numpy, finite differences and PyTorch:
# asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_tensor_methods_match_functions():
    x = POSITIVE
    for method, ref in [
        ("exp", np.exp),
        ("log", np.log),
        ("sqrt", np.sqrt),
        ("rsqrt", lambda v: v**-0.5),
        ("abs", np.abs),
        ("sign", np.sign),
        ("sigmoid", lambda v: 1 / (1 + np.exp(-v))),
        ("tanh", np.tanh),
        ("relu", lambda v: np.maximum(v, 0)),
    ]:
        np.testing.assert_allclose(
            run(lambda t, m=method: getattr(t, m)(), x), ref(x), rtol=1e-12, err_msg=method
        )
    np.testing.assert_allclose(run(lambda t: abs(-t), x), x)
    np.testing.assert_allclose(run(lambda t: +t, x), x)


# ----------------------------------------------------------------------------- binary ops
# Parity of every binary op, same-shape and broadcasting both ways: asg.core.testing.OP_CASES.


@pytest.mark.parametrize(
    ("fn", "ref"),
    [(ag.add, np.add), (ag.sub, np.subtract), (ag.mul, np.multiply), (ag.div, np.divide), (ag.pow, np.power)],
)
def test_binary_functions_match_operators(fn, ref):
    a, b = rand(1, 3, seed=11, low=0.5), rand(2, 1, seed=12, low=0.5)
    check_op(fn, a, b, ref=ref, order=1)


@pytest.mark.parametrize(
    ("fn", "ref", "torch_fn"),
    [
        (lambda x: x + 2.5, lambda x: x + 2.5, lambda x: x + 2.5),
        (lambda x: 2.5 + x, lambda x: 2.5 + x, lambda x: 2.5 + x),
        (lambda x: x - 1.5, lambda x: x - 1.5, lambda x: x - 1.5),
        (lambda x: 1.5 - x, lambda x: 1.5 - x, lambda x: 1.5 - x),
        (lambda x: x * 3, lambda x: x * 3, lambda x: x * 3),
        (lambda x: 3 * x, lambda x: 3 * x, lambda x: 3 * x),
        (lambda x: x / 4.0, lambda x: x / 4.0, lambda x: x / 4.0),
        (lambda x: 2.0 / x, lambda x: 2.0 / x, lambda x: 2.0 / x),
        (lambda x: x**3, lambda x: x**3, lambda x: x**3),
        (lambda x: x**-1.5, lambda x: x**-1.5, lambda x: x**-1.5),
        (lambda x: 2.0**x, lambda x: 2.0**x, lambda x: 2.0**x),
        (lambda x: ag.maximum(x, 1.0), lambda x: np.maximum(x, 1.0), lambda x: torch.clamp(x, min=1.0)),
        (lambda x: ag.minimum(1.0, x), lambda x: np.minimum(1.0, x), lambda x: torch.clamp(x, max=1.0)),
        (lambda x: x * np.float64(2.0), lambda x: x * 2.0, lambda x: x * 2.0),
        (lambda x: np.float32(2.0) * x, lambda x: x * 2.0, lambda x: x * 2.0),
    ],
    ids=[
        "add_r",
        "radd",
        "sub_r",
        "rsub",
        "mul_int",
        "rmul_int",
        "div_r",
        "rdiv",
        "pow_3",
        "pow_neg_frac",
        "rpow",
        "maximum_scalar",
        "minimum_scalar_first",
        "numpy_scalar_right",
        "numpy_scalar_left",
    ],
)
def test_binary_op_with_python_scalar(fn, ref, torch_fn):
    check_op(fn, POSITIVE + 0.05, ref=ref, torch_fn=torch_fn)


def test_integer_power_of_negative_base():
    check_op(lambda x: x**2, ANY, ref=lambda x: x**2, torch_fn=lambda x: x**2)
    check_op(lambda x: x**3.0, ANY, ref=lambda x: x**3, torch_fn=lambda x: x**3)


def test_pow_gradient_wrt_exponent_at_zero_base_is_zero():
    base, exponent = np.array([0.0, 2.0]), np.array([2.0, 3.0])
    a, b = ag.input("a", (2,), "float64"), ag.input("b", (2,), "float64")
    ga, gb = ag.compile(ag.grad((a**b).sum(), [a, b]))(base, exponent)
    np.testing.assert_allclose(ga, [0.0, 12.0])
    np.testing.assert_allclose(gb, [0.0, 8.0 * math.log(2.0)])


def test_maximum_tie_sends_gradient_to_first_operand():
    a, b = ag.input("a", (3,), "float64"), ag.input("b", (3,), "float64")
    grads = ag.compile(ag.grad(ag.maximum(a, b).sum(), [a, b]) + ag.grad(ag.minimum(a, b).sum(), [a, b]))
    ga, gb, ga_min, gb_min = grads(np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0]))
    np.testing.assert_array_equal(ga, [1, 0, 1])
    np.testing.assert_array_equal(gb, [0, 1, 0])
    np.testing.assert_array_equal(ga_min, [1, 1, 0])
    np.testing.assert_array_equal(gb_min, [0, 0, 1])


# ----------------------------------------------------------------------------- comparisons, logic, where
COMPARISONS = [
    ("less", lambda a, b: a < b, np.less),
    ("less_equal", lambda a, b: a <= b, np.less_equal),
    ("greater", lambda a, b: a > b, np.greater),
    ("greater_equal", lambda a, b: a >= b, np.greater_equal),
    ("equal", lambda a, b: a == b, np.equal),
    ("not_equal", lambda a, b: a != b, np.not_equal),
    ("less_fn", ag.less, np.less),
    ("greater_fn", ag.greater, np.greater),
    ("equal_fn", ag.equal, np.equal),
]


@pytest.mark.parametrize(("shape_a", "shape_b"), [((3, 1, 4), (2, 4)), ((), (2, 3)), ((4,), (4,))])
@pytest.mark.parametrize(("name", "fn", "ref"), COMPARISONS, ids=[c[0] for c in COMPARISONS])
def test_comparison_broadcasts_and_gives_bool(name, fn, ref, shape_a, shape_b):
    a = np.round(rand(*shape_a, seed=5))  # small integers, so that ties occur
    b = np.round(rand(*shape_b, seed=6))
    got = run(fn, a, b)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, ref(a, b))
    x, y = ag.input("a", shape_a, "float64"), ag.input("b", shape_b, "float64")
    assert fn(x, y).dtype == "bool"
    # No gradient flows through a comparison.
    (gx,) = ag.grad(ag.where(fn(x, y), x, 0.0).sum() * 0.0 + fn(x, y).astype("float64").sum(), [x])
    np.testing.assert_array_equal(ag.compile(gx, inputs=[x, y])(a, b), np.zeros(shape_a))


def test_comparison_with_scalar_and_integer_tensor():
    np.testing.assert_array_equal(run(lambda x: x > 1, np.array([0, 1, 2, 3])), [False, False, True, True])
    np.testing.assert_array_equal(run(lambda x: x > 1.5, np.array([1.0, 2.0])), [False, True])
    np.testing.assert_array_equal(run(lambda x: x == 2, np.array([1, 2], np.int32)), [False, True])


def test_logical_ops():
    a = np.array([[True, False, True, False]])
    b = np.array([[True], [False]])
    np.testing.assert_array_equal(run(lambda x, y: x & y, a, b), a & b)
    np.testing.assert_array_equal(run(lambda x, y: x | y, a, b), a | b)
    np.testing.assert_array_equal(run(lambda x: ~x, a), ~a)
    with pytest.raises(ag.ShapeError, match=r"logical_and: .*expected bool tensors, got float32"):
        ag.input("x", (2,)) & ag.input("y", (2,), "bool")
    with pytest.raises(ag.ShapeError, match=r"logical_not: .*expected a bool tensor, got int64"):
        ~ag.input("i", (2,), "int64")


def test_where_of_bools_stays_bool():
    c, a, b = ag.input("c", (3,), "bool"), ag.input("a", (3,), "bool"), ag.input("b", (3,), "bool")
    y = ag.where(c, a, b)
    assert y.dtype == "bool"
    got = ag.compile(y)(np.array([True, False, True]), np.array([False, False, True]), np.array([True] * 3))
    np.testing.assert_array_equal(got, [False, True, True])


def test_where_with_scalar_branches_takes_tensor_dtype():
    x = ag.input("x", (3,), "float64")
    y = ag.where(x > 0, x, 0.0)
    assert y.dtype == "float64"
    np.testing.assert_array_equal(ag.compile(y)(np.array([-1.0, 2.0, 0.0])), [0.0, 2.0, 0.0])
    i = ag.input("i", (3,), "int32")
    assert ag.where(i > 0, i, 0).dtype == "int32"
    np.testing.assert_array_equal(ag.compile(ag.where(i > 0, i, -1))(np.array([3, -2, 0])), [3, -1, -1])


def test_where_needs_bool_condition():
    x = ag.input("x", (3,))
    with pytest.raises(ag.ShapeError, match=r"where: .*the condition must be a bool tensor, got float32"):
        ag.where(x, x, 0.0)


# ----------------------------------------------------------------------------- clamp
def test_clamp_gradient_is_zero_outside_the_range():
    x = ag.input("x", (5,), "float64")
    (gx,) = ag.grad(ag.clamp(x, -1.0, 1.0).sum(), [x])
    np.testing.assert_array_equal(ag.compile(gx)(np.array([-3.0, -0.5, 0.0, 0.5, 3.0])), [0, 1, 1, 1, 0])


def test_clamp_rejects_bad_bounds():
    x = ag.input("x", (3,))
    with pytest.raises(ValueError, match="give min, max or both"):
        ag.clamp(x)
    with pytest.raises(ag.ShapeError, match=r"clamp: x \(3,\): min=2.0 is greater than max=1.0"):
        ag.clamp(x, 2.0, 1.0)


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize(
    ("dtype_a", "dtype_b", "expected"),
    [
        ("float32", "float32", "float32"),
        ("float32", "float64", "float64"),
        ("float16", "float32", "float32"),
        ("float16", "float16", "float16"),
        ("int32", "int64", "int64"),
        ("int32", "float32", "float32"),
        ("int64", "float16", "float16"),
        ("bool", "int32", "int32"),
        ("bool", "float64", "float64"),
        ("bool", "bool", "int64"),
        ("int32", "int32", "int32"),
    ],
)
def test_promotion_of_arithmetic(dtype_a, dtype_b, expected):
    a = np.array([1, 0, 1]).astype(dtype_a)
    b = np.array([1, 1, 0]).astype(dtype_b)
    x, y = ag.input("a", (3,), dtype_a), ag.input("b", (3,), dtype_b)
    assert (x + y).dtype == expected
    got = ag.compile(x + y)(a, b)
    assert got.dtype == np.dtype(expected)
    np.testing.assert_array_equal(got, a.astype(np.int64) + b.astype(np.int64))


def test_python_scalars_take_the_tensor_dtype():
    for dtype in ("float16", "float32", "float64", "int32", "int64"):
        x = ag.input("x", (2,), dtype)
        assert (x * 2).dtype == dtype
        assert (2 + x).dtype == dtype
    i = ag.input("i", (2,), "int32")
    assert (i + 1.5).dtype == "float32"  # a float scalar makes an int tensor float
    np.testing.assert_allclose(ag.compile(i + 1.5)(np.array([1, 2])), [2.5, 3.5])
    h = ag.input("h", (2,), "float16")
    assert (h + 1.5).dtype == "float16"


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_division_gives_float32(dtype):
    a = np.array([1, 2, 7]).astype(dtype)
    b = np.array([2, 1, 2]).astype(dtype) if dtype != "bool" else np.array([True, True, True])
    x, y = ag.input("a", (3,), dtype), ag.input("b", (3,), dtype)
    assert (x / y).dtype == "float32"
    got = ag.compile(x / y)(a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a.astype(np.float64) / b)
    # The same when the result feeds another op (buffers are then preallocated with out=).
    got = ag.compile((x / y) * 2.0)(a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 2 * a.astype(np.float64) / b)
    assert (x / 2).dtype == "float32"


def test_integer_arithmetic_stays_integer():
    a, b = np.array([5, -3, 7], np.int32), np.array([2, 2, -3], np.int32)
    for fn, ref in [
        (lambda x, y: x + y, np.add),
        (lambda x, y: x * y, np.multiply),
        (lambda x, y: x - y, np.subtract),
        (ag.maximum, np.maximum),
        (lambda x, y: -x, lambda x, y: -x),
        (lambda x, y: abs(x), lambda x, y: np.abs(x)),
    ]:
        got = run(fn, a, b)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref(a, b))
    got = run(lambda x: x**2, a)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, a**2)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_float_dtypes_are_preserved_by_unary_ops(dtype):
    x = rand(3, 4, seed=10).astype(dtype)
    for fn, ref in [
        (ag.exp, np.exp),
        (ag.tanh, np.tanh),
        (ag.sigmoid, lambda v: 1 / (1 + np.exp(-v))),
        (ag.relu, lambda v: np.maximum(v, 0)),
        (ag.gelu, None),
        (ag.erf, None),
        (ag.silu, None),
    ]:
        got = run(fn, x)
        assert got.dtype == np.dtype(dtype), (fn, got.dtype)
        if ref is not None:
            tol = {"float16": 2e-3, "float32": 1e-6, "float64": 1e-12}[dtype]
            np.testing.assert_allclose(got, ref(x.astype(np.float64)), rtol=tol, atol=tol)


def test_unary_math_rejects_integer_input():
    i = ag.input("i", ("B",), "int64")
    for fn in (ag.exp, ag.log, ag.sqrt, ag.rsqrt, ag.tanh, ag.sigmoid, ag.relu, ag.erf, ag.gelu, ag.silu):
        with pytest.raises(ag.ShapeError, match=r"i \(B,\): expected a floating-point tensor, got int64"):
            fn(i)


def test_negating_bool_is_a_build_error():
    b = ag.input("mask", (3,), "bool")
    with pytest.raises(ag.ShapeError, match=r"neg: mask \(3,\): .*bool.*logical_not|~"):
        -b


@pytest.mark.parametrize(
    ("src", "dst", "values"),
    [
        ("float32", "float64", [1.5, -2.25, 1e30]),
        ("float64", "float32", [1.5, -2.25, 3.0]),
        ("float32", "float16", [1.5, -2.25, 0.0]),
        ("float16", "float32", [1.5, -2.25, 65504.0]),
        ("int32", "int64", [1, -2, 2**31 - 1]),
        ("int64", "int32", [1, -2, 5]),
        ("int64", "float32", [1, -2, 5]),
        ("float32", "int32", [1.7, -2.7, 5.0]),
        ("bool", "float32", [True, False, True]),
        ("float32", "bool", [0.0, -2.0, 0.5]),
        ("int32", "bool", [0, 3, -1]),
        ("bool", "int64", [True, False, True]),
    ],
)
def test_cast(src, dst, values):
    a = np.array(values).astype(src)
    x = ag.input("x", (3,), src)
    y = x.astype(dst)
    assert y.dtype == dst
    got = ag.compile(y)(a)
    assert got.dtype == np.dtype(dst)
    np.testing.assert_array_equal(got, a.astype(dst))
    got_buffered = ag.compile(y + ag.cast(ag.zeros((3,), dst), dst) if dst != "bool" else y | y)(a)
    np.testing.assert_array_equal(got_buffered, a.astype(dst))


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32", "int64", "bool"])
def test_cast_round_trip_is_exact(dtype):
    a = (
        np.array([0, 1, 1, 0, 1]).astype(dtype)
        if dtype == "bool"
        else np.array([-3, 0, 2, 7, 100]).astype(dtype)
    )
    x = ag.input("x", (5,), dtype)
    got = ag.compile(ag.cast(ag.cast(x, "float32"), dtype))(a)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, a)


def test_cast_to_same_dtype_is_identity_and_gradient_casts_back():
    x = ag.input("x", (3,), "float64")
    assert ag.cast(x, "float64") is x
    (gx,) = ag.grad(ag.cast(x, "float32").sum(), [x])
    assert gx.dtype == "float64"
    np.testing.assert_array_equal(ag.compile(gx, inputs=[x])(np.zeros(3)), np.ones(3))
    (gx,) = ag.grad(ag.cast(ag.cast(x, "int32"), "float64").sum(), [x])
    np.testing.assert_array_equal(
        ag.compile(gx, inputs=[x])(np.zeros(3)), np.zeros(3)
    )  # nothing flows through an int


# ----------------------------------------------------------------------------- numerical edge cases
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_sigmoid_saturates_without_overflow(dtype):
    x = np.array([-100.0, -30.0, 0.0, 30.0, 100.0]).astype(dtype)
    got = run(ag.sigmoid, x)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, torch.sigmoid(torch.tensor(x.astype(np.float64))).numpy(), atol=1e-7)
    xs = ag.input("x", (5,), dtype)
    (gx,) = ag.grad(ag.sigmoid(xs).sum(), [xs])
    g = ag.compile(gx)(x)
    assert np.all(np.isfinite(g)) and g[2] == 0.25
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    torch.sigmoid(t).sum().backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-2 if dtype == "float16" else 1e-5, atol=1e-7)


def test_sigmoid_keeps_relative_precision_for_very_negative_inputs():
    for dtype, x in (
        ("float32", np.array([-20.0, -50.0, -80.0])),
        ("float64", np.array([-40.0, -300.0, -700.0])),
    ):
        got = run(ag.sigmoid, x.astype(dtype))
        np.testing.assert_allclose(got, np.exp(x) / (1 + np.exp(x)), rtol=1e-5)


def test_softplus_and_silu_are_finite_for_large_inputs():
    x = np.array([-100.0, -20.0, 0.0, 20.0, 100.0], np.float32)
    t = torch.tensor(x)
    np.testing.assert_allclose(run(ag.softplus, x), torch.nn.functional.softplus(t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(run(ag.silu, x), torch.nn.functional.silu(t).numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(run(ag.elu, x), torch.nn.functional.elu(t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(run(ag.gelu, x), torch.nn.functional.gelu(t).numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(
        run(lambda v: ag.gelu(v, "tanh"), x),
        torch.nn.functional.gelu(t, approximate="tanh").numpy(),
        rtol=1e-6,
        atol=1e-30,
    )


# float32 erf is a rational fit evaluated in float32 (it is on the GELU hot path; see _erf_kernel):
# max error 4.2e-7 on [-6, 6], a few float32 ulps; float64 is math.erf exactly.
@pytest.mark.parametrize(("dtype", "atol"), [("float64", 1e-15), ("float32", 5e-7)])
def test_erf_accuracy_against_math_erf(dtype, atol):
    x = np.linspace(-6.0, 6.0, 2001).astype(dtype)
    got = run(ag.erf, x)
    assert got.dtype == np.dtype(dtype)
    want = np.array([math.erf(float(v)) for v in x])
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    np.testing.assert_array_equal(run(ag.erf, -x), -got)  # odd
    assert np.all(np.abs(got) <= 1) and got[0] == -1 and got[-1] == 1
    small = x[np.abs(x) < 0.05]  # relative precision near 0, where erf(x) ~ 2x/sqrt(pi)
    np.testing.assert_allclose(run(ag.erf, small), [math.erf(float(v)) for v in small], rtol=1e-6)
    if dtype == "float64":
        assert np.all(np.diff(got) >= 0)  # the float32 fit is monotone only up to an ulp


def test_erf_float16_is_close():
    x = np.linspace(-4.0, 4.0, 101).astype(np.float16)
    np.testing.assert_allclose(run(ag.erf, x), [math.erf(float(v)) for v in x], atol=1e-3)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(
        ag.ShapeError, match=r"gelu: x \(3,\): approximate must be 'none' or 'tanh', got 'fast'"
    ):
        ag.gelu(ag.input("x", (3,)), approximate="fast")


# ----------------------------------------------------------------------------- masked_fill
# Parity of masked_fill (broadcast masks): asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_masked_fill_keeps_the_dtype_and_checks_its_mask():
    x = ag.input("x", (2, 3), "int32")
    assert ag.masked_fill(x, x > 0, 7).dtype == "int32"
    with pytest.raises(ag.DTypeError, match=r"^where: .*the condition must be a bool tensor, got float32"):
        ag.masked_fill(ag.input("y", (2, 3)), ag.input("m", (2, 3)), 0.0)
    with pytest.raises(
        ag.ShapeError, match=r"^masked_fill: mask m \(4, 2, 3\) must broadcast to x y \(2, 3\)"
    ):
        ag.masked_fill(ag.input("y", (2, 3)), ag.input("m", (4, 2, 3), "bool"), 0.0)


# ----------------------------------------------------------------------------- mixed-dtype kernels keep the graph's dtype
def test_where_of_int32_and_a_float_scalar_is_float32():
    i = ag.input("i", (4,), "int32")
    out = ag.where(i > 0, i, 0.5)
    assert out.dtype == "float32"
    got = ag.compile(out)(np.array([-2, 0, 3, 7], "int32"))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [0.5, 0.5, 3.0, 7.0])


def test_clamp_of_int32_keeps_int32_with_integer_bounds():
    i = ag.input("i", (5,), "int32")
    got = ag.compile(ag.clamp(i, -1.5, 2.5))(np.array([-5, -1, 0, 2, 9], "int32"))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [-1, -1, 0, 2, 2])  # an int in [-1.5, 2.5] lies in [-1, 2]
