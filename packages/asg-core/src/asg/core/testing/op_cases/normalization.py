"""Parity cases of the normalization ops (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import ops as ag
from ...tensor import apply, constant
from .. import references as R
from ..cases import F, T, _torch_module
from ..cases import add_case as _add
from ..check import rand

_add(
    "layer_norm",
    lambda x, w, b: ag.layer_norm(x, 5, w, b),
    rand(3, 5),
    rand(5, seed=1),
    rand(5, seed=2),
    ref=lambda x, w, b: R.layer_norm(x, 1, w, b),
    torch_fn=lambda x, w, b: F.layer_norm(x, (5,), w, b),
    name="affine",
    covers=("layer_norm_backward", "layer_norm_weight_grad"),
)
_add(
    "layer_norm",
    lambda x: ag.layer_norm(x, (3, 4)),
    rand(2, 3, 4, seed=3),
    ref=lambda x: R.layer_norm(x, 2),
    torch_fn=lambda x: F.layer_norm(x, (3, 4)),
    name="two_dims",
)
_add(
    "layer_norm",
    lambda x, w, b: ag.layer_norm(x, (2, 3), w, b, eps=1e-3),
    rand(2, 2, 3, seed=4),
    rand(2, 3, seed=5),
    rand(2, 3, seed=6),
    ref=lambda x, w, b: R.layer_norm(x, 2, w, b, eps=1e-3),
    torch_fn=lambda x, w, b: F.layer_norm(x, (2, 3), w, b, eps=1e-3),
    name="affine_two_dims_eps",
)

for _which in ("weight", "bias"):
    _add(
        "layer_norm",
        lambda x, p, w=_which: ag.layer_norm(x, 4, **{w: p}),
        rand(3, 4, seed=7),
        rand(4, seed=8),
        ref=lambda x, p, w=_which: R.layer_norm(x, 1, **{w: p}),
        torch_fn=lambda x, p, w=_which: F.layer_norm(x, (4,), **{w: p}),
        name=f"only_{_which}",
    )


def _torch_layer_norm_dx(g: Any, x: Any, w: Any) -> Any:
    (dx,) = _torch_module().autograd.grad((F.layer_norm(x, (4,), w) * g).sum(), x, create_graph=True)
    return dx


def _torch_layer_norm_dw(g: Any, x: Any) -> Any:
    w = _torch_module().ones(4, dtype=x.dtype, requires_grad=True)
    (dw,) = _torch_module().autograd.grad((F.layer_norm(x, (4,), w) * g).sum(), w, create_graph=True)
    return dw


_add(
    "layer_norm_backward",
    lambda g, x, w: apply("layer_norm_backward", g, x, w, normalized_shape=(4,), eps=1e-5, has_weight=True),
    rand(3, 4, seed=9),
    rand(3, 4, seed=10),
    rand(4, seed=11),
    ref=R.layer_norm_input_grad,
    torch_fn=_torch_layer_norm_dx,
    grad_rtol=1e-3,
    grad_atol=1e-4,
)
_add(
    "layer_norm_weight_grad",
    lambda g, x: apply("layer_norm_weight_grad", g, x, normalized_shape=(4,), eps=1e-5),
    rand(3, 4, seed=12),
    rand(3, 4, seed=13),
    ref=lambda g, x: (g * R.layer_norm(x, 1)).sum(0),
    torch_fn=_torch_layer_norm_dw,
    grad_rtol=1e-3,
    grad_atol=1e-4,
)
_add(
    "batch_norm",
    lambda x, w, b: ag.batch_norm(x, None, None, w, b, training=True).output,
    rand(4, 3, seed=20),
    rand(3, seed=21),
    rand(3, seed=22),
    ref=R.batch_norm_train,
    torch_fn=lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
    name="training_2d",
)
_add(
    "batch_norm",
    lambda x, w, b: ag.batch_norm(x, None, None, w, b, training=True, eps=1e-3).output,
    rand(2, 3, 2, 2, seed=23),
    rand(3, seed=24),
    rand(3, seed=25),
    ref=lambda x, w, b: R.batch_norm_train(x, w, b, eps=1e-3),
    torch_fn=lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=1e-3),
    name="training_4d",
)

_BN_MEAN, _BN_VAR = rand(3, seed=29), rand(3, seed=30, low=0.5, high=2.0)


def _batch_norm_eval_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = (1, 3, 1, 1)
    return (x - _BN_MEAN.reshape(s)) / np.sqrt(_BN_VAR.reshape(s) + 1e-5) * w.reshape(s) + b.reshape(s)


_add(
    "batch_norm",
    lambda x, w, b: (
        ag.batch_norm(x, constant(_BN_MEAN, x.dtype), constant(_BN_VAR, x.dtype), w, b, training=False).output
    ),
    rand(2, 3, 2, 2, seed=26),
    rand(3, seed=27),
    rand(3, seed=28),
    ref=_batch_norm_eval_ref,
    torch_fn=lambda x, w, b: F.batch_norm(
        x, T.tensor(_BN_MEAN, dtype=x.dtype), T.tensor(_BN_VAR, dtype=x.dtype), w, b, training=False
    ),
    name="eval_running_stats",
)
