"""numpy-jit runs every registered op: ops without a numba kernel lower as on numpy, in the same plan,
including ops defined after the backend was first used."""

from __future__ import annotations

import numpy as np

import asg.core as ag
import asg.core.testing as agt
from asg import nn  # noqa: F401  (asg-nn registers ops of its own: they must be covered too)
from asg.core.backends import get_backend, jit
from asg.core.testing import scratch_ops


def test_every_registered_op_has_a_numpy_jit_lowering():
    get_backend("numpy-jit").prepare_lowerings()
    missing = [
        name
        for name, op in ag.OPS.items()
        if ("numpy" in op.kernels or "numpy" in op.lowerings) and jit.BACKEND not in op.lowerings
    ]
    assert missing == []


def test_ops_without_a_numba_kernel_run_their_numpy_kernel_and_match_numpy():
    # One parity case per op that numpy-jit lowers as numpy (the fused and row kernels have test_jit.py).
    fallback = sorted(name for name, op in ag.OPS.items() if op.lowerings.get(jit.BACKEND) is jit._as_numpy)
    assert {"matmul", "avg_pool2d", "adaptive_max_pool2d", "take_along_axis", "index_select"} <= set(fallback)
    # an internal op (a backward built only by gradients) runs through its forward op's case
    ops = {name if name in agt.OP_CASES else agt.INTERNAL_OPS.get(name) for name in fallback}
    uncovered = sorted(n for n in fallback if n not in agt.OP_CASES and n not in agt.INTERNAL_OPS)
    assert [n for n in uncovered if ag.get_op(n).family.startswith("asg.core.")] == []
    first = {}
    for case in agt.cases(sorted(ops - {None})):
        first.setdefault(case.op, case)
    for case in first.values():
        case.run("numpy-jit")


def test_an_op_defined_after_the_backend_was_created_runs_on_numpy_jit():
    get_backend("numpy-jit")  # the backend instance exists before the op
    with scratch_ops():
        ag.define_op("jit_scratch_triple", infer=lambda t: t, kernel=lambda a: 3 * a)
        x = ag.input("x", (4,))
        f = ag.compile(ag.apply("jit_scratch_triple", x) + 1.0, backend="numpy-jit")
        np.testing.assert_array_equal(f(np.arange(4, dtype=np.float32)), [1.0, 4.0, 7.0, 10.0])
