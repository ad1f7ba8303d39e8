"""softmax, log_softmax and cross_entropy: parity, stability with large logits, gradients to second order."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import check_op, rand, run, torch_or_skip
from asg.core.testing.references import softmax as ref_softmax

torch = torch_or_skip

F = torch.nn.functional


# Parity of softmax and log_softmax over every axis: asg.core.testing.OP_CASES.


def test_softmax_methods_and_default_axis():
    x = rand(3, 5, seed=62)
    check_op(lambda v: v.softmax(), x, ref=lambda v: ref_softmax(v, -1), order=0)
    check_op(lambda v: v.log_softmax(0), x, ref=lambda v: np.log(ref_softmax(v, 0)), order=0)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_softmax_is_stable_for_large_logits(dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -999.0], [60000.0, 60000.0, 0.0]]).astype(dtype)
    t = torch.tensor(x.astype(np.float64))
    probs = run(ag.softmax, x)
    logp = run(ag.log_softmax, x)
    assert probs.dtype == np.dtype(dtype) and logp.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(probs)) and np.all(np.isfinite(logp))
    tol = 1e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(probs, F.softmax(t, -1).numpy(), atol=tol)
    np.testing.assert_allclose(logp, F.log_softmax(t, -1).numpy(), rtol=tol, atol=tol)
    # Gradients stay finite too.
    xs = ag.input("x", (3, 3), dtype)
    g1, g2 = ag.compile(
        ag.grad(ag.softmax(xs)[:, 0].sum(), [xs]) + ag.grad(ag.log_softmax(xs)[:, 1].sum(), [xs])
    )(x)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))


def test_log_softmax_keeps_precision_in_the_tail():
    x = np.array([[0.0, -50.0, -100.0]], np.float32)
    logp = run(ag.log_softmax, x)
    np.testing.assert_allclose(logp, F.log_softmax(torch.tensor(x), -1).numpy(), rtol=1e-6)
    assert logp[0, 2] < -99  # log(softmax) would give -inf here


# Parity of cross_entropy for every reduction, with and without label smoothing: asg.core.testing.OP_CASES.


def test_cross_entropy_with_symbolic_batch_and_int32_target():
    logits, target = ag.input("logits", ("B", 3), "float64"), ag.input("y", ("B",), "int32")
    loss = ag.cross_entropy(logits, target)
    (g,) = ag.grad(loss, [logits])
    f = ag.compile([loss, g])
    for batch in (2, 5):
        z, y = rand(batch, 3, seed=batch), np.arange(batch) % 3
        t = torch.tensor(z, requires_grad=True)
        want = F.cross_entropy(t, torch.tensor(y, dtype=torch.int64))
        want.backward()
        value, grad = f(z, y.astype(np.int32))
        np.testing.assert_allclose(value, want.item(), rtol=1e-12)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10)


def test_cross_entropy_with_large_logits_is_finite():
    z = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]], np.float32)
    np.testing.assert_allclose(run(lambda v: ag.cross_entropy(v, np.array([1, 1])), z), 1000.0, rtol=1e-6)


def test_cross_entropy_errors():
    logits = ag.input("logits", ("B", 10))
    with pytest.raises(
        ag.ShapeError,
        match=r"cross_entropy: logits logits \(B, 10\) and target y \(B, 1\): expected "
        r"logits \(N, C\) and integer targets \(N,\)",
    ):
        ag.cross_entropy(logits, ag.input("y", ("B", 1), "int64"))
    with pytest.raises(
        ag.ShapeError, match=r"cross_entropy: target y must hold integer class indices, got float32"
    ):
        ag.cross_entropy(logits, ag.input("y", ("B",)))
    with pytest.raises(ValueError, match=r"reduction must be 'mean', 'sum' or 'none', got 'max'"):
        ag.cross_entropy(logits, ag.input("y", ("B",), "int64"), reduction="max")
    with pytest.raises(ag.ShapeError, match=r"the class dimension of z must be static, got 'C'"):
        ag.cross_entropy(ag.input("z", ("B", "C")), ag.input("y", ("B",), "int64"))


def test_softmax_errors():
    with pytest.raises(
        ag.ShapeError, match=r"^softmax: x \(2, 3\): axis 2 is out of range for a 2-d tensor$"
    ):
        ag.softmax(ag.input("x", (2, 3)), axis=2)
    with pytest.raises(
        ag.ShapeError, match=r"log_softmax: i \(3,\): expected a floating-point tensor, got int64"
    ):
        ag.log_softmax(ag.input("i", (3,), "int64"))


def test_cross_entropy_with_a_minus_inf_logit_matches_torch():
    # Regression: 0 * log(0) made this NaN; PyTorch gives 0.3133 and a finite gradient.
    logits, target = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]], np.float32), np.array([2, 0])
    x = ag.input("x", (2, 3))
    loss = ag.cross_entropy(x, ag.constant(target))
    (g,) = ag.grad(loss, [x])
    got_loss, got_grad = ag.compile([loss, g])(logits)
    t = torch.tensor(logits, requires_grad=True)
    want = F.cross_entropy(t, torch.tensor(target))
    want.backward()
    np.testing.assert_allclose(got_loss, want.item(), rtol=1e-6)
    np.testing.assert_allclose(got_grad, t.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert np.isfinite(got_grad).all()
    single = ag.cross_entropy(ag.constant(logits[:1]), ag.constant(target[:1]))
    np.testing.assert_allclose(ag.compile(single)(), 0.3133, atol=1e-4)
