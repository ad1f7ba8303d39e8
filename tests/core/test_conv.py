"""Convolution and pooling beyond the per-op parity cases (asg.core.testing.OP_CASES: plain-loop
references, finite differences to second order, PyTorch): second order through a network, ties, the
backward ops' adjointness, symbolic batch and spatial dims, planned buffers, error messages and a LeNet
training step against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import asg.core as ag
from asg.core.ops.pooling import adaptive_bins
from asg.core.testing import check_op, rand, run
from asg.core.testing.references import max_pool2d as ref_max_pool2d

# ============================================================================= conv2d
# Parity with the references, finite differences and PyTorch for every conv2d, conv_transpose2d and
# conv2d_backward_weight configuration: asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_conv_transpose2d_bias_and_symbolic_size():
    x = ag.input("x", ("B", 2, "H", 3))
    w = ag.parameter(rand(2, 3, 3, 3, seed=5).astype(np.float32), name="w")
    b = ag.parameter(rand(3, seed=6).astype(np.float32), name="b")
    y = ag.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)
    assert y.shape == ("B", 3, "2*H", 6)
    f = ag.compile(y, inputs=[x])
    for shape in [(1, 2, 3, 3), (2, 2, 5, 3)]:
        data = rand(*shape, seed=7).astype(np.float32)
        want = F.conv_transpose2d(
            torch.tensor(data),
            torch.tensor(w.numpy()),
            torch.tensor(b.numpy()),
            stride=2,
            padding=1,
            output_padding=1,
        )
        np.testing.assert_allclose(f(data), want.numpy(), rtol=1e-5, atol=1e-5)


def test_conv_second_order_through_a_nonlinear_network():
    """tanh(conv) -> max pool -> conv: Hessian-vector products need every op of the family's closure."""
    w2 = rand(2, 2, 2, 2, seed=12)

    def net(x, w):
        h = ag.tanh(ag.conv2d(x, w, padding=1))
        h = ag.max_pool2d(h, 2)
        return ag.conv2d(h, ag.constant(w2), stride=1) ** 2

    ag.check_grads(
        net,
        [rand(1, 2, 5, 5, seed=10, low=-1, high=1), rand(2, 2, 3, 3, seed=11, low=-1, high=1)],
        order=2,
        rtol=1e-4,
        atol=1e-5,
    )


# ============================================================================= pooling
# Parity for every pooling configuration (max, avg, adaptive): asg.core.testing.OP_CASES.


def test_max_pool2d_ties_go_to_the_first_maximum_like_torch():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1:3, 1:3] = 1.0  # overlapping 3x3 windows all see several equal maxima
    x[0, 0, 3, 3] = 1.0
    for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1)]:
        xt = torch.tensor(x, requires_grad=True)
        F.max_pool2d(xt, **kw).sum().backward()
        (gx,) = run(lambda a, kw=kw: ag.grad(ag.max_pool2d(a, **kw).sum(), [a]), x)
        np.testing.assert_array_equal(gx, xt.grad.numpy())


def test_max_pool2d_backward_and_gather_are_each_others_gradient():
    attrs = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=False)
    x = rand(1, 2, 5, 5, seed=14)
    g, h = rand(1, 2, 3, 3, seed=15), rand(1, 2, 5, 5, seed=16)
    # Linear in the second operand; x only chooses positions (zero gradient).
    check_op(
        lambda a, b: ag.apply("max_pool2d_backward", ag.constant(x.astype(b.dtype)), b, **attrs),
        x,
        g,
        order=2,
    )
    check_op(
        lambda a, b: ag.apply("max_pool2d_gather", ag.constant(x.astype(b.dtype)), b, **attrs), x, h, order=2
    )
    # Adjointness: <backward(x, g), h> == <g, gather(x, h)>.
    back = run(lambda a, b: ag.apply("max_pool2d_backward", a, b, **attrs), x, g)
    gathered = run(lambda a, b: ag.apply("max_pool2d_gather", a, b, **attrs), x, h)
    np.testing.assert_allclose(np.sum(back * h), np.sum(g * gathered), rtol=1e-12)
    # And gather(x, x) is the pool itself.
    pooled = run(lambda a: ag.apply("max_pool2d_gather", a, a, **attrs), x)
    np.testing.assert_array_equal(pooled, ref_max_pool2d(x, 3, 2, 1))


