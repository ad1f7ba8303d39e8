"""Normalised exponentials (softmax, log_softmax) and the losses built on them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError
from ..registry import TensorType, define_op
from ..shapes import format_shape, normalize_axis
from ..tensor import Tensor, apply, as_tensor, tensor_method
from ._rules import require_float
from .elementwise import exp
from .reduction import mean, sum
from .shape import reshape, take_along_axis, unsqueeze


def _softmax_infer(x: TensorType, axis: int) -> TensorType:
    require_float(x)
    normalize_axis(axis, x.ndim)
    return x


def _softmax_kernel(x: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    out = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def _log_softmax_kernel(x: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    out = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    out -= np.log(np.exp(out).sum(axis=axis, keepdims=True))
    return out


def _softmax_grad(g: Tensor, out: Tensor, x: Tensor, axis: int) -> tuple[Tensor]:
    return (out * (g - sum(g * out, axis, keepdims=True)),)


def _log_softmax_grad(g: Tensor, out: Tensor, x: Tensor, axis: int) -> tuple[Tensor]:
    return (g - exp(out) * sum(g, axis, keepdims=True),)


define_op("softmax", infer=_softmax_infer, kernel=_softmax_kernel, out_arg=True, grad=_softmax_grad)
define_op(
    "log_softmax", infer=_softmax_infer, kernel=_log_softmax_kernel, out_arg=True, grad=_log_softmax_grad
)


def _axis(x: Tensor, axis: int, op: str) -> int:
    try:
        return normalize_axis(axis, x.ndim)
    except ValueError as err:
        raise ShapeError(f"{op}: {x.node.label} {format_shape(x.shape)}: {err}") from None


@tensor_method
def softmax(x: Any, axis: int = -1) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably: (B, C) -> (B, C).

    >>> import asg.core as ag
    >>> ag.softmax(ag.input("x", ("B", 10))).shape
    ('B', 10)
    """
    x = as_tensor(x)
    return apply("softmax", x, axis=_axis(x, axis, "softmax"))


@tensor_method
def log_softmax(x: Any, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``, computed stably: (B, C) -> (B, C)."""
    x = as_tensor(x)
    return apply("log_softmax", x, axis=_axis(x, axis, "log_softmax"))


def cross_entropy(logits: Any, target: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy between ``logits`` (N, C) and integer class ``target`` (N,).

    As ``torch.nn.functional.cross_entropy``: ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``.

    >>> import asg.core as ag
    >>> loss = ag.cross_entropy(ag.input("logits", ("B", 10)), ag.input("y", ("B",), "int64"))
    >>> loss.shape
    ()
    """
    logits, target = as_tensor(logits), as_tensor(target, "int64")
    if logits.ndim != 2 or target.ndim != 1:
        raise ShapeError(
            f"cross_entropy: logits {logits.node.label} {format_shape(logits.shape)} and target "
            f"{target.node.label} {format_shape(target.shape)}: expected logits (N, C) and integer targets (N,)"
        )
    if target.dtype not in ("int32", "int64"):
        raise DTypeError(
            f"cross_entropy: target {target.node.label} must hold integer class indices, got {target.dtype}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    num_classes = logits.shape[1]
    if not isinstance(num_classes, int):
        raise ShapeError(
            f"cross_entropy: the class dimension of {logits.node.label} must be static, got {num_classes!r}"
        )
    logp = log_softmax(logits, axis=1)
    # Pick the target's log-probability rather than multiply by a one-hot: 0 * log(0) would be NaN
    # for a class whose logit is -inf (PyTorch gives a finite loss there).
    losses = -reshape(take_along_axis(logp, unsqueeze(target, 1), axis=1), (logits.shape[0],))
    if label_smoothing:
        smooth = -sum(logp, axis=1) * (1.0 / num_classes)
        losses = losses * (1.0 - label_smoothing) + smooth * label_smoothing
    if reduction == "none":
        return losses
    return mean(losses) if reduction == "mean" else sum(losses)
