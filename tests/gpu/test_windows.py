"""Tensors past the adapter's storage binding limit (128 MiB on lavapipe): elementwise ops and parameter
updates run over byte windows; other ops are a plan-time error naming the op, the tensor, its bytes and the limit."""

import numpy as np
import pytest

import asg.core as ag
from asg.core.errors import ExecutionError
from asg.gpu.device import get_device

pytestmark = pytest.mark.slow  # about 1 GB of host memory for lavapipe's buffers

LIMIT = get_device().max_binding
N = LIMIT // 8 + 1000  # a (2, N) float32 tensor is a little more than the limit


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, N), dtype=np.float32), rng.standard_normal((1, N), dtype=np.float32)


def test_elementwise_ops_past_the_binding_limit_run_over_windows(big):
    a, b = big
    x, y = ag.input("x", a.shape), ag.input("y", b.shape)
    out = ag.where(x > 0.0, x * 3.0, y)  # the (1, N) y is broadcast: read at the global coordinates
    f = ag.compile(out, inputs=[x, y], backend="wgpu")
    got = f(a, b)
    np.testing.assert_array_equal(got, np.where(a > 0, a * np.float32(3.0), b))
    plan = f.plan_for(a, b)
    assert plan.dispatch_count >= 6  # three ops (not fused: past the limit), each over two windows or more


def test_a_parameter_past_the_binding_limit_is_updated_over_windows(big):
    a, _ = big
    w = ag.parameter(a.copy(), name="w")
    table = ag.parameter(np.arange(12, dtype=np.float32).reshape(4, 3), name="table")
    ids, shift = ag.input("ids", (2,), "int64"), ag.parameter(np.zeros(2, np.int64), name="shift")
    # indices that depend on a parameter are checked on the GPU: the updates go through guarded copy kernels
    f = ag.compile(ag.embedding(ids + shift, table), inputs=[ids], updates={w: w * 0.5 + 1.0}, backend="wgpu")
    np.testing.assert_array_equal(f(np.array([1, 3])), [[3, 4, 5], [9, 10, 11]])
    np.testing.assert_array_equal(w.numpy(), a * np.float32(0.5) + np.float32(1.0))
    with pytest.raises(ExecutionError, match="out of range"):
        f(np.array([1, 7]))
    np.testing.assert_array_equal(w.numpy(), a * np.float32(0.5) + np.float32(1.0))  # not applied


def test_an_op_binding_a_tensor_past_the_limit_whole_is_an_error_naming_it(big):
    a, _ = big
    x = ag.input("big", a.shape)
    f = ag.compile(ag.exp(x).sum(axis=1), backend="wgpu")
    with pytest.raises(
        ExecutionError, match=r"sum.* binds .*: it is \d+ bytes, more than the adapter's largest"
    ):
        f.plan_for(a)
