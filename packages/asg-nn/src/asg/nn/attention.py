"""Attention and transformer layers with PyTorch's parameter names, so PyTorch weights load by name.

:class:`MultiheadAttention` has ``in_proj_weight`` ``(3E, E)``, ``in_proj_bias`` and ``out_proj``, as
``torch.nn.MultiheadAttention``; the transformer layers have ``self_attn``, ``linear1``, ``linear2``,
``norm1``... as ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``. Every batch size and
sequence length works with one graph (the dims may be symbolic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

import asg.core as ag

from . import functional as F
from . import init
from .layers import Dropout, LayerNorm, Linear, _RandomLayer
from .module import Module, Parameter

__all__ = [
    "FeedForward",
    "KVCache",
    "MultiheadAttention",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
]


def _mha_mask(mask: Any, dtype: str, n: Any, heads: int) -> ag.Tensor | None:
    """PyTorch's MHA attn_mask (bool True = blocked, or float added) as an SDPA mask for (N, H, L, S)."""
    if mask is None:
        return None
    mask = ag.as_tensor(mask, dtype)
    if mask.ndim == 3:  # (N * heads, L, S)
        mask = ag.reshape(mask, (n, heads, mask.shape[1], mask.shape[2]))
    elif mask.ndim != 2:
        raise ag.ShapeError(
            f"MultiheadAttention: attn_mask {mask.node.label} {mask.shape} must be (L, S) or (N*H, L, S)"
        )
    return ~mask if mask.dtype == "bool" else mask


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding with :class:`MultiheadAttention`.

    The cache is ``(batch_size, num_heads, max_len, head_dim)`` state variables plus a position counter, so
    the compiled decoding step is one graph for every step: new keys are written at positions
    ``pos .. pos + T - 1`` by a select (no dynamic slicing), and queries attend keys ``<= pos + i``. Any
    number of new tokens per call works (a prompt, then one at a time). Build the step inside
    :func:`asg.nn.capture_updates` and compile the collected updates; :meth:`reset` starts a new sequence.
    """

    def __init__(
        self, batch_size: int, num_heads: int, max_len: int, head_dim: int, name: str = "kv_cache"
    ) -> None:
        shape = (batch_size, num_heads, max_len, head_dim)
        self.batch_size, self.max_len = batch_size, max_len
        self.k = ag.state(np.zeros(shape, np.float32), name=f"{name}.k")
        self.v = ag.state(np.zeros(shape, np.float32), name=f"{name}.v")
        self.pos = ag.state(np.int64(0), name=f"{name}.pos")

    def reset(self) -> None:
        """Forget the cached tokens (the next call starts at position 0)."""
        self.k.assign(np.zeros(self.k.shape, np.float32))
        self.v.assign(np.zeros(self.v.shape, np.float32))
        self.pos.assign(np.int64(0))

    @property
    def length(self) -> int:
        """How many positions are filled."""
        return int(self.pos.numpy())

    def append(self, module: Module, k: ag.Tensor, v: ag.Tensor) -> tuple[ag.Tensor, ag.Tensor, ag.Tensor]:
        """Write ``k``, ``v`` ``(N, H, T, hd)`` after the cached ones; returns ``(keys, values, allowed)``.

        ``allowed`` ``(T, max_len)`` is True where query ``i`` may attend key ``j`` (``j <= pos + i``).
        """
        t = k.shape[2]
        count = ag.cast(ag.ones((t,), "int64").sum(), "int64")  # T as a graph value (it may be symbolic)
        rel = ag.arange(self.max_len) - self.pos  # (M,): which new token lands at each position
        inside = (rel >= 0) & (rel < count)
        source = ag.where(rel < 0, 0, ag.where(rel >= count, count - 1, rel))
        mask = ag.reshape(inside, (1, 1, self.max_len, 1))
        keys = ag.where(mask, ag.index_select(k, source, axis=2), self.k)  # (N, H, M, hd)
        values = ag.where(mask, ag.index_select(v, source, axis=2), self.v)
        i = ag.arange(t)
        allowed = ag.unsqueeze(ag.arange(self.max_len), 0) <= ag.unsqueeze(i + self.pos, 1)  # (T, M)
        module.add_update(self.k, keys)
        module.add_update(self.v, values)
        module.add_update(self.pos, self.pos + count)
        return keys, values, allowed


class MultiheadAttention(_RandomLayer):
    """Multi-head attention (``torch.nn.MultiheadAttention``), self- or cross-attention.

    Args:
        embed_dim: model width ``E``; ``num_heads`` must divide it.
        dropout: dropout on the attention weights while training.
        bias: biases of the input and output projections.
        kdim, vdim: key/value widths when they differ from ``E`` (then the projections are
            ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` instead of ``in_proj_weight``).
        batch_first: inputs are ``(N, L, E)`` instead of PyTorch's default ``(L, N, E)``.

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False, kv_cache=None)`` returns ``(output, weights)`` as PyTorch does:
    ``key_padding_mask`` ``(N, S)`` bool True = ignore; ``attn_mask`` ``(L, S)`` bool True = not allowed, or
    float added; ``weights`` is ``(N, L, S)`` averaged over heads (``(N, H, L, S)`` otherwise) or None.
    With a :class:`KVCache` (self-attention), the new tokens' keys and values are appended to the cache and
    the queries attend causally over everything cached (incremental decoding).

    >>> import asg.core as ag
    >>> from asg import nn
    >>> mha = nn.MultiheadAttention(32, 4, batch_first=True)
    >>> x = ag.input("x", ("B", "T", 32))
    >>> out, w = mha(x, x, x, is_causal=True)
    >>> out.shape, w.shape
    (('B', 'T', 32), ('B', 'T', 'T'))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"MultiheadAttention: embed_dim={embed_dim} must be divisible by num_heads={num_heads}"
            )
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(np.zeros((3 * embed_dim, embed_dim), np.float32))
        else:
            self.q_proj_weight = Parameter(np.zeros((embed_dim, embed_dim), np.float32))
            self.k_proj_weight = Parameter(np.zeros((embed_dim, self.kdim), np.float32))
            self.v_proj_weight = Parameter(np.zeros((embed_dim, self.vdim), np.float32))
        self.in_proj_bias = Parameter(np.zeros(3 * embed_dim, np.float32)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def _projections(self) -> list[tuple[ag.Tensor, ag.Tensor | None]]:
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            weights = [w[0:e], w[e : 2 * e], w[2 * e : 3 * e]]
        else:
            weights = [self.q_proj_weight, self.k_proj_weight, self.v_proj_weight]
        b = self.in_proj_bias
        biases = [None] * 3 if b is None else [b[0:e], b[e : 2 * e], b[2 * e : 3 * e]]
        return list(zip(weights, biases, strict=True))

    def forward(
        self,
        query: ag.Tensor,
        key: ag.Tensor,
        value: ag.Tensor,
        key_padding_mask: Any = None,
        need_weights: bool = True,
        attn_mask: Any = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
    ) -> tuple[ag.Tensor, ag.Tensor | None]:
        """Attends ``query`` over ``key``/``value``: ``(N, L, E)``, ``(N, S, kdim)``, ``(N, S, vdim)`` ->
        ``(output (N, L, E), weights)``.

        With ``batch_first=False`` the sequence comes first (``(L, N, E)``, ``(S, N, kdim)``...); unbatched
        inputs (``query`` ``(L, E)``) give ``(L, E)``. ``weights`` is ``(N, L, S)`` (``(N, H, L, S)`` with
        ``average_attn_weights=False``), or None when ``need_weights=False``, which takes the fused
        scaled-dot-product attention. Raises ``ShapeError`` when ``query`` does not have ``embed_dim``
        features; with ``kv_cache`` the masks must be None.
        """
        query, key, value = ag.as_tensor(query), ag.as_tensor(key), ag.as_tensor(value)
        batched = query.ndim == 3
        if not batched:  # (L, E): one sequence
            query, key, value = (ag.unsqueeze(t, 0 if self.batch_first else 1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = ag.unsqueeze(ag.as_tensor(key_padding_mask), 0)
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (ag.swapaxes(t, 0, 1) for t in (query, key, value))
        if query.shape[-1] != self.embed_dim:
            raise ag.ShapeError(
                f"MultiheadAttention at {self.path or 'the root'}: query {query.node.label} has "
                f"{query.shape[-1]} features, expected embed_dim={self.embed_dim}"
            )
        n, h, hd = query.shape[0], self.num_heads, self.head_dim
        heads = []
        for t, (w, b) in zip((query, key, value), self._projections(), strict=True):
            projected = ag.linear(t, w, b)  # (N, L, E)
            split = ag.reshape(projected, (n, t.shape[1], h, hd))  # (N, L, H, hd)
            heads.append(ag.permute(split, (0, 2, 1, 3)))  # (N, H, L, hd)
        q, k, v = heads
        if kv_cache is not None:
            if attn_mask is not None or key_padding_mask is not None:
                raise ValueError(
                    "MultiheadAttention: with kv_cache the mask is the causal one over the cache; "
                    "attn_mask and key_padding_mask are not supported"
                )
            if isinstance(n, int) and n != kv_cache.batch_size:
                raise ag.ShapeError(
                    f"MultiheadAttention at {self.path or 'the root'}: batch size {n} does not match the "
                    f"cache's {kv_cache.batch_size}"
                )
            k, v, allowed = kv_cache.append(self, k, v)  # (N, H, max_len, hd), mask (L, max_len)
            attn_mask, is_causal = allowed, False
        else:
            attn_mask = _mha_mask(attn_mask, query.dtype, n, h)
        dropout = self.dropout if self.training else 0.0
        masks = dict(attn_mask=attn_mask, is_causal=is_causal, key_padding_mask=key_padding_mask)
        if need_weights:
            weights = F.attention_weights(q, k, scale=1.0 / math.sqrt(hd), **masks)  # (N, H, L, S)
            dropped = ag.dropout(weights, dropout, self._key()) if dropout > 0 else weights
            out = ag.matmul(dropped, v)  # (N, H, L, hd)
        else:  # the fused ag.attention where the masks and dropout allow it
            key = self._key() if dropout > 0 else None
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=1.0 / math.sqrt(hd), dropout_key=key, **masks
            )  # (N, H, L, hd)
        out = ag.reshape(ag.permute(out, (0, 2, 1, 3)), (n, query.shape[1], self.embed_dim))  # (N, L, E)
        out = self.out_proj(out)
        if not self.batch_first:
            out = ag.swapaxes(out, 0, 1)
        if not batched:
            out = ag.squeeze(out, 0 if self.batch_first else 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(1)  # (N, L, S)
        if not batched:
            weights = ag.squeeze(weights, 0)
        return out, weights

    def extra_repr(self) -> str:
        """``embed_dim=…, num_heads=…, batch_first=…`` for ``repr``."""
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _activation(activation: str | Callable[[ag.Tensor], ag.Tensor]) -> Callable[[ag.Tensor], ag.Tensor]:
    if callable(activation):
        return activation
    table = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": F.tanh}
    if activation not in table:
        raise ValueError(f"activation must be one of {', '.join(table)} or a callable, got {activation!r}")
    return table[activation]


class FeedForward(Module):
    """The position-wise MLP of a transformer: ``linear2(dropout(activation(linear1(x))))``.

    Shape: ``(*, d_model)`` -> ``(*, d_model)``.
    """

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        activation: str | Callable[[ag.Tensor], ag.Tensor] = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.activation = _activation(activation)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies ``linear2(dropout(activation(linear1(x))))``: ``(*, d_model) -> (*, d_model)``."""
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class _TransformerLayer(Module):
    """What the encoder and decoder layers share: PyTorch's submodules, in PyTorch's order, and the blocks.

    ``_blocks`` residual blocks (self-attention, [cross-attention,] feed-forward) each get a ``norm{i}`` and a
    ``dropout{i}``; the decoder's ``multihead_attn`` comes right after ``self_attn``.
    """

    _blocks = 2

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str | Callable[[ag.Tensor], ag.Tensor] = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first
        )
        if self._blocks == 3:
            self.multihead_attn = MultiheadAttention(
                d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first
            )
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = norm_first
        for i in range(1, self._blocks + 1):
            setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        for i in range(1, self._blocks + 1):
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = _activation(activation)

    def _sa(self, x: ag.Tensor, mask: Any, padding: Any, is_causal: bool) -> ag.Tensor:
        out, _ = self.self_attn(
            x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False, is_causal=is_causal
        )
        return self.dropout1(out)

    def _ff(self, x: ag.Tensor) -> ag.Tensor:
        out = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return getattr(self, f"dropout{self._blocks}")(out)


class TransformerEncoderLayer(_TransformerLayer):
    """Self-attention and feed-forward blocks (``torch.nn.TransformerEncoderLayer``), post- or pre-norm.

    ``norm_first=False`` (post-norm): ``x = norm1(x + sa(x)); x = norm2(x + ff(x))``;
    ``norm_first=True`` (pre-norm): ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``.
    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``.
    """

    def forward(
        self, src: ag.Tensor, src_mask: Any = None, src_key_padding_mask: Any = None, is_causal: bool = False
    ) -> ag.Tensor:
        """Runs the self-attention and feed-forward blocks: ``src`` ``(N, L, E)`` -> ``(N, L, E)``
        (``(L, N, E)`` with ``batch_first=False``).

        ``src_mask`` ``(L, L)`` (bool True = not allowed, or float added) and ``src_key_padding_mask``
        ``(N, L)`` (True = ignore) go to ``self_attn``; ``is_causal=True`` applies the causal mask.
        """
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff(x))


class TransformerDecoderLayer(_TransformerLayer):
    """Self-attention, cross-attention over ``memory`` and feed-forward (``torch.nn.TransformerDecoderLayer``).

    ``forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False)``.
    """

    _blocks = 3

    def _mha(self, x: ag.Tensor, mem: ag.Tensor, mask: Any, padding: Any, is_causal: bool) -> ag.Tensor:
        out, _ = self.multihead_attn(
            x, mem, mem, attn_mask=mask, key_padding_mask=padding, need_weights=False, is_causal=is_causal
        )
        return self.dropout2(out)

    def forward(
        self,
        tgt: ag.Tensor,
        memory: ag.Tensor,
        tgt_mask: Any = None,
        memory_mask: Any = None,
        tgt_key_padding_mask: Any = None,
        memory_key_padding_mask: Any = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> ag.Tensor:
        """Runs the self-attention, cross-attention and feed-forward blocks: ``tgt`` ``(N, T, E)`` and
        ``memory`` ``(N, S, E)`` -> ``(N, T, E)`` (sequence first with ``batch_first=False``).

        ``tgt_mask`` ``(T, T)`` and ``tgt_key_padding_mask`` ``(N, T)`` go to ``self_attn``;
        ``memory_mask`` ``(T, S)`` and ``memory_key_padding_mask`` ``(N, S)`` to ``multihead_attn``
        (bool True = not allowed / ignore, or float added); the ``*_is_causal`` flags apply the causal mask.
        """
        x = tgt
        if self.norm_first:
            x = x + self._sa(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            return x + self._ff(self.norm3(x))
        x = self.norm1(x + self._sa(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self.norm2(x + self._mha(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
        return self.norm3(x + self._ff(x))
