"""Positional encodings: sinusoidal, learned, rotary (RoPE, applied to q/k) and ALiBi (an attention bias).

All follow the sequence length of the input, symbolic or not: positions come from ``ag.arange(T)``.

>>> import asg.core as ag
>>> from asg import nn
>>> x = ag.input("x", ("B", "T", 16))
>>> nn.SinusoidalPositionalEncoding(16)(x).shape
('B', 'T', 16)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import asg.core as ag
from asg.core.shapes import format_shape

from . import init
from .module import Module, Parameter

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "alibi_bias",
    "alibi_bias_at",
    "alibi_slopes",
    "apply_rotary",
    "sinusoidal_table",
]


def sinusoidal_table(num_positions: int, dim: int, base: float = 10000.0) -> np.ndarray:
    """``(num_positions, dim)``: ``sin(p / base^(2i/dim))`` at even columns, ``cos`` at odd ones (Vaswani et al.).

    >>> sinusoidal_table(3, 4)[1].astype("float64").round(3).tolist()  # sin 1, cos 1, sin 0.01, cos 0.01
    [0.841, 0.54, 0.01, 1.0]
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_table: dim must be even, got {dim}")
    position = np.arange(num_positions, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(base) / dim))
    table = np.zeros((num_positions, dim))
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div)
    return table.astype(np.float32)


def _positions(x: ag.Tensor, axis: int, max_len: int, what: str) -> ag.Tensor:
    t = x.shape[axis]
    if isinstance(t, int) and t > max_len:
        raise ag.ShapeError(f"{what}: sequence length {t} of {x.node.label} exceeds max_len={max_len}")
    return ag.arange(t)


class SinusoidalPositionalEncoding(Module):
    """``x + table[:T]`` for ``x`` ``(N, T, D)`` (``batch_first``) or ``(T, N, D)``; the table is not a parameter."""

    def __init__(
        self, d_model: int, max_len: int = 5000, base: float = 10000.0, batch_first: bool = True
    ) -> None:
        super().__init__()
        self.d_model, self.max_len, self.batch_first = d_model, max_len, batch_first
        self.table = ag.constant(sinusoidal_table(max_len, d_model, base))

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Adds the sinusoidal table's first ``T`` rows: ``(B, T, D)`` (``(T, B, D)`` unless ``batch_first``),
        shape kept.
        """
        axis = 1 if self.batch_first else 0
        pe = ag.embedding(
            _positions(x, axis, self.max_len, "SinusoidalPositionalEncoding"), self.table
        )  # (T, D)
        return x + (pe if self.batch_first else ag.unsqueeze(pe, 1))


class LearnedPositionalEmbedding(Module):
    """``x + weight[:T]`` with a learned ``weight`` ``(num_positions, dim)`` ~ N(0, 1) (as ``nn.Embedding``)."""

    def __init__(self, num_positions: int, dim: int, batch_first: bool = True) -> None:
        super().__init__()
        self.num_positions, self.batch_first = num_positions, batch_first
        self.weight = Parameter(np.zeros((num_positions, dim), np.float32))
        init.normal_(self.weight)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Adds ``weight[:T]``: ``(B, T, D)`` (``(T, B, D)`` unless ``batch_first``), shape kept."""
        axis = 1 if self.batch_first else 0
        pe = ag.embedding(_positions(x, axis, self.num_positions, "LearnedPositionalEmbedding"), self.weight)
        return x + (pe if self.batch_first else ag.unsqueeze(pe, 1))


