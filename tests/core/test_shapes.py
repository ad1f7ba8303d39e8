"""Symbolic dimensions: canonical forms, arithmetic, broadcasting, binding at call time, and ops whose
output dims are expressions (B*T, (B+2), ((B-1)//2)) resolved when a plan is compiled."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.shapes import (
    bind_shape,
    broadcast_shapes,
    dim_add,
    dim_div,
    dim_floordiv,
    dim_mul,
    dim_prod,
    format_shape,
    normalize_axes,
    normalize_axis,
    normalize_dim,
    normalize_shape,
    resolve_dim,
    resolve_shape,
)


def test_normal_forms():
    assert normalize_dim("T*B") == "B*T"
    assert normalize_dim("B*4*T*2") == "8*B*T"
    assert normalize_dim(np.int64(5)) == 5 and isinstance(normalize_dim(np.int64(5)), int)
    assert normalize_shape("B") == ("B",)
    assert normalize_shape(3) == (3,)
    assert normalize_shape(["B", np.int32(2)]) == ("B", 2)
    with pytest.raises(TypeError, match=r"a dimension must be an int or a symbol name, got 2\.5"):
        normalize_dim(2.5)
    with pytest.raises(TypeError):
        normalize_dim(True)


def test_dim_arithmetic():
    assert dim_mul("B", 4) == "4*B"
    assert dim_mul("B", "T") == dim_mul("T", "B") == "B*T"
    assert dim_mul(2, 3) == 6
    assert dim_mul("B", 0) == 0
    assert dim_prod(["B", 3, "T", 2]) == "6*B*T"
    assert dim_prod([]) == 1
    assert dim_div("6*B*T", "T") == "6*B"
    assert dim_div("6*B*T", 4) is None
    assert dim_div("B", "T") is None
    assert dim_div(12, 4) == 3
    assert dim_add(2, 3) == 5
    assert dim_add("B", 0) == "B"
    assert dim_add("B", 2) == "(B+2)"
    assert dim_add("B", -1) == "(B-1)"
    assert dim_add("B", "T") == "(B+T)"
    assert dim_floordiv("4*B", 2) == "2*B"
    assert dim_floordiv(7, 2) == 3
    assert dim_floordiv("(B-1)", 2) == "((B-1)//2)"


@pytest.mark.parametrize(
    ("dim", "value"),
    [
        ("B", 5),
        ("4*B", 20),
        ("B*T", 15),
        ("(B+2)", 7),
        ("((B-1)//2)", 2),
        ("(((B+T)-1)//2)", 3),
        (7, 7),
        ("(2*B+T)", 13),
    ],
)
def test_resolve_dim(dim, value):
    assert resolve_dim(dim, {"B": 5, "T": 3}) == value


def test_resolve_rejects_unknown_symbols_and_code():
    with pytest.raises(ValueError, match=r"symbolic dimension 'T' has no value \(known: \{'B': 2\}\)"):
        resolve_dim("B*T", {"B": 2})
    for bad in ("__import__('os')", "B.real", "B**2", "[B]"):
        with pytest.raises(ValueError, match="malformed symbolic dimension"):
            resolve_dim(bad, {"B": 2})
    assert resolve_shape(("B", 3, "2*B"), {"B": 4}) == (4, 3, 8)


def test_broadcast_shapes_with_symbols():
    assert broadcast_shapes(("B", 1, 4), (3, 4)) == ("B", 3, 4)
    assert broadcast_shapes(("B", 4), ("B", 4)) == ("B", 4)
    assert broadcast_shapes(("B",), (1,)) == ("B",)
    assert broadcast_shapes(("B",), (5,)) == (5,)  # checked when the plan is compiled
    assert broadcast_shapes((5,), ("B",)) == (5,)
    assert broadcast_shapes((), ("B", 2)) == ("B", 2)
    with pytest.raises(ValueError, match=r"dimension T does not broadcast against B \(axis -1\)"):
        broadcast_shapes(("B",), ("T",))
    with pytest.raises(ValueError, match=r"dimension 3 does not broadcast against 2 \(axis -2\)"):
        broadcast_shapes((2, 1), (3, 1))


def test_axes_and_formatting():
    assert normalize_axis(-1, 3) == 2
    assert normalize_axis(0, 0) == 0
    assert normalize_axes(None, 3) == (0, 1, 2)
    assert normalize_axes((-1, 0, 2), 3) == (0, 2)
    with pytest.raises(ValueError, match="axis 3 is out of range for a 3-d tensor"):
        normalize_axes((0, 3), 3)
    assert format_shape(()) == "()"
    assert format_shape(("B",)) == "(B,)"
    assert format_shape(("B", 784)) == "(B, 784)"


def test_bind_shape():
    bindings: dict[str, int] = {}
    bind_shape(("B", 3), (4, 3), bindings, "input 'x'")
    bind_shape(("B", "2*B"), (4, 8), bindings, "input 'y'")
    assert bindings == {"B": 4}
    with pytest.raises(ValueError, match=r"input 'z': dimension B is 5 here but 4 in another input"):
        bind_shape(("B",), (5,), bindings, "input 'z'")
    with pytest.raises(ValueError, match=r"input 'y': expected shape \(B, 2\*B\), got \(4, 7\)"):
        bind_shape(("B", "2*B"), (4, 7), bindings, "input 'y'")
    with pytest.raises(
        ValueError, match=r"input 'w': expected a 1-d array of shape \(3,\), got shape \(3, 1\)"
    ):
        bind_shape((3,), (3, 1), {}, "input 'w'")


def test_symbolic_shapes_flow_through_ops_and_resolve_per_call():
    x = ag.input("x", ("B", "T", 4), "float64")
    flat = x.reshape(-1, 4)  # (B*T, 4)
    padded = ag.pad(x, [(1, 1), (0, 0), (0, 0)])  # ((B+2), T, 4)
    strided = x[1::2]  # ((B-1)//2) rows... the expression that slicing produces
    joined = ag.concat([x, x[:, :1]], axis=1)  # (B, (T+1), 4)
    merged = x.flatten(0, 1) @ ag.constant(np.ones((4, 2)))
    assert flat.shape == ("B*T", 4)
    assert padded.shape == ("(B+2)", "T", 4)
    assert joined.shape == ("B", "(T+1)", 4)
    assert merged.shape == ("B*T", 2)
    f = ag.compile([flat, padded, strided, joined, merged, flat.sum() + padded.mean() + strided.sum()])
    for b, t in ((3, 2), (6, 5), (1, 1)):
        data = np.random.default_rng(b * 10 + t).standard_normal((b, t, 4))
        got = f(data)
        np.testing.assert_array_equal(got[0], data.reshape(-1, 4))
        np.testing.assert_array_equal(got[1], np.pad(data, [(1, 1), (0, 0), (0, 0)]))
        np.testing.assert_array_equal(got[2], data[1::2])
        np.testing.assert_array_equal(got[3], np.concatenate([data, data[:, :1]], axis=1))
        np.testing.assert_allclose(got[4], data.reshape(-1, 4) @ np.ones((4, 2)))
        np.testing.assert_allclose(
            got[5], data.sum() + np.pad(data, [(1, 1), (0, 0), (0, 0)]).mean() + data[1::2].sum()
        )
    assert f.num_plans == 3


def test_gradients_through_symbolic_shapes():
    x = ag.input("x", ("B", "T"), "float64")
    y = ag.pad(x.reshape(-1), [(2, 1)]) ** 2
    z = ag.concat([y, x[1:].reshape(-1)], axis=0).sum() + x.mean()
    (gx,) = ag.grad(z, [x])
    f = ag.compile(gx)
    for b, t in ((2, 3), (4, 1)):
        data = np.random.default_rng(b).standard_normal((b, t))
        want = 2 * data + 1.0 / data.size
        want[1:] += 1.0
        np.testing.assert_allclose(f(data), want)


def test_symbol_conflicts_are_caught_when_a_plan_is_compiled():
    x, w = ag.input("x", ("B", "K")), ag.input("w", ("K", 3))
    f = ag.compile(x @ w)
    assert f(np.ones((2, 4), "float32"), np.ones((4, 3), "float32")).shape == (2, 3)
    with pytest.raises(ag.ShapeError, match=r"input 'w': dimension K is 5 here but 4 in another input"):
        f(np.ones((2, 4), "float32"), np.ones((5, 3), "float32"))
    # A symbol that met an int while building is checked against the data.
    a, b = ag.input("a", ("N",)), ag.input("b", (3,))
    g = ag.compile(a + b)
    np.testing.assert_array_equal(g(np.ones(3, "float32"), np.ones(3, "float32")), 2 * np.ones(3))
    with pytest.raises(ag.ShapeError, match=r"add: a \(N,\), b \(3,\) with \{'N': 4\}.*do not broadcast"):
        g(np.ones(4, "float32"), np.ones(3, "float32"))
