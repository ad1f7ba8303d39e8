"""Attention and transformer layers against PyTorch (weights loaded by name; outputs and gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nn_parity import compare_module, torch_or_skip

import asg.core as ag
import asg.core.testing as agt
from asg import nn
from asg.nn import functional as F


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _sdpa_ref(q, k, v, mask=None, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool), s.shape[-1] - s.shape[-2]), s, -np.inf)
    if mask is not None:
        s = s + mask
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


def test_sdpa_against_numpy_and_finite_differences() -> None:
    q, k, v = agt.rand(2, 3, 4, 8, seed=1), agt.rand(2, 3, 6, 8, seed=2), agt.rand(2, 3, 6, 5, seed=3)
    bias = agt.rand(4, 6, seed=4)
    agt.check_op(F.scaled_dot_product_attention, q, k, v, ref=_sdpa_ref, order=2)
    agt.check_op(lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b), q, k, v, bias,
                 ref=lambda q, k, v, b: _sdpa_ref(q, k, v, b), order=1)  # fmt: skip
    agt.check_op(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v,
                 ref=lambda q, k, v: _sdpa_ref(q, k, v, causal=True), order=1)  # fmt: skip


@pytest.mark.torch
def test_sdpa_masks_match_torch() -> None:
    torch = torch_or_skip()
    q, k, v = _x(2, 3, 5, 8, seed=1), _x(2, 3, 5, 8, seed=2), _x(2, 3, 5, 4, seed=3)
    bool_mask = np.random.default_rng(0).random((5, 5)) > 0.3
    np.fill_diagonal(bool_mask, True)
    fn = ag.compile(
        [
            F.scaled_dot_product_attention(*(ag.constant(a) for a in (q, k, v)), is_causal=True),
            F.scaled_dot_product_attention(
                *(ag.constant(a) for a in (q, k, v)), attn_mask=ag.constant(bool_mask)
            ),
        ]
    )
    causal, masked = fn()
    tq, tk, tv = (torch.tensor(a) for a in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    np.testing.assert_allclose(causal, sdpa(tq, tk, tv, is_causal=True).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        masked, sdpa(tq, tk, tv, attn_mask=torch.tensor(bool_mask)).numpy(), rtol=1e-5, atol=1e-6
    )


def test_causal_mask_works_for_every_sequence_length_with_one_graph() -> None:
    x = ag.input("x", ("B", "T", 8))
    y = F.scaled_dot_product_attention(x, x, x, is_causal=True)
    f = ag.compile(y)
    for t in (1, 3, 7):
        a = _x(2, t, 8, seed=t)
        np.testing.assert_allclose(f(a), _sdpa_ref(a, a, a, causal=True), rtol=1e-5, atol=1e-6)
    # the first position attends only to itself
    a = _x(1, 4, 8)
    np.testing.assert_allclose(f(a)[0, 0], a[0, 0], rtol=1e-6)


MHA_CASES = [
    ("self-seq-first", dict(), "self", {}),
    ("self-batch-first", dict(batch_first=True), "self", {}),
    ("cross", dict(batch_first=True), "cross", {}),
    ("kdim-vdim", dict(batch_first=True, kdim=6, vdim=5), "cross", {}),
    ("no-bias", dict(batch_first=True, bias=False), "self", {}),
    ("key-padding", dict(batch_first=True), "self", {"key_padding_mask": True}),
    ("bool-attn-mask", dict(batch_first=True), "self", {"attn_mask": "bool"}),
    ("float-attn-mask", dict(), "self", {"attn_mask": "float"}),
    ("weights-per-head", dict(batch_first=True), "self", {"average_attn_weights": False}),
]


@pytest.mark.torch
@pytest.mark.parametrize(("name", "kw", "kind", "call"), MHA_CASES, ids=[c[0] for c in MHA_CASES])
@pytest.mark.parametrize("output", [0, 1], ids=["output", "weights"])
def test_multihead_attention_matches_torch(name, kw, kind, call, output) -> None:
    torch = torch_or_skip()
    torch.manual_seed(0)
    e, heads, n, l, s = 16, 4, 3, 5, 7
    ours, theirs = nn.MultiheadAttention(e, heads, **kw), torch.nn.MultiheadAttention(e, heads, **kw)
    bf = kw.get("batch_first", False)
    shape = (lambda t: (n, t, e)) if bf else (lambda t: (t, n, e))
    q = _x(*shape(l), seed=1)
    if kind == "self":
        arrays = [q]
    else:
        kv_len = s
        k = _x(*((n, kv_len, kw.get("kdim", e)) if bf else (kv_len, n, kw.get("kdim", e))), seed=2)
        v = _x(*((n, kv_len, kw.get("vdim", e)) if bf else (kv_len, n, kw.get("vdim", e))), seed=3)
        arrays = [q, k, v]
    s_len = l if kind == "self" else s
    extra = {}
    if call.get("key_padding_mask"):
        pad = np.zeros((n, s_len), bool)
        pad[0, -2:] = True
        pad[2, -1] = True
        extra["key_padding_mask"] = pad
    if call.get("attn_mask") == "bool":
        m = np.random.default_rng(5).random((l, s_len)) > 0.6
        np.fill_diagonal(m, False)
        extra["attn_mask"] = m
    if call.get("attn_mask") == "float":
        extra["attn_mask"] = _x(l, s_len, seed=6)
    average = call.get("average_attn_weights", True)

    def ours_call(m, *xs):
        q, k, v = (xs[0], xs[0], xs[0]) if len(xs) == 1 else xs[:3]
        masks = {k_: ag.constant(v_) for k_, v_ in extra.items()}
        return m(q, k, v, need_weights=True, average_attn_weights=average, **masks)[output]

    def theirs_call(m, *xs):
        q, k, v = (xs[0], xs[0], xs[0]) if len(xs) == 1 else xs[:3]
        masks = {k_: torch.tensor(v_) for k_, v_ in extra.items()}
        return m(q, k, v, need_weights=True, average_attn_weights=average, **masks)[output]

    compare_module(ours, theirs, *arrays, call_ours=ours_call, call_theirs=theirs_call, rtol=1e-5, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
def test_transformer_encoder_layer_matches_torch(norm_first: bool, batch_first: bool) -> None:
    torch = torch_or_skip()
    torch.manual_seed(1)
    kw = dict(
        dim_feedforward=24, dropout=0.0, batch_first=batch_first, norm_first=norm_first, activation="gelu"
    )
    ours, theirs = nn.TransformerEncoderLayer(16, 4, **kw), torch.nn.TransformerEncoderLayer(16, 4, **kw)
    src = _x(*((2, 6, 16) if batch_first else (6, 2, 16)))
    mask = np.triu(np.ones((6, 6), bool), 1)  # True = not allowed, as PyTorch
    pad = np.zeros((2, 6), bool)
    pad[1, -2:] = True
    compare_module(
        ours,
        theirs,
        src,
        call_ours=lambda m, x: m(x, src_mask=ag.constant(mask), src_key_padding_mask=ag.constant(pad)),
        call_theirs=lambda m, x: m(x, src_mask=torch.tensor(mask), src_key_padding_mask=torch.tensor(pad)),
        rtol=1e-5,
        atol=2e-5,
    )


@pytest.mark.torch
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_decoder_layer_matches_torch(norm_first: bool) -> None:
    torch = torch_or_skip()
    torch.manual_seed(2)
    kw = dict(dim_feedforward=20, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours, theirs = nn.TransformerDecoderLayer(16, 2, **kw), torch.nn.TransformerDecoderLayer(16, 2, **kw)
    tgt, memory = _x(2, 5, 16, seed=1), _x(2, 7, 16, seed=2)
    mask = np.triu(np.full((5, 5), -np.inf, np.float32), 1)
    compare_module(
        ours,
        theirs,
        tgt,
        memory,
        call_ours=lambda m, t, mem: m(t, mem, tgt_mask=ag.constant(mask)),
        call_theirs=lambda m, t, mem: m(t, mem, tgt_mask=torch.tensor(mask)),
        rtol=1e-5,
        atol=2e-5,
    )


def test_attention_names_and_symbolic_shapes() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    assert [n for n, _ in layer.named_parameters()] == [
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    layer.eval()
    y = layer(ag.input("x", ("B", "T", 8)), is_causal=True)
    assert y.shape == ("B", "T", 8)
    f = ag.compile(y)
    assert f(_x(3, 4, 8)).shape == (3, 4, 8) and f(_x(1, 9, 8)).shape == (1, 9, 8)
    ff = nn.FeedForward(8, 32, activation="gelu")
    assert ff(ag.input("x", ("B", 8))).shape == ("B", 8)
    with pytest.raises(ValueError, match="embed_dim=10 must be divisible by num_heads=4"):
        nn.MultiheadAttention(10, 4)


@pytest.mark.parametrize("batch", [1, 3])
def test_kv_cache_incremental_decoding_equals_the_full_causal_pass(batch: int) -> None:
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    full = ag.compile(mha(*(ag.input("x", ("B", "T", 16)),) * 3, is_causal=True, need_weights=False)[0])
    cache = nn.KVCache(batch, 4, max_len=12, head_dim=4)
    x_new = ag.input("x_new", (batch, "T", 16))
    with nn.capture_updates() as updates:
        out, _ = mha(x_new, x_new, x_new, kv_cache=cache, need_weights=False)
    step = ag.compile(out, updates=updates)
    seq = _x(batch, 10, 16, seed=batch)
    want = full(seq)
    pieces = [step(seq[:, :4])]  # a 4-token prompt, then one token at a time
    pieces += [step(seq[:, t : t + 1]) for t in range(4, 10)]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), want, rtol=1e-5, atol=1e-6)
    assert cache.length == 10
    assert step.num_plans == 2  # one plan for the prompt length, one for single tokens
    cache.reset()
    np.testing.assert_allclose(step(seq[:, :4]), want[:, :4], rtol=1e-5, atol=1e-6)


def test_kv_cache_errors() -> None:
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    cache = nn.KVCache(2, 2, 5, 4)
    with pytest.raises(ag.ShapeError, match="batch size 3 does not match the cache's 2"):
        mha(*(ag.input("x", (3, 1, 8)),) * 3, kv_cache=cache)
    with pytest.raises(ValueError, match="attn_mask and key_padding_mask are not supported"):
        x = ag.input("x", (2, 1, 8))
        mha(x, x, x, kv_cache=cache, key_padding_mask=ag.input("m", (2, 1), "bool"))
