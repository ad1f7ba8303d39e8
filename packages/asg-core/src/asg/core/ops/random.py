"""Random numbers from explicit keys (as in JAX): the same key gives the same numbers on every run.

A key is an int64 scalar tensor: an input, a state variable, or one made by :func:`fold_in` /
:class:`RNG`. The generators are counter based and fully specified here, so any backend can
reproduce them bit for bit:

- ``fold_in(key, data)`` = ``mix64(mix64(key + G) ^ mix64(data + H))`` on uint64, where ``mix64`` is the
  splitmix64 finaliser (``G``, ``H`` below);
- a key expands to two 32-bit words ``k0, k1`` (the low and high halves of ``mix64(key)``); element
  ``i`` of a stream is ``hash32(hash32(i ^ k0) ^ k1)`` with ``hash32`` the "lowbias32" integer hash;
- uniform float32 takes the top 24 bits of a word, float64 combines two words into 53 bits
  (``(a >> 5) * 2**26 + (b >> 6)``); normal uses Box-Muller on two uniforms; bernoulli compares a
  word with ``round(p * 2**32)``.

Element ``i`` depends only on the key and ``i``, so a smaller batch draws a prefix of the same
numbers. Use each key once: ``random_uniform`` and ``bernoulli`` with one key read the same words.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dtypes import dtype_of, is_float
from ..errors import DTypeError, DTypeRuleError
from ..registry import KEY, RANDOM, TensorType, define_op
from ..shapes import Dim, format_shape, normalize_shape
from ..tensor import Tensor, apply, as_tensor, constant, state
from ._rules import broadcast

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_FOLD_SALT = 0xD1B54A32D192ED03
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


# ----------------------------------------------------------------------------- the hash functions
def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(_MIX1)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z: int) -> int:
    """:func:`_mix64` on one Python int."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _hash32(x: np.ndarray, scratch: np.ndarray) -> None:
    """The "lowbias32" integer permutation (hash-prospector), in place on a uint32 array."""
    np.right_shift(x, np.uint32(16), out=scratch)
    x ^= scratch
    x *= np.uint32(0x7FEB352D)
    np.right_shift(x, np.uint32(15), out=scratch)
    x ^= scratch
    x *= np.uint32(0x846CA68B)
    np.right_shift(x, np.uint32(16), out=scratch)
    x ^= scratch


@functools.lru_cache(maxsize=8)
def _counters(count: int) -> np.ndarray:
    counters = np.arange(count, dtype=np.uint32)
    counters.setflags(write=False)
    return counters


def random_bits(key: int, count: int) -> np.ndarray:
    """The first ``count`` 32-bit words of the stream of ``key`` (a uint32 array).

    >>> random_bits(0, 3).dtype, random_bits(0, 3).tolist() == random_bits(0, 5)[:3].tolist()
    (dtype('uint32'), True)
    """
    if count >= 1 << 32:
        raise ValueError(f"cannot draw {count} random numbers from one key (at most 2**32 - 1)")
    mixed = _mix64_int(int(key))
    k0, k1 = np.uint32(mixed & 0xFFFFFFFF), np.uint32(mixed >> 32)
    words = np.bitwise_xor(_counters(count), k0)
    scratch = np.empty_like(words)
    _hash32(words, scratch)
    words ^= k1
    _hash32(words, scratch)
    return words


def _uniform01(key: int, count: int, dtype: str) -> np.ndarray:
    """``count`` uniform numbers in [0, 1) of ``dtype`` (float64 uses 53 random bits)."""
    if dtype == "float64":
        words = random_bits(key, 2 * count).reshape(count, 2)
        high = (words[:, 0] >> np.uint32(5)).astype(np.float64)
        low = (words[:, 1] >> np.uint32(6)).astype(np.float64)
        return (high * 67108864.0 + low) * (1.0 / 9007199254740992.0)
    words = random_bits(key, count)
    u = (words >> np.uint32(8)).astype(np.float32)
    u *= np.float32(1.0 / 16777216.0)
    return u


# ----------------------------------------------------------------------------- shape rules
def _check_key(key: TensorType) -> None:
    if key.dtype != "int64" or key.ndim != 0:
        raise ValueError(
            f"the key must be an int64 scalar, got {key.dtype} {format_shape(key.shape)} (make one with "
            "ag.input('key', (), 'int64'), ag.state(np.int64(seed)) or ag.RNG(seed).next_key())"
        )


def _check_shape(shape: Sequence[Dim]) -> None:
    for d in shape:
        if isinstance(d, int) and d < 0:
            raise ValueError(f"negative dimension in shape {format_shape(shape)}")


def _random_float_infer(key: TensorType, shape: tuple, dtype: str, **params: float) -> TensorType:
    _check_key(key)
    _check_shape(shape)
    if not is_float(dtype):
        raise DTypeRuleError(f"dtype must be floating point, got {dtype}")
    low, high = params.get("low"), params.get("high")
    if low is not None and high is not None and not low < high:
        raise ValueError(f"low={low} must be less than high={high}")
    return TensorType(tuple(shape), dtype)


