"""The functional forms of the basic layers: ``linear`` and ``embedding`` (composites of core ops).

Weights use PyTorch's layout, so checkpoints map one to one: ``linear`` weight is
``(out_features, in_features)``, ``embedding`` weight is ``(num_embeddings, embedding_dim)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError
from ..registry import TensorType, define_op
from ..shapes import format_shape
from ..tensor import Tensor, apply, as_tensor
from ._rules import require_indices
from .elementwise import where
from .linalg import matmul
from .shape import check_index_range, stop_gradient, transpose, unsqueeze


def _describe(role: str, t: Tensor) -> str:
    """``input x (B, 128) float32``: the argument's role, then the user's name, shape and dtype."""
    return f"{role} {t.node.label} {format_shape(t.shape)} {t.dtype}"


def _embedding_infer(weight: TensorType, idx: TensorType) -> TensorType:
    if weight.ndim != 2:
        raise ValueError(
            f"weight must be 2-d (num_embeddings, embedding_dim), got {format_shape(weight.shape)}"
        )
    require_indices(idx)
    return TensorType((*idx.shape, weight.shape[1]), weight.dtype)


def _embedding_kernel(weight: np.ndarray, idx: np.ndarray) -> np.ndarray:
    # PyTorch refuses negative ids; numpy's take would silently read from the end.
    check_index_range("embedding", idx, weight.shape[0], 0, negative=False, what="id")
    return np.take(weight, idx, axis=0)


define_op(
    "embedding",
    infer=_embedding_infer,
    kernel=_embedding_kernel,
    grad=lambda g, out, weight, idx: (
        apply("index_select_backward", g, idx, axis=0, shape=weight.shape),
        None,
    ),
    doc="Rows of ``weight`` at ``idx``; ids outside ``[0, num_embeddings)`` raise at run time.",
)


def linear(x: Any, weight: Any, bias: Any = None) -> Tensor:
    """``x @ weight.T + bias`` (``torch.nn.functional.linear``).

    Shape: x ``(*, in_features)``, weight ``(out_features, in_features)``, bias ``(out_features,)``
    -> ``(*, out_features)``.

    >>> import asg.core as ag
    >>> x = ag.input("x", ("B", 784))
    >>> w = ag.parameter(np.zeros((10, 784), "float32"), name="w")
    >>> ag.linear(x, w, ag.parameter(np.zeros(10, "float32"), name="b")).shape
    ('B', 10)
    """
    x, weight = as_tensor(x), as_tensor(weight)
    where = f"linear: {_describe('input', x)}, {_describe('weight', weight)}"
    if weight.ndim != 2:
        raise ShapeError(f"{where}: weight must be 2-d (out_features, in_features)")
    if x.ndim < 1:
        raise ShapeError(f"{where}: the input must have at least one dimension (in_features)")
    features, expected = x.shape[-1], weight.shape[1]
    if features != expected and isinstance(features, int) and isinstance(expected, int):
        raise ShapeError(
            f"{where}: the input has {features} features but the weight expects {expected} "
            "(weight is (out_features, in_features))"
        )
    y = matmul(x, transpose(weight))
    if bias is None:
        return y
    bias = as_tensor(bias, x.dtype)
    if bias.shape != (weight.shape[0],):
        raise ShapeError(f"{where}: {_describe('bias', bias)} must have shape ({weight.shape[0]},)")
    return y + bias


def embedding(idx: Any, weight: Any, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` picked by integer ``idx`` (``torch.nn.functional.embedding``).

    The gradient scatter-adds into the picked rows (repeated indices accumulate). With
    ``padding_idx``, that row gets no gradient (its value is still looked up, as in PyTorch).

    Shape: idx ``(*)`` int, weight ``(num_embeddings, embedding_dim)`` -> ``(*, embedding_dim)``.

    >>> import asg.core as ag
    >>> wte = ag.parameter(np.arange(6, dtype="float32").reshape(3, 2), name="wte")
    >>> tokens = ag.input("tokens", ("B", "T"), "int64")
    >>> ag.compile(ag.embedding(tokens, wte))(np.array([[2, 0]])).tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """
    weight = as_tensor(weight)
    idx = as_tensor(idx, "int64")
    where_ = f"embedding: {_describe('ids', idx)}, {_describe('weight', weight)}"
    if weight.ndim != 2:
        raise ShapeError(f"{where_}: weight must be 2-d (num_embeddings, embedding_dim)")
    if idx.dtype not in ("int32", "int64"):
        raise DTypeError(f"{where_}: indices must be int32 or int64, got {idx.dtype}")
    rows = apply("embedding", weight, idx)
    if padding_idx is None:
        return rows
    num = weight.shape[0]
    if isinstance(num, int):
        if not -num <= padding_idx < num:
            raise ValueError(f"{where_}: padding_idx {padding_idx} is out of range for {num} embeddings")
        padding_idx %= num
    elif padding_idx < 0:
        raise ValueError(f"{where_}: a negative padding_idx needs a static number of embeddings")
    keep = unsqueeze(idx != padding_idx, -1)
    return where(keep, rows, stop_gradient(rows))
