"""Mixed precision on wgpu: the loss scaler's overflow gate holds on the GPU, step by step as on numpy."""

import itertools

import numpy as np
import pytest

import asg.core as ag
from asg import nn
from asg.gpu.device import get_device


def _compare(fn, *arrays, fusion=True):
    xs = [ag.input(f"x{i}", a.shape, a.dtype.name) for i, a in enumerate(arrays)]
    outs = fn(*xs)
    gpu = ag.compile(outs, inputs=xs, backend="wgpu", options={"fusion": fusion})(*arrays)
    ref = ag.compile(outs, inputs=xs)(*arrays)
    for got, want in zip(gpu, ref, strict=True):
        np.testing.assert_array_equal(got, want)


SPECIAL = np.array([1.5, -2.0, np.inf, -np.inf, np.nan, 0.0], np.float32)


@pytest.mark.parametrize("fusion", [True, False], ids=["fused", "unfused"])
def test_inf_and_nan_times_a_literal_zero_is_nan_as_in_numpy(fusion):
    # shader compilers fold x * 0.0 to 0.0: the finiteness probe sum(g * 0.0) == 0 then always passed
    def fn(x):
        probe = (x * 0.0).sum()
        return [x * 0.0, 0.0 * x, x * -0.0, (x + 1.0) * 0.0, probe, probe == 0.0]

    _compare(fn, SPECIAL, fusion=fusion)


def test_nan_compares_unequal_to_itself_on_wgpu():
    _compare(lambda x: [x != x, x == x, x != 1.5, ~(x == x)], SPECIAL)


@pytest.mark.skipif("shader-f16" not in get_device().features, reason="the adapter has no shader-f16")
def test_a_fused_float16_chain_overflows_and_rounds_as_numpy():
    # each op's float16 result is rounded inside a fused kernel too: 300 * 300 is inf in float16
    x = np.array([300.0, -300.0, 1.0 / 3.0, 65504.0, 65519.0, np.nan], np.float16)
    _compare(lambda a: [(a * a) * 0.5 + 1.0, (a * 1000.0) * 0.001], x)


@pytest.mark.skipif("shader-f16" not in get_device().features, reason="the adapter has no shader-f16")
def test_float16_rounding_inside_a_fused_kernel_is_numpy_s():
    # normal, subnormal, tie, overflow and special values; the chain is fused into one kernel
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 5, 2000),
            [65519.0, 65520.0, -65520.0, 2.0**-25, 3 * 2.0**-25, 2.0**-14 - 2.0**-26, 1 + 2.0**-11],
            [np.inf, -np.inf, np.nan, 0.0, -0.0],
        ]
    ).astype(np.float32)
    _compare(lambda a: [a.astype("float16").astype("float32") * 1.0], x)


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, 0] * x[:, 1] > 0).astype(np.int64)


def _run(backend: str, steps: int) -> tuple[list[tuple[float, float, int]], list[list[np.ndarray]]]:
    nn.init.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 2))
    # 2^30 overflows float16 at once; the scale halves down to a finite one, then growth_interval=3
    # doubles it until it overflows again: skipped and applied steps alternate.
    scaler = nn.amp.LossScaler(init_scale=2.0**30, growth_interval=3)
    opt = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # state to gate: the momentum
    step = nn.compile_train_step(
        model, nn.CrossEntropyLoss(), opt, mixed_precision=True, loss_scaler=scaler, backend=backend
    )
    x, y = _data()
    trace, weights = [], []
    for _ in range(steps):
        loss = step(x, y)
        trace.append((loss, float(scaler.scale.numpy()), int(scaler.good_steps.numpy())))
        weights.append([p.numpy().copy() for p in model.parameters()])
    return trace, weights


@pytest.mark.skipif("shader-f16" not in get_device().features, reason="the adapter has no shader-f16")
def test_mixed_precision_with_forced_overflow_follows_numpy_step_by_step():
    steps = 24
    want, w_want = _run("numpy", steps)
    got, w_got = _run("wgpu", steps)
    scales = [s for _, s, _ in want]
    assert scales[0] == 2.0**29 and min(scales) < 2.0**16  # it overflowed and backed off ...
    assert any(b > a for a, b in itertools.pairwise(scales))  # ... and grew again
    for k, ((lg, sg, gg), (lw, sw, gw)) in enumerate(zip(got, want, strict=True)):
        assert np.isfinite(lg), f"step {k}: the loss is {lg} on wgpu"
        assert (sg, gg) == (sw, gw), f"step {k}: scale/good steps {sg, gg} on wgpu, {sw, gw} on numpy"
        assert lg == pytest.approx(lw, rel=2e-3, abs=1e-3), f"step {k}"
        # float16 gradients may round differently (1 ulp) on the GPU (float32 sums in another order)
        for a, b in zip(w_got[k], w_want[k], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=f"step {k}")
    assert want[-1][0] < want[0][0]  # the applied steps train
