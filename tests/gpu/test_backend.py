"""The wgpu backend's engine: broadcasting, caching, one submit per step, errors, profiling."""

import numpy as np
import pytest

import asg.core as ag
import asg.core.testing as agt
from asg.core.backends import get_backend
from asg.core.errors import ExecutionError, MissingRuleError
from asg.gpu.device import NoAdapterError, get_device
from asg.gpu.device import _choose_adapter as choose_adapter
from asg.gpu.kernels import IMPLEMENTED

RNG = np.random.default_rng(0)


def _both(fn, *arrays):
    xs = [ag.input(f"x{i}", a.shape, a.dtype.name) for i, a in enumerate(arrays)]
    want = ag.compile(fn(*xs), inputs=xs)(*arrays)
    got = ag.compile(fn(*xs), inputs=xs, backend="wgpu")(*arrays)
    return got, want


def test_bias_broadcasts_over_the_batch():
    x = RNG.standard_normal((5, 7)).astype("float32")
    bias = RNG.standard_normal((1, 7)).astype("float32")
    got, want = _both(lambda a, b: a + b, x, bias)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[4], x[4] + bias[0])  # the last row reads the bias, not past it


def test_padding_and_causal_masks_broadcast_over_attention_scores():
    scores = RNG.standard_normal((2, 3, 4, 4)).astype("float32")
    pad = (RNG.random((2, 1, 1, 4)) > 0.3).astype("float32")
    causal = np.tril(np.ones((1, 1, 4, 4), "float32"))
    got, want = _both(lambda s, p, c: ag.where((p * c) > 0.5, s, -1e9), scores, pad, causal)
    np.testing.assert_array_equal(got, want)
    got, want = _both(lambda s, p: ag.softmax(s + (1.0 - p) * -1e9, axis=-1), scores, pad)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_nan_and_infinity_constants():
    x = np.array([1.0, -2.0, 0.0], "float32")
    got, want = _both(lambda a: ag.where(a > 0, a, float("-inf")) + ag.log(a * 0.0), x)
    np.testing.assert_array_equal(got, want)  # -inf stays -inf, log(0) = -inf, NaN where numpy has NaN
    got, want = _both(lambda a: ag.maximum(a, ag.log(a - 1.0)), x)  # NaN propagates like numpy's
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_pipelines_are_cached_and_a_step_is_one_submit():
    dev = get_device()
    x = ag.input("x", (4, 4))
    w = ag.parameter(np.eye(4, dtype="float32"), name="w")
    loss = ag.tanh(x @ w).sum()
    (g,) = ag.grad(loss, [w])
    step = ag.compile(loss, updates={w: w - 0.01 * g}, backend="wgpu")
    data = np.ones((4, 4), "float32")
    step(data)
    created = dev.pipelines_created

    real = dev.queue
    submits = []

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def submit(self, buffers):
            submits.append(len(buffers))
            return real.submit(buffers)

    dev.queue = Counting()
    try:
        for _ in range(3):
            step(data)
    finally:
        dev.queue = real
    assert submits == [1, 1, 1]  # dispatches, updates and the loss readback: one submission per step
    again = ag.compile(loss, updates={w: w - 0.01 * g}, backend="wgpu")
    again(data)
    assert dev.pipelines_created == created  # same WGSL text: the cached pipelines


def test_op_without_a_kernel_is_a_compile_time_error_naming_it():
    with agt.scratch_ops():
        ag.define_op("gpu_test_numpy_only", infer=lambda t: t, kernel=lambda a: a + 1)
        x = ag.input("x", (4,))
        y = ag.apply("gpu_test_numpy_only", x)
        with pytest.raises(
            MissingRuleError, match="backend 'wgpu' has no lowering or kernel for op 'gpu_test_numpy_only'"
        ):
            ag.compile(y, backend="wgpu")


def test_every_op_of_asg_core_has_a_wgpu_lowering():
    core_ops = {name for name, op in ag.OPS.items() if op.family.startswith("asg.core")}
    assert sorted(core_ops - IMPLEMENTED) == []


