"""Convolution over NCHW tensors: conv2d, conv_transpose2d and the weight gradient.

Weights follow PyTorch: ``conv2d`` takes ``(C_out, C_in/groups, kH, kW)``, ``conv_transpose2d`` takes
``(C_in, C_out/groups, kH, kW)``.

Convolution is three bilinear primitives that are each other's gradients, so every order of
derivative stays inside the family::

    conv2d(x, w)                        -> y     grads: conv_transpose2d(g, w), conv2d_backward_weight(x, g)
    conv_transpose2d(g, w)              -> x'    grads: conv2d(g', w),          conv2d_backward_weight(g', g)
    conv2d_backward_weight(x, g)        -> w'    grads: conv_transpose2d(g, g'), conv2d(x, g')

Kernels share one im2col: a strided window view of the padded input copied into batch-wide
``(groups, C_in/groups*kH*kW, N*H_out*W_out)`` columns, so each kernel is one GEMM per group over the
whole batch (one BLAS call when groups == 1), not one small GEMM per image; the transpose scatters
columns back with one strided add per kernel offset.

Spatial dims may be symbolic (the output is then a dim expression); the batch dim may always be
symbolic. The argument helpers here (``_pair``, ``_pad`` ...) are shared with :mod:`.pooling`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import blas
from ..errors import DTypeRuleError, ShapeError
from ..registry import BILINEAR, TensorType, define_op
from ..shapes import Dim, dim_add, dim_floordiv, dim_mul, format_shape
from ..tensor import Tensor, apply, as_tensor
from ._rules import require_float

Pair = tuple[int, int]
Padding4 = tuple[int, int, int, int]  # (top, bottom, left, right)
IntOrPair = int | Sequence[int]


# ============================================================================= argument helpers
def _pair(value: IntOrPair, what: str, minimum: int = 0) -> Pair:
    """``3`` -> ``(3, 3)``; ``(2, 3)`` stays; anything else is a ``ValueError`` naming ``what``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value!r}")
    return pair


