"""Positional encodings: sinusoidal, learned, RoPE and ALiBi against numpy references, any sequence length."""

from __future__ import annotations

import math

import numpy as np
import pytest

import asg.core as ag
from asg import nn


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_sinusoidal_table_is_the_transformer_formula_and_follows_t() -> None:
    table = nn.sinusoidal_table(50, 8)
    pos, i = 7, 3
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    enc = nn.SinusoidalPositionalEncoding(8, max_len=50)
    f = ag.compile(enc(ag.input("x", ("B", "T", 8))))
    for t in (1, 5, 50):
        a = _x(2, t, 8)
        np.testing.assert_allclose(f(a), a + table[:t], rtol=1e-6)
    assert enc.state_dict() == {}
    with pytest.raises(ag.ShapeError, match="sequence length 51 of x exceeds max_len=50"):
        enc(ag.input("x", (1, 51, 8)))


def test_learned_positional_embedding_trains_its_rows() -> None:
    pe = nn.LearnedPositionalEmbedding(10, 4)
    x = ag.input("x", ("B", "T", 4))
    y = pe(x)
    (g,) = ag.grad(y.sum(), [pe.weight])
    out, grad = ag.compile([y, g])(_x(3, 6, 4))
    np.testing.assert_allclose(out, _x(3, 6, 4) + pe.weight.numpy()[:6], rtol=1e-6)
    assert (grad[:6] == 3).all() and (grad[6:] == 0).all()
    assert list(pe.state_dict()) == ["weight"]


def _rope_ref(x: np.ndarray, base: float = 10000.0, offset: int = 0) -> np.ndarray:
    t, d = x.shape[-2], x.shape[-1]
    inv = base ** (-np.arange(0, d, 2) / d)
    ang = (np.arange(t) + offset)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def test_rope_matches_the_rotation_formula_and_is_relative() -> None:
    rope = nn.RotaryEmbedding(8, max_len=64)
    q, k = ag.input("q", ("B", 2, "T", 8)), ag.input("k", ("B", 2, "T", 8))
    rq, rk = rope(q, k)
    f = ag.compile([rq, rk])
    a, b = _x(1, 2, 9, 8, seed=1), _x(1, 2, 9, 8, seed=2)
    got_q, got_k = f(a, b)
    np.testing.assert_allclose(got_q, _rope_ref(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_k, _rope_ref(b), rtol=1e-5, atol=1e-6)
    # q_m . k_n depends only on m - n: the same vectors at positions (5, 3) and (7, 5) give one score
    v_q, v_k = _x(8, seed=3), _x(8, seed=4)
    seq_q, seq_k = np.zeros((1, 1, 9, 8), np.float32), np.zeros((1, 1, 9, 8), np.float32)
    seq_q[..., 5, :], seq_q[..., 7, :] = v_q, v_q
    seq_k[..., 3, :], seq_k[..., 5, :] = v_k, v_k
    f1 = ag.compile(list(rope(ag.input("q", (1, 1, 9, 8)), ag.input("k", (1, 1, 9, 8)))))
    rq, rk = f1(seq_q, seq_k)
    assert float(rq[0, 0, 5] @ rk[0, 0, 3]) == pytest.approx(float(rq[0, 0, 7] @ rk[0, 0, 5]), rel=1e-5)
    # an offset continues the positions
    q2 = ag.input("q", (1, 2, 2, 8))
    shifted = ag.compile(rope(q2, q2, offset=7)[0])
    np.testing.assert_allclose(shifted(a[..., :2, :]), _rope_ref(a[..., :2, :], offset=7), atol=1e-5)


def test_alibi_slopes_and_bias() -> None:
    assert nn.alibi_slopes(8).tolist() == [2.0 ** -(i + 1) for i in range(8)]
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads (the paper's code)
    np.testing.assert_allclose(nn.alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    x = ag.input("x", ("B", "T"))
    bias = nn.alibi_bias(4, x.shape[1])
    assert bias.shape == (4, "T", "T")
    got = ag.compile(bias, inputs=[x])(np.zeros((1, 5), np.float32))
    j, i = np.meshgrid(np.arange(5), np.arange(5))
    np.testing.assert_allclose(got, nn.alibi_slopes(4)[:, None, None] * (j - i)[None], rtol=1e-6)
    cross = ag.compile(nn.alibi_bias(2, 2, 4))()
    np.testing.assert_allclose(
        cross[0], 2**-4 * np.array([[-2, -1, 0, 1], [-3, -2, -1, 0]]), rtol=1e-6
    )  # 2 heads: 2^-4, 2^-8
    # as an additive mask in attention
    q = ag.input("q", ("B", 4, "T", 8))
    out = nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=bias, is_causal=True)
    assert out.shape == ("B", 4, "T", 8)


def test_rotate_and_alibi_at_explicit_positions() -> None:
    # positions that are not offset + arange(T), as a KV cache's slots are
    positions = np.array([5, 0, 3], "int64")
    x = _x(2, 3, 8)
    q = ag.input("q", (2, 3, 8))
    pos = ag.input("pos", (3,), "int64")
    got = ag.compile(nn.RotaryEmbedding(8, max_len=16).rotate(q, pos), inputs=[q, pos])(x, positions)
    want = np.stack([_rope_ref(x[:, i : i + 1], offset=int(p))[:, 0] for i, p in enumerate(positions)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    qp, kp = np.array([4, 6], "int64"), np.array([0, 2, 6, 7], "int64")
    bias = ag.compile(nn.alibi_bias_at(4, ag.constant(qp), ag.constant(kp)))()
    slopes = nn.alibi_slopes(4)
    np.testing.assert_allclose(
        bias, slopes[:, None, None] * (kp[None, None, :] - qp[None, :, None]), rtol=1e-6
    )
