"""Functional forms, as ``torch.nn.functional``: activations, normalisations, losses and attention.

Everything here is a composite of asg-core ops, so it differentiates (to any order), prints and runs
on every backend. Shapes use PyTorch's layout: channels first for images, ``(N, C, ...)`` logits.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg.nn import functional as F
    >>> logits, y = ag.input("logits", ("B", 3)), ag.input("y", ("B",), "int64")
    >>> loss = F.cross_entropy(logits, y, label_smoothing=0.1)
    >>> round(float(ag.compile(loss)(np.zeros((2, 3), "float32"), np.array([0, 2]))), 4)
    1.0986
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import asg.core as ag
from asg.core.ops.attention import causal_allowed
from asg.core.shapes import format_shape

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "attention_weights",
    "avg_pool2d",
    "batch_norm",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "causal_mask",
    "conv2d",
    "conv_transpose2d",
    "cosine_embedding_loss",
    "cross_entropy",
    "dropout",
    "dropout2d",
    "elu",
    "embedding",
    "gelu",
    "group_norm",
    "hinge_embedding_loss",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "layer_norm",
    "leaky_relu",
    "linear",
    "log_softmax",
    "margin_ranking_loss",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "pairwise_distance",
    "relu",
    "rms_norm",
    "scaled_dot_product_attention",
    "sigmoid",
    "sigmoid_focal_loss",
    "silu",
    "smooth_l1_loss",
    "softmax",
    "softplus",
    "tanh",
    "triplet_margin_loss",
]

Tensor = ag.Tensor

# --------------------------------------------------------------------------- re-exported core ops
linear = ag.linear
conv2d = ag.conv2d
conv_transpose2d = ag.conv_transpose2d
max_pool2d = ag.max_pool2d
avg_pool2d = ag.avg_pool2d
adaptive_avg_pool2d = ag.adaptive_avg_pool2d
adaptive_max_pool2d = ag.adaptive_max_pool2d
embedding = ag.embedding
layer_norm = ag.layer_norm
batch_norm = ag.batch_norm
dropout = ag.dropout


def _label(t: Tensor) -> str:
    return f"{t.node.label} {format_shape(t.shape)}"


# --------------------------------------------------------------------------- activations
def relu(x: Any) -> Tensor:
    """``max(x, 0)``: (*) -> (*)."""
    return ag.relu(x)


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Tensor:
    """``x`` if positive else ``negative_slope * x``: (*) -> (*)."""
    return ag.leaky_relu(x, negative_slope)


def gelu(x: Any, approximate: str = "none") -> Tensor:
    """GELU, exact (``"none"``, with erf) or ``"tanh"``-approximated as in PyTorch: (*) -> (*)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return ag.gelu(x, approximate)


def silu(x: Any) -> Tensor:
    """``x * sigmoid(x)`` (swish): (*) -> (*)."""
    return ag.silu(x)


def tanh(x: Any) -> Tensor:
    """Hyperbolic tangent: (*) -> (*)."""
    return ag.tanh(x)


def sigmoid(x: Any) -> Tensor:
    """Logistic sigmoid: (*) -> (*)."""
    return ag.sigmoid(x)


def elu(x: Any, alpha: float = 1.0) -> Tensor:
    """``x`` if positive else ``alpha * (exp(x) - 1)``: (*) -> (*)."""
    return ag.elu(x, alpha)


def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta``, linear where ``beta x > threshold``: (*) -> (*)."""
    return ag.softplus(x, beta, threshold)


def softmax(x: Any, dim: int = -1) -> Tensor:
    """Softmax along ``dim``: (*) -> (*)."""
    return ag.softmax(x, dim)


def log_softmax(x: Any, dim: int = -1) -> Tensor:
    """Log-softmax along ``dim``: (*) -> (*)."""
    return ag.log_softmax(x, dim)


# --------------------------------------------------------------------------- normalisation
def rms_norm(
    x: Any, normalized_shape: int | Sequence[int], weight: Any = None, eps: float | None = None
) -> Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the trailing axes (``torch.nn.functional.rms_norm``).

    ``eps=None`` uses the machine epsilon of x's dtype, as PyTorch does.

    Shape: x ``(*, *normalized_shape)`` -> same.
    """
    x = ag.as_tensor(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape) :]) != shape:
        raise ag.ShapeError(
            f"rms_norm: x {_label(x)}: normalized_shape {format_shape(shape)} does not match its trailing dims"
        )
    eps = float(np.finfo(x.dtype).eps) if eps is None else float(eps)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    y = x * ((x * x).mean(axes, keepdims=True) + eps).rsqrt()
    return y if weight is None else y * weight


