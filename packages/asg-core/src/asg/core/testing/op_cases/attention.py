"""Parity cases of the fused attention ops (see :mod:`asg.core.testing.cases`), and their numpy
references: the unfused softmax formula in float64.

PyTorch's ``scaled_dot_product_attention`` aligns ``is_causal`` at the top left and gives NaN in a
row with no key, so its cases pass the causal mask as a bool ``attn_mask`` and have a key in every row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ... import ops as ag
from ...tensor import Tensor, apply
from ..cases import F, T
from ..cases import add_case as _add
from ..check import rand


# ============================================================================= numpy references
def allowed_ref(
    length_q: int, length_k: int, mask: np.ndarray | None = None, causal: bool = False
) -> np.ndarray:
    """Bool, broadcasting against (*, L, S): the keys each query may attend."""
    allowed = np.ones((length_q, length_k), bool)
    if causal:
        allowed = np.tril(allowed, length_k - length_q)
    return allowed if mask is None else allowed & mask


def _scores_ref(
    q: np.ndarray, k: np.ndarray, mask: np.ndarray | None, causal: bool, scale: float | None
) -> tuple[np.ndarray, np.ndarray]:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * (q @ np.swapaxes(k, -1, -2))
    allowed = np.broadcast_to(allowed_ref(q.shape[-2], k.shape[-2], mask, causal), s.shape)
    return np.where(allowed, s, -np.inf), allowed


def probabilities_ref(
    q: np.ndarray,
    k: np.ndarray,
    mask: np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """``softmax(scale * q k^T)`` over the allowed keys, (*, L, S); a row with no key is all 0."""
    s, allowed = _scores_ref(q, k, mask, causal, scale)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    total = p.sum(-1, keepdims=True)
    return np.where(allowed.any(-1, keepdims=True), p / np.where(total > 0, total, 1.0), 0.0)


def attention_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """The unfused formula ``softmax(scale * q k^T, masked) v`` (0 in a row with no key)."""
    return probabilities_ref(q, k, mask, causal, scale) @ v


def lse_ref(
    q: np.ndarray,
    k: np.ndarray,
    mask: np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """Log-sum-exp over the allowed keys, (*, L); ``-inf`` in a row with no key."""
    s, _ = _scores_ref(q, k, mask, causal, scale)
    m = s.max(-1)
    shift = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(s - shift[..., None]).sum(-1)) + shift


def attention_grads_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    dout: np.ndarray,
    lse: np.ndarray,
    delta: np.ndarray,
    mask: np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dq, dk, dv)`` of the backward ops, from the formulas with ``P = exp(scores - lse)``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s, _ = _scores_ref(q, k, mask, causal, scale)
    p = np.exp(s - np.where(np.isfinite(lse), lse, 0.0)[..., None])
    ds = p * (dout @ np.swapaxes(v, -1, -2) - delta[..., None])
    return scale * ds @ k, scale * np.swapaxes(ds, -1, -2) @ q, np.swapaxes(p, -1, -2) @ dout


# ============================================================================= PyTorch references
def _torch_attention(
    q: Any, k: Any, v: Any, mask: Any = None, causal: bool = False, scale: Any = None
) -> Any:
    if causal:
        tril = T.tensor(allowed_ref(q.shape[-2], k.shape[-2], causal=True))
        mask = tril if mask is None else mask & tril
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _torch_scores(q: Any, k: Any, mask: Any, causal: bool, scale: float) -> Any:
    """``scale * q k^T`` in torch, ``-inf`` where masked (as :func:`_scores_ref`)."""
    s = T.matmul(q, T.transpose(k, -1, -2)) * scale
    allowed = T.tensor(allowed_ref(q.shape[-2], k.shape[-2], causal=causal))
    if mask is not None:
        allowed = allowed & mask
    return T.where(allowed, s, -math.inf)


def _torch_lse(q: Any, k: Any, mask: Any = None, causal: bool = False, scale: float = 1.0) -> Any:
    return T.logsumexp(_torch_scores(q, k, mask, causal, scale), -1)


# ============================================================================= attention
_B, _H, _L, _S, _E, _EV = 2, 2, 3, 5, 4, 3  # L != S and E != Ev


def _qkv(seed: int, lead: tuple[int, ...] = (_B, _H), length_q: int = _L, length_k: int = _S) -> tuple:
    return (
        rand(*lead, length_q, _E, seed=seed),
        rand(*lead, length_k, _E, seed=seed + 1),
        rand(*lead, length_k, _EV, seed=seed + 2),
    )


_BACKWARD = ("attention_lse", "attention_grad_q", "attention_grad_k", "attention_grad_v")
_add(
    "attention",
    ag.attention,
    *_qkv(700, lead=(_B,)),
    ref=attention_ref,
    torch_fn=F.scaled_dot_product_attention,
    name="3d",
    covers=_BACKWARD,
)
_add(
    "attention",
    lambda q, k, v: ag.attention(q, k, v, scale=0.3),
    *_qkv(703),
    ref=lambda q, k, v: attention_ref(q, k, v, scale=0.3),
    torch_fn=lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3),
    name="scale",
)
for _lq, _lk in ((_L, _L), (_L, _S)):
    _add(
        "attention",
        lambda q, k, v: ag.attention(q, k, v, causal=True),
        *_qkv(706, length_q=_lq, length_k=_lk),
        ref=lambda q, k, v: attention_ref(q, k, v, causal=True),
        torch_fn=lambda q, k, v: _torch_attention(q, k, v, causal=True),
        name=f"causal_L{_lq}_S{_lk}",
        covers=_BACKWARD,
    )
# A bool padding mask (B, 1, 1, S): each batch entry keeps a different set of keys.
_PADDING = np.array([[True, True, True, False, False], [True, False, True, True, True]]).reshape(_B, 1, 1, _S)
_add(
    "attention",
    ag.attention,
    *_qkv(709),
    _PADDING,
    ref=attention_ref,
    torch_fn=_torch_attention,
    name="padding_mask",
    covers=_BACKWARD,
)
# A mask (1, 1, L, S) shared by the batch and heads, with causal on top (L < S: every row keeps a key).
_SHARED = np.array([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1], [1, 1, 0, 1, 1]], bool).reshape(1, 1, _L, _S)
_add(
    "attention",
    lambda q, k, v, m: ag.attention(q, k, v, m, causal=True),
    *_qkv(712),
    _SHARED,
    ref=lambda q, k, v, m: attention_ref(q, k, v, m, causal=True),
    torch_fn=lambda q, k, v, m: _torch_attention(q, k, v, m, causal=True),
    name="broadcast_mask_causal",
    covers=_BACKWARD,
)
# Rows with no key to attend give 0 and zero gradients (PyTorch gives NaN: no torch reference).
_EMPTY_ROWS = _PADDING.copy()
_EMPTY_ROWS[1] = False
_add(
    "attention",
    ag.attention,
    *_qkv(715),
    _EMPTY_ROWS,
    ref=attention_ref,
    name="fully_masked_rows",
)
_add(
    "attention",
    lambda q, k, v: ag.attention(q, k, v, causal=True),
    *_qkv(718, length_q=_S, length_k=_L),  # L > S: the first L - S query rows see no key
    ref=lambda q, k, v: attention_ref(q, k, v, causal=True),
    name="causal_L_greater_than_S",
)


def _in_float16(fn: Any) -> Any:
    """``fn`` computed on float16 copies of the float inputs, the result cast back."""

    def wrapped(*xs: Tensor) -> Tensor:
        halves = [ag.cast(x, "float16") if x.dtype.startswith("float") else x for x in xs]
        return ag.cast(fn(*halves), xs[0].dtype)

    return wrapped


_add(
    "attention",
    _in_float16(lambda q, k, v, m: ag.attention(q, k, v, m, causal=True)),
    *_qkv(721),
    _SHARED,
    ref=lambda q, k, v, m: attention_ref(
        *(a.astype(np.float16).astype(np.float64) for a in (q, k, v)), m, causal=True
    ),
    name="float16",
    order=0,
    rtol=2e-3,
    atol=2e-3,
)


# ============================================================================= attention_lse
def _lse(q: Tensor, k: Tensor, v: Tensor, *mask: Tensor, causal: bool = False, scale: float = 0.5) -> Tensor:
    return apply("attention_lse", q, k, v, *mask, causal=causal, scale=scale)


_add(
    "attention_lse",
    _lse,
    *_qkv(730),
    ref=lambda q, k, v: lse_ref(q, k, scale=0.5),
    torch_fn=lambda q, k, v: _torch_lse(q, k, scale=0.5),
)
_add(
    "attention_lse",
    lambda q, k, v, m: _lse(q, k, v, m, causal=True),
    *_qkv(733),
    _SHARED,
    ref=lambda q, k, v, m: lse_ref(q, k, m, causal=True, scale=0.5),
    torch_fn=lambda q, k, v, m: _torch_lse(q, k, m, causal=True, scale=0.5),
    name="broadcast_mask_causal",
)
_add(
    "attention_lse",
    _in_float16(_lse),
    *_qkv(736),
    ref=lambda q, k, v: lse_ref(*(a.astype(np.float16).astype(np.float64) for a in (q, k)), scale=0.5),
    name="float16",
    order=0,
    rtol=1e-3,
    atol=1e-3,
)


# ============================================================================= the backward ops
def _backward_inputs(seed: int) -> tuple:
    """q, k, v, dout, lse and delta, with lse and delta those of the forward (as the gradient builds them)."""
    q, k, v = _qkv(seed)
    dout = rand(_B, _H, _L, _EV, seed=seed + 3)
    out = attention_ref(q, k, v, _PADDING, causal=True, scale=0.5)
    return q, k, v, dout, lse_ref(q, k, _PADDING, causal=True, scale=0.5), (dout * out).sum(-1)


def _torch_grads(q: Any, k: Any, v: Any, dout: Any, lse: Any, delta: Any, mask: Any) -> tuple:
    """The backward ops' formulas written with torch ops (autograd checks their gradients)."""
    p = T.exp(_torch_scores(q, k, mask, True, 0.5) - lse[..., None])
    ds = p * (T.matmul(dout, T.transpose(v, -1, -2)) - delta[..., None])
    return (
        T.matmul(ds, k) * 0.5,
        T.matmul(T.transpose(ds, -1, -2), q) * 0.5,
        T.matmul(T.transpose(p, -1, -2), dout),
    )


