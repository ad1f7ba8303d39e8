"""Keyed random numbers and dropout: the documented algorithm, determinism, statistics, gradients, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import asg.core as ag
from asg.core.errors import ShapeError
from asg.core.testing import rand
from asg.core.testing.references import fold_in as fold_in_spec
from asg.core.testing.references import random_word as word

# The spec in plain Python ints (word, fold_in_spec) is asg.core.testing.references'.


def run(tensor: ag.Tensor, *feeds):
    return ag.compile(tensor)(*feeds)


def key_input(name: str = "key") -> ag.Tensor:
    return ag.input(name, (), "int64")


# ----------------------------------------------------------------------------- the documented algorithm
def test_streams_and_fold_in_follow_the_documented_algorithm_bit_for_bit():
    key = -1234567890123
    uniform = run(ag.random_uniform(key, (5,)))
    want = np.array([(word(key, i) >> 8) / 2**24 for i in range(5)], np.float32)
    np.testing.assert_array_equal(uniform, want)

    mask = run(ag.bernoulli(key, 0.3, (6,)))
    threshold = round(0.3 * 2**32)
    assert mask.tolist() == [word(key, i) < threshold for i in range(6)]

    u64 = run(ag.random_uniform(key, (2,), "float64"))
    for i in range(2):
        a, b = word(key, 2 * i) >> 5, word(key, 2 * i + 1) >> 6
        assert u64[i] == (a * 67108864.0 + b) / 9007199254740992.0

    k = key_input()
    folded = ag.compile([ag.fold_in(k, 0), ag.fold_in(k, 7), ag.fold_in(k, -3)])(np.int64(42))
    assert [int(v) for v in folded] == [fold_in_spec(42, 0), fold_in_spec(42, 7), fold_in_spec(42, -3)]


def test_fold_in_broadcasts_over_arrays_of_keys_and_data():
    keys, data = ag.input("keys", (3, 1), "int64"), ag.input("data", (4,), "int64")
    out = ag.compile(ag.fold_in(keys, data))(np.array([[1], [2], [3]]), np.arange(4))
    assert out.shape == (3, 4) and out.dtype == np.int64
    assert out[1, 2] == fold_in_spec(2, 2)
    assert len(set(out.ravel().tolist())) == 12


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize(
    "make",
    [
        lambda k: ag.random_uniform(k, (64,)),
        lambda k: ag.random_normal(k, (64,), "float64"),
        lambda k: ag.bernoulli(k, 0.5, (64,)),
    ],
)
def test_same_key_same_numbers_different_key_different_numbers(make):
    key = key_input()
    f, g = ag.compile(make(key)), ag.compile(make(key))  # two separately built graphs
    a, b = f(np.int64(5)), g(np.int64(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, f(np.int64(5)))
    assert (a != f(np.int64(6))).mean() > 0.3


def test_smaller_shape_draws_a_prefix_of_the_same_stream():
    big = run(ag.random_normal(3, (4, 5)))
    small = run(ag.random_normal(3, (2, 5)))
    np.testing.assert_array_equal(small, big[:2])


def test_split_key_gives_distinct_uncorrelated_streams():
    keys = ag.split_key(11, 3)
    draws = ag.compile([ag.random_normal(k, (4000,)) for k in keys])()
    assert len({int(v) for v in ag.compile(keys)()}) == 3
    corr = np.corrcoef(np.stack(draws))
    assert np.all(np.abs(corr[np.triu_indices(3, 1)]) < 0.06)


# ----------------------------------------------------------------------------- distributions
def test_uniform_statistics_and_range():
    u = run(ag.random_uniform(0, (20000,), low=-2.0, high=3.0))
    assert u.dtype == np.float32 and u.min() >= -2.0 and u.max() < 3.0
    assert abs(u.mean() - 0.5) < 0.05
    assert abs(u.var() - 25 / 12) < 0.08
    counts = np.histogram(u, bins=10, range=(-2, 3))[0]
    assert np.all(np.abs(counts - 2000) < 5 * math.sqrt(2000))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_statistics(dtype):
    z = run(ag.random_normal(1, (20000,), dtype))
    assert z.dtype == np.dtype(dtype) and np.isfinite(z).all()
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 0.015
    assert abs(np.mean(z**4) - 3) < 0.2  # kurtosis of a normal


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_bernoulli_fraction(p):
    m = run(ag.bernoulli(2, p, (20000,), "float32"))
    assert m.dtype == np.float32 and set(np.unique(m).tolist()) <= {0.0, 1.0}
    assert abs(m.mean() - p) < 0.015


# ----------------------------------------------------------------------------- dropout
def test_dropout_zeroes_about_p_keeps_the_mean_and_scales_survivors():
    p = 0.3
    x = ag.input("x", ("B", 500))
    f = ag.compile(ag.dropout(x, p, key_input()))
    data = rand(40, 500, low=0.5, high=1.5).astype(np.float32)
    y = f(data, np.int64(9))
    dropped = y == 0
    assert abs(dropped.mean() - p) < 0.01
    np.testing.assert_allclose(y[~dropped], data[~dropped] / (1 - p), rtol=1e-6)
    assert abs(y.mean() / data.mean() - 1) < 0.01


def test_dropout_gradient_is_the_mask_over_keep_probability():
    p = 0.25
    x, key = ag.input("x", (8, 16)), key_input()
    y = ag.dropout(x, p, key)
    (dx,) = ag.grad(y.sum(), [x])
    out, grad = ag.compile([y, dx])(np.ones((8, 16), "float32"), np.int64(4))
    mask = out != 0
    np.testing.assert_allclose(grad, mask / (1 - p), rtol=1e-6)
    # and the grad check of the (linear in x) dropout to second order
    ag.check_grads(lambda x: ag.dropout(x * x, p, ag.constant(np.int64(4))), [rand(3, 4)], order=2)


def test_dropout_is_deterministic_per_key_and_varies_with_it():
    x, key = ag.input("x", (10, 10)), key_input()
    f = ag.compile(ag.dropout(x, 0.5, key))
    ones = np.ones((10, 10), "float32")
    np.testing.assert_array_equal(f(ones, np.int64(1)), f(ones, np.int64(1)))
    assert (f(ones, np.int64(1)) != f(ones, np.int64(2))).any()


def test_dropout_identity_when_not_training_or_p_zero():
    x = ag.input("x", (3,))
    assert ag.dropout(x, 0.5, key_input(), training=False) is x
    assert ag.dropout(x, 0.0) is x


def test_dropout_on_symbolic_batch_and_smaller_last_batch():
    x, key = ag.input("x", ("B", 6)), key_input()
    f = ag.compile(ag.dropout(x, 0.5, key))
    full, last = f(np.ones((4, 6), "float32"), np.int64(0)), f(np.ones((2, 6), "float32"), np.int64(0))
    np.testing.assert_array_equal(last, full[:2])
    assert f.num_plans == 2


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, "0.5", True])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\)"):
        ag.dropout(ag.input("x", (3,)), p, key_input())


def test_dropout_in_training_needs_a_key():
    with pytest.raises(ValueError, match=r"dropout: h \(B, 4\): training with p=0.5 needs a key"):
        ag.dropout(ag.input("h", ("B", 4)), 0.5)


# ----------------------------------------------------------------------------- RNG
def test_rng_gives_each_call_site_and_each_step_new_masks_reproducibly():
    def train(seed: int) -> list[np.ndarray]:
        rng = ag.RNG(seed)
        x = ag.input("x", (4, 50))
        a = ag.dropout(x, 0.5, rng.next_key())
        b = ag.dropout(x, 0.5, rng.next_key())
        step = ag.compile([a, b], updates=rng.updates())
        ones = np.ones((4, 50), "float32")
        outs = [m for _ in range(3) for m in step(ones)]
        assert int(rng.counter.numpy()) == 3
        return outs

    first = train(7)
    a0, b0, a1 = first[0], first[1], first[2]
    assert (a0 != b0).any(), "two call sites must get different masks"
    assert (a0 != a1).any(), "each step must draw a new mask"
    for want, got in zip(first, train(7), strict=True):
        np.testing.assert_array_equal(want, got)
    assert any((w != g).any() for w, g in zip(first, train(8), strict=True))


# ----------------------------------------------------------------------------- errors
def test_random_ops_reject_bad_keys_shapes_and_parameters():
    with pytest.raises(
        ShapeError,
        match=r"random_uniform: k \(\): the key must be an int64 scalar, got "
        r"float32 \(\)",
    ):
        ag.random_uniform(ag.input("k", ()), (3,))
    with pytest.raises(ShapeError, match=r"the key must be an int64 scalar, got int64 \(2,\)"):
        ag.random_normal(ag.input("keys", (2,), "int64"), (3,))
    with pytest.raises(ShapeError, match=r"low=1.0 must be less than high=0.0"):
        ag.random_uniform(0, (3,), low=1.0, high=0.0)
    with pytest.raises(ShapeError, match=r"dtype must be floating point, got int32"):
        ag.random_normal(0, (3,), "int32")
    with pytest.raises(ShapeError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        ag.bernoulli(0, 1.5, (3,))
    with pytest.raises(ShapeError, match=r"negative dimension in shape \(-2,\)"):
        ag.random_uniform(0, (-2,))
    with pytest.raises(ShapeError, match=r"fold_in: .*data must be an integer tensor, got float32"):
        ag.fold_in(0, ag.input("d", ()))


def test_json_round_trip_of_a_dropout_graph_draws_the_same_mask():
    x, key = ag.input("x", ("B", 8)), key_input()
    y = ag.dropout(x, 0.5, ag.fold_in(key, 3))
    loaded = ag.Graph.from_json(ag.Graph([y.node]).to_json())
    data, k = np.ones((4, 8), "float32"), np.int64(12)
    want = ag.compile(y, inputs=[x, key])(data, k)
    got = ag.compile([ag.Tensor(n) for n in loaded.outputs], inputs=[ag.Tensor(n) for n in loaded.inputs])(
        data, k
    )
    np.testing.assert_array_equal(got[0], want)


def test_docstring_examples_run():
    import doctest

    from asg.core.ops import random

    result = doctest.testmod(random, extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0
