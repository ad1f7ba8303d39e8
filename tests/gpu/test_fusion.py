"""Fusion codegen: core's fusion groups run as generated kernels, with the same values as unfused."""

import numpy as np
import pytest

import asg.core as ag
from asg.core.fusion import find_fusion_groups

RNG = np.random.default_rng(0)


def _block():
    x = ag.input("x", (8, 16))
    w = ag.parameter(RNG.standard_normal((16, 16)).astype("float32"), name="w")
    b = ag.parameter(np.zeros((1, 16), "float32"), name="b")
    h = ag.layer_norm(x + ag.gelu(x @ w + b), (16,))
    loss = (ag.tanh(h) * 2.0 + 1.0).sum()
    return x, loss, ag.grad(loss, [w, b])


def test_fused_step_matches_unfused_with_fewer_dispatches():
    x, loss, grads = _block()
    data = RNG.standard_normal((8, 16)).astype("float32")
    fused = ag.compile([loss, *grads], inputs=[x], backend="wgpu")
    plain = ag.compile([loss, *grads], inputs=[x], backend="wgpu", options={"fusion": False})
    for a, b in zip(fused(data), plain(data), strict=True):
        # same formulas; inside one kernel the shader compiler may contract a * b + c into an fma
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    steps = len(fused.plan_for(data).schedule.steps)
    assert plain.plan_for(data).dispatch_count == steps
    assert fused.plan_for(data).dispatch_count <= steps - 10
    # every fused kernel comes from one of core's groups
    groups = [{n.id for n in g.nodes} for g in find_fusion_groups(fused.plan_for(data).schedule.graph)]
    for part in fused.plan_for(data).fused_groups:
        assert any({n.id for n in part.nodes} <= g for g in groups)


def test_a_fused_chain_with_broadcast_inputs_and_two_outputs():
    x = ag.input("x", (4, 5))
    b = ag.input("b", (1, 5))
    h = ag.exp(x - b) * 0.5
    y = ag.relu(h + 1.0)
    f = ag.compile([h, y.sum()], inputs=[x, b], backend="wgpu")
    xs = RNG.standard_normal((4, 5)).astype("float32")
    bs = RNG.standard_normal((1, 5)).astype("float32")
    got = f(xs, bs)
    want = ag.compile([h, y.sum()], inputs=[x, b])(xs, bs)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    plan = f.plan_for(xs, bs)
    assert len(plan.fused_groups) == 1
    # the whole chain is the sum's prologue: one kernel computes it, stores h and reduces relu(h + 1)
    assert [n.op for n in plan.fused_groups[0].nodes] == ["sub", "exp", "mul", "add", "relu", "sum"]
    assert plan.dispatch_count == 1
    unfused = ag.compile([h, y.sum()], inputs=[x, b], backend="wgpu", options={"fusion": False})
    assert unfused.plan_for(xs, bs).dispatch_count == 6


@pytest.mark.parametrize("reduce", ["sum", "max", "argmax", "mean"])
def test_reduction_prologues_run_inside_the_reduction(reduce):
    x = ag.input("x", (6, 7, 5))
    z = ag.tanh(x * 2.0 - 1.0)
    out = getattr(ag, reduce)(z, axis=1)
    f = ag.compile(out, inputs=[x], backend="wgpu")
    data = np.random.default_rng(1).standard_normal((6, 7, 5)).astype("float32")  # not order-dependent
    got, want = f(data), ag.compile(out, inputs=[x])(data)
    if reduce == "argmax":
        np.testing.assert_array_equal(got, want)
    else:
        # The GPU's tanh and fused multiply-adds differ from numpy by a few float32 ulps per term; a sum
        # of 7 terms of size <= 1 that cancels to ~0.08 can be off by ~4e-7, so bound the absolute error.
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    assert f.plan_for(data).dispatch_count == 1


def test_traced_profile_still_reports_every_node_of_a_fused_plan():
    x, loss, _ = _block()
    f = ag.compile(loss, inputs=[x], backend="wgpu", options={"profile": "traced"})
    p = f.profile(np.ones((8, 16), "float32"))
    assert len(p.nodes) == len(f.plan_for(np.ones((8, 16), "float32")).schedule.steps)


def test_profile_times_the_fused_dispatches_the_step_runs():
    x, loss, grads = _block()
    data = RNG.standard_normal((8, 16)).astype("float32")
    f = ag.compile([loss, *grads], inputs=[x], backend="wgpu")
    want = f(data)
    plan = f.plan_for(data)
    p = f.profile(data)
    # one row per dispatch of the real (fused) step, named by the ops it fuses, at the step it runs at
    assert [(t.index, t.op) for t in p.nodes] == plan.dispatch_labels()
    assert len(p.nodes) == plan.dispatch_count < len(plan.schedule.steps)
    fused = ["+".join(n.op for n in g.nodes) for g in plan.fused_groups]
    assert fused and set(fused) <= {t.op for t in p.nodes}
    assert all(t.seconds >= 0 for t in p.nodes) and round(sum(t.share for t in p.nodes), 6) == 1.0
    assert p.kernel_seconds > 0
    for a, b in zip(f(data), want, strict=True):  # profiling ran the step without applying updates
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("a_shape", "w_shape"),
    [((2, 5, 8), (8, 12)), ((7, 6), (6, 10)), ((2, 3, 5, 8), (2, 3, 8, 4))],
    ids=["batch-folded-vec4", "scalar-kernel", "batched"],
)
def test_matmul_epilogue_runs_in_the_matmul_store(a_shape, w_shape):
    x = ag.input("x", a_shape)
    w = ag.parameter(RNG.standard_normal(w_shape).astype("float32"), name="w")
    bias = ag.parameter(RNG.standard_normal((w_shape[-1],)).astype("float32"), name="bias")
    y = ag.gelu(x @ w + bias, approximate="tanh") * 0.5
    f = ag.compile(y, inputs=[x], backend="wgpu")
    data = RNG.standard_normal(a_shape).astype("float32")
    np.testing.assert_allclose(f(data), ag.compile(y, inputs=[x])(data), rtol=2e-5, atol=1e-6)
    plan = f.plan_for(data)
    assert plan.dispatch_count == 1
    assert [n.op for n in plan.fused_groups[0].nodes] == ["matmul", "add", "gelu", "mul"]


