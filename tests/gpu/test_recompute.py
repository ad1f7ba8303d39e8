"""Values that the matmuls reading them recompute as they load A (asg.gpu.fusion.matmul_operands):
an MLP's activation and attention's output transposed back get no buffer, and the step's values match numpy."""

import gc
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import asg.core as ag
from asg.core.backends import get_backend
from asg.gpu.fusion import transpose_index
from asg.gpu.kernels.linalg import ALoad
from asg.gpu.pool import pack, size_class
from asg.nn import functional as F


def _load(path: pathlib.Path):
    """The module at ``path`` (a benchmark script, another test file), imported by its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


_tiles = _load(pathlib.Path(__file__).with_name("test_matmul_tiles.py"))  # the tile variants, their runner
EVERY_TILE, _run, _tile_id = _tiles.EVERY_TILE, _tiles._run, _tiles._tile_id

RNG = np.random.default_rng(0)


def _kernels(plan) -> list[str]:
    """The first line of every kernel the plan's step dispatches (``// matmul 64x64x16 vec4 prologue``)."""
    wgsl = {id(pipe): text for text, pipe in plan.dev._pipelines.items()}
    return [wgsl[id(pipe)].splitlines()[0] for _, pipe, *_ in plan._dispatches]


def _stored(plan, op: str) -> list[bool]:
    """For each step of ``op``: whether its value has a buffer in the plan."""
    return [s.output in plan._buf for s in plan.schedule.steps if s.node.op == op]


PERMUTED = (2, 4, 12, 8)  # (B, h, T, hs), read as its (B, T, h, hs) permutation: (24, 32) as 2-D


@pytest.mark.parametrize("tile", EVERY_TILE, ids=_tile_id)
@pytest.mark.parametrize("a_transposed", [False, True], ids=["A", "A^T"])
def test_every_tile_recomputes_a_as_it_loads(tile, a_transposed):
    exp_a = ALoad(prologue="fn prologue(x: f32) -> f32 {\n    return exp(x);\n}")
    a = RNG.standard_normal((36, 72)).astype(np.float32) * 0.5
    b = RNG.standard_normal((72, 68)).astype(np.float32)
    got, wgsl = _run(a, b, config=tile, a_transposed=a_transposed, a_load=exp_a)
    assert "prologue" in wgsl.splitlines()[0]
    np.testing.assert_allclose(got, np.exp(a.astype(np.float64)) @ b, rtol=1e-5, atol=1e-4)
    # the buffer holds x; A (or A^T, as stored) is its permutation, reshaped to 2-D
    x = RNG.standard_normal(PERMUTED).astype(np.float32)
    logical = x.transpose(0, 2, 1, 3).reshape(24, 32)
    moved = ALoad(index=transpose_index(PERMUTED, (0, 2, 1, 3)))
    w = RNG.standard_normal((24 if a_transposed else 32, 68)).astype(np.float32)
    a = x.reshape(24, 32).T if a_transposed else x.reshape(24, 32)  # _run binds a.T for A^T
    got, wgsl = _run(a, w, config=tile, a_transposed=a_transposed, a_load=moved)
    assert "a_index" in wgsl.splitlines()[0]
    want = (logical.T if a_transposed else logical).astype(np.float64) @ w
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_recomputed_transposed_a_with_split_k():
    tanh = ALoad(prologue="fn prologue(x: f32) -> f32 {\n    return tanh(x);\n}")
    a = RNG.standard_normal((36, 1000)).astype(np.float32)
    b = RNG.standard_normal((1000, 68)).astype(np.float32)
    got, wgsl = _run(a, b, a_transposed=True, a_load=tanh, splits=3)
    assert "split-k 3" in wgsl.splitlines()[0]
    np.testing.assert_allclose(got, np.tanh(a.astype(np.float64)) @ b, rtol=1e-5, atol=1e-4)


def _mlp(act, batch=(4, 256)):
    x = ag.input("x", (*batch, 36))
    w1 = ag.parameter(RNG.standard_normal((36, 52)).astype(np.float32) * 0.3, name="w1")
    b1 = ag.parameter(RNG.standard_normal((52,)).astype(np.float32) * 0.3, name="b1")
    w2 = ag.parameter(RNG.standard_normal((52, 20)).astype(np.float32) * 0.3, name="w2")
    loss = ((act(x @ w1 + b1) @ w2) ** 2).mean()
    return x, loss, ag.grad(loss, [w1, b1, w2])