def _grad_op_in_float16(which: str) -> Any:
    """The backward op on float16 q, k, v and dout (lse and delta stay float32, as the gradient builds them)."""

    def fn(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, lse: Tensor, delta: Tensor, mask: Tensor) -> Tensor:
        halves = [ag.cast(t, "float16") for t in (q, k, v, dout)]
        singles = [ag.cast(t, "float32") for t in (lse, delta)]
        result = apply(f"attention_grad_{which}", *halves, *singles, mask, causal=True, scale=0.5)
        return ag.cast(result, q.dtype)

    return fn


def _grads_in_float16_ref(*xs: np.ndarray, i: int) -> np.ndarray:
    rounded = [a.astype(np.float16 if j < 4 else np.float32).astype(np.float64) for j, a in enumerate(xs[:6])]
    return attention_grads_ref(*rounded, xs[6], causal=True, scale=0.5)[i]


for _i, _which in enumerate("qkv"):
    _add(
        f"attention_grad_{_which}",
        lambda *xs, w=_which: apply(f"attention_grad_{w}", *xs, causal=True, scale=0.5),
        *_backward_inputs(740 + 10 * _i),
        _PADDING,
        ref=lambda *xs, i=_i: attention_grads_ref(*xs, causal=True, scale=0.5)[i],
        torch_fn=lambda *xs, i=_i: _torch_grads(*xs)[i],
        name="padding_mask_causal",
    )
    _add(
        f"attention_grad_{_which}",
        _grad_op_in_float16(_which),
        *_backward_inputs(745 + 10 * _i),
        _PADDING,
        ref=lambda *xs, i=_i: _grads_in_float16_ref(*xs, i=i),
        name="float16",
        order=0,
        rtol=5e-3,
        atol=5e-3,
    )
