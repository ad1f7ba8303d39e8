"""Linear algebra: batched, broadcasting matmul."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import blas
from ..dtypes import promote
from ..errors import DTypeRuleError, ShapeError
from ..registry import BILINEAR, TensorType, define_op
from ..shapes import broadcast_shapes, format_shape
from ..tensor import Tensor, apply, as_tensor, tensor_method
from ._rules import require_float
from .shape import reshape, swapaxes


def _matmul_infer(a: TensorType, b: TensorType) -> TensorType:
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError("both operands need at least 2 dimensions (use ag.matmul for vectors)")
    if a.dtype != b.dtype:
        raise DTypeRuleError(f"dtypes differ: {a.dtype} and {b.dtype} (cast one of them)")
    require_float(a, b)
    k1, k2 = a.shape[-1], b.shape[-2]
    if k1 != k2 and not (isinstance(k1, str) or isinstance(k2, str)):
        raise ValueError(f"inner dimensions {k1} and {k2} differ")
    try:
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as err:
        raise ValueError(f"batch dimensions do not broadcast: {err}") from None
    return TensorType((*batch, a.shape[-2], b.shape[-1]), promote(a.dtype, b.dtype))


def _matmul_kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # MKL when installed, else np.matmul; (..., m, k) @ (k, n) is one GEMM either way (see asg.core.blas)
    return blas.matmul(a, b, out)


def _matmul_grad(g: Tensor, out: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    grad_a = matmul(g, swapaxes(b, -1, -2))
    if b.ndim == 2 and a.ndim > 2:
        # A weight shared over batch dims: one (k, M) @ (M, n) product instead of a batch summed later.
        grad_b = matmul(swapaxes(reshape(a, (-1, a.shape[-1])), 0, 1), reshape(g, (-1, g.shape[-1])))
    else:
        grad_b = matmul(swapaxes(a, -1, -2), g)
    return grad_a, grad_b


define_op(
    "matmul",
    traits=(BILINEAR,),
    infer=_matmul_infer,
    grad=_matmul_grad,
    kernel=_matmul_kernel,
    out_arg=True,
    symbol="@",
)


@tensor_method
def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product (``a @ b``), NumPy semantics: (*, M, K) @ (*, K, N) -> (*, M, N), batched and
    broadcasting; a 1-d operand is promoted to a matrix and its axis dropped again.

    >>> import asg.core as ag
    >>> x, w = ag.input("x", ("B", 784)), ag.input("w", (784, 10))
    >>> ag.matmul(x, w).shape
    ('B', 10)
    """
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim >= 2 and b.ndim >= 2:
        return apply("matmul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(
            f"matmul: {a.node.label} {format_shape(a.shape)} @ {b.node.label} {format_shape(b.shape)}: "
            "operands must not be 0-d"
        )
    a2 = reshape(a, (1, *a.shape)) if a.ndim == 1 else a
    b2 = reshape(b, (*b.shape, 1)) if b.ndim == 1 else b
    out = apply("matmul", a2, b2)
    shape = out.shape
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    return reshape(out, shape)


def _rmatmul(b: Tensor, a: Any) -> Tensor:
    """``a @ b`` for a non-Tensor ``a`` (a numpy array): (*, M, K) @ (*, K, N) -> (*, M, N)."""
    return matmul(a, b)


tensor_method(matmul, name="__matmul__")
tensor_method(_rmatmul, name="__rmatmul__")
