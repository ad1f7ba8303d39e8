"""Reductions over axes: sum, mean, max, min, argmax, argmin, var, logsumexp."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..registry import REDUCTION, TensorType, define_op
from ..shapes import dim_prod, format_shape, normalize_axes, normalize_axis
from ..tensor import Tensor, apply, as_tensor
from ._rules import require_float

Axes = int | Sequence[int] | None


def _reduced_shape(x: TensorType, axes: tuple[int, ...], keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def _reduce_infer(x: TensorType, axes: tuple[int, ...], keepdims: bool) -> TensorType:
    for a in axes:
        normalize_axis(a, x.ndim)
    dtype = "int64" if x.dtype == "bool" else x.dtype
    return TensorType(_reduced_shape(x, axes, keepdims), dtype)


def expand_reduced(g: Tensor, x: Tensor, axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """Broadcast a reduction's cotangent back over the reduced axes of ``x``."""
    from .shape import broadcast_to, reshape

    if not keepdims:
        g = reshape(g, tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
    return broadcast_to(g, x.shape)


def _sum_kernel(
    x: np.ndarray, axes: tuple[int, ...], keepdims: bool, out: np.ndarray | None = None
) -> np.ndarray:
    return np.sum(x, axis=axes, keepdims=keepdims, out=out, dtype=np.int64 if x.dtype == np.bool_ else None)


define_op(
    "sum",
    traits=(REDUCTION,),
    infer=_reduce_infer,
    kernel=_sum_kernel,
    out_arg=True,
    grad=lambda g, out, x, axes, keepdims: (expand_reduced(g, x, axes, keepdims),),
)


def _extreme_grad(g: Tensor, out: Tensor, x: Tensor, axes: tuple[int, ...], keepdims: bool) -> tuple[Tensor]:
    # Ties share the gradient equally, as PyTorch does for full reductions.
    from .elementwise import cast

    hit = cast(x == expand_reduced(out, x, axes, keepdims), x.dtype)
    share = hit / sum(hit, axes, keepdims=True)
    return (expand_reduced(g, x, axes, keepdims) * share,)


def _max_kernel(
    x: np.ndarray, axes: tuple[int, ...], keepdims: bool, out: np.ndarray | None = None
) -> np.ndarray:
    return np.max(x, axis=axes, keepdims=keepdims, out=out)


def _min_kernel(
    x: np.ndarray, axes: tuple[int, ...], keepdims: bool, out: np.ndarray | None = None
) -> np.ndarray:
    return np.min(x, axis=axes, keepdims=keepdims, out=out)


def _nonempty_infer(x: TensorType, axes: tuple[int, ...], keepdims: bool) -> TensorType:
    for a in axes:
        if x.shape[a] == 0:
            raise ValueError(f"cannot reduce over axis {a} of size 0")
    return _reduce_infer(x, axes, keepdims)


define_op(
    "max", traits=(REDUCTION,), infer=_nonempty_infer, kernel=_max_kernel, out_arg=True, grad=_extreme_grad
)
define_op(
    "min", traits=(REDUCTION,), infer=_nonempty_infer, kernel=_min_kernel, out_arg=True, grad=_extreme_grad
)


def _arg_infer(x: TensorType, axis: int, keepdims: bool) -> TensorType:
    axis = normalize_axis(axis, x.ndim)
    return TensorType(_reduced_shape(x, (axis,), keepdims), "int64")


define_op(
    "argmax",
    traits=(REDUCTION,),
    infer=_arg_infer,
    differentiable=False,
    kernel=lambda x, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims),
)
define_op(
    "argmin",
    traits=(REDUCTION,),
    infer=_arg_infer,
    differentiable=False,
    kernel=lambda x, axis, keepdims: np.argmin(x, axis=axis, keepdims=keepdims),
)


def _count_infer(x: TensorType, axes: tuple[int, ...], dtype: str) -> TensorType:
    return TensorType((), dtype)


