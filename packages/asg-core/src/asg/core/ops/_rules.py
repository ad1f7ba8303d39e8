"""Shape/dtype rules shared by op families.

Each raises ``ValueError`` with a plain reason, or :class:`~asg.core.errors.DTypeRuleError` (a
``ValueError``) for a dtype problem, which the registry reports as a ``DTypeError``.
"""

from __future__ import annotations

from ..dtypes import is_float, promote
from ..errors import DTypeRuleError
from ..registry import TensorType
from ..shapes import broadcast_shapes, format_shape


def same_type(x: TensorType, **_: object) -> TensorType:
    """Output has the input's shape and dtype."""
    return x


def float_unary(x: TensorType, **_: object) -> TensorType:
    """Same shape and dtype; the input must be floating point."""
    require_float(x)
    return x


def require_float(*types: TensorType) -> None:
    for t in types:
        if not is_float(t.dtype):
            raise DTypeRuleError(
                f"expected a floating-point tensor, got {t.dtype} (cast it with .astype('float32'))"
            )


def broadcast(*types: TensorType) -> tuple:
    try:
        return broadcast_shapes(*(t.shape for t in types))
    except ValueError as err:
        shapes = " and ".join(format_shape(t.shape) for t in types)
        raise ValueError(f"shapes {shapes} do not broadcast: {err}") from None


def arithmetic(a: TensorType, b: TensorType, **_: object) -> TensorType:
    """NumPy broadcasting; the dtype both operands promote to (bool counts as a number)."""
    dtype = promote(a.dtype, b.dtype)
    return TensorType(broadcast(a, b), "int64" if dtype == "bool" else dtype)


def true_division(a: TensorType, b: TensorType, **_: object) -> TensorType:
    """As arithmetic, but integers divide to float32."""
    out = arithmetic(a, b)
    return out if is_float(out.dtype) else TensorType(out.shape, "float32")


def comparison(a: TensorType, b: TensorType, **_: object) -> TensorType:
    """Broadcast shape, bool result."""
    return TensorType(broadcast(a, b), "bool")


def logical(a: TensorType, b: TensorType, **_: object) -> TensorType:
    for t in (a, b):
        if t.dtype != "bool":
            raise DTypeRuleError(f"expected bool tensors, got {t.dtype} (compare first, e.g. x > 0)")
    return TensorType(broadcast(a, b), "bool")


def require_indices(idx: TensorType) -> None:
    """Index tensors must hold int32 or int64."""
    if idx.dtype not in ("int32", "int64"):
        raise DTypeRuleError(f"indices must be int32 or int64, got {idx.dtype}")