def _bernoulli_infer(key: TensorType, p: float, shape: tuple, dtype: str) -> TensorType:
    _check_key(key)
    _check_shape(shape)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    return TensorType(tuple(shape), dtype)


def _fold_in_infer(key: TensorType, data: TensorType) -> TensorType:
    for what, t in (("key", key), ("data", data)):
        if t.dtype not in ("int32", "int64"):
            raise DTypeRuleError(f"{what} must be an integer tensor, got {t.dtype}")
    return TensorType(broadcast(key, data), "int64")


# ----------------------------------------------------------------------------- kernels
def _fold_in_kernel(key: np.ndarray, data: np.ndarray) -> np.ndarray:
    key_bits = np.asarray(key).astype(np.int64).view(np.uint64)
    data_bits = np.asarray(data).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        mixed = _mix64(_mix64(key_bits + np.uint64(_GOLDEN)) ^ _mix64(data_bits + np.uint64(_FOLD_SALT)))
    return np.asarray(mixed).view(np.int64).reshape(np.broadcast_shapes(key.shape, data.shape))


def _uniform_kernel(
    key: np.ndarray, shape: tuple[int, ...], dtype: str, low: float, high: float
) -> np.ndarray:
    work = "float64" if dtype == "float64" else "float32"
    u = _uniform01(int(key), math.prod(shape), work)
    if (low, high) != (0.0, 1.0):
        u *= high - low
        u += low
    return u.reshape(shape).astype(dtype, copy=False)


