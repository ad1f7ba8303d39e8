"""Whole training steps on wgpu: equal to numpy over 20 steps; GPU memory flat over 500 steps."""

import numpy as np

import asg.core as ag
from asg.core.backends import get_backend


def _mlp(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = ag.input("x", ("B", 8))
    y = ag.input("y", ("B",), "int64")
    w1 = ag.parameter((rng.standard_normal((8, 16)) * 0.3).astype("float32"), name="w1")
    b1 = ag.parameter(np.zeros((1, 16), "float32"), name="b1")
    w2 = ag.parameter((rng.standard_normal((16, 4)) * 0.3).astype("float32"), name="w2")
    b2 = ag.parameter(np.zeros((1, 4), "float32"), name="b2")
    h = ag.gelu(x @ w1 + b1)
    logits = h @ w2 + b2
    loss = -ag.take_along_axis(ag.log_softmax(logits, axis=1), ag.reshape(y, ("B", 1)), axis=1).mean()
    params = [w1, b1, w2, b2]
    grads = ag.grad(loss, params)
    return x, y, loss, params, {p: p - 0.1 * g for p, g in zip(params, grads, strict=True)}


def _data(steps: int, batch: int = 32):
    rng = np.random.default_rng(1)
    for _ in range(steps):
        x = rng.standard_normal((batch, 8)).astype("float32")
        yield x, (x[:, :4].argmax(axis=1)).astype("int64")


def test_mlp_training_matches_numpy_for_20_steps():
    runs = {}
    for backend in ("numpy", "wgpu"):
        x, y, loss, params, updates = _mlp()
        step = ag.compile(loss, inputs=[x, y], updates=updates, backend=backend)
        losses = [float(step(xb, yb)) for xb, yb in _data(20)]
        runs[backend] = (losses, [p.numpy().copy() for p in params])
    (l_np, p_np), (l_gpu, p_gpu) = runs["numpy"], runs["wgpu"]
    np.testing.assert_allclose(l_gpu, l_np, rtol=1e-5, atol=1e-6)
    assert l_np[-1] < l_np[0] * 0.8  # it learns
    for a, b in zip(p_gpu, p_np, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_parameters_stay_on_the_gpu_between_steps():
    x, y, loss, params, updates = _mlp()
    step = ag.compile(loss, inputs=[x, y], updates=updates, backend="wgpu")
    storage = get_backend("wgpu").storage
    data = list(_data(3))
    step(*data[0])
    host = params[0].node.data._value.copy()
    step(*data[1])
    # the host copy is stale until read: no readback of parameters during steps
    np.testing.assert_array_equal(params[0].node.data._value, host)
    assert not np.array_equal(params[0].numpy(), host)
    assert storage.buffer(params[0].node.data) is not None


def test_gpu_memory_is_flat_over_500_steps():
    x, y, loss, _params, updates = _mlp(seed=3)
    step = ag.compile(loss, inputs=[x, y], updates=updates, backend="wgpu")
    pool = get_backend("wgpu").pool
    batches = list(_data(2))
    step(*batches[0])
    before = pool.stats()
    for i in range(500):
        step(*batches[i % 2])
    after = pool.stats()
    assert after.in_use_bytes == before.in_use_bytes
    assert after.created == before.created  # no buffer allocated after the first step


def test_gpt_training_step_matches_numpy():
    # the benchmark's model (pre-norm blocks, causal attention, tied head, AdamW) at a tiny size
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "gpu_gpt_step.py"
    spec = importlib.util.spec_from_file_location("gpu_gpt_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    cfg = (65, 8, 16, 2, 2, 2)  # vocab, T, d, layers, heads, batch
    x = rng.integers(0, 65, (2, 8)).astype(np.int64)
    y = rng.integers(0, 65, (16,)).astype(np.int64)
    gpu, ref = bench.asg_step("wgpu", *cfg), bench.asg_step("numpy", *cfg)
    got = [float(gpu(x, y)) for _ in range(5)]
    want = [float(ref(x, y)) for _ in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[-1] < got[0]


def test_a_dropped_function_gives_its_buffers_back():
    import gc

    pool = get_backend("wgpu").pool
    x = ag.input("x", (64, 64))
    data = np.ones((64, 64), "float32")
    ag.compile(ag.tanh(x @ x) + 1.0, backend="wgpu")(data)  # warm: the buffers of one such plan exist
    gc.collect()
    before = pool.stats()
    for _ in range(20):
        ag.compile(ag.tanh(x @ x) + 1.0, backend="wgpu")(data)
        gc.collect()
    after = pool.stats()
    assert after.in_use_bytes == before.in_use_bytes
    assert after.created == before.created  # each new plan reused the buffers of the dropped one


def test_a_wgpu_training_step_saved_and_loaded_continues_identically(tmp_path):
    x, y, loss, _params, updates = _mlp(seed=5)
    step = ag.compile(loss, inputs=[x, y], updates=updates, backend="wgpu")
    data = list(_data(4))
    for xb, yb in data[:2]:
        step(xb, yb)
    step.save(tmp_path / "step.asg")  # reads the parameters back from the GPU
    expected = [float(step(xb, yb)) for xb, yb in data[2:]]
    loaded = ag.load(tmp_path / "step.asg").to("wgpu")
    assert [float(loaded(xb, yb)) for xb, yb in data[2:]] == expected


def test_a_step_split_over_many_submissions_equals_one_submission():
    runs = []
    for per in (
        0,
        3,
    ):  # 0: one compute pass; 3: a pass and a submission every 3 dispatches (the first shorter)
        x, y, loss, params, updates = _mlp(seed=5)
        step = ag.compile(
            loss, inputs=[x, y], updates=updates, backend="wgpu", options={"dispatches_per_submit": per}
        )
        losses = [float(step(xb, yb)) for xb, yb in _data(4)]
        runs.append((losses, [p.numpy().copy() for p in params]))
        assert step.plan_for(*next(_data(1))).dispatch_count > 6
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(a, b)