def test_adaptive_bins_match_torch_definition():
    for size, out in [(5, 3), (7, 4), (2, 5), (10, 10), (13, 1)]:
        starts, ends = adaptive_bins(size, out)
        for i in range(out):
            assert starts[i] == (i * size) // out
            assert ends[i] == -(-((i + 1) * size) // out)
        assert starts[0] == 0 and ends[-1] == size


# ============================================================================= symbolic dims, buffers, dtypes
def test_symbolic_batch_and_spatial_dims_with_gradients():
    x = ag.input("x", ("B", 2, "H", "W"))
    w = ag.parameter(rand(3, 2, 3, 3, seed=20).astype(np.float32), name="w")
    y = ag.conv2d(x, w, stride=2, padding=1)
    assert y.shape[:2] == ("B", 3) and all(isinstance(d, str) for d in y.shape[2:])
    z = ag.avg_pool2d(ag.max_pool2d(ag.relu(y), 2), 1)
    loss = (z * z).sum()
    gx, gw = ag.grad(loss, [x, w])
    f = ag.compile([loss, gx, gw], inputs=[x])
    for shape in [(2, 2, 8, 8), (3, 2, 9, 7), (2, 2, 8, 8)]:
        data = rand(*shape, seed=21).astype(np.float32)
        xt = torch.tensor(data, requires_grad=True)
        wt = torch.tensor(w.numpy(), requires_grad=True)
        zt = F.avg_pool2d(F.max_pool2d(F.relu(F.conv2d(xt, wt, stride=2, padding=1)), 2), 1)
        lt = (zt * zt).sum()
        lt.backward()
        got_loss, got_gx, got_gw = f(data)
        np.testing.assert_allclose(got_loss, lt.item(), rtol=1e-5)
        np.testing.assert_allclose(got_gx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got_gw, wt.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert f.num_plans == 2


def test_ceil_mode_needs_static_spatial_dims():
    with pytest.raises(ag.ShapeError, match="ceil_mode=True needs static spatial sizes"):
        ag.max_pool2d(ag.input("x", ("B", 1, "H", 8)), 2, ceil_mode=True)


OPS_WITH_INPUTS = [
    # (op, input shapes, attrs): each run as an intermediate so the memory planner hands it an out= buffer
    (
        "conv2d",
        [(2, 4, 6, 6), (6, 2, 3, 3)],
        dict(stride=(1, 1), padding=(1, 0, 1, 1), dilation=(1, 1), groups=2),
    ),
    (
        "conv_transpose2d",
        [(2, 6, 5, 6), (6, 2, 3, 3)],
        dict(size=(6, 6), stride=(1, 1), padding=(1, 0, 1, 1), dilation=(1, 1), groups=2),
    ),
    (
        "conv_transpose2d",
        [(2, 3, 3, 3), (3, 2, 3, 3)],
        dict(size=(7, 7), stride=(2, 2), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1),
    ),
    (
        "conv2d_backward_weight",
        [(2, 4, 6, 6), (2, 6, 5, 6)],
        dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 0, 1, 1), dilation=(1, 1), groups=2),
    ),
    (
        "max_pool2d",
        [(2, 3, 6, 6)],
        dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False),
    ),
    (
        "max_pool2d_backward",
        [(2, 3, 6, 6), (2, 3, 3, 3)],
        dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False),
    ),
    (
        "max_pool2d_backward",
        [(2, 3, 6, 6), (2, 3, 3, 3)],
        dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=False),
    ),
    (
        "max_pool2d_gather",
        [(2, 3, 6, 6), (2, 3, 6, 6)],
        dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=False),
    ),
    ("adaptive_max_pool2d_backward", [(1, 2, 2, 3), (1, 2, 3, 5)], dict(output_size=(3, 5))),
    (
        "avg_pool2d",
        [(2, 3, 6, 6)],
        dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False),
    ),
    (
        "avg_pool2d_backward",
        [(2, 3, 3, 3)],
        dict(
            size=(6, 6),
            kernel_size=(2, 2),
            stride=(2, 2),
            padding=(0, 0),
            ceil_mode=False,
            count_include_pad=True,
        ),
    ),
    ("adaptive_avg_pool2d", [(2, 3, 7, 5)], dict(output_size=(3, 2))),
    ("adaptive_avg_pool2d_backward", [(2, 3, 3, 2)], dict(size=(7, 5), output_size=(3, 2))),
]


