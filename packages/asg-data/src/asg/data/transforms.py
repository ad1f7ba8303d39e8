"""Transforms: functions on one sample (``t(x)``) that also know how to work on a whole batch
(``t.batch(xs)``, batch on axis 0), which the `DataLoader` fast path uses.

Image transforms take images with height and width as the last two axes (``(H, W)`` or ``(C, H, W)``),
or, with ``channels_last=True``, as axes -3 and -2 (``(H, W, C)``).

Random transforms draw from, in order: the ``rng`` argument of the call, the generator that the
`DataLoader` installs for each batch (seeded from the loader seed, the epoch and the batch number, so
augmentations are the same whatever ``num_workers``), and otherwise the transform's own generator made
from its ``seed``.

>>> import numpy as np
>>> pipeline = Compose([ToFloat(scale=1 / 255), Normalize(mean=0.5, std=0.5), Flatten()])
>>> pipeline(np.full((2, 2), 255, np.uint8)).tolist()
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "Clip",
    "Compose",
    "Flatten",
    "Lambda",
    "Log",
    "MinMaxScale",
    "Normalize",
    "OneHot",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomNoise",
    "ToFloat",
    "Transform",
    "rng_scope",
]

SeedLike = int | np.random.Generator | None

_active = threading.local()


class _LazyGenerator:
    """A generator made on first use (most batches never need one): from a ready generator, a
    SeedSequence, or an (entropy, spawn_key) pair as the DataLoader passes per batch."""

    __slots__ = ("generator", "source")

    def __init__(
        self, source: np.random.Generator | np.random.SeedSequence | tuple[int, tuple[int, ...]]
    ) -> None:
        self.source = source
        self.generator = source if isinstance(source, np.random.Generator) else None

    def get(self) -> np.random.Generator:
        if self.generator is None:
            source = self.source
            if isinstance(source, tuple):
                source = np.random.SeedSequence(source[0], spawn_key=source[1])
            self.generator = np.random.default_rng(source)
        return self.generator


def _activate(holder: _LazyGenerator | None) -> _LazyGenerator | None:
    """Install ``holder`` for this thread and return the previous one (the loader's cheap rng_scope)."""
    previous = getattr(_active, "rng", None)
    _active.rng = holder
    return previous


@contextmanager
def rng_scope(source: np.random.Generator | np.random.SeedSequence) -> Iterator[None]:
    """Make random transforms called in this thread inside the ``with`` block draw from ``source``.

    >>> flip = RandomHorizontalFlip(p=0.5, seed=123)
    >>> x = np.arange(6).reshape(1, 2, 3)
    >>> with rng_scope(np.random.SeedSequence(7)):
    ...     a = flip.batch(np.repeat(x, 8, axis=0))
    >>> with rng_scope(np.random.SeedSequence(7)):
    ...     b = flip.batch(np.repeat(x, 8, axis=0))
    >>> bool((a == b).all())
    True
    """
    previous = _activate(_LazyGenerator(source))
    try:
        yield
    finally:
        _activate(previous)


class Transform(ABC):
    """Base class. Subclasses implement ``__call__`` for one sample; ``batch`` defaults to a loop."""

    @abstractmethod
    def __call__(self, x: Any) -> Any:
        raise NotImplementedError

    def batch(self, xs: Any) -> Any:
        """Apply to every sample of ``xs`` (batch on axis 0) and stack the results."""
        return np.stack([self(x) for x in xs])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class _ElementwiseTransform(Transform):
    """A transform that does not care about the batch axis: ``batch(xs)`` is ``self(xs)``."""

    def batch(self, xs: Any) -> Any:
        """Applies the transform to the whole batch at once (it is elementwise)."""
        return self(xs)


class _RandomTransform(Transform):
    def __init__(self, seed: SeedLike) -> None:
        self._own_rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def _generator(self, rng: np.random.Generator | None) -> np.random.Generator:
        if rng is not None:
            return rng
        holder = getattr(_active, "rng", None)
        return holder.get() if holder is not None else self._own_rng


class Compose(Transform):
    """Apply transforms one after the other.

    >>> Compose([Clip(0, 1), Log(offset=1.0)])(np.array([-1.0, 0.0, 5.0])).round(3).tolist()
    [0.0, 0.0, 0.693]
    """

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def batch(self, xs: Any) -> Any:
        """Apply each transform's ``batch`` in turn (one sample at a time for one without it)."""
        for t in self.transforms:
            batch_fn = getattr(t, "batch", None)
            xs = batch_fn(xs) if callable(batch_fn) else np.stack([t(x) for x in xs])
        return xs


class Lambda(Transform):
    """Wrap a function of one sample; pass ``batched=True`` if it also works on a batch unchanged.

    >>> Lambda(lambda v: v + 1, batched=True).batch(np.zeros(3)).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, fn: Callable[[Any], Any], batched: bool = False) -> None:
        self.fn = fn
        self.batched = batched

    def __call__(self, x: Any) -> Any:
        return self.fn(x)

    def batch(self, xs: Any) -> Any:
        """``fn(xs)`` when ``batched=True``, else ``fn`` on each sample, stacked."""
        return self.fn(xs) if self.batched else super().batch(xs)


class ToFloat(_ElementwiseTransform):
    """Convert to a float dtype (float32 by default) and multiply by ``scale``.

    >>> out = ToFloat(scale=1 / 255)(np.array([0, 255], np.uint8))
    >>> out.tolist(), out.dtype.name
    ([0.0, 1.0], 'float32')
    """

    def __init__(self, scale: float = 1.0, dtype: Any = np.float32) -> None:
        self.scale = float(scale)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"ToFloat dtype must be a float dtype, got {self.dtype}")

    def __call__(self, x: Any) -> np.ndarray:
        if self.scale == 1.0:
            return np.array(x, dtype=self.dtype, copy=True)
        # One pass: the ufunc casts each element to the float dtype and scales it.
        return np.asarray(np.multiply(x, self.dtype.type(self.scale), dtype=self.dtype))


def _channel_shape(values: np.ndarray, ndim: int, channel_axis: int | None, batched: bool) -> np.ndarray:
    """Reshape per-channel ``values`` to broadcast along ``channel_axis`` of an ``ndim``-array."""
    if values.ndim == 0 or channel_axis is None:
        return values
    axis = channel_axis + (1 if batched and channel_axis >= 0 else 0)
    if not -ndim <= axis < ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for input with {ndim} dims")
    shape = [1] * ndim
    shape[axis] = values.shape[0]
    return values.reshape(shape)


class Normalize(Transform):
    """``(x - mean) / std``; per-channel statistics broadcast along ``channel_axis`` (of one sample).

    >>> Normalize(mean=[1.0, 2.0], std=[2.0, 4.0], channel_axis=0)(np.array([[3.0], [6.0]])).tolist()
    [[1.0], [1.0]]
    """

    def __init__(self, mean: Any, std: Any, channel_axis: int | None = None, dtype: Any = np.float32) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if self.mean.ndim > 1 or self.std.ndim > 1:
            raise ValueError("Normalize mean and std must be scalars or 1-D (one value per channel)")
        if np.any(self.std <= 0) or not np.all(np.isfinite(self.std)):
            raise ValueError(f"Normalize std must be positive and finite, got {self.std.tolist()}")
        if (self.mean.ndim == 1 or self.std.ndim == 1) and channel_axis is None:
            raise ValueError("per-channel mean/std need channel_axis")
        self.channel_axis = channel_axis
        self.dtype = np.dtype(dtype)

    @classmethod
    def fit(cls, data: Any, channel_axis: int | None = None) -> Normalize:
        """Statistics of ``data`` (a batch, axis 0 = samples); per channel if ``channel_axis`` is given.

        >>> norm = Normalize.fit(np.array([[0.0, 2.0], [2.0, 6.0]]))
        >>> float(norm.mean), float(norm.std)
        (2.5, 2.179449471770337)
        """
        arr = np.asarray(data, dtype=np.float64)
        if channel_axis is None:
            return cls(arr.mean(), arr.std(), None)
        axis = channel_axis + 1 if channel_axis >= 0 else arr.ndim + channel_axis
        reduce_axes = tuple(a for a in range(arr.ndim) if a != axis)
        return cls(arr.mean(axis=reduce_axes), arr.std(axis=reduce_axes), channel_axis)

    def _apply(self, x: Any, batched: bool) -> np.ndarray:
        arr = np.asarray(x)
        mean = _channel_shape(self.mean, arr.ndim, self.channel_axis, batched).astype(self.dtype)
        std = _channel_shape(self.std, arr.ndim, self.channel_axis, batched).astype(self.dtype)
        return ((arr.astype(self.dtype, copy=False) - mean) / std).astype(self.dtype, copy=False)

    def __call__(self, x: Any) -> np.ndarray:
        return self._apply(x, batched=False)

    def batch(self, xs: Any) -> np.ndarray:
        """Normalise a batch (axis 0 = samples); ``channel_axis`` still counts within one sample."""
        return self._apply(xs, batched=True)


class MinMaxScale(Transform):
    """Map ``[data_min, data_max]`` linearly onto ``feature_range``; constant features map to its low end.

    >>> MinMaxScale(data_min=0.0, data_max=10.0, feature_range=(-1.0, 1.0))(
    ...     np.array([0.0, 5.0, 10.0])
    ... ).tolist()
    [-1.0, 0.0, 1.0]
    """

    def __init__(self, data_min: Any, data_max: Any, feature_range: tuple[float, float] = (0.0, 1.0)) -> None:
        self.data_min = np.asarray(data_min, dtype=np.float64)
        self.data_max = np.asarray(data_max, dtype=np.float64)
        if self.data_min.shape != self.data_max.shape:
            raise ValueError(f"data_min shape {self.data_min.shape} != data_max shape {self.data_max.shape}")
        if np.any(self.data_max < self.data_min):
            raise ValueError("MinMaxScale data_max must be >= data_min everywhere")
        low, high = feature_range
        if not low < high:
            raise ValueError(f"feature_range must be (low, high) with low < high, got {feature_range}")
        self.feature_range = (float(low), float(high))

    @classmethod
    def fit(cls, data: Any, feature_range: tuple[float, float] = (0.0, 1.0)) -> MinMaxScale:
        """Per-feature minimum and maximum over axis 0 of ``data``.

        >>> MinMaxScale.fit(np.array([[0.0, 10.0], [4.0, 20.0]])).batch(np.array([[2.0, 20.0]])).tolist()
        [[0.5, 1.0]]
        """
        arr = np.asarray(data, dtype=np.float64)
        return cls(arr.min(axis=0), arr.max(axis=0), feature_range)

    def __call__(self, x: Any) -> np.ndarray:
        span = self.data_max - self.data_min
        safe_span = np.where(span > 0, span, 1.0)
        unit = np.where(span > 0, (np.asarray(x, dtype=np.float64) - self.data_min) / safe_span, 0.0)
        low, high = self.feature_range
        return (low + unit * (high - low)).astype(np.float32)

    def batch(self, xs: Any) -> np.ndarray:
        """The same map on a whole batch (it is elementwise)."""
        return self(xs)


class OneHot(_ElementwiseTransform):
    """Integer labels of any shape to one-hot vectors on a new last axis.

    >>> OneHot(3)(np.array([2, 0])).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """

    def __init__(self, num_classes: int, dtype: Any = np.float32) -> None:
        if isinstance(num_classes, bool) or int(num_classes) <= 0:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.dtype = np.dtype(dtype)

    def __call__(self, x: Any) -> np.ndarray:
        labels = np.asarray(x)
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            if not np.all(labels == np.round(labels)):
                raise ValueError("OneHot labels must be integers")
            labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)].flat[0]
            raise ValueError(f"OneHot label {bad} is outside 0..{self.num_classes - 1}")
        return np.eye(self.num_classes, dtype=self.dtype)[labels]


class Clip(_ElementwiseTransform):
    """Limit values to ``[low, high]`` (either may be None).

    >>> Clip(0, 1)(np.array([-2.0, 0.5, 3.0])).tolist()
    [0.0, 0.5, 1.0]
    """

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        if low is None and high is None:
            raise ValueError("Clip needs low, high or both")
        if low is not None and high is not None and low > high:
            raise ValueError(f"Clip low {low} is greater than high {high}")
        self.low, self.high = low, high

    def __call__(self, x: Any) -> np.ndarray:
        return np.clip(np.asarray(x), self.low, self.high)


class Log(_ElementwiseTransform):
    """``log(x + offset)``, in ``base`` if given; raises on values where that is not defined.

    >>> Log(offset=1.0, base=2)(np.array([0.0, 1.0, 3.0])).tolist()
    [0.0, 1.0, 2.0]
    """

    def __init__(self, offset: float = 0.0, base: float | None = None) -> None:
        if base is not None and (base <= 0 or base == 1):
            raise ValueError(f"Log base must be positive and not 1, got {base}")
        self.offset = float(offset)
        self.base = base

    def __call__(self, x: Any) -> np.ndarray:
        shifted = np.asarray(x, dtype=np.float64) + self.offset
        if shifted.size and shifted.min() <= 0:
            raise ValueError(
                f"Log: {int((shifted <= 0).sum())} value(s) of x + offset are <= 0 "
                f"(offset={self.offset}); the logarithm is undefined there"
            )
        out = np.log(shifted)
        if self.base is not None:
            out /= math.log(self.base)
        return out.astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float32)


class Flatten(Transform):
    """Flatten one sample to 1-D (a batch to ``(batch, features)``).

    >>> Flatten().batch(np.zeros((4, 2, 3))).shape
    (4, 6)
    """

    def __call__(self, x: Any) -> np.ndarray:
        return np.asarray(x).reshape(-1)

    def batch(self, xs: Any) -> np.ndarray:
        """Reshape a batch to ``(batch, features)``."""
        arr = np.asarray(xs)
        return arr.reshape(arr.shape[0], -1)


class RandomNoise(_RandomTransform, _ElementwiseTransform):
    """Add Gaussian noise with standard deviation ``std`` (and mean ``mean``); output is float32.

    >>> noisy = RandomNoise(std=0.1, seed=0)(np.zeros(10_000))
    >>> round(float(noisy.std()), 1), noisy.dtype.name
    (0.1, 'float32')
    """

    def __init__(self, std: float, mean: float = 0.0, seed: SeedLike = None) -> None:
        super().__init__(seed)
        if std < 0:
            raise ValueError(f"RandomNoise std must be non-negative, got {std}")
        self.std, self.mean = float(std), float(mean)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        noise = self._generator(rng).normal(self.mean, self.std, size=arr.shape).astype(np.float32)
        return arr + noise


def _spatial_axes(ndim: int, channels_last: bool) -> tuple[int, int]:
    need = 3 if channels_last else 2
    if ndim < need:
        layout = "(..., H, W, C)" if channels_last else "(..., H, W)"
        raise ValueError(f"expected an image laid out as {layout}, got an array with {ndim} dims")
    return (ndim - 3, ndim - 2) if channels_last else (ndim - 2, ndim - 1)


class RandomCrop(_RandomTransform):
    """Pad by ``padding`` pixels on each side (``fill`` or a numpy pad mode), then crop ``size`` at random.

    >>> crop = RandomCrop(size=(28, 28), padding=4, seed=0)
    >>> crop(np.ones((1, 28, 28))).shape, crop.batch(np.ones((5, 1, 28, 28))).shape
    ((1, 28, 28), (5, 1, 28, 28))
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        padding: int = 0,
        fill: float = 0,
        pad_mode: str = "constant",
        channels_last: bool = False,
        seed: SeedLike = None,
    ) -> None:
        super().__init__(seed)
        self.size = (
            (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        )
        if len(self.size) != 2 or min(self.size) <= 0:
            raise ValueError(f"RandomCrop size must be a positive int or (height, width), got {size!r}")
        if padding < 0:
            raise ValueError(f"RandomCrop padding must be non-negative, got {padding}")
        self.padding, self.fill, self.pad_mode, self.channels_last = (
            int(padding),
            fill,
            pad_mode,
            channels_last,
        )

    def _pad(self, arr: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
        if not self.padding:
            return arr
        widths = [(0, 0)] * arr.ndim
        for a in axes:
            widths[a] = (self.padding, self.padding)
        if self.pad_mode == "constant":
            return np.pad(arr, widths, mode="constant", constant_values=self.fill)
        return np.pad(arr, widths, mode=self.pad_mode)  # type: ignore[call-overload]

    def _offsets(
        self, padded_shape: tuple[int, ...], axes: tuple[int, int], count: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        height, width = padded_shape[axes[0]], padded_shape[axes[1]]
        h, w = self.size
        if h > height or w > width:
            raise ValueError(
                f"RandomCrop size {self.size} is larger than the padded image ({height}, {width})"
            )
        return rng.integers(0, height - h + 1, size=count), rng.integers(0, width - w + 1, size=count)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        arr = np.asarray(x)
        axes = _spatial_axes(arr.ndim, self.channels_last)
        padded = self._pad(arr, axes)
        tops, lefts = self._offsets(padded.shape, axes, 1, self._generator(rng))
        index = [slice(None)] * arr.ndim
        index[axes[0]] = slice(int(tops[0]), int(tops[0]) + self.size[0])
        index[axes[1]] = slice(int(lefts[0]), int(lefts[0]) + self.size[1])
        return padded[tuple(index)].copy()

    def batch(self, xs: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        """Crop each sample of the batch at its own random offset; ``rng`` defaults to the
        DataLoader's per-batch generator, else this transform's own.
        """
        arr = np.asarray(xs)
        axes = _spatial_axes(arr.ndim - 1, self.channels_last)
        axes = (axes[0] + 1, axes[1] + 1)
        padded = self._pad(arr, axes)
        tops, lefts = self._offsets(padded.shape, axes, len(arr), self._generator(rng))
        out_shape = list(arr.shape)
        out_shape[axes[0]], out_shape[axes[1]] = self.size
        out = np.empty(out_shape, dtype=arr.dtype)
        index = [slice(None)] * arr.ndim
        for k in range(len(arr)):
            index[0] = k  # type: ignore[call-overload]
            index[axes[0]] = slice(int(tops[k]), int(tops[k]) + self.size[0])
            index[axes[1]] = slice(int(lefts[k]), int(lefts[k]) + self.size[1])
            out[k] = padded[tuple(index)]
        return out


class RandomHorizontalFlip(_RandomTransform):
    """Mirror the image left-right with probability ``p`` (each sample of a batch decides on its own).

    >>> RandomHorizontalFlip(p=1.0)(np.array([[1, 2, 3]])).tolist()
    [[3, 2, 1]]
    """

    def __init__(self, p: float = 0.5, channels_last: bool = False, seed: SeedLike = None) -> None:
        super().__init__(seed)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p must be in [0, 1], got {p}")
        self.p, self.channels_last = float(p), channels_last

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        arr = np.asarray(x)
        width_axis = _spatial_axes(arr.ndim, self.channels_last)[1]
        if self._generator(rng).random() < self.p:
            return np.flip(arr, axis=width_axis).copy()
        return arr.copy()

    def batch(self, xs: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        """Flip each sample of the batch with probability ``p``, deciding per sample;
        ``rng`` as for :meth:`RandomCrop.batch`.
        """
        arr = np.asarray(xs)
        width_axis = _spatial_axes(arr.ndim - 1, self.channels_last)[1] + 1
        flip = self._generator(rng).random(len(arr)) < self.p
        out = arr.copy()
        out[flip] = np.flip(arr[flip], axis=width_axis)
        return out