def group_norm(x: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Tensor:
    """Group normalisation: statistics over each group of ``C / num_groups`` channels and all spatial axes.

    Shape: x ``(N, C, *)``; weight and bias ``(C,)`` -> same as x.
    """
    x = ag.as_tensor(x)
    if x.ndim < 2:
        raise ag.ShapeError(f"group_norm: x {_label(x)} must be (N, C, *)")
    channels = x.shape[1]
    if not isinstance(channels, int) or channels % num_groups:
        raise ag.ShapeError(
            f"group_norm: x {_label(x)}: {channels} channels do not split into {num_groups} groups"
        )
    n = x.shape[0]
    grouped = x.reshape((n, num_groups, -1))  # (N, G, C/G * spatial)
    mean = grouped.mean(2, keepdims=True)
    centered = grouped - mean
    var = (centered * centered).mean(2, keepdims=True)
    y = (centered * (var + eps).rsqrt()).reshape(x.shape)
    per_channel = (1, channels) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * ag.reshape(weight, per_channel)
    if bias is not None:
        y = y + ag.reshape(bias, per_channel)
    return y


def dropout2d(x: Any, p: float, key: Any, training: bool = True) -> Tensor:
    """Zero whole channels with probability ``p`` (SpatialDropout), scaling the rest by ``1 / (1 - p)``.

    Shape: x ``(N, C, H, W)`` (or ``(C, H, W)``) -> same.
    """
    x = ag.as_tensor(x)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout2d: p must be a probability in [0, 1), got {p!r}")
    if not training or p == 0:
        return x
    if x.ndim not in (3, 4):
        raise ag.ShapeError(f"dropout2d: x {_label(x)} must be (N, C, H, W) or (C, H, W)")
    keep = 1.0 - float(p)
    mask_shape = (*x.shape[: x.ndim - 2], 1, 1)
    return x * ag.bernoulli(key, keep, mask_shape, x.dtype) * (1.0 / keep)


# --------------------------------------------------------------------------- losses
_REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss: Tensor, reduction: str, what: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{what}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def _pair(input: Any, target: Any, what: str) -> tuple[Tensor, Tensor]:
    input = ag.as_tensor(input)
    target = ag.as_tensor(target, input.dtype)
    if target.dtype != input.dtype:
        target = ag.cast(target, input.dtype)
    if tuple(input.shape) != tuple(target.shape):
        raise ag.ShapeError(
            f"{what}: input {_label(input)} and target {_label(target)} must have the same shape"
        )
    return input, target


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error ``(input - target)^2``: input and target (*) -> scalar, or (*) with "none"."""
    input, target = _pair(input, target, "mse_loss")
    d = input - target
    return _reduce(d * d, reduction, "mse_loss")


def l1_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Mean absolute error ``|input - target|``."""
    input, target = _pair(input, target, "l1_loss")
    return _reduce(ag.abs(input - target), reduction, "l1_loss")


def smooth_l1_loss(input: Any, target: Any, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta`` (``beta=0`` is L1)."""
    input, target = _pair(input, target, "smooth_l1_loss")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    d = ag.abs(input - target)
    if beta == 0:
        return _reduce(d, reduction, "smooth_l1_loss")
    return _reduce(ag.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta), reduction, "smooth_l1_loss")


def huber_loss(input: Any, target: Any, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """``0.5 d^2`` where ``|d| <= delta``, else ``delta (|d| - 0.5 delta)``."""
    input, target = _pair(input, target, "huber_loss")
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    d = ag.abs(input - target)
    return _reduce(ag.where(d <= delta, 0.5 * d * d, delta * (d - 0.5 * delta)), reduction, "huber_loss")


def _class_axis_last(x: Tensor) -> Tensor:
    """(N, C, d1, ...) -> (N, d1, ..., C)."""
    if x.ndim <= 2:
        return x
    return ag.permute(x, (0, *range(2, x.ndim), 1))


def _check_weight(weight: Any, classes: Any, what: str) -> Tensor | None:
    if weight is None:
        return None
    weight = ag.as_tensor(np.asarray(weight, np.float32) if isinstance(weight, (list, tuple)) else weight)
    if tuple(weight.shape) != (classes,):
        raise ag.ShapeError(f"{what}: weight {_label(weight)} must have one entry per class, ({classes},)")
    return weight


def nll_loss(
    input: Any, target: Any, weight: Any = None, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """Negative log-likelihood of log-probabilities ``input`` at integer ``target`` (``F.nll_loss``).

    ``mean`` divides by the summed weights of the non-ignored targets, as PyTorch does.

    Shape: input ``(N, C)`` or ``(N, C, d1, ...)``; target ``(N,)`` or ``(N, d1, ...)`` int.
    """
    input = ag.as_tensor(input)
    target = ag.as_tensor(target, "int64")
    classes = _check_class_target(input, target, "nll_loss")
    weight = _check_weight(weight, classes, "nll_loss")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"nll_loss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    logp = _class_axis_last(input)  # (N, ..., C)
    valid = target != ignore_index
    safe = ag.where(valid, target, 0)
    picked = ag.one_hot(safe, classes, input.dtype)
    w = ag.cast(valid, input.dtype)
    if weight is not None:
        w = w * (picked * weight).sum(-1)
    losses = -(logp * picked).sum(-1) * w
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / w.sum()


def _check_class_target(input: Tensor, target: Tensor, what: str) -> Any:
    if input.ndim < 1:
        raise ag.ShapeError(f"{what}: input {_label(input)} needs a class dimension")
    if target.dtype not in ("int32", "int64"):
        raise ag.ShapeError(
            f"{what}: target {_label(target)} must hold integer class indices, got {target.dtype}"
        )
    expected = (input.shape[0], *input.shape[2:]) if input.ndim >= 2 else ()
    if input.ndim >= 2 and tuple(target.shape) != tuple(expected):
        raise ag.ShapeError(
            f"{what}: input {_label(input)} and target {_label(target)}: expected input (N, C, d1, ...) "
            f"and target (N, d1, ...) = {format_shape(expected)}"
        )
    classes = input.shape[1] if input.ndim >= 2 else input.shape[0]
    if not isinstance(classes, int):
        raise ag.ShapeError(f"{what}: the class dimension of {_label(input)} must be static, got {classes!r}")
    return classes


def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    ``target`` holds class indices (integer, ``(N,)`` or ``(N, d1, ...)``) or class probabilities
    (float, the shape of ``input``). Class ``weight``, ``ignore_index`` (indices only) and
    ``label_smoothing`` follow PyTorch's formulas, including how ``mean`` normalises by weights.

    Shape: input ``(N, C)`` or ``(N, C, d1, ...)`` logits.
    """
    input = ag.as_tensor(input)
    target = ag.as_tensor(target, "int64")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    class_axis = 1 if input.ndim >= 2 else 0
    logp = ag.log_softmax(input, class_axis)
    if target.dtype not in ("int32", "int64"):  # class probabilities
        if tuple(target.shape) != tuple(input.shape):
            raise ag.ShapeError(
                f"cross_entropy: probability target {_label(target)} must have the shape of input {_label(input)}"
            )
        classes = input.shape[class_axis]
        weight = _check_weight(weight, classes, "cross_entropy")
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + label_smoothing / classes
        terms = logp * target
        if weight is not None:
            terms = terms * ag.reshape(weight, (classes,) + (1,) * (input.ndim - class_axis - 1))
        losses = -terms.sum(class_axis)
        return _reduce(losses, reduction, "cross_entropy")
    loss = nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return loss
    classes = _check_class_target(input, target, "cross_entropy")
    weight = _check_weight(weight, classes, "cross_entropy")
    last = _class_axis_last(logp)
    smooth = -(last * weight).sum(-1) if weight is not None else -last.sum(-1)
    valid = target != ignore_index
    smooth = ag.where(valid, smooth, 0.0)
    if reduction == "sum":
        smooth = smooth.sum()
    elif reduction == "mean":
        if weight is not None:
            picked = ag.one_hot(ag.where(valid, target, 0), classes, input.dtype)
            denom = ((picked * weight).sum(-1) * ag.cast(valid, input.dtype)).sum()
        else:
            denom = ag.cast(valid, input.dtype).sum()
        smooth = smooth.sum() / denom
    return (1.0 - label_smoothing) * loss + smooth * (label_smoothing / classes)


def binary_cross_entropy(input: Any, target: Any, weight: Any = None, reduction: str = "mean") -> Tensor:
    """``-(t log p + (1 - t) log(1 - p))`` for probabilities ``p``; each log is clamped at -100 as in PyTorch."""
    input, target = _pair(input, target, "binary_cross_entropy")
    log_p = ag.maximum(ag.log(input), -100.0)
    log_q = ag.maximum(ag.log(1.0 - input), -100.0)
    loss = -(target * log_p + (1.0 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


def binary_cross_entropy_with_logits(
    input: Any, target: Any, weight: Any = None, reduction: str = "mean", pos_weight: Any = None
) -> Tensor:
    """Sigmoid + binary cross-entropy in one stable formula; ``pos_weight`` weighs the positive term.

    ``loss = (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x)``, PyTorch's formula.
    """
    input, target = _pair(input, target, "binary_cross_entropy_with_logits")
    sp = ag.softplus(-input)  # log(1 + exp(-x)), stable
    if pos_weight is not None:
        log_weight = (ag.as_tensor(pos_weight, input.dtype) - 1.0) * target + 1.0
        loss = (1.0 - target) * input + log_weight * sp
    else:
        loss = (1.0 - target) * input + sp
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def kl_div(input: Any, target: Any, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """KL divergence with ``input`` as log-probabilities: ``target * (log target - input)``.

    ``log_target=True`` takes ``target`` as log-probabilities too. ``reduction`` may also be
    ``"batchmean"`` (sum over everything divided by the batch size, the mathematically right KL).
    """
    input, target = _pair(input, target, "kl_div")
    if log_target:
        loss = ag.exp(target) * (target - input)
    else:
        positive = target > 0
        loss = ag.where(positive, target * (ag.log(ag.where(positive, target, 1.0)) - input), 0.0)
    if reduction == "batchmean":
        return loss.sum() / (input.shape[0] if input.ndim else 1)
    return _reduce(loss, reduction, "kl_div")


def hinge_embedding_loss(input: Any, target: Any, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """``x`` where ``target == 1``, ``max(0, margin - x)`` where ``target == -1`` (``F.hinge_embedding_loss``)."""
    input, target = _pair(input, target, "hinge_embedding_loss")
    loss = ag.where(target == 1.0, input, 0.0) + ag.where(target == -1.0, ag.relu(margin - input), 0.0)
    return _reduce(loss, reduction, "hinge_embedding_loss")


def sigmoid_focal_loss(
    input: Any, target: Any, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss of logits (``torchvision.ops.sigmoid_focal_loss``): BCE scaled by ``(1 - p_t)^gamma``.

    ``alpha`` (``< 0`` turns it off) weighs positives by ``alpha`` and negatives by ``1 - alpha``.
    """
    input, target = _pair(input, target, "sigmoid_focal_loss")
    p = ag.sigmoid(input)
    ce = binary_cross_entropy_with_logits(input, target, reduction="none")
    p_t = p * target + (1.0 - p) * (1.0 - target)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return _reduce(loss, reduction, "sigmoid_focal_loss")


def cosine_embedding_loss(
    input1: Any, input2: Any, target: Any, margin: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """``1 - cos(x1, x2)`` where ``target == 1``, ``max(0, cos - margin)`` where ``target == -1``.

    Shape: inputs ``(N, D)``, target ``(N,)`` of 1 and -1 -> ``(N,)`` or a scalar.
    """
    x1, x2 = _pair(input1, input2, "cosine_embedding_loss")
    y = ag.as_tensor(target, x1.dtype)
    eps = 1e-12  # PyTorch's EPSILON in cosine_embedding_loss
    cos = (x1 * x2).sum(-1) / ag.sqrt(((x1 * x1).sum(-1) + eps) * ((x2 * x2).sum(-1) + eps))
    loss = ag.where(y == 1.0, 1.0 - cos, 0.0) + ag.where(y == -1.0, ag.relu(cos - margin), 0.0)
    return _reduce(loss, reduction, "cosine_embedding_loss")


def pairwise_distance(x1: Any, x2: Any, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    """``||x1 - x2 + eps||_p`` over the last axis (``F.pairwise_distance``): (*, D) -> (*)."""
    d = ag.abs(ag.as_tensor(x1) - x2 + eps)
    if p == 2.0:
        return ag.sqrt((d * d).sum(-1))
    return ((d**p).sum(-1)) ** (1.0 / p)


def triplet_margin_loss(
    anchor: Any,
    positive: Any,
    negative: Any,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """``max(d(a, p) - d(a, n) + margin, 0)`` with ``d`` the pairwise ``p``-distance; ``swap`` as PyTorch."""
    a, pos = _pair(anchor, positive, "triplet_margin_loss")
    _, neg = _pair(anchor, negative, "triplet_margin_loss")
    d_pos = pairwise_distance(a, pos, p, eps)
    d_neg = pairwise_distance(a, neg, p, eps)
    if swap:
        d_neg = ag.minimum(d_neg, pairwise_distance(pos, neg, p, eps))
    return _reduce(ag.relu(d_pos - d_neg + margin), reduction, "triplet_margin_loss")


def margin_ranking_loss(
    input1: Any, input2: Any, target: Any, margin: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """``max(0, -target * (x1 - x2) + margin)`` (``F.margin_ranking_loss``)."""
    x1, x2 = _pair(input1, input2, "margin_ranking_loss")
    y = ag.as_tensor(target, x1.dtype)
    return _reduce(ag.relu(-y * (x1 - x2) + margin), reduction, "margin_ranking_loss")


# --------------------------------------------------------------------------- attention
def causal_mask(t_q: Any, t_k: Any) -> Tensor:
    """Bool ``(T_q, T_k)``: True where query i may attend key j (``j <= i + T_k - T_q``).

    Static sizes give a constant; symbolic ones are built in the graph from reversed cumulative sums
    (``T - 1 - i`` for each position), so one compiled function serves every sequence length.
    The mask of ``ag.attention(..., causal=True)``.
    """
    return causal_allowed(t_q, t_k)


def _checked_scale(q: Tensor, k: Tensor, scale: float | None) -> float:
    """``scale`` or ``1 / sqrt(E)``, after checking that q and k are (*, L, E) and (*, S, E)."""
    if q.ndim < 2 or k.ndim != q.ndim:
        raise ag.ShapeError(
            f"attention: query {_label(q)} and key {_label(k)} must be (*, L, E) and (*, S, E) with the "
            "same number of dimensions"
        )
    if scale is not None:
        return scale
    e = q.shape[-1]
    if not isinstance(e, int):
        raise ag.ShapeError(f"attention: the feature size {e!r} of query {_label(q)} must be static")
    return 1.0 / math.sqrt(e)


def attention_weights(
    query: Any,
    key: Any,
    attn_mask: Any = None,
    is_causal: bool = False,
    scale: float | None = None,
    key_padding_mask: Any = None,
) -> Tensor:
    """``softmax(q k^T * scale + bias)``: the attention probabilities, ``(*, L, S)``.

    The masks are those of :func:`scaled_dot_product_attention`.
    """
    q, k = ag.as_tensor(query), ag.as_tensor(key)
    scale = _checked_scale(q, k, scale)
    scores = ag.matmul(q * scale, ag.swapaxes(k, -1, -2))  # (*, L, S)
    allowed = causal_mask(q.shape[-2], k.shape[-2]) if is_causal else None
    if attn_mask is not None:
        attn_mask = ag.as_tensor(attn_mask, q.dtype)
        if attn_mask.dtype == "bool":
            allowed = attn_mask if allowed is None else (allowed & attn_mask)
        else:
            scores = scores + attn_mask
    if key_padding_mask is not None:
        kpm = ag.as_tensor(key_padding_mask, q.dtype)
        if kpm.dtype != "bool":
            scores = scores + _expand_padding(kpm, q.ndim)
        else:
            keep = ~_expand_padding(kpm, q.ndim)
            allowed = keep if allowed is None else (allowed & keep)
    if allowed is not None:
        scores = ag.where(allowed, scores, -math.inf)
    return ag.softmax(scores, -1)


def scaled_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    key_padding_mask: Any = None,
    dropout_key: Any = None,
) -> Tensor:
    """``softmax(q k^T * scale + bias) v``, as ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        query: ``(*, L, E)``; key ``(*, S, E)``; value ``(*, S, Ev)``; ``*`` is e.g. (N, heads).
        attn_mask: bool (True = may attend, PyTorch's SDPA convention) or float (added to the scores),
            broadcasting against ``(*, L, S)``.
        is_causal: query i attends keys ``j <= i`` (aligned at the end when ``L != S``); works with
            symbolic lengths.
        scale: default ``1 / sqrt(E)``.
        key_padding_mask: ``(N, S)``, bool True = padding (ignored), as ``nn.MultiheadAttention``, or
            float (added); it broadcasts over heads and queries.
        dropout_p, dropout_key: dropout on the attention weights (needs a key when ``dropout_p > 0``).

    Returns: ``(*, L, Ev)``.

    Without dropout, with bool masks (or none) and q, k, v of one dtype and equal leading dims, this
    is the fused op :func:`asg.core.attention` (no ``(*, L, S)`` scores kept for the backward pass);
    the masks are combined into one bool mask of a broadcasting shape (``(N, 1, 1, S)`` for a
    padding mask). A query row with no key to attend then gives 0 where PyTorch gives NaN. Float
    masks and dropout take the unfused formula.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg.nn import functional as F
    >>> q = ag.input("q", ("B", 4, "T", 16))
    >>> F.scaled_dot_product_attention(q, q, q, is_causal=True).shape
    ('B', 4, 'T', 16)
    """
    q, k, v = ag.as_tensor(query), ag.as_tensor(key), ag.as_tensor(value)
    if dropout_p == 0:
        fused, allowed = _fused_mask(q, k, v, attn_mask, key_padding_mask)
        if fused:
            scale = _checked_scale(q, k, scale)
            return ag.attention(q, k, v, allowed, causal=is_causal, scale=scale)
    weights = attention_weights(q, k, attn_mask, is_causal, scale, key_padding_mask)
    if dropout_p > 0:
        weights = ag.dropout(weights, dropout_p, dropout_key)
    return ag.matmul(weights, v)


def _fused_mask(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Any, key_padding_mask: Any
) -> tuple[bool, Tensor | None]:
    """Whether :func:`asg.core.attention` applies (not for float masks, mixed dtypes or broadcasting
    leading dims), and the one bool mask (True = may attend) to give it, or None."""
    no = (False, None)
    if not (q.ndim >= 2 and q.ndim == k.ndim == v.ndim and q.dtype == k.dtype == v.dtype):
        return no
    if q.dtype not in ("float16", "float32", "float64") or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return no
    allowed = None
    if attn_mask is not None:
        allowed = ag.as_tensor(attn_mask)
        if allowed.dtype != "bool" or allowed.ndim > q.ndim:
            return no
    if key_padding_mask is not None:
        kpm = ag.as_tensor(key_padding_mask)
        if kpm.dtype != "bool":
            return no
        keep = ~_expand_padding(kpm, q.ndim)  # (N, 1, ..., 1, S)
        allowed = keep if allowed is None else allowed & keep
    return True, allowed


def _expand_padding(mask: Tensor, ndim: int) -> Tensor:
    """(N, S) -> (N, 1, ..., 1, S) broadcasting against (N, heads, L, S)."""
    if mask.ndim != 2:
        raise ag.ShapeError(f"key_padding_mask {_label(mask)} must be (N, S)")
    return ag.reshape(mask, (mask.shape[0],) + (1,) * (ndim - 2) + (mask.shape[1],))