def test_unknown_adapter_names_the_adapters_found():
    with pytest.raises(NoAdapterError, match=r"no WebGPU adapter matches 'no-such-gpu'.*adapters found: \["):
        choose_adapter("no-such-gpu")


def test_float64_is_refused_at_compile_time():
    x = ag.input("x", (3,), "float64")
    with pytest.raises(TypeError, match="backend 'wgpu' does not support float64"):
        ag.compile(x * 2.0, backend="wgpu")


def test_traced_profile_reports_gpu_times_per_node():
    x = ag.input("x", (32, 32))
    f = ag.compile(ag.tanh(x @ x).sum(), backend="wgpu", options={"profile": "traced"})
    p = f.profile(np.ones((32, 32), "float32"))
    assert [t.op for t in p.nodes] == ["matmul", "tanh", "sum"]
    assert all(t.seconds >= 0 for t in p.nodes)
    assert round(sum(t.share for t in p.nodes), 6) == 1.0


def test_values_move_between_backends():
    w = ag.parameter(np.arange(3, dtype="float32"), name="w")
    f = ag.compile(w * 2.0, updates={w: w + 1.0}, backend="wgpu")
    np.testing.assert_array_equal(f(), [0.0, 2.0, 4.0])
    g = f.to("numpy")
    np.testing.assert_array_equal(g(), [2.0, 4.0, 6.0])  # the GPU's update came back to the host
    np.testing.assert_array_equal(f(), [4.0, 6.0, 8.0])  # and the host's update went to the GPU
    assert get_backend("wgpu").storage is not None


def test_readme_example():
    x = ag.input("x", ("B", 3))
    w = ag.parameter(np.ones((3, 2), "float32"), name="w")
    b = ag.parameter(np.zeros((1, 2), "float32"), name="b")
    loss = ag.relu(x @ w + b).mean()
    (gw, gb) = ag.grad(loss, [w, b])
    step = ag.compile(loss, updates={w: w - 0.1 * gw, b: b - 0.1 * gb}, backend="wgpu")
    assert float(step(np.ones((4, 3), "float32"))) == 3.0
    np.testing.assert_allclose(w.numpy()[0], [0.95, 0.95], rtol=1e-6)


def test_large_readback_goes_in_chunks():
    x = ag.input("x", (5 << 20,))  # 20 MiB: more than one 16 MiB staging chunk
    data = RNG.standard_normal(5 << 20).astype("float32")
    got = ag.compile(x * 2.0, backend="wgpu")(data)
    np.testing.assert_array_equal(got, data * 2.0)


def test_raw_dispatch_and_checked_wrappers_agree():
    x = ag.input("x", (16, 16))
    w = ag.parameter(RNG.standard_normal((16, 16)).astype("float32"), name="w")
    y = ag.softmax(ag.gelu(x @ w), axis=-1).sum(axis=0)
    data = RNG.standard_normal((16, 16)).astype("float32")
    raw = ag.compile(y, backend="wgpu")(data)
    checked = ag.compile(y, backend="wgpu", options={"raw_dispatch": False})(data)
    np.testing.assert_array_equal(raw, checked)
    np.testing.assert_allclose(raw, ag.compile(y)(data), rtol=1e-5)


