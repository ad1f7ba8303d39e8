"""Parity cases of the elementwise ops (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

import numpy as np

from ... import ops as ag
from .. import references as R
from ..cases import ANY, AWAY_FROM_ZERO, POSITIVE, F, T
from ..cases import add_case as _add
from ..cases import shape_id as _shape_id
from ..check import rand

UNARY = [
    # (op, asg function, numpy reference, torch function, data)
    ("neg", ag.neg, np.negative, T.neg, ANY),
    ("exp", ag.exp, np.exp, T.exp, ANY),
    ("log", ag.log, np.log, T.log, POSITIVE),
    ("sqrt", ag.sqrt, np.sqrt, T.sqrt, POSITIVE),
    ("rsqrt", ag.rsqrt, lambda x: 1 / np.sqrt(x), T.rsqrt, POSITIVE),
    ("abs", ag.abs, np.abs, T.abs, AWAY_FROM_ZERO),
    ("sign", ag.sign, np.sign, T.sign, AWAY_FROM_ZERO),
    ("erf", ag.erf, R.erf, T.erf, ANY),
    ("relu", ag.relu, lambda x: np.maximum(x, 0), T.relu, AWAY_FROM_ZERO),
    ("sigmoid", ag.sigmoid, lambda x: 1 / (1 + np.exp(-x)), T.sigmoid, ANY),
    ("tanh", ag.tanh, np.tanh, T.tanh, ANY),
    ("silu", ag.silu, lambda x: x / (1 + np.exp(-x)), F.silu, ANY),
    ("softplus", ag.softplus, lambda x: np.log1p(np.exp(x)), F.softplus, ANY),
    ("gelu", ag.gelu, R.gelu, F.gelu, ANY),
]
for _op, _fn, _ref, _torch_fn, _data in UNARY:
    _add(_op, _fn, _data, ref=_ref, torch_fn=_torch_fn)

_add(
    "leaky_relu",
    lambda x: ag.leaky_relu(x, 0.2),
    AWAY_FROM_ZERO,
    ref=lambda x: np.where(x > 0, x, 0.2 * x),
    torch_fn=lambda x: F.leaky_relu(x, 0.2),
)
_add(
    "leaky_relu",
    ag.leaky_relu,
    AWAY_FROM_ZERO,
    ref=lambda x: np.where(x > 0, x, 0.01 * x),
    torch_fn=F.leaky_relu,
    name="default_slope",
)
_add(
    "elu",
    lambda x: ag.elu(x, 0.7),
    AWAY_FROM_ZERO,
    ref=lambda x: np.where(x > 0, x, 0.7 * np.expm1(x)),
    torch_fn=lambda x: F.elu(x, 0.7),
)
_add(
    "softplus",
    lambda x: ag.softplus(x, beta=2.0, threshold=3.0),
    np.array([-1.3, 0.2, 1.0, 1.7, 2.5]),
    ref=lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2),
    torch_fn=lambda x: F.softplus(x, beta=2.0, threshold=3.0),
    name="beta_threshold",
)
_add(
    "gelu",
    lambda x: ag.gelu(x, approximate="tanh"),
    ANY,
    ref=lambda x: R.gelu(x, "tanh"),
    torch_fn=lambda x: F.gelu(x, approximate="tanh"),
    name="tanh",
)
_add(
    "clamp",
    lambda x: ag.clamp(x, -1.0, 0.5),
    AWAY_FROM_ZERO,
    ref=lambda x: np.clip(x, -1.0, 0.5),
    torch_fn=lambda x: T.clamp(x, -1.0, 0.5),
)
for _bound, _ref in (("min", np.maximum), ("max", np.minimum)):  # one bound only
    _add(
        "clamp",
        lambda x, b=_bound: ag.clamp(x, **{b: 0.3}),
        ANY,
        ref=lambda x, f=_ref: f(x, 0.3),
        torch_fn=lambda x, b=_bound: T.clamp(x, **{b: 0.3}),
        name=_bound,
    )

BINARY = [
    # (op, asg function, numpy reference, torch function)
    ("add", lambda a, b: a + b, np.add, T.add),
    ("sub", lambda a, b: a - b, np.subtract, T.sub),
    ("mul", lambda a, b: a * b, np.multiply, T.mul),
    ("div", lambda a, b: a / b, np.divide, T.div),
    ("pow", lambda a, b: a**b, np.power, T.pow),
    ("maximum", ag.maximum, np.maximum, T.maximum),
    ("minimum", ag.minimum, np.minimum, T.minimum),
]
# Same shapes, then broadcasting: a middle axis, a vector against a column, a scalar on either side.
BROADCAST_SHAPES = [
    ((2, 3), (2, 3)),
    ((3, 1, 4), (2, 4)),
    ((2, 4), (3, 1, 4)),
    ((4,), (3, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
]


def binary_data(op: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Operands valid for ``op``: positive bases for ``pow``, divisors away from zero for ``div``."""
    a = rand(*shape_a, seed=3, low=0.3, high=2.0) if op == "pow" else rand(*shape_a, seed=3)
    b = rand(*shape_b, seed=4)
    if op == "div":
        b = np.where(np.abs(b) < 0.3, 0.7, b)
    return a, b


