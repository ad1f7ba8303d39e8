"""The per-op cases every backend runs: ``OP_CASES[op name] -> [OpCase, ...]``.

This module holds the machinery (:class:`OpCase`, :func:`add_case`, :func:`op_case_params`,
:func:`check_backend`); the cases themselves are in :mod:`asg.core.testing.op_cases`, one module per
op family. Each registered op has at least one case (or is an internal backward op listed in
:data:`INTERNAL_OPS` with the forward op whose gradient runs it). Composite functions that users call
(``mean``, ``linear``, ``batch_norm``, ``dropout`` ...) have cases too, under their own names. Data is
small and fixed: the float64 checks run finite differences to second order on every entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..autograd import grad
from ..graph import Graph, Node
from ..registry import OPS
from ..tensor import Tensor, constant
from .check import UnsupportedCase, _inputs, check_op, no_skips, rand

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
        """The case's pytest id: ``op-name``, or the op alone for an unnamed case."""
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
        with no_skips():
            check_op(self.fn, *self.arrays(), **self._kwargs(backend))

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


def shape_id(*shapes: tuple[int, ...]) -> str:
    """Shapes as part of a case id: ``2x3-3``, and ``scalar`` for ``()``.

    >>> shape_id((2, 3), (3,), ())
    '2x3-3-scalar'
    """
    return "-".join("x".join(map(str, s)) or "scalar" for s in shapes)


def axis_id(axis: Any) -> str:
    """``all``, ``axis1``, ``axis0_2``: an axis argument as part of a case id."""
    if axis is None:
        return "all"
    return "axis" + "_".join(str(a) for a in (axis if isinstance(axis, tuple) else (axis,)))


def reduced_dims(axis: Any, ndim: int = 3) -> tuple[int, ...]:
    """The axes an ``axis`` argument reduces, as PyTorch's ``dim`` wants them."""
    if axis is None:
        return tuple(range(ndim))
    return axis if isinstance(axis, tuple) else (axis,)


# Data shared by several families.
ANY = rand(2, 3, seed=2)
POSITIVE = rand(2, 3, seed=1, low=0.2, high=3.0)
AWAY_FROM_ZERO = np.where(np.abs(ANY) < 0.1, 0.5, ANY)  # kinks (abs, relu ...) are not differentiable at 0
X3 = rand(2, 3, 4, seed=20)


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
    "cases",
    "check_backend",
    "op_case_params",
    "registered_ops_without_cases",
]
