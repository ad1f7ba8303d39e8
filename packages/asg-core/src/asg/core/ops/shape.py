"""Shape and indexing ops: reshape, transpose, broadcast, sum_to, slicing, concat, pad, gather, one_hot."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..dtypes import dtype_of
from ..errors import DTypeRuleError, ShapeError
from ..registry import MOVEMENT, TensorType, define_op
from ..shapes import (
    Dim,
    Shape,
    broadcast_shapes,
    dim_add,
    dim_div,
    dim_floordiv,
    dim_prod,
    dim_sub,
    dims_differ,
    format_shape,
    normalize_axis,
    normalize_shape,
)
from ..tensor import Tensor, apply, as_tensor, tensor_method
from ._rules import require_indices


# ----------------------------------------------------------------------------- reshape
def _reshape_infer(x: TensorType, shape: Shape) -> TensorType:
    holes = [i for i, d in enumerate(shape) if d == -1]
    if len(holes) > 1:
        raise ValueError(f"only one dimension can be -1, got shape {format_shape(shape)}")
    if any(isinstance(d, int) and d < -1 for d in shape):
        raise ValueError(f"negative dimension in shape {format_shape(shape)}")
    total = dim_prod(x.shape)
    known = dim_prod(d for d in shape if d != -1)
    if holes:
        missing = dim_div(total, known)
        if missing is None:
            if isinstance(total, int) and isinstance(known, int):
                raise ValueError(f"cannot reshape {total} elements into {format_shape(shape)}")
            missing = f"(({total})//({known}))"
        return TensorType(tuple(missing if d == -1 else d for d in shape), x.dtype)
    if dims_differ(total, known):
        raise ValueError(f"cannot reshape {total} elements into {format_shape(shape)} ({known} elements)")
    return TensorType(tuple(shape), x.dtype)


define_op(
    "reshape",
    traits=(MOVEMENT,),
    infer=_reshape_infer,
    view=True,
    shape_attrs=("shape",),
    kernel=lambda x, shape: np.reshape(x, shape),
    grad=lambda g, out, x, shape: (reshape(g, x.shape),),
)


# ----------------------------------------------------------------------------- transpose
def _transpose_infer(x: TensorType, axes: tuple[int, ...]) -> TensorType:
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"axes {axes} are not a permutation of the {x.ndim} axes")
    return TensorType(tuple(x.shape[a] for a in axes), x.dtype)


define_op(
    "transpose",
    traits=(MOVEMENT,),
    infer=_transpose_infer,
    view=True,
    kernel=lambda x, axes: np.transpose(x, axes),
    grad=lambda g, out, x, axes: (permute(g, tuple(int(i) for i in np.argsort(axes))),),
    doc="Permute axes (``x.permute(*axes)``); the public ``transpose`` swaps two.",
)


# ----------------------------------------------------------------------------- broadcast_to / sum_to
def _broadcast_to_infer(x: TensorType, shape: Shape) -> TensorType:
    if len(shape) < x.ndim:
        raise ValueError(f"cannot broadcast to fewer dimensions: target {format_shape(shape)}")
    try:
        result = broadcast_shapes(x.shape, shape)
    except ValueError as err:
        raise ValueError(f"cannot broadcast to {format_shape(shape)}: {err}") from None
    if len(result) != len(shape) or any(
        r != s and not (isinstance(s, str) or isinstance(r, str)) for r, s in zip(result, shape, strict=True)
    ):
        raise ValueError(f"cannot broadcast to {format_shape(shape)}")
    return TensorType(tuple(shape), x.dtype)


define_op(
    "broadcast_to",
    traits=(MOVEMENT,),
    infer=_broadcast_to_infer,
    view=True,
    shape_attrs=("shape",),
    kernel=lambda x, shape: np.broadcast_to(x, shape),
    grad=lambda g, out, x, shape: (sum_to(g, x.shape),),
)


def _sum_to_infer(x: TensorType, shape: Shape) -> TensorType:
    try:
        broadcast_shapes(x.shape, shape)
    except ValueError as err:
        raise ValueError(f"cannot sum to {format_shape(shape)}: {err}") from None
    if len(shape) > x.ndim:
        raise ValueError(f"cannot sum to more dimensions: target {format_shape(shape)}")
    return TensorType(tuple(shape), x.dtype)


def _sum_to_kernel(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1
    )
    return np.sum(x, axis=axes, keepdims=True).reshape(shape)


define_op(
    "sum_to",
    infer=_sum_to_infer,
    shape_attrs=("shape",),
    kernel=_sum_to_kernel,
    view=True,
    grad=lambda g, out, x, shape: (broadcast_to(g, x.shape),),
    doc="Sum a broadcast value back to ``shape`` (the adjoint of broadcast_to).",
)


# ----------------------------------------------------------------------------- slicing
def _slice_len(d: Dim, start: int | None, stop: int | None, step: int) -> Dim:
    if isinstance(d, int):
        return len(range(*slice(start, stop, step).indices(d)))
    begin: Dim = 0 if start is None else (start if start >= 0 else dim_add(d, start))
    end: Dim = d if stop is None else (stop if stop >= 0 else dim_add(d, stop))
    span: Dim = (
        max(end - begin, 0) if isinstance(begin, int) and isinstance(end, int) else dim_sub(end, begin)
    )
    return span if step == 1 else dim_floordiv(dim_add(span, step - 1), step)


def _slice_infer(x: TensorType, index: tuple[tuple[int | None, int | None, int], ...]) -> TensorType:
    if len(index) != x.ndim:
        raise ValueError(f"index has {len(index)} entries for a {x.ndim}-d tensor")
    for start, stop, step in index:
        if step <= 0:
            raise ValueError(f"slice step must be positive, got {step}")
        del start, stop
    return TensorType(tuple(_slice_len(d, *s) for d, s in zip(x.shape, index, strict=True)), x.dtype)


def _as_slices(index: tuple[tuple[int | None, int | None, int], ...]) -> tuple[slice, ...]:
    return tuple(slice(*s) for s in index)


define_op(
    "slice",
    traits=(MOVEMENT,),
    infer=_slice_infer,
    view=True,
    kernel=lambda x, index: x[_as_slices(index)],
    grad=lambda g, out, x, index: (apply("slice_backward", g, shape=x.shape, index=index),),
)


def _slice_backward_infer(g: TensorType, shape: Shape, index: tuple) -> TensorType:
    return TensorType(tuple(shape), g.dtype)


def _slice_backward_kernel(g: np.ndarray, shape: tuple[int, ...], index: tuple) -> np.ndarray:
    out = np.zeros(shape, g.dtype)
    out[_as_slices(index)] = g
    return out


define_op(
    "slice_backward",
    infer=_slice_backward_infer,
    shape_attrs=("shape",),
    kernel=_slice_backward_kernel,
    grad=lambda g, out, gy, shape, index: (apply("slice", g, index=index),),
    doc="Place a slice's cotangent into zeros of the sliced tensor's shape.",
)


# ----------------------------------------------------------------------------- concat / pad
def _concat_infer(*xs: TensorType, axis: int) -> TensorType:
    first = xs[0]
    axis = normalize_axis(axis, first.ndim)
    size: Dim = 0
    for i, t in enumerate(xs):
        if t.ndim != first.ndim:
            raise ValueError(f"input {i} has {t.ndim} dimensions, input 0 has {first.ndim}")
        for a, (d0, d) in enumerate(zip(first.shape, t.shape, strict=True)):
            if a != axis and d0 != d and isinstance(d0, int) and isinstance(d, int):
                raise ValueError(
                    f"input {i} has size {d} on axis {a}, input 0 has {d0} (only axis {axis} may differ)"
                )
        size = dim_add(size, t.shape[axis])
    dtype = xs[0].dtype
    for t in xs:
        if t.dtype != dtype:
            raise DTypeRuleError(f"all inputs must have one dtype, got {dtype} and {t.dtype}")
    return TensorType(tuple(size if a == axis else d for a, d in enumerate(first.shape)), dtype)


def _concat_grad(g: Tensor, out: Tensor, *xs: Tensor, axis: int) -> tuple[Tensor, ...]:
    grads, start = [], 0
    for x in xs:
        stop = dim_add(start, x.shape[axis])
        grads.append(_slice_between(g, axis, start, stop))
        start = stop
    return tuple(grads)


def _slice_between(x: Tensor, axis: int, start: Dim, stop: Dim) -> Tensor:
    return apply("slice_range", x, axis=axis, start=start, stop=stop)


def _slice_range_infer(x: TensorType, axis: int, start: Dim, stop: Dim) -> TensorType:
    span = dim_sub(stop, start)
    return TensorType(tuple(span if a == axis else d for a, d in enumerate(x.shape)), x.dtype)


def _slice_range_kernel(x: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _slice_range_grad(g: Tensor, out: Tensor, x: Tensor, axis: int, start: Dim, stop: Dim) -> tuple[Tensor]:
    before = apply("slice_range", x, axis=axis, start=0, stop=start)
    after = apply("slice_range", x, axis=axis, start=stop, stop=x.shape[axis])
    return (concat([zeros_like(before), g, zeros_like(after)], axis),)


define_op(
    "slice_range",
    infer=_slice_range_infer,
    view=True,
    shape_attrs=("start", "stop"),
    kernel=_slice_range_kernel,
    grad=_slice_range_grad,
    doc="``x[..., start:stop, ...]`` on one axis; bounds may be symbolic (used by concat's gradient).",
)
define_op(
    "concat", infer=_concat_infer, grad=_concat_grad, kernel=lambda *xs, axis: np.concatenate(xs, axis=axis)
)


def _pad_infer(x: TensorType, pad_width: tuple[tuple[int, int], ...], value: float) -> TensorType:
    if len(pad_width) != x.ndim:
        raise ValueError(f"pad_width has {len(pad_width)} entries for a {x.ndim}-d tensor")
    if any(b < 0 or a < 0 for b, a in pad_width):
        raise ValueError(f"padding must be non-negative, got {pad_width}")
    return TensorType(
        tuple(dim_add(dim_add(d, b), a) for d, (b, a) in zip(x.shape, pad_width, strict=True)), x.dtype
    )


def _pad_grad(g: Tensor, out: Tensor, x: Tensor, pad_width: tuple, value: float) -> tuple[Tensor]:
    index = tuple((b, None if a == 0 else -a, 1) for b, a in pad_width)
    return (apply("slice", g, index=index),)


define_op(
    "pad",
    infer=_pad_infer,
    grad=_pad_grad,
    kernel=lambda x, pad_width, value: np.pad(x, pad_width, constant_values=value),
)


# ----------------------------------------------------------------------------- gathers
def _index_select_infer(x: TensorType, idx: TensorType, axis: int) -> TensorType:
    require_indices(idx)
    axis = normalize_axis(axis, x.ndim)
    return TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1 :], x.dtype)


def check_index_range(
    op: str, idx: np.ndarray, size: int, axis: int | None, negative: bool, what: str = "index"
) -> None:
    """Raise ``IndexError`` naming ``op``, the first bad index and the valid range when an index of
    ``idx`` falls outside ``[0, size)`` (``[-size, size)`` when ``negative`` ones count from the end).

    Costs one min and one max over the indices.
    """
    if not idx.size:
        return
    low = -size if negative else 0
    lo, hi = idx.min(), idx.max()
    if lo >= low and hi < size:
        return
    bad = int(lo if lo < low else hi)
    extent = f"{size} entries" if axis is None else f"axis {axis} of size {size}"
    raise IndexError(
        f"{op}: {what} {bad} is out of range for {extent} (valid: {low} to {size - 1}); "
        "check the values fed to this op"
    )


def _index_select_kernel(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    check_index_range("index_select", idx, x.shape[axis], axis, negative=True)
    return np.take(x, idx, axis=axis)


define_op(
    "index_select",
    infer=_index_select_infer,
    kernel=_index_select_kernel,
    grad=lambda g, out, x, idx, axis: (
        apply("index_select_backward", g, idx, axis=axis, shape=x.shape),
        None,
    ),
)


def _index_select_backward_infer(g: TensorType, idx: TensorType, axis: int, shape: Shape) -> TensorType:
    return TensorType(tuple(shape), g.dtype)


def _index_select_backward_kernel(
    g: np.ndarray, idx: np.ndarray, axis: int, shape: tuple[int, ...]
) -> np.ndarray:
    out = np.zeros(shape, g.dtype)
    moved = np.moveaxis(out, axis, 0)
    g_moved = np.moveaxis(g, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
    flat_idx = idx.reshape(-1) % shape[axis]
    rows = g_moved.reshape((flat_idx.size, *moved.shape[1:]))
    if moved.ndim == 2 and flat_idx.size > 4 * moved.shape[0]:
        order = np.argsort(flat_idx, kind="stable")
        sorted_idx = flat_idx[order]
        starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
        moved[sorted_idx[starts]] = np.add.reduceat(rows[order], starts, axis=0)
    else:
        np.add.at(moved, flat_idx, rows)
    return out


define_op(
    "index_select_backward",
    infer=_index_select_backward_infer,
    shape_attrs=("shape",),
    kernel=_index_select_backward_kernel,
    grad=lambda g, out, gy, idx, axis, shape: (index_select(g, idx, axis), None),
    doc="Scatter-add rows of ``g`` into zeros at ``idx`` (the adjoint of index_select).",
)


def _take_along_infer(x: TensorType, idx: TensorType, axis: int) -> TensorType:
    require_indices(idx)
    if idx.ndim != x.ndim:
        raise ValueError(f"indices must have as many dimensions as the input ({x.ndim}), got {idx.ndim}")
    axis = normalize_axis(axis, x.ndim)
    shape = broadcast_shapes(
        tuple(1 if a == axis else d for a, d in enumerate(x.shape)),
        tuple(1 if a == axis else d for a, d in enumerate(idx.shape)),
    )
    return TensorType(tuple(idx.shape[axis] if a == axis else d for a, d in enumerate(shape)), x.dtype)


def _take_along_kernel(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    check_index_range("take_along_axis", idx, x.shape[axis], axis, negative=True)
    return np.take_along_axis(x, idx, axis=axis)


define_op(
    "take_along_axis",
    infer=_take_along_infer,
    kernel=_take_along_kernel,
    grad=lambda g, out, x, idx, axis: (
        apply("take_along_axis_backward", g, idx, axis=axis, shape=x.shape),
        None,
    ),
)


def _take_along_backward_kernel(
    g: np.ndarray, idx: np.ndarray, axis: int, shape: tuple[int, ...]
) -> np.ndarray:
    out = np.zeros(shape, g.dtype)
    full_idx = np.broadcast_to(idx, g.shape)
    grids = list(np.indices(g.shape, sparse=True))
    grids[axis] = full_idx
    np.add.at(out, tuple(grids), g)
    return out


define_op(
    "take_along_axis_backward",
    infer=_index_select_backward_infer,
    shape_attrs=("shape",),
    kernel=_take_along_backward_kernel,
    grad=lambda g, out, gy, idx, axis, shape: (take_along_axis(g, idx, axis), None),
    doc="Scatter-add ``g`` into zeros along ``axis`` at ``idx`` (the adjoint of take_along_axis).",
)


def _one_hot_infer(idx: TensorType, num_classes: int, dtype: str) -> TensorType:
    require_indices(idx)
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return TensorType((*idx.shape, num_classes), dtype)


def _one_hot_kernel(idx: np.ndarray, num_classes: int, dtype: str) -> np.ndarray:
    check_index_range("one_hot", idx, num_classes, None, negative=False, what="class index")
    return (idx[..., None] == np.arange(num_classes)).astype(dtype)


define_op("one_hot", infer=_one_hot_infer, differentiable=False, kernel=_one_hot_kernel)


def _gather_infer(x: TensorType, idx: TensorType, axis: int) -> TensorType:
    require_indices(idx)
    if idx.ndim != x.ndim:
        raise ValueError(f"index must have as many dimensions as the input ({x.ndim}), got {idx.ndim}")
    axis = normalize_axis(axis, x.ndim)
    for a, (dx, di) in enumerate(zip(x.shape, idx.shape, strict=True)):
        if a != axis and isinstance(dx, int) and isinstance(di, int) and di > dx:
            raise ValueError(
                f"index has size {di} on axis {a}, more than the input's {dx} (only axis {axis} may)"
            )
    return TensorType(idx.shape, x.dtype)


def _gather_kernel(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    check_index_range("gather", idx, x.shape[axis], axis, negative=False)
    window = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(idx.shape))
    return np.take_along_axis(x[window], idx, axis=axis)


define_op(
    "gather",
    traits=(MOVEMENT,),
    infer=_gather_infer,
    kernel=_gather_kernel,
    grad=lambda g, out, x, idx, axis: (apply("gather_backward", g, idx, axis=axis, shape=x.shape), None),
    doc="``out[i][j] = x[idx[i][j]][j]`` for axis 0 (``torch.gather``): the output has the index's shape.",
)
define_op(
    "gather_backward",
    infer=_index_select_backward_infer,
    shape_attrs=("shape",),
    kernel=_take_along_backward_kernel,
    grad=lambda g, out, gy, idx, axis, shape: (apply("gather", g, idx, axis=axis), None),
    doc="Scatter-add ``g`` into zeros of ``shape`` along ``axis`` at ``idx`` (the adjoint of gather).",
)


# ----------------------------------------------------------------------------- triangles and ranges
def _triangle_infer(x: TensorType, k: int) -> TensorType:
    if x.ndim < 2:
        raise ValueError(f"expected a matrix or a batch of them (2 or more dimensions), got {x.ndim}")
    return x


def _define_triangle(name: str, kernel: Callable[[np.ndarray, int], np.ndarray], side: str) -> None:
    # Masking is linear and self-adjoint: the gradient is the same mask of g.
    define_op(
        name,
        infer=_triangle_infer,
        kernel=lambda x, k: kernel(x, k),
        grad=lambda g, out, x, k: (apply(name, g, k=k),),
        doc=f"Zero the entries {side} diagonal ``k`` of the last two axes (``torch.{name}``).",
    )


_define_triangle("tril", np.tril, "above")
_define_triangle("triu", np.triu, "below")


def _arange_length(start: Dim, stop: Dim, step: int) -> Dim:
    if isinstance(start, int) and isinstance(stop, int):
        return len(range(start, stop, step))
    if step < 0:
        raise ValueError(f"a symbolic range needs a positive step, got {step}")
    span = dim_sub(stop, start)
    return span if step == 1 else dim_floordiv(dim_add(span, step - 1), step)


def _arange_infer(start: Dim, stop: Dim, step: int, dtype: str) -> TensorType:
    if step == 0:
        raise ValueError("step must not be 0")
    return TensorType((_arange_length(start, stop, step),), dtype)


define_op(
    "arange",
    infer=_arange_infer,
    differentiable=False,
    shape_attrs=("start", "stop"),
    kernel=lambda start, stop, step, dtype: np.arange(start, stop, step, dtype=dtype),
    doc="``start, start + step, ...`` below ``stop``; the bounds may be symbolic dimensions.",
)


# ----------------------------------------------------------------------------- leaves that depend on shape only
def _full_infer(shape: Shape, value: float, dtype: str) -> TensorType:
    return TensorType(tuple(shape), dtype)


define_op(
    "full",
    infer=_full_infer,
    differentiable=False,
    shape_attrs=("shape",),
    kernel=lambda shape, value, dtype: np.full(shape, value, dtype),
)
define_op(
    "stop_gradient",
    traits=(MOVEMENT,),
    infer=lambda x: x,
    differentiable=False,
    view=True,
    kernel=lambda x: x,
    doc="Identity whose gradient is zero.",
)


# ----------------------------------------------------------------------------- public functions
def _dims(args: tuple[Any, ...]) -> Any:
    """``f(x, 2, 3)`` and ``f(x, (2, 3))`` alike: varargs or one sequence."""
    if len(args) == 1 and not isinstance(args[0], (int, str, np.integer)):
        return args[0]
    return args


@tensor_method
def reshape(x: Any, *shape: Dim | Sequence[Dim]) -> Tensor:
    """Same elements, new shape (one dim may be -1): ``x.reshape("B", -1)`` (B, 28, 28) -> (B, 784).

    The shape is given as separate dims or one sequence.

    >>> import asg.core as ag
    >>> ag.reshape(ag.input("x", ("B", 28, 28)), ("B", -1)).shape
    ('B', 784)
    """
    x = as_tensor(x)
    target = normalize_shape(_dims(shape))
    if target == x.shape:
        return x
    return apply("reshape", x, shape=target)


@tensor_method
def flatten(x: Any, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes ``start_axis..end_axis`` into one: (N, C, H, W) -> (N, C*H*W) for start_axis=1."""
    x = as_tensor(x)
    start, end = normalize_axis(start_axis, x.ndim), normalize_axis(end_axis, x.ndim)
    return reshape(x, (*x.shape[:start], dim_prod(x.shape[start : end + 1]), *x.shape[end + 1 :]))