@pytest.mark.parametrize(("name", "shapes", "attrs"), OPS_WITH_INPUTS, ids=[o[0] for o in OPS_WITH_INPUTS])
def test_kernels_keep_float32_and_write_planned_buffers(name, shapes, attrs):
    arrays = [rand(*s, seed=22 + i).astype(np.float32) for i, s in enumerate(shapes)]
    direct = ag.get_op(name).kernels["numpy"](*arrays, **attrs)
    assert direct.dtype == np.float32
    planned = run(lambda *xs: ag.apply(name, *xs, **attrs) * 1.0, *arrays)
    unplanned = run(lambda *xs: ag.apply(name, *xs, **attrs) * 1.0, *arrays, memory_planning=False)
    np.testing.assert_array_equal(planned, direct)
    np.testing.assert_array_equal(unplanned, direct)


def test_graph_json_round_trip_keeps_conv_attrs():
    x = ag.input("x", ("B", 1, 8, 8))
    w = ag.parameter(rand(2, 1, 3, 3, seed=30).astype(np.float32), name="w")
    y = ag.adaptive_avg_pool2d(
        ag.max_pool2d(ag.conv2d(x, w, padding="same"), 3, 2, 1, ceil_mode=True), (2, 3)
    )
    (gw,) = ag.grad(y.sum(), [w])
    graph = ag.Graph([y.node, gw.node])
    again = ag.Graph.from_json(graph.to_json())
    assert str(again) == str(graph)
    assert "conv2d_backward_weight" in str(graph) and "max_pool2d_backward" in str(graph)


# ============================================================================= error messages
def _shape_error(fn, message):
    with pytest.raises(ag.ShapeError) as info:
        fn()
    assert str(info.value) == message


def test_error_messages_name_the_op_tensors_and_reason():
    x = ag.input("x", ("B", 3, 32, 32))
    w = ag.parameter(np.zeros((16, 4, 3, 3), "float32"), name="w")
    _shape_error(
        lambda: ag.conv2d(x, w),
        "conv2d: x (B, 3, 32, 32), w (16, 4, 3, 3): input has 3 channels but the weight expects 4 (groups=1)",
    )
    w5 = ag.parameter(np.zeros((6, 1, 5, 5), "float32"), name="w5")
    _shape_error(
        lambda: ag.conv2d(ag.input("s", (1, 1, 3, 4)), w5),
        "conv2d: s (1, 1, 3, 4), w5 (6, 1, 5, 5): the kernel (5x5, dilation (1, 1)) spans 5 but the padded "
        "input is only 3 along H",
    )
    wg = ag.parameter(np.zeros((5, 1, 3, 3), "float32"), name="wg")
    _shape_error(
        lambda: ag.conv2d(x, wg, groups=3),
        "conv2d: x (B, 3, 32, 32), wg (5, 1, 3, 3): the weight's 5 output channels do not split into "
        "groups=3",
    )
    _shape_error(
        lambda: ag.conv2d(ag.input("v", (3, 32, 32)), w),
        "conv2d: v (3, 32, 32), w (16, 4, 3, 3): input must be 4-d (N, C, H, W), got shape (3, 32, 32)",
    )
    w3 = ag.parameter(np.zeros((16, 3, 3, 3), "float32"), name="w3")
    _shape_error(
        lambda: ag.conv2d(x, w3, stride=2, padding="same"),
        "conv2d: x (B, 3, 32, 32), w3 (16, 3, 3, 3): padding='same' needs stride 1 (as in PyTorch); pass "
        "explicit padding instead",
    )
    _shape_error(
        lambda: ag.conv2d(x, w3, stride=0),
        "conv2d: x (B, 3, 32, 32), w3 (16, 3, 3, 3): stride must be at least 1, got 0",
    )
    _shape_error(
        lambda: ag.conv2d(x.astype("float64").named("x64"), w3),
        "conv2d: x64 (B, 3, 32, 32) float64, w3 (16, 3, 3, 3) float32: dtypes differ: float64 and float32 "
        "(cast one of them)",
    )
    with pytest.raises(ValueError, match=r"bias b has 4 entries for 16 output channels"):
        ag.conv2d(x, w3, ag.parameter(np.zeros(4, "float32"), name="b"))
    wt = ag.parameter(np.zeros((3, 2, 3, 3), "float32"), name="wt")
    _shape_error(
        lambda: ag.conv_transpose2d(x, wt, stride=2, output_padding=2),
        "conv_transpose2d: x (B, 3, 32, 32), wt (3, 2, 3, 3): output_padding (2, 2) must be smaller than "
        "the stride (2, 2)",
    )
    _shape_error(
        lambda: ag.max_pool2d(x, 2, padding=2),
        "max_pool2d: x (B, 3, 32, 32): padding (2, 2) must be at most half of the effective kernel size "
        "(2, 2) (as in PyTorch)",
    )
    _shape_error(
        lambda: ag.avg_pool2d(ag.input("t", (1, 1, 2, 2)), 3),
        "avg_pool2d: t (1, 1, 2, 2): the window spans 3 but the padded input is only 2",
    )
    _shape_error(
        lambda: ag.adaptive_avg_pool2d(x, 0),
        "adaptive_avg_pool2d: x (B, 3, 32, 32): output_size must be at least 1, got 0",
    )
    _shape_error(
        lambda: ag.max_pool2d(ag.input("i", (1, 1, 4, 4), "int32"), 2),
        "max_pool2d: i (1, 1, 4, 4): expected a floating-point tensor, got int32 (cast it with "
        ".astype('float32'))",
    )


