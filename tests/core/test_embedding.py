"""linear and embedding: parity with numpy and PyTorch, gradients (scatter-add, padding_idx), errors."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.errors import ExecutionError, ShapeError
from asg.core.testing import check_op, rand

try:  # PyTorch is the reference where installed; check_op skips its torch part without it
    import torch

    F = torch.nn.functional
except ImportError:  # pragma: no cover - depends on the environment
    torch = F = None


# ----------------------------------------------------------------------------- linear
# Parity of linear (bias or not, 1-d or 3-d input) and embedding: asg.core.testing.OP_CASES.


def test_linear_symbolic_batch():
    x = ag.input("x", ("B", 4))
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    f = ag.compile(ag.linear(x, ag.constant(w), ag.constant(np.ones(3, np.float32))))
    data = rand(5, 4).astype(np.float32)
    np.testing.assert_allclose(f(data), data @ w.T + 1, rtol=1e-5)


def test_linear_errors():
    x = ag.input("x", ("B", 784))
    w = ag.parameter(np.zeros((10, 128), "float32"), name="fc.weight")
    with pytest.raises(
        ShapeError,
        match=r"^linear: input x \(B, 784\) float32, weight fc.weight \(10, 128\) float32: the input has "
        r"784 features but the weight expects 128 \(weight is \(out_features, in_features\)\)$",
    ):
        ag.linear(x, w)
    with pytest.raises(ShapeError, match=r"weight must be 2-d"):
        ag.linear(x, ag.input("v", (784,)))
    w_ok = ag.parameter(np.zeros((10, 784), "float32"), name="w")
    with pytest.raises(ShapeError, match=r"float32: bias b \(7,\) float32 must have shape \(10,\)$"):
        ag.linear(x, w_ok, ag.parameter(np.zeros(7, "float32"), name="b"))


# ----------------------------------------------------------------------------- embedding


def test_embedding_gradient_is_np_add_at_of_the_cotangent():
    rng = np.random.default_rng(6)
    tokens = ag.input("tokens", ("B", "T"), "int64")
    weight = ag.parameter(rng.standard_normal((7, 4)).astype(np.float32), name="wte")
    cot = ag.input("cot", ("B", "T", 4))
    (dw,) = ag.grad((ag.embedding(tokens, weight) * cot).sum(), [weight])
    f = ag.compile(dw, inputs=[tokens, cot])
    for batch in (3, 2):
        idx = rng.integers(0, 7, size=(batch, 5))
        c = rng.standard_normal((batch, 5, 4)).astype(np.float32)
        want = np.zeros((7, 4), np.float32)
        np.add.at(want, idx.reshape(-1), c.reshape(-1, 4))
        np.testing.assert_allclose(f(idx, c), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding_idx", [2, -1])
def test_embedding_padding_idx_row_gets_no_gradient_like_torch(padding_idx):
    idx = np.array([[2, 0, 4], [4, 2, 1]], dtype=np.int64)
    w = rand(5, 3, seed=7)
    # order=0: the padding row's zero gradient is by definition, not the derivative finite differences see
    check_op(
        lambda idx, w: ag.embedding(idx, w, padding_idx=padding_idx),
        idx,
        w,
        ref=lambda idx, w: w[idx],
        torch_fn=lambda idx, w: F.embedding(idx, w, padding_idx=padding_idx),
        order=0,
    )
    (dw,) = ag.grad(
        ag.embedding(ag.constant(idx), weight := ag.input("w", (5, 3)), padding_idx).sum(), [weight]
    )
    got = ag.compile(dw, inputs=[weight])(w.astype(np.float32))
    assert np.all(got[padding_idx] == 0) and np.all(got[0] == 1) and np.all(got[1] == 1)


def test_embedding_errors():
    w = ag.parameter(np.zeros((5, 3), "float32"), name="wte")
    with pytest.raises(
        ag.DTypeError,
        match=r"embedding: ids f \(2,\) float32, weight wte \(5, 3\) float32: indices must be int32 or "
        r"int64, got float32",
    ):
        ag.embedding(ag.input("f", (2,)), w)
    with pytest.raises(ShapeError, match=r"weight must be 2-d \(num_embeddings, embedding_dim\)"):
        ag.embedding(ag.input("i", (2,), "int64"), ag.input("v", (5,)))
    with pytest.raises(ValueError, match=r"padding_idx 5 is out of range for 5 embeddings"):
        ag.embedding(ag.input("i", (2,), "int64"), w, padding_idx=5)
    f = ag.compile(ag.embedding(ag.input("tokens", (2,), "int64"), w))
    with pytest.raises(
        ExecutionError,
        match=r"IndexError: embedding: id 9 is out of range for axis 0 of size 5 \(valid: 0 to 4\)",
    ):
        f(np.array([1, 9]))


def test_embedding_refuses_negative_ids_as_torch_does():
    # Regression: id -1 used to read the last row silently (numpy's take); PyTorch raises.
    w = rand(5, 3, seed=7)
    f = ag.compile(ag.embedding(ag.input("tokens", ("T",), "int64"), ag.constant(w)))
    np.testing.assert_array_equal(f(np.array([4, 0])), w[[4, 0]])
    with pytest.raises(
        ExecutionError, match=r"embedding: id -1 is out of range for axis 0 of size 5 \(valid: 0 to 4\)"
    ):
        f(np.array([2, -1]))
    if torch is not None:
        with pytest.raises(IndexError):
            F.embedding(torch.tensor([2, -1]), torch.tensor(w))


def test_docstring_examples_run():
    import doctest

    from asg.core.ops import layers

    result = doctest.testmod(layers, extraglobs={"np": np})
    assert result.attempted > 0 and result.failed == 0
