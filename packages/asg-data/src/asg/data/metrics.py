"""Metrics: classification, regression, running statistics, a per-epoch logger and early stopping.

Every metric comes twice: a plain function (``accuracy(y_true, y_pred)``) and a stateful object
with ``update(y_true, y_pred)`` / ``compute()`` / ``reset()`` that accumulates over batches and gives
the same result as the function on the concatenated data. Definitions and defaults follow
scikit-learn (``average="binary"``, ``zero_division=0.0``, R² = 1 for a perfect constant fit...).

Classification inputs: ``y_true`` holds labels, shape ``(N,)``. ``y_pred`` holds labels of the same
shape, or scores of shape ``(N, C)`` (reduced by argmax; labels are then the column indices), or
probabilities of shape ``(N,)`` (non-integral floats are thresholded at ``threshold``, default 0.5).

Example:
    >>> accuracy([0, 1, 1, 0], [0, 1, 0, 0])
    0.75
    >>> m = F1(average="macro")
    >>> m.update([0, 1, 2], [0, 2, 2])
    >>> m.update([1], [1])
    >>> round(m.compute(), 4)
    0.7778
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ._atomic import atomic_write_text, json_field, read_json

__all__ = [
    "EMA",
    "F1",
    "MAE",
    "MAPE",
    "MSE",
    "R2",
    "RMSE",
    "Accuracy",
    "ConfusionMatrix",
    "EarlyStopping",
    "ExplainedVariance",
    "MaxError",
    "Metric",
    "MetricLogger",
    "Precision",
    "Recall",
    "RunningMean",
    "RunningStd",
    "TopKAccuracy",
    "accuracy",
    "confusion_matrix",
    "explained_variance",
    "f1",
    "format_confusion_matrix",
    "mae",
    "mape",
    "max_error",
    "mse",
    "precision",
    "r2",
    "recall",
    "rmse",
    "top_k_accuracy",
]

Average = Literal["binary", "macro", "micro", "weighted"]
MultiOutput = Literal["uniform_average", "raw_values"]
_AVERAGES = ("binary", "macro", "micro", "weighted", None)
_EPS = float(np.finfo(np.float64).eps)


# ------------------------------------------------------------------------------------------------
# Input checking


def _shapes(t: np.ndarray, p: np.ndarray) -> str:
    return f"y_true shape {t.shape}, y_pred shape {p.shape}"


def _nonempty(name: str, t: np.ndarray, p: np.ndarray) -> None:
    if t.size == 0 or p.size == 0:
        raise ValueError(f"{name}: empty input ({_shapes(t, p)}); need at least one sample")


def _class_inputs(
    name: str, y_true: Any, y_pred: Any, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Validate classification inputs and return 1-D label arrays (y_pred reduced from scores if needed)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    _nonempty(name, t, p)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"{name}: y_true must be 1-D labels of shape (N,); got {_shapes(t, p)}")
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 2:
        if p.shape[0] != t.shape[0]:
            raise ValueError(
                f"{name}: y_pred scores of shape (N, C) need the same N as y_true; got {_shapes(t, p)}"
            )
        if p.shape[1] == 0:
            raise ValueError(f"{name}: y_pred scores have no classes; got {_shapes(t, p)}")
        return t, np.argmax(p, axis=1)
    if p.shape != t.shape:
        raise ValueError(
            f"{name}: y_true and y_pred must have the same shape (labels), or y_pred shape (N, C) "
            f"(scores); got {_shapes(t, p)}"
        )
    if np.issubdtype(p.dtype, np.floating) and not np.all(p == np.round(p)):
        p = (p >= threshold).astype(np.int64)
    return t, p


def _check_labels(name: str, labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size == 0:
        raise ValueError(f"{name}: labels must be a non-empty 1-D sequence, got shape {lab.shape}")
    if np.unique(lab).size != lab.size:
        raise ValueError(f"{name}: labels must be unique, got {lab.tolist()}")
    return lab


def _label_index(name: str, labels: np.ndarray, values: np.ndarray, which: str) -> np.ndarray:
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    pos = np.searchsorted(sorted_labels, values)
    pos_c = np.minimum(pos, sorted_labels.size - 1)
    ok = sorted_labels[pos_c] == values
    if not np.all(ok):
        bad = values[~ok].tolist()[0]
        raise ValueError(
            f"{name}: {which} contains the label {bad!r}, which is not in labels {labels.tolist()}"
        )
    return order[pos_c]


def _confusion(name: str, t: np.ndarray, p: np.ndarray, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    lab = np.union1d(t, p) if labels is None else _check_labels(name, labels)
    n = lab.size
    ti = _label_index(name, lab, t, "y_true")
    pi = _label_index(name, lab, p, "y_pred")
    cm = np.bincount(ti * n + pi, minlength=n * n).reshape(n, n).astype(np.int64)
    return cm, lab


def _safe_div(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(zero_division))
    np.divide(num, den, out=out, where=den != 0)
    return out


def _prf_from_cm(
    name: str,
    cm: np.ndarray,
    labels: np.ndarray,
    which: Literal["precision", "recall", "f"],
    average: Average | None,
    pos_label: Any,
    beta: float,
    zero_division: float,
) -> float | np.ndarray:
    if average not in _AVERAGES:
        raise ValueError(f"{name}: average must be one of {_AVERAGES}. Received: average={average!r}")
    tp = np.diag(cm).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)  # predicted positives per class
    true = cm.sum(axis=1).astype(np.float64)  # support per class
    if average == "binary":
        if labels.size > 2:
            raise ValueError(
                f"{name}: average='binary' needs at most 2 classes, got {labels.size} "
                f"({labels.tolist()}); use average='macro', 'micro' or 'weighted'"
            )
        hit = np.flatnonzero(labels == pos_label)
        if hit.size == 0:
            if labels.size == 2:
                raise ValueError(
                    f"{name}: pos_label={pos_label!r} is not one of the labels {labels.tolist()}"
                )
            tp, pred, true = np.zeros(1), np.zeros(1), np.zeros(1)
        else:
            k = int(hit[0])
            tp, pred, true = tp[k : k + 1], pred[k : k + 1], true[k : k + 1]
    elif average == "micro":
        tp, pred, true = tp.sum(keepdims=True), pred.sum(keepdims=True), true.sum(keepdims=True)
    if which == "precision":
        per = _safe_div(tp, pred, zero_division)
    elif which == "recall":
        per = _safe_div(tp, true, zero_division)
    else:
        b2 = beta * beta
        per = _safe_div((1 + b2) * tp, b2 * true + pred, zero_division)
    if average is None:
        return per
    if average == "macro":
        return float(per.mean())
    if average == "weighted":
        total = true.sum()
        return float((per * true).sum() / total) if total > 0 else float(zero_division)
    return float(per[0])


# ------------------------------------------------------------------------------------------------
# Classification: functions


def accuracy(y_true: Any, y_pred: Any, *, threshold: float = 0.5) -> float:
    """Fraction of samples whose predicted label equals the true label.

    Example:
        >>> accuracy([0, 1, 2, 2], [0, 2, 2, 2])
        0.75
        >>> accuracy([0, 1], [[0.9, 0.1], [0.2, 0.8]])  # scores: argmax
        1.0
    """
    t, p = _class_inputs("accuracy", y_true, y_pred, threshold)
    return float(np.mean(t == p))


def confusion_matrix(
    y_true: Any,
    y_pred: Any,
    *,
    labels: Sequence[Any] | None = None,
    normalize: Literal["true", "pred", "all"] | None = None,
    threshold: float = 0.5,
) -> np.ndarray:
    """Counts ``C[i, j]`` of samples with true label ``labels[i]`` predicted as ``labels[j]``.

    Args:
        labels: class order (default: sorted union of the labels present).
        normalize: ``"true"`` (rows sum to 1), ``"pred"`` (columns), ``"all"`` or ``None`` (counts).

    Example:
        >>> confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2])
        array([[1, 0, 0],
               [0, 1, 1],
               [0, 0, 1]])
    """
    t, p = _class_inputs("confusion_matrix", y_true, y_pred, threshold)
    cm, _ = _confusion("confusion_matrix", t, p, labels)
    return _normalize_cm(cm, normalize)


def _normalize_cm(cm: np.ndarray, normalize: str | None) -> np.ndarray:
    if normalize is None:
        return cm
    if normalize == "true":
        return _safe_div(cm, cm.sum(axis=1, keepdims=True), 0.0)
    if normalize == "pred":
        return _safe_div(cm, cm.sum(axis=0, keepdims=True), 0.0)
    if normalize == "all":
        return _safe_div(cm, cm.sum(), 0.0)
    raise ValueError(
        f"confusion_matrix: normalize must be 'true', 'pred', 'all' or None. Received: {normalize!r}"
    )


def precision(
    y_true: Any,
    y_pred: Any,
    *,
    average: Average | None = "binary",
    pos_label: Any = 1,
    labels: Sequence[Any] | None = None,
    zero_division: float = 0.0,
    threshold: float = 0.5,
) -> float | np.ndarray:
    """Precision ``tp / (tp + fp)``; ``average`` as in scikit-learn (``None``: one value per class).

    Example:
        >>> precision([0, 1, 1, 1], [1, 1, 1, 0])
        0.6666666666666666
        >>> precision([0, 1, 2, 2], [0, 2, 2, 1], average="macro")
        0.5
    """
    t, p = _class_inputs("precision", y_true, y_pred, threshold)
    cm, lab = _confusion("precision", t, p, labels)
    return _prf_from_cm("precision", cm, lab, "precision", average, pos_label, 1.0, zero_division)


def recall(
    y_true: Any,
    y_pred: Any,
    *,
    average: Average | None = "binary",
    pos_label: Any = 1,
    labels: Sequence[Any] | None = None,
    zero_division: float = 0.0,
    threshold: float = 0.5,
) -> float | np.ndarray:
    """Recall ``tp / (tp + fn)``; ``average`` as in scikit-learn (``None``: one value per class).

    Example:
        >>> recall([0, 1, 1, 1], [1, 1, 1, 0])
        0.6666666666666666
    """
    t, p = _class_inputs("recall", y_true, y_pred, threshold)
    cm, lab = _confusion("recall", t, p, labels)
    return _prf_from_cm("recall", cm, lab, "recall", average, pos_label, 1.0, zero_division)


def f1(
    y_true: Any,
    y_pred: Any,
    *,
    average: Average | None = "binary",
    pos_label: Any = 1,
    labels: Sequence[Any] | None = None,
    zero_division: float = 0.0,
    threshold: float = 0.5,
) -> float | np.ndarray:
    """F1 score ``2 tp / (2 tp + fp + fn)``, the harmonic mean of precision and recall.

    Example:
        >>> f1([0, 1, 1, 1], [1, 1, 1, 0])
        0.6666666666666666
        >>> round(f1([0, 1, 2, 2], [0, 2, 2, 1], average="weighted"), 4)
        0.5
    """
    t, p = _class_inputs("f1", y_true, y_pred, threshold)
    cm, lab = _confusion("f1", t, p, labels)
    return _prf_from_cm("f1", cm, lab, "f", average, pos_label, 1.0, zero_division)


def _top_k_correct(name: str, y_true: Any, y_score: Any, k: int) -> tuple[int, int]:
    t, s = np.asarray(y_true), np.asarray(y_score)
    if t.size == 0 or s.size == 0:
        raise ValueError(f"{name}: empty input (y_true shape {t.shape}, y_score shape {s.shape})")
    if t.ndim != 1 or s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(
            f"{name}: expected y_true of shape (N,) and y_score of shape (N, C); "
            f"got y_true shape {t.shape}, y_score shape {s.shape}"
        )
    if not np.issubdtype(t.dtype, np.integer) and not np.all(t == np.round(t)):
        raise ValueError(f"{name}: y_true must hold integer class indices, got dtype {t.dtype}")
    t = t.astype(np.int64)
    c = s.shape[1]
    if t.min() < 0 or t.max() >= c:
        raise ValueError(
            f"{name}: y_true holds class {int(t.max()) if t.max() >= c else int(t.min())}, outside [0, {c})"
        )
    true_score = s[np.arange(t.size), t]
    higher = (s > true_score[:, None]).sum(axis=1)
    return int((higher < k).sum()), int(t.size)


def _check_k(name: str, k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"{name}: k must be an integer >= 1. Received: k={k!r}")
    return int(k)


def top_k_accuracy(y_true: Any, y_score: Any, *, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    A sample counts as correct when fewer than ``k`` classes score strictly higher than its true class
    (ties resolve in the sample's favour).

    Example:
        >>> top_k_accuracy([0, 1, 2], [[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]], k=2)
        0.6666666666666666
    """
    k = _check_k("top_k_accuracy", k)
    correct, total = _top_k_correct("top_k_accuracy", y_true, y_score, k)
    return correct / total


