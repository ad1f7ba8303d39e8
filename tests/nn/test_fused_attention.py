"""asg.nn reaches the fused ``ag.attention`` where its settings allow (bool masks or none, no dropout)
and gives the unfused formula's numbers; float masks and dropout keep the unfused formula."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import torch_or_skip

import asg.core as ag
import asg.core.testing as agt
from asg import nn
from asg.nn import functional as F

RNG = np.random.default_rng(0)


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _unfused(q, k, v, **masks) -> ag.Tensor:
    return ag.matmul(F.attention_weights(q, k, **masks), v)


def _padding(n: int, s: int) -> np.ndarray:
    """(N, S) bool True = padding, every sequence keeps its first key."""
    pad = RNG.random((n, s)) > 0.6
    pad[:, 0] = False
    return pad


MASKS = {
    "none": lambda: {},
    "causal": lambda: {"is_causal": True},
    "bool_attn_mask": lambda: {
        "attn_mask": ag.constant(np.tril(np.ones((5, 5), bool)) | (RNG.random((5, 5)) > 0.5))
    },
    "key_padding": lambda: {"key_padding_mask": ag.constant(_padding(2, 5))},
    "causal_and_padding": lambda: {"is_causal": True, "key_padding_mask": ag.constant(_padding(2, 5))},
    "both_masks": lambda: {
        "attn_mask": ag.constant(np.eye(5, dtype=bool) | (np.arange(5) == 0)),  # key 0 is never padded
        "key_padding_mask": ag.constant(_padding(2, 5)),
    },
}


@pytest.mark.parametrize("name", sorted(MASKS))
def test_sdpa_with_bool_masks_is_the_fused_op_and_equals_the_unfused_formula(name: str) -> None:
    q, k, v = (ag.constant(_x(2, 3, 5, 4)) for _ in range(3))
    masks = MASKS[name]()
    fused = F.scaled_dot_product_attention(q, k, v, **masks)
    assert "attention" in agt.graph_ops(fused) and "softmax" not in agt.graph_ops(fused)
    node = next(n for n in ag.Graph([fused.node]).nodes if n.op == "attention")
    expected = {"key_padding": (2, 1, 1, 5), "causal_and_padding": (2, 1, 1, 5), "both_masks": (2, 1, 5, 5)}
    assert [m.shape for m in node.inputs[3:]] == (
        [expected[name]] if name in expected else [(5, 5)] * ("attn" in name)
    )
    want = _unfused(q, k, v, **masks)
    got, ref = ag.compile([fused, want])()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_float_masks_and_dropout_keep_the_unfused_formula() -> None:
    q = ag.input("q", (2, 3, 5, 4))
    float_mask = F.scaled_dot_product_attention(q, q, q, attn_mask=ag.constant(_x(5, 5)))
    float_padding = F.scaled_dot_product_attention(q, q, q, key_padding_mask=ag.constant(_x(2, 5)))
    dropped = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5, dropout_key=ag.constant(np.int64(3)))
    for out in (float_mask, float_padding, dropped):
        assert "attention" not in agt.graph_ops(out) and "softmax" in agt.graph_ops(out)


def test_broadcasting_leading_dims_keep_the_unfused_formula() -> None:
    q, k = ag.input("q", (2, 3, 5, 4)), ag.input("k", (2, 1, 5, 4))
    out = F.scaled_dot_product_attention(q, k, k)
    assert "attention" not in agt.graph_ops(out) and out.shape == (2, 3, 5, 4)


@pytest.mark.parametrize("training", [False, True])
def test_multihead_attention_without_weights_is_fused_in_eval_and_with_no_dropout(training: bool) -> None:
    torch = torch_or_skip()
    mha = nn.MultiheadAttention(8, 2, dropout=0.25 if training else 0.0, batch_first=True)
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in mha.state_dict().items()})
    theirs.eval()
    mha.train(training)
    x, pad = _x(2, 5, 8), _padding(2, 5)
    xs = ag.constant(x)
    out, weights = mha(xs, xs, xs, key_padding_mask=ag.constant(pad), need_weights=False, is_causal=False)
    assert weights is None
    assert ("attention" in agt.graph_ops(out)) is (not training or mha.dropout == 0)
    if training:
        return  # dropout draws its own mask; parity with PyTorch is in test_attention.py
    want, _ = theirs(*(torch.tensor(x),) * 3, key_padding_mask=torch.tensor(pad), need_weights=False)
    np.testing.assert_allclose(ag.compile(out)(), want.detach().numpy(), rtol=1e-5, atol=1e-5)