@pytest.mark.parametrize("where", ["fed", "from-a-parameter"])
@pytest.mark.parametrize(
    ("build", "bad", "message"),
    [
        (
            lambda w, i: ag.embedding(i, w),
            -1,
            r"embedding: id -1 is out of range for 5 entries \(valid: 0 to 4\)",
        ),
        (
            lambda w, i: ag.index_select(w, i, axis=0),
            5,
            r"index_select: index 5 is out of range for 5 entries",
        ),
    ],
    ids=["embedding", "index_select"],
)
def test_out_of_range_indices_raise_naming_the_op_and_skip_the_updates(build, bad, message, where):
    # Indices the host can compute from the feeds are checked there before the step; indices that
    # depend on a parameter only on the GPU, by the kernel, after it.
    w = ag.parameter(np.arange(15, dtype="float32").reshape(5, 3), name="w")
    ids = ag.input("ids", (3,), "int64")
    shift = ag.parameter(np.zeros(3, np.int64), name="shift")
    loss = build(w, ids + 0 * ids if where == "fed" else ids + shift).sum()
    (g,) = ag.grad(loss, [w])
    step = ag.compile(loss, inputs=[ids], updates={w: w - 1.0 * g}, backend="wgpu")
    plan = step.plan_for(np.zeros(3, np.int64))
    assert (len(plan._host_checks), len(plan._device_checks)) == ((1, 0) if where == "fed" else (0, 1))
    assert float(step(np.array([0, 1, 4]))) == float(np.arange(15).reshape(5, 3)[[0, 1, 4]].sum())
    before = w.numpy().copy()
    note = "the step did not run" if where == "fed" else "its parameter updates were not applied"
    with pytest.raises(ExecutionError, match=message + ".*" + note):
        step(np.array([0, bad, 2]))
    np.testing.assert_array_equal(w.numpy(), before)  # the failed step changed nothing
    step(np.array([0, 1, 2]))  # and the next good step runs
    assert not np.array_equal(w.numpy(), before)


def test_no_adapter_is_a_clear_error(monkeypatch):
    import wgpu

    monkeypatch.setattr(wgpu.gpu, "enumerate_adapters_sync", lambda: [])
    with pytest.raises(
        NoAdapterError, match=r"no WebGPU adapter \(Vulkan, Metal or DX12\) found.*mesa-vulkan-drivers"
    ):
        choose_adapter(None)


def test_embedding_gradient_with_repeated_ids_equals_numpy():
    w = ag.parameter(RNG.standard_normal((300, 8)).astype("float32"), name="w")
    ids = ag.input("ids", (4, 16), "int64")
    y = ag.embedding(ids, w)
    (g,) = ag.grad((y * y).sum(), [w])
    data = RNG.integers(0, 300, (4, 16))
    data[0, :6] = 7  # one id many times
    got = ag.compile(g, inputs=[ids], backend="wgpu")(data)
    np.testing.assert_array_equal(got, ag.compile(g, inputs=[ids])(data))


def test_a_tensor_above_the_binding_limit_is_a_compile_error_naming_it():
    limit = get_device().max_binding
    x = ag.input("big", (limit // 4 + 64,))
    # (elementwise ops run over windows: tests/gpu/test_windows.py; a reduction binds its input whole)
    with pytest.raises(
        ExecutionError,
        match=r"sum .* binds big:f32\[\d+\] = input: it is \d+ bytes, more than the adapter's largest",
    ):
        ag.compile(x.sum(), backend="wgpu").plan_for(np.empty(limit // 4 + 64, "float32"))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((2, 3, 9, 9), (4, 3, 3, 3), {"stride": 2, "padding": 1}),
        ((1, 8, 12, 12), (16, 8, 3, 3), {"dilation": 2}),
    ],
    ids=["strided-padded", "dilated"],
)
def test_conv2d_through_im2col_and_the_tiled_matmul(x_shape, w_shape, attrs):
    x = ag.input("x", x_shape)
    w = ag.parameter(RNG.standard_normal(w_shape).astype("float32"), name="w")
    y = ag.conv2d(x, w, **attrs)
    (gx,) = ag.grad((y * y).sum(), [x])
    data = RNG.standard_normal(x_shape).astype("float32")
    f = ag.compile([y, gx], inputs=[x], backend="wgpu")
    for got, want in zip(f(data), ag.compile([y, gx], inputs=[x])(data), strict=True):
        # float32 sums of up to 144 terms in another order: error relative to the largest value
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    conv = [
        p
        for s, p in zip(f.plan_for(data).schedule.steps, f.plan_for(data).programs, strict=True)
        if s.node.op == "conv2d"
    ]
    assert len(conv[0].dispatches) == 2  # columns, then the matmul
