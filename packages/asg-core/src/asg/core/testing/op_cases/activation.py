"""Parity cases of the activations and layers (softmax, cross_entropy, linear, embedding) (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

import numpy as np

from ... import ops as ag
from .. import references as R
from ..cases import F
from ..cases import add_case as _add
from ..cases import axis_id as _axis_id
from ..check import rand

for _axis in (0, 1, -1):
    _add(
        "softmax",
        lambda x, a=_axis: ag.softmax(x, a),
        rand(2, 3, 4, seed=60),
        ref=lambda x, a=_axis: R.softmax(x, a),
        torch_fn=lambda t, a=_axis: F.softmax(t, a),
        name=_axis_id(_axis),
    )
    _add(
        "log_softmax",
        lambda x, a=_axis: ag.log_softmax(x, a),
        rand(2, 3, 4, seed=61),
        ref=lambda x, a=_axis: np.log(R.softmax(x, a)),
        torch_fn=lambda t, a=_axis: F.log_softmax(t, a),
        name=_axis_id(_axis),
    )


def _cross_entropy_ref(z: np.ndarray, target: np.ndarray, reduction: str, smoothing: float) -> np.ndarray:
    logp = np.log(R.softmax(z))
    loss = -(1 - smoothing) * logp[np.arange(len(target)), target] - smoothing * logp.mean(-1)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


_TARGET = np.array([0, 4, 2, 2])
for _reduction in ("mean", "sum", "none"):
    for _smoothing in (0.0, 0.1):
        _add(
            "cross_entropy",
            lambda z, t, r=_reduction, ls=_smoothing: ag.cross_entropy(z, t, r, ls),
            rand(4, 5, seed=63),
            _TARGET,
            ref=lambda z, t, r=_reduction, ls=_smoothing: _cross_entropy_ref(z, t, r, ls),
            torch_fn=lambda z, t, r=_reduction, ls=_smoothing: F.cross_entropy(
                z, t, reduction=r, label_smoothing=ls
            ),
            name=f"{_reduction}_smoothing{_smoothing}",
        )
_add(
    "linear",
    ag.linear,
    rand(2, 3, 4),
    rand(5, 4, seed=1),
    rand(5, seed=2),
    ref=lambda x, w, b: x @ w.T + b,
    torch_fn=F.linear,
    name="bias_3d",
)
_add(
    "linear",
    lambda x, w: ag.linear(x, w),
    rand(4, seed=3),
    rand(3, 4, seed=4),
    ref=lambda x, w: w @ x,
    torch_fn=lambda x, w: F.linear(x, w),
    name="no_bias_1d",
)
_add(
    "embedding",
    lambda i, w: ag.embedding(i, w),
    np.array([[1, 3, 1], [0, 1, 4]]),  # repeated ids: their gradients scatter-add
    rand(5, 3, seed=5),
    ref=lambda i, w: w[i],
    torch_fn=F.embedding,
)
