"""Kernels of a training step besides the matmuls: column sums (bias and layer_norm weight gradients),
the embedding gradient, tiled transposes and the merged Adam update, on wgpu against numpy."""

import numpy as np
import pytest

import asg.core as ag

RNG = np.random.default_rng(3)


@pytest.mark.parametrize(
    ("shape", "target"),
    [((4, 37, 96), (96,)), ((3, 50, 200), (200,)), ((6, 5, 33), (5, 33)), ((700, 64), (64,))],
    ids=["bias", "cols-not-a-multiple-of-64", "keep-two-axes", "many-rows"],
)
def test_sum_to_a_trailing_shape_matches_numpy(shape, target):
    x = ag.input("x", shape)
    data = RNG.standard_normal(shape).astype(np.float32)
    f = ag.compile(ag.sum_to(x, target), backend="wgpu")
    want = data.astype(np.float64).reshape(-1, int(np.prod(target))).sum(0).reshape(target)
    np.testing.assert_allclose(f(data), want, rtol=1e-5, atol=1e-5)
    assert f.plan_for(data).dispatch_count == 2  # chunks of rows, then the chunks per column


@pytest.mark.parametrize("rows", [1, 24, 333])
def test_layer_norm_gradients_match_numpy(rows):
    x = ag.input("x", (rows, 80))
    w = ag.parameter(RNG.standard_normal(80).astype(np.float32), name="w")
    b = ag.parameter(RNG.standard_normal(80).astype(np.float32), name="b")
    y = ag.layer_norm(x, (80,), weight=w, bias=b)
    loss = (ag.tanh(y) * ag.constant(RNG.standard_normal((rows, 80)).astype(np.float32))).sum()
    grads = ag.grad(loss, [x, w, b])
    data = RNG.standard_normal((rows, 80)).astype(np.float32)
    f = ag.compile(grads, inputs=[x], backend="wgpu")
    got, want = f(data), ag.compile(grads, inputs=[x])(data)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5)
    # the bias gradient is summed in the weight gradient's column pass
    assert "layer_norm_weight_grad+sum_to" in [ops for _, ops in f.plan_for(data).dispatch_labels()]


@pytest.mark.parametrize(("vocab", "n"), [(7, 300), (65, 2048), (50, 3)])
def test_embedding_gradient_matches_numpy_add_at(vocab, n):
    table = ag.parameter(RNG.standard_normal((vocab, 24)).astype(np.float32), name="table")
    idx = ag.input("idx", (n,), "int64")
    wv = RNG.standard_normal((n, 24)).astype(np.float32)
    (g,) = ag.grad((ag.index_select(table, idx, axis=0) * ag.constant(wv)).sum(), [table])
    data = RNG.integers(0, vocab, n).astype(np.int64)
    got = ag.compile(g, inputs=[idx], backend="wgpu")(data)
    want = np.zeros((vocab, 24), np.float32)
    np.add.at(want, data, wv)  # in position order, as the GPU sums each row's run
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("shape", "axes", "dtype"),
    [
        ((70, 33), (1, 0), "float32"),
        ((3, 40, 64), (0, 2, 1), "float32"),
        ((2, 2, 5, 97), (0, 1, 3, 2), "int32"),
    ],
    ids=["2-d", "batched", "int32-4-d"],
)
def test_tiled_transpose_matches_numpy(shape, axes, dtype):
    x = ag.input("x", shape, dtype)
    data = RNG.integers(-1000, 1000, shape).astype(dtype)
    f = ag.compile(ag.permute(x, axes), backend="wgpu")
    np.testing.assert_array_equal(f(data), np.transpose(data, axes))
    (d,) = f.plan_for(data).programs[-1].dispatches
    assert "var<workgroup> tile" in d.wgsl


def _adam_step(weight_decay: float, backend: str, options: dict | None = None):
    from asg import nn

    rng = np.random.default_rng(4)
    x = ag.input("x", (16, 12))
    w = ag.parameter(rng.standard_normal((12, 5)).astype(np.float32), name="w")
    b = ag.parameter(np.zeros(5, np.float32), name="b")
    loss = (ag.tanh(x @ w + b) ** 2).mean()
    opt = nn.optim.AdamW([w, b], lr=1e-2, weight_decay=weight_decay)
    updates = opt.updates(ag.grad(loss, [w, b]))
    return ag.compile(loss, inputs=[x], updates=updates, backend=backend, options=options)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_kernel_runs_the_three_outputs_of_an_adam_step(weight_decay):
    data = np.random.default_rng(5).standard_normal((16, 12)).astype(np.float32)
    gpu = _adam_step(weight_decay, "wgpu")
    plan = gpu.plan_for(data)
    merged = [ops for _, ops in plan.dispatch_labels() if ops == "+".join(["add"] + ["adam_update"] * 3)]
    assert len(merged) == 2  # one per parameter: step + 1, new param, exp_avg and exp_avg_sq together
    unmerged = _adam_step(weight_decay, "wgpu", {"fusion": False}).plan_for(data)
    assert plan.dispatch_count <= unmerged.dispatch_count - 6
    cpu = _adam_step(weight_decay, "numpy")
    # the moments and step counts carry over: a wrong one shows in the next steps' losses
    got = [float(gpu(data)) for _ in range(4)]
    want = [float(cpu(data)) for _ in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[-1] < got[0]


def test_head_split_and_merge_copies_read_their_sources_in_place():
    # attention's layout changes: a fused qkv projection split into heads, the heads' gradients
    # merged back; each chain of copies runs as one copy from the source
    b, t, h, e = 2, 5, 3, 4
    x = ag.input("x", (b, t, 3 * h * e))
    q, k, v = (ag.reshape(z, (b, t, h, e)).transpose(1, 2) for z in ag.chunk(x, 3, axis=2))
    w = ag.constant(RNG.standard_normal((b, h, t, e)).astype(np.float32))
    loss = (ag.tanh(q * k + v) * w).sum()
    (gx,) = ag.grad(loss, [x])
    data = RNG.standard_normal((b, t, 3 * h * e)).astype(np.float32)
    f = ag.compile([loss, gx], inputs=[x], backend="wgpu")
    for got, want in zip(f(data), ag.compile([loss, gx], inputs=[x])(data), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
    labels = [ops for _, ops in f.plan_for(data).dispatch_labels()]
    assert labels.count("slice_range+transpose") == 3
    assert "transpose+transpose+transpose+concat" in labels
    assert "slice_range" not in labels and "transpose" not in labels


def test_layer_norm_backward_accumulates_the_residual_gradient_in_place_of_an_add():
    x = ag.input("x", (6, 3, 40))
    h = x
    for k in range(2):  # pre-norm blocks: the residual stream's gradient adds up through them
        w = ag.parameter(RNG.standard_normal(40).astype(np.float32), name=f"w{k}")
        h = h + ag.tanh(ag.layer_norm(h, (40,), weight=w))
    loss = (h * ag.constant(RNG.standard_normal((6, 3, 40)).astype(np.float32))).sum()
    (gx,) = ag.grad(loss, [x])
    data = RNG.standard_normal((6, 3, 40)).astype(np.float32)
    f = ag.compile(gx, inputs=[x], backend="wgpu")
    np.testing.assert_allclose(f(data), ag.compile(gx, inputs=[x])(data), rtol=2e-5, atol=2e-5)
    assert "layer_norm_backward+add" in [ops for _, ops in f.plan_for(data).dispatch_labels()]
