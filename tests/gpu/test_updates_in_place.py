"""An optimizer's merged update kernel writes the new parameters and moments straight into their
storage on wgpu: same numbers as numpy, fewer bytes, and the runs that must not update (profile,
capture) or that run node by node leave or update the parameters exactly as before."""

import numpy as np

import asg.core as ag
from asg import nn
from asg.nn import functional as F

RNG = np.random.default_rng(0)


def _adam_step(backend: str, options: dict | None = None, seed: int = 0):
    nn.init.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))
    params = list(model.parameters())
    opt = nn.optim.AdamW(params, lr=1e-2)
    x = ag.input("x", (16, 8))
    y = ag.input("y", (16,), "int64")
    loss = F.cross_entropy(model(x), y)
    grads = ag.grad(loss, params)
    step = ag.compile(loss, inputs=[x, y], updates=opt.updates(grads), backend=backend, options=options or {})
    return step, params


def _batches(n: int):
    rng = np.random.default_rng(1)
    for _ in range(n):
        x = rng.standard_normal((16, 8)).astype(np.float32)
        yield x, x[:, :4].argmax(axis=1).astype(np.int64)


def _values(params):
    return [p.numpy().copy() for p in params]


def test_adam_updates_in_place_match_numpy_and_save_the_copies():
    gpu, gpu_params = _adam_step("wgpu")
    ref, ref_params = _adam_step("numpy")
    data = list(_batches(6))
    got = [float(gpu(*b)) for b in data]
    want = [float(ref(*b)) for b in data]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(_values(gpu_params), _values(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plan = gpu.plan_for(*data[0])
    # every parameter, exp_avg and exp_avg_sq (4 tensors x 3); the step count is a scalar stored by one invocation
    assert len(plan._in_place) == 12
    without, _ = _adam_step("wgpu", {"pack_buffers": False})
    assert without.plan_for(*data[0])._in_place == {}


def test_a_profile_and_a_capture_leave_the_parameters_unless_asked():
    step, params = _adam_step("wgpu")
    data = list(_batches(3))
    step(*data[0])
    before = _values(params)
    step.profile(*data[1])  # update=False: the plan's kernels write the parameters, then are undone
    for a, b in zip(_values(params), before, strict=True):
        np.testing.assert_array_equal(a, b)
    step.profile(*data[1], update=True)
    after_profile = _values(params)
    assert not np.array_equal(after_profile[0], before[0])
    # the same update as a plain step from the same state
    twin, twin_params = _adam_step("wgpu")
    twin(*data[0])
    twin(*data[1])
    for a, b in zip(after_profile, _values(twin_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_node_by_node_run_updates_as_the_fused_step_does():
    fused, fused_params = _adam_step("wgpu")
    traced, traced_params = _adam_step("wgpu", {"profile": "traced"})
    data = list(_batches(3))
    for b in data[:2]:
        fused(*b)
        traced(*b)
    traced.profile(*data[2], update=True)  # run_traced: the moments and parameters as separate kernels
    fused(*data[2])
    for a, b in zip(_values(traced_params), _values(fused_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    traced(*data[0])  # and the fused path still runs in place afterwards
    fused(*data[0])
    for a, b in zip(_values(traced_params), _values(fused_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_every_update_of_the_gpt_step_runs_in_place_after_the_last_read_of_its_weight():
    # a weight is read by its layer's input gradient, scheduled after its update: the update moves after it
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "gpu_gpt_step.py"
    spec = importlib.util.spec_from_file_location("gpu_gpt_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, (2, 8)).astype(np.int64)
    y = rng.integers(0, 65, (16,)).astype(np.int64)
    step = bench.asg_step("wgpu", 65, 8, 16, 2, 2, 2)
    plan = step.plan_for(x, y)
    assert len(plan._in_place) == len(plan._merged_update_inputs) > 0
    order = [refs for *_, refs in plan._dispatches]
    for value, param in plan._in_place.items():
        writes = min(k for k, refs in enumerate(order) if any(r == value for _, r, _ in refs))
        reads = [k for k, refs in enumerate(order) if any(plan._root(r) == param for _, r, _ in refs)]
        assert max(reads) <= writes
    labels = [label for _, label in plan.dispatch_labels()]
    assert (
        labels.count("add+adam_update+adam_update+adam_update")
        + labels.count("adam_update+adam_update+adam_update")
        == len(plan._in_place) // 3
    )
