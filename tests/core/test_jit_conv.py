"""numpy-jit's direct convolution and max-pool kernels (asg.core.backends.jit.conv) against the numpy
kernels in float64: the shapes they take (stride 1, padding, dilation, groups, cropping transposes, ties,
NaN, padded windows), and the cases that must fall back to the GEMM kernels."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import rand

numba = pytest.importorskip("numba")
conv_kernels = pytest.importorskip("asg.core.backends.jit.conv_kernels")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each numba kernel of the module ran."""
    counts: dict[str, int] = {}
    for name in ("conv_direct", "conv_weight_direct", "conv_transpose_direct", "max_pool"):
        kernel = getattr(conv_kernels, name)

        def counted(*args, kernel=kernel, name=name):
            if name == "max_pool":  # one kernel, three modes
                name = {conv_kernels.FORWARD: "forward", conv_kernels.BACKWARD: "backward"}.get(
                    args[0], "gather"
                )
            counts[name] = counts.get(name, 0) + 1
            return kernel(*args)

        monkeypatch.setattr(conv_kernels, name, counted)
    return counts


def _both(op: str, arrays: list[np.ndarray], **attrs) -> tuple[np.ndarray, np.ndarray]:
    """``op`` on numpy-jit and on numpy (the reference), same float64 inputs."""
    xs = [ag.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    y = ag.apply(op, *xs, **attrs)
    return (
        ag.compile(y, inputs=xs, backend="numpy-jit")(*arrays),
        ag.compile(y, inputs=xs, backend="numpy")(*arrays),
    )


CONV = [  # (x shape, weight shape, padding (top, bottom, left, right), dilation, groups)
    # LeNet's conv1: one input channel, its 6 outputs one register tile of 6
    ((3, 1, 12, 11), (6, 1, 5, 5), (2, 2, 2, 2), (1, 1), 1),
    ((2, 6, 9, 10), (16, 6, 5, 5), (0, 0, 0, 0), (1, 1), 1),  # LeNet's conv2 (16 = four tiles of 4)
    # asymmetric padding, dilation, 2 groups of 3 (tiles of 4, one channel and 3 of 15 terms padded)
    ((2, 4, 8, 9), (6, 2, 3, 2), (1, 0, 2, 1), (2, 1), 2),
    ((2, 4, 7, 7), (12, 2, 3, 3), (1, 1, 1, 1), (1, 1), 2),  # 2 groups of 6 channels: a tile of 6 each
    ((1, 5, 7, 7), (5, 1, 3, 3), (1, 1, 1, 1), (1, 2), 5),  # depthwise: tiles of 1
    ((2, 3, 6, 5), (7, 3, 1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1, 7 = two tiles of 4, one padded
    # 19 images: the weight gradient sums groups of a thread's images per tile, then the rest
    ((19, 3, 6, 6), (4, 3, 3, 3), (1, 1, 1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("x_shape, w_shape, padding, dilation, groups", CONV)
def test_the_conv_family_runs_direct_loops_and_matches_numpy(
    calls, x_shape, w_shape, padding, dilation, groups
):
    x, w = rand(*x_shape, seed=1), rand(*w_shape, seed=2)
    attrs = dict(stride=(1, 1), padding=padding, dilation=dilation, groups=groups)
    got, want = _both("conv2d", [x, w], **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    g = rand(*want.shape, seed=3)
    got, want_w = _both("conv2d_backward_weight", [x, g], kernel_size=w_shape[2:], **attrs)
    np.testing.assert_allclose(got, want_w, rtol=1e-11, atol=1e-11)
    # conv2d's input gradient: the same weight, read as (C_in, C_out/groups, kH, kW) of the transpose
    got, want_x = _both("conv_transpose2d", [g, w], size=x_shape[2:], **attrs)
    np.testing.assert_allclose(got, want_x, rtol=1e-11, atol=1e-11)
    assert calls == {"conv_direct": 1, "conv_weight_direct": 1, "conv_transpose_direct": 1}


def test_a_transposed_conv_whose_padding_crops_more_than_the_kernel_spans(calls):
    # padding 3 > kernel span 2: the output starts inside the padded plane's kernel span
    g, w = rand(2, 3, 8, 8, seed=4), rand(3, 4, 3, 3, seed=5)
    got, want = _both(
        "conv_transpose2d",
        [g, w],
        size=(6, 7),
        stride=(1, 1),
        padding=(3, 1, 2, 1),
        dilation=(1, 1),
        groups=1,
    )
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert calls == {"conv_transpose_direct": 1}


def test_float32_training_step_matches_numpy():
    x = ag.input("x", (4, 1, 12, 12))
    w1 = ag.parameter(rand(6, 1, 5, 5, seed=6).astype(np.float32), name="w1")
    w2 = ag.parameter(rand(16, 6, 5, 5, seed=7).astype(np.float32), name="w2")
    h = ag.max_pool2d(ag.conv2d(x, w1, padding=2).relu(), 2)
    loss = (ag.max_pool2d(ag.conv2d(h, w2).relu(), 2) ** 2).sum()
    grads = ag.grad(loss, [x, w1, w2])
    data = rand(4, 1, 12, 12, seed=8).astype(np.float32)
    got = ag.compile([loss, *grads], inputs=[x], backend="numpy-jit")(data)
    want = ag.compile([loss, *grads], inputs=[x])(data)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, groups",
    [((2, 3, 9, 9), (4, 3, 3, 3), (2, 1), 1), ((1, 32, 6, 6), (32, 32, 3, 3), (1, 1), 1)],
    ids=["strided", "many channels"],
)
def test_strided_or_wide_convolutions_keep_the_gemm_kernels(calls, x_shape, w_shape, stride, groups):
    x, w = rand(*x_shape, seed=9), rand(*w_shape, seed=10)
    attrs = dict(stride=stride, padding=(1, 1, 1, 1), dilation=(1, 1), groups=groups)
    got, want = _both("conv2d", [x, w], **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    g = rand(*want.shape, seed=11)
    got, want = _both("conv2d_backward_weight", [x, g], kernel_size=w_shape[2:], **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    got, want = _both("conv_transpose2d", [g, w], size=x_shape[2:], **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    assert calls == {}


POOLS = [  # (kernel, stride, padding, dilation, ceil_mode)
    ((2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), True),  # overlapping, padded, ceil-mode overhang
    ((3, 2), (1, 2), (1, 0), (2, 1), False),  # dilated rows
]


@pytest.mark.parametrize("kernel_size, stride, padding, dilation, ceil_mode", POOLS)
def test_max_pool_kernels_match_numpy_with_ties_nan_and_all_minus_inf_windows(
    calls, kernel_size, stride, padding, dilation, ceil_mode
):
    x = np.round(rand(2, 3, 9, 8, seed=12) * 4) / 4  # many ties
    x[0, 0, 2:5, 2:5] = np.nan
    x[1, 2, :4, :4] = -np.inf
    attrs = dict(
        kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
    )
    got, want = _both("max_pool2d", [x], **attrs)
    np.testing.assert_array_equal(got, want)
    got, want_bw = _both("max_pool2d_backward", [x, rand(*want.shape, seed=13)], **attrs)
    np.testing.assert_array_equal(got, want_bw)
    got, want_gather = _both("max_pool2d_gather", [x, rand(*x.shape, seed=14)], **attrs)
    np.testing.assert_array_equal(got, want_gather)
    assert calls == {"forward": 1, "backward": 1, "gather": 1}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_2x2_max_pool_backward_takes_whole_vectors_of_windows_with_ties_and_nan(calls, dtype):
    # 18 windows a row: two vector steps of tiles.LANES windows, then two one at a time; odd height
    x = (np.round(rand(2, 3, 9, 37, seed=15) * 3) / 3).astype(dtype)  # ties in most windows
    x[0, 0, 2:5, 3:9] = np.nan  # a NaN's window takes the gradient at its last offset
    x[1, 2, :4, :20] = -np.inf
    x[1, 1, 4:6, 16:18] = 0.5  # four equal values: the first takes it
    attrs = dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False)
    g = rand(2, 3, 4, 18, seed=16).astype(dtype)
    got, want = _both("max_pool2d_backward", [x, g], **attrs)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    assert calls == {"backward": 1}