define_op(
    "count",
    infer=_count_infer,
    differentiable=False,
    kernel=lambda x, axes, dtype: np.asarray(int(np.prod([x.shape[a] for a in axes])), dtype),
    doc="Number of elements over ``axes`` of the input's runtime shape (for symbolic shapes).",
)


# ----------------------------------------------------------------------------- public functions
def _axes(x: Tensor, axis: Axes, op: str) -> tuple[int, ...]:
    try:
        return normalize_axes(axis, x.ndim)
    except ValueError as err:
        raise ShapeError(f"{op}: {x.node.label} {format_shape(x.shape)}: {err}") from None


def _axis(x: Tensor, axis: int, op: str) -> int:
    try:
        return normalize_axis(axis, x.ndim)
    except ValueError as err:
        raise ShapeError(f"{op}: {x.node.label} {format_shape(x.shape)}: {err}") from None


def sum(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (all axes by default).

    >>> import asg.core as ag
    >>> ag.sum(ag.input("x", ("B", 3)), axis=1).shape
    ('B',)
    """
    x = as_tensor(x)
    return apply("sum", x, axes=_axes(x, axis, "sum"), keepdims=bool(keepdims))


def element_count(x: Tensor, axes: tuple[int, ...]) -> Tensor | float:
    """How many elements ``axes`` of ``x`` hold: a Python number when static, else a runtime scalar."""
    n = dim_prod(x.shape[a] for a in axes)
    if isinstance(n, int):
        return n
    return apply("count", x, axes=axes, dtype=x.dtype)


def mean(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (all axes by default); works with symbolic dimensions."""
    x = as_tensor(x)
    require_float_tensor(x, "mean")
    axes = _axes(x, axis, "mean")
    n = element_count(x, axes)
    total = sum(x, axes, keepdims)
    return total * (1.0 / n) if not isinstance(n, Tensor) else total / n


def var(x: Any, axis: Axes = None, keepdims: bool = False, correction: int = 0) -> Tensor:
    """Variance over ``axis``; ``correction=1`` gives the unbiased estimate."""
    x = as_tensor(x)
    axes = _axes(x, axis, "var")
    centered = x - mean(x, axes, keepdims=True)
    sq = sum(centered * centered, axes, keepdims)
    n = element_count(x, axes)
    return sq / (n - correction)


def max(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis``; tied maxima share the gradient."""
    x = as_tensor(x)
    return apply("max", x, axes=_axes(x, axis, "max"), keepdims=bool(keepdims))


def min(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Minimum over ``axis``; tied minima share the gradient."""
    x = as_tensor(x)
    return apply("min", x, axes=_axes(x, axis, "min"), keepdims=bool(keepdims))


def argmax(x: Any, axis: int = -1, keepdims: bool = False) -> Tensor:
    """Index of the maximum along ``axis`` (int64)."""
    x = as_tensor(x)
    return apply("argmax", x, axis=_axis(x, axis, "argmax"), keepdims=bool(keepdims))


def argmin(x: Any, axis: int = -1, keepdims: bool = False) -> Tensor:
    """Index of the minimum along ``axis`` (int64)."""
    x = as_tensor(x)
    return apply("argmin", x, axis=_axis(x, axis, "argmin"), keepdims=bool(keepdims))


def logsumexp(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over ``axis``, computed stably."""
    from .elementwise import exp, log
    from .shape import reshape, stop_gradient

    x = as_tensor(x)
    axes = _axes(x, axis, "logsumexp")
    m = stop_gradient(max(x, axes, keepdims=True))
    out = log(sum(exp(x - m), axes, keepdims=True)) + m
    return out if keepdims else reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def require_float_tensor(x: Tensor, what: str) -> None:
    try:
        require_float(TensorType(x.shape, x.dtype))
    except ValueError as err:
        raise ShapeError(f"{what}: {x.node.label} {format_shape(x.shape)}: {err}") from None