def _normal_kernel(key: np.ndarray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    work = "float64" if dtype == "float64" else "float32"
    count = math.prod(shape)
    u = _uniform01(int(key), 2 * count, work).reshape(count, 2)
    radius = np.log1p(-u[:, 0])  # 1 - u is in (0, 1]: the log is finite
    radius *= -2.0
    np.sqrt(radius, out=radius)
    angle = u[:, 1] * (2.0 * math.pi)
    np.cos(angle, out=angle)
    radius *= angle
    return radius.reshape(shape).astype(dtype, copy=False)


def _bernoulli_kernel(key: np.ndarray, p: float, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    threshold = round(p * 4294967296.0)
    if threshold >= 1 << 32:
        mask = np.ones(shape, bool)
    else:
        mask = (random_bits(int(key), math.prod(shape)) < np.uint32(threshold)).reshape(shape)
    return mask if dtype == "bool" else mask.astype(dtype)


define_op(
    "fold_in",
    traits=(KEY,),
    infer=_fold_in_infer,
    kernel=_fold_in_kernel,
    differentiable=False,
    doc="A new key from a key and an integer (both may be arrays): splitmix64 mixing on int64.",
)
define_op(
    "random_uniform",
    traits=(RANDOM,),
    infer=_random_float_infer,
    kernel=_uniform_kernel,
    differentiable=False,
    shape_attrs=("shape",),
    doc="Uniform numbers in [low, high) drawn from a key.",
)
define_op(
    "random_normal",
    traits=(RANDOM,),
    infer=_random_float_infer,
    kernel=_normal_kernel,
    differentiable=False,
    shape_attrs=("shape",),
    doc="Standard normal numbers drawn from a key (Box-Muller).",
)
define_op(
    "bernoulli",
    traits=(RANDOM,),
    infer=_bernoulli_infer,
    kernel=_bernoulli_kernel,
    differentiable=False,
    shape_attrs=("shape",),
    doc="1 (True) with probability p, else 0 (False), drawn from a key.",
)


# ----------------------------------------------------------------------------- public functions
def _key(key: Any) -> Tensor:
    return as_tensor(key, "int64") if not isinstance(key, int) else constant(np.int64(key))


def fold_in(key: Any, data: Any) -> Tensor:
    """A new key derived from ``key`` and the integer ``data`` (an int or an integer tensor).

    Different ``data`` give independent streams from one key: give every call site its own.

    >>> import asg.core as ag
    >>> key = ag.input("key", (), "int64")
    >>> k1, k2 = ag.fold_in(key, 1), ag.fold_in(key, 2)
    >>> a, b = ag.compile([k1, k2])(np.int64(0))
    >>> int(a) != int(b)
    True
    """
    data = constant(np.int64(data)) if isinstance(data, int) else as_tensor(data, "int64")
    return apply("fold_in", _key(key), data)


def split_key(key: Any, num: int = 2) -> list[Tensor]:
    """``num`` independent keys from one key: ``[fold_in(key, 0), ..., fold_in(key, num - 1)]``.

    >>> import asg.core as ag
    >>> len(ag.split_key(ag.input("key", (), "int64"), 3))
    3
    """
    if num < 1:
        raise ValueError(f"split_key: num must be at least 1, got {num}")
    key = _key(key)
    return [fold_in(key, i) for i in range(num)]


def random_uniform(
    key: Any, shape: Sequence[Dim], dtype: Any = "float32", low: float = 0.0, high: float = 1.0
) -> Tensor:
    """Uniform numbers in ``[low, high)``; ``shape`` may be symbolic.

    >>> import asg.core as ag
    >>> f = ag.compile(ag.random_uniform(ag.input("key", (), "int64"), (2, 3), low=-1.0, high=1.0))
    >>> a, b = f(np.int64(7)), f(np.int64(7))
    >>> a.shape, bool((a == b).all()), bool((a >= -1).all() and (a < 1).all())
    ((2, 3), True, True)
    """
    return apply(
        "random_uniform",
        _key(key),
        shape=normalize_shape(shape),
        dtype=dtype_of(dtype),
        low=float(low),
        high=float(high),
    )


def random_normal(key: Any, shape: Sequence[Dim], dtype: Any = "float32") -> Tensor:
    """Standard normal numbers (mean 0, variance 1); ``shape`` may be symbolic.

    >>> import asg.core as ag
    >>> z = ag.compile(ag.random_normal(ag.constant(np.int64(0)), (10000,)))()
    >>> abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
    True
    """
    return apply("random_normal", _key(key), shape=normalize_shape(shape), dtype=dtype_of(dtype))


def bernoulli(key: Any, p: float, shape: Sequence[Dim], dtype: Any = "bool") -> Tensor:
    """True (or 1) with probability ``p``, else False (0); ``shape`` may be symbolic.

    >>> import asg.core as ag
    >>> m = ag.compile(ag.bernoulli(ag.constant(np.int64(0)), 0.25, (10000,)))()
    >>> m.dtype, abs(float(m.mean()) - 0.25) < 0.02
    (dtype('bool'), True)
    """
    return apply("bernoulli", _key(key), p=float(p), shape=normalize_shape(shape), dtype=dtype_of(dtype))


def dropout(x: Any, p: float, key: Any = None, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    The identity when ``training`` is False or ``p == 0``. The mask is ``bernoulli(key, 1 - p)``, so
    the same key drops the same elements; give each dropout layer its own key (``RNG.next_key``).
    The gradient is ``mask / (1 - p)``.

    >>> import asg.core as ag
    >>> x, key = ag.input("x", ("B", 100)), ag.input("key", (), "int64")
    >>> y = ag.compile(ag.dropout(x, 0.5, key))(np.ones((2, 100), "float32"), np.int64(3))
    >>> sorted(set(y.ravel().tolist()))
    [0.0, 2.0]
    """
    x = as_tensor(x)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1), got {p!r}")
    if not training or p == 0:
        return x
    if key is None:
        raise ValueError(
            f"dropout: {x.node.label} {format_shape(x.shape)}: training with p={p} needs a key "
            "(an int64 scalar tensor, e.g. ag.RNG(seed).next_key())"
        )
    if not is_float(x.dtype):
        raise DTypeError(f"dropout: {x.node.label} must be floating point, got {x.dtype}")
    keep = 1.0 - float(p)
    mask = bernoulli(key, keep, x.shape, x.dtype)
    return x * mask * (1.0 / keep)


class RNG:
    """A source of fresh keys for every call site and every training step.

    It holds a step counter (an int64 state variable). ``next_key()`` returns a new key tensor
    ``fold_in(fold_in(seed, counter), i)`` for its ``i``-th call site; ``updates()`` returns
    ``{counter: counter + 1}`` to merge into ``compile(updates=...)`` so each step draws new numbers.

    >>> import asg.core as ag
    >>> rng = ag.RNG(seed=0)
    >>> x = ag.input("x", ("B", 1000))
    >>> h = ag.dropout(x, 0.5, rng.next_key())
    >>> y = ag.dropout(h, 0.5, rng.next_key())  # another layer: another stream
    >>> step = ag.compile(y, updates=rng.updates())
    >>> ones = np.ones((1, 1000), "float32")
    >>> first, second = step(ones), step(ones)
    >>> bool((first != second).any()), int(rng.counter.numpy())
    (True, 2)
    """

    def __init__(self, seed: int, name: str = "rng") -> None:
        self.seed = int(seed)
        self.counter = state(np.int64(0), name=f"{name}.counter")
        self._step_key = fold_in(constant(np.int64(self.seed)), self.counter)
        self._calls = 0

    def next_key(self) -> Tensor:
        """A key for one more call site (it changes every step once ``updates()`` is compiled in)."""
        key = fold_in(self._step_key, self._calls)
        self._calls += 1
        return key

    def updates(self) -> dict[Tensor, Tensor]:
        """``{counter: counter + 1}``: merge into ``compile(updates=...)``."""
        return {self.counter: self.counter + 1}
