"""Plain numpy references for the ops whose definition is not one numpy call.

Each follows the op's mathematical definition directly (loops where that is clearest), sharing no code
with the kernels in :mod:`asg.core.ops`, so a kernel bug cannot hide in its reference. Float64 in, float64
out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Pair = tuple[int, int]


def _pairs(v: int | Sequence[int]) -> Pair:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _pad4(x: np.ndarray, top: int, bottom: int, left: int, right: int, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def erf(x: np.ndarray) -> np.ndarray:
    """``math.erf`` elementwise."""
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU, exact (``x * Phi(x)``) or with PyTorch's tanh approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum for stability.

    >>> softmax(np.array([0.0, np.log(3.0)])).round(6).tolist()
    [0.25, 0.75]
    """
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    stride: int | Pair = 1,
    padding: int | Pair | str = 0,
    dilation: int | Pair = 1,
    groups: int = 1,
) -> np.ndarray:
    """out[n, o, i, j] = sum_{c, a, b} w[o, c, a, b] * xpad[n, g*Cg + c, i*s + a*d, j*s + b*d]."""
    (sh, sw), (dh, dw) = _pairs(stride), _pairs(dilation)
    if padding == "valid":
        pads = [0, 0, 0, 0]
    elif padding == "same":
        pads = []
        for k, d in zip(w.shape[2:], (dh, dw), strict=True):
            pads += [d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2]
    else:
        ph, pw = _pairs(padding)  # type: ignore[arg-type]
        pads = [ph, ph, pw, pw]
    xp = _pad4(x, *pads)
    n, _, hp, wp = xp.shape
    o, cg, kh, kw = w.shape
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, ho, wo))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(ho):
            for j in range(wo):
                patch = xp[
                    :,
                    g * cg : (g + 1) * cg,
                    i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                    j * sw : j * sw + dw * (kw - 1) + 1 : dw,
                ]
                out[:, oc, i, j] = np.einsum("ncab,cab->n", patch, w[oc])
    return out


def conv_transpose2d(
    x: np.ndarray,
    w: np.ndarray,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    output_padding: int | Pair = 0,
    dilation: int | Pair = 1,
    groups: int = 1,
) -> np.ndarray:
    """Scatter definition: every input pixel adds w * x into its output window, then padding is cropped."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = map(_pairs, (stride, padding, output_padding, dilation))
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    full = np.zeros(
        (n, cog * groups, (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw)
    )
    per_group = cin // groups
    for ci in range(cin):
        g = ci // per_group
        for i in range(h):
            for j in range(wd):
                for a in range(kh):
                    for b in range(kw):
                        full[:, g * cog : (g + 1) * cog, i * sh + a * dh, j * sw + b * dw] += (
                            x[:, ci, i, j][:, None] * w[ci, :, a, b][None, :]
                        )
    return full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw]


def _pool_size(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's output size; with ``ceil`` the last window must start inside the input or left padding."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_geometry(
    x: np.ndarray,
    kernel_size: int | Pair,
    stride: int | Pair | None,
    padding: int | Pair,
    dilation: int | Pair,
    ceil_mode: bool,
) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    """Kernel, stride (the kernel when None), padding, dilation and output (H, W) of a 2-d pool of ``x``."""
    (kh, kw) = _pairs(kernel_size)
    (sh, sw) = _pairs(stride if stride is not None else kernel_size)
    (ph, pw), (dh, dw) = _pairs(padding), _pairs(dilation)
    h, w = x.shape[2:]
    out = (_pool_size(h, kh, sh, ph, dh, ceil_mode), _pool_size(w, kw, sw, pw, dw, ceil_mode))
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), out


def max_pool2d(
    x: np.ndarray,
    kernel_size: int | Pair,
    stride: int | Pair | None = None,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    ceil_mode: bool = False,
) -> np.ndarray:
    """Max pooling of ``x`` (N, C, H, W) with PyTorch's window geometry; padding counts as ``-inf``.

    >>> max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (ho, wo) = _pool_geometry(
        x, kernel_size, stride, padding, dilation, ceil_mode
    )
    n, c, h, w = x.shape
    out = np.full((n, c, ho, wo), -np.inf)
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                for b in range(kw):
                    r, q = i * sh - ph + a * dh, j * sw - pw + b * dw
                    if 0 <= r < h and 0 <= q < w:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, r, q])
    return out


