"""One parity helper for every op: forward against a reference, gradients against float64
finite differences (to second order), and against PyTorch when it is installed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import asg.core as ag

try:  # PyTorch is an optional reference.
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None


class _NoTorch:
    """Stands in for PyTorch when it is not installed: comparisons that need it skip their test."""

    def __getattr__(self, name: str) -> _NoTorch:
        return self

    def __call__(self, *args: object, **kwargs: object) -> None:
        import pytest

        pytest.skip("PyTorch is not installed")


torch_or_skip = torch or _NoTorch()


def run(fn: Callable[..., ag.Tensor], *arrays: np.ndarray, **compile_kwargs: Any) -> np.ndarray:
    """Build ``fn`` over inputs shaped like ``arrays``, compile, run and return the result."""
    xs = [ag.input(f"x{i}", a.shape, np.asarray(a).dtype) for i, a in enumerate(arrays)]
    return ag.compile(fn(*xs), inputs=xs, **compile_kwargs)(*arrays)


def run_grads(
    fn: Callable[..., ag.Tensor], arrays: Sequence[np.ndarray], cotangent: np.ndarray | None = None
):
    """Value of ``fn`` and gradients of ``sum(fn * cotangent)`` with respect to every float input."""
    xs = [ag.input(f"x{i}", a.shape, np.asarray(a).dtype) for i, a in enumerate(arrays)]
    out = fn(*xs)
    scalar = (out * ag.constant(cotangent.astype(out.dtype))).sum() if cotangent is not None else out.sum()
    floats = [x for x in xs if x.dtype.startswith("float")]
    results = ag.compile([out, *ag.grad(scalar, floats)], inputs=xs)(*arrays)
    return results[0], results[1:]


def check_op(
    fn: Callable[..., ag.Tensor],
    *arrays: np.ndarray,
    ref: Callable[..., np.ndarray] | None = None,
    torch_fn: Callable[..., Any] | None = None,
    order: int = 2,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    grad_rtol: float = 1e-4,
    grad_atol: float = 1e-5,
    torch_atol: float = 1e-5,
    eps: float = 1e-6,
) -> None:
    """Check an op end to end.

    - forward in float64 against ``ref`` (numpy), and in float32 against ``torch_fn`` if torch is there;
    - gradients against float64 central differences (``order`` 0 skips, 1 or 2 orders);
    - float32 gradients of ``sum(out * c)`` against PyTorch autograd.
    """
    arrays = [np.asarray(a) for a in arrays]
    f64 = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    if ref is not None:
        got = run(fn, *f64)
        want = ref(*f64)
        assert got.shape == np.shape(want), f"shape {got.shape} != reference {np.shape(want)}"
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    if order:
        float_idx = [i for i, a in enumerate(f64) if a.dtype.kind == "f"]

        def only_floats(*fs: ag.Tensor) -> ag.Tensor:
            full = list(fs)
            args = []
            it = iter(full)
            for i, a in enumerate(f64):
                args.append(next(it) if i in float_idx else ag.constant(a))
            return fn(*args)

        ag.check_grads(
            only_floats, [f64[i] for i in float_idx], order=order, eps=eps, rtol=grad_rtol, atol=grad_atol
        )
    if torch_fn is not None and torch is not None:
        f32 = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays]
        tensors = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in f32]
        t_out = torch_fn(*tensors)
        rng = np.random.default_rng(1)
        cot = rng.standard_normal(tuple(t_out.shape)).astype(np.float32)
        if t_out.dtype.is_floating_point and any(t.requires_grad for t in tensors):
            (t_out * torch.tensor(cot)).sum().backward()
        value, grads = run_grads(fn, f32, cot)
        np.testing.assert_allclose(value, t_out.detach().numpy(), rtol=1e-4, atol=torch_atol)
        floats = [t for t in tensors if t.requires_grad]
        for g, t in zip(grads, floats, strict=True):
            want = np.zeros(t.shape, np.float32) if t.grad is None else t.grad.numpy()
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=torch_atol * 10)


def rand(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    """Reproducible float64 test data."""
    return np.random.default_rng(seed).uniform(low, high, size=shape)
