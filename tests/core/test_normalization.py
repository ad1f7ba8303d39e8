"""layer_norm and batch_norm: parity with numpy (float64) and PyTorch, gradients to second order, errors."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.errors import ShapeError
from asg.core.testing import rand
from asg.core.testing.references import layer_norm as layer_norm_ref

try:  # PyTorch is the reference where installed; check_op skips its torch part without it
    import torch

    F = torch.nn.functional
except ImportError:  # pragma: no cover - depends on the environment
    torch = F = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")


# Parity of layer_norm (affine or not, one or two normalised dims, weight or bias only), of its backward
# ops and of batch_norm (training, eval): asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_layer_norm_float32_kernel_on_transformer_sized_rows_matches_float64():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 128)) * 3 + 5).astype(np.float32)
    w, b = rng.standard_normal(128).astype(np.float32), rng.standard_normal(128).astype(np.float32)
    xs = ag.input("x", ("B", 128))
    y = ag.compile(ag.layer_norm(xs, 128, ag.constant(w), ag.constant(b)))(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, layer_norm_ref(x.astype(np.float64), 1, w, b), rtol=1e-5, atol=2e-5)


@needs_torch
def test_layer_norm_gradients_use_the_fused_backward_ops_and_match_torch_in_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 16)).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    cot = rng.standard_normal(x.shape).astype(np.float32)
    xs = ag.input("x", ("B", "T", 16))
    ws, bs = ag.parameter(w, name="w"), ag.parameter(b, name="b")
    loss = (ag.layer_norm(xs, 16, ws, bs) * ag.constant(cot)).sum()
    grads = ag.grad(loss, [xs, ws, bs])
    ops = {n.op for n in ag.Graph([g.node for g in grads]).nodes}
    assert {"layer_norm_backward", "layer_norm_weight_grad"} <= ops
    dx, dw, db = ag.compile(grads, inputs=[xs])(x)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    (F.layer_norm(tx, (16,), tw, tb) * torch.tensor(cot)).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_layer_norm_third_order_gradient_matches_finite_differences():
    w = rand(4, seed=14)

    def first_derivative(x):
        y = ag.layer_norm(x, 4, ag.constant(w))
        (dx,) = ag.grad((y * y * y).sum(), [x])
        return dx

    ag.check_grads(first_derivative, [rand(2, 4, seed=15)], order=2, rtol=1e-3, atol=1e-4)


def test_layer_norm_symbolic_batch_runs_for_two_batch_sizes():
    x = ag.input("x", ("B", "T", 8))
    f = ag.compile(ag.layer_norm(x, 8))
    for batch in (3, 2):
        data = rand(batch, 5, 8, seed=batch).astype(np.float32)
        np.testing.assert_allclose(f(data), layer_norm_ref(data.astype(np.float64), 1), rtol=1e-5, atol=1e-5)
    assert f.num_plans == 2


def test_layer_norm_errors_name_the_tensors_and_the_reason():
    x = ag.input("x", ("B", 10))
    with pytest.raises(
        ShapeError,
        match=r"layer_norm: x \(B, 10\): normalized_shape \(8,\) does not match the last "
        r"1 dimension\(s\) of the input \(B, 10\)",
    ):
        ag.layer_norm(x, 8)
    w = ag.parameter(np.ones(5, "float32"), name="ln.weight")
    with pytest.raises(
        ShapeError,
        match=r"layer_norm: x \(B, 10\), ln.weight \(5,\): weight has shape \(5,\), "
        r"expected \(10,\)",
    ):
        ag.layer_norm(x, 10, w)
    with pytest.raises(ShapeError, match=r"must name 1 to 2 trailing dimensions"):
        ag.layer_norm(x, (2, 3, 10))
    with pytest.raises(ShapeError, match=r"expected a floating-point tensor, got int64"):
        ag.layer_norm(ag.input("i", (2, 10), "int64"), 10)


# ----------------------------------------------------------------------------- batch_norm
@needs_torch
def test_batch_norm_running_stats_follow_torch_batchnorm2d_over_compiled_steps():
    rng = np.random.default_rng(31)
    channels = 3
    module = torch.nn.BatchNorm2d(channels, momentum=0.2)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(rng.standard_normal(channels), dtype=torch.float32))
        module.bias.copy_(torch.tensor(rng.standard_normal(channels), dtype=torch.float32))
    running_mean = ag.state(np.zeros(channels, "float32"), "bn.running_mean")
    running_var = ag.state(np.ones(channels, "float32"), "bn.running_var")
    weight = ag.parameter(module.weight.detach().numpy(), name="bn.weight")
    bias = ag.parameter(module.bias.detach().numpy(), name="bn.bias")
    x = ag.input("x", ("N", channels, 4, 4))
    cot = ag.input("cot", ("N", channels, 4, 4))
    y, new_mean, new_var = ag.batch_norm(
        x, running_mean, running_var, weight, bias, training=True, momentum=0.2
    )
    dx, dw = ag.grad((y * cot).sum(), [x, weight])
    step = ag.compile([y, dx, dw], inputs=[x, cot], updates={running_mean: new_mean, running_var: new_var})

    module.train()
    for batch in (4, 4, 3):  # the last, smaller batch builds a second plan with its own unbiased count
        data = (rng.standard_normal((batch, channels, 4, 4)) * 2 + 1).astype(np.float32)
        c = rng.standard_normal(data.shape).astype(np.float32)
        out, got_dx, got_dw = step(data, c)
        tx = torch.tensor(data, requires_grad=True)
        module.weight.grad = None
        t_out = module(tx)
        (t_out * torch.tensor(c)).sum().backward()
        np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got_dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_dw, module.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(running_mean.numpy(), module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(running_var.numpy(), module.running_var.numpy(), rtol=1e-5, atol=1e-6)

    module.eval()
    y_eval = ag.batch_norm(x, running_mean, running_var, weight, bias, training=False).output
    data = rng.standard_normal((2, channels, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(
        ag.compile(y_eval, inputs=[x])(data),
        module(torch.tensor(data)).detach().numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_batch_norm_eval_returns_the_running_stats_unchanged():
    mean, var = ag.state(np.zeros(2, "float32")), ag.state(np.ones(2, "float32"))
    out = ag.batch_norm(ag.input("x", (4, 2)), mean, var)
    assert out.running_mean is mean and out.running_var is var


def test_batch_norm_errors():
    x = ag.input("x", ("N", 3, 8, 8))
    good, bad = ag.state(np.zeros(3, "float32"), "rm"), ag.state(np.zeros(4, "float32"), "rv")
    with pytest.raises(
        ShapeError,
        match=r"batch_norm: x x \(N, 3, 8, 8\): running_var rv has shape \(4,\), "
        r"expected \(3,\)",
    ):
        ag.batch_norm(x, good, bad, training=True)
    with pytest.raises(ShapeError, match=r"expected \(N, C\) or \(N, C, \*spatial\), got 1 dimension"):
        ag.batch_norm(ag.input("v", (3,)), good, good)
    with pytest.raises(ShapeError, match=r"more than 1 value per channel, got 1"):
        ag.batch_norm(ag.input("one", (1, 3)), good, good, training=True)
    with pytest.raises(ValueError, match=r"eval mode \(training=False\) needs running_mean and running_var"):
        ag.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        ag.batch_norm(x, good, good, training=True, momentum=1.5)


def test_json_round_trip_of_layer_norm_batch_norm_and_their_gradients_runs_the_same():
    rng = np.random.default_rng(40)
    x = ag.input("x", ("B", 3, 4))
    w, b = (
        ag.parameter(rng.standard_normal(4).astype("float32"), "w"),
        ag.parameter(np.zeros(4, "float32"), "b"),
    )
    h = ag.layer_norm(x, 4, w, b)
    y = ag.batch_norm(h, None, None, training=True).output
    (dx,) = ag.grad((y * y).sum(), [x])
    graph = ag.Graph([y.node, dx.node])
    text = graph.to_json()
    loaded = ag.Graph.from_json(text)
    assert loaded.to_json() == text
    data = rng.standard_normal((2, 3, 4)).astype("float32")
    want = ag.compile([y, dx], inputs=[x])(data)
    got = ag.compile([ag.Tensor(n) for n in loaded.outputs], inputs=[ag.Tensor(n) for n in loaded.inputs])(
        data
    )
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)


def test_docstring_examples_run():
    import doctest

    from asg.core.ops import normalization

    result = doctest.testmod(normalization, extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- float16 statistics in float32
def test_float16_layer_norm_and_its_gradients_do_not_overflow():
    # Regression: squares of 4096 features of size ~10 summed in float16 (max 65504) gave inf.
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 4096)) * 10 + 50).astype(np.float16)
    w = (1 + 0.1 * rng.standard_normal(4096)).astype(np.float16)
    xs, ws = ag.input("x", (3, 4096), "float16"), ag.input("w", (4096,), "float16")
    y = ag.layer_norm(xs, 4096, ws)
    dx, dw = ag.grad((y * y).sum(), [xs, ws])
    got = ag.compile([y, dx, dw])(x, w)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w64
    assert all(g.dtype == np.float16 and np.isfinite(g).all() for g in got)
    np.testing.assert_allclose(got[0].astype(np.float64), want, atol=2e-2, rtol=1e-2)
    if torch is not None:
        t = F.layer_norm(torch.tensor(x).float(), (4096,), torch.tensor(w).float())
        np.testing.assert_allclose(got[0].astype(np.float32), t.numpy(), atol=2e-2, rtol=1e-2)


def test_float16_batch_norm_statistics_do_not_overflow():
    x = np.full((10, 2, 100, 100), 3.0, np.float16)  # 100,000 values per channel
    x[:, 1] = np.tile(np.array([1.0, 5.0], np.float16), 50)
    mean, var = ag.state(np.zeros(2, "float16"), "mean"), ag.state(np.ones(2, "float16"), "var")
    y, new_mean, new_var = ag.batch_norm(
        ag.input("x", ("N", 2, 100, 100), "float16"), mean, var, training=True
    )
    step = ag.compile(y, updates={mean: new_mean, var: new_var})
    out = step(x)
    assert out.dtype == np.float16 and np.isfinite(out).all()
    np.testing.assert_allclose(out[:, 1, 0, :2].astype(np.float32), np.tile([-1.0, 1.0], (10, 1)), atol=1e-2)
    np.testing.assert_allclose(mean.numpy().astype(np.float32), [0.3, 0.3], rtol=1e-3)
    np.testing.assert_allclose(
        var.numpy().astype(np.float32), [0.9, 0.9 + 0.1 * 4 * 100_000 / 99_999], rtol=1e-3
    )