def format_confusion_matrix(
    cm: Any, labels: Sequence[Any] | None = None, *, title: str = "true \\ pred", digits: int = 2
) -> str:
    """Render a confusion matrix as an aligned text table (rows: true label, columns: predicted).

    Example:
        >>> print(format_confusion_matrix([[5, 1], [0, 4]], ["cat", "dog"]))
        true \\ pred  cat  dog
                cat    5    1
                dog    0    4
    """
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"format_confusion_matrix: expected a square 2-D matrix, got shape {m.shape}")
    names = [str(x) for x in (range(m.shape[0]) if labels is None else labels)]
    if len(names) != m.shape[0]:
        raise ValueError(
            f"format_confusion_matrix: {len(names)} labels for a {m.shape[0]}x{m.shape[0]} matrix"
        )
    if np.issubdtype(m.dtype, np.integer):
        cells = [[str(int(v)) for v in row] for row in m]
    else:
        cells = [[f"{float(v):.{digits}f}" for v in row] for row in m]
    first = max([len(title)] + [len(n) for n in names])
    width = max([len(n) for n in names] + [len(c) for row in cells for c in row])
    lines = [title.ljust(first) + "".join("  " + n.rjust(width) for n in names)]
    for n, row in zip(names, cells, strict=True):
        lines.append(n.rjust(first) + "".join("  " + c.rjust(width) for c in row))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Stateful metrics


