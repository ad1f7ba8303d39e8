"""The functional forms of the basic layers: ``linear`` and ``embedding`` (composites of core ops).

Weights use PyTorch's layout, so checkpoints map one to one: ``linear`` weight is
``(out_features, in_features)``, ``embedding`` weight is ``(num_embeddings, embedding_dim)``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ShapeError
from ..shapes import format_shape
from ..tensor import Tensor, as_tensor


def _describe(t: Tensor) -> str:
    return f"{t.node.label} {format_shape(t.shape)}"


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
    from .linalg import matmul
    from .shape import transpose

    x, weight = as_tensor(x), as_tensor(weight)
    where = f"linear: x {_describe(x)}, weight {_describe(weight)}"
    if weight.ndim != 2:
        raise ShapeError(f"{where}: weight must be 2-d (out_features, in_features)")
    if x.ndim < 1:
        raise ShapeError(f"{where}: x must have at least one dimension (in_features)")
    features, expected = x.shape[-1], weight.shape[1]
    if features != expected and isinstance(features, int) and isinstance(expected, int):
        raise ShapeError(
            f"{where}: x has {features} input features but weight expects {expected} "
            "(weight is (out_features, in_features))"
        )
    y = matmul(x, transpose(weight))
    if bias is None:
        return y
    bias = as_tensor(bias, x.dtype)
    if bias.shape != (weight.shape[0],):
        raise ShapeError(f"{where}: bias {_describe(bias)} must have shape ({weight.shape[0]},)")
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
    from .elementwise import where
    from .shape import index_select, stop_gradient, unsqueeze

    weight = as_tensor(weight)
    idx = as_tensor(idx, "int64")
    where_ = f"embedding: idx {_describe(idx)}, weight {_describe(weight)}"
    if weight.ndim != 2:
        raise ShapeError(f"{where_}: weight must be 2-d (num_embeddings, embedding_dim)")
    if idx.dtype not in ("int32", "int64"):
        raise ShapeError(f"{where_}: indices must be int32 or int64, got {idx.dtype}")
    rows = index_select(weight, idx, axis=0)
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
