"""Initialisers, as ``torch.nn.init``: each fills a variable in place and returns it.

They take a variable (``nn.Parameter`` / ``ag.parameter``) or a numpy array. Random ones draw from
``generator`` (a ``numpy.random.Generator``) or from this module's generator, seeded by
:func:`manual_seed`. Fan computation, gains and bounds follow PyTorch exactly, so the default
initialisation of every layer has PyTorch's distribution (not its random stream).

Example:
    >>> import numpy as np
    >>> from asg import nn
    >>> nn.init.manual_seed(0)
    >>> w = nn.init.kaiming_uniform_(nn.Parameter(np.zeros((256, 128))), nonlinearity="relu")
    >>> bound = np.sqrt(2.0) * np.sqrt(3.0 / 128)
    >>> bool(np.abs(w.numpy()).max() <= bound)
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import asg.core as ag

__all__ = [
    "calculate_gain",
    "constant_",
    "eye_",
    "glorot_normal_",
    "glorot_uniform_",
    "he_normal_",
    "he_uniform_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "manual_seed",
    "normal_",
    "ones_",
    "orthogonal_",
    "trunc_normal_",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

_GENERATOR = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator the initialisers (and so every layer's default init) draw from."""
    global _GENERATOR
    _GENERATOR = np.random.default_rng(seed)


def default_generator() -> np.random.Generator:
    """The generator used when none is passed (see :func:`manual_seed`)."""
    return _GENERATOR


def _shape(target: Any) -> tuple[int, ...]:
    shape = tuple(target.shape)
    if not all(isinstance(d, int) for d in shape):
        raise ValueError(f"init: cannot initialise a tensor with symbolic shape {shape}")
    return shape


def _fill(target: Any, values: np.ndarray) -> Any:
    if isinstance(target, ag.Tensor):
        target.assign(values)
    else:
        np.copyto(target, values, casting="unsafe")
    return target


def _dtype(target: Any) -> np.dtype:
    return np.dtype(target.dtype)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (``torch.nn.init.calculate_gain``).

    >>> round(calculate_gain("relu"), 4), round(calculate_gain("leaky_relu", 0.2), 4)
    (1.4142, 1.3868)
    """
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of "
        "linear, conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, sigmoid, tanh, relu, leaky_relu, selu"
    )


def calculate_fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` as PyTorch computes them: dims 1 and 0 times the receptive field.

    >>> calculate_fan_in_and_fan_out((16, 3, 5, 5))
    (75, 400)
    """
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape: tuple[int, ...], mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    return fan_in if mode == "fan_in" else fan_out


def _gen(generator: np.random.Generator | None) -> np.random.Generator:
    return _GENERATOR if generator is None else generator


# --------------------------------------------------------------------------- constant fills
def constant_(tensor: Any, val: float) -> Any:
    """Fill with ``val``."""
    return _fill(tensor, np.full(_shape(tensor), val, _dtype(tensor)))


def zeros_(tensor: Any) -> Any:
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor: Any) -> Any:
    """Fill with 1."""
    return constant_(tensor, 1.0)


def eye_(tensor: Any) -> Any:
    """The identity matrix (2-d tensors)."""
    shape = _shape(tensor)
    if len(shape) != 2:
        raise ValueError(f"eye_: only 2-d tensors, got shape {shape}")
    return _fill(tensor, np.eye(*shape, dtype=_dtype(tensor)))


# --------------------------------------------------------------------------- random fills
def uniform_(
    tensor: Any, a: float = 0.0, b: float = 1.0, generator: np.random.Generator | None = None
) -> Any:
    """Uniform in ``[a, b)``."""
    if not a <= b:
        raise ValueError(f"uniform_: need a <= b, got a={a}, b={b}")
    return _fill(tensor, _gen(generator).uniform(a, b, _shape(tensor)))


def normal_(
    tensor: Any, mean: float = 0.0, std: float = 1.0, generator: np.random.Generator | None = None
) -> Any:
    """Normal with ``mean`` and ``std``."""
    if std < 0:
        raise ValueError(f"normal_: std must be non-negative, got {std}")
    return _fill(tensor, _gen(generator).normal(mean, std, _shape(tensor)))


def trunc_normal_(
    tensor: Any,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: np.random.Generator | None = None,
) -> Any:
    """Normal with ``mean``/``std`` truncated to the absolute bounds ``[a, b]`` (PyTorch's meaning).

    Drawn by rejection (redrawing the values that fall outside), which gives exactly the truncated
    normal distribution.
    """
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    gen = _gen(generator)
    values = gen.normal(mean, std, _shape(tensor))
    for _ in range(1000):
        bad = (values < a) | (values > b)
        if not bad.any():
            return _fill(tensor, values)
        values[bad] = gen.normal(mean, std, int(bad.sum()))
    raise ValueError(
        f"trunc_normal_: [a, b] = [{a}, {b}] holds almost none of N({mean}, {std}^2); widen the bounds"
    )


def xavier_uniform_(tensor: Any, gain: float = 1.0, generator: np.random.Generator | None = None) -> Any:
    """Glorot uniform: ``U(-a, a)`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(_shape(tensor))
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor: Any, gain: float = 1.0, generator: np.random.Generator | None = None) -> Any:
    """Glorot normal: ``N(0, std^2)`` with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(_shape(tensor))
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def _kaiming_std(tensor: Any, a: float, mode: str, nonlinearity: str) -> float:
    return calculate_gain(nonlinearity, a) / math.sqrt(_fan(_shape(tensor), mode))


def kaiming_uniform_(
    tensor: Any,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Any:
    """He uniform: ``U(-b, b)`` with ``b = gain * sqrt(3 / fan)`` (``a`` is leaky_relu's slope)."""
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(
    tensor: Any,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Any:
    """He normal: ``N(0, std^2)`` with ``std = gain / sqrt(fan)``."""
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    return normal_(tensor, 0.0, std, generator)


def orthogonal_(tensor: Any, gain: float = 1.0, generator: np.random.Generator | None = None) -> Any:
    """A (semi-)orthogonal matrix, from the QR decomposition of a normal one (as PyTorch).

    Tensors of more than 2 dimensions are flattened to ``(shape[0], rest)``.
    """
    shape = _shape(tensor)
    if len(shape) < 2:
        raise ValueError(f"orthogonal_: only tensors with 2 or more dimensions, got shape {shape}")
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    flat = _gen(generator).normal(0.0, 1.0, (rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, (gain * q).reshape(shape))


glorot_uniform_ = xavier_uniform_
glorot_normal_ = xavier_normal_
he_uniform_ = kaiming_uniform_
he_normal_ = kaiming_normal_
