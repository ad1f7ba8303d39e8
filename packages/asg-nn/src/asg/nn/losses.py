"""Loss modules, as ``torch.nn``'s: each wraps its function in :mod:`asg.nn.functional`.

Every loss takes ``reduction`` ``"none"``, ``"mean"`` or ``"sum"``; class ``weight`` where PyTorch has it.

>>> import numpy as np
>>> import asg.core as ag
>>> from asg import nn
>>> loss = nn.CrossEntropyLoss(label_smoothing=0.1)(
...     ag.input("logits", ("B", 5)), ag.input("y", ("B",), "int64")
... )
>>> loss.shape
()
"""

from __future__ import annotations

from typing import Any

import numpy as np

import asg.core as ag

from . import functional as F
from .module import Module

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CosineEmbeddingLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "HingeEmbeddingLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "MSELoss",
    "MarginRankingLoss",
    "NLLLoss",
    "SmoothL1Loss",
    "TripletMarginLoss",
]


def _const(value: Any) -> Any:
    """Class weights given as lists or arrays become float32 constants."""
    if value is None or isinstance(value, ag.Tensor):
        return value
    return ag.constant(np.asarray(value, np.float32))


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("none", "mean", "sum") and not (
            reduction == "batchmean" and isinstance(self, KLDivLoss)
        ):
            raise ValueError(
                f"{type(self).__name__}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}"
            )
        self.reduction = reduction

    def extra_repr(self) -> str:
        """``reduction=…`` for ``repr``."""
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error."""

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The squared differences of ``input`` and ``target`` (same shape), reduced by ``reduction``."""
        return F.mse_loss(input, target, self.reduction)


class L1Loss(_Loss):
    """Mean absolute error."""

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The absolute differences of ``input`` and ``target`` (same shape), reduced by ``reduction``."""
        return F.l1_loss(input, target, self.reduction)


class SmoothL1Loss(_Loss):
    """Quadratic below ``beta``, linear above (``torch.nn.SmoothL1Loss``)."""

    def __init__(self, reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(reduction)
        self.beta = beta

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The smooth L1 loss of ``input`` and ``target`` (same shape), reduced by ``reduction``."""
        return F.smooth_l1_loss(input, target, self.reduction, self.beta)


class HuberLoss(_Loss):
    """Quadratic below ``delta``, ``delta``-scaled linear above (``torch.nn.HuberLoss``)."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction)
        self.delta = delta

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The Huber loss of ``input`` and ``target`` (same shape), reduced by ``reduction``."""
        return F.huber_loss(input, target, self.reduction, self.delta)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy over class indices or probabilities; ``weight``, ``ignore_index``, ``label_smoothing``."""

    def __init__(
        self,
        weight: Any = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction)
        self.weight, self.ignore_index, self.label_smoothing = _const(weight), ignore_index, label_smoothing

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The cross-entropy of logits ``input`` ``(N, C)`` or ``(N, C, *)`` and ``target``: class
        indices ``(N)``/``(N, *)`` or probabilities shaped like ``input``.
        """
        return F.cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing
        )


class NLLLoss(_Loss):
    """Negative log-likelihood of log-probabilities; ``weight``, ``ignore_index``."""

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight, self.ignore_index = _const(weight), ignore_index

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The negative log-likelihood of log-probabilities ``input`` ``(N, C)`` at class indices ``target``
        ``(N)``.
        """
        return F.nll_loss(input, target, self.weight, self.ignore_index, self.reduction)


class BCELoss(_Loss):
    """Binary cross-entropy of probabilities; optional per-element ``weight``."""

    def __init__(self, weight: Any = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight = _const(weight)

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The binary cross-entropy of probabilities ``input`` in ``[0, 1]`` and ``target`` (same shape)."""
        return F.binary_cross_entropy(input, target, self.weight, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross-entropy, stable; ``weight`` and ``pos_weight`` (per class, broadcast)."""

    def __init__(self, weight: Any = None, reduction: str = "mean", pos_weight: Any = None) -> None:
        super().__init__(reduction)
        self.weight, self.pos_weight = _const(weight), _const(pos_weight)

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The binary cross-entropy of ``sigmoid(input)`` and ``target`` (same shape), computed stably from
        logits.
        """
        return F.binary_cross_entropy_with_logits(input, target, self.weight, self.reduction, self.pos_weight)


class KLDivLoss(_Loss):
    """KL divergence with log-probability inputs; ``log_target``; ``reduction`` may be ``"batchmean"``."""

    def __init__(self, reduction: str = "mean", log_target: bool = False) -> None:
        super().__init__(reduction)
        self.log_target = log_target

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """``KL(target || exp(input))`` of log-probabilities ``input``; ``target`` probabilities
        (log-probabilities with ``log_target``).
        """
        return F.kl_div(input, target, self.reduction, self.log_target)


class HingeEmbeddingLoss(_Loss):
    """``x`` for target 1, ``max(0, margin - x)`` for target -1 (``torch.nn.HingeEmbeddingLoss``)."""

    def __init__(self, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.margin = margin

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The hinge embedding loss of ``input`` and ``target`` in {1, -1} (same shape)."""
        return F.hinge_embedding_loss(input, target, self.margin, self.reduction)


class FocalLoss(_Loss):
    """Sigmoid focal loss of logits (torchvision's ``sigmoid_focal_loss``); default ``reduction="mean"``."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.alpha, self.gamma = alpha, gamma

    def forward(self, input: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The sigmoid focal loss of logits ``input`` and binary ``target`` (same shape)."""
        return F.sigmoid_focal_loss(input, target, self.alpha, self.gamma, self.reduction)


class CosineEmbeddingLoss(_Loss):
    """``1 - cos`` for target 1, ``max(0, cos - margin)`` for -1; ``forward(x1, x2, target)``."""

    def __init__(self, margin: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.margin = margin

    def forward(self, input1: ag.Tensor, input2: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The cosine embedding loss of ``input1``, ``input2`` ``(N, D)`` and ``target`` ``(N)`` in {1, -1}."""
        return F.cosine_embedding_loss(input1, input2, target, self.margin, self.reduction)


class TripletMarginLoss(_Loss):
    """``max(d(a, p) - d(a, n) + margin, 0)``; ``forward(anchor, positive, negative)``."""

    def __init__(
        self,
        margin: float = 1.0,
        p: float = 2.0,
        eps: float = 1e-6,
        swap: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.margin, self.p, self.eps, self.swap = margin, p, eps, swap

    def forward(self, anchor: ag.Tensor, positive: ag.Tensor, negative: ag.Tensor) -> ag.Tensor:
        """The triplet margin loss of ``anchor``, ``positive`` and ``negative`` ``(N, D)``."""
        return F.triplet_margin_loss(
            anchor, positive, negative, self.margin, self.p, self.eps, self.swap, self.reduction
        )


class MarginRankingLoss(_Loss):
    """``max(0, -y (x1 - x2) + margin)``; ``forward(x1, x2, y)``."""

    def __init__(self, margin: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.margin = margin

    def forward(self, input1: ag.Tensor, input2: ag.Tensor, target: ag.Tensor) -> ag.Tensor:
        """The margin ranking loss of ``input1``, ``input2`` and ``target`` ``y`` in {1, -1} (one shape)."""
        return F.margin_ranking_loss(input1, input2, target, self.margin, self.reduction)
