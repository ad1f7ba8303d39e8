"""Fixtures shared by more than one tests folder (each folder's own conftest holds the rest)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import asg.core as ag


def _counter_step(backend: str, start: int = 5) -> tuple[ag.Function, ag.Tensor, ag.Tensor]:
    w = ag.parameter(np.array([1.0, -2.0, 0.5], "float32"), name="w")
    n = ag.state(np.array(start, "int64"), name="n")
    x = ag.input("x", ("B", 3))
    loss = ((x * w).sum(axis=1) ** 2).mean() / (n + 1).astype("float32")
    (gw,) = ag.grad(loss, [w])
    f = ag.compile([loss, n * 2], inputs=[x], updates={w: w - 0.1 * gw, n: n + 1}, backend=backend)
    return f, w, n


@pytest.fixture
def counter_step() -> Callable[..., tuple[ag.Function, ag.Tensor, ag.Tensor]]:
    """``counter_step(backend, start=5) -> (f, w, n)``: a float32 parameter ``w`` trained by SGD and
    an int64 step counter ``n`` (``n + 1`` each call) that the loss reads; ``f(x)`` gives the loss
    and ``2 n``. For backends without int64 (tests/core/test_narrow.py, tests/gpu/test_int64_state.py)."""
    return _counter_step
