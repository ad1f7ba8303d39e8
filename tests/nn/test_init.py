"""Initialisers: PyTorch's fans, gains and bounds, checked statistically, and every layer's default init."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asg import nn
from asg.nn import init


def _stats(a: np.ndarray) -> tuple[float, float, float]:
    a = a.astype(np.float64).ravel()
    std = a.std()
    kurt = ((a - a.mean()) ** 4).mean() / std**4 if std > 0 else 0.0
    return a.mean(), std, kurt


def _p(*shape: int) -> object:
    return nn.Parameter(np.zeros(shape))


UNIFORM_KURTOSIS, NORMAL_KURTOSIS = 1.8, 3.0


@pytest.mark.parametrize(
    ("fill", "shape", "std", "kurtosis", "bound"),
    [
        (lambda t: init.uniform_(t, -0.5, 1.5), (400, 500), 2 / math.sqrt(12), UNIFORM_KURTOSIS, (-0.5, 1.5)),
        (lambda t: init.normal_(t, 0.0, 0.02), (400, 500), 0.02, NORMAL_KURTOSIS, None),
        (
            lambda t: init.xavier_uniform_(t, gain=2.0),
            (300, 500),
            2 * math.sqrt(2 / 800),
            UNIFORM_KURTOSIS,
            2 * math.sqrt(6 / 800),
        ),
        (init.xavier_normal_, (300, 500), math.sqrt(2 / 800), NORMAL_KURTOSIS, None),
        (
            init.glorot_uniform_,
            (64, 32, 3, 3),
            math.sqrt(2 / (9 * 96)),
            UNIFORM_KURTOSIS,
            math.sqrt(6 / (9 * 96)),
        ),
        (
            lambda t: init.kaiming_uniform_(t, nonlinearity="relu"),
            (400, 500),
            math.sqrt(2 / 500),
            UNIFORM_KURTOSIS,
            math.sqrt(6 / 500),
        ),
        (
            lambda t: init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"),
            (400, 500),
            math.sqrt(2 / 400),
            NORMAL_KURTOSIS,
            None,
        ),
        (
            lambda t: init.he_uniform_(t, a=math.sqrt(5)),
            (400, 500),
            1 / math.sqrt(3 * 500),
            UNIFORM_KURTOSIS,
            1 / math.sqrt(500),
        ),
        (
            lambda t: init.kaiming_normal_(t, nonlinearity="tanh"),
            (400, 500),
            5 / 3 / math.sqrt(500),
            NORMAL_KURTOSIS,
            None,
        ),
    ],
)
def test_random_initialisers_have_pytorch_distribution(fill, shape, std, kurtosis, bound) -> None:
    t = fill(_p(*shape))
    values = t.numpy()
    assert values.dtype == np.float32 and values.shape == shape
    _, got_std, got_kurt = _stats(values)
    assert abs(got_std / std - 1) < 0.02, (got_std, std)
    assert abs(got_kurt - kurtosis) < 0.1, got_kurt
    if bound is not None:  # uniform: inside [lo, hi] and reaching both ends
        lo, hi = bound if isinstance(bound, tuple) else (-bound, bound)
        assert values.min() >= lo and values.max() <= hi
        assert values.min() < lo + 0.01 * (hi - lo) and values.max() > hi - 0.01 * (hi - lo)


def test_trunc_normal_is_truncated_at_absolute_bounds() -> None:
    values = init.trunc_normal_(_p(200, 500), mean=0.5, std=1.0, a=-0.5, b=2.0).numpy().astype(np.float64)
    assert values.min() >= -0.5 and values.max() <= 2.0
    # the mean of N(0.5, 1) truncated to [-0.5, 2]: mu + sigma (phi(alpha) - phi(beta)) / Z
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: (1 + math.erf(x / math.sqrt(2))) / 2  # noqa: E731
    alpha, beta = -1.0, 1.5
    expected = 0.5 + (phi(alpha) - phi(beta)) / (cdf(beta) - cdf(alpha))
    assert abs(values.mean() - expected) < 0.01


def test_orthogonal_and_constants() -> None:
    w = init.orthogonal_(_p(20, 50), gain=2.0).numpy().astype(np.float64)
    np.testing.assert_allclose(w @ w.T, 4 * np.eye(20), atol=1e-5)
    w = init.orthogonal_(_p(50, 4, 5)).numpy().reshape(50, 20).astype(np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(20), atol=1e-5)
    assert (init.zeros_(_p(3)).numpy() == 0).all() and (init.ones_(_p(3)).numpy() == 1).all()
    assert (init.constant_(_p(2, 2), 0.25).numpy() == 0.25).all()
    assert (init.eye_(_p(2, 3)).numpy() == np.eye(2, 3)).all()


def test_gain_and_fan_match_pytorch() -> None:
    torch = pytest.importorskip("torch")
    for nl, param in [
        ("linear", None),
        ("relu", None),
        ("tanh", None),
        ("leaky_relu", 0.2),
        ("selu", None),
        ("sigmoid", None),
        ("conv2d", None),
    ]:
        assert init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))
    for shape in [(3, 4), (16, 3, 5, 5), (8, 2, 3)]:
        assert init.calculate_fan_in_and_fan_out(shape) == torch.nn.init._calculate_fan_in_and_fan_out(
            torch.empty(shape)
        )
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(_p(5))


def _torch_layers(torch):
    tn = torch.nn
    return [
        (lambda: nn.Linear(300, 200), lambda: tn.Linear(300, 200)),
        (lambda: nn.Conv2d(16, 32, 3, groups=4), lambda: tn.Conv2d(16, 32, 3, groups=4)),
        (lambda: nn.ConvTranspose2d(16, 32, 3, groups=2), lambda: tn.ConvTranspose2d(16, 32, 3, groups=2)),
        (lambda: nn.Embedding(500, 64, padding_idx=3), lambda: tn.Embedding(500, 64, padding_idx=3)),
        (lambda: nn.BatchNorm2d(8), lambda: tn.BatchNorm2d(8)),
        (lambda: nn.LayerNorm(8), lambda: tn.LayerNorm(8)),
        (lambda: nn.GroupNorm(2, 8), lambda: tn.GroupNorm(2, 8)),
        (lambda: nn.RMSNorm(8), lambda: tn.RMSNorm(8)),
        (lambda: nn.MultiheadAttention(64, 4), lambda: tn.MultiheadAttention(64, 4)),
    ]


def test_default_layer_init_matches_pytorch_statistically() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for ours_fn, theirs_fn in _torch_layers(torch):
        ours, theirs = ours_fn(), theirs_fn()
        mine, want = ours.state_dict(), {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
        assert list(mine) == list(want), type(ours).__name__
        for name, w in want.items():
            got = mine[name]
            label = f"{type(ours).__name__}.{name}"
            assert got.shape == w.shape and got.dtype == w.dtype, label
            if w.size < 100 or w.std() == 0:  # constants (norm weights, zero biases, counters): equal
                if w.std() == 0:
                    np.testing.assert_array_equal(got, w, err_msg=label)
                else:  # small random vectors (biases): same bound
                    assert np.abs(got).max() <= np.abs(w).max() * 1.5 + 1e-6, label
                continue
            _, got_std, got_k = _stats(got)
            _, want_std, want_k = _stats(w)
            assert abs(got_std / want_std - 1) < 0.08, (label, got_std, want_std)
            assert abs(got_k - want_k) < 0.35, (label, got_k, want_k)
            assert np.abs(got).max() <= np.abs(w).max() * 1.02 or want_k > 2.5, label
    emb = nn.Embedding(10, 4, padding_idx=3)
    assert (emb.weight.numpy()[3] == 0).all()