@tensor_method
def squeeze(x: Any, axis: int | Sequence[int] | None = None) -> Tensor:
    """Drop size-1 axes (all of them, or the ones named): (B, 1, T) -> (B, T)."""
    x = as_tensor(x)
    if axis is None:
        axes = {i for i, d in enumerate(x.shape) if d == 1}
    else:
        axes = {normalize_axis(a, x.ndim) for a in ((axis,) if isinstance(axis, int) else axis)}
        for a in axes:
            if x.shape[a] != 1:
                raise ShapeError(
                    f"squeeze: axis {a} of {x.node.label} {format_shape(x.shape)} has size {x.shape[a]}, not 1"
                )
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


@tensor_method
def unsqueeze(x: Any, axis: int) -> Tensor:
    """Insert a size-1 axis at ``axis``: (B, T) -> (B, 1, T) for axis=1."""
    x = as_tensor(x)
    axis = normalize_axis(axis, x.ndim + 1)
    return reshape(x, (*x.shape[:axis], 1, *x.shape[axis:]))


@tensor_method
def permute(x: Any, *axes: int | Sequence[int]) -> Tensor:
    """Reorder the axes (``torch.permute``, numpy's ``transpose(axes)``): (B, T, H) -> (B, H, T) for (0, 2, 1).

    >>> import asg.core as ag
    >>> ag.input("x", ("B", "T", 4)).permute(2, 0, 1).shape
    (4, 'B', 'T')
    """
    x = as_tensor(x)
    order = tuple(normalize_axis(int(a), x.ndim) for a in _dims(axes))
    if order == tuple(range(x.ndim)):
        return x
    return apply("transpose", x, axes=order)


