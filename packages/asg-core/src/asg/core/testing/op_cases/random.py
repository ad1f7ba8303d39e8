"""Parity cases of the keyed random ops (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

import numpy as np

from ... import ops as ag
from ...tensor import constant
from .. import references as R
from ..cases import ANY
from ..cases import add_case as _add

_KEY = np.int64(-1234567890123)
_add(
    "fold_in",
    ag.fold_in,
    np.array([[1], [2], [-3]], np.int64),
    np.arange(4, dtype=np.int64),
    ref=np.vectorize(R.fold_in, otypes=[np.int64]),
)
_add(  # bit for bit, on every backend: the stream is fully specified
    "random_uniform",
    lambda k: ag.random_uniform(k, (2, 3)),
    _KEY,
    ref=lambda k: R.random_uniform(k, (2, 3)),
    rtol=0.0,
    atol=0.0,
    backend_rtol=0.0,
    backend_atol=0.0,
)
_add(
    "random_uniform",
    lambda k: ag.random_uniform(k, (5,), low=-1.0, high=3.0),
    _KEY,
    ref=lambda k: R.random_uniform(k, (5,), -1.0, 3.0),
    name="low_high",
)
_add("random_normal", lambda k: ag.random_normal(k, (2, 3)), _KEY, ref=lambda k: R.random_normal(k, (2, 3)))
_add("bernoulli", lambda k: ag.bernoulli(k, 0.3, (2, 4)), _KEY, ref=lambda k: R.bernoulli(k, 0.3, (2, 4)))


def _dropout_ref(x: np.ndarray) -> np.ndarray:
    return np.where(R.bernoulli(_KEY, 0.75, x.shape), x / 0.75, 0.0)


_add(
    "dropout",
    lambda x: ag.dropout(x, 0.25, constant(_KEY)),
    ANY,
    ref=_dropout_ref,
    covers=("bernoulli",),
)
