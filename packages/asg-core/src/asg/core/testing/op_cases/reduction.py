"""Parity cases of the reductions (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

import numpy as np

from ... import ops as ag
from ...tensor import apply
from ..cases import X3, T
from ..cases import add_case as _add
from ..cases import axis_id as _axis_id
from ..cases import reduced_dims as _dims

REDUCTION_AXES = [None, 0, 1, -1, (0, 2), (1, -1), (0, 1, 2)]
# (op: ag.<op> and np.<op>, the axes it is checked over, its torch function of (t, dims, keepdim))
_REDUCTIONS = [
    ("sum", REDUCTION_AXES, lambda t, d, k: t.sum(dim=d, keepdim=k)),
    ("max", (None, 0, -1, (0, 2)), lambda t, d, k: T.amax(t, dim=d, keepdim=k)),
    ("min", (None, 0, -1, (0, 2)), lambda t, d, k: T.amin(t, dim=d, keepdim=k)),
    ("mean", (None, 1, (0, 2)), lambda t, d, k: t.mean(dim=d, keepdim=k)),
]
for _axis in REDUCTION_AXES:
    for _keep in (False, True):
        _name = _axis_id(_axis) + ("_keepdims" if _keep else "")
        for _op, _axes, _tfn in _REDUCTIONS:
            if _axis in _axes:
                _add(
                    _op,
                    lambda x, a=_axis, k=_keep, o=_op: getattr(ag, o)(x, a, k),
                    X3,
                    ref=lambda x, a=_axis, k=_keep, o=_op: getattr(np, o)(x, axis=a, keepdims=k),
                    torch_fn=lambda t, a=_axis, k=_keep, f=_tfn: f(t, _dims(a), k),
                    name=_name,
                )
        if _axis in (None, 1, (0, 2)):
            _add(
                "logsumexp",
                lambda x, a=_axis, k=_keep: ag.logsumexp(x, a, k),
                X3,
                ref=lambda x, a=_axis, k=_keep: np.log(np.sum(np.exp(x), axis=a, keepdims=k)),
                torch_fn=lambda t, a=_axis, k=_keep: T.logsumexp(t, dim=_dims(a), keepdim=k),
                name=_name,
            )
_add(
    "max",
    lambda x: ag.max(x, 1),
    np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]),  # ties share the gradient equally
    ref=lambda x: np.max(x, axis=1),
    name="ties",
    order=0,
)
for _axis in (None, 0, (1, 2)):
    for _correction in (0, 1):
        _add(
            "var",
            lambda x, a=_axis, c=_correction: ag.var(x, a, correction=c),
            X3,
            ref=lambda x, a=_axis, c=_correction: np.var(x, axis=a, ddof=c),
            torch_fn=lambda t, a=_axis, c=_correction: t.var(dim=_dims(a), correction=c),
            name=f"{_axis_id(_axis)}_correction{_correction}",
        )
_add(
    "var",
    lambda x: ag.var(x, 1, keepdims=True),
    X3,
    ref=lambda x: np.var(x, axis=1, keepdims=True),
    name="axis1_keepdims",
    order=1,
)
for _op in ("argmax", "argmin"):
    for _axis in (0, 1, -1):
        for _keep in (False, True):
            _add(
                _op,
                lambda x, a=_axis, k=_keep, o=_op: getattr(ag, o)(x, a, k),
                X3,
                ref=lambda x, a=_axis, k=_keep, o=_op: getattr(np, o)(x, axis=a, keepdims=k),
                torch_fn=lambda t, a=_axis, k=_keep, o=_op: getattr(T, o)(t, dim=a, keepdim=k),
                name=_axis_id(_axis) + ("_keepdims" if _keep else ""),
            )
    _add(
        _op,
        lambda x, o=_op: getattr(x, o)(),  # the last axis by default
        X3[0],
        ref=lambda x, o=_op: getattr(np, o)(x, axis=-1),
        name="default_axis",
    )
_add(
    "count",
    lambda x: apply("count", x, axes=(0, 2), dtype=x.dtype),
    X3,
    ref=lambda x: np.asarray(8.0, x.dtype),
    order=0,
)

for _axis, _reverse in [(0, False), (-1, False), (1, True)]:
    _add(
        "cumsum",
        lambda x, a=_axis, r=_reverse: x.cumsum(a, reverse=r) * x,
        X3,
        ref=lambda x, a=_axis, r=_reverse: (
            (np.flip(np.cumsum(np.flip(x, a), a), a) if r else np.cumsum(x, a)) * x
        ),
        torch_fn=lambda x, a=_axis, r=_reverse: (
            (T.flip(T.cumsum(T.flip(x, (a,)), a), (a,)) if r else T.cumsum(x, a)) * x
        ),
        name=_axis_id(_axis) + ("_reverse" if _reverse else ""),
    )