@tensor_method
def transpose(x: Any, *dims: int) -> Tensor:
    """Swap two axes (``torch.transpose``): (B, T, H) -> (B, H, T) for ``x.transpose(1, 2)``.

    With no axes, reverse all of them (``x.T``). For a full reordering use :func:`permute`.

    >>> import asg.core as ag
    >>> x = ag.input("x", ("B", "T", 4))
    >>> x.transpose(1, 2).shape, x.transpose().shape
    (('B', 4, 'T'), (4, 'T', 'B'))
    """
    x = as_tensor(x)
    if not dims:
        return permute(x, tuple(reversed(range(x.ndim))))
    if len(dims) == 1 and not isinstance(dims[0], (int, np.integer)):
        warnings.warn(
            "transpose(x, axes) with a permutation is deprecated: transpose swaps two axes as in "
            "PyTorch; use permute(x, axes)",
            DeprecationWarning,
            stacklevel=2,
        )
        return permute(x, dims[0])
    if len(dims) != 2:
        raise TypeError(
            f"transpose swaps two axes (x.transpose(1, 2), as in PyTorch), got {len(dims)} axes {dims}; "
            f"to reorder all axes use x.permute{tuple(dims)}"
        )
    a, b = (normalize_axis(int(d), x.ndim) for d in dims)
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    return permute(x, order)