def avg_pool2d(
    x: np.ndarray,
    kernel_size: int | Pair,
    stride: int | Pair | None = None,
    padding: int | Pair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Average pooling of ``x`` (N, C, H, W) with PyTorch's window geometry.

    ``count_include_pad`` divides by the whole window (padding included) rather than by the values
    in it.

    >>> avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    (kh, kw), (sh, sw), (ph, pw), _, (ho, wo) = _pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    n, c, h, w = x.shape
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            r0, q0 = i * sh - ph, j * sw - pw
            r1, q1 = min(r0 + kh, h + ph), min(q0 + kw, w + pw)
            area = (r1 - r0) * (q1 - q0)
            r0c, q0c, r1c, q1c = max(r0, 0), max(q0, 0), min(r1, h), min(q1, w)
            total = x[:, :, r0c:r1c, q0c:q1c].sum(axis=(2, 3))
            out[:, :, i, j] = total / (area if count_include_pad else (r1c - r0c) * (q1c - q0c))
    return out


def adaptive_pool2d(
    x: np.ndarray, output_size: int | Pair, reduce: Callable[..., np.ndarray] = np.mean
) -> np.ndarray:
    """Bin i of a size-``h`` axis cut into ``oh`` bins spans ``[floor(i*h/oh), ceil((i+1)*h/oh))``."""
    oh, ow = _pairs(output_size)
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            q0, q1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[:, :, i, j] = reduce(x[:, :, r0:r1, q0:q1], axis=(2, 3))
    return out


def layer_norm(
    x: np.ndarray,
    normalized_ndim: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Layer normalisation over the last ``normalized_ndim`` axes (biased variance), then
    ``* weight + bias`` when given.

    >>> layer_norm(np.array([[1.0, 3.0]]), 1, eps=0.0).tolist()
    [[-1.0, 1.0]]
    """
    axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def layer_norm_input_grad(g: np.ndarray, x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """d/dx of ``sum(g * layer_norm(x, 1, w))`` over the last axis."""
    xh = layer_norm(x, 1, eps=eps)
    gh = g * w
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    return rstd * (gh - gh.mean(-1, keepdims=True) - xh * (gh * xh).mean(-1, keepdims=True))


def batch_norm_train(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Normalised over the batch and spatial axes with the biased batch variance."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    return y * w.reshape(shape) + b.reshape(shape)


# The keyed random numbers, in Python ints: the documented algorithm of asg.core.ops.random.
MASK32, MASK64 = (1 << 32) - 1, (1 << 64) - 1


def mix64(z: int) -> int:
    """The 64-bit finaliser of SplitMix64 (``z`` taken modulo 2**64); the key mixing of the RNG."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def hash32(x: int) -> int:
    """A 32-bit integer hash (two multiply-xorshift rounds); makes each word of the RNG stream."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def random_word(key: int, i: int) -> int:
    """The ``i``-th 32-bit word of ``key``'s stream."""
    mixed = mix64(key)
    return hash32(hash32(i ^ (mixed & MASK32)) ^ (mixed >> 32))


def fold_in(key: Any, data: Any) -> int:
    """A new key, as an int64 value."""
    key, data = int(key), int(data)
    z = mix64(mix64(key + 0x9E3779B97F4A7C15) ^ mix64(data + 0xD1B54A32D192ED03))
    return z - (1 << 64) if z >= 1 << 63 else z


def random_uniform(key: Any, shape: Sequence[int], low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """float32 draws: the top 24 bits of each word over 2**24, scaled to ``[low, high)``."""
    count = math.prod(shape)
    u = np.array([(random_word(int(key), i) >> 8) / 2**24 for i in range(count)], np.float64)
    return (low + (high - low) * u).reshape(shape).astype(np.float32)


def random_normal(key: Any, shape: Sequence[int]) -> np.ndarray:
    """Box-Muller on pairs of float32 uniforms ``(u0, u1)``: ``sqrt(-2 log(1 - u0)) * cos(2 pi u1)``."""
    count = math.prod(shape)
    u = random_uniform(key, (2 * count,)).astype(np.float64).reshape(count, 2)
    z = np.sqrt(-2 * np.log1p(-u[:, 0])) * np.cos(2 * math.pi * u[:, 1])
    return z.reshape(shape).astype(np.float32)


def bernoulli(key: Any, p: float, shape: Sequence[int]) -> np.ndarray:
    """True where the word is below ``round(p * 2**32)``."""
    threshold = round(p * 2**32)
    return np.array([random_word(int(key), i) < threshold for i in range(math.prod(shape))]).reshape(shape)
