"""matmul: 2-d, batched, broadcasting batch dimensions, vectors; gradients to second order."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import check_op, rand, torch_or_skip

torch = torch_or_skip

# Parity for every shape combination (2-d, batched, broadcast batch dims, vectors): asg.core.testing.OP_CASES.


def test_matmul_with_array_operands_and_methods():
    w = rand(3, 2, seed=32)
    check_op(lambda x: x @ w, rand(4, 3), ref=lambda x: x @ w, order=1)
    check_op(lambda x: w.T @ x, rand(3, 4), ref=lambda x: w.T @ x, order=1)
    check_op(lambda x: x.matmul(x.T), rand(2, 3), ref=lambda x: x @ x.T, torch_fn=lambda t: t @ t.T)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_matmul_keeps_dtype(dtype):
    a, b = rand(2, 3).astype(dtype), rand(3, 2).astype(dtype)
    x, y = ag.input("a", (2, 3), dtype), ag.input("b", (3, 2), dtype)
    got = ag.compile(x @ y)(a, b)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-2 if dtype == "float16" else 1e-6)


def test_matmul_symbolic_batch():
    x, w = ag.input("x", ("B", 3), "float64"), ag.input("w", (3, 2), "float64")
    y = x @ w
    assert y.shape == ("B", 2)
    f = ag.compile(y)
    for batch in (1, 5):
        a, b = rand(batch, 3, seed=batch), rand(3, 2)
        np.testing.assert_allclose(f(a, b), a @ b)


def test_matmul_errors():
    x, w = ag.input("x", ("B", 784)), ag.input("w", (128, 10))
    with pytest.raises(
        ag.ShapeError,
        match=r"^matmul: x \(B, 784\) @ w \(128, 10\): inner dimensions 784 and 128 "
        r"differ$",
    ):
        x @ w
    with pytest.raises(
        ag.ShapeError,
        match=r"matmul: a \(2, 3, 4\) @ b \(5, 4, 2\): batch dimensions do not "
        r"broadcast",
    ):
        ag.input("a", (2, 3, 4)) @ ag.input("b", (5, 4, 2))
    with pytest.raises(
        ag.ShapeError, match=r"matmul: a \(2, 3\) float32 @ b \(3, 2\) float64: dtypes differ"
    ):
        ag.input("a", (2, 3)) @ ag.input("b", (3, 2), "float64")
    with pytest.raises(
        ag.ShapeError, match=r"matmul: i \(2, 3\) @ j \(3, 2\): expected a floating-point tensor"
    ):
        ag.input("i", (2, 3), "int64") @ ag.input("j", (3, 2), "int64")
    with pytest.raises(ValueError, match=r"matmul: .*operands must not be 0-d"):
        ag.matmul(ag.input("s", ()), ag.input("m", (2, 2)))
