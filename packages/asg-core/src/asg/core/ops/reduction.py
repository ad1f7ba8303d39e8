"""Reductions over axes: sum, mean, max, min, argmax, argmin, var, logsumexp."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError
from ..registry import REDUCTION, TensorType, define_op
from ..shapes import dim_prod, format_shape, normalize_axes, normalize_axis
from ..tensor import Tensor, apply, as_tensor, tensor_method
from ._rules import require_float
from .elementwise import abs, cast, exp, log, where
from .shape import broadcast_to, reshape, stop_gradient

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
    if not keepdims:
        g = reshape(g, tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
    return broadcast_to(g, x.shape)


def _accumulator(dtype: np.dtype) -> type | None:
    """The dtype a sum over ``dtype`` accumulates in: float32 for float16 (whose range ends at 65504),
    int64 for bool, the input's own for other ints and floats."""
    if dtype == np.bool_:
        return np.int64
    if dtype == np.float16:
        return np.float32
    return dtype if dtype.kind in "iu" else None  # numpy would widen int32 to int64


def _accumulated(
    reduce: Callable[..., np.ndarray],
    x: np.ndarray,
    axes: tuple[int, ...],
    keepdims: bool,
    out: np.ndarray | None,
) -> np.ndarray:
    """``reduce`` (np.sum or np.mean) accumulating in :func:`_accumulator`'s dtype, the result in x's dtype."""
    acc = _accumulator(x.dtype)
    if acc is np.float32:
        result = reduce(x, axis=axes, keepdims=keepdims, dtype=acc)
        if out is None:
            return result.astype(x.dtype)
        np.copyto(out, result, casting="same_kind")
        return out
    return reduce(x, axis=axes, keepdims=keepdims, out=out, dtype=acc)


def _sum_kernel(
    x: np.ndarray, axes: tuple[int, ...], keepdims: bool, out: np.ndarray | None = None
) -> np.ndarray:
    return _accumulated(np.sum, x, axes, keepdims, out)


define_op(
    "sum",
    traits=(REDUCTION,),
    infer=_reduce_infer,
    kernel=_sum_kernel,
    out_arg=True,
    grad=lambda g, out, x, axes, keepdims: (expand_reduced(g, x, axes, keepdims),),
)


def _mean_kernel(
    x: np.ndarray, axes: tuple[int, ...], keepdims: bool, out: np.ndarray | None = None
) -> np.ndarray:
    return _accumulated(np.mean, x, axes, keepdims, out)  # x is float: the accumulator is float32 or None


def _mean_infer(x: TensorType, axes: tuple[int, ...], keepdims: bool) -> TensorType:
    require_float(x)
    return _reduce_infer(x, axes, keepdims)


def _mean_grad(g: Tensor, out: Tensor, x: Tensor, axes: tuple[int, ...], keepdims: bool) -> tuple[Tensor]:
    n = element_count(x, axes)
    spread = expand_reduced(g, x, axes, keepdims)
    return (spread * (1.0 / n) if not isinstance(n, Tensor) else spread / n,)


define_op(
    "mean",
    traits=(REDUCTION,),
    infer=_mean_infer,
    kernel=_mean_kernel,
    out_arg=True,
    grad=_mean_grad,
    doc="Mean over ``axes``; float16 accumulates in float32.",
)


def _extreme_grad(g: Tensor, out: Tensor, x: Tensor, axes: tuple[int, ...], keepdims: bool) -> tuple[Tensor]:
    # Ties share the gradient equally, as in PyTorch. A group holding NaN has NaN as its extreme; the
    # NaN entries are the ones that produced it and share the gradient (as torch.max does), so NaN == NaN
    # counts as a hit: otherwise no entry matches and 0 / 0 makes the whole gradient NaN.
    extreme = expand_reduced(out, x, axes, keepdims)
    hit = cast((x == extreme) | ((x != x) & (extreme != extreme)), x.dtype)
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


