"""``check_op``: one op checked end to end, on the numpy backend or any other."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..autograd import grad
from ..backends import get_backend
from ..function import compile
from ..gradcheck import check_grads
from ..graph import LEAF_OPS, Graph
from ..passes.narrow import UnsupportedDTypeError
from ..tensor import Tensor, constant, input


class UnsupportedCase(Exception):
    """The backend's declared capabilities cannot run this check (a dtype it lacks, such as float16
    or an int64 random key on WGSL): the check is skipped, not failed."""


class _TorchMissing(Exception):
    """PyTorch is not installed; every other comparison passed."""


def _in_pytest() -> bool:
    return bool(os.environ.get("PYTEST_CURRENT_TEST"))


_NO_SKIPS: contextvars.ContextVar[bool] = contextvars.ContextVar("asg_testing_no_skips", default=False)


@contextlib.contextmanager
def _skips() -> Iterator[None]:
    """Inside pytest, a check PyTorch or the backend's dtypes leave unfinished is reported as skipped.

    Outside pytest (or under :func:`no_skips`), a missing PyTorch is ignored (the other checks
    passed) and :class:`UnsupportedCase` propagates.
    """
    try:
        yield
    except _TorchMissing as skipped:
        if _in_pytest() and not _NO_SKIPS.get():
            import pytest

            pytest.skip(str(skipped))
    except UnsupportedCase as skipped:
        if _in_pytest() and not _NO_SKIPS.get():
            import pytest

            pytest.skip(str(skipped))
        raise


@contextlib.contextmanager
def no_skips() -> Iterator[None]:
    """Checks inside never call ``pytest.skip``: :class:`UnsupportedCase` propagates and a missing
    PyTorch is ignored (used by :func:`~asg.core.testing.check_backend` to run every case)."""
    token = _NO_SKIPS.set(True)
    try:
        yield
    finally:
        _NO_SKIPS.reset(token)


def rand(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    """Reproducible float64 test data, uniform in ``[low, high)``.

    >>> rand(2, 3, seed=1).shape, rand(seed=1).shape
    ((2, 3), ())
    """
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def run(fn: Callable[..., Tensor], *arrays: np.ndarray, **compile_kwargs: Any) -> Any:
    """Build ``fn`` over inputs shaped like ``arrays``, compile, run and return the result.

    >>> import numpy as np
    >>> run(lambda x: x * 2.0, np.ones(3))
    array([2., 2., 2.])
    """
    xs = _inputs(arrays)
    return compile(fn(*xs), inputs=xs, **compile_kwargs)(*arrays)


def run_grads(
    fn: Callable[..., Tensor],
    arrays: Sequence[np.ndarray],
    cotangent: np.ndarray | None = None,
    backend: str = "numpy",
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Value of ``fn`` and gradients of ``sum(fn * cotangent)`` (or ``sum(fn)``) for every float input.

    >>> import numpy as np
    >>> value, (gx,) = run_grads(lambda x: x * x, [np.array([1.0, 3.0])])
    >>> gx
    array([2., 6.])
    """
    xs = _inputs(arrays)
    outputs = _with_grads(fn, xs, cotangent)
    results = compile(outputs, inputs=xs, backend=backend)(*arrays)
    return results[0], results[1:]


def torch_available() -> bool:
    """True when PyTorch can be imported (it is an optional reference)."""
    return _torch() is not None


@functools.cache
def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


@functools.cache
def backend_supports(backend: str, dtype: str) -> bool:
    """Whether ``backend`` computes in ``dtype``.

    Reads the backend's declared dtypes (``capabilities.dtypes`` or ``dtypes``) where it has them;
    otherwise runs one tiny graph in that dtype and reports whether it ran.

    >>> backend_supports("numpy", "float64")
    True
    """
    instance = get_backend(backend)
    for holder in (getattr(instance, "capabilities", None), instance):
        declared = getattr(holder, "dtypes", None)
        if declared is not None and not callable(declared):
            return dtype in {str(d) for d in declared}
    try:
        x = input("x", (2,), dtype)
        got = compile(x + x, inputs=[x], backend=backend)(np.ones(2, dtype))
    except Exception:
        return False
    return np.asarray(got).dtype == np.dtype(dtype)


