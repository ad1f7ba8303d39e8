"""Elementwise ops: forward against numpy (float64), gradients against finite differences to second
order, and forward + gradients against PyTorch; broadcasting for every binary op; dtype rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import check_op, rand, run, torch_or_skip

torch = torch_or_skip

# ----------------------------------------------------------------------------- unary ops
POSITIVE = rand(2, 3, seed=1, low=0.2, high=3.0)
ANY = rand(2, 3, seed=2)
AWAY_FROM_ZERO = np.where(np.abs(ANY) < 0.1, 0.5, ANY)

UNARY = [
    # (name, asg function, numpy reference, torch function, data)
    ("neg", ag.neg, np.negative, torch.neg, ANY),
    ("exp", ag.exp, np.exp, torch.exp, ANY),
    ("log", ag.log, np.log, torch.log, POSITIVE),
    ("sqrt", ag.sqrt, np.sqrt, torch.sqrt, POSITIVE),
    ("rsqrt", ag.rsqrt, lambda x: 1 / np.sqrt(x), torch.rsqrt, POSITIVE),
    ("abs", ag.abs, np.abs, torch.abs, AWAY_FROM_ZERO),
    ("sign", ag.sign, np.sign, torch.sign, AWAY_FROM_ZERO),
    ("erf", ag.erf, np.vectorize(math.erf), torch.erf, ANY),
    ("relu", ag.relu, lambda x: np.maximum(x, 0), torch.relu, AWAY_FROM_ZERO),
    ("sigmoid", ag.sigmoid, lambda x: 1 / (1 + np.exp(-x)), torch.sigmoid, ANY),
    ("tanh", ag.tanh, np.tanh, torch.tanh, ANY),
    ("silu", ag.silu, lambda x: x / (1 + np.exp(-x)), torch.nn.functional.silu, ANY),
    ("softplus", ag.softplus, lambda x: np.log1p(np.exp(x)), torch.nn.functional.softplus, ANY),
    (
        "gelu",
        ag.gelu,
        lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
        torch.nn.functional.gelu,
        ANY,
    ),
]


@pytest.mark.parametrize(("name", "fn", "ref", "torch_fn", "data"), UNARY, ids=[u[0] for u in UNARY])
def test_unary_op(name, fn, ref, torch_fn, data):
    check_op(fn, data, ref=ref, torch_fn=torch_fn)


def _gelu_tanh_ref(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize(
    ("fn", "ref", "torch_fn", "data"),
    [
        (
            lambda x: ag.leaky_relu(x, 0.2),
            lambda x: np.where(x > 0, x, 0.2 * x),
            lambda x: torch.nn.functional.leaky_relu(x, 0.2),
            AWAY_FROM_ZERO,
        ),
        (
            lambda x: ag.leaky_relu(x),
            lambda x: np.where(x > 0, x, 0.01 * x),
            torch.nn.functional.leaky_relu,
            AWAY_FROM_ZERO,
        ),
        (
            lambda x: ag.elu(x, 0.7),
            lambda x: np.where(x > 0, x, 0.7 * np.expm1(x)),
            lambda x: torch.nn.functional.elu(x, 0.7),
            AWAY_FROM_ZERO,
        ),
        (
            lambda x: ag.softplus(x, beta=2.0, threshold=3.0),
            lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2),
            lambda x: torch.nn.functional.softplus(x, beta=2.0, threshold=3.0),
            np.array([-1.3, 0.2, 1.0, 1.7, 2.5]),
        ),
        (
            lambda x: ag.gelu(x, approximate="tanh"),
            _gelu_tanh_ref,
            lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
            ANY,
        ),
        (
            lambda x: ag.clamp(x, -1.0, 0.5),
            lambda x: np.clip(x, -1.0, 0.5),
            lambda x: torch.clamp(x, -1.0, 0.5),
            AWAY_FROM_ZERO,
        ),
        (
            lambda x: ag.clamp(x, min=0.3),
            lambda x: np.maximum(x, 0.3),
            lambda x: torch.clamp(x, min=0.3),
            ANY,
        ),
        (lambda x: x.clamp(max=0.3), lambda x: np.minimum(x, 0.3), lambda x: torch.clamp(x, max=0.3), ANY),
    ],
    ids=[
        "leaky_relu_0.2",
        "leaky_relu_default",
        "elu",
        "softplus_beta_threshold",
        "gelu_tanh",
        "clamp",
        "clamp_min",
        "clamp_max",
    ],
)
def test_unary_op_with_attributes(fn, ref, torch_fn, data):
    check_op(fn, data, ref=ref, torch_fn=torch_fn)


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
BINARY = [
    # (name, asg function, numpy reference, torch function, b transform making the data valid)
    ("add", lambda a, b: a + b, np.add, torch.add),
    ("sub", lambda a, b: a - b, np.subtract, torch.sub),
    ("mul", lambda a, b: a * b, np.multiply, torch.mul),
    ("div", lambda a, b: a / b, np.divide, torch.div),
    ("pow", lambda a, b: a**b, np.power, torch.pow),
    ("maximum", ag.maximum, np.maximum, torch.maximum),
    ("minimum", ag.minimum, np.minimum, torch.minimum),
]

BROADCAST_SHAPES = [
    ((3, 1, 4), (2, 4)),
    ((2, 4), (3, 1, 4)),
    ((4,), (3, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
]


def _binary_data(name: str, shape_a, shape_b):
    a = rand(*shape_a, seed=3)
    b = rand(*shape_b, seed=4)
    if name.startswith("pow"):
        a = rand(*shape_a, seed=3, low=0.3, high=2.0)  # real powers need positive bases
    if name.startswith("div"):
        b = np.where(np.abs(b) < 0.3, 0.7, b)
    return a, b


@pytest.mark.parametrize(
    ("shape_a", "shape_b"), BROADCAST_SHAPES, ids=[f"{a}-{b}" for a, b in BROADCAST_SHAPES]
)
@pytest.mark.parametrize(("name", "fn", "ref", "torch_fn"), BINARY, ids=[b[0] for b in BINARY])
def test_binary_op_broadcasting(name, fn, ref, torch_fn, shape_a, shape_b):
    a, b = _binary_data(name, shape_a, shape_b)
    check_op(fn, a, b, ref=ref, torch_fn=torch_fn)


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


@pytest.mark.parametrize(
    ("shapes"),
    [((2, 3), (2, 3), (2, 3)), ((3, 1, 4), (2, 4), ()), ((4,), (3, 1), (3, 4)), ((), (2,), (2,))],
)
def test_where_broadcasts_and_routes_gradients(shapes):
    cshape, ashape, bshape = shapes
    cond = rand(*cshape, seed=7) > 0
    a, b = rand(*ashape, seed=8), rand(*bshape, seed=9)
    check_op(
        lambda x, y: ag.where(ag.constant(cond), x, y),
        a,
        b,
        ref=lambda x, y: np.where(cond, x, y),
        torch_fn=lambda x, y: torch.where(torch.tensor(cond), x, y),
    )


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