def _arg_infer(x: TensorType, axis: int, keepdims: bool, index_dtype: str = "int64") -> TensorType:
    axis = normalize_axis(axis, x.ndim)
    if index_dtype not in ("int32", "int64"):  # int32 where a backend narrows index dtypes, as JAX's
        raise ValueError(f"index_dtype must be 'int32' or 'int64', got {index_dtype!r}")
    return TensorType(_reduced_shape(x, (axis,), keepdims), index_dtype)


def _arg_kernel(find):
    def kernel(x: np.ndarray, axis: int, keepdims: bool, index_dtype: str = "int64") -> np.ndarray:
        return find(x, axis=axis, keepdims=keepdims).astype(index_dtype, copy=False)

    return kernel


define_op(
    "argmax",
    traits=(REDUCTION,),
    infer=_arg_infer,
    differentiable=False,
    kernel=_arg_kernel(np.argmax),
)
define_op(
    "argmin",
    traits=(REDUCTION,),
    infer=_arg_infer,
    differentiable=False,
    kernel=_arg_kernel(np.argmin),
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


@tensor_method
def sum(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (all by default): (B, T) -> (B,) for axis=1; float16 accumulates in float32.

    >>> import asg.core as ag
    >>> ag.sum(ag.input("x", ("B", 3)), axis=1).shape
    ('B',)
    """
    x = as_tensor(x)
    return apply("sum", x, axes=_axes(x, axis, "sum"), keepdims=bool(keepdims))


def element_count(x: Tensor, axes: tuple[int, ...], dtype: str | None = None) -> Tensor | float:
    """How many elements ``axes`` of ``x`` hold: a Python number when static, else a runtime scalar."""
    n = dim_prod(x.shape[a] for a in axes)
    if isinstance(n, int):
        return n
    return apply("count", x, axes=axes, dtype=dtype or x.dtype)


def unbiased_ratio(x: Tensor, axes: tuple[int, ...], correction: float) -> Tensor | float:
    """``n / (n - correction)`` for the ``n`` elements over ``axes``, in ``x``'s dtype.

    Counted in float32 (float64 for float64 input) so that float16 does not overflow at n > 65504.
    """
    n = element_count(x, axes, "float64" if x.dtype == "float64" else "float32")
    if not isinstance(n, Tensor):
        return n / (n - correction) if n != correction else float("inf")  # var is then NaN, as in torch
    return cast(n / (n - correction), x.dtype)


@tensor_method
def mean(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (all by default), dims may be symbolic: (B, T) -> (B,) for axis=1.

    float16 accumulates in float32: the mean of 100,000 float16 ones is 1.0.

    >>> import asg.core as ag
    >>> ag.input("x", ("B", "T")).mean(axis=1).shape
    ('B',)
    """
    x = as_tensor(x)
    require_float_tensor(x, "mean")
    return apply("mean", x, axes=_axes(x, axis, "mean"), keepdims=bool(keepdims))


@tensor_method
def var(x: Any, axis: Axes = None, keepdims: bool = False, correction: int = 0) -> Tensor:
    """Variance over ``axis``, ``correction=1`` unbiased: (B, T) -> (B,) for axis=1.

    >>> import asg.core as ag
    >>> ag.var(ag.input("x", ("B", 8)), axis=1, correction=1).shape
    ('B',)
    """
    x = as_tensor(x)
    require_float_tensor(x, "var")
    axes = _axes(x, axis, "var")
    centered = x - mean(x, axes, keepdims=True)
    biased = mean(centered * centered, axes, keepdims)
    return biased if not correction else biased * unbiased_ratio(x, axes, correction)


@tensor_method
def max(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis`` (torch's ``amax``), ties share the gradient: (B, T) -> (B,) for axis=1."""
    x = as_tensor(x)
    return apply("max", x, axes=_axes(x, axis, "max"), keepdims=bool(keepdims))


@tensor_method
def min(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """Minimum over ``axis`` (torch's ``amin``), ties share the gradient: (B, T) -> (B,) for axis=1."""
    x = as_tensor(x)
    return apply("min", x, axes=_axes(x, axis, "min"), keepdims=bool(keepdims))


@tensor_method
def argmax(x: Any, axis: int = -1, keepdims: bool = False) -> Tensor:
    """Index of the maximum along ``axis`` (int64): (B, C) -> (B,) for axis=-1."""
    x = as_tensor(x)
    return apply("argmax", x, axis=_axis(x, axis, "argmax"), keepdims=bool(keepdims), index_dtype="int64")


@tensor_method
def argmin(x: Any, axis: int = -1, keepdims: bool = False) -> Tensor:
    """Index of the minimum along ``axis`` (int64): (B, C) -> (B,) for axis=-1."""
    x = as_tensor(x)
    return apply("argmin", x, axis=_axis(x, axis, "argmin"), keepdims=bool(keepdims), index_dtype="int64")


@tensor_method
def logsumexp(x: Any, axis: Axes = None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over ``axis``, computed stably: (B, C) -> (B,) for axis=1.

    A group of all ``-inf`` gives ``-inf``; one holding ``+inf`` gives ``inf`` (as in PyTorch).

    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", (2, 2))
    >>> ag.compile(ag.logsumexp(x, axis=1))(np.array([[-np.inf, -np.inf], [0.0, np.inf]], "float32")).tolist()
    [-inf, inf]
    """
    x = as_tensor(x)
    axes = _axes(x, axis, "logsumexp")
    m = stop_gradient(max(x, axes, keepdims=True))
    # An infinite maximum would give inf - inf = NaN below; shifting by 0 there is exact.
    m = where(abs(m) < float("inf"), m, 0.0)
    out = log(sum(exp(x - m), axes, keepdims=True)) + m
    return out if keepdims else reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))


# ----------------------------------------------------------------------------- scans
def _cumsum_infer(x: TensorType, axis: int, reverse: bool) -> TensorType:
    if x.dtype == "bool":
        return TensorType(x.shape, "int64")
    return x


def _cumsum_kernel(x: np.ndarray, axis: int, reverse: bool, out: np.ndarray | None = None) -> np.ndarray:
    acc = _accumulator(x.dtype)
    if reverse:
        x = np.flip(x, axis)
    result = np.cumsum(x, axis=axis, dtype=acc)
    if reverse:
        result = np.flip(result, axis)
    dtype = np.int64 if x.dtype == np.bool_ else x.dtype
    if out is None:
        return result.astype(dtype, copy=False)
    np.copyto(out, result, casting="same_kind")
    return out


define_op(
    "cumsum",
    infer=_cumsum_infer,
    kernel=_cumsum_kernel,
    out_arg=True,
    grad=lambda g, out, x, axis, reverse: (apply("cumsum", g, axis=axis, reverse=not reverse),),
    doc="Running sum along ``axis`` (from the end when ``reverse``); the gradient is the reverse cumsum.",
)


@tensor_method
def cumsum(x: Any, axis: int = -1, reverse: bool = False) -> Tensor:
    """Running sum along ``axis`` (``torch.cumsum``), from the end if ``reverse``: (*) -> (*).

    The gradient is the cumulative sum in the other direction.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", ("T",))
    >>> ag.compile(x.cumsum())(np.array([1.0, 2.0, 3.0], "float32")).tolist()
    [1.0, 3.0, 6.0]
    """
    x = as_tensor(x)
    return apply("cumsum", x, axis=_axis(x, axis, "cumsum"), reverse=bool(reverse))


def require_float_tensor(x: Tensor, what: str) -> None:
    """Raise :class:`~asg.core.errors.DTypeError` unless ``x`` is a floating-point tensor.

    The message starts with ``what`` (the op or function name) and names the tensor and its shape.

    >>> import asg.core as ag
    >>> require_float_tensor(ag.input("x", (2,)), "softmax")  # float32: nothing to say
    >>> require_float_tensor(ag.input("i", (2,), "int64"), "softmax")
    Traceback (most recent call last):
    ...
    asg.core.errors.DTypeError: softmax: i (2,): expected a floating-point tensor, got int64 (cast it with .astype('float32'))
    """
    try:
        require_float(TensorType(x.shape, x.dtype))
    except ValueError as err:
        raise DTypeError(f"{what}: {x.node.label} {format_shape(x.shape)}: {err}") from None