def check_op(
    fn: Callable[..., Tensor],
    *arrays: np.ndarray,
    ref: Callable[..., Any] | None = None,
    torch_fn: Callable[..., Any] | None = None,
    order: int = 2,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    grad_rtol: float = 1e-4,
    grad_atol: float = 1e-5,
    torch_rtol: float = 1e-4,
    torch_atol: float = 1e-5,
    eps: float = 1e-6,
    backend: str = "numpy",
    backend_rtol: float = 1e-4,
    backend_atol: float = 1e-5,
    seed: int = 1,
) -> None:
    """Check an op end to end, raising ``AssertionError`` on the first mismatch.

    On ``backend`` (numpy by default), where it computes in float64:

    - the forward in float64 against ``ref`` (numpy), shape and values;
    - gradients against float64 central differences: ``order`` 0 skips, 1 checks the gradient, 2 also
      the gradient of the gradient (skipped when the output or no input is floating point).

    On numpy, when ``torch_fn`` is given: the float32 forward and the gradients of ``sum(out * c)``
    (``c`` a fixed random cotangent) against PyTorch autograd. Without PyTorch that part is left out,
    and inside a pytest run the test is reported as skipped once the other checks passed.

    On any other backend: the float32 forward and those gradients are built as one graph and run on
    ``backend`` and on numpy; shapes, dtypes and values must agree (``backend_rtol``/``backend_atol``;
    int64 outputs may come back int32 from a backend whose capabilities narrow index dtypes).
    A backend without float64 skips the float64 reference and finite-difference checks (the numpy
    run of the same case covers them). A graph the backend refuses for its declared dtypes (float16, an
    int64 random key on WGSL) raises :class:`UnsupportedCase`, a skip inside pytest.

    Integer and bool arrays are passed unchanged; float arrays are cast to float64 or float32.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> check_op(ag.tanh, np.linspace(-1, 1, 5), ref=np.tanh)
        >>> check_op(lambda a, b: a * b, np.ones((2, 3)), np.arange(3.0), ref=np.multiply, order=1)
    """
    with _skips():
        arrays64 = [_as_float(np.asarray(a), np.float64) for a in arrays]
        arrays32 = [_as_float(np.asarray(a), np.float32) for a in arrays]
        float_idx = [i for i, a in enumerate(arrays64) if a.dtype.kind == "f"]
        with_float64 = backend == "numpy" or backend_supports(backend, "float64")
        out_is_float = _output_dtype(fn, arrays64 if with_float64 else arrays32).startswith("float")
        if ref is not None and with_float64:
            got = run(fn, *arrays64, backend=backend)
            _assert_same(got, np.asarray(ref(*arrays64)), rtol, atol, "forward against the numpy reference")
        if order and with_float64 and float_idx and out_is_float:
            check_grads(
                _floats_only(fn, arrays64, float_idx),
                [arrays64[i] for i in float_idx],
                order=order,
                eps=eps,
                rtol=grad_rtol,
                atol=grad_atol,
                backend=backend,
            )
        if backend != "numpy":
            _compare_backends(fn, arrays32, backend, out_is_float, backend_rtol, backend_atol, seed)
        elif torch_fn is not None:
            _compare_torch(fn, torch_fn, arrays32, out_is_float, torch_rtol, torch_atol, seed)


def _compare_torch(
    fn: Callable[..., Tensor],
    torch_fn: Callable[..., Any],
    arrays32: list[np.ndarray],
    out_is_float: bool,
    rtol: float,
    atol: float,
    seed: int,
) -> None:
    torch = _torch()
    if torch is None:
        raise _TorchMissing(
            "PyTorch is not installed: the comparison with it was skipped (the others passed)"
        )
    tensors = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays32]
    t_out = torch_fn(*tensors)
    want = t_out.detach().numpy()
    if not out_is_float:
        _assert_same(run(fn, *arrays32), want, 0, 0, "forward against PyTorch")
        return
    cot = np.random.default_rng(seed).standard_normal(tuple(t_out.shape)).astype(np.float32)
    if t_out.requires_grad:
        (t_out * torch.tensor(cot)).sum().backward()
    value, grads = run_grads(fn, arrays32, cot)
    _assert_same(value, want, rtol, atol, "forward against PyTorch")
    floats = [t for t in tensors if t.requires_grad]
    for i, (g, t) in enumerate(zip(grads, floats, strict=True)):
        expected = np.zeros(t.shape, np.float32) if t.grad is None else t.grad.numpy()
        _assert_same(g, expected, rtol, atol * 10, f"gradient of float input {i} against PyTorch")


