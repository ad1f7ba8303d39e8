"""Position encodings the zoo's attention layers share: rotary embeddings (RoPE) and ALiBi biases.

asg-nn has no RoPE/ALiBi yet; these are plain functions over asg-core tensors so they can move into
``asg.nn.functional`` unchanged.

>>> import numpy as np
>>> import asg.core as ag
>>> q = ag.input("q", ("B", 2, "T", 8))
>>> apply_rope(q, ag.arange(q.shape[2])).shape
('B', 2, 'T', 8)
>>> alibi_slopes(4).tolist()
[0.25, 0.0625, 0.015625, 0.00390625]
"""

from __future__ import annotations

import math

import numpy as np

import asg.core as ag

__all__ = ["alibi_bias", "alibi_slopes", "apply_rope", "rope_frequencies", "rope_tables"]


def rope_frequencies(head_dim: int, base: float = 10000.0) -> np.ndarray:
    """``base ** (-2i / head_dim)`` for ``i < head_dim / 2`` (the rotation speed of each channel pair)."""
    if head_dim % 2:
        raise ValueError(f"rope: the head size must be even, got head_dim={head_dim}")
    return (base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)


def rope_tables(head_dim: int, max_positions: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of ``position * freq`` for every position below ``max_positions``: 2 x ``(P, d)``.

    asg-core has no trigonometric ops, so the tables are computed once in float64 and looked up by position.
    """
    angles = np.arange(max_positions, dtype=np.float64)[:, None] * rope_frequencies(head_dim, base)[None, :]
    angles = np.concatenate([angles, angles], axis=1)  # (P, d): channel i and i + d/2 share an angle
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(
    x: ag.Tensor, positions: ag.Tensor, max_positions: int = 2048, base: float = 10000.0
) -> ag.Tensor:
    """Rotate channel pairs ``(x[i], x[i + d/2])`` by ``position * freq_i`` (the GPT-NeoX / LLaMA layout).

    Shape: x ``(*, T, d)``, positions ``(T,)`` integers below ``max_positions`` -> ``(*, T, d)``.
    """
    d = x.shape[-1]
    cos, sin = rope_tables(d, max_positions, base)
    cos_t = ag.embedding(positions, ag.constant(cos))  # (T, d)
    sin_t = ag.embedding(positions, ag.constant(sin))  # (T, d)
    x1, x2 = ag.split(x, d // 2, axis=-1)  # 2 x (*, T, d/2)
    rotated = ag.concat([-x2, x1], axis=-1)  # (*, T, d)
    return x * cos_t + rotated * sin_t


def alibi_slopes(n_head: int) -> np.ndarray:
    """ALiBi's per-head slopes ``2^(-8 i / n)`` (Press et al. 2022), with the paper's rule for n not a power of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_head).is_integer():
        slopes = power_of_2(n_head)
    else:
        closest = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_head - closest]
    return np.asarray(slopes, np.float32)


def alibi_bias(n_head: int, q_positions: ag.Tensor, k_positions: ag.Tensor) -> ag.Tensor:
    """``-slope_h * (q_pos - k_pos)``, added to the attention scores: ``(n_head, T, S)``."""
    slopes = ag.constant(alibi_slopes(n_head).reshape(n_head, 1, 1))
    q = ag.unsqueeze(ag.cast(q_positions, "float32"), 1)  # (T, 1)
    k = ag.unsqueeze(ag.cast(k_positions, "float32"), 0)  # (1, S)
    return slopes * ag.unsqueeze(k - q, 0)  # (nh, T, S)
