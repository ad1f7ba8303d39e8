"""Fused scaled-dot-product attention: ``softmax(scale * q k^T, masked) v`` as one op.

The unfused form keeps the ``(*, L, S)`` scores and probabilities alive (twice, for the backward
pass). Here the forward is one op and its gradient recomputes the probabilities blockwise from the
log-sum-exp of each query row (FlashAttention-2), so no ``(*, L, S)`` tensor is ever a graph value::

    attention(q, k, v[, mask])                          -> out (*, L, Ev)
    attention_lse(q, k, v[, mask])                      -> lse (*, L)
    attention_grad_q(q, k, v, dout, lse, delta[, mask]) -> dq (*, L, E)
    attention_grad_k(q, k, v, dout, lse, delta[, mask]) -> dk (*, S, E)
    attention_grad_v(q, k, v, dout, lse, delta[, mask]) -> dv (*, S, Ev)

with ``P = exp(scale * q k^T - lse)`` (zero where masked), ``delta = sum(dout * out, -1)``,
``dS = P * (dout v^T - delta)``, ``dq = scale * dS k``, ``dk = scale * dS^T q`` and ``dv = P^T dout``.
Every op takes the attributes ``causal`` (bool) and ``scale`` (float) and an optional last input
``mask`` (bool, broadcasting against ``(*, L, S)``, True = may attend: PyTorch SDPA's convention).
``causal`` lets query ``i`` attend keys ``j <= i + S - L`` (aligned at the end).

A query row with no key left to attend gives output 0, log-sum-exp ``-inf`` and zero gradients
(PyTorch's ``scaled_dot_product_attention`` gives NaN there).

The numpy kernels compute float16 in float32 and work on blocks of query rows (and of the leading
``(B, H)`` entries) whose scores fit in about 2**18 elements, each block one batched BLAS matmul;
causal blocks have at most 64 rows and stop at their last row's diagonal, so about half the keys
are skipped.
The backward ops differentiate again through their formulas written with the Tensor API, so
gradients of any order work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import blas
from ..errors import DTypeRuleError, ShapeError
from ..registry import TensorType, define_op
from ..shapes import Dim, format_shape
from ..tensor import Tensor, apply, as_tensor, constant
from ._rules import require_float
from .elementwise import cast, exp, log, where
from .linalg import matmul
from .normalization import _grad_through
from .reduction import cumsum
from .reduction import max as reduce_max
from .reduction import sum as reduce_sum
from .shape import ones, stop_gradient, swapaxes, unsqueeze

_BLOCK_ELEMENTS = 1 << 18  # scores per numpy block: 1 MiB in float32
_CAUSAL_ROWS = 64  # query rows per causal block: keys above the diagonal are skipped per block
_GRAD_OPS = ("attention_grad_q", "attention_grad_k", "attention_grad_v")
ATTENTION_OPS = frozenset({"attention", "attention_lse", *_GRAD_OPS})  # the fused family


# ============================================================================= shape/dtype rules
def _differ(a: Dim, b: Dim) -> bool:
    """Both static and different (a symbolic dim may equal anything)."""
    return isinstance(a, int) and isinstance(b, int) and a != b


def _lse_dtype(dtype: str) -> str:
    return "float32" if dtype == "float16" else dtype


def _check_qkv(q: TensorType, k: TensorType, v: TensorType) -> None:
    require_float(q)
    for what, t in (("key", k), ("value", v)):
        if t.dtype != q.dtype:
            raise DTypeRuleError(f"{what} has dtype {t.dtype}, the query {q.dtype} (cast one of them)")
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            "query, key and value must be (*, L, E), (*, S, E) and (*, S, Ev) with the same number (2 or "
            f"more) of dimensions, got {format_shape(q.shape)}, {format_shape(k.shape)} and {format_shape(v.shape)}"
        )
    lead = q.shape[:-2]
    for what, t in (("key", k), ("value", v)):
        if any(_differ(a, b) for a, b in zip(lead, t.shape[:-2], strict=True)):
            raise ValueError(
                f"the leading dims of the {what} {format_shape(t.shape[:-2])} differ from the query's "
                f"{format_shape(lead)}"
            )
    if _differ(q.shape[-1], k.shape[-1]):
        raise ValueError(f"query and key feature sizes differ: E = {q.shape[-1]} and {k.shape[-1]}")
    if _differ(k.shape[-2], v.shape[-2]):
        raise ValueError(f"key and value lengths differ: S = {k.shape[-2]} and {v.shape[-2]}")


def _check_mask(q: TensorType, k: TensorType, mask: Sequence[TensorType]) -> None:
    if len(mask) > 1:
        raise ValueError(f"expected at most one mask input, got {len(mask)}")
    if not mask:
        return
    (m,) = mask
    if m.dtype != "bool":
        raise DTypeRuleError(
            f"the mask must be bool (True = may attend), got {m.dtype}; add a float mask to the scores of "
            "the unfused formula instead (asg.nn.functional.scaled_dot_product_attention does)"
        )
    target = (*q.shape[:-1], k.shape[-2])  # (*, L, S)
    if m.ndim > len(target) or any(
        d != 1 and _differ(d, t) for d, t in zip(m.shape[::-1], target[::-1], strict=False)
    ):
        raise ValueError(
            f"the mask {format_shape(m.shape)} does not broadcast to (*, L, S) = {format_shape(target)}"
        )


def _attention_infer(
    q: TensorType, k: TensorType, v: TensorType, *mask: TensorType, causal: bool, scale: float
) -> TensorType:
    _check_qkv(q, k, v)
    _check_mask(q, k, mask)
    return TensorType((*q.shape[:-1], v.shape[-1]), q.dtype)


def _lse_infer(
    q: TensorType, k: TensorType, v: TensorType, *mask: TensorType, causal: bool, scale: float
) -> TensorType:
    _check_qkv(q, k, v)
    _check_mask(q, k, mask)
    return TensorType(q.shape[:-1], _lse_dtype(q.dtype))


def _grad_infer(which: str) -> Callable[..., TensorType]:
    def infer(
        q: TensorType,
        k: TensorType,
        v: TensorType,
        dout: TensorType,
        lse: TensorType,
        delta: TensorType,
        *mask: TensorType,
        causal: bool,
        scale: float,
    ) -> TensorType:
        _check_qkv(q, k, v)
        _check_mask(q, k, mask)
        want = {
            "dout": ((*q.shape[:-1], v.shape[-1]), q.dtype),
            "lse": (q.shape[:-1], _lse_dtype(q.dtype)),
            "delta": (q.shape[:-1], _lse_dtype(q.dtype)),
        }
        for what, t in (("dout", dout), ("lse", lse), ("delta", delta)):
            shape, dtype = want[what]
            if t.ndim != len(shape) or any(_differ(a, b) for a, b in zip(t.shape, shape, strict=True)):
                raise ValueError(f"{what} has shape {format_shape(t.shape)}, expected {format_shape(shape)}")
            if t.dtype != dtype:
                raise DTypeRuleError(f"{what} has dtype {t.dtype}, expected {dtype}")
        return {"q": q, "k": k, "v": v}[which]

    return infer


# ============================================================================= numpy kernels
class _Blocks:
    """q, k, v (and the mask) as ``(N, L, E)`` arrays in the compute dtype, walked in blocks.

    A block ``(ns, rs, ks)`` covers leading entries ``ns``, query rows ``rs`` and the keys ``ks``
    those rows may reach (all of them; with ``causal``, up to the last row's diagonal), with
    about ``_BLOCK_ELEMENTS`` scores. Causal attention takes blocks of at most ``_CAUSAL_ROWS``
    rows, so the keys above the diagonal are mostly skipped."""

    def __init__(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        mask: Sequence[np.ndarray],
        causal: bool,
        scale: float,
    ) -> None:
        self.dtype = np.dtype(np.float32) if q.dtype == np.float16 else q.dtype
        self.lead = q.shape[:-2]
        self.L, self.S = q.shape[-2], k.shape[-2]
        self.q, self.k, self.v = (self.rows_of(a) for a in (q, k, v))
        self.N = self.q.shape[0]
        self.causal, self.scale = causal, scale
        self.mask = None
        if mask:
            full = np.broadcast_to(mask[0], (*self.lead, self.L, self.S))  # a view: nothing is copied
            self.mask = full.reshape(1, self.L, self.S) if not self.lead else full
        rows = min(self.L, max(16, _BLOCK_ELEMENTS // max(self.S, 1)))
        self.rows = max(1, min(rows, _CAUSAL_ROWS) if causal else rows)
        self.heads = max(1, min(self.N, _BLOCK_ELEMENTS // max(self.rows * self.S, 1)))

    def rows_of(self, a: np.ndarray) -> np.ndarray:
        """``(*, X, Y)`` as ``(N, X, Y)`` in the compute dtype (a view when nothing changes)."""
        return a.reshape(math.prod(a.shape[:-2]), *a.shape[-2:]).astype(self.dtype, copy=False)

    def flat(self, a: np.ndarray) -> np.ndarray:
        """A per-row input such as lse ``(*, L)`` as ``(N, L)`` in the compute dtype."""
        return a.reshape(self.N, self.L).astype(self.dtype, copy=False)

    def __iter__(self) -> Iterator[tuple[slice, slice, slice]]:
        for n0 in range(0, self.N, self.heads):
            for r0 in range(0, self.L, self.rows):
                r1 = min(r0 + self.rows, self.L)
                reach = min(self.S, r1 + self.S - self.L) if self.causal else self.S
                if reach > 0:  # else no row of the block has a key: output 0, lse -inf
                    yield slice(n0, min(n0 + self.heads, self.N)), slice(r0, r1), slice(0, reach)

    def blocked(self, ns: slice, rs: slice, ks: slice) -> np.ndarray | None:
        """Bool ``(n, r, s)`` or ``(r, s)``: the keys of the block each query row may NOT attend."""
        blocked = None
        if self.causal:
            diagonal = np.arange(rs.start, rs.stop) + (self.S - self.L)
            blocked = np.arange(ks.start, ks.stop)[None, :] > diagonal[:, None]
        if self.mask is not None:
            index = np.unravel_index(np.arange(ns.start, ns.stop), self.mask.shape[:-2])
            masked = ~self.mask[(*index, rs, ks)]
            blocked = masked if blocked is None else masked | blocked
        return blocked

    def scores(self, ns: slice, rs: slice, ks: slice) -> np.ndarray:
        """``scale * q k^T`` of the block, ``-inf`` where masked."""
        s = blas.matmul(self.q[ns, rs], self.k[ns, ks].transpose(0, 2, 1))
        s *= self.scale
        blocked = self.blocked(ns, rs, ks)
        if blocked is not None:
            np.copyto(s, -np.inf, where=blocked)
        return s

    def probabilities(self, lse: np.ndarray, ns: slice, rs: slice, ks: slice) -> np.ndarray:
        """``P = exp(scores - lse)`` of the block (0 where masked, and in rows with no key)."""
        s = self.scores(ns, rs, ks)
        shift = lse[ns, rs, None]
        s -= np.where(shift == -np.inf, np.inf, shift)  # a row with no key: -inf - inf -> P = 0
        return np.exp(s, out=s)


def _in_dtype_of(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    return a.reshape(like.shape[:-2] + a.shape[-2:]).astype(like.dtype, copy=False)


def _forward(b: _Blocks, want_out: bool) -> tuple[np.ndarray | None, np.ndarray]:
    out = np.zeros((b.N, b.L, b.v.shape[-1]), b.dtype) if want_out else None
    lse = np.full((b.N, b.L), -np.inf, b.dtype)
    for ns, rs, ks in b:
        s = b.scores(ns, rs, ks)
        m = s.max(axis=-1, keepdims=True)
        m[m == -np.inf] = 0.0  # a row with no key: exp(-inf - 0) = 0 below
        s -= m
        p = np.exp(s, out=s)
        total = p.sum(axis=-1)  # (n, r)
        with np.errstate(divide="ignore"):
            lse[ns, rs] = m[..., 0] + np.log(total)
            if want_out:
                o = blas.matmul(p, b.v[ns, ks])
                o *= np.where(total > 0, 1.0 / total, 0.0)[..., None]
                out[ns, rs] = o
    return out, lse


def _attention_kernel(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *mask: np.ndarray, causal: bool, scale: float
) -> np.ndarray:
    out, _ = _forward(_Blocks(q, k, v, mask, causal, scale), want_out=True)
    return _in_dtype_of(out, q)


def _lse_kernel(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *mask: np.ndarray, causal: bool, scale: float
) -> np.ndarray:
    _, lse = _forward(_Blocks(q, k, v, mask, causal, scale), want_out=False)
    return lse.reshape(q.shape[:-1]).astype(_lse_dtype(str(q.dtype)), copy=False)


Block = tuple[slice, slice, slice, np.ndarray, np.ndarray | None]


def _backward_blocks(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    dout: np.ndarray,
    lse: np.ndarray,
    delta: np.ndarray,
    mask: Sequence[np.ndarray],
    causal: bool,
    scale: float,
    need_ds: bool,
) -> tuple[_Blocks, np.ndarray, Iterator[Block]]:
    """The blocks, dout as ``(N, L, Ev)`` and, per block, ``(ns, rs, ks, P, dS)`` (``dS`` only
    when ``need_ds``)."""
    b = _Blocks(q, k, v, mask, causal, scale)
    g = b.rows_of(dout)
    lse_rows, delta_rows = b.flat(lse), b.flat(delta)

    def walk() -> Iterator[Block]:
        for ns, rs, ks in b:
            p = b.probabilities(lse_rows, ns, rs, ks)
            ds = None
            if need_ds:
                ds = blas.matmul(g[ns, rs], b.v[ns, ks].transpose(0, 2, 1))  # dP = dout v^T
                ds -= delta_rows[ns, rs, None]
                ds *= p
            yield ns, rs, ks, p, ds

    return b, g, walk()


def _grad_kernel(which: str) -> Callable[..., np.ndarray]:
    """The numpy kernel of ``attention_grad_{which}``, summed block by block: ``dq = scale dS k``,
    ``dk = scale dS^T q``, ``dv = P^T dout`` (without ``dS``)."""

    def kernel(
        q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, lse: np.ndarray, delta: np.ndarray,
        *mask: np.ndarray, causal: bool, scale: float,
    ) -> np.ndarray:  # fmt: skip
        b, g, blocks = _backward_blocks(q, k, v, dout, lse, delta, mask, causal, scale, need_ds=which != "v")
        grad = np.zeros(getattr(b, which).shape, b.dtype)
        for ns, rs, ks, p, ds in blocks:
            if which == "q":  # a block's query rows are in no other block
                grad[ns, rs] = blas.matmul(ds, b.k[ns, ks])
            elif which == "k":
                grad[ns, ks] += blas.matmul(ds.transpose(0, 2, 1), b.q[ns, rs])
            else:
                grad[ns, ks] += blas.matmul(p.transpose(0, 2, 1), g[ns, rs])
        if which != "v":
            grad *= scale
        return _in_dtype_of(grad, {"q": q, "k": k, "v": v}[which])

    return kernel


# ============================================================================= the formulas, as Tensor ops
def causal_allowed(length_q: Dim, length_k: Dim) -> Tensor:
    """Bool ``(L, S)``: True where query ``i`` may attend key ``j``, that is ``j <= i + S - L``.

    Static sizes give a constant; symbolic ones are built in the graph from reversed cumulative sums
    (``L - i`` and ``S - j``), so one compiled function serves every length.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg.core.ops.attention import causal_allowed
    >>> ag.compile(causal_allowed(2, 3))().astype(int).tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    if isinstance(length_q, int) and isinstance(length_k, int):
        return constant(np.tril(np.ones((length_q, length_k), bool), length_k - length_q))
    from_end_q = cumsum(ones((length_q,), "float32"), 0, reverse=True)  # L - i
    from_end_k = cumsum(ones((length_k,), "float32"), 0, reverse=True)  # S - j
    return unsqueeze(from_end_k, 0) >= unsqueeze(from_end_q, 1)


def _allowed(q: Tensor, k: Tensor, mask: Sequence[Tensor], causal: bool) -> Tensor | None:
    allowed = causal_allowed(q.shape[-2], k.shape[-2]) if causal else None
    if mask:
        allowed = mask[0] if allowed is None else allowed & mask[0]
    return allowed


def _masked_scores(q: Tensor, k: Tensor, mask: Sequence[Tensor], causal: bool, scale: float) -> Tensor:
    s = matmul(q, swapaxes(k, -1, -2)) * scale  # (*, L, S)
    allowed = _allowed(q, k, mask, causal)
    return s if allowed is None else where(allowed, s, -math.inf)


def _compute(*ts: Tensor) -> list[Tensor]:
    """The tensors in their compute dtype (float16 -> float32), as the kernels see them."""
    return [cast(t, "float32") if t.dtype == "float16" else t for t in ts]


def _lse_composite(q: Tensor, k: Tensor, v: Tensor, *mask: Tensor, causal: bool, scale: float) -> Tensor:
    q, k = _compute(q, k)
    s = _masked_scores(q, k, mask, causal, scale)
    m = stop_gradient(reduce_max(s, -1, keepdims=True))
    m = where(m == -math.inf, 0.0, m)
    total = reduce_sum(exp(s - m), -1)  # (*, L); 0 in a row with no key
    some = total > 0.0
    return where(some, log(where(some, total, 1.0)) + reduce_sum(m, -1), -math.inf)


def _probabilities(
    q: Tensor, k: Tensor, lse: Tensor, mask: Sequence[Tensor], causal: bool, scale: float
) -> Tensor:
    s = _masked_scores(q, k, mask, causal, scale)
    shift = unsqueeze(where(lse == -math.inf, 0.0, lse), -1)
    return exp(s - shift)  # masked scores are -inf: P = 0 there, with a zero gradient


def _attention_composite(
    q: Tensor, k: Tensor, v: Tensor, *mask: Tensor, causal: bool, scale: float
) -> Tensor:
    """``P v`` with ``P = exp(scores - lse)``: the probabilities the gradient formulas also build, so
    that CSE keeps one copy of the scores and of ``P`` when every op of the family is decomposed."""
    dtype = q.dtype
    lse = _lse_composite(q, k, v, *mask, causal=causal, scale=scale)
    q, k, v = _compute(q, k, v)
    out = matmul(_probabilities(q, k, lse, mask, causal, scale), v)
    return cast(out, dtype) if out.dtype != dtype else out


def _grad_composite(which: str) -> Callable[..., Tensor]:
    def composite(
        q: Tensor, k: Tensor, v: Tensor, dout: Tensor, lse: Tensor, delta: Tensor, *mask: Tensor,
        causal: bool, scale: float,
    ) -> Tensor:  # fmt: skip
        dtype = q.dtype
        q, k, v, dout, lse, delta = _compute(q, k, v, dout, lse, delta)
        p = _probabilities(q, k, lse, mask, causal, scale)
        if which == "v":
            result = matmul(swapaxes(p, -1, -2), dout)
        else:
            ds = p * (matmul(dout, swapaxes(v, -1, -2)) - unsqueeze(delta, -1))
            result = matmul(ds, k) if which == "q" else matmul(swapaxes(ds, -1, -2), q)
            result = result * scale
        return cast(result, dtype) if result.dtype != dtype else result

    return composite


def _through_floats(composite: Callable[..., Tensor], n_floats: int) -> Callable[..., tuple]:
    """``_grad_through(composite)`` for the float inputs; the bool mask (if any) gets no gradient."""

    def rule(gg: Tensor, out: Tensor, *inputs: Tensor, **attrs: Any) -> tuple:
        floats, mask = inputs[:n_floats], inputs[n_floats:]
        inner = _grad_through(lambda *fs, **a: composite(*fs, *mask, **a))
        return (*inner(gg, out, *floats, **attrs), *(None for _ in mask))

    return rule


def _row_dot(dout: Tensor, out: Tensor) -> Tensor:
    """``delta = sum(dout * out, -1)`` ``(*, L)`` in the dtype of lse (float32 for float16)."""
    dout, out = _compute(dout, out)
    return reduce_sum(dout * out, -1)


def _attention_grad(
    g: Tensor, out: Tensor, q: Tensor, k: Tensor, v: Tensor, *mask: Tensor, causal: bool, scale: float
) -> tuple[Tensor | None, ...]:
    attrs = dict(causal=causal, scale=scale)
    lse = apply("attention_lse", q, k, v, *mask, **attrs)
    delta = _row_dot(g, out)
    grads = [apply(name, q, k, v, g, lse, delta, *mask, **attrs) for name in _GRAD_OPS]
    return (*grads, *(None for _ in mask))


# ============================================================================= the ops
define_op(
    "attention",
    infer=_attention_infer,
    kernel=_attention_kernel,
    grad=_attention_grad,
    decomposition=_attention_composite,
    doc="Fused ``softmax(scale * q k^T, masked) v``: (*, L, E), (*, S, E), (*, S, Ev)[, bool mask] -> (*, L, Ev).",
)
define_op(
    "attention_lse",
    infer=_lse_infer,
    kernel=_lse_kernel,
    grad=_through_floats(_lse_composite, 3),
    decomposition=_lse_composite,
    doc="Log-sum-exp over the keys of ``scale * q k^T`` (masked keys left out): (*, L), -inf for a row with no key.",
)
for _which in "qkv":
    define_op(
        f"attention_grad_{_which}",
        infer=_grad_infer(_which),
        kernel=_grad_kernel(_which),
        grad=_through_floats(_grad_composite(_which), 6),
        decomposition=_grad_composite(_which),
        doc=f"d{_which} of attention, recomputing P blockwise: (q, k, v, dout, lse, delta[, mask]) -> d{_which}.",
    )


# ============================================================================= public function
def attention(
    q: Any, k: Any, v: Any, mask: Any = None, *, causal: bool = False, scale: float | None = None
) -> Tensor:
    """Fused scaled-dot-product attention ``softmax(scale * q k^T, masked) v``.

    Args:
        q: queries ``(*, L, E)``; k: keys ``(*, S, E)``; v: values ``(*, S, Ev)``; the leading dims
            ``*`` (e.g. ``(B, H)``) are equal.
        mask: optional bool, broadcasting against ``(*, L, S)`` (e.g. a padding mask ``(B, 1, 1, S)``);
            True = may attend, as PyTorch's SDPA. Float masks are not accepted: add them to the scores.
        causal: query ``i`` attends keys ``j <= i + S - L`` (PyTorch's ``is_causal`` when L == S).
        scale: default ``1 / sqrt(E)`` (E must then be static).

    Returns: ``(*, L, Ev)`` in q's dtype. A query row with no key to attend gives 0 (PyTorch: NaN),
    and zero gradients.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> q = ag.input("q", ("B", 4, "T", 16))
        >>> y = ag.attention(q, q, q, causal=True)
        >>> y.shape
        ('B', 4, 'T', 16)
        >>> x = np.random.default_rng(0).standard_normal((1, 4, 3, 16)).astype("float32")
        >>> bool(np.allclose(ag.compile(y)(x)[..., 0, :], x[..., 0, :]))  # row 0 attends only key 0
        True
    """
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    if scale is None:
        e = q.shape[-1] if q.ndim else 1
        if not isinstance(e, int):
            raise ShapeError(
                f"attention: the feature size E = {e} of query {q.node.label} {format_shape(q.shape)} is "
                "symbolic; pass scale="
            )
        scale = 1.0 / math.sqrt(e)
    masks = [] if mask is None else [as_tensor(mask)]
    return apply("attention", q, k, v, *masks, causal=bool(causal), scale=float(scale))


__all__ = ["attention", "causal_allowed"]