def test_wrong_batch_size_at_run_time_is_reported():
    x = ag.input("x", (2, 1, 6, 6))
    w = ag.parameter(np.ones((1, 1, 3, 3), "float32"), name="w")
    f = ag.compile(ag.conv2d(x, w), inputs=[x])
    with pytest.raises(ag.ShapeError, match="expected shape"):
        f(np.zeros((3, 1, 6, 6), np.float32))


# ============================================================================= LeNet against PyTorch
def test_lenet_training_steps_match_torch():
    rng = np.random.default_rng(0)
    shapes = {
        "c1": (6, 1, 5, 5),
        "b1": (6,),
        "c2": (16, 6, 5, 5),
        "b2": (16,),
        "f1": (400, 32),
        "f2": (32, 10),
    }
    init = {k: (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in shapes.items()}
    images = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 8)

    params = {k: ag.parameter(v, name=k) for k, v in init.items()}
    x = ag.input("x", ("B", 1, 28, 28))
    y = ag.input("y", ("B",), "int64")
    h = ag.max_pool2d(ag.relu(ag.conv2d(x, params["c1"], params["b1"], padding=2)), 2)
    h = ag.max_pool2d(ag.relu(ag.conv2d(h, params["c2"], params["b2"])), 2)
    logits = ag.relu(h.reshape("B", 400) @ params["f1"]) @ params["f2"]
    loss = ag.cross_entropy(logits, y)
    grads = ag.grad(loss, list(params.values()))
    step = ag.compile(
        loss, inputs=[x, y], updates={p: p - 0.1 * g for p, g in zip(params.values(), grads, strict=True)}
    )

    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    for _ in range(3):
        t = F.max_pool2d(F.relu(F.conv2d(torch.tensor(images), tparams["c1"], tparams["b1"], padding=2)), 2)
        t = F.max_pool2d(F.relu(F.conv2d(t, tparams["c2"], tparams["b2"])), 2)
        tl = F.cross_entropy(F.relu(t.reshape(8, 400) @ tparams["f1"]) @ tparams["f2"], torch.tensor(labels))
        tl.backward()
        with torch.no_grad():  # plain SGD (torch.optim's import alone costs seconds)
            for p in tparams.values():
                p -= 0.1 * p.grad
                p.grad = None
        np.testing.assert_allclose(step(images, labels), tl.item(), rtol=1e-4)
    for k, p in params.items():
        np.testing.assert_allclose(p.numpy(), tparams[k].detach().numpy(), rtol=1e-3, atol=1e-4)