def _effective(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel: ``dilation * (kernel - 1) + 1``."""
    return dilation * (kernel - 1) + 1


def _sliding_count(size: Dim, padded_extra: int, span: int, stride: int) -> Dim:
    """Number of windows of extent ``span`` over ``size + padded_extra`` with ``stride`` (symbolic-friendly)."""
    if isinstance(size, int):
        return (size + padded_extra - span) // stride + 1
    return dim_add(dim_floordiv(dim_add(size, padded_extra - span), stride), 1)


def _check_4d(*named: tuple[str, TensorType]) -> None:
    for what, t in named:
        if t.ndim != 4:
            raise ValueError(f"{what} must be 4-d (N, C, H, W), got shape {format_shape(t.shape)}")


def _check_float_pair(a: TensorType, b: TensorType) -> None:
    require_float(a, b)
    if a.dtype != b.dtype:
        raise DTypeRuleError(f"dtypes differ: {a.dtype} and {b.dtype} (cast one of them)")


def _known(*dims: Dim) -> bool:
    return all(isinstance(d, int) for d in dims)


def _same_where_known(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    """Same rank, and equal in every dim that is static in both (or spelled the same)."""
    return len(a) == len(b) and all(p == q or not _known(p, q) for p, q in zip(a, b, strict=True))


# ============================================================================= im2col / col2im
_workspace = threading.local()


def _scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread reusable buffer (its contents are garbage); saves page faults on big im2col columns."""
    cache = getattr(_workspace, "buffers", None)
    if cache is None:
        cache = _workspace.buffers = {}
    key = (shape, np.dtype(dtype).str)
    buffer = cache.get(key)
    if buffer is None:
        if len(cache) > 32:
            cache.clear()
        buffer = cache[key] = np.empty(shape, dtype)
    return buffer


def _reshaped(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A view of ``array`` with ``shape``; raises instead of silently copying (writes must land)."""
    view = array.view()
    view.shape = shape
    return view


def _pad(x: np.ndarray, padding: Padding4, value: float = 0.0) -> np.ndarray:
    top, bottom, left, right = padding
    if not (top or bottom or left or right):
        return x
    n, c, h, w = x.shape
    padded = np.full((n, c, h + top + bottom, w + left + right), value, x.dtype)
    padded[:, :, top : top + h, left : left + w] = x
    return padded


def _window_view(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair, out_hw: Pair) -> np.ndarray:
    """Read-only view ``(N, C, kH, kW, H_out, W_out)`` of the windows of padded ``xp``."""
    n, c = xp.shape[:2]
    s_n, s_c, s_h, s_w = xp.strides
    return as_strided(
        xp,
        (n, c, kernel[0], kernel[1], out_hw[0], out_hw[1]),
        (s_n, s_c, s_h * dilation[0], s_w * dilation[1], s_h * stride[0], s_w * stride[1]),
        writeable=False,
    )


def _im2col(
    x: np.ndarray, kernel: Pair, stride: Pair, padding: Padding4, dilation: Pair, groups: int
) -> tuple[np.ndarray, Pair]:
    """Batch-wide columns ``(groups, C/groups*kH*kW, N*H_out*W_out)`` of ``x`` and the output size.

    The batch is folded into the columns, so one GEMM per group covers every image."""
    xp = _pad(x, padding)
    n, c, hp, wp = xp.shape
    out_hw = (
        (hp - _effective(kernel[0], dilation[0])) // stride[0] + 1,
        (wp - _effective(kernel[1], dilation[1])) // stride[1] + 1,
    )
    windows = _window_view(xp, kernel, stride, dilation, out_hw)  # (N, C, kH, kW, H_out, W_out)
    cols = _scratch((c, kernel[0], kernel[1], n, out_hw[0], out_hw[1]), x.dtype)
    np.copyto(cols, windows.transpose(1, 2, 3, 0, 4, 5))
    return _reshaped(cols, (groups, c // groups * kernel[0] * kernel[1], n * out_hw[0] * out_hw[1])), out_hw


def _gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` over a leading group axis; one BLAS call (2-d operands) when there is one group."""
    if a.shape[0] == 1:
        result = blas.matmul(a[0], b[0], None if out is None else out[0])
        return result[None] if out is None else out
    return blas.matmul(a, b, out)


def _batch_major(g: np.ndarray, groups: int) -> np.ndarray:
    """``(N, C, H, W)`` as ``(groups, C/groups, N*H*W)``, contiguous (the GEMM operand of a batch)."""
    n, c, h, w = g.shape
    grouped = g.reshape(n, groups, c // groups, h * w).transpose(1, 2, 0, 3)
    return np.ascontiguousarray(grouped).reshape(groups, c // groups, n * h * w)


def _col2im(
    cols: np.ndarray, size: Pair, stride: Pair, padding: Padding4, dilation: Pair, out: np.ndarray | None
) -> np.ndarray:
    """Adjoint of im2col: add columns ``(N, groups, kH, kW, C/groups, H_out, W_out)`` into ``(N, C, *size)``.

    Each kernel offset's block ``cols[:, :, i, j]`` is contiguous per group, so each strided add streams."""
    n, groups, kh, kw, c_per_group, ho, wo = cols.shape
    top, bottom, left, right = padding
    shape = (n, groups * c_per_group, size[0] + top + bottom, size[1] + left + right)
    unpadded = not (top or bottom or left or right)
    if unpadded and out is not None:
        target = out
        target.fill(0)
    else:
        target = np.zeros(shape, cols.dtype)
    grouped = _reshaped(target, (n, groups, c_per_group, shape[2], shape[3]))
    for i in range(kh):
        rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (ho - 1) + 1, stride[0])
        for j in range(kw):
            columns = slice(j * dilation[1], j * dilation[1] + stride[1] * (wo - 1) + 1, stride[1])
            grouped[:, :, :, rows, columns] += cols[:, :, i, j]
    if unpadded:
        return target
    inner = target[:, :, top : top + size[0], left : left + size[1]]
    if out is not None:
        np.copyto(out, inner)
        return out
    return np.ascontiguousarray(inner)


# ============================================================================= conv2d
ConvAttrs = dict[str, Any]


def _conv_infer(
    x: TensorType, w: TensorType, stride: Pair, padding: Padding4, dilation: Pair, groups: int
) -> TensorType:
    _check_4d(("input", x), ("weight", w))
    _check_float_pair(x, w)
    n, c, h, wd = x.shape
    c_out, c_per_group, kh, kw = w.shape
    if not _known(c_out, c_per_group, kh, kw):
        raise ValueError(f"the weight shape must be static, got {format_shape(w.shape)}")
    if isinstance(c, int) and c != c_per_group * groups:
        raise ValueError(
            f"input has {c} channels but the weight expects {c_per_group * groups} (groups={groups})"
        )
    if c_out % groups:
        raise ValueError(f"the weight's {c_out} output channels do not split into groups={groups}")
    return TensorType((n, c_out, *_conv_out_hw((h, wd), (kh, kw), stride, padding, dilation)), x.dtype)


def _conv_out_hw(
    size: tuple[Dim, Dim], kernel: Pair, stride: Pair, padding: Padding4, dilation: Pair
) -> tuple:
    out = []
    for axis, (dim, pads) in enumerate(zip(size, (padding[:2], padding[2:]), strict=True)):
        span = _effective(kernel[axis], dilation[axis])
        if isinstance(dim, int) and dim + sum(pads) < span:
            raise ValueError(
                f"the kernel ({kernel[0]}x{kernel[1]}, dilation {dilation}) spans {span} but the padded input "
                f"is only {dim + sum(pads)} along {'HW'[axis]}"
            )
        out.append(_sliding_count(dim, sum(pads), span, stride[axis]))
    return tuple(out)


def _conv_kernel(
    x: np.ndarray,
    w: np.ndarray,
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    c_out, c_per_group, kh, kw = w.shape
    n = x.shape[0]
    cols, (ho, wo) = _im2col(x, (kh, kw), stride, padding, dilation, groups)
    weight = w.reshape(groups, c_out // groups, c_per_group * kh * kw)
    columns = _gemm(weight, cols)  # (groups, C_out/groups, N*H_out*W_out): one GEMM for the batch
    result = np.empty((n, c_out, ho, wo), x.dtype) if out is None else out
    np.copyto(_reshaped(result, (n, c_out, ho * wo)), columns.reshape(c_out, n, ho * wo).transpose(1, 0, 2))
    return result


def _conv_grad(g: Tensor, out: Tensor, x: Tensor, w: Tensor, **attrs: Any) -> tuple[Tensor, Tensor]:
    return (
        apply("conv_transpose2d", g, w, size=tuple(x.shape[2:]), **attrs),
        apply("conv2d_backward_weight", x, g, kernel_size=tuple(w.shape[2:]), **attrs),
    )


define_op(
    "conv2d",
    traits=(BILINEAR,),
    infer=_conv_infer,
    grad=_conv_grad,
    kernel=_conv_kernel,
    out_arg=True,
    doc="2-d cross-correlation of NCHW ``x`` with ``w`` (C_out, C_in/groups, kH, kW); "
    "padding is (top, bottom, left, right).",
)


# ----------------------------------------------------------------------------- conv_transpose2d
def _conv_transpose_infer(
    g: TensorType,
    w: TensorType,
    size: tuple[Dim, Dim],
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
) -> TensorType:
    _check_4d(("input", g), ("weight", w))
    _check_float_pair(g, w)
    n, c, hg, wg = g.shape
    c_in, c_out_per_group, kh, kw = w.shape
    if not _known(c_in, c_out_per_group, kh, kw):
        raise ValueError(f"the weight shape must be static, got {format_shape(w.shape)}")
    if isinstance(c, int) and c != c_in:
        raise ValueError(f"input has {c} channels but the weight expects {c_in}")
    if c_in % groups:
        raise ValueError(f"the weight's {c_in} input channels do not split into groups={groups}")
    # The forward conv of the result must give back the input's spatial size.
    counts = _conv_out_hw(size, (kh, kw), stride, padding, dilation)
    for axis, (got, want) in enumerate(zip(counts, (hg, wg), strict=True)):
        if _known(got, want) and got != want:
            raise ValueError(
                f"an output of size {size[axis]} along {'HW'[axis]} convolves back to {got}, not to the input's "
                f"{want} (check output_padding: it must be smaller than the stride)"
            )
    return TensorType((n, c_out_per_group * groups, *size), g.dtype)


def _conv_transpose_kernel(
    g: np.ndarray,
    w: np.ndarray,
    size: Pair,
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    # (groups, kH, kW, C_out/groups, N, Hg, Wg) viewed as col2im's (N, groups, kH, kW, C_out/groups, Hg, Wg)
    cols7 = conv_transpose_columns(g, w, groups).transpose(4, 0, 1, 2, 3, 5, 6)
    return _col2im(cols7, size, stride, padding, dilation, out)


def conv_transpose_columns(g: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """The columns ``(groups, kH, kW, C_out/groups, N, Hg, Wg)`` that conv_transpose2d adds into its output.

    One GEMM per group over the whole batch; the result lives in a per-thread scratch buffer.
    """
    n, c_in, hg, wg = g.shape
    _, c_out_per_group, kh, kw = w.shape
    # (groups, kH*kW*C_out/groups, C_in/groups) @ (groups, C_in/groups, N*Hg*Wg), rows ordered (kH, kW, C_out/groups)
    weight = (
        w.reshape(groups, c_in // groups, c_out_per_group, kh, kw)
        .transpose(0, 3, 4, 2, 1)
        .reshape(groups, kh * kw * c_out_per_group, c_in // groups)
    )
    cols = _scratch((groups, kh * kw * c_out_per_group, n * hg * wg), g.dtype)
    _gemm(weight, _batch_major(g, groups), out=cols)
    return _reshaped(cols, (groups, kh, kw, c_out_per_group, n, hg, wg))


def _conv_transpose_grad(g: Tensor, out: Tensor, gy: Tensor, w: Tensor, size: tuple, **attrs: Any) -> tuple:
    return (
        apply("conv2d", g, w, **attrs),
        apply("conv2d_backward_weight", g, gy, kernel_size=tuple(w.shape[2:]), **attrs),
    )


define_op(
    "conv_transpose2d",
    traits=(BILINEAR,),
    infer=_conv_transpose_infer,
    grad=_conv_transpose_grad,
    kernel=_conv_transpose_kernel,
    out_arg=True,
    shape_attrs=("size",),
    doc="Adjoint of conv2d wrt its input (the gradient of conv2d, and PyTorch's conv_transpose2d): "
    "``w`` is (C_in, C_out/groups, kH, kW), ``size`` the output's (H, W).",
)


# ----------------------------------------------------------------------------- conv2d_backward_weight
def _backward_weight_infer(
    x: TensorType,
    g: TensorType,
    kernel_size: Pair,
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
) -> TensorType:
    _check_4d(("input", x), ("output gradient", g))
    _check_float_pair(x, g)
    if _known(x.shape[0], g.shape[0]) and x.shape[0] != g.shape[0]:
        raise ValueError(f"batch sizes differ: {x.shape[0]} and {g.shape[0]}")
    c, c_out = x.shape[1], g.shape[1]
    if not _known(c, c_out):
        raise ValueError("channel counts must be static")
    if c % groups or c_out % groups:
        raise ValueError(f"channels {c} and {c_out} must both divide into groups={groups}")
    counts = _conv_out_hw(tuple(x.shape[2:]), kernel_size, stride, padding, dilation)
    for axis, (got, want) in enumerate(zip(counts, g.shape[2:], strict=True)):
        if _known(got, want) and got != want:
            raise ValueError(
                f"the input convolves to size {got} along {'HW'[axis]} but the gradient has {want}"
            )
    return TensorType((c_out, c // groups, *kernel_size), x.dtype)


def _backward_weight_kernel(
    x: np.ndarray,
    g: np.ndarray,
    kernel_size: Pair,
    stride: Pair,
    padding: Padding4,
    dilation: Pair,
    groups: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    cols, _ = _im2col(x, kernel_size, stride, padding, dilation, groups)  # (groups, K, N*H_out*W_out)
    grads = _batch_major(g, groups)  # (groups, C_out/groups, N*H_out*W_out)
    shape = (g.shape[1], x.shape[1] // groups, *kernel_size)
    result = np.empty(shape, x.dtype) if out is None else out
    # one GEMM per group sums over the batch: (C_out/groups, N*HW) @ (N*HW, K)
    _gemm(grads, cols.transpose(0, 2, 1), out=_reshaped(result, (groups, grads.shape[1], cols.shape[1])))
    return result


def _backward_weight_grad(
    g: Tensor, out: Tensor, x: Tensor, gy: Tensor, kernel_size: Pair, **attrs: Any
) -> tuple:
    return (
        apply("conv_transpose2d", gy, g, size=tuple(x.shape[2:]), **attrs),
        apply("conv2d", x, g, **attrs),
    )


define_op(
    "conv2d_backward_weight",
    traits=(BILINEAR,),
    infer=_backward_weight_infer,
    grad=_backward_weight_grad,
    kernel=_backward_weight_kernel,
    out_arg=True,
    doc="Gradient of conv2d wrt its weight: correlates the input with the output gradient.",
)


# ----------------------------------------------------------------------------- public conv functions
def _conv_padding(padding: IntOrPair | str, kernel: Pair, stride: Pair, dilation: Pair) -> Padding4:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    "padding='same' needs stride 1 (as in PyTorch); pass explicit padding instead"
                )
            pads: list[int] = []
            for k, d in zip(kernel, dilation, strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # the odd pixel goes bottom/right, as in PyTorch
            return (pads[0], pads[1], pads[2], pads[3])
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = _pair(padding, "padding")
    return (ph, ph, pw, pw)


def _add_channel_bias(y: Tensor, bias: Any) -> Tensor:
    if bias is None:
        return y
    from .shape import reshape

    bias = as_tensor(bias, y.dtype)
    if bias.ndim != 1:
        raise ValueError(f"bias {bias.node.label} must be 1-d (C_out,), got shape {format_shape(bias.shape)}")
    if bias.shape[0] != y.shape[1]:
        raise ValueError(
            f"bias {bias.node.label} has {bias.shape[0]} entries for {y.shape[1]} output channels"
        )
    return y + reshape(bias, (1, bias.shape[0], 1, 1))


def _build(op: str, tensors: Sequence[Tensor], attrs_fn: Callable[[], dict[str, Any]]) -> Tensor:
    """Validate attributes in the context of the op's inputs, then apply."""
    try:
        attrs = attrs_fn()
    except ValueError as err:
        described = ", ".join(f"{t.node.label} {format_shape(t.shape)}" for t in tensors)
        raise ShapeError(f"{op}: {described}: {err}") from None
    return apply(op, *tensors, **attrs)


def _check_groups(groups: Any) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")


def conv2d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    """2-d convolution (cross-correlation, as PyTorch) of an NCHW tensor.

    Args:
        x: input ``(N, C_in, H, W)``; ``N`` (and H, W) may be symbolic.
        weight: ``(C_out, C_in/groups, kH, kW)``.
        bias: optional ``(C_out,)``, added per channel.
        stride, dilation: int or (h, w) pair.
        padding: int, (h, w) pair, ``"valid"`` (none) or ``"same"`` (stride 1 only).
        groups: split channels into groups; ``groups == C_in`` is a depthwise convolution.

    Example:
        >>> import numpy as np, asg.core as ag
        >>> x = ag.input("x", ("B", 3, 32, 32))
        >>> w = ag.parameter(np.zeros((16, 3, 3, 3), "float32"), name="w")
        >>> ag.conv2d(x, w, stride=2, padding=1).shape
        ('B', 16, 16, 16)
    """
    x, weight = as_tensor(x), as_tensor(weight)

    def attrs() -> dict[str, Any]:
        _check_groups(groups)
        stride2, dilation2 = _pair(stride, "stride", 1), _pair(dilation, "dilation", 1)
        kernel = tuple(weight.shape[2:]) if weight.ndim == 4 else (1, 1)
        return dict(
            stride=stride2,
            padding=_conv_padding(padding, kernel, stride2, dilation2),
            dilation=dilation2,
            groups=groups,
        )

    return _add_channel_bias(_build("conv2d", (x, weight), attrs), bias)


def conv_transpose2d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    *,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    """Transposed convolution (the gradient of conv2d wrt its input), as PyTorch's conv_transpose2d.

    The output size is ``(H - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than the stride. ``dilation`` and ``groups`` are keyword-only
    because PyTorch's positional order puts ``groups`` before ``dilation``.

    Args:
        x: input ``(N, C_in, H, W)``.
        weight: ``(C_in, C_out/groups, kH, kW)``.
        bias: optional ``(C_out,)``.

    Example:
        >>> import numpy as np, asg.core as ag
        >>> x = ag.input("x", ("B", 16, 8, 8))
        >>> w = ag.parameter(np.zeros((16, 8, 4, 4), "float32"), name="w")
        >>> ag.conv_transpose2d(x, w, stride=2, padding=1).shape
        ('B', 8, 16, 16)
    """
    x, weight = as_tensor(x), as_tensor(weight)

    def attrs() -> dict[str, Any]:
        _check_groups(groups)
        if x.ndim != 4 or weight.ndim != 4:
            raise ValueError("input and weight must be 4-d (N, C, H, W) and (C_in, C_out/groups, kH, kW)")
        stride2, dilation2 = _pair(stride, "stride", 1), _pair(dilation, "dilation", 1)
        pad2, extra = _pair(padding, "padding"), _pair(output_padding, "output_padding")
        if extra[0] >= stride2[0] or extra[1] >= stride2[1]:
            raise ValueError(f"output_padding {extra} must be smaller than the stride {stride2}")
        size = []
        for axis in range(2):
            k = weight.shape[2 + axis]
            grow = _effective(k, dilation2[axis]) + extra[axis] - 2 * pad2[axis]  # size = (H-1)*s + grow
            h = x.shape[2 + axis]
            if isinstance(h, int):
                size.append((h - 1) * stride2[axis] + grow)
            else:
                size.append(dim_add(dim_mul(h, stride2[axis]), grow - stride2[axis]))
            if isinstance(size[-1], int) and size[-1] < 1:
                raise ValueError(f"the output would have size {size[-1]} along {'HW'[axis]}")
        return dict(
            size=tuple(size),
            stride=stride2,
            padding=(pad2[0], pad2[0], pad2[1], pad2[1]),
            dilation=dilation2,
            groups=groups,
        )

    return _add_channel_bias(_build("conv_transpose2d", (x, weight), attrs), bias)


__all__ = ["conv2d", "conv_transpose2d"]