@tensor_method
def swapaxes(x: Any, a: int, b: int) -> Tensor:
    """Exchange axes ``a`` and ``b`` (``numpy.swapaxes``, same as ``transpose(x, a, b)``): (B, T, H) -> (B, H, T)."""
    return transpose(x, a, b)


def _reverse_axes(x: Tensor) -> Tensor:
    """All axes reversed: (M, N) -> (N, M)."""
    return transpose(x)


tensor_method(_reverse_axes, name="T", as_property=True)


@tensor_method(name="expand")
def broadcast_to(x: Any, *shape: Dim | Sequence[Dim]) -> Tensor:
    """Broadcast to ``shape`` (NumPy rules; ``x.expand(...)``): (1, T) -> (B, T).

    >>> import asg.core as ag
    >>> ag.broadcast_to(ag.input("b", (1, 4)), ("B", 4)).shape
    ('B', 4)
    """
    x = as_tensor(x)
    target = normalize_shape(_dims(shape))
    if target == x.shape:
        return x
    return apply("broadcast_to", x, shape=target)


def sum_to(x: Any, shape: Sequence[Dim]) -> Tensor:
    """Sum the broadcast axes of ``x`` so that it has ``shape``: (B, T) -> (1, T)."""
    x = as_tensor(x)
    shape = normalize_shape(shape)
    if shape == x.shape:
        return x
    return apply("sum_to", x, shape=shape)


