"""Checking gradients against float64 central differences."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .autograd import grad
from .function import compile
from .ops.reduction import sum as _sum
from .tensor import Tensor, input


def numerical_grad(
    f: Callable[..., float], arrays: Sequence[np.ndarray], eps: float = 1e-6
) -> list[np.ndarray]:
    """Central-difference gradient of a scalar function of float64 arrays."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = f(*arrays)
            flat[i] = old - eps
            down = f(*arrays)
            flat[i] = old
            gflat[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_grads(
    fn: Callable[..., Tensor],
    arrays: Sequence[np.ndarray],
    order: int = 1,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    seed: int = 0,
    backend: str = "numpy",
) -> None:
    """Check ``grad`` of ``fn`` against float64 central differences, to first or second order.

    ``fn`` takes one Tensor per array and returns a Tensor (of any shape: it is contracted with a
    fixed random cotangent). For ``order=2`` the gradient itself is differentiated again and
    checked the same way. Both run on ``backend``, which must support float64. Raises ``AssertionError`` naming the input and the worst entry.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> ag.check_grads(lambda x: ag.tanh(x) * x, [np.linspace(-1, 1, 5)], order=2)
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    xs = [input(f"x{i}", a.shape, "float64") for i, a in enumerate(arrays)]
    out = fn(*xs)
    cot = rng.standard_normal(out.shape) if out.ndim else np.float64(1.0)
    scalar = _sum(out * cot) if out.ndim else out
    _compare(scalar, xs, arrays, eps, rtol, atol, "first", backend)
    if order >= 2:
        grads = grad(scalar, xs)
        vs = [rng.standard_normal(a.shape) for a in arrays]
        second = None
        for g, v in zip(grads, vs, strict=True):
            term = _sum(g * v)
            second = term if second is None else second + term
        assert second is not None
        _compare(second, xs, arrays, eps, rtol, atol, "second", backend)


def _compare(
    scalar: Tensor,
    xs: list[Tensor],
    arrays: list[np.ndarray],
    eps: float,
    rtol: float,
    atol: float,
    what: str,
    backend: str,
) -> None:
    analytic = compile(grad(scalar, xs), inputs=xs, backend=backend)(*arrays)
    value = compile([scalar], inputs=xs, backend=backend)
    numeric = numerical_grad(lambda *a: float(value(*a)[0]), arrays, eps)
    for i, (a, n) in enumerate(zip(analytic, numeric, strict=True)):
        if not np.allclose(a, n, rtol=rtol, atol=atol):
            worst = np.unravel_index(np.argmax(np.abs(a - n)), a.shape) if a.ndim else ()
            raise AssertionError(
                f"{what}-order gradient of input {i} differs from finite differences at {worst}: "
                f"analytic {a[worst]!r}, numeric {n[worst]!r} (max abs diff {np.max(np.abs(a - n)):.3g})"
            )
