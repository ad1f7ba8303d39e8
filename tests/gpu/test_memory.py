"""GPU memory of a plan: values of disjoint lifetimes share buffers whatever their shapes; the pool's free list is capped."""

import gc
import importlib.util
import itertools
import pathlib
import sys

import numpy as np
import pytest

import asg.core as ag
from asg.core.backends import get_backend
from asg.gpu.pool import BufferPool, Lifetime, pack


def _max_live(values) -> int:
    live = [0] * (max(v.last for v in values) + 1)
    for v in values:
        for s in range(v.first, v.last + 1):
            live[s] += v.nbytes
    return max(live)


def test_pack_never_puts_overlapping_values_in_one_buffer():
    rng = np.random.default_rng(0)
    values = []
    for key in range(300):
        first = int(rng.integers(0, 200))
        values.append(
            Lifetime(key, int(rng.choice([256, 1024, 4096, 65536])), first, first + int(rng.integers(0, 30)))
        )
    values.append(
        Lifetime(300, values[7].nbytes, values[7].last, values[7].last + 3, over=7)
    )  # in place over 7
    slot_of, sizes = pack(values)
    assert set(slot_of) == {v.key for v in values}
    by_slot = {}
    for v in values:
        assert sizes[slot_of[v.key]] >= v.nbytes
        by_slot.setdefault(slot_of[v.key], []).append(v)
    for vs in by_slot.values():
        vs.sort(key=lambda v: v.first)
        for a, b in itertools.pairwise(vs):
            assert a.last < b.first or (b.over == a.key and a.last == b.first), (a, b)
    # close to the bound no packing can beat (the most bytes live at one step)
    assert sum(sizes) <= 1.25 * _max_live(values)


def _gpt_bench():
    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "gpu_gpt_step.py"
    spec = importlib.util.spec_from_file_location("gpu_gpt_step", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["gpu_gpt_step"] = bench
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="module")
def gpt_runs():
    """The GPT benchmark's step at a small size, with core's buffer table as is and packed (the
    query gradient by its own kernel in both: as a matmul of the stored dS, which only a packed
    plan merges, its sums run in another order)."""
    from asg.gpu.kernels import attention

    bench = _gpt_bench()
    cfg = (65, 32, 32, 2, 4, 4)  # vocab, T, d, layers, heads, batch
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, (4, 32)).astype(np.int64)
    y = rng.integers(0, 65, (4 * 32,)).astype(np.int64)
    runs = {}
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(attention, "DQ_MATMUL", False)
    for packed in (False, True):
        gc.collect()  # earlier tests' plans give their buffers back,
        get_backend("wgpu").pool.trim()  # and no free buffer (up to twice the size) is reused
        step = bench.asg_step("wgpu", *cfg, options={"pack_buffers": packed})
        losses = [float(step(x, y)) for _ in range(3)]
        plan = step.plan_for(x, y)
        owned = sum(b.size for b in plan._owned)
        runs[packed] = (losses, plan, owned)
    monkeypatch.undo()
    return runs


def test_packed_buffers_train_the_gpt_step_identically(gpt_runs):
    assert gpt_runs[True][0] == gpt_runs[False][0]


def test_packing_cuts_the_gpt_step_s_buffers(gpt_runs):
    (_, _, table), (_, plan, packed) = gpt_runs[False], gpt_runs[True]
    assert packed < 0.8 * table  # core's table keeps one buffer per shape, and the updates their own
    # a buffer holds one value at a time; sizes round up to the pool's classes
    assert plan.packed_bytes <= 1.25 * _max_live(plan.lifetimes)


def test_the_pool_destroys_free_buffers_past_its_cap():
    dev = get_backend("wgpu").device()
    pool = BufferPool(dev, max_free_bytes=1 << 20)
    bufs = [pool.acquire(256 << 10) for _ in range(8)]  # 2 MiB
    for b in bufs:
        pool.release(b)
    stats = pool.stats()
    assert stats.free_bytes <= 1 << 20 and pool.destroyed == 4
    again = pool.acquire(200 << 10)  # a larger free buffer (at most twice the size) is reused
    assert pool.created == 8 and again.size >= 200 << 10
    pool.release(again)
    pool.trim()
    assert pool.stats().free_bytes == 0


def test_a_weight_gradient_reads_the_activation_in_place_of_a_transposed_copy():
    rng = np.random.default_rng(2)
    x = ag.input("x", (96, 32))
    w = ag.parameter(rng.standard_normal((32, 48)).astype(np.float32), name="w")
    (gw,) = ag.grad((ag.tanh(x @ w) ** 2).sum(), [w])  # gw = x^T @ (...)
    data = rng.standard_normal((96, 32)).astype(np.float32)
    f = ag.compile(gw, inputs=[x], backend="wgpu")
    want = ag.compile(gw, inputs=[x])(data)
    np.testing.assert_allclose(f(data), want, rtol=1e-5, atol=1e-5)
    plan = f.plan_for(data)
    ops = [s.node.op for s in plan.schedule.steps]
    assert "transpose" in ops  # in the schedule, but not run: the matmul reads x itself
    kernels = [d.wgsl.splitlines()[0] for p in plan.programs for d in p.dispatches]
    assert any("A^T" in k for k in kernels)
    unfolded = ag.compile(gw, inputs=[x], backend="wgpu", options={"fusion": False})
    assert plan.dispatch_count < unfolded.plan_for(data).dispatch_count
    traced = ag.compile(gw, inputs=[x], backend="wgpu", options={"profile": "traced"})
    assert "transpose" in [t.op for t in traced.profile(data).nodes]  # node by node: it runs there
    assert "transpose" not in [t.op for t in f.profile(data).nodes]  # not in the real step
