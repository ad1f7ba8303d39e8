"""float16 on wgpu (the shader-f16 feature): f16 storage, f32 arithmetic, rounding where numpy rounds."""

import numpy as np
import pytest

import asg.core as ag
from asg.gpu.device import get_device

if "shader-f16" not in get_device().features:
    pytest.skip("the adapter has no shader-f16", allow_module_level=True)

RNG = np.random.default_rng(0)
HALF_ULP = 2.0**-10  # float16 epsilon: one unit in the last place, relative


def _both(fn, *arrays):
    xs = [ag.input(f"x{i}", a.shape, a.dtype.name) for i, a in enumerate(arrays)]
    return ag.compile(fn(*xs), inputs=xs, backend="wgpu")(*arrays), ag.compile(fn(*xs), inputs=xs)(*arrays)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x * 2.0 + 1.0,
        lambda x: ag.exp(x) - x,
        lambda x: ag.gelu(x, approximate="tanh"),
        lambda x: ag.softmax(x, axis=-1),
        lambda x: ag.layer_norm(x, (16,)),
        lambda x: x.sum(axis=0),
        lambda x: x @ x.T,
        lambda x: x.astype("float32").astype("float16") * 3.0,
    ],
    ids=["affine", "exp", "gelu", "softmax", "layer_norm", "sum", "matmul", "casts"],
)
def test_float16_ops_match_numpy_within_one_ulp(fn):
    x = RNG.standard_normal((8, 16)).astype("float16")
    got, want = _both(fn, x)
    assert got.dtype == want.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2 * HALF_ULP, atol=2e-3)


def test_float16_mean_of_many_ones_accumulates_in_float32():
    got, want = _both(lambda x: x.mean(), np.ones(100_000, "float16"))
    assert float(got) == float(want) == 1.0


def test_a_fused_cast_round_trip_rounds_to_float16():
    x = RNG.standard_normal((4, 6)).astype("float32")
    got, want = _both(lambda a: a.astype("float16").astype("float32") * 1.0, x)
    np.testing.assert_array_equal(got, want)