for _op, _fn, _ref, _torch_fn in BINARY:
    for _sa, _sb in BROADCAST_SHAPES:
        _add(_op, _fn, *binary_data(_op, _sa, _sb), ref=_ref, torch_fn=_torch_fn, name=_shape_id(_sa, _sb))

COMPARISONS = [
    ("less", lambda a, b: a < b, np.less, T.lt),
    ("less_equal", lambda a, b: a <= b, np.less_equal, T.le),
    ("greater", lambda a, b: a > b, np.greater, T.gt),
    ("greater_equal", lambda a, b: a >= b, np.greater_equal, T.ge),
    ("equal", lambda a, b: a == b, np.equal, T.eq),
    ("not_equal", lambda a, b: a != b, np.not_equal, T.ne),
]
for _op, _fn, _ref, _torch_fn in COMPARISONS:
    for _sa, _sb in [((2, 3), (2, 3)), ((3, 1, 4), (2, 4)), ((), (2, 3))]:
        # Small integers, so that ties occur.
        _a, _b = np.round(rand(*_sa, seed=5)), np.round(rand(*_sb, seed=6))
        _add(_op, _fn, _a, _b, ref=_ref, torch_fn=_torch_fn, name=_shape_id(_sa, _sb))

_BOOL_A = np.array([[True, False, True, False]])
_BOOL_B = np.array([[True], [False]])
_add("logical_and", lambda a, b: a & b, _BOOL_A, _BOOL_B, ref=np.logical_and, torch_fn=T.logical_and)
_add("logical_and", lambda a, b: a & b, _BOOL_A, _BOOL_A, ref=np.logical_and, name="same_shape")
_add("logical_or", lambda a, b: a | b, _BOOL_A, _BOOL_B, ref=np.logical_or, torch_fn=T.logical_or)
_add("logical_or", lambda a, b: a | b, _BOOL_A, _BOOL_A, ref=np.logical_or, name="same_shape")
_add("logical_not", lambda a: ~a, _BOOL_A, ref=np.logical_not, torch_fn=T.logical_not)

for _sc, _sa, _sb in [
    ((2, 3), (2, 3), (2, 3)),
    ((3, 1, 4), (2, 4), ()),
    ((4,), (3, 1), (3, 4)),
    ((), (2,), (2,)),
]:
    _add(
        "where",
        ag.where,
        rand(*_sc, seed=7) > 0,
        rand(*_sa, seed=8),
        rand(*_sb, seed=9),
        ref=np.where,
        torch_fn=T.where,
        name=_shape_id(_sc, _sa, _sb),
    )

_add(
    "cast",
    lambda x: ag.cast(x, "int32"),
    np.array([1.7, -2.7, 5.0]),
    ref=lambda x: x.astype(np.int32),
    name="int32",
)
_add(
    "cast",
    lambda x: ag.cast(x, "float32"),
    np.array([3, -2, 7], np.int32),
    ref=lambda x: x.astype(np.float32),
    name="from_int32",
)
_add("cast", lambda x: ag.cast(x, "bool"), np.array([0.0, -2.0, 0.5]), ref=lambda x: x != 0, name="bool")
_add(
    "cast",
    lambda x: ag.cast(ag.cast(x, "float16"), x.dtype),  # rounds to float16; the gradient passes through
    ANY,
    torch_fn=lambda x: x.half().to(x.dtype),
    name="float16_round_trip",
    order=0,
)

for _shape in [(2, 3), (1, 3), (3,)]:  # the mask broadcasts against x
    _add(
        "masked_fill",
        lambda x, m: x.masked_fill(m, -2.5) * x,
        ANY,
        np.random.default_rng(7).random(_shape) > 0.5,
        ref=lambda x, m: np.where(m, -2.5, x) * x,
        torch_fn=lambda x, m: x.masked_fill(m, -2.5) * x,
        name=_shape_id(_shape),
    )
