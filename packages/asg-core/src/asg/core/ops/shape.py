"""Shape and indexing ops: reshape, transpose, broadcast, sum_to, slicing, concat, pad, gather, one_hot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dtypes import dtype_of
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
from ..tensor import Tensor, apply, as_tensor
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
    grad=lambda g, out, x, axes: (transpose(g, tuple(int(i) for i in np.argsort(axes))),),
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
            raise ValueError(f"all inputs must have one dtype, got {dtype} and {t.dtype}")
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


def _index_select_kernel(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    n = x.shape[axis]
    if idx.size and (idx.max() >= n or idx.min() < -n):
        bad = idx[(idx >= n) | (idx < -n)].flat[0]
        raise IndexError(f"index {bad} is out of range for axis {axis} of size {n}")
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


define_op(
    "take_along_axis",
    infer=_take_along_infer,
    kernel=lambda x, idx, axis: np.take_along_axis(x, idx, axis=axis),
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
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise IndexError(f"class index out of range [0, {num_classes}): found {idx.min()}..{idx.max()}")
    return (idx[..., None] == np.arange(num_classes)).astype(dtype)


define_op("one_hot", infer=_one_hot_infer, differentiable=False, kernel=_one_hot_kernel)


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
def reshape(x: Any, shape: Sequence[Dim] | Dim) -> Tensor:
    """View ``x`` with a new shape; one dimension may be -1.

    >>> import asg.core as ag
    >>> ag.reshape(ag.input("x", ("B", 28, 28)), ("B", -1)).shape
    ('B', 784)
    """
    x = as_tensor(x)
    shape = normalize_shape(shape)
    if shape == x.shape:
        return x
    return apply("reshape", x, shape=shape)


def flatten(x: Any, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes ``start_axis..end_axis`` into one."""
    x = as_tensor(x)
    start, end = normalize_axis(start_axis, x.ndim), normalize_axis(end_axis, x.ndim)
    return reshape(x, (*x.shape[:start], dim_prod(x.shape[start : end + 1]), *x.shape[end + 1 :]))


def squeeze(x: Any, axis: int | Sequence[int] | None = None) -> Tensor:
    """Drop size-1 axes (all of them, or the ones named)."""
    x = as_tensor(x)
    if axis is None:
        axes = {i for i, d in enumerate(x.shape) if d == 1}
    else:
        axes = {normalize_axis(a, x.ndim) for a in ((axis,) if isinstance(axis, int) else axis)}
        for a in axes:
            if x.shape[a] != 1:
                raise ValueError(
                    f"squeeze: axis {a} of {x.node.label} {format_shape(x.shape)} has size {x.shape[a]}, not 1"
                )
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def unsqueeze(x: Any, axis: int) -> Tensor:
    """Insert a size-1 axis at ``axis``."""
    x = as_tensor(x)
    axis = normalize_axis(axis, x.ndim + 1)
    return reshape(x, (*x.shape[:axis], 1, *x.shape[axis:]))


def transpose(x: Any, axes: Sequence[int] | None = None) -> Tensor:
    """Permute axes (reverse them by default)."""
    x = as_tensor(x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(normalize_axis(a, x.ndim) for a in axes)
    if axes == tuple(range(x.ndim)):
        return x
    return apply("transpose", x, axes=axes)


permute = transpose


def swapaxes(x: Any, a: int, b: int) -> Tensor:
    """Exchange two axes."""
    x = as_tensor(x)
    axes = list(range(x.ndim))
    a, b = normalize_axis(a, x.ndim), normalize_axis(b, x.ndim)
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, axes)


def broadcast_to(x: Any, shape: Sequence[Dim]) -> Tensor:
    """Broadcast ``x`` to ``shape`` (NumPy rules)."""
    x = as_tensor(x)
    shape = normalize_shape(shape)
    if shape == x.shape:
        return x
    return apply("broadcast_to", x, shape=shape)


def sum_to(x: Any, shape: Sequence[Dim]) -> Tensor:
    """Sum the broadcast axes of ``x`` so that it has ``shape``."""
    x = as_tensor(x)
    shape = normalize_shape(shape)
    if shape == x.shape:
        return x
    return apply("sum_to", x, shape=shape)


def concat(xs: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    tensors = [as_tensor(x) for x in xs]
    if not tensors:
        raise ValueError("concat needs at least one tensor")
    if len(tensors) == 1:
        return tensors[0]
    return apply("concat", *tensors, axis=normalize_axis(axis, tensors[0].ndim))


def stack(xs: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along a new axis."""
    tensors = [as_tensor(x) for x in xs]
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    axis = normalize_axis(axis, tensors[0].ndim + 1)
    return concat([unsqueeze(t, axis) for t in tensors], axis)


def pad(x: Any, pad_width: Sequence[tuple[int, int]] | int, value: float = 0.0) -> Tensor:
    """Pad with a constant; ``pad_width`` is ``(before, after)`` per axis, or one int for all sides."""
    x = as_tensor(x)
    if isinstance(pad_width, int):
        pad_width = [(pad_width, pad_width)] * x.ndim
    widths = tuple((int(b), int(a)) for b, a in pad_width)
    return apply("pad", x, pad_width=widths, value=float(value))


def index_select(x: Any, idx: Any, axis: int = 0) -> Tensor:
    """``numpy.take(x, idx, axis)``: pick entries along ``axis``; the gradient scatter-adds."""
    x = as_tensor(x)
    return apply("index_select", x, as_tensor(idx, "int64"), axis=normalize_axis(axis, x.ndim))


gather = index_select


def take_along_axis(x: Any, idx: Any, axis: int) -> Tensor:
    """``numpy.take_along_axis``: pick one entry per position along ``axis``."""
    x = as_tensor(x)
    return apply("take_along_axis", x, as_tensor(idx, "int64"), axis=normalize_axis(axis, x.ndim))


def one_hot(idx: Any, num_classes: int, dtype: Any = "float32") -> Tensor:
    """One-hot encode integer class indices into a new last axis."""
    return apply("one_hot", as_tensor(idx, "int64"), num_classes=int(num_classes), dtype=dtype_of(dtype))


def full(shape: Sequence[Dim], value: float, dtype: Any = "float32") -> Tensor:
    """A tensor filled with ``value``; ``shape`` may be symbolic."""
    return apply("full", shape=normalize_shape(shape), value=float(value), dtype=dtype_of(dtype))


def zeros(shape: Sequence[Dim], dtype: Any = "float32") -> Tensor:
    """A tensor of zeros."""
    return full(shape, 0.0, dtype)


def ones(shape: Sequence[Dim], dtype: Any = "float32") -> Tensor:
    """A tensor of ones."""
    return full(shape, 1.0, dtype)


def zeros_like(x: Tensor) -> Tensor:
    """Zeros with the shape and dtype of ``x``."""
    return full(x.shape, 0.0, x.dtype)


def ones_like(x: Tensor) -> Tensor:
    """Ones with the shape and dtype of ``x``."""
    return full(x.shape, 1.0, x.dtype)


def stop_gradient(x: Any) -> Tensor:
    """``x`` itself, through which no gradient flows."""
    return apply("stop_gradient", x)


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


def getitem(x: Tensor, key: Any) -> Tensor:
    """``x[key]`` for ints, slices (positive steps), ``None``, ``...`` and one integer index tensor/array."""
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
