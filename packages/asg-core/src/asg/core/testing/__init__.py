"""asg.core.testing — the parity harness every backend runs (as ``numpy.testing`` is for numpy).

- :func:`check_op`: one op end to end — forward against a numpy reference in float64, gradients
  against float64 finite differences to second order, forward and gradients against PyTorch when it
  is installed; with ``backend=``, the same graph run on that backend and on numpy, compared.
- :data:`OP_CASES`: per-op cases (op name -> list of :class:`OpCase`) covering every registered op,
  with broadcasting for every binary op; :func:`op_case_params` parametrises a pytest test over them
  and :func:`check_backend` runs them all.
- :func:`add_case`: a package that registers its own ops adds their cases, so every backend runs them.
- :func:`scratch_ops`: throwaway ops for tests, removed from the registry afterwards.

Importing it needs neither pytest nor PyTorch.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> import asg.core.testing as agt
    >>> agt.check_op(ag.sigmoid, agt.rand(2, 3), ref=lambda x: 1 / (1 + np.exp(-x)))
    >>> agt.check_backend("numpy", ["sigmoid", "matmul"]).passed[:2]
    ['sigmoid', 'matmul-2x3-3x4']
"""

from __future__ import annotations

from typing import Any

from . import op_cases, references  # op_cases adds every family's cases to OP_CASES
from .cases import (
    INTERNAL_OPS,
    OP_CASES,
    BackendReport,
    OpCase,
    add_case,
    cases,
    check_backend,
    op_case_params,
    registered_ops_without_cases,
)
from .check import (
    UnsupportedCase,
    backend_supports,
    check_op,
    graph_ops,
    rand,
    run,
    run_grads,
    torch_available,
)
from .op_cases.elementwise import binary_data
from .scratch import scratch_ops

__all__ = [
    "INTERNAL_OPS",
    "OP_CASES",
    "BackendReport",
    "OpCase",
    "UnsupportedCase",
    "add_case",
    "backend_supports",
    "binary_data",
    "cases",
    "check_backend",
    "check_op",
    "graph_ops",
    "no_skips",
    "op_case_params",
    "op_cases",
    "rand",
    "references",
    "registered_ops_without_cases",
    "run",
    "run_grads",
    "scratch_ops",
    "torch_available",
    "torch_or_skip",
]


class _NoTorch:
    """Stands in for PyTorch when it is not installed: a test that calls it is skipped."""

    def __getattr__(self, name: str) -> _NoTorch:
        return self

    def __call__(self, *args: object, **kwargs: object) -> None:
        import pytest

        pytest.skip("PyTorch is not installed")


def __getattr__(name: str) -> Any:
    # ``torch_or_skip``: the torch module, or a stand-in that skips the calling test. Imported on first
    # use only, so that ``import asg.core.testing`` stays fast and works without PyTorch.
    if name == "torch_or_skip":
        from .check import _torch

        return _torch() or _NoTorch()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
