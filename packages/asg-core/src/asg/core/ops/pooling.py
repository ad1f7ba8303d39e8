"""Pooling over NCHW tensors (windowed reductions): max/avg pools and adaptive pools.

Max pools are ``max_pool2d`` (window maxima), ``max_pool2d_backward(x, g)`` (``g`` scattered to the
first maximum of each window of ``x``) and ``max_pool2d_gather(x, h)`` (``h`` read at those positions):
the last two are each other's gradient wrt their second input and have none wrt ``x``. Average pools
are linear: the forward and its backward op are each other's gradient. The adaptive pools use
PyTorch's bins, ``start = floor(i*H/out)``, ``end = ceil((i+1)*H/out)``.

Spatial dims may be symbolic for floor-mode pools (the output is then a dim expression); the batch
dim may always be symbolic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import blas
from ..errors import DTypeRuleError
from ..registry import TensorType, define_op
from ..shapes import Dim, format_shape
from ..tensor import Tensor, apply, as_tensor
from ._rules import require_float
from .convolution import (
    IntOrPair,
    Padding4,
    Pair,
    _build,
    _check_4d,
    _effective,
    _pad,
    _pair,
    _same_where_known,
    _sliding_count,
)


# ============================================================================= pooling geometry
@dataclass(frozen=True)
class _Windows:
    """Where the windows of a pool sit in its (padded) input.

    ``rows[i]`` / ``cols[j]`` index the input rows / columns that kernel offset ``i`` / ``j`` reads for
    every output position: a strided slice for regular pools, an index array for adaptive ones.
    """

    rows: tuple[slice | np.ndarray, ...]
    cols: tuple[slice | np.ndarray, ...]
    padding: Padding4
    out_hw: Pair
    disjoint: bool  # no input element lies in two windows

    @property
    def strided(self) -> bool:
        return isinstance(self.rows[0], slice) and isinstance(self.cols[0], slice)

    def take(self, xp: np.ndarray, i: int, j: int) -> np.ndarray:
        rows, cols = self.rows[i], self.cols[j]
        if self.strided:
            return xp[:, :, rows, cols]
        return xp[:, :, rows][:, :, :, cols]

    def offsets(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))]


def _pool_out_size(size: Dim, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> Dim:
    """PyTorch's pooling output size (``pooling_output_shape``)."""
    span = _effective(kernel, dilation)
    if not isinstance(size, int):
        if ceil_mode:
            raise ValueError("ceil_mode=True needs static spatial sizes")
        return _sliding_count(size, 2 * pad, span, stride)
    if size + 2 * pad < span:
        raise ValueError(f"the window spans {span} but the padded input is only {size + 2 * pad}")
    out = (size + 2 * pad - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its left padding
    return out


@functools.lru_cache(maxsize=256)
def _regular_windows(
    size: Pair, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> _Windows:
    out_hw, pads, axes = [], [], []
    for a in range(2):
        out = int(_pool_out_size(size[a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode))
        span = _effective(kernel[a], dilation[a])
        # Extra padding past the end for ceil_mode windows that overhang it.
        extra = max(0, (out - 1) * stride[a] + span - (size[a] + 2 * padding[a]))
        out_hw.append(out)
        pads += [padding[a], padding[a] + extra]
        axes.append(
            tuple(
                slice(i * dilation[a], i * dilation[a] + stride[a] * (out - 1) + 1, stride[a])
                for i in range(kernel[a])
            )
        )
    disjoint = all(stride[a] >= _effective(kernel[a], dilation[a]) for a in range(2))
    return _Windows(axes[0], axes[1], (pads[0], pads[1], pads[2], pads[3]), (out_hw[0], out_hw[1]), disjoint)


def adaptive_bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive-pool bins: ``start = floor(i*size/out)``, ``end = ceil((i+1)*size/out)``.

    >>> adaptive_bins(5, 3)
    (array([0, 1, 3]), array([2, 4, 5]))
    """
    i = np.arange(out)
    return (i * size) // out, -((-(i + 1) * size) // out)


@functools.lru_cache(maxsize=256)
def _adaptive_windows(size: Pair, output_size: Pair) -> _Windows:
    axes = []
    disjoint = True
    for a in range(2):
        starts, ends = adaptive_bins(size[a], output_size[a])
        longest = int((ends - starts).max())
        # Short bins repeat their last index: a repeated element never changes a max or its first argmax.
        axes.append(tuple(np.minimum(starts + r, ends - 1) for r in range(longest)))
        disjoint = disjoint and bool(np.all(starts[1:] >= ends[:-1]))
    return _Windows(axes[0], axes[1], (0, 0, 0, 0), output_size, disjoint)


# ============================================================================= max pooling kernels
def _max_windows(x: np.ndarray, win: _Windows, out: np.ndarray | None) -> np.ndarray:
    xp = _pad(x, win.padding, -np.inf)
    result = np.empty((*x.shape[:2], *win.out_hw), x.dtype) if out is None else out
    first, *rest = win.offsets()
    np.copyto(result, win.take(xp, *first))
    for i, j in rest:
        np.maximum(result, win.take(xp, i, j), out=result)
    return result


def _first_max_hits(xp: np.ndarray, win: _Windows) -> list[np.ndarray]:
    """Per kernel offset (in ``win.offsets()`` order), a bool mask of the output positions whose window has
    its first maximum at that offset (PyTorch's tie rule). ``xp`` is the padded input."""
    offsets = win.offsets()
    best = np.array(win.take(xp, *offsets[0]))
    for i, j in offsets[1:]:
        np.maximum(best, win.take(xp, i, j), out=best)
    hits = []
    remaining = np.ones(best.shape, bool)
    for i, j in offsets[:-1]:
        hit = np.equal(win.take(xp, i, j), best)
        np.logical_and(hit, remaining, out=hit)
        np.logical_xor(remaining, hit, out=remaining)
        hits.append(hit)
    hits.append(remaining)  # whatever no earlier offset claimed
    return hits


def _scatter_to_argmax(x: np.ndarray, g: np.ndarray, win: _Windows, out: np.ndarray | None) -> np.ndarray:
    hits = _first_max_hits(_pad(x, win.padding, -np.inf), win)
    top, bottom, left, right = win.padding
    n, c, h, w = x.shape
    padded = top or bottom or left or right
    if padded or out is None:
        target = np.zeros((n, c, h + top + bottom, w + left + right), g.dtype)
    else:
        target = out
        target.fill(0)
    for hit, (i, j) in zip(hits, win.offsets(), strict=True):
        if win.strided and win.disjoint:
            np.multiply(g, hit, out=target[:, :, win.rows[i], win.cols[j]])
        elif win.strided:
            target[:, :, win.rows[i], win.cols[j]] += g * hit
        else:
            rows, cols = win.rows[i], win.cols[j]
            np.add.at(target, (slice(None), slice(None), rows[:, None], cols[None, :]), g * hit)
    if not padded:
        return target
    inner = target[:, :, top : top + h, left : left + w]
    if out is None:
        return np.ascontiguousarray(inner)
    np.copyto(out, inner)
    return out


def _gather_at_argmax(x: np.ndarray, h: np.ndarray, win: _Windows, out: np.ndarray | None) -> np.ndarray:
    hits = _first_max_hits(_pad(x, win.padding, -np.inf), win)
    hp = _pad(h, win.padding)
    result = np.empty((*x.shape[:2], *win.out_hw), h.dtype) if out is None else out
    offsets = win.offsets()
    np.multiply(win.take(hp, *offsets[0]), hits[0], out=result)
    for hit, (i, j) in zip(hits[1:], offsets[1:], strict=True):
        result += win.take(hp, i, j) * hit
    return result


def _define_max_pool_family(
    name: str, infer: Callable[..., TensorType], windows: Callable[..., _Windows]
) -> None:
    """Declare ``name``, ``name_backward`` and ``name_gather`` for one way of placing windows."""
    backward, gather = f"{name}_backward", f"{name}_gather"

    def infer_pair(x: TensorType, other: TensorType, *, like_input: bool, **attrs: Any) -> TensorType:
        """``like_input``: ``other`` is pooled-shaped and the result input-shaped (backward); else the reverse."""
        pooled = infer(x, **attrs)
        other_should_be, result = (pooled, x) if like_input else (x, pooled)
        if not _same_where_known(other.shape, other_should_be.shape):
            raise ValueError(f"the second operand must have shape {format_shape(other_should_be.shape)}")
        if other.dtype != x.dtype:
            raise DTypeRuleError(f"dtypes differ: {x.dtype} and {other.dtype} (cast one of them)")
        return TensorType(result.shape, x.dtype)

    def forward_kernel(x: np.ndarray, out: np.ndarray | None = None, **attrs: Any) -> np.ndarray:
        return _max_windows(x, windows(x.shape, **attrs), out)

    def backward_kernel(
        x: np.ndarray, g: np.ndarray, out: np.ndarray | None = None, **attrs: Any
    ) -> np.ndarray:
        return _scatter_to_argmax(x, g, windows(x.shape, **attrs), out)

    def gather_kernel(
        x: np.ndarray, h: np.ndarray, out: np.ndarray | None = None, **attrs: Any
    ) -> np.ndarray:
        return _gather_at_argmax(x, h, windows(x.shape, **attrs), out)

    define_op(
        name,
        infer=infer,
        kernel=forward_kernel,
        out_arg=True,
        grad=lambda g, out, x, **attrs: (apply(backward, x, g, **attrs),),
        doc="Maximum over each pooling window.",
    )
    define_op(
        backward,
        infer=lambda x, g, **attrs: infer_pair(x, g, like_input=True, **attrs),
        kernel=backward_kernel,
        out_arg=True,
        grad=lambda gg, out, x, g, **attrs: (None, apply(gather, x, gg, **attrs)),
        doc=f"Gradient of {name}: each window's cotangent goes to the window's first maximum in ``x``.",
    )
    define_op(
        gather,
        infer=lambda x, h, **attrs: infer_pair(x, h, like_input=False, **attrs),
        kernel=gather_kernel,
        out_arg=True,
        grad=lambda gg, out, x, h, **attrs: (None, apply(backward, x, gg, **attrs)),
        doc=f"``h`` read at the first maximum of each window of ``x`` (adjoint of {backward}).",
    )


def _check_pool_input(x: TensorType) -> None:
    _check_4d(("input", x))
    require_float(x)


def _max_pool_infer(
    x: TensorType, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> TensorType:
    _check_pool_input(x)
    out = [
        _pool_out_size(x.shape[2 + a], kernel_size[a], stride[a], padding[a], dilation[a], ceil_mode)
        for a in range(2)
    ]
    return TensorType((*x.shape[:2], *out), x.dtype)


def _max_pool_windows(
    shape: tuple[int, ...], kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool
) -> _Windows:
    return _regular_windows(tuple(shape[2:]), kernel_size, stride, padding, dilation, ceil_mode)


_define_max_pool_family("max_pool2d", _max_pool_infer, _max_pool_windows)


def _adaptive_infer(x: TensorType, output_size: Pair) -> TensorType:
    _check_pool_input(x)
    return TensorType((*x.shape[:2], *output_size), x.dtype)


def _adaptive_max_windows(shape: tuple[int, ...], output_size: Pair) -> _Windows:
    return _adaptive_windows(tuple(shape[2:]), output_size)


_define_max_pool_family("adaptive_max_pool2d", _adaptive_infer, _adaptive_max_windows)


# ============================================================================= average pooling
def _avg_pool_infer(
    x: TensorType, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool, count_include_pad: bool
) -> TensorType:
    return _max_pool_infer(x, kernel_size, stride, padding, (1, 1), ceil_mode)


@functools.lru_cache(maxsize=256)
def _avg_divisor(
    size: Pair, kernel: Pair, stride: Pair, padding: Pair, out_hw: Pair, count_include_pad: bool, dtype: str
) -> np.ndarray:
    """``1 / window size`` per output position, counted as PyTorch does (``(H_out, W_out)``)."""
    lengths = []
    for a in range(2):
        start = np.arange(out_hw[a]) * stride[a] - padding[a]
        end = np.minimum(start + kernel[a], size[a] + padding[a])  # ceil-mode overhang is never counted
        if count_include_pad:
            lengths.append(end - start)
        else:
            lengths.append(np.minimum(end, size[a]) - np.maximum(start, 0))
    inverse = 1.0 / np.outer(lengths[0], lengths[1]).astype(np.float64)
    inverse = inverse.astype(dtype)
    inverse.setflags(write=False)
    return inverse


def _avg_setup(
    shape: tuple[int, ...],
    dtype: np.dtype,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    ceil_mode: bool,
    count_include_pad: bool,
) -> tuple[_Windows, np.ndarray]:
    win = _regular_windows(tuple(shape[2:]), kernel_size, stride, padding, (1, 1), ceil_mode)
    divisor = _avg_divisor(
        tuple(shape[2:]), kernel_size, stride, padding, win.out_hw, count_include_pad, np.dtype(dtype).name
    )
    return win, divisor


def _avg_pool_kernel(x: np.ndarray, out: np.ndarray | None = None, **attrs: Any) -> np.ndarray:
    win, inverse = _avg_setup(x.shape, x.dtype, **attrs)
    xp = _pad(x, win.padding)
    result = np.empty((*x.shape[:2], *win.out_hw), x.dtype) if out is None else out
    first, *rest = win.offsets()
    np.copyto(result, win.take(xp, *first))
    for i, j in rest:
        np.add(result, win.take(xp, i, j), out=result)
    np.multiply(result, inverse, out=result)
    return result


def _avg_pool_backward_infer(g: TensorType, size: tuple[Dim, Dim], **attrs: Any) -> TensorType:
    _check_pool_input(g)
    x = TensorType((*g.shape[:2], *size), g.dtype)
    pooled = _avg_pool_infer(x, **attrs)
    if not _same_where_known(pooled.shape, g.shape):
        raise ValueError(f"an input of size {tuple(size)} pools to {pooled.shape[2:]}, not {g.shape[2:]}")
    return x


def _avg_pool_backward_kernel(
    g: np.ndarray, size: Pair, out: np.ndarray | None = None, **attrs: Any
) -> np.ndarray:
    n, c = g.shape[:2]
    win, inverse = _avg_setup((n, c, *size), g.dtype, **attrs)
    share = g * inverse
    top, bottom, left, right = win.padding
    padded = top or bottom or left or right
    if padded or out is None:
        target = np.zeros((n, c, size[0] + top + bottom, size[1] + left + right), g.dtype)
    else:
        target = out
        target.fill(0)
    for i, j in win.offsets():
        view = target[:, :, win.rows[i], win.cols[j]]
        if win.disjoint:
            np.copyto(view, share)
        else:
            view += share
    if not padded:
        return target
    inner = target[:, :, top : top + size[0], left : left + size[1]]
    if out is None:
        return np.ascontiguousarray(inner)
    np.copyto(out, inner)
    return out


define_op(
    "avg_pool2d",
    infer=_avg_pool_infer,
    kernel=_avg_pool_kernel,
    out_arg=True,
    grad=lambda g, out, x, **attrs: (apply("avg_pool2d_backward", g, size=tuple(x.shape[2:]), **attrs),),
    doc="Mean over each pooling window (PyTorch's divisor rules for padding and ceil_mode).",
)
define_op(
    "avg_pool2d_backward",
    infer=_avg_pool_backward_infer,
    kernel=_avg_pool_backward_kernel,
    out_arg=True,
    shape_attrs=("size",),
    grad=lambda gg, out, g, size, **attrs: (apply("avg_pool2d", gg, **attrs),),
    doc="Gradient of avg_pool2d: each window's cotangent spread evenly over it (adjoint of avg_pool2d).",
)


# ----------------------------------------------------------------------------- adaptive average pooling
@functools.lru_cache(maxsize=256)
def _bin_average_matrix(size: int, out: int, dtype: str) -> np.ndarray:
    """``(out, size)`` matrix whose row ``i`` averages bin ``i``."""
    starts, ends = adaptive_bins(size, out)
    matrix = np.zeros((out, size), np.float64)
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        matrix[i, s:e] = 1.0 / (e - s)
    matrix = matrix.astype(dtype)
    matrix.setflags(write=False)
    return matrix


def _adaptive_avg_kernel(x: np.ndarray, output_size: Pair, out: np.ndarray | None = None) -> np.ndarray:
    n, c, h, w = x.shape
    oh, ow = output_size
    if (oh, ow) == (1, 1):
        result = np.mean(x, axis=(2, 3), keepdims=True, out=out)
    elif h % oh == 0 and w % ow == 0:
        result = np.mean(x.reshape(n, c, oh, h // oh, ow, w // ow), axis=(3, 5), out=out)
    else:
        rows = _bin_average_matrix(h, oh, x.dtype.name)
        cols = _bin_average_matrix(w, ow, x.dtype.name)
        result = blas.matmul(blas.matmul(rows, x), cols.T, out=out)
    return result


def _adaptive_avg_backward_infer(g: TensorType, size: tuple[Dim, Dim], output_size: Pair) -> TensorType:
    _check_pool_input(g)
    if not _same_where_known(g.shape[2:], output_size):
        raise ValueError(f"the gradient's spatial size {g.shape[2:]} is not the pooled size {output_size}")
    return TensorType((*g.shape[:2], *size), g.dtype)


def _adaptive_avg_backward_kernel(
    g: np.ndarray, size: Pair, output_size: Pair, out: np.ndarray | None = None
) -> np.ndarray:
    rows = _bin_average_matrix(size[0], output_size[0], g.dtype.name)
    cols = _bin_average_matrix(size[1], output_size[1], g.dtype.name)
    return blas.matmul(blas.matmul(rows.T, g), cols, out=out)


define_op(
    "adaptive_avg_pool2d",
    infer=_adaptive_infer,
    kernel=_adaptive_avg_kernel,
    out_arg=True,
    grad=lambda g, out, x, output_size: (
        apply("adaptive_avg_pool2d_backward", g, size=tuple(x.shape[2:]), output_size=output_size),
    ),
    doc="Mean over PyTorch's adaptive bins, to a fixed output size.",
)
define_op(
    "adaptive_avg_pool2d_backward",
    infer=_adaptive_avg_backward_infer,
    kernel=_adaptive_avg_backward_kernel,
    out_arg=True,
    shape_attrs=("size",),
    grad=lambda gg, out, g, size, output_size: (apply("adaptive_avg_pool2d", gg, output_size=output_size),),
    doc="Gradient of adaptive_avg_pool2d (its adjoint).",
)


# ============================================================================= public pooling functions
def _pool_attrs(
    kernel_size: IntOrPair, stride: IntOrPair | None, padding: IntOrPair, dilation: IntOrPair, limit: str
) -> tuple[Pair, Pair, Pair, Pair]:
    kernel = _pair(kernel_size, "kernel_size", 1)
    strides = kernel if stride is None or stride == () or stride == [] else _pair(stride, "stride", 1)
    pads = _pair(padding, "padding")
    dilations = _pair(dilation, "dilation", 1)
    for a in range(2):
        span = _effective(kernel[a], dilations[a]) if limit == "effective" else kernel[a]
        if 2 * pads[a] > span:
            raise ValueError(
                f"padding {pads} must be at most half of the {'effective ' * (limit == 'effective')}"
                f"kernel size {kernel} (as in PyTorch)"
            )
    return kernel, strides, pads, dilations


def max_pool2d(
    x: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """Max pooling over NCHW windows, as PyTorch (stride defaults to the kernel size; padding is -inf).

    The gradient goes to the first maximum of each window (PyTorch's tie rule).

    Example:
        >>> import asg.core as ag
        >>> ag.max_pool2d(ag.input("x", ("B", 6, 28, 28)), 2).shape
        ('B', 6, 14, 14)
    """
    x = as_tensor(x)

    def attrs() -> dict[str, Any]:
        kernel, strides, pads, dilations = _pool_attrs(kernel_size, stride, padding, dilation, "effective")
        return dict(
            kernel_size=kernel, stride=strides, padding=pads, dilation=dilations, ceil_mode=bool(ceil_mode)
        )

    return _build("max_pool2d", (x,), attrs)


def avg_pool2d(
    x: Any,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Tensor:
    """Average pooling over NCHW windows, as PyTorch (including its divisors for padding and ceil_mode).

    Example:
        >>> import asg.core as ag
        >>> ag.avg_pool2d(ag.input("x", ("B", 3, 7, 7)), 3, stride=2, padding=1).shape
        ('B', 3, 4, 4)
    """
    x = as_tensor(x)

    def attrs() -> dict[str, Any]:
        kernel, strides, pads, _ = _pool_attrs(kernel_size, stride, padding, 1, "kernel")
        return dict(
            kernel_size=kernel,
            stride=strides,
            padding=pads,
            ceil_mode=bool(ceil_mode),
            count_include_pad=bool(count_include_pad),
        )

    return _build("avg_pool2d", (x,), attrs)


def _adaptive_size(x: Tensor, output_size: int | Sequence[int | None]) -> dict[str, Any]:
    if isinstance(output_size, Sequence) and not isinstance(output_size, str) and len(output_size) == 2:
        sizes = [x.shape[2 + a] if s is None and x.ndim == 4 else s for a, s in enumerate(output_size)]
        if any(not isinstance(s, int) for s in sizes):
            raise ValueError(
                f"output_size must hold static ints (or None to keep a static input size), "
                f"got {output_size!r}"
            )
        output_size = (int(sizes[0]), int(sizes[1]))
    return dict(output_size=_pair(output_size, "output_size", 1))


def adaptive_avg_pool2d(x: Any, output_size: int | Sequence[int | None]) -> Tensor:
    """Average over PyTorch's adaptive bins so the output is ``output_size`` (``None`` keeps a dim).

    Example:
        >>> import asg.core as ag
        >>> ag.adaptive_avg_pool2d(ag.input("x", ("B", 512, 7, 7)), 1).shape
        ('B', 512, 1, 1)
    """
    x = as_tensor(x)
    return _build("adaptive_avg_pool2d", (x,), lambda: _adaptive_size(x, output_size))


def adaptive_max_pool2d(x: Any, output_size: int | Sequence[int | None]) -> Tensor:
    """Maximum over PyTorch's adaptive bins so the output is ``output_size`` (``None`` keeps a dim).

    Example:
        >>> import asg.core as ag
        >>> ag.adaptive_max_pool2d(ag.input("x", ("B", 8, 10, 9)), (3, 4)).shape
        ('B', 8, 3, 4)
    """
    x = as_tensor(x)
    return _build("adaptive_max_pool2d", (x,), lambda: _adaptive_size(x, output_size))


__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_bins",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "max_pool2d",
]
