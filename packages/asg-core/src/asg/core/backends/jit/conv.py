"""``"numpy-jit"`` lowerings of the stride-1 convolutions with few channels, and of max pooling.

The numpy kernels run a convolution as im2col + one GEMM: the columns are ``kH*kW`` times the input,
which costs more than the arithmetic when a group has few channels (LeNet's 1->6 and 6->16 5x5 convolutions
spent 60% of a training step there). Here, when the stride is 1 and ``C_in/groups * C_out/groups`` is at
most :data:`DIRECT_MAX_CHANNELS`, the three ops of the family run as direct loops over one image per thread
(:mod:`.conv_kernels`):

- ``conv2d`` directly;
- ``conv2d_backward_weight`` as one dot product per weight over the images of a thread, summed after;
- ``conv_transpose2d`` as the scatter of each input channel's plane, shifted per kernel offset (the
  strided case keeps numpy-jit's GEMM + parallel scatter).

``max_pool2d`` and its backward and gather ops find each window's first maximum in one parallel pass
(the numpy kernels make several array passes, plus a mask per kernel offset). Everything else, and
every case outside these, runs the kernels numpy-jit ran before.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", (2, 1, 8, 8))
    >>> w = ag.constant(np.ones((3, 1, 3, 3), "float32"))
    >>> y = ag.max_pool2d(ag.conv2d(x, w, padding=1), 2)
    >>> xs = np.arange(2 * 64, dtype="float32").reshape(2, 1, 8, 8)
    >>> ag.compile(y, backend="numpy-jit")(xs)[0, 0, 0]
    array([ 81.,  99., 117., 126.], dtype=float32)
    >>> bool(np.array_equal(ag.compile(y, backend="numpy-jit")(xs), ag.compile(y)(xs)))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ...lowering import LoweringContext
from ...registry import Kernel, get_op, register_lowering

DIRECT_MAX_CHANNELS = 256
"""The largest ``C_in/groups * C_out/groups`` of a convolution that runs as direct loops (stride 1)."""


def _direct(ctx: LoweringContext, weight_shape: tuple[int, ...], groups: int) -> bool:
    """Whether a convolution with this stride and weight runs as direct loops."""
    if tuple(ctx.attrs["stride"]) != (1, 1):
        return False
    c_first, c_second = weight_shape[0], weight_shape[1]  # (C_out, C_in/groups) or (C_in, C_out/groups)
    return (c_first // groups) * c_second <= DIRECT_MAX_CHANNELS


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def _conv2d_make(ctx: LoweringContext) -> Any:
    attrs, shape = ctx.attrs, ctx.out_type.shape
    groups = int(attrs["groups"])
    if not _direct(ctx, ctx.in_types[1].shape, groups):
        return None
    from . import conv_kernels

    top, bottom, left, right = attrs["padding"]
    (dh, dw), (_, _, h, wd) = attrs["dilation"], ctx.in_types[0].shape
    hp, wp = h + top + bottom, wd + left + right

    def run(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        result = np.empty(shape, x.dtype) if out is None else out
        return conv_kernels.conv_direct(_c(x), _c(w), top, left, hp, wp, dh, dw, result)

    return run


def _conv_transpose_make(ctx: LoweringContext) -> Any:
    attrs, shape = ctx.attrs, ctx.out_type.shape
    if not _direct(ctx, ctx.in_types[1].shape, int(attrs["groups"])):
        return None
    from . import conv_kernels

    top, bottom, left, right = attrs["padding"]
    hp, wp = shape[2] + top + bottom, shape[3] + left + right
    (dh, dw) = attrs["dilation"]

    def run(g: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        result = np.empty(shape, g.dtype) if out is None else out
        return conv_kernels.conv_transpose_direct(_c(g), _c(w), top, left, hp, wp, dh, dw, result)

    return run


def _backward_weight_make(ctx: LoweringContext) -> Any:
    attrs, shape = ctx.attrs, ctx.out_type.shape
    if not _direct(ctx, shape, int(attrs["groups"])):
        return None
    import numba

    from . import conv_kernels

    top, bottom, left, right = attrs["padding"]
    (dh, dw), (n, _, h, wd) = attrs["dilation"], ctx.in_types[0].shape
    hp, wp = h + top + bottom, wd + left + right

    def run(x: np.ndarray, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        chunks = max(1, min(n, numba.get_num_threads()))
        part = np.empty((chunks, *shape), x.dtype)
        conv_kernels.conv_weight_direct(_c(x), _c(g), top, left, hp, wp, dh, dw, part)
        return np.sum(part, axis=0, out=out)

    return run


def _pool_make(mode_name: str) -> Callable[[LoweringContext], Any]:
    def make(ctx: LoweringContext) -> Any:
        from . import conv_kernels

        mode = getattr(conv_kernels, mode_name)
        attrs, shape = ctx.attrs, ctx.out_type.shape
        geometry = (*attrs["kernel_size"], *attrs["stride"], *attrs["padding"], *attrs["dilation"])

        def run(x: np.ndarray, *other: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
            result = np.empty(shape, x.dtype) if out is None else out
            x = _c(x)
            return conv_kernels.max_pool(mode, x, _c(other[0]) if other else x, *geometry, result)

        return run

    return make


def _with_out(
    make: Callable[[LoweringContext], Any],
    fallback: Callable[[LoweringContext], Any],
    enabled: Callable[[], bool],
) -> Any:
    """A rule running the kernel ``make(ctx)`` builds (it takes ``out=``, a planned buffer), or
    ``fallback``'s where numba is off (``enabled()`` is false) or ``make`` declines (returns None)."""

    def rule(ctx: LoweringContext) -> Any:
        if enabled() and ctx.out_type.dtype in ("float32", "float64") and math.prod(ctx.out_type.shape):
            fn = make(ctx)
            if fn is not None:
                return Kernel(fn, out_arg=True)
        return fallback(ctx)

    return rule


def register(backend: str, enabled: Callable[[], bool]) -> None:
    """Register the convolution and max-pool rules for ``backend`` over its current rules, which they
    fall back to (the jit package calls this, passing its ``enabled``)."""
    makes = {
        "conv2d": _conv2d_make,
        "conv_transpose2d": _conv_transpose_make,
        "conv2d_backward_weight": _backward_weight_make,
        "max_pool2d": _pool_make("FORWARD"),
        "max_pool2d_backward": _pool_make("BACKWARD"),
        "max_pool2d_gather": _pool_make("GATHER"),
    }
    for op, make in makes.items():
        register_lowering(op, backend, _with_out(make, get_op(op).lowerings[backend], enabled))