class Metric(ABC):
    """Base of the stateful metrics: ``update(y_true, y_pred)`` per batch, ``compute()``, ``reset()``."""

    name: str = "Metric"

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Forget every update."""
        raise NotImplementedError

    @abstractmethod
    def update(self, y_true: Any, y_pred: Any) -> None:
        """Accumulate one batch."""
        raise NotImplementedError

    @abstractmethod
    def compute(self) -> Any:
        """The metric over every batch since the last reset."""
        raise NotImplementedError

    def _empty(self) -> ValueError:
        return ValueError(f"{type(self).__name__}.compute(): no samples yet; call update() first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """Accuracy accumulated over batches (see :func:`accuracy`).

    Example:
        >>> m = Accuracy()
        >>> m.update([0, 1], [0, 0])
        >>> m.update([1, 1], [1, 1])
        >>> m.compute()
        0.75
    """

    def __init__(self, *, threshold: float = 0.5) -> None:
        self.threshold = threshold
        super().__init__()

    def reset(self) -> None:
        """Zero the correct and total counts."""
        self.correct = 0
        self.total = 0

    def update(self, y_true: Any, y_pred: Any) -> None:
        """Count the correct predictions of one batch: class indices, scores ``(N, C)`` (their
        argmax), or binary probabilities (thresholded at ``threshold``).
        """
        t, p = _class_inputs("Accuracy.update", y_true, y_pred, self.threshold)
        self.correct += int(np.sum(t == p))
        self.total += int(t.size)

    def compute(self) -> float:
        """Correct over total since the last reset; ``ValueError`` before any update."""
        if self.total == 0:
            raise self._empty()
        return self.correct / self.total


class TopKAccuracy(Metric):
    """Top-k accuracy accumulated over batches; ``update(y_true, y_score)`` with scores ``(N, C)``.

    Example:
        >>> m = TopKAccuracy(k=2)
        >>> m.update([2], [[0.1, 0.5, 0.4]])
        >>> m.update([0], [[0.1, 0.5, 0.4]])
        >>> m.compute()
        0.5
    """

    def __init__(self, k: int = 5) -> None:
        self.k = _check_k("TopKAccuracy", k)
        super().__init__()

    def reset(self) -> None:
        """Zero the correct and total counts."""
        self.correct = 0
        self.total = 0

    def update(self, y_true: Any, y_pred: Any) -> None:
        """Count the samples of one batch whose true class is among the ``k`` highest of ``y_pred`` (N, C)."""
        c, n = _top_k_correct("TopKAccuracy.update", y_true, y_pred, self.k)
        self.correct += c
        self.total += n

    def compute(self) -> float:
        """The top-k accuracy since the last reset; ``ValueError`` before any update."""
        if self.total == 0:
            raise self._empty()
        return self.correct / self.total

    def __repr__(self) -> str:
        return f"TopKAccuracy(k={self.k})"


class ConfusionMatrix(Metric):
    """Confusion matrix accumulated over batches; ``str(m)`` renders it as a table.

    Args:
        labels: fixed class order; labels outside it raise. Default: sorted union of labels seen.
        num_classes: shorthand for ``labels=range(num_classes)``.
        normalize: as in :func:`confusion_matrix`.

    Example:
        >>> m = ConfusionMatrix(labels=["cat", "dog"])
        >>> m.update(["cat", "dog", "dog"], ["cat", "cat", "dog"])
        >>> m.compute()
        array([[1, 0],
               [1, 1]])
        >>> print(m)
        true \\ pred  cat  dog
                cat    1    0
                dog    1    1
    """

    def __init__(
        self,
        *,
        labels: Sequence[Any] | None = None,
        num_classes: int | None = None,
        normalize: Literal["true", "pred", "all"] | None = None,
        threshold: float = 0.5,
    ) -> None:
        name = type(self).__name__
        if labels is not None and num_classes is not None:
            raise ValueError(f"{name}: pass labels or num_classes, not both")
        if num_classes is not None:
            if int(num_classes) != num_classes or num_classes < 1:
                raise ValueError(f"{name}: num_classes must be an integer >= 1. Received: {num_classes!r}")
            labels = list(range(int(num_classes)))
        self.labels_: np.ndarray | None = None if labels is None else _check_labels(name, labels)
        self.normalize = normalize
        self.threshold = threshold
        super().__init__()

    def reset(self) -> None:
        """Forget every counted (true, predicted) pair."""
        self._counts: Counter[tuple[Any, Any]] = Counter()
        self.total = 0

    def update(self, y_true: Any, y_pred: Any) -> None:
        """Count the (true, predicted) label pairs of one batch."""
        name = f"{type(self).__name__}.update"
        t, p = _class_inputs(name, y_true, y_pred, self.threshold)
        cm, lab = _confusion(name, t, p, self.labels_)
        labs = lab.tolist()
        for i, j in zip(*np.nonzero(cm), strict=True):
            self._counts[(labs[i], labs[j])] += int(cm[i, j])
        self.total += int(t.size)

    @property
    def labels(self) -> np.ndarray:
        """The class order of :meth:`compute`'s rows and columns."""
        if self.labels_ is not None:
            return self.labels_
        seen = {a for a, _ in self._counts} | {b for _, b in self._counts}
        return np.array(sorted(seen))

    def _matrix(self) -> tuple[np.ndarray, np.ndarray]:
        if self.total == 0:
            raise self._empty()
        lab = self.labels
        index = {v: i for i, v in enumerate(lab.tolist())}
        cm = np.zeros((lab.size, lab.size), dtype=np.int64)
        for (a, b), c in self._counts.items():
            cm[index[a], index[b]] = c
        return cm, lab

    def compute(self) -> np.ndarray:
        """The matrix (rows: true labels, columns: predictions, in :meth:`labels` order),
        normalised as ``normalize`` says.
        """
        return _normalize_cm(self._matrix()[0], self.normalize)

    def render(self) -> str:
        """The matrix as a text table (see :func:`format_confusion_matrix`)."""
        return format_confusion_matrix(self.compute(), self.labels.tolist())

    def __str__(self) -> str:
        return self.render() if self.total else f"{type(self).__name__}(empty)"