def _rotate_half(x: ag.Tensor) -> ag.Tensor:
    half = x.shape[-1] // 2
    return ag.concat([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: ag.Tensor, cos: ag.Tensor, sin: ag.Tensor) -> ag.Tensor:
    """``x * cos + rotate_half(x) * sin`` (the GPT-NeoX / LLaMA convention), cos/sin broadcasting to x."""
    return x * cos + _rotate_half(x) * sin


class RotaryEmbedding(Module):
    """Rotary position embedding (RoPE) for queries and keys ``(N, H, T, head_dim)``.

    ``q, k = rope(q, k)`` rotates each pair of feature halves by ``position * base^(-2i/head_dim)``, so
    ``q_m . k_n`` depends only on ``m - n``. ``offset`` shifts the positions (for decoding after a prefix).

    >>> import asg.core as ag
    >>> from asg import nn
    >>> q = ag.input("q", ("B", 4, "T", 8))
    >>> [t.shape for t in nn.RotaryEmbedding(8)(q, q)]
    [('B', 4, 'T', 8), ('B', 4, 'T', 8)]
    """

    def __init__(self, head_dim: int, max_len: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim, self.max_len, self.base = head_dim, max_len, base
        inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        angles = np.arange(max_len, dtype=np.float64)[:, None] * inv_freq[None, :]
        angles = np.concatenate([angles, angles], axis=1)  # (max_len, head_dim)
        self.cos_table = ag.constant(np.cos(angles).astype(np.float32))
        self.sin_table = ag.constant(np.sin(angles).astype(np.float32))

    def forward(self, q: ag.Tensor, k: ag.Tensor, offset: int = 0) -> tuple[ag.Tensor, ag.Tensor]:
        """Rotates queries and keys ``(*, T, head_dim)`` at positions ``offset + arange(T)``;
        returns ``(q, k)`` of the same shapes.
        """
        out = []
        for x in (q, k):
            x = ag.as_tensor(x)
            pos = _positions(x, -2, self.max_len - offset, "RotaryEmbedding") + offset
            out.append(self.rotate(x, pos))
        return out[0], out[1]

    def rotate(self, x: ag.Tensor, positions: ag.Tensor) -> ag.Tensor:
        """Rotate ``x`` ``(*, T, head_dim)`` at explicit integer ``positions`` ``(T,)`` below ``max_len``.

        For callers whose positions are not ``offset + arange(T)`` (e.g. a KV cache's slots).

        >>> import asg.core as ag
        >>> from asg import nn
        >>> q = ag.input("q", ("B", 2, "T", 8))
        >>> nn.RotaryEmbedding(8).rotate(q, ag.arange(q.shape[2])).shape
        ('B', 2, 'T', 8)
        """
        x = ag.as_tensor(x)
        if x.shape[-1] != self.head_dim:
            raise ag.ShapeError(
                f"RotaryEmbedding: {x.node.label} {format_shape(x.shape)} must end in head_dim={self.head_dim}"
            )
        cos, sin = ag.embedding(positions, self.cos_table), ag.embedding(positions, self.sin_table)  # (T, d)
        return apply_rotary(x, cos, sin)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The ALiBi head slopes (Press et al.): ``2^(-8 h / n)`` for ``n`` a power of two, interpolated otherwise.

    >>> alibi_slopes(4).tolist()
    [0.25, 0.0625, 0.015625, 0.00390625]
    """

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, np.float32)


def alibi_bias(num_heads: int, t_q: Any, t_k: Any | None = None) -> ag.Tensor:
    """The ALiBi attention bias ``(H, T_q, T_k)``: ``slope_h * (j - i)`` (queries aligned at the end), added to scores.

    Combine it with a causal mask: future keys get a positive bias that the mask removes.
    """
    t_k = t_q if t_k is None else t_k
    q_positions = ag.arange(t_q)
    if isinstance(t_q, int) and isinstance(t_k, int):
        if t_k != t_q:
            q_positions = q_positions + (t_k - t_q)
    elif t_q != t_k:
        raise ag.ShapeError(f"alibi_bias: symbolic lengths must be equal, got {t_q!r} and {t_k!r}")
    return alibi_bias_at(num_heads, q_positions, ag.arange(t_k))


def alibi_bias_at(num_heads: int, q_positions: ag.Tensor, k_positions: ag.Tensor) -> ag.Tensor:
    """The ALiBi bias ``(H, T_q, T_k)`` at explicit positions ``(T_q,)`` and ``(T_k,)``: ``slope_h * (k - q)``.

    For queries and keys not laid out as :func:`alibi_bias` assumes (e.g. a KV cache's slots).

    >>> import asg.core as ag
    >>> alibi_bias_at(2, ag.arange(3), ag.arange(5)).shape
    (2, 3, 5)
    """
    q = ag.unsqueeze(ag.cast(q_positions, "float32"), 1)  # (T_q, 1)
    k = ag.unsqueeze(ag.cast(k_positions, "float32"), 0)  # (1, T_k)
    slopes = ag.constant(alibi_slopes(num_heads).reshape(num_heads, 1, 1))
    return slopes * ag.unsqueeze(k - q, 0)
