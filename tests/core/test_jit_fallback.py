"""numpy-jit without numba (``ASG_JIT=0``): the numpy kernels run, nothing is fused, and the same
parity cases as ``test_jit.py`` pass."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import asg.core as ag
import asg.core.testing as agt
from asg.core.backends import jit

from .test_jit import CASES, SMALL, _fused_units, _optimizer_step


@pytest.fixture(autouse=True)
def _without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASG_JIT", "0")
    monkeypatch.setattr(jit.NumpyJitBackend, "options", dict(SMALL))


def test_asg_jit_0_disables_numba_and_says_so(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(jit, "_said", set())
    with caplog.at_level(logging.INFO, logger="asg.core.jit"):
        assert not jit.enabled()
    assert "ASG_JIT=0: backend 'numpy-jit' runs the numpy kernels" in caplog.text


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_runs_unfused_and_matches_numpy(name: str) -> None:
    fn, arrays, _ = CASES[name]
    assert _fused_units(fn, arrays) == []
    agt.check_op(fn, *arrays, order=0, backend="numpy-jit", backend_rtol=0, backend_atol=0)


@pytest.mark.parametrize("kind", ["adam", "sgd_nesterov"])
def test_optimizer_runs_the_numpy_kernel(kind: str) -> None:
    for a, b in zip(_optimizer_step("numpy-jit", kind), _optimizer_step("numpy", kind), strict=True):
        np.testing.assert_array_equal(a, b)


def test_plan_is_the_numpy_plan() -> None:
    x = ag.input("x", (4, 6))
    y = ag.softmax(ag.gelu(x * 2.0), axis=-1)
    got = ag.compile(y, backend="numpy-jit").plan_for(np.ones((4, 6), np.float32))
    want = ag.compile(y).plan_for(np.ones((4, 6), np.float32))
    assert [s.node.op for s in got.schedule.steps] == [s.node.op for s in want.schedule.steps]