class _PRF(ConfusionMatrix):
    _which: Literal["precision", "recall", "f"] = "f"

    def __init__(
        self,
        *,
        average: Average | None = "binary",
        pos_label: Any = 1,
        labels: Sequence[Any] | None = None,
        num_classes: int | None = None,
        zero_division: float = 0.0,
        threshold: float = 0.5,
    ) -> None:
        if average not in _AVERAGES:
            raise ValueError(
                f"{type(self).__name__}: average must be one of {_AVERAGES}. Received: average={average!r}"
            )
        self.average = average
        self.pos_label = pos_label
        self.zero_division = zero_division
        super().__init__(labels=labels, num_classes=num_classes, threshold=threshold)

    def compute(self) -> float | np.ndarray:  # type: ignore[override]
        """This class's score (precision, recall or F1) from the counted matrix, averaged as
        ``average`` says (one per label with ``average=None``).
        """
        cm, lab = self._matrix()
        name = f"{type(self).__name__}.compute"
        return _prf_from_cm(name, cm, lab, self._which, self.average, self.pos_label, 1.0, self.zero_division)

    def __str__(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(average={self.average!r})"


class Precision(_PRF):
    """Precision accumulated over batches (see :func:`precision`).

    Example:
        >>> m = Precision(average="micro")
        >>> m.update([0, 1, 2], [0, 1, 1])
        >>> round(m.compute(), 4)
        0.6667
    """

    _which = "precision"


class Recall(_PRF):
    """Recall accumulated over batches (see :func:`recall`).

    Example:
        >>> m = Recall()
        >>> m.update([1, 1, 0, 1], [1, 0, 0, 1])
        >>> round(m.compute(), 4)
        0.6667
    """

    _which = "recall"


class F1(_PRF):
    """F1 accumulated over batches (see :func:`f1`).

    Example:
        >>> m = F1(average="weighted", num_classes=3)
        >>> m.update([0, 1, 2, 2], [0, 2, 2, 1])
        >>> round(m.compute(), 4)
        0.5
    """

    _which = "f"


# ------------------------------------------------------------------------------------------------
# Regression


def _reg_inputs(name: str, y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"{name}: y_true and y_pred must have the same shape; got {_shapes(t, p)}")
    _nonempty(name, t, p)
    if t.ndim == 0 or t.ndim > 2:
        raise ValueError(f"{name}: expected shape (N,) or (N, outputs); got {_shapes(t, p)}")
    if t.ndim == 1:
        t, p = t[:, None], p[:, None]
    return t, p


def _reduce(name: str, per_output: np.ndarray, multioutput: MultiOutput, ndim: int) -> float | np.ndarray:
    if multioutput == "raw_values":
        return per_output if ndim == 2 else per_output.copy()
    if multioutput == "uniform_average":
        return float(per_output.mean())
    raise ValueError(
        f"{name}: multioutput must be 'uniform_average' or 'raw_values'. Received: {multioutput!r}"
    )


def _score_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """1 - num/den, with scikit-learn's convention for den == 0: 1.0 if num == 0 else 0.0."""
    out = np.where(num == 0, 1.0, 0.0)
    np.subtract(1.0, num / np.where(den == 0, 1.0, den), out=out, where=den != 0)
    return out


class _Moments:
    """Count, mean and sum of squared deviations per column, merged with Chan et al.'s formula."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        nb = x.shape[0]
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        if self.n == 0 or self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n


class _RegressionMetric(Metric):
    def __init__(self, *, multioutput: MultiOutput = "uniform_average") -> None:
        if multioutput not in ("uniform_average", "raw_values"):
            raise ValueError(
                f"{type(self).__name__}: multioutput must be 'uniform_average' or 'raw_values'. "
                f"Received: {multioutput!r}"
            )
        self.multioutput = multioutput
        super().__init__()

    def reset(self) -> None:
        """Forget every update."""
        self.n = 0
        self._ndim = 0
        self._outputs: int | None = None
        self._sse: np.ndarray = np.zeros(0)
        self._sae: np.ndarray = np.zeros(0)
        self._sape: np.ndarray = np.zeros(0)
        self._max: np.ndarray = np.zeros(0)
        self._true = _Moments()
        self._err = _Moments()

    def update(self, y_true: Any, y_pred: Any) -> None:
        """Accumulate the errors of one batch: ``y_true`` and ``y_pred`` of one shape, ``(N,)`` or ``(N,
        outputs)``.
        """
        name = f"{type(self).__name__}.update"
        ndim = np.ndim(y_true)
        t, p = _reg_inputs(name, y_true, y_pred)
        if self._outputs is None:
            self._outputs, self._ndim = t.shape[1], ndim
            z = np.zeros(t.shape[1])
            self._sse, self._sae, self._sape, self._max = z.copy(), z.copy(), z.copy(), z.copy()
        elif t.shape[1] != self._outputs or ndim != self._ndim:
            raise ValueError(
                f"{name}: this metric has seen {self._outputs} output(s) of {self._ndim}-D data; "
                f"got y_true shape {np.shape(y_true)}"
            )
        err = t - p
        self.n += t.shape[0]
        self._sse += (err**2).sum(axis=0)
        self._sae += np.abs(err).sum(axis=0)
        self._sape += (np.abs(err) / np.maximum(np.abs(t), _EPS)).sum(axis=0)
        self._max = np.maximum(self._max, np.abs(err).max(axis=0))
        self._true.add(t)
        self._err.add(err)

    @abstractmethod
    def _per_output(self) -> np.ndarray:
        raise NotImplementedError

    def compute(self) -> float | np.ndarray:
        """The metric since the last reset: a float, or one per output with
        ``multioutput="raw_values"``; ``ValueError`` before any update.
        """
        if self.n == 0:
            raise self._empty()
        return _reduce(type(self).__name__, self._per_output(), self.multioutput, self._ndim)


class MSE(_RegressionMetric):
    """Mean squared error accumulated over batches (see :func:`mse`).

    Example:
        >>> m = MSE()
        >>> m.update([1.0, 2.0], [1.0, 4.0])
        >>> m.compute()
        2.0
    """

    def _per_output(self) -> np.ndarray:
        return self._sse / self.n


class RMSE(_RegressionMetric):
    """Root mean squared error accumulated over batches (see :func:`rmse`).

    Example:
        >>> m = RMSE()
        >>> m.update([0.0, 0.0], [3.0, -3.0])
        >>> m.compute()
        3.0
    """

    def _per_output(self) -> np.ndarray:
        return np.sqrt(self._sse / self.n)


class MAE(_RegressionMetric):
    """Mean absolute error accumulated over batches (see :func:`mae`).

    Example:
        >>> m = MAE()
        >>> m.update([1.0, 2.0], [2.0, 4.0])
        >>> m.compute()
        1.5
    """

    def _per_output(self) -> np.ndarray:
        return self._sae / self.n


class MAPE(_RegressionMetric):
    """Mean absolute percentage error (a fraction, not %) accumulated over batches (see :func:`mape`).

    Example:
        >>> m = MAPE()
        >>> m.update([2.0, 4.0], [1.0, 5.0])
        >>> m.compute()
        0.375
    """

    def _per_output(self) -> np.ndarray:
        return self._sape / self.n


class R2(_RegressionMetric):
    """Coefficient of determination accumulated over batches (see :func:`r2`).

    Example:
        >>> m = R2()
        >>> m.update([1.0, 2.0], [1.0, 2.0])
        >>> m.update([3.0], [2.0])
        >>> m.compute()
        0.5
    """

    def _per_output(self) -> np.ndarray:
        assert self._true.m2 is not None
        return _score_ratio(self._sse, self._true.m2)


class ExplainedVariance(_RegressionMetric):
    """Explained variance ``1 - Var(y - ŷ) / Var(y)`` accumulated over batches.

    Example:
        >>> m = ExplainedVariance()
        >>> m.update([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
        >>> m.compute()
        1.0
    """

    def _per_output(self) -> np.ndarray:
        assert self._true.m2 is not None and self._err.m2 is not None
        return _score_ratio(self._err.m2, self._true.m2)


class MaxError(_RegressionMetric):
    """Largest absolute error seen over batches (see :func:`max_error`).

    Example:
        >>> m = MaxError()
        >>> m.update([1.0, 2.0], [1.5, 0.0])
        >>> m.compute()
        2.0
    """

    def _per_output(self) -> np.ndarray:
        return self._max


def _regression(
    name: str, cls: type[_RegressionMetric], y_true: Any, y_pred: Any, multioutput: MultiOutput
) -> Any:
    _reg_inputs(name, y_true, y_pred)  # so that errors name the function, not the class
    if multioutput not in ("uniform_average", "raw_values"):
        raise ValueError(
            f"{name}: multioutput must be 'uniform_average' or 'raw_values'. Received: {multioutput!r}"
        )
    m = cls(multioutput=multioutput)
    m.update(y_true, y_pred)
    return m.compute()


def mse(y_true: Any, y_pred: Any, *, multioutput: MultiOutput = "uniform_average") -> float | np.ndarray:
    """Mean squared error ``mean((y - ŷ)²)``; inputs ``(N,)`` or ``(N, outputs)``.

    Example:
        >>> mse([3.0, -0.5, 2.0, 7.0], [2.5, 0.0, 2.0, 8.0])
        0.375
    """
    return _regression("mse", MSE, y_true, y_pred, multioutput)


def rmse(y_true: Any, y_pred: Any, *, multioutput: MultiOutput = "uniform_average") -> float | np.ndarray:
    """Root mean squared error (per output, then averaged, as scikit-learn).

    Example:
        >>> rmse([0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0])
        1.0
    """
    return _regression("rmse", RMSE, y_true, y_pred, multioutput)


def mae(y_true: Any, y_pred: Any, *, multioutput: MultiOutput = "uniform_average") -> float | np.ndarray:
    """Mean absolute error ``mean(|y - ŷ|)``.

    Example:
        >>> mae([3.0, -0.5, 2.0, 7.0], [2.5, 0.0, 2.0, 8.0])
        0.5
    """
    return _regression("mae", MAE, y_true, y_pred, multioutput)


def mape(y_true: Any, y_pred: Any, *, multioutput: MultiOutput = "uniform_average") -> float | np.ndarray:
    """Mean absolute percentage error ``mean(|y - ŷ| / max(|y|, eps))`` as a fraction (0.1 = 10 %).

    Example:
        >>> mape([100.0, 200.0], [110.0, 180.0])
        0.1
    """
    return _regression("mape", MAPE, y_true, y_pred, multioutput)


def r2(y_true: Any, y_pred: Any, *, multioutput: MultiOutput = "uniform_average") -> float | np.ndarray:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (1.0 for a perfect fit of constant data).

    Example:
        >>> r2([1.0, 2.0, 3.0], [1.0, 2.0, 2.0])
        0.5
    """
    return _regression("r2", R2, y_true, y_pred, multioutput)


def explained_variance(
    y_true: Any, y_pred: Any, *, multioutput: MultiOutput = "uniform_average"
) -> float | np.ndarray:
    """Explained variance ``1 - Var(y - ŷ) / Var(y)`` (ignores a constant bias, unlike R²).

    Example:
        >>> explained_variance([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
        1.0
    """
    return _regression("explained_variance", ExplainedVariance, y_true, y_pred, multioutput)


def max_error(
    y_true: Any, y_pred: Any, *, multioutput: MultiOutput = "uniform_average"
) -> float | np.ndarray:
    """Largest absolute error ``max |y - ŷ|`` (per output, then averaged for 2-D input).

    Example:
        >>> max_error([3.0, 2.0, 7.0, 1.0], [4.0, 2.0, 7.0, 1.0])
        1.0
    """
    return _regression("max_error", MaxError, y_true, y_pred, multioutput)


# ------------------------------------------------------------------------------------------------
# Running statistics


class RunningMean:
    """Weighted running mean of scalars or array elements.

    ``update(value, weight)``: a scalar counts ``weight`` times (e.g. a batch-mean loss with
    ``weight=batch_size``); an array adds each of its elements with that weight.

    Example:
        >>> m = RunningMean()
        >>> m.update(2.0, weight=3)
        >>> m.update([4.0])
        >>> m.compute()
        2.5
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.total = 0.0
        self.count = 0.0

    def update(self, value: float | Any, weight: float = 1.0) -> None:
        """Add ``value`` (scalar or array) with ``weight`` per element."""
        v = np.asarray(value, dtype=np.float64)
        if weight < 0:
            raise ValueError(f"RunningMean.update: weight must be >= 0. Received: weight={weight}")
        if v.size == 0:
            raise ValueError(f"RunningMean.update: empty value of shape {v.shape}")
        self.total += float(v.sum()) * weight
        self.count += v.size * weight

    def compute(self) -> float:
        """The mean so far."""
        if self.count == 0:
            raise ValueError("RunningMean.compute(): no values yet; call update() first")
        return self.total / self.count

    @property
    def mean(self) -> float:
        """The mean so far (:meth:`compute`)."""
        return self.compute()

    def __repr__(self) -> str:
        m = f"{self.total / self.count:.6g}" if self.count else "n/a"
        return f"RunningMean(mean={m}, count={self.count:g})"


class RunningStd:
    """Running mean, variance and standard deviation (Welford; batches merged with Chan's formula).

    ``update(x)``: a scalar is one sample; an array of shape ``(N, *F)`` is ``N`` samples of shape
    ``F`` (so ``(N,)`` is ``N`` scalar samples and the statistics have shape ``F``).

    Args:
        ddof: delta degrees of freedom of :meth:`compute` / :attr:`std` (0: population, 1: sample).

    Example:
        >>> s = RunningStd()
        >>> for x in [2, 4, 4, 4, 5, 5, 7, 9]:
        ...     s.update(x)
        >>> s.mean, s.compute()
        (5.0, 2.0)
    """

    def __init__(self, *, ddof: int = 0) -> None:
        self.ddof = ddof
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._m = _Moments()

    @property
    def count(self) -> int:
        """How many samples have been added."""
        return self._m.n

    def update(self, x: float | Any) -> None:
        """Add one sample (scalar) or a batch of samples along axis 0."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim == 0:
            a = a[None]
        if a.shape[0] == 0:
            raise ValueError(f"RunningStd.update: empty batch of shape {a.shape}")
        if self._m.mean is not None and a.shape[1:] != np.shape(self._m.mean):
            raise ValueError(
                f"RunningStd.update: samples of shape {a.shape[1:]} do not match earlier samples of "
                f"shape {np.shape(self._m.mean)}"
            )
        self._m.add(a)

    def _need(self, k: int) -> None:
        if self._m.n <= k:
            raise ValueError(f"RunningStd: need more than {k} sample(s) (ddof={self.ddof}), have {self._m.n}")

    @property
    def mean(self) -> float | np.ndarray:
        """The mean so far: a float, or an array of the sample shape."""
        self._need(0)
        m = self._m.mean
        return float(m) if np.ndim(m) == 0 else np.array(m)

    def var(self, ddof: int | None = None) -> float | np.ndarray:
        """Variance ``M2 / (n - ddof)``."""
        d = self.ddof if ddof is None else ddof
        self._need(d)
        v = self._m.m2 / (self._m.n - d)  # type: ignore[operator]
        return float(v) if np.ndim(v) == 0 else v

    def std(self, ddof: int | None = None) -> float | np.ndarray:
        """Standard deviation ``sqrt(var(ddof))``."""
        v = self.var(ddof)
        return math.sqrt(v) if isinstance(v, float) else np.sqrt(v)

    def compute(self) -> float | np.ndarray:
        """The standard deviation with this object's ``ddof``."""
        return self.std()

    def __repr__(self) -> str:
        return f"RunningStd(count={self.count}, ddof={self.ddof})"


class EMA:
    """Exponential moving average ``v ← decay·v + (1 − decay)·x`` of scalars or arrays.

    Args:
        decay: weight of the past, in ``[0, 1)``.
        debias: if ``True``, start from 0 and divide by ``1 − decay^t`` (as Adam); if ``False``
            (default), start from the first value.

    Example:
        >>> e = EMA(decay=0.5)
        >>> e.update(4.0), e.update(0.0), e.update(0.0)
        (4.0, 2.0, 1.0)
    """

    def __init__(self, decay: float = 0.9, *, debias: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1). Received: decay={decay!r}")
        self.decay = float(decay)
        self.debias = debias
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._v: float | np.ndarray | None = None
        self.steps = 0

    def update(self, value: float | Any) -> float | np.ndarray:
        """Fold in ``value`` and return the new average."""
        x = np.asarray(value, dtype=np.float64)
        x = float(x) if x.ndim == 0 else x
        self.steps += 1
        if self._v is None:
            self._v = x * (1.0 - self.decay) if self.debias else x
        else:
            self._v = self.decay * self._v + (1.0 - self.decay) * x
        return self.compute()

    def compute(self) -> float | np.ndarray:
        """The current average."""
        if self._v is None:
            raise ValueError("EMA.compute(): no values yet; call update() first")
        if self.debias:
            return self._v / (1.0 - self.decay**self.steps)
        return self._v

    @property
    def value(self) -> float | np.ndarray:
        """The current average (:meth:`compute`)."""
        return self.compute()

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, debias={self.debias}, steps={self.steps})"


# ------------------------------------------------------------------------------------------------
# Logging and early stopping


def _to_float(name: str, key: str, v: Any) -> float:
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"{name}: metric {key!r} must be a scalar, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{name}: metric {key!r} must be a number, got {type(v).__name__}")
    return float(a.reshape(()))


def _json_float(v: float | int | None) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def _from_json_float(v: Any) -> Any:
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        return float(v.replace("Infinity", "inf"))
    return v


class MetricLogger:
    """Per-epoch metric history with running means within an epoch and CSV/JSON export.

    ``update(n=batch_size, loss=..., acc=...)`` per batch accumulates running means;
    ``end_epoch(**extra)`` appends one row (epoch number, the means, ``extra`` such as validation
    metrics) and resets the running means. ``log(**metrics)`` appends a row directly.
    Files are written atomically (temp file + ``os.replace``); non-finite numbers are written as
    the strings ``"NaN"``/``"Infinity"`` in JSON and read back as floats.

    Example:
        >>> log = MetricLogger()
        >>> log.update(n=2, loss=1.0)
        >>> log.update(n=2, loss=0.5)
        >>> log.end_epoch(val_loss=0.7)
        {'epoch': 0, 'loss': 0.75, 'val_loss': 0.7}
        >>> log["loss"]
        [0.75]
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float | int]] = []
        self._running: dict[str, RunningMean] = {}

    def update(self, n: float = 1.0, **metrics: Any) -> None:
        """Accumulate batch values; each counts with weight ``n`` (e.g. the batch size)."""
        for k, v in metrics.items():
            self._running.setdefault(k, RunningMean()).update(_to_float("MetricLogger.update", k, v), n)

    def running(self) -> dict[str, float]:
        """The running means of the current epoch so far."""
        return {k: m.compute() for k, m in self._running.items() if m.count}

    def end_epoch(self, epoch: int | None = None, **metrics: Any) -> dict[str, float | int]:
        """Close the epoch: append ``{"epoch", running means..., metrics...}`` and return it."""
        row: dict[str, float | int] = {"epoch": len(self.history) if epoch is None else int(epoch)}
        row.update(self.running())
        for k, v in metrics.items():
            if k == "epoch":
                raise ValueError("MetricLogger: 'epoch' is reserved; pass epoch=... as the argument")
            row[k] = _to_float("MetricLogger.end_epoch", k, v)
        self.history.append(row)
        self._running = {}
        return dict(row)

    log = end_epoch

    @property
    def keys(self) -> list[str]:
        """Metric names in first-seen order (without ``epoch``)."""
        seen: dict[str, None] = {}
        for row in self.history:
            for k in row:
                if k != "epoch":
                    seen.setdefault(k, None)
        return list(seen)

    def __getitem__(self, key: str) -> list[float | int | None]:
        """The values of ``key`` over epochs (``None`` where an epoch did not log it)."""
        if key != "epoch" and key not in self.keys:
            raise KeyError(f"MetricLogger: no metric {key!r}; logged: {self.keys}")
        return [row.get(key) for row in self.history]

    def __len__(self) -> int:
        return len(self.history)

    def best(self, key: str, mode: Literal["min", "max"] = "min") -> tuple[int, float]:
        """``(epoch, value)`` of the best logged value of ``key`` (NaN never wins)."""
        if mode not in ("min", "max"):
            raise ValueError(f"MetricLogger.best: mode must be 'min' or 'max'. Received: {mode!r}")
        rows = [r for r in self.history if key in r and not math.isnan(r[key])]
        if not rows:
            raise KeyError(f"MetricLogger.best: no finite values of {key!r} logged")
        pick = min if mode == "min" else max
        row = pick(rows, key=lambda r: r[key])
        return int(row["epoch"]), float(row[key])

    def to_dict(self) -> dict[str, Any]:
        """The logged history as a JSON-ready dict (``format``: ``"asg.MetricLogger"``)."""
        return {
            "format": "asg.MetricLogger",
            "version": 1,
            "history": [{k: _json_float(v) for k, v in row.items()} for row in self.history],
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the history as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the history as CSV (``epoch`` then metrics in first-seen order; empty when missing)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        cols = ["epoch", *self.keys]
        w.writerow(cols)
        for row in self.history:
            w.writerow(["" if row.get(c) is None else repr(row[c]) for c in cols])
        atomic_write_text(path, buf.getvalue())

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> MetricLogger:
        """Read a history written by :meth:`to_json`."""
        d = read_json(path, what="MetricLogger.from_json")
        if not isinstance(d, dict) or d.get("format") != "asg.MetricLogger":
            raise ValueError(f"MetricLogger.from_json: {str(path)!r} is not a MetricLogger JSON file")
        where = f"MetricLogger.from_json: {str(path)!r}"
        history = json_field(d, "history", where, list, "an array of per-epoch objects")
        for k, row in enumerate(history):
            if not isinstance(row, dict):
                raise ValueError(
                    f"{where}: field 'history'[{k}] must be an object metric -> value, got {row!r}"
                )
        log = cls()
        log.history = [{k: _from_json_float(v) for k, v in row.items()} for row in history]
        return log

    def __repr__(self) -> str:
        return f"MetricLogger(epochs={len(self.history)}, keys={self.keys})"


State = Mapping[str, Any]


class EarlyStopping:
    """Stop when a monitored value has not improved for ``patience`` steps; remember the best state.

    Call :meth:`step` once per epoch with the value and (optionally) the state to remember. The state
    is a dict of arrays (copied on improvement) or a zero-argument callable returning one (called
    only on improvement, e.g. ``model.state_dict``). :meth:`restore` gives the best state back.

    Args:
        patience: non-improving steps tolerated; the step that reaches ``patience`` returns ``True``.
        min_delta: an improvement must beat the best by more than this.
        mode: ``"min"`` (loss) or ``"max"`` (accuracy).
        restore_best: keep a copy of the best state (otherwise ``state`` is ignored).

    Example:
        >>> es = EarlyStopping(patience=2)
        >>> w = {"w": np.zeros(2)}
        >>> for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.4]):
        ...     w["w"] += 1
        ...     if es.step(loss, state=w):
        ...         break
        >>> es.best, es.best_step, epoch
        (0.5, 1, 3)
        >>> es.restore(into=w)["w"], w["w"]
        (array([2., 2.]), array([2., 2.]))
    """

    def __init__(
        self,
        patience: int = 5,
        *,
        min_delta: float = 0.0,
        mode: Literal["min", "max"] = "min",
        restore_best: bool = True,
    ) -> None:
        if int(patience) != patience or patience < 0:
            raise ValueError(
                f"EarlyStopping: patience must be an integer >= 0. Received: patience={patience!r}"
            )
        if not min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0. Received: min_delta={min_delta!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max'. Received: mode={mode!r}")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.restore_best = restore_best
        self.reset()

    def reset(self) -> None:
        """Start over (forget the best value and state)."""
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.steps = 0
        self.stopped_step: int | None = None
        self._best_state: dict[str, Any] | None = None

    @property
    def should_stop(self) -> bool:
        """Whether the monitored value went ``patience`` steps without improving (and stays so until reset)."""
        return self.stopped_step is not None

    def _improved(self, v: float) -> bool:
        if math.isnan(v):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return v < self.best - self.min_delta
        return v > self.best + self.min_delta

    def step(self, value: float | Any, state: State | Callable[[], State] | None = None) -> bool:
        """Record one epoch's value; return ``True`` when training should stop."""
        v = _to_float("EarlyStopping.step", "value", value)
        step = self.steps
        self.steps += 1
        if self._improved(v):
            self.best, self.best_step, self.wait = v, step, 0
            if self.restore_best and state is not None:
                self._best_state = _copy_state(state() if callable(state) else state)
        else:
            self.wait += 1
            if self.wait >= self.patience and self.stopped_step is None:
                self.stopped_step = step
        return self.should_stop

    @property
    def best_state(self) -> dict[str, Any] | None:
        """A copy of the state saved at the best step (``None`` if none was given)."""
        return None if self._best_state is None else _copy_state(self._best_state)

    def restore(self, into: dict[str, Any] | Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        """Return (a copy of) the best state; with ``into``, also load it there.

        ``into`` may be a dict of arrays (arrays are overwritten in place, so references held by a
        model see the best values; other entries are replaced) or a callable such as
        ``model.load_state_dict``, called with the state.
        """
        if not self.restore_best:
            raise ValueError("EarlyStopping.restore: created with restore_best=False, no state was kept")
        if self._best_state is None:
            raise ValueError("EarlyStopping.restore: no state recorded; pass state=... to step()")
        best = _copy_state(self._best_state)
        if callable(into):
            into(best)
        elif into is not None:
            for k, v in best.items():
                cur = into.get(k)
                if isinstance(cur, np.ndarray) and isinstance(v, np.ndarray) and cur.shape == v.shape:
                    np.copyto(cur, v)
                else:
                    into[k] = copy.deepcopy(v)
        return best

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, mode={self.mode!r}, "
            f"best={self.best}, best_step={self.best_step}, wait={self.wait})"
        )


def _copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(state, Mapping):
        raise TypeError(
            f"EarlyStopping: state must be a dict of arrays (or a callable returning one), got {type(state).__name__}"
        )
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            out[k] = v.copy()
        elif hasattr(v, "numpy") and callable(v.numpy):  # framework tensors
            out[k] = np.array(v.numpy(), copy=True)
        else:
            out[k] = copy.deepcopy(v)
    return out