def concat(xs: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis: (B, 3), (B, 5) -> (B, 8) for axis=1."""
    tensors = [as_tensor(x) for x in xs]
    if not tensors:
        raise ValueError("concat needs at least one tensor")
    if len(tensors) == 1:
        return tensors[0]
    return apply("concat", *tensors, axis=normalize_axis(axis, tensors[0].ndim))


def stack(xs: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along a new axis: k tensors (B, T) -> (k, B, T) for axis=0."""
    tensors = [as_tensor(x) for x in xs]
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    axis = normalize_axis(axis, tensors[0].ndim + 1)
    return concat([unsqueeze(t, axis) for t in tensors], axis)


def _split_error(x: Tensor, what: str) -> ShapeError:
    return ShapeError(f"split: {x.node.label} {format_shape(x.shape)}: {what}")


@tensor_method
def split(x: Any, split_size_or_sections: Dim | Sequence[Dim], axis: int = 0) -> list[Tensor]:
    """Cut ``x`` along ``axis`` into a list of pieces (``torch.split``): (B, T, 3*C) -> 3 x (B, T, C).

    An int gives pieces of that size (the last may be smaller); a list gives each piece's size:
    ``x.split(C, axis=-1)`` gives the three above. A symbolic axis splits where the
    sizes divide it (``"3*C"`` into ``"C"`` pieces), or by a list of symbolic sizes.

    >>> import asg.core as ag
    >>> q, k, v = ag.input("qkv", ("B", "T", 12)).split(4, axis=-1)
    >>> q.shape
    ('B', 'T', 4)
    """
    x = as_tensor(x)
    axis = normalize_axis(axis, x.ndim)
    total = x.shape[axis]
    if isinstance(split_size_or_sections, (int, str, np.integer)):
        size = (
            split_size_or_sections if isinstance(split_size_or_sections, str) else int(split_size_or_sections)
        )
        if isinstance(size, int) and size <= 0:
            raise _split_error(x, f"split size must be positive, got {size}")
        if isinstance(total, int) and isinstance(size, int):
            sizes: list[Dim] = [min(size, total - start) for start in range(0, total, size)] or [0]
        else:
            count = dim_div(total, size)
            if not isinstance(count, int):
                raise _split_error(
                    x,
                    f"axis {axis} of size {total} does not divide into pieces of {size}; pass the sizes as a list",
                )
            sizes = [size] * count
    else:
        sizes = list(normalize_shape(split_size_or_sections))
        covered: Dim = 0
        for d in sizes:
            covered = dim_add(covered, d)
        if dims_differ(covered, total) or (
            isinstance(covered, int) and isinstance(total, int) and covered != total
        ):
            raise _split_error(
                x, f"sizes {format_shape(sizes)} add up to {covered}, not axis {axis}'s {total}"
            )
    if len(sizes) == 1:
        return [x]
    pieces, start = [], 0
    for d in sizes:
        stop = dim_add(start, d)
        pieces.append(_slice_between(x, axis, start, stop))
        start = stop
    return pieces


@tensor_method
def chunk(x: Any, chunks: int, axis: int = 0) -> list[Tensor]:
    """Cut ``x`` into ``chunks`` pieces along ``axis`` (``torch.chunk``): (B, T, 3*C) -> 3 x (B, T, C).

    Each piece has ceil(n / chunks) entries (the last may have fewer); a symbolic axis must divide.

    >>> import asg.core as ag
    >>> [p.shape for p in ag.input("x", ("B", "3*C")).chunk(3, axis=1)]
    [('B', 'C'), ('B', 'C'), ('B', 'C')]
    """
    x = as_tensor(x)
    axis = normalize_axis(axis, x.ndim)
    if int(chunks) <= 0:
        raise _split_error(x, f"chunks must be positive, got {chunks}")
    total = x.shape[axis]
    if isinstance(total, int):
        return split(x, max(1, -(-total // int(chunks))), axis)
    size = dim_div(total, int(chunks))
    if size is None:
        raise ShapeError(
            f"chunk: {x.node.label} {format_shape(x.shape)}: symbolic axis {axis} of size {total} does not "
            f"divide into {chunks} equal pieces; use split with explicit sizes"
        )
    return split(x, [size] * int(chunks), axis)


def pad(x: Any, pad_width: Sequence[tuple[int, int]] | int, value: float = 0.0) -> Tensor:
    """Pad with a constant, ``(before, after)`` per axis or one int for all: (H, W) -> (H+2, W+2) for 1."""
    x = as_tensor(x)
    if isinstance(pad_width, int):
        pad_width = [(pad_width, pad_width)] * x.ndim
    widths = tuple((int(b), int(a)) for b, a in pad_width)
    return apply("pad", x, pad_width=widths, value=float(value))


def index_select(x: Any, idx: Any, axis: int = 0) -> Tensor:
    """Entries of ``x`` at integer ``idx`` along ``axis``, negative counting from the end.

    (V, C), (B, T) -> (B, T, C) for axis=0; the gradient scatter-adds. Out-of-range indices raise
    at run time, naming the op and the index.
    """
    x = as_tensor(x)
    return apply("index_select", x, as_tensor(idx, "int64"), axis=normalize_axis(axis, x.ndim))


@tensor_method
def take(x: Any, indices: Any, axis: int | None = None) -> Tensor:
    """``numpy.take`` along ``axis`` (of the flattened ``x`` when None): (V, C), (B, T) -> (B, T, C).

    Negative indices count from the end. This was ``ag.gather`` in asg-core 0.1; ``gather`` is
    now PyTorch's.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", (3, 2))
    >>> ag.compile(x.take(np.array([2, 0]), axis=0))(np.arange(6.0).reshape(3, 2)).tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    """
    x = as_tensor(x)
    if axis is None:
        return index_select(reshape(x, (-1,)), indices, 0)
    return index_select(x, indices, axis)


@tensor_method
def gather(x: Any, dim: int, index: Any = None, *, axis: int | None = None) -> Tensor:
    """``torch.gather``: entries of ``x`` along ``dim`` at ``index``: (B, C), (B, k) -> (B, k) for dim=1.

    ``out[i][j] = x[index[i][j]][j]`` for dim 0: ``index`` has ``x``'s number of dims, is no larger
    on the other axes, and gives the output's shape. The gradient scatter-adds. Indices outside ``[0, x.shape[dim])`` raise at run
    time. The asg-core 0.1 form ``gather(x, idx, axis)`` (numpy's take) still works, with a
    ``DeprecationWarning``: use :func:`take`.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", (2, 3))
    >>> picked = x.gather(1, np.array([[2], [0]]))
    >>> ag.compile(picked)(np.arange(6.0).reshape(2, 3)).tolist()
    [[2.0], [3.0]]
    """
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        warnings.warn(
            "gather(x, idx, axis) is numpy's take: use take(x, idx, axis); gather(x, dim, index) now "
            "follows torch.gather",
            DeprecationWarning,
            stacklevel=2,
        )
        return take(x, dim, (index if index is not None else axis) or 0)
    if index is None:
        raise TypeError("gather(x, dim, index) needs an index tensor")
    x = as_tensor(x)
    return apply("gather", x, as_tensor(index, "int64"), axis=normalize_axis(int(dim), x.ndim))


def take_along_axis(x: Any, idx: Any, axis: int) -> Tensor:
    """``numpy.take_along_axis``: one entry per position along ``axis``, broadcasting: (B, C), (B, 1) -> (B, 1)."""
    x = as_tensor(x)
    return apply("take_along_axis", x, as_tensor(idx, "int64"), axis=normalize_axis(axis, x.ndim))


def one_hot(idx: Any, num_classes: int, dtype: Any = "float32") -> Tensor:
    """One-hot encode integer class indices into a new last axis: (B,) -> (B, num_classes)."""
    return apply("one_hot", as_tensor(idx, "int64"), num_classes=int(num_classes), dtype=dtype_of(dtype))


def full(shape: Sequence[Dim], value: float, dtype: Any = "float32") -> Tensor:
    """A tensor of ``shape`` (which may be symbolic) filled with ``value``."""
    return apply("full", shape=normalize_shape(shape), value=float(value), dtype=dtype_of(dtype))


def zeros(shape: Sequence[Dim], dtype: Any = "float32") -> Tensor:
    """A tensor of zeros of ``shape``."""
    return full(shape, 0.0, dtype)


def ones(shape: Sequence[Dim], dtype: Any = "float32") -> Tensor:
    """A tensor of ones of ``shape``."""
    return full(shape, 1.0, dtype)


def zeros_like(x: Tensor) -> Tensor:
    """Zeros with the shape and dtype of ``x``."""
    return full(x.shape, 0.0, x.dtype)


def ones_like(x: Tensor) -> Tensor:
    """Ones with the shape and dtype of ``x``."""
    return full(x.shape, 1.0, x.dtype)


def stop_gradient(x: Any) -> Tensor:
    """``x`` itself, through which no gradient flows: (*) -> (*)."""
    return apply("stop_gradient", x)


def arange(start: Dim, stop: Dim | None = None, step: int = 1, dtype: Any = "int64") -> Tensor:
    """``start, start + step, ...`` below ``stop`` (``torch.arange``; one argument is ``stop``): () -> (n,).

    The bounds may be symbolic dimensions, so positions follow the sequence length:
    ``ag.arange("T")`` or ``ag.arange(x.shape[1])`` has shape ``("T",)``.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> tokens = ag.input("tokens", ("B", "T"), "int64")
    >>> pos = ag.arange(tokens.shape[1])
    >>> pos.shape
    ('T',)
    >>> ag.compile(pos, inputs=[tokens])(np.zeros((1, 4), "int64")).tolist()
    [0, 1, 2, 3]
    """
    if stop is None:
        start, stop = 0, start
    bounds = []
    for what, value in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(value, (bool, float)) or not isinstance(value, (int, str, np.integer)):
            raise TypeError(
                f"arange: {what} must be an int or a dimension, got {value!r}; for a float range use "
                "arange(n).astype('float32') * step + start"
            )
        bounds.append(value if isinstance(value, str) else int(value))
    start, stop = normalize_shape(bounds[:2])
    step = bounds[2]
    if not isinstance(step, int):
        raise TypeError(f"arange: step must be an int, got {step!r}")
    return apply("arange", start=start, stop=stop, step=step, dtype=dtype_of(dtype))


@tensor_method
def tril(x: Any, k: int = 0) -> Tensor:
    """Keep the entries on and below diagonal ``k`` of the last two axes, zero the rest: (*, M, N) -> (*, M, N).

    Works with symbolic sizes (the kernel sees the run's shape), as :func:`triu` does.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> ag.compile(ag.input("x", ("T", "T")).tril())(np.ones((2, 2), "float32")).tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    """
    return apply("tril", x, k=int(k))


@tensor_method
def triu(x: Any, k: int = 0) -> Tensor:
    """Keep the entries on and above diagonal ``k`` of the last two axes, zero the rest: (*, M, N) -> (*, M, N)."""
    return apply("triu", x, k=int(k))


def causal_mask(size: Dim, dtype: Any = "bool") -> Tensor:
    """``(T, T)`` mask that is True (1) where query ``i`` may attend to key ``j``, that is ``j <= i``.

    ``size`` may be symbolic: ``scores.masked_fill(~ag.causal_mask("T"), float("-inf"))`` masks a
    (B, H, T, T) attention matrix for every T.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", ("B", "T"))
    >>> mask = ag.causal_mask(x.shape[1])
    >>> ag.compile(mask, inputs=[x])(np.zeros((1, 3), "float32")).astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    (d,) = normalize_shape(size)
    return tril(full((d, d), 1.0, dtype))


def _mask_to_indices(x: Tensor, mask: Any, axis: int) -> np.ndarray:
    """The positions a fixed boolean mask selects along ``axis`` (as numpy does); masks computed in
    the graph have a data-dependent size, so they are refused."""
    if isinstance(mask, Tensor):
        raise IndexError(
            f"{x.node.label}[mask]: a boolean mask tensor gives a data-dependent shape; use ag.where(mask, x, 0.0)"
        )
    if mask.ndim != 1 or mask.shape[0] != x.shape[axis]:
        raise IndexError(
            f"boolean index of shape {mask.shape} does not match axis {axis} of {x.node.label} {format_shape(x.shape)}"
        )
    return np.flatnonzero(mask).astype(np.int64)


@tensor_method(name="__getitem__")
def getitem(x: Tensor, key: Any) -> Tensor:
    """``x[key]``: (B, T, C)[:, -1] -> (B, C); (V, C)[idx (B, T)] -> (B, T, C).

    Keys are ints, slices (positive steps), ``None``, ``...`` and one integer index tensor or array.
    """
    if not isinstance(key, tuple):
        key = (key,)
    if any(isinstance(k, (Tensor, np.ndarray, list)) for k in key):
        arrays = [i for i, k in enumerate(key) if isinstance(k, (Tensor, np.ndarray, list))]
        if len(arrays) > 1 or any(k is Ellipsis or k is None for k in key):
            raise IndexError("only one integer index array is supported, without ... or None")
        axis = arrays[0]
        if any(not (isinstance(k, slice) and k == slice(None)) for i, k in enumerate(key) if i != axis):
            raise IndexError("an index array can only be combined with full slices ':'")
        idx = key[axis] if isinstance(key[axis], Tensor) else np.asarray(key[axis])
        if idx.dtype == np.bool_ or idx.dtype == "bool":
            idx = _mask_to_indices(x, idx, axis)
        elif not isinstance(idx, Tensor):
            if idx.size and idx.dtype.kind not in "iu":
                raise IndexError(f"index arrays must hold integers, got {idx.dtype}")
            idx = idx.astype(np.int64)
        return index_select(x, idx, axis)
    n_specified = sum(1 for k in key if k is not None and k is not Ellipsis)
    if n_specified > x.ndim:
        raise IndexError(f"too many indices ({n_specified}) for {x.node.label} {format_shape(x.shape)}")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - n_specified) + key[i + 1 :]
    key = key + (slice(None),) * (x.ndim - sum(1 for k in key if k is not None))
    index, out_shape_plan, axis = [], [], 0
    for k in key:
        if k is None:
            out_shape_plan.append("new")
            continue
        d = x.shape[axis]
        if isinstance(k, (int, np.integer)):
            k = int(k)
            if isinstance(d, int) and not -d <= k < d:
                raise IndexError(f"index {k} is out of range for axis {axis} of size {d} ({x.node.label})")
            index.append((k, None if k == -1 else k + 1, 1) if k < 0 else (k, k + 1, 1))
            out_shape_plan.append("drop")
        elif isinstance(k, slice):
            step = 1 if k.step is None else int(k.step)
            if step <= 0:
                raise IndexError("slices with a negative or zero step are not supported")
            index.append((k.start, k.stop, step))
            out_shape_plan.append("keep")
        else:
            raise IndexError(f"unsupported index {k!r}")
        axis += 1
    result = x
    if any(s != (None, None, 1) for s in index):
        result = apply("slice", x, index=tuple(index))
    if any(p != "keep" for p in out_shape_plan):
        dims = iter(result.shape)
        shape = []
        for p in out_shape_plan:
            if p == "new":
                shape.append(1)
            elif p == "drop":
                next(dims)
            else:
                shape.append(next(dims))
        result = reshape(result, tuple(shape))
    return result