@pytest.mark.parametrize(
    ("extra_shape", "vec4"),
    [((2, 5, 12), True), ((12,), True), ((1, 1, 12), True), ((2, 5, 1), False), ((5, 12), False)],
    ids=["residual", "bias", "bias-3d", "column", "middle-broadcast"],
)
def test_the_vec4_epilogue_reads_and_writes_four_elements_at_once(extra_shape, vec4):
    # a residual or a bias reads as vec4 next to the accumulators; other broadcasts take the scalar epilogue
    x = ag.input("x", (2, 5, 8))
    w = ag.parameter(RNG.standard_normal((8, 12)).astype("float32"), name="w")
    extra = ag.input("extra", extra_shape)
    h = x @ w
    y = ag.tanh(h + extra) * 0.5 + 2.0
    f = ag.compile([y, h], inputs=[x, extra], backend="wgpu")  # h is stored too (C and the epilogue)
    data = RNG.standard_normal((2, 5, 8)).astype("float32")
    more = RNG.standard_normal(extra_shape).astype("float32")
    for got, want in zip(f(data, more), ag.compile([y, h], inputs=[x, extra])(data, more), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    plan = f.plan_for(data, more)
    assert plan.dispatch_count == 1
    (wgsl,) = plan.dispatch_sources()
    assert ("fn epilogue4(" in wgsl) == vec4 and ("fn epilogue(" in wgsl) != vec4


def test_an_elementwise_kernel_read_only_by_an_epilogue_runs_inside_it():
    # GELU's backward: gelu'(h), a chain of h alone, times dY @ W: one kernel, the derivative not stored
    h = ag.input("h", (4, 6, 16))
    dy = ag.input("dy", (4, 6, 8))
    w = ag.parameter(RNG.standard_normal((8, 16)).astype("float32"), name="w")
    slope = ag.tanh(h * 0.7 + 0.1) * ag.exp(-h * h) + 1.0
    y = (dy @ w) * slope
    f = ag.compile(y, inputs=[h, dy], backend="wgpu")
    data = [
        RNG.standard_normal((4, 6, 16)).astype("float32"),
        RNG.standard_normal((4, 6, 8)).astype("float32"),
    ]
    np.testing.assert_allclose(f(*data), ag.compile(y, inputs=[h, dy])(*data), rtol=2e-5, atol=1e-6)
    plan = f.plan_for(*data)
    assert plan.dispatch_count == 1
    (wgsl,) = plan.dispatch_sources()
    assert "fn epilogue4(" in wgsl and "tanh" in wgsl


@pytest.mark.parametrize("bias", [True, False], ids=["fused-epilogue", "plain"])
def test_a_linear_layer_reads_its_weight_in_place_without_a_transposed_copy(bias, monkeypatch):
    monkeypatch.setattr("asg.gpu.backend.FOLD_B_TRANSPOSES", True)
    x = ag.input("x", (3, 5, 8))
    w = ag.parameter(RNG.standard_normal((12, 8)).astype("float32"), name="w")  # (out, in) as nn.Linear
    b = ag.parameter(RNG.standard_normal((12,)).astype("float32"), name="b")
    y = x @ w.T + b if bias else x @ w.T
    f = ag.compile(y, inputs=[x], backend="wgpu")
    data = RNG.standard_normal((3, 5, 8)).astype("float32")
    np.testing.assert_allclose(f(data), ag.compile(y, inputs=[x])(data), rtol=2e-5, atol=1e-6)
    plan = f.plan_for(data)
    assert plan.dispatch_count == 1
    (wgsl,) = plan.dispatch_sources()
    assert "B^T" in wgsl.splitlines()[0]


def test_residual_add_runs_inside_layer_norm():
    x = ag.input("x", (4, 6, 16))
    r = ag.input("r", (4, 6, 16))
    w = ag.parameter(RNG.standard_normal(16).astype("float32"), name="w")
    b = ag.parameter(RNG.standard_normal(16).astype("float32"), name="b")
    h = x + r * 0.5
    y = ag.layer_norm(h, (16,), w, b)
    f = ag.compile([y, h], inputs=[x, r], backend="wgpu")
    xs, rs = (RNG.standard_normal((4, 6, 16)).astype("float32") for _ in range(2))
    for got, want in zip(f(xs, rs), ag.compile([y, h], inputs=[x, r])(xs, rs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plan = f.plan_for(xs, rs)
    assert plan.dispatch_count == 1
    assert [n.op for n in plan.fused_groups[0].nodes] == ["mul", "add", "layer_norm"]