ACTIVATIONS = {
    "gelu-tanh": lambda h: F.gelu(h, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_an_mlp_activation_is_recomputed_by_both_matmuls_reading_it(name):
    # 1024 rows: the weight gradients act(h)^T @ dY and x^T @ dH run split-K with a transposed A
    x, loss, grads = _mlp(ACTIVATIONS[name])
    data = RNG.standard_normal((4, 256, 36)).astype(np.float32)
    f = ag.compile([loss, *grads], inputs=[x], backend="wgpu", options={"recompute": "all"})
    want = ag.compile([loss, *grads], inputs=[x])(data)
    for got, ref in zip(f(data), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
    plan = f.plan_for(data)
    op = "silu" if name == "silu" else "gelu"
    assert _stored(plan, op) == [False]  # no buffer: the forward product and the weight gradient recompute it
    kernels = _kernels(plan)
    assert sum("prologue" in k for k in kernels) == 2
    assert any("A^T" in k and "split-k" in k and "prologue" in k for k in kernels)
    stored = ag.compile([loss, *grads], inputs=[x], backend="wgpu", options={"recompute": False})
    for got, ref in zip(stored(data), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
    assert _stored(stored.plan_for(data), op) == [True]
    assert plan.dispatch_count <= stored.plan_for(data).dispatch_count
    default = ag.compile([loss, *grads], inputs=[x], backend="wgpu")  # "transpose": activations stored
    assert _stored(default.plan_for(data), op) == [True]


def test_an_activation_read_by_another_op_is_stored():
    # tanh's gradient reads tanh's value: it must exist, and the step stays right
    x, loss, grads = _mlp(ag.tanh, batch=(2, 8))
    data = RNG.standard_normal((2, 8, 36)).astype(np.float32)
    f = ag.compile([loss, *grads], inputs=[x], backend="wgpu")
    want = ag.compile([loss, *grads], inputs=[x])(data)
    for got, ref in zip(f(data), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
    plan = f.plan_for(data)
    assert _stored(plan, "tanh") == [True]
    assert not any("prologue" in k for k in _kernels(plan))


@pytest.mark.parametrize("op", ["exp", "sigmoid", "relu"])
def test_a_recomputed_operand_leaves_the_tile_padding_zero(op):
    # m, n and k fit no tile: an op with op(0) != 0 must not leak into the padded rows and columns
    x = ag.input("x", (50, 36))
    w = ag.parameter(RNG.standard_normal((36, 44)).astype(np.float32), name="w")
    y = getattr(ag, op)(x) @ w
    data = RNG.standard_normal((50, 36)).astype(np.float32)
    f = ag.compile(y, inputs=[x], backend="wgpu", options={"recompute": "all"})
    np.testing.assert_allclose(f(data), ag.compile(y, inputs=[x])(data), rtol=1e-5, atol=1e-5)
    assert _stored(f.plan_for(data), op) == [False]


def test_attention_s_output_transposed_back_is_read_where_it_lies():
    b, h, t, hs = 2, 4, 16, 8
    q, k, v = (ag.input(n, (b, h, t, hs)) for n in "qkv")
    w = ag.parameter(RNG.standard_normal((h * hs, 12)).astype(np.float32) * 0.3, name="w")
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = ag.reshape(y.transpose(1, 2), (b, t, h * hs)) @ w
    loss = (out**2).mean()
    grads = ag.grad(loss, [w, q])
    data = [RNG.standard_normal((b, h, t, hs)).astype(np.float32) for _ in range(3)]
    f = ag.compile([loss, *grads], inputs=[q, k, v], backend="wgpu")
    want = ag.compile([loss, *grads], inputs=[q, k, v])(*data)
    for got, ref in zip(f(*data), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
    plan = f.plan_for(*data)
    back = [s for s in plan.schedule.steps if s.node.op == "transpose" and s.node.inputs[0].op == "attention"]
    assert len(back) == 1 and back[0].output not in plan._buf
    kernels = _kernels(plan)
    assert sum("a_index" in k for k in kernels) == 2  # the product and the weight gradient (A^T)
    assert any("a_index" in k and "A^T" in k for k in kernels)


def test_the_recompute_option_is_checked():
    x = ag.input("x", (8, 8))
    with pytest.raises(
        ValueError, match=r"wgpu: option recompute='some': expected 'all', 'transpose' or 'none'"
    ):
        ag.compile(x @ x, backend="wgpu", options={"recompute": "some"})(np.ones((8, 8), np.float32))


@pytest.mark.parametrize("mode", ["all", "transpose"])
def test_the_gpt_step_stores_no_attention_transposed_output_nor_with_all_its_mlp_activations(mode):
    bench = _load(pathlib.Path(__file__).parents[2] / "benchmarks" / "gpu_gpt_step.py")
    cfg = (65, 32, 32, 2, 4, 4)  # vocab, T, d, layers, heads, batch
    x = RNG.integers(0, 65, (4, 32)).astype(np.int64)
    y = RNG.integers(0, 65, (4 * 32,)).astype(np.int64)
    gc.collect()  # earlier tests' plans give their buffers back
    get_backend("wgpu").pool.trim()  # and none is free to reuse: each buffer of this plan is new
    step = bench.asg_step("wgpu", *cfg, options={"recompute": mode})
    ref = bench.asg_step("numpy", *cfg)
    losses = [float(step(x, y)) for _ in range(3)]
    np.testing.assert_allclose(losses, [float(ref(x, y)) for _ in range(3)], rtol=1e-5)
    plan = step.plan_for(x, y)
    assert _stored(plan, "gelu") == ([False, False] if mode == "all" else [True, True])
    back = [s for s in plan.schedule.steps if s.node.op == "transpose" and s.node.inputs[0].op == "attention"]
    assert len(back) == 2 and not any(s.output in plan._buf for s in back)
    # the plan holds the buffers of its packing, each rounded to the pool's size class, and little else
    _, sizes = pack(plan.lifetimes)
    assert plan.packed_bytes == sum(size_class(nb) for nb in sizes)
    assert sum(b.size for b in plan._owned) <= plan.packed_bytes + (64 << 10)  # inputs, loss copy, checks
    live = [0] * (len(plan.schedule.steps) + 1)
    for v in plan.lifetimes:
        for s in range(v.first, v.last + 1):
            live[s] += v.nbytes
    assert sum(sizes) <= 1.25 * max(live)