def _compare_backends(
    fn: Callable[..., Tensor],
    arrays32: list[np.ndarray],
    backend: str,
    with_grads: bool,
    rtol: float,
    atol: float,
    seed: int,
) -> None:
    xs = _inputs(arrays32)
    cot = None
    if with_grads:
        shape = fn(*xs).shape
        cot = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    outputs = _with_grads(fn, xs, cot) if with_grads else [fn(*xs)]
    want = compile(outputs, inputs=xs, backend="numpy")(*arrays32)
    try:
        got = compile(outputs, inputs=xs, backend=backend)(*arrays32)
    except UnsupportedDTypeError as err:  # the backend's declared dtypes cannot hold this graph
        reason = str(err).splitlines()[0]
        raise UnsupportedCase(f"backend {backend!r} cannot run this case's dtypes: {reason}") from err
    names = ["forward"] + [f"gradient of float input {i}" for i in range(len(outputs) - 1)]
    narrows = bool(getattr(getattr(get_backend(backend), "capabilities", None), "narrow_index", False))
    for name, g, w in zip(names, got, want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        # A backend that narrows index dtypes returns int64 outputs as int32 (asg.core.passes.narrow).
        narrowed = narrows and w.dtype == np.int64 and g.dtype == np.int32
        assert g.dtype == w.dtype or narrowed, (
            f"{name} on {backend!r}: dtype {g.dtype}, numpy gives {w.dtype}"
        )
        try:
            _assert_same(
                g, w.astype(g.dtype) if narrowed else w, rtol, atol, f"{name} on {backend!r} against numpy"
            )
        except AssertionError as err:
            raise AssertionError(
                f"{err}{_first_divergence(outputs, xs, arrays32, backend, rtol, atol)}"
            ) from None


def _first_divergence(
    outputs: list[Tensor], xs: list[Tensor], arrays: list[np.ndarray], backend: str, rtol: float, atol: float
) -> str:
    """The first node, in graph order, whose value on ``backend`` differs from numpy's (a line for an
    error message), found by capturing every value on both; empty when it cannot be told."""
    graph = Graph([t.node for t in outputs])
    compute = [n for n in graph.nodes if n.op not in LEAF_OPS]
    for i, n in enumerate(compute):  # names that survive the backend's rewrites (narrowing)
        if n.name is None:
            n.name = f"check_op_{i}"
    names = [n.name for n in compute]
    try:
        want = compile(outputs, inputs=xs, backend="numpy", passes=[]).capture(names, *arrays)
        got = compile(outputs, inputs=xs, backend=backend, passes=[]).capture(names, *arrays)
    except Exception:
        return ""
    for n in compute:
        w, g = np.asarray(want[n.name]), np.asarray(got[n.name])
        same = w.shape == g.shape and np.allclose(g, w.astype(g.dtype), rtol=rtol, atol=atol, equal_nan=True)
        if not same:
            return f"\n  the first value that differs: {graph.format_node(n)}"
    return ""


def _inputs(arrays: Sequence[np.ndarray]) -> list[Tensor]:
    return [input(f"x{i}", np.shape(a), np.asarray(a).dtype) for i, a in enumerate(arrays)]


def _with_grads(fn: Callable[..., Tensor], xs: list[Tensor], cotangent: np.ndarray | None) -> list[Tensor]:
    """``[fn(*xs), *grad(sum(fn * cotangent), float xs)]``: one graph for the value and its gradients."""
    out = fn(*xs)
    if cotangent is not None:
        scalar = (out * constant(np.asarray(cotangent).astype(out.dtype))).sum()
    else:
        scalar = out.sum()
    floats = [x for x in xs if x.dtype.startswith("float")]
    return [out, *grad(scalar, floats)]


def _floats_only(fn: Callable[..., Tensor], arrays: list[np.ndarray], float_idx: list[int]) -> Callable:
    """``fn`` as a function of its float inputs only; the others become constants."""

    def wrapped(*floats: Tensor) -> Tensor:
        given = iter(floats)
        return fn(*[next(given) if i in float_idx else constant(a) for i, a in enumerate(arrays)])

    return wrapped


def _output_dtype(fn: Callable[..., Tensor], arrays: list[np.ndarray]) -> str:
    return fn(*_inputs(arrays)).dtype


def _as_float(a: np.ndarray, dtype: type) -> np.ndarray:
    return a.astype(dtype) if a.dtype.kind == "f" else a


def _assert_same(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, what: str) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    exact = got.dtype.kind in "biu" or want.dtype.kind in "biu"
    if exact:
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != expected {want.dtype}"
    try:
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    except AssertionError as err:
        raise AssertionError(f"{what}: {str(err).strip()}") from None


def graph_ops(*tensors: Tensor) -> set[str]:
    """Names of the ops in the graph computing ``tensors`` (leaves included).

    >>> import asg.core as ag
    >>> sorted(graph_ops(ag.exp(ag.input("x", (2,))) + 1.0))
    ['add', 'constant', 'exp', 'input']
    """
    return {n.op for n in Graph([t.node for t in tensors]).nodes}
