"""Reductions: sum, mean, var, max, min, argmax, argmin, logsumexp over axes, with keepdims."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import check_op, rand, run, torch_or_skip

torch = torch_or_skip

X = rand(2, 3, 4, seed=20)


# Parity of sum, mean, var, max, min, argmax, argmin and logsumexp over every axis set, with and without
# keepdims: asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_max_ties_share_the_gradient_equally():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    xs = ag.input("x", (2, 3), "float64")
    g_rows, g_all, g_min = ag.compile(
        ag.grad(xs.max(axis=1).sum(), [xs]) + ag.grad(xs.max(), [xs]) + ag.grad(xs.min(axis=1).sum(), [xs])
    )(x)
    np.testing.assert_allclose(g_rows, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(g_all, [[0, 0.5, 0.5], [0, 0, 0]])
    np.testing.assert_allclose(g_min, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])
    t = torch.tensor(x, requires_grad=True)
    t.max().backward()  # PyTorch also splits a full reduction's gradient among ties
    np.testing.assert_allclose(g_all, t.grad.numpy())


def test_argmax_has_no_gradient():
    x = ag.input("x", (3, 4), "float64")
    (gx,) = ag.grad(
        (x.argmax(axis=1).astype("float64") * x.sum()).sum() * 0.0 + x.argmax(1).astype("float64").sum(), [x]
    )
    np.testing.assert_array_equal(ag.compile(gx)(rand(3, 4)), np.zeros((3, 4)))


def test_logsumexp_is_stable_for_large_values():
    x = np.array([[1000.0, 1000.0, -1000.0], [-1000.0, -1000.0, -1000.0]], np.float32)
    got = run(lambda v: ag.logsumexp(v, axis=1), x)
    np.testing.assert_allclose(got, [1000 + np.log(2), -1000 + np.log(3)], rtol=1e-6)


def test_sum_of_bool_counts_as_int64():
    mask = np.array([[True, False, True], [True, True, True]])
    got = run(lambda m: m.sum(), mask)
    assert got.dtype == np.int64 and got == 5
    got = run(lambda m: m.sum(axis=0), mask)
    np.testing.assert_array_equal(got, [2, 1, 2])
    assert got.dtype == np.int64
    assert ag.input("m", (2,), "bool").sum().dtype == "int64"


def test_integer_sum_and_max_keep_dtype():
    a = np.array([[1, 5, 3], [7, 2, 9]], np.int32)
    for fn, ref in [
        (lambda v: v.sum(axis=1), lambda v: v.sum(axis=1)),
        (lambda v: v.max(axis=0), lambda v: v.max(0)),
        (lambda v: v.min(), lambda v: v.min()),
    ]:
        got = run(fn, a)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref(a))


def test_mean_of_integers_is_an_error():
    with pytest.raises(ag.ShapeError, match=r"mean: i \(3,\): expected a floating-point tensor, got int64"):
        ag.input("i", (3,), "int64").mean()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_reductions_keep_float_dtype(dtype):
    x = X.astype(dtype)
    for fn in (
        lambda v: v.sum(1),
        lambda v: v.mean(),
        lambda v: v.var(0),
        lambda v: v.max(2),
        lambda v: ag.logsumexp(v, 1),
    ):
        got = run(fn, x)
        assert got.dtype == np.dtype(dtype)


def test_mean_and_var_with_symbolic_batch():
    x = ag.input("x", ("B", 3), "float64")
    f = ag.compile([x.mean(), x.var(axis=0, correction=1), x.mean(axis=0)])
    for batch in (4, 7):
        data = rand(batch, 3, seed=batch)
        mean, var, col = f(data)
        np.testing.assert_allclose(mean, data.mean())
        np.testing.assert_allclose(var, data.var(axis=0, ddof=1))
        np.testing.assert_allclose(col, data.mean(axis=0))
    assert f.num_plans == 2
    (gx,) = ag.grad(x.var(), [x])
    data = rand(5, 3)
    np.testing.assert_allclose(ag.compile(gx)(data), 2 * (data - data.mean()) / data.size)


def test_reductions_of_zero_d_and_empty_axes():
    np.testing.assert_allclose(run(lambda v: v.sum(), np.array(3.0)), 3.0)
    np.testing.assert_allclose(run(lambda v: v.sum(axis=()), X), X)
    check_op(lambda v: v.sum(axis=()) * 2.0, X[0, 0], ref=lambda v: 2 * v, order=1)


def test_bad_axis_names_the_op_and_tensor():
    x = ag.input("x", (2, 3))
    for fn in (
        lambda: x.sum(axis=2),
        lambda: x.mean(axis=-3),
        lambda: x.max(axis=(0, 5)),
        lambda: x.argmax(axis=2),
    ):
        with pytest.raises(
            ag.ShapeError, match=r"^(sum|mean|max|argmax): x \(2, 3\): axis -?\d is out of range for a 2-d"
        ):
            fn()


def test_max_over_empty_axis_is_an_error():
    with pytest.raises(ag.ShapeError, match=r"max: x \(0, 3\): cannot reduce over axis 0 of size 0"):
        ag.input("x", (0, 3)).max(axis=0)


# ----------------------------------------------------------------------------- cumsum
# Parity of cumsum (forward, reverse): asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_cumsum_gradient_is_the_reverse_cumsum():
    x = ag.input("x", ("T",), "float64")
    cot = ag.input("c", ("T",), "float64")
    (dx,) = ag.grad((x.cumsum() * cot).sum(), [x])
    assert dx.node.op == "cumsum" and dx.node.attrs["reverse"] is True
    f = ag.compile(dx, inputs=[x, cot])
    for t in (3, 5):
        c = rand(t, seed=t)
        np.testing.assert_allclose(f(np.zeros(t), c), np.cumsum(c[::-1])[::-1], rtol=1e-12)


def test_cumsum_dtypes():
    assert run(lambda i: i.cumsum(), np.array([1, 2, 3], np.int32)).dtype == np.int32
    got = run(lambda b: ag.cumsum(b), np.array([True, False, True]))
    assert got.dtype == np.int64 and got.tolist() == [1, 1, 2]
    halves = run(lambda h: h.cumsum(), np.ones(4000, np.float16))
    assert halves.dtype == np.float16 and halves[-1] == 4000  # float16 accumulation would stop at 2048


# ----------------------------------------------------------------------------- float16 accumulates in float32
def test_float16_mean_sum_and_var_do_not_overflow():
    ones = np.ones(100_000, np.float16)
    assert run(ag.mean, ones).item() == 1.0 == torch.tensor(ones).mean().item()  # was inf
    assert run(ag.sum, np.ones(4000, np.float16)).item() == 4000.0  # pairwise float16 sums lose ones
    noisy = (np.random.default_rng(3).standard_normal((4, 30_000)) * 2).astype(np.float16)
    for fn, want in (
        (lambda x: ag.mean(x, 1), np.mean(noisy.astype(np.float64), 1)),
        (lambda x: ag.var(x, 1, correction=1), np.var(noisy.astype(np.float64), 1, ddof=1)),
    ):
        got = run(fn, noisy)
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(
        run(lambda x: ag.var(x, 1, correction=1), noisy).astype(np.float32),
        torch.tensor(noisy).var(1).float().numpy(),
        rtol=2e-3,
    )


def test_float16_var_with_a_symbolic_count_does_not_overflow():
    x = ag.input("x", ("N",), "float16")
    f = ag.compile(ag.var(x, correction=1))
    data = np.tile(np.array([0.0, 2.0], np.float16), 40_000)  # n = 80000 > 65504, the float16 maximum
    np.testing.assert_allclose(float(f(data)), np.var(data.astype(np.float64), ddof=1), rtol=1e-3)


# ----------------------------------------------------------------------------- infinities and NaN
def test_logsumexp_of_infinite_rows_matches_torch():
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, np.inf, 0.0], [0.0, -np.inf, 1.0]], np.float32)
    got = run(lambda v: ag.logsumexp(v, 1), x)
    want = torch.logsumexp(torch.tensor(x), 1).numpy()
    np.testing.assert_array_equal(got[:2], [-np.inf, np.inf])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Gradients: finite wherever PyTorch's are (row 2), NaN where PyTorch's are.
    t = torch.tensor(x, requires_grad=True)
    torch.logsumexp(t, 1).sum().backward()
    v = ag.input("v", (3, 3))
    (g,) = ag.grad(ag.logsumexp(v, 1).sum(), [v])
    np.testing.assert_allclose(ag.compile(g)(x), t.grad.numpy(), rtol=1e-6, equal_nan=True)


def _torch_grad(fn, x):
    t = torch.tensor(x, requires_grad=True)
    fn(t).sum().backward()
    return t.grad.numpy()


def _asg_grad(fn, x):
    v = ag.input("v", x.shape, "float64")
    (g,) = ag.grad(fn(v).sum(), [v])
    return ag.compile(g)(x)


def test_max_and_min_gradients_with_nan_follow_torch():
    # Regression: the whole gradient used to be NaN. Rows without NaN match torch.amax/amin; a NaN
    # extreme sends its gradient to the NaN entries, as torch.max(dim) and torch.max() do.
    x = np.array([[1.0, np.nan, 3.0], [4.0, 6.0, 6.0], [2.0, 2.0, 1.0]])
    for asg_fn, torch_fn in (
        (lambda v: ag.max(v, 1), lambda t: t.amax(1)),
        (lambda v: ag.min(v, 1), lambda t: t.amin(1)),
    ):
        got, want = _asg_grad(asg_fn, x), _torch_grad(torch_fn, x)
        np.testing.assert_array_equal(got[1:], want[1:])
        assert np.isnan(want[0]).all() and np.isfinite(got).all()
    np.testing.assert_array_equal(
        _asg_grad(lambda v: ag.max(v, 1), x[:1]), _torch_grad(lambda t: t.max(1).values, x[:1])
    )
    np.testing.assert_array_equal(_asg_grad(ag.max, x), _torch_grad(lambda t: t.max(), x))
    np.testing.assert_array_equal(
        _asg_grad(ag.max, x[1:]), _torch_grad(lambda t: t.max(), x[1:])
    )  # ties share


def test_unbiased_var_of_one_element_is_nan_as_in_torch():
    got = run(lambda x: ag.var(x, correction=1), np.ones(1, np.float32))
    assert np.isnan(got) and torch.ones(1).var().isnan().item()
