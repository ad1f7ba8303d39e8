"""int64 state on wgpu, which has no 64-bit integers: counters are stored as int32 and read back as int64.

asg-core's narrowing pass runs an int64 parameter that is not a random key (a step counter, BatchNorm's
``num_batches_tracked``) as int32; the backend's storage keeps an int32 copy (``asg.core.storage``).
These tests check the values against the numpy backend, where everything stays int64.
"""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg import nn
from asg.core.backends import get_backend

X = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")


def test_a_counter_updated_each_step_matches_numpy_and_reads_back_as_int64(tmp_path, counter_step):
    want, want_w, want_n = counter_step("numpy")
    f, w, n = counter_step("wgpu")
    for step in range(3):
        (loss, twice), (want_loss, want_twice) = f(X), want(X)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        assert twice.tolist() == want_twice.tolist() == 2 * (5 + step)  # int32 (an int64 output narrowed)
        value = n.numpy()
        assert value.dtype.name == "int64" and int(value) == int(want_n.numpy()) == 6 + step
    assert get_backend("wgpu").storage.stored_dtype(n.node.data) == "int32"
    np.testing.assert_allclose(w.numpy(), want_w.numpy(), rtol=1e-5)
    assert f.state_dict()["n"].dtype.name == "int64"
    f.save(tmp_path / "step.asg")
    assert ag.load(tmp_path / "step.asg").state_dict()["n"].dtype.name == "int64"
    n.assign(np.array(100))  # written through as int32
    assert f(X)[1].tolist() == 200 and int(n.numpy()) == 101


def test_the_counter_moves_between_numpy_and_wgpu(counter_step):
    f, _, n = counter_step("numpy")
    f(X)
    g = f.to("wgpu")  # uploaded before any wgpu plan: the first plan re-uploads it as int32
    assert g(X)[1].tolist() == 12 and g(X)[1].tolist() == 14
    assert f(X)[1].tolist() == 16 and g(X)[1].tolist() == 18
    assert n.numpy().dtype.name == "int64" and int(n.numpy()) == 10


def test_a_counter_outside_int32_is_an_error_naming_it(counter_step):
    f, _, n = counter_step("wgpu", start=2**31)
    with pytest.raises(ag.UnsupportedDTypeError, match=r"parameter 'n' \(int64\) is stored as int32"):
        f(X)
    n.assign(np.array(1))
    assert f(X)[1].tolist() == 2


def test_a_random_key_counter_stays_int64_beside_a_narrowed_counter():
    def build(backend: str):
        rng = ag.RNG(seed=11)
        n = ag.state(np.array(0, "int64"), name="n")
        x = ag.input("x", ("B", 3))
        y = ag.dropout(x, 0.5, rng.next_key()) + n.astype("float32")
        f = ag.compile(y, inputs=[x], updates={**rng.updates(), n: n + 1}, backend=backend)
        return f, n

    want, _ = build("numpy")
    f, n = build("wgpu")
    for _ in range(3):  # a new dropout mask every step, the same as numpy's
        np.testing.assert_allclose(f(X), want(X), rtol=1e-6)
    storage = get_backend("wgpu").storage
    (counter,) = [p for p in f.graph.parameters if p.data is not n.node.data]
    assert storage.stored_dtype(counter.data) == "int64" and storage.stored_dtype(n.node.data) == "int32"
    assert int(n.numpy()) == 3


def test_batchnorm_trains_with_its_counter_through_compile_train_step():
    def train(backend: str) -> dict[str, np.ndarray]:
        nn.init.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())
        opt = nn.optim.SGD(model.parameters(), lr=0.1)
        step = nn.compile_train_step(
            model,
            lambda out, y: ((out - y) ** 2).mean(),
            opt,
            [(("B", 2, 4, 4), "float32"), (("B", 48), "float32")],
            backend=backend,
        )
        rng = np.random.default_rng(1)
        for _ in range(2):
            step(
                rng.standard_normal((2, 2, 4, 4)).astype("float32"),
                rng.standard_normal((2, 48)).astype("float32"),
            )
        return model.state_dict()

    want, got = train("numpy"), train("wgpu")
    assert got.keys() == want.keys()
    assert got["1.num_batches_tracked"].dtype.name == "int64" and int(got["1.num_batches_tracked"]) == 2
    for key, value in got.items():
        assert value.dtype == want[key].dtype, key
        np.testing.assert_allclose(value, want[key], rtol=1e-4, atol=1e-5, err_msg=key)
