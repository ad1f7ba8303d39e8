"""The per-op cases every backend runs: ``OP_CASES[op name] -> [OpCase, ...]``.

Each registered op has at least one case here (or is an internal backward op listed in
:data:`INTERNAL_OPS` with the forward op whose gradient runs it). Composite functions that users call
(``mean``, ``linear``, ``batch_norm``, ``dropout`` ...) have cases too, under their own names. Data is
small and fixed: the float64 checks run finite differences to second order on every entry.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ops as ag
from ..autograd import grad
from ..graph import Graph, Node
from ..registry import OPS
from ..tensor import Tensor, apply, constant
from . import references as R
from .check import UnsupportedCase, _check, _inputs, _TorchMissing, check_op, rand

ArrayMaker = np.ndarray | Callable[[], np.ndarray]


class _Torch:
    """``torch``, imported when a reference is first called: the table is built without PyTorch.

    Only calls go through it (``T.nn.functional.gelu(x)``); attributes that are not called (dtypes)
    are read from the real module inside a lambda, via :func:`_torch_module`.
    """

    def __init__(self, path: str = "torch") -> None:
        self._path = path

    def __getattr__(self, name: str) -> _Torch:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Torch(f"{self._path}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        obj: Any = _torch_module()
        for part in self._path.split(".")[1:]:
            obj = getattr(obj, part)
        return obj(*args, **kwargs)


def _torch_module() -> Any:
    return importlib.import_module("torch")


T = _Torch()
F = T.nn.functional


@dataclass(frozen=True)
class OpCase:
    """One parity check of one op: what to build, on which data, against what.

    Attributes:
        op: the registry name of the op this case covers (or a composite's public name, such as
            ``"linear"``).
        fn: builds the op from one Tensor per input.
        inputs: the input arrays, or functions returning them (float arrays are cast to float64 or
            float32 by :func:`~asg.core.testing.check_op`; integer and bool arrays pass unchanged).
        ref: numpy reference on float64 arrays, or ``None``.
        torch_fn: PyTorch reference on tensors, or ``None``.
        name: distinguishes cases of one op; the case's id is ``op-name``.
        order: finite-difference order (0 skips; non-float outputs are never differentiated).
        tol: tolerance overrides passed to :func:`~asg.core.testing.check_op` (``rtol``, ``grad_atol`` ...).
        covers: other registered ops this case runs, such as the backward ops of its gradient.
    """

    op: str
    fn: Callable[..., Tensor]
    inputs: tuple[ArrayMaker, ...]
    ref: Callable[..., Any] | None = None
    torch_fn: Callable[..., Any] | None = None
    name: str = ""
    order: int = 2
    tol: Mapping[str, float] = field(default_factory=dict)
    covers: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}" if self.name else self.op

    def arrays(self) -> list[np.ndarray]:
        """Fresh copies of the input arrays."""
        return [np.array(a() if callable(a) else a) for a in self.inputs]

    def check(self, backend: str = "numpy") -> None:
        """Run this case through :func:`~asg.core.testing.check_op` on ``backend`` (inside pytest, a
        case the backend's declared dtypes cannot run is skipped).

        >>> OP_CASES["exp"][0].check()
        """
        check_op(self.fn, *self.arrays(), **self._kwargs(backend))

    def run(self, backend: str = "numpy") -> None:
        """Like :meth:`check`, but never skips: a case the backend's dtypes cannot run raises
        :class:`~asg.core.testing.UnsupportedCase`, and without PyTorch its comparison is left out."""
        with contextlib.suppress(_TorchMissing):
            _check(self.fn, *self.arrays(), **self._kwargs(backend))

    def _kwargs(self, backend: str) -> dict[str, Any]:
        return dict(ref=self.ref, torch_fn=self.torch_fn, order=self.order, backend=backend, **self.tol)

    def nodes(self, order: int = 2) -> list[Node]:
        """The nodes computing this case's value and its gradients up to ``order``, on float32 data.

        The gradients are those of ``sum(out * out)``, so that second-order terms reach every input.

        >>> sorted({n.op for n in OP_CASES["exp"][0].nodes(order=0)})
        ['exp', 'input']
        """
        arrays = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in self.arrays()]
        xs = _inputs(arrays)
        out = self.fn(*xs)
        outputs = [out]
        floats = [x for x in xs if x.dtype.startswith("float")]
        if order and floats and out.dtype.startswith("float"):
            first = grad((out * out).sum(), floats)
            outputs += first
            if order >= 2:
                outputs += grad(sum(((g * g).sum() for g in first), start=constant(np.float32(0))), floats)
        return Graph([t.node for t in outputs]).nodes

    def graph_ops(self, order: int = 2) -> set[str]:
        """Names of the ops in :meth:`nodes`.

        >>> "max_pool2d_gather" in OP_CASES["max_pool2d"][0].graph_ops(order=2)
        True
        """
        return {n.op for n in self.nodes(order)}

    def __repr__(self) -> str:
        return f"OpCase({self.id})"


OP_CASES: dict[str, list[OpCase]] = {}

# Backward ops that only gradients build, each checked through the gradient of the forward op named here
# (its cases' gradients run it on every backend, and finite differences check it to second order).
INTERNAL_OPS: dict[str, str] = {
    "slice_backward": "slice",
    "index_select_backward": "index_select",
    "take_along_axis_backward": "take_along_axis",
    "adaptive_max_pool2d_backward": "adaptive_max_pool2d",
    "adaptive_max_pool2d_gather": "adaptive_max_pool2d",
    "avg_pool2d_backward": "avg_pool2d",
    "adaptive_avg_pool2d_backward": "adaptive_avg_pool2d",
}


def add_case(
    op: str,
    fn: Callable[..., Tensor],
    *inputs: ArrayMaker,
    ref: Callable[..., Any] | None = None,
    torch_fn: Callable[..., Any] | None = None,
    name: str = "",
    order: int = 2,
    covers: Sequence[str] = (),
    **tol: float,
) -> OpCase:
    """Add a case to :data:`OP_CASES` (a package that registers its own ops adds their cases, and
    every backend then runs them). ``tol`` holds :func:`~asg.core.testing.check_op` tolerances.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> case = add_case("exp", ag.exp, np.zeros(3), ref=np.exp, name="doc_zeros")
    >>> case.id, case.check()
    ('exp-doc_zeros', None)
    >>> _ = OP_CASES["exp"].pop()
    """
    case = OpCase(op, fn, tuple(_frozen(a) for a in inputs), ref, torch_fn, name, order, tol, tuple(covers))
    cases = OP_CASES.setdefault(op, [])
    if any(c.id == case.id for c in cases):
        raise ValueError(
            f"add_case: a case with the id {case.id!r} exists already; give this one another name="
        )
    cases.append(case)
    return case


_add = add_case


def _frozen(a: ArrayMaker) -> ArrayMaker:
    if callable(a):
        return a
    a = np.array(a)
    a.setflags(write=False)
    return a


def _shape_id(*shapes: tuple[int, ...]) -> str:
    return "-".join("x".join(map(str, s)) or "scalar" for s in shapes)


# ============================================================================= elementwise
ANY = rand(2, 3, seed=2)
POSITIVE = rand(2, 3, seed=1, low=0.2, high=3.0)
AWAY_FROM_ZERO = np.where(np.abs(ANY) < 0.1, 0.5, ANY)  # kinks (abs, relu ...) are not differentiable at 0

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
_add(
    "clamp",
    lambda x: ag.clamp(x, min=0.3),
    ANY,
    ref=lambda x: np.maximum(x, 0.3),
    torch_fn=lambda x: T.clamp(x, min=0.3),
    name="min",
)
_add(
    "clamp",
    lambda x: ag.clamp(x, max=0.3),
    ANY,
    ref=lambda x: np.minimum(x, 0.3),
    torch_fn=lambda x: T.clamp(x, max=0.3),
    name="max",
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

# ============================================================================= reductions
X3 = rand(2, 3, 4, seed=20)


def _axis_id(axis: Any) -> str:
    if axis is None:
        return "all"
    return "axis" + "_".join(str(a) for a in (axis if isinstance(axis, tuple) else (axis,)))


def _dims(axis: Any) -> tuple[int, ...]:
    if axis is None:
        return (0, 1, 2)
    return axis if isinstance(axis, tuple) else (axis,)


REDUCTION_AXES = [None, 0, 1, -1, (0, 2), (1, -1), (0, 1, 2)]
for _axis in REDUCTION_AXES:
    for _keep in (False, True):
        _name = _axis_id(_axis) + ("_keepdims" if _keep else "")
        _add(
            "sum",
            lambda x, a=_axis, k=_keep: ag.sum(x, a, k),
            X3,
            ref=lambda x, a=_axis, k=_keep: np.sum(x, axis=a, keepdims=k),
            torch_fn=lambda t, a=_axis, k=_keep: t.sum(dim=_dims(a), keepdim=k),
            name=_name,
        )
        if _axis in (None, 0, -1, (0, 2)):
            for _op, _tfn in (("max", T.amax), ("min", T.amin)):
                _add(
                    _op,
                    lambda x, a=_axis, k=_keep, o=_op: getattr(ag, o)(x, a, k),
                    X3,
                    ref=lambda x, a=_axis, k=_keep, o=_op: getattr(np, o)(x, axis=a, keepdims=k),
                    torch_fn=lambda t, a=_axis, k=_keep, f=_tfn: f(t, dim=_dims(a), keepdim=k),
                    name=_name,
                )
        if _axis in (None, 1, (0, 2)):
            _add(
                "mean",
                lambda x, a=_axis, k=_keep: ag.mean(x, a, k),
                X3,
                ref=lambda x, a=_axis, k=_keep: np.mean(x, axis=a, keepdims=k),
                torch_fn=lambda t, a=_axis, k=_keep: t.mean(dim=_dims(a), keepdim=k),
                name=_name,
            )
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

# ============================================================================= shape and indexing
XS = rand(2, 3, 4, seed=40)
VIEWS = [
    # (op or public function, name, asg function, numpy reference, torch function)
    ("reshape", "", lambda x: x.reshape(4, 6), lambda x: x.reshape(4, 6), lambda t: t.reshape(4, 6)),
    ("reshape", "hole", lambda x: x.reshape((6, -1)), lambda x: x.reshape(6, -1), lambda t: t.reshape(6, -1)),
    ("reshape", "flat", lambda x: ag.reshape(x, (-1,)), lambda x: x.reshape(-1), lambda t: t.reshape(-1)),
    ("flatten", "1", lambda x: x.flatten(1), lambda x: x.reshape(2, 12), lambda t: t.flatten(1)),
    ("flatten", "0_1", lambda x: x.flatten(0, 1), lambda x: x.reshape(6, 4), lambda t: t.flatten(0, 1)),
    ("flatten", "all", lambda x: ag.flatten(x), lambda x: x.reshape(-1), lambda t: t.flatten()),
    (
        "transpose",
        "T_default",
        lambda x: x.transpose(),
        lambda x: x.transpose(),
        lambda t: t.permute(2, 1, 0),
    ),
    (
        "transpose",
        "two_axes",
        lambda x: x.transpose(1, 2),
        lambda x: x.swapaxes(1, 2),
        lambda t: t.transpose(1, 2),
    ),
    (
        "transpose",
        "fn_neg",
        lambda x: ag.transpose(x, -1, 0),
        lambda x: x.swapaxes(0, 2),
        lambda t: T.transpose(t, -1, 0),
    ),
    ("transpose", "T", lambda x: x.T, lambda x: x.T, lambda t: t.permute(2, 1, 0)),
    (
        "permute",
        "varargs",
        lambda x: x.permute(1, 0, 2),
        lambda x: x.transpose(1, 0, 2),
        lambda t: t.permute(1, 0, 2),
    ),
    (
        "permute",
        "tuple",
        lambda x: x.permute((2, 0, 1)),
        lambda x: x.transpose(2, 0, 1),
        lambda t: t.permute(2, 0, 1),
    ),
    (
        "permute",
        "neg",
        lambda x: ag.permute(x, (0, -1, 1)),
        lambda x: x.transpose(0, 2, 1),
        lambda t: t.permute(0, 2, 1),
    ),
    (
        "swapaxes",
        "method",
        lambda x: x.swapaxes(0, 1),
        lambda x: x.swapaxes(0, 1),
        lambda t: t.swapaxes(0, 1),
    ),
    (
        "swapaxes",
        "fn_neg",
        lambda x: ag.swapaxes(x, 0, -1),
        lambda x: x.swapaxes(0, 2),
        lambda t: t.swapaxes(0, 2),
    ),
    ("unsqueeze", "", lambda x: x.unsqueeze(1), lambda x: x[:, None], lambda t: t.unsqueeze(1)),
    ("unsqueeze", "neg", lambda x: ag.unsqueeze(x, -1), lambda x: x[..., None], lambda t: t.unsqueeze(-1)),
    ("squeeze", "roundtrip", lambda x: x.unsqueeze(0).squeeze(0), lambda x: x, lambda t: t),
    ("squeeze", "all", lambda x: x[:, :1].squeeze(), lambda x: x[:, 0], lambda t: t[:, :1].squeeze()),
    (
        "squeeze",
        "axes",
        lambda x: x[:1, :, :1].squeeze((0, 2)),
        lambda x: x[0, :, 0],
        lambda t: t[:1, :, :1].squeeze((0, 2)),
    ),
]
for _op, _name, _fn, _ref, _torch_fn in VIEWS:
    _add(_op, _fn, XS, ref=_ref, torch_fn=_torch_fn, name=_name)
for _shape, _target in [((3,), (2, 3)), ((2, 1), (2, 4)), ((1, 3, 1), (2, 3, 4)), ((), (2, 2))]:
    _add(
        "broadcast_to",
        lambda x, s=_target: ag.broadcast_to(x, s),
        rand(*_shape, seed=41),
        ref=lambda x, s=_target: np.broadcast_to(x, s),
        torch_fn=lambda t, s=_target: t.expand(*s),
        name=_shape_id(_shape, _target),
    )
    _add(
        "expand",
        lambda x, s=_target: x.expand(*s),
        rand(*_shape, seed=41),
        ref=lambda x, s=_target: np.broadcast_to(x, s),
        name=_shape_id(_shape, _target),
        order=1,
    )


def _sum_to_ref(x: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    lead = x.ndim - len(target)
    out = x.sum(axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, d in enumerate(target) if d == 1 and out.shape[i] != 1)
    return out.sum(axis=axes, keepdims=True).reshape(target)


for _shape, _target in [((2, 3), (3,)), ((2, 4), (2, 1)), ((2, 3, 4), (3, 1)), ((2, 3), ())]:
    _add(
        "sum_to",
        lambda x, s=_target: ag.sum_to(x, s),
        rand(*_shape, seed=42),
        ref=lambda x, s=_target: _sum_to_ref(x, s),
        name=_shape_id(_shape, _target),
    )
BASIC_INDEXES = [
    (1,),
    (-1,),
    (-2,),
    (slice(1, None),),
    (slice(None, None, 2),),
    (slice(None, -1),),
    (slice(-2, None),),
    (slice(-3, -1),),
    (slice(0, 100),),
    (slice(5, 10),),
    (0, slice(None), 1),
    (slice(None), -1, slice(None, None, 3)),
    (Ellipsis, 1),
    (Ellipsis, slice(1, 3)),
    (1, Ellipsis),
    (None,),
    (slice(None), None, 2),
    (None, Ellipsis, None),
    (0, -1, -1),
    (slice(1, 2), None, None),
    (slice(None, None, 2), slice(1, None, 2), slice(None, 3, 2)),
]


def _key_id(key: tuple[Any, ...]) -> str:
    def one(k: Any) -> str:
        if isinstance(k, slice):
            text = f"{'' if k.start is None else k.start}:{'' if k.stop is None else k.stop}"
            return text + (f":{k.step}" if k.step is not None else "")
        return {None: "None", Ellipsis: "..."}[k] if k is None or k is Ellipsis else str(k)

    return "[" + ",".join(one(k) for k in key) + "]"


for _key in BASIC_INDEXES:
    _add(
        "getitem",
        lambda x, k=_key: x[k],
        XS,
        ref=lambda x, k=_key: x[k],
        torch_fn=lambda t, k=_key: t[k],
        name=_key_id(_key),
    )
for _key_name, _key in [
    ("int", (1,)),
    ("strided", (slice(None, None, 2), slice(1, None, 2), slice(None, 3, 2))),
]:
    _add(
        "slice",
        lambda x, k=_key: x[k],
        X3,
        ref=lambda x, k=_key: x[k],
        torch_fn=lambda t, k=_key: t[k],
        name=_key_name,
        covers=("slice_backward",),
    )
ARRAY_INDEXES = [
    ("repeated_rows", [2, 0, 2, 2]),
    ("2d_index", np.array([[1, 1], [0, 1]])),
    ("axis1_repeated", (slice(None), [2, 2, 0])),
    ("axis2_negative", (slice(None), slice(None), [-1, 0, 3, -1])),
    ("axis1_negative", (slice(None), np.array([1, -3]))),
]


def _torch_key(key: Any) -> tuple[Any, ...]:
    return tuple(
        _torch_module().tensor(k) if isinstance(k, (list, np.ndarray)) else k
        for k in (key if isinstance(key, tuple) else (key,))
    )


for _name, _key in ARRAY_INDEXES:
    _add(
        "index_select",
        lambda x, k=_key: x[k],  # repeated ids: their gradients accumulate
        rand(3, 3, 4, seed=43),
        ref=lambda x, k=_key: x[k if isinstance(k, tuple) else np.asarray(k)],
        torch_fn=lambda t, k=_key: t[_torch_key(k)],
        name=f"getitem_{_name}",
    )
_add(
    "slice_range",
    lambda x: apply("slice_range", x, axis=1, start=1, stop=3),
    X3,
    ref=lambda x: x[:, 1:3],
    torch_fn=lambda t: t[:, 1:3],
)
_CONCAT_SHAPES = {
    0: [(1, 3, 2), (2, 3, 2), (3, 3, 2)],
    1: [(2, 1, 2), (2, 2, 2), (2, 3, 2)],
    -1: [(2, 3, 1), (2, 3, 3), (2, 3, 2)],
}
for _axis, _shapes in _CONCAT_SHAPES.items():
    _add(
        "concat",
        lambda a, b, c, ax=_axis: ag.concat([a, b, c], ax),
        *[rand(*sh, seed=44 + i) for i, sh in enumerate(_shapes)],
        ref=lambda a, b, c, ax=_axis: np.concatenate([a, b, c], ax),
        torch_fn=lambda a, b, c, ax=_axis: T.cat([a, b, c], ax),
        name=_axis_id(_axis),
        covers=("slice_range",),
    )
for _axis in (0, 1, 2, -1):
    _add(
        "stack",
        lambda a, b, c, ax=_axis: ag.stack([a, b, c], ax),
        *[rand(2, 3, seed=50 + i) for i in range(3)],
        ref=lambda a, b, c, ax=_axis: np.stack([a, b, c], ax),
        torch_fn=lambda a, b, c, ax=_axis: T.stack([a, b, c], ax),
        name=_axis_id(_axis),
    )
for _widths, _value in [(((1, 2), (0, 1)), 0.0), (((0, 0), (3, 0)), -1.5), (1, 2.0), (((2, 0), (0, 2)), 0.0)]:
    _torch_pad = (1, 1, 1, 1) if isinstance(_widths, int) else (*_widths[1], *_widths[0])
    _add(
        "pad",
        lambda x, w=_widths, v=_value: ag.pad(x, w, v),
        rand(2, 3, seed=55),
        ref=lambda x, w=_widths, v=_value: np.pad(x, w, constant_values=v),
        torch_fn=lambda t, p=_torch_pad, v=_value: F.pad(t, p, value=v),
        name=f"{_widths}_{_value}".replace(" ", ""),
    )
INDEX_SELECTS = [
    # (x shape, ids, axis): repeated and negative ids
    ((4, 3), [0, 3, 3, 1, 0], 0),
    ((2, 4, 3), [[1, 1], [3, 0]], 1),
    ((3, 4), [-1, 0, -1], 1),
    ((4,), [2, 2, 2], 0),
    ((3, 2), [1], -1),
]
for _shape, _idx, _axis in INDEX_SELECTS:
    _add(
        "index_select",
        lambda x, i, ax=_axis: ag.index_select(x, i, ax),
        rand(*_shape, seed=56),
        np.array(_idx),
        ref=lambda x, i, ax=_axis: np.take(x, i, axis=ax),
        name=_shape_id(_shape, np.shape(_idx)) + f"_{_axis_id(_axis)}",
    )
TAKE_ALONG = [
    ((2, 3), [[2], [0]], 1),
    ((3, 2), [[0, 1], [2, 2], [1, 0], [0, 0]], 0),
    ((2, 3, 2), [[[1, 0]], [[2, 2]]], 1),
    ((2, 4), [[1, 1, 3], [0, 0, 0]], -1),
]
for _shape, _idx, _axis in TAKE_ALONG:
    _add(
        "take_along_axis",
        lambda x, i, ax=_axis: ag.take_along_axis(x, i, ax),
        rand(*_shape, seed=57),
        np.array(_idx),
        ref=lambda x, i, ax=_axis: np.take_along_axis(x, i, axis=ax),
        torch_fn=lambda x, i, ax=_axis: T.gather(x, ax, i),
        name=_shape_id(_shape, np.shape(_idx)) + f"_{_axis_id(_axis)}",
    )
_add(
    "one_hot",
    lambda i: ag.one_hot(i, 4, "float32"),
    np.array([[0, 3], [2, 2]]),
    ref=lambda i: np.eye(4, dtype=np.float32)[i],
    torch_fn=lambda i: F.one_hot(i, 4).float(),
)
_add("full", lambda x: x + ag.full((2, 3), 1.5, x.dtype), ANY, ref=lambda x: x + 1.5)
_add(
    "stop_gradient",
    lambda x: x * ag.stop_gradient(x),
    ANY,
    ref=lambda x: x * x,
    torch_fn=lambda x: x * x.detach(),
    order=0,
)

# The new ops' cases multiply the op by its input, so that the second-order checks are not trivial.
for _dim in (0, 1, -1):
    _x = rand(3, 4, seed=63)
    _ids = np.random.default_rng(64).integers(0, _x.shape[_dim], size=(4, 3) if _dim == 0 else (2, 5))
    _ids = _ids[:, :4] if _dim == 0 else _ids  # smaller than x on the other axis is allowed; ids repeat
    _add(
        "gather",
        lambda x, i, d=_dim: x.gather(d, i),
        _x,
        _ids,
        ref=lambda x, i, d=_dim: np.take_along_axis(x[:, : i.shape[1]] if d == 0 else x[: i.shape[0]], i, d),
        torch_fn=lambda x, i, d=_dim: T.gather(x, d, i),
        name=_axis_id(_dim),
        covers=("gather_backward",),
    )
_GATHER_IDX = np.array([[2, 0, 2], [1, 1, 0]])
_add(
    "gather_backward",
    lambda g: apply("gather_backward", g, constant(_GATHER_IDX), axis=1, shape=(2, 4)),
    rand(2, 3, seed=47),
    ref=lambda g: np.stack([np.bincount(_GATHER_IDX[r], weights=g[r], minlength=4) for r in range(2)]),
)
_TAKE_IDX2 = np.array([[5, 0], [-1, 11]])
_add(
    "take",
    lambda x: x.take(_TAKE_IDX2),
    rand(3, 4, seed=65),
    ref=lambda x: np.take(x, _TAKE_IDX2),
    torch_fn=lambda x: T.take(x, T.tensor(_TAKE_IDX2 % 12)),
    name="flat",
    covers=("index_select_backward",),
)
_add(
    "take",
    lambda x: ag.take(x, np.array([2, -1, 2]), axis=1),
    rand(3, 4, seed=65),
    ref=lambda x: np.take(x, [2, -1, 2], axis=1),
    name="axis1",
)
for _op in ("tril", "triu"):
    for _k in (-1, 0, 2):
        _add(
            _op,
            lambda x, k=_k, o=_op: getattr(x, o)(k) * x,
            rand(2, 3, 4, seed=60),  # a batch of 3x4 matrices
            ref=lambda x, k=_k, o=_op: getattr(np, o)(x, k) * x,
            torch_fn=lambda x, k=_k, o=_op: getattr(T, o)(x, k) * x,
            name=f"k{_k}",
        )
_add(
    "tril",
    lambda x: ag.where(ag.causal_mask(3), x, 0.0),
    rand(3, 3, seed=51),
    ref=lambda x: np.tril(x),
    name="causal_mask",
)
for _args in [(5,), (2, 7), (1, 8, 3), (5, 1, -2)]:
    _add(
        "arange",
        lambda a=_args: ag.arange(*a),
        ref=lambda a=_args: np.arange(*a),
        torch_fn=lambda a=_args: T.arange(*a),
        name="_".join(map(str, _args)),
    )
_add(
    "arange",
    lambda x: ag.arange(x.shape[0]),
    np.zeros((4, 2), np.int64),
    ref=lambda x: np.arange(4),
    name="dim",
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


def _weigh(pieces: Sequence[Any]) -> list[Any]:
    """Each piece scaled differently, so that a wrong gradient routing shows."""
    return [p * float(i + 1) for i, p in enumerate(pieces)]


def _split_ref(x: np.ndarray, size: int | list[int], axis: int) -> np.ndarray:
    cuts = np.cumsum(size)[:-1] if isinstance(size, list) else np.arange(size, x.shape[axis], size)
    return np.concatenate(_weigh(np.split(x, cuts, axis)), axis)


for _size, _axis in [(2, 1), (3, 1), ([1, 3], 1), (1, -1), ([4], 2), (4, 0)]:
    _add(
        "split",
        lambda x, s=_size, a=_axis: ag.concat(_weigh(x.split(s, a)), a),
        rand(2, 4, 4, seed=61),
        ref=lambda x, s=_size, a=_axis: _split_ref(x, s, a),
        torch_fn=lambda x, s=_size, a=_axis: T.cat(_weigh(x.split(s, a)), a),
        name=f"{_size}_{_axis_id(_axis)}".replace(" ", ""),
    )
for _chunks in (1, 2, 3, 4):
    _add(
        "chunk",
        lambda x, c=_chunks: ag.concat(_weigh(ag.chunk(x, c, 0)), 0),
        rand(5, 2, seed=62),
        ref=lambda x, c=_chunks: np.concatenate(_weigh(np.array_split(x, -(-5 // -(-5 // c)), 0)), 0),
        torch_fn=lambda x, c=_chunks: T.cat(_weigh(T.chunk(x, c, 0)), 0),
        name=str(_chunks),
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

# ============================================================================= linear algebra
MATMUL_SHAPES = [
    ((2, 3), (3, 4)),
    ((2, 2, 3), (2, 3, 4)),
    ((2, 1, 2, 3), (3, 3, 2)),  # batch dims broadcast: (2, 1) with (3,)
    ((2, 3), (2, 3, 2)),  # a 2-d operand broadcasts over the other's batch
    ((3,), (3, 2)),  # vector @ matrix
    ((2, 3), (3,)),  # matrix @ vector
    ((3,), (3,)),  # dot product
    ((2,), (2, 2, 3)),  # vector @ batched matrix
    ((2, 1, 3), (3,)),  # batched matrix @ vector
]
for _sa, _sb in MATMUL_SHAPES:
    _add(
        "matmul",
        ag.matmul,
        rand(*_sa, seed=30),
        rand(*_sb, seed=31),
        ref=np.matmul,
        torch_fn=T.matmul,
        name=_shape_id(_sa, _sb),
    )
_add(
    "matmul",
    lambda a, b: a @ b.T,
    rand(2, 3, seed=32),
    rand(4, 3, seed=33),
    ref=lambda a, b: a @ b.T,
    torch_fn=lambda a, b: a @ b.T,
    name="operator",
)

# ============================================================================= convolution and pooling
CONV_CASES = [
    # (name, x shape, w shape, kwargs)
    ("plain", (2, 2, 5, 5), (3, 2, 3, 3), {}),
    ("stride_pad", (2, 2, 5, 6), (3, 2, 3, 3), dict(stride=2, padding=1)),
    ("rect_kernel_pairs", (1, 2, 6, 5), (2, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    ("dilation", (2, 1, 6, 6), (2, 1, 2, 2), dict(dilation=2, padding=1)),
    ("groups", (2, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("depthwise", (2, 3, 5, 5), (3, 1, 3, 3), dict(groups=3, stride=2)),
    ("depthwise_multiplier", (1, 2, 5, 4), (4, 1, 2, 3), dict(groups=2)),
    ("same_even_kernel", (1, 2, 5, 5), (2, 2, 2, 4), dict(padding="same")),
    ("same_dilated", (1, 2, 5, 5), (2, 2, 3, 3), dict(padding="same", dilation=2)),
    ("valid", (1, 1, 4, 4), (1, 1, 4, 4), dict(padding="valid")),
    ("one_by_one", (2, 3, 3, 3), (4, 3, 1, 1), dict(stride=2)),
]
for _name, _xs, _ws, _kw in CONV_CASES:
    _add(
        "conv2d",
        lambda a, b, kw=_kw: ag.conv2d(a, b, **kw),
        rand(*_xs, seed=1),
        rand(*_ws, seed=2),
        ref=lambda a, b, kw=_kw: R.conv2d(a, b, **kw),
        torch_fn=lambda a, b, kw=_kw: F.conv2d(a, b, **kw),
        name=_name,
        covers=("conv2d_backward_weight", "conv_transpose2d"),
    )
_add(
    "conv2d",
    lambda a, w, b: ag.conv2d(a, w, b, padding=1),
    rand(2, 2, 4, 4, seed=1),
    rand(3, 2, 3, 3, seed=2),
    rand(3, seed=3),
    ref=lambda a, w, b: R.conv2d(a, w, padding=1) + b[None, :, None, None],
    torch_fn=lambda a, w, b: F.conv2d(a, w, b, padding=1),
    name="bias",
)
CONV_T_CASES = [
    ("plain", (2, 3, 3, 4), (3, 2, 3, 3), {}),
    ("stride_pad_outpad", (1, 2, 3, 3), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("pairs", (1, 2, 3, 2), (2, 2, 2, 3), dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 2))),
    ("groups_dilation", (2, 4, 3, 3), (4, 1, 2, 2), dict(groups=2, dilation=2, stride=2)),
]
for _name, _xs, _ws, _kw in CONV_T_CASES:
    _add(
        "conv_transpose2d",
        lambda a, b, kw=_kw: ag.conv_transpose2d(a, b, **kw),
        rand(*_xs, seed=3),
        rand(*_ws, seed=4),
        ref=lambda a, b, kw=_kw: R.conv_transpose2d(a, b, **kw),
        torch_fn=lambda a, b, kw=_kw: F.conv_transpose2d(a, b, **kw),
        name=_name,
    )
_add(
    "conv2d_backward_weight",
    lambda a, b: apply(
        "conv2d_backward_weight",
        a,
        b,
        kernel_size=(2, 2),
        stride=(2, 1),
        padding=(1, 1, 0, 0),
        dilation=(1, 2),
        groups=2,
    ),
    rand(2, 4, 5, 6, seed=8),
    rand(2, 2, 3, 4, seed=9),
    torch_fn=lambda a, b: T.nn.grad.conv2d_weight(
        a, (2, 2, 2, 2), b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2
    ),
)
MAX_POOL_CASES = [
    ("k2", (2, 2, 6, 6), dict(kernel_size=2)),
    ("k3_s2_p1", (1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ("rect_ceil", (1, 2, 7, 8), dict(kernel_size=(3, 2), stride=(2, 3), ceil_mode=True)),
    ("ceil_pad", (1, 1, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("dilation", (1, 2, 7, 7), dict(kernel_size=2, stride=1, dilation=2)),
    ("overlap", (2, 1, 5, 5), dict(kernel_size=3, stride=1)),
]
for _name, _shape, _kw in MAX_POOL_CASES:
    _add(
        "max_pool2d",
        lambda a, kw=_kw: ag.max_pool2d(a, **kw),
        rand(*_shape, seed=13),
        ref=lambda a, kw=_kw: R.max_pool2d(a, **kw),
        torch_fn=lambda a, kw=_kw: F.max_pool2d(a, **kw),
        name=_name,
        covers=("max_pool2d_backward", "max_pool2d_gather"),
    )
_POOL_ATTRS = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=False)
_POOLED_X = rand(1, 2, 5, 5, seed=14)
# Linear in the second operand; the first (a constant here) only chooses the positions.
_add(
    "max_pool2d_backward",
    lambda g: apply("max_pool2d_backward", constant(_POOLED_X, g.dtype), g, **_POOL_ATTRS),
    rand(1, 2, 3, 3, seed=15),
)
_add(
    "max_pool2d_gather",
    lambda h: apply("max_pool2d_gather", constant(_POOLED_X, h.dtype), h, **_POOL_ATTRS),
    rand(1, 2, 5, 5, seed=16),
)
_add(
    "max_pool2d_gather",
    lambda x: apply("max_pool2d_gather", x, x, **_POOL_ATTRS),  # gather(x, x) is the pool itself
    _POOLED_X,
    ref=lambda x: R.max_pool2d(x, 3, 2, 1),
    name="self",
    order=0,
)
AVG_POOL_CASES = [
    ("k2", (2, 2, 6, 6), dict(kernel_size=2)),
    ("k3_s2_p1", (1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ("exclude_pad", (1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("ceil", (1, 2, 7, 8), dict(kernel_size=(3, 2), stride=(2, 3), ceil_mode=True)),
    ("ceil_pad_include", (1, 1, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (
        "ceil_pad_exclude",
        (1, 1, 6, 6),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ),
    ("overlap", (2, 1, 5, 5), dict(kernel_size=3, stride=1)),
]
for _name, _shape, _kw in AVG_POOL_CASES:
    _add(
        "avg_pool2d",
        lambda a, kw=_kw: ag.avg_pool2d(a, **kw),
        rand(*_shape, seed=17),
        ref=lambda a, kw=_kw: R.avg_pool2d(a, **kw),
        torch_fn=lambda a, kw=_kw: F.avg_pool2d(a, **kw),
        name=_name,
    )
ADAPTIVE_CASES = [
    # (name, x shape, output_size, output_size with None filled in)
    ("global", (2, 2, 5, 6), 1, 1),
    ("divisible", (1, 2, 6, 4), (3, 2), (3, 2)),
    ("non_divisible", (1, 2, 7, 5), (3, 4), (3, 4)),
    ("larger_than_input", (1, 2, 2, 3), (3, 5), (3, 5)),
    ("keep_width", (1, 1, 5, 3), (2, None), (2, 3)),
]
for _name, _shape, _size, _full in ADAPTIVE_CASES:
    for _op, _reduce, _seed in (("adaptive_avg_pool2d", np.mean, 18), ("adaptive_max_pool2d", np.max, 19)):
        _add(
            _op,
            lambda a, s=_size, o=_op: getattr(ag, o)(a, s),
            rand(*_shape, seed=_seed),
            ref=lambda a, s=_full, r=_reduce: R.adaptive_pool2d(a, s, r),
            torch_fn=lambda a, s=_size, o=_op: getattr(F, o)(a, s),
            name=_name,
        )

# ============================================================================= normalization
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

# ============================================================================= optimizer updates
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

# ============================================================================= random
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

# ============================================================================= activations and layers
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


# ============================================================================= running the table
def cases(ops: Iterable[str] | None = None) -> list[OpCase]:
    """The cases of ``ops`` (names in :data:`OP_CASES`), or of every op; an unknown name is an error.

    >>> [c.id for c in cases(["log"])]
    ['log']
    """
    names = list(OP_CASES) if ops is None else list(ops)
    unknown = [n for n in names if n not in OP_CASES]
    if unknown:
        raise KeyError(f"no cases for {', '.join(unknown)}; ops with cases: {', '.join(sorted(OP_CASES))}")
    return [c for n in names for c in OP_CASES[n]]


def op_case_params(ops: Iterable[str] | None = None, skip: Mapping[str, str] | None = None) -> list[Any]:
    """``pytest.param`` per case, with the case id, for ``@pytest.mark.parametrize("case", ...)``.

    ``skip`` maps op names or case ids to a reason; those cases are marked as skipped (a backend's
    known gaps, listed where the reader sees them).

    Example (a backend package's test module)::

        import pytest
        import asg.core.testing as agt


        @pytest.mark.parametrize("case", agt.op_case_params())
        def test_op(case):
            case.check(backend="wgpu")
    """
    import pytest

    skip = dict(skip or {})
    params = []
    for case in cases(ops):
        reason = skip.get(case.id, skip.get(case.op))
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@dataclass
class BackendReport:
    """What :func:`check_backend` ran: the ids of the cases that passed, and of those skipped
    because the backend's declared dtypes cannot run them (with the reason)."""

    backend: str
    passed: list[str]
    skipped: dict[str, str]


def check_backend(backend: str, ops: Iterable[str] | None = None) -> BackendReport:
    """Run every case (or those of ``ops``) on ``backend``.

    All cases run; one ``AssertionError`` then lists every failing case with its message. Cases
    that need a dtype the backend does not declare (float16, an int64 random key on WGSL) are
    skipped and reported. Without PyTorch, the comparisons with it are left out.

    >>> report = check_backend("numpy", ["relu", "sum_to"])
    >>> report.passed[:3], report.skipped
    (['relu', 'sum_to-2x3-3', 'sum_to-2x4-2x1'], {})
    """
    failures, passed, skipped = [], [], {}
    selected = cases(ops)
    for case in selected:
        try:
            case.run(backend)
        except UnsupportedCase as err:
            skipped[case.id] = str(err)
            continue
        except Exception as err:
            first = str(err).strip().splitlines()[:6]
            failures.append(f"{case.id}: {type(err).__name__}: " + "\n    ".join(first))
            continue
        passed.append(case.id)
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(selected)} op cases fail on backend {backend!r}"
            f" ({len(skipped)} skipped for dtypes it does not run):\n" + "\n".join(failures)
        )
    return BackendReport(backend, passed, skipped)


def registered_ops_without_cases(family_prefix: str = "asg.core.") -> list[str]:
    """Registered ops whose family (defining module) starts with ``family_prefix`` that have no case
    and are not internal ops covered through a forward op.

    >>> registered_ops_without_cases()
    []
    """
    return sorted(
        name
        for name, op in OPS.items()
        if op.family.startswith(family_prefix) and name not in OP_CASES and name not in INTERNAL_OPS
    )


__all__ = [
    "INTERNAL_OPS",
    "OP_CASES",
    "BackendReport",
    "OpCase",
    "add_case",
    "binary_data",
    "cases",
    "check_backend",
    "op_case_params",
    "registered_ops_without_cases",
]
