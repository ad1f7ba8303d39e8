"""Parity cases of the optimizer updates (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

import numpy as np

from ... import ops as ag
from ..cases import add_case as _add
from ..check import rand

# References: the single-tensor formulas of torch.optim (SGD, Adam/AdamW, RMSprop), in float64.
# The updates are not differentiable (order=0); every backend must agree on each output.
_P, _G, _M, _V = rand(2, 3, seed=80), rand(2, 3, seed=81), rand(2, 3, seed=82), rand(2, 3, seed=83, low=0.1)
_STEP, _LR = np.array(3.0), np.array(0.05)


def _sgd_ref(p, g, buf, step, lr, momentum=0.9, weight_decay=0.01, nesterov=True, output="param"):
    g = g + weight_decay * p
    buf = g if step == 1 else momentum * buf + g
    if output == "momentum_buffer":
        return buf
    return p - lr * (g + momentum * buf if nesterov else buf)


def _adam_ref(p, g, m, v, step, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.01, decoupled=False, output="param"):
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    if output != "param":
        return {"exp_avg": m, "exp_avg_sq": v}[output]
    denom = np.sqrt(v) / np.sqrt(1 - b2**step) + eps
    return p - lr / (1 - b1**step) * m / denom


def _rmsprop_ref(p, g, sq, ga, buf, lr, alpha=0.99, eps=1e-8, momentum=0.5, output="param"):
    sq = alpha * sq + (1 - alpha) * g * g
    ga = alpha * ga + (1 - alpha) * g
    buf = momentum * buf + g / (np.sqrt(sq - ga * ga) + eps)
    return {"param": p - lr * buf, "square_avg": sq, "grad_avg": ga, "momentum_buffer": buf}[output]


for _out in ("param", "momentum_buffer"):
    _add(
        "sgd_update",
        lambda p, g, b, s, lr, o=_out: ag.optim.sgd_update(
            p, g, b, s, lr=lr, momentum=0.9, weight_decay=0.01, nesterov=True
        )[o],
        _P,
        _G,
        _M,
        _STEP,
        _LR,
        ref=lambda p, g, b, s, lr, o=_out: _sgd_ref(p, g, b, s, lr, output=o),
        name=_out,
        order=0,
    )
_add(
    "sgd_update",
    lambda p, g, lr: ag.optim.sgd_update(p, g, lr=lr)["param"],
    _P,
    _G,
    _LR,
    ref=lambda p, g, lr: p - lr * g,
    name="plain",
    order=0,
)
for _out, _decoupled in [("param", False), ("param", True), ("exp_avg", False), ("exp_avg_sq", False)]:
    _add(
        "adam_update",
        lambda p, g, m, v, s, lr, o=_out, d=_decoupled: ag.optim.adam_update(
            p, g, m, v, s, lr=lr, weight_decay=0.01, decoupled_weight_decay=d
        )[o],
        _P,
        _G,
        _M,
        _V,
        _STEP,
        _LR,
        ref=lambda p, g, m, v, s, lr, o=_out, d=_decoupled: _adam_ref(
            p, g, m, v, s, lr, decoupled=d, output=o
        ),
        name=_out + ("_decoupled" if _decoupled else ""),
        order=0,
    )
for _out in ("param", "square_avg", "grad_avg", "momentum_buffer"):
    _add(
        "rmsprop_update",
        lambda p, g, sq, ga, b, lr, o=_out: ag.optim.rmsprop_update(
            p, g, sq, ga, b, lr=lr, momentum=0.5, centered=True
        )[o],
        _P,
        _G,
        _V + 1.0,
        _M * 0.1,
        _M,
        _LR,
        ref=lambda p, g, sq, ga, b, lr, o=_out: _rmsprop_ref(p, g, sq, ga, b, lr, output=o),
        name=_out,
        order=0,
    )
