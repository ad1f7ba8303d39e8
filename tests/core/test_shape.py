"""Shape and indexing ops: reshape, transpose, broadcast, slicing, concat, stack, pad, gathers, one_hot."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import check_op, rand, run, torch_or_skip

torch = torch_or_skip

X = rand(2, 3, 4, seed=40)


# Parity of the view ops (reshape, flatten, transpose, permute, swapaxes, squeeze, unsqueeze), broadcast_to,
# expand, sum_to, basic and integer-array getitem, concat, stack, pad, index_select and take_along_axis:
# asg.core.testing.OP_CASES, run by test_op_coverage.py.


# ----------------------------------------------------------------------------- getitem
def test_getitem_with_a_tensor_index_is_index_select():
    x = ag.input("x", (4, 3), "float64")
    idx = ag.input("idx", (5,), "int64")
    y = x[idx]
    assert y.node.op == "index_select" and y.shape == (5, 3)
    (gx,) = ag.grad(y.sum(), [x])
    data, rows = rand(4, 3), np.array([3, 3, 0, 3, 1])
    value, grad_x = ag.compile([y, gx])(data, rows)
    np.testing.assert_array_equal(value, data[rows])
    np.testing.assert_array_equal(grad_x, np.array([[1.0] * 3, [1.0] * 3, [0.0] * 3, [3.0] * 3]))


def test_getitem_with_a_fixed_boolean_mask_selects_like_numpy():
    x = rand(4, 3, seed=45)
    mask = np.array([True, False, True, True])
    check_op(lambda v: v[mask], x, ref=lambda v: v[mask], torch_fn=lambda t: t[torch.tensor(mask)])
    check_op(lambda v: v[:, [False, True, True]], x, ref=lambda v: v[:, [False, True, True]], order=1)
    xs = ag.input("x", (4, 3))
    with pytest.raises(
        IndexError, match=r"boolean index of shape \(3,\) does not match axis 0 of x \(4, 3\)"
    ):
        xs[np.array([True, False, True])]
    with pytest.raises(IndexError, match=r"x\[mask\]: a boolean mask tensor gives a data-dependent shape"):
        xs[xs[:, 0] > 0]
    with pytest.raises(IndexError, match="index arrays must hold integers, got float64"):
        xs[np.array([0.0, 1.0])]


def test_getitem_errors():
    x = ag.input("x", (2, 3))
    with pytest.raises(IndexError, match=r"index 3 is out of range for axis 1 of size 3 \(x\)"):
        x[0, 3]
    with pytest.raises(IndexError, match=r"index -3 is out of range for axis 0 of size 2 \(x\)"):
        x[-3]
    with pytest.raises(IndexError, match=r"too many indices \(3\) for x \(2, 3\)"):
        x[0, 0, 0]
    with pytest.raises(IndexError, match="negative or zero step"):
        x[::-1]
    with pytest.raises(IndexError, match="only one integer index array"):
        x[[0, 1], [0, 1]]
    with pytest.raises(IndexError, match="only be combined with full slices"):
        x[0, [0, 1]]
    with pytest.raises(IndexError, match=r"unsupported index 1\.5"):
        x[1.5]


def test_getitem_symbolic_dims():
    x = ag.input("x", ("B", 5), "float64")
    cases = {
        "tail": (x[1:], lambda a: a[1:]),
        "head_neg": (x[:-1], lambda a: a[:-1]),
        "stride": (x[::2, 1], lambda a: a[::2, 1]),
        "last": (x[-1], lambda a: a[-1]),
        "window": (x[-3:-1], lambda a: a[-3:-1]),
    }
    f = ag.compile([v for v, _ in cases.values()])
    for batch in (4, 7):
        data = rand(batch, 5, seed=batch)
        for got, (_, ref) in zip(f(data), cases.values(), strict=True):
            np.testing.assert_array_equal(got, ref(data))


# ----------------------------------------------------------------------------- concat, stack, pad
def test_concat_single_and_symbolic():
    x = ag.input("x", (2, 3))
    assert ag.concat([x]) is x
    a, b = ag.input("a", ("B", 3), "float64"), ag.input("b", ("T", 3), "float64")
    y = ag.concat([a, b, a], axis=0)
    assert y.shape[1] == 3 and isinstance(y.shape[0], str)
    (ga, gb) = ag.grad((y * y).sum(), [a, b])
    f = ag.compile([y, ga, gb])
    for n, m in ((2, 3), (4, 1)):
        da, db = rand(n, 3, seed=n), rand(m, 3, seed=m + 10)
        value, grad_a, grad_b = f(da, db)
        np.testing.assert_array_equal(value, np.concatenate([da, db, da]))
        np.testing.assert_allclose(grad_a, 4 * da)
        np.testing.assert_allclose(grad_b, 2 * db)


def test_concat_and_stack_errors():
    a, b = ag.input("a", (2, 3)), ag.input("b", (2, 4))
    with pytest.raises(
        ag.ShapeError,
        match=r"concat: a \(2, 3\), b \(2, 4\): input 1 has size 4 on axis 1, input 0 "
        r"has 3 \(only axis 0 may differ\)",
    ):
        ag.concat([a, b], axis=0)
    with pytest.raises(ag.ShapeError, match=r"concat: .*input 1 has 1 dimensions, input 0 has 2"):
        ag.concat([a, ag.input("c", (3,))], axis=0)
    with pytest.raises(
        ag.ShapeError, match=r"concat: .*all inputs must have one dtype, got float32 and float64"
    ):
        ag.concat([a, ag.input("d", (2, 3), "float64")])
    with pytest.raises(ValueError, match="concat needs at least one tensor"):
        ag.concat([])
    with pytest.raises(ValueError, match="stack needs at least one tensor"):
        ag.stack([])
    with pytest.raises(ag.ShapeError, match=r"concat: .*input 1 has size 4 on axis 2"):
        ag.stack([a, b])


def test_pad_errors():
    x = ag.input("x", (2, 3))
    with pytest.raises(ag.ShapeError, match=r"pad: x \(2, 3\): pad_width has 1 entries for a 2-d tensor"):
        ag.pad(x, [(1, 1)])
    with pytest.raises(ag.ShapeError, match=r"pad: x \(2, 3\): padding must be non-negative"):
        ag.pad(x, [(1, 1), (-1, 0)])


# ----------------------------------------------------------------------------- gathers
def test_index_select_with_int32_indices_and_big_scatter():
    # More indices than rows takes the sorted reduceat path of the scatter-add.
    rows = np.random.default_rng(0).integers(0, 5, size=40).astype(np.int32)
    x, i = ag.input("x", (5, 3), "float64"), ag.input("i", (40,), "int32")
    (gx,) = ag.grad(ag.index_select(x, i).sum() * 2.0, [x])
    got = ag.compile(gx, inputs=[x, i])(rand(5, 3), rows)
    np.testing.assert_allclose(got, 2.0 * np.bincount(rows, minlength=5)[:, None] * np.ones((1, 3)))


def test_index_select_rejects_float_indices():
    with pytest.raises(
        ag.ShapeError, match=r"index_select: x \(3,\), i \(2,\): indices must be int32 or int64, got float32"
    ):
        ag.index_select(ag.input("x", (3,)), ag.input("i", (2,)))


def test_take_along_axis_errors():
    x = ag.input("x", (2, 3))
    with pytest.raises(
        ag.ShapeError, match=r"take_along_axis: .*indices must have as many dimensions as the input \(2\)"
    ):
        ag.take_along_axis(x, np.array([0, 1]), 1)


def test_one_hot():
    idx = np.array([[0, 2], [1, 1]])
    got = run(lambda i: ag.one_hot(i, 3), idx)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.eye(3)[idx])
    np.testing.assert_array_equal(got, torch.nn.functional.one_hot(torch.tensor(idx), 3).numpy())
    assert run(lambda i: ag.one_hot(i, 4, "int32"), np.array([3], np.int32)).dtype == np.int32
    with pytest.raises(ag.ShapeError, match=r"one_hot: c \(2,\): num_classes must be positive, got 0"):
        ag.one_hot(ag.input("c", (2,), "int64"), 0)
    with pytest.raises(
        ag.ShapeError, match=r"one_hot: f \(2,\): indices must be int32 or int64, got float32"
    ):
        ag.one_hot(ag.input("f", (2,)), 3)
    with pytest.raises(
        ag.ExecutionError,
        match=r"IndexError: one_hot: class index 3 is out of range for 3 entries \(valid: 0 to 2\)",
    ):
        run(lambda i: ag.one_hot(i, 3), np.array([0, 3]))
    with pytest.raises(ag.ExecutionError, match=r"one_hot: class index -1 is out of range"):
        run(lambda i: ag.one_hot(i, 3), np.array([0, -1]))


def test_full_zeros_ones_and_like():
    x = ag.input("x", ("B", 2), "float64")
    outs = [
        ag.zeros_like(x) + x,
        ag.ones_like(x) * x,
        ag.full(("B", 2), 2.5, "float64") * x,
        ag.zeros((2,), "int32"),
        ag.ones((1, 2)),
    ]
    assert outs[3].dtype == "int32" and outs[4].dtype == "float32"
    data = rand(3, 2)
    got = ag.compile(outs, inputs=[x])(data)
    np.testing.assert_array_equal(got[0], data)
    np.testing.assert_array_equal(got[1], data)
    np.testing.assert_array_equal(got[2], 2.5 * data)
    np.testing.assert_array_equal(got[3], np.zeros(2, np.int32))
    np.testing.assert_array_equal(got[4], np.ones((1, 2), np.float32))


def test_stop_gradient():
    x = ag.input("x", (3,), "float64")
    y = x * ag.stop_gradient(x)
    (gx,) = ag.grad(y.sum(), [x])
    data = rand(3)
    np.testing.assert_allclose(ag.compile(gx)(data), data)  # only the first factor is differentiated


# ----------------------------------------------------------------------------- shape errors
def test_reshape_errors():
    x = ag.input("x", (2, 3))
    with pytest.raises(
        ag.ShapeError,
        match=r"^reshape: x \(2, 3\): cannot reshape 6 elements into \(4, 2\) "
        r"\(8 elements\)$",
    ):
        x.reshape(4, 2)
    with pytest.raises(ag.ShapeError, match=r"reshape: x \(2, 3\): cannot reshape 6 elements into \(4, -1\)"):
        x.reshape(4, -1)
    with pytest.raises(ag.ShapeError, match=r"reshape: x \(2, 3\): only one dimension can be -1"):
        x.reshape(-1, -1)
    with pytest.raises(ag.ShapeError, match=r"reshape: x \(2, 3\): negative dimension in shape \(-2, -3\)"):
        x.reshape(-2, -3)
    b = ag.input("b", ("B", 6))
    with pytest.raises(
        ag.ShapeError, match=r"reshape: b \(B, 6\): cannot reshape 6\*B elements into \(B, 4\)"
    ):
        b.reshape("B", 4)
    assert b.reshape(-1, 3).shape == ("2*B", 3)
    assert b.reshape("B", 2, 3).shape == ("B", 2, 3)


def test_transpose_and_squeeze_errors():
    x = ag.input("x", (2, 3, 1))
    with pytest.raises(
        ag.ShapeError, match=r"transpose: x \(2, 3, 1\): axes \(0, 0, 1\) are not a permutation"
    ):
        x.permute(0, 0, 1)
    with pytest.raises(ValueError, match=r"squeeze: axis 0 of x \(2, 3, 1\) has size 2, not 1"):
        x.squeeze(0)
    with pytest.raises(
        ag.ShapeError,
        match=r"broadcast_to: x \(2, 3, 1\): cannot broadcast to \(2, 4, 1\): dimension 4 does not broadcast against 3",
    ):
        x.expand(2, 4, 1)
    with pytest.raises(
        ag.ShapeError, match=r"broadcast_to: x \(2, 3, 1\): cannot broadcast to fewer dimensions"
    ):
        x.expand(3, 1)


# ----------------------------------------------------------------------------- ops for causal models (0.2)
# Parity of arange (static bounds): asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_arange_with_a_symbolic_length_runs_at_two_lengths():
    tokens = ag.input("tokens", ("B", "T"), "int64")
    pos, pos2 = ag.arange("T"), ag.arange(tokens.shape[1])
    evens = ag.arange(0, "T", 2, dtype="float32")
    assert pos.shape == pos2.shape == ("T",) and evens.dtype == "float32"
    f = ag.compile([pos, pos2, evens, tokens + pos], inputs=[tokens])
    for t in (3, 6):
        a, b, c, d = f(np.zeros((2, t), "int64"))
        np.testing.assert_array_equal(a, np.arange(t))
        np.testing.assert_array_equal(b, np.arange(t))
        np.testing.assert_array_equal(c, np.arange(0, t, 2, dtype=np.float32))
        np.testing.assert_array_equal(d, np.broadcast_to(np.arange(t), (2, t)))


def test_arange_errors():
    with pytest.raises(TypeError, match=r"arange: stop must be an int or a dimension, got 2.5"):
        ag.arange(2.5)
    with pytest.raises(ag.ShapeError, match=r"^arange: : step must not be 0$"):
        ag.arange(0, 4, 0)


# Parity of tril and triu: asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_tril_with_symbolic_sizes_and_errors():
    x = ag.input("x", ("B", "T", "T"))
    f = ag.compile(ag.tril(x, -1) + ag.triu(x, 1))
    for t in (2, 5):
        a = rand(3, t, t, seed=t).astype(np.float32)
        np.testing.assert_array_equal(f(a), a - a * np.eye(t, dtype=np.float32))
    with pytest.raises(ag.ShapeError, match=r"^tril: v \(4,\): expected a matrix or a batch of them"):
        ag.tril(ag.input("v", (4,)))


def test_causal_mask_with_a_symbolic_length():
    x = ag.input("x", ("B", "T"))
    mask = ag.causal_mask("T")
    assert (mask.shape, mask.dtype) == (("T", "T"), "bool")
    scores = ag.input("scores", ("B", "T", "T"))
    masked = scores.masked_fill(~ag.causal_mask(x.shape[1]), float("-inf")).softmax(-1)
    f = ag.compile([mask, masked], inputs=[x, scores])
    for t in (1, 4):
        s = rand(2, t, t, seed=t).astype(np.float32)
        m, p = f(np.zeros((2, t), "float32"), s)
        np.testing.assert_array_equal(m, np.tril(np.ones((t, t), bool)))
        want = torch.softmax(
            torch.tensor(s).masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), -np.inf), -1
        )
        np.testing.assert_allclose(p, want.numpy(), rtol=1e-6, atol=1e-7)


# Parity of split and chunk: asg.core.testing.OP_CASES, run by test_op_coverage.py.


@pytest.mark.parametrize(("size", "axis"), [(2, 1), (3, 1), ([1, 3], 1), (1, -1), ([4], 2), (4, 0)], ids=str)
def test_split_gives_as_many_pieces_as_torch(size, axis):
    x = rand(2, 4, 4, seed=61)
    assert len(ag.split(ag.input("v", (2, 4, 4)), size, axis)) == len(
        torch.split(torch.tensor(x), size, axis)
    )


@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_chunk_gives_as_many_pieces_as_torch(chunks):
    x = rand(5, 2, seed=62)
    assert len(ag.input("x", (5, 2), "float64").chunk(chunks, 0)) == len(
        torch.chunk(torch.tensor(x), chunks, 0)
    )


def test_split_and_chunk_with_symbolic_sizes():
    qkv, bias = ag.input("qkv", ("B", "T", "3*C")), ag.input("bias", ("C",))  # bias binds C
    q, k, v = qkv.chunk(3, axis=-1)
    a, b = qkv.split(["C", "2*C"], axis=-1)
    assert q.shape == ("B", "T", "C") and b.shape == ("B", "T", "2*C")
    f = ag.compile([q, k, v, a, b], inputs=[bias, qkv])
    for t, c in ((2, 1), (3, 4)):
        x = rand(2, t, 3 * c, seed=t).astype(np.float32)
        gq, gk, gv, ga, gb = f(np.zeros(c, "float32"), x)
        np.testing.assert_array_equal(np.concatenate([gq, gk, gv], -1), x)
        np.testing.assert_array_equal(ga, x[..., :c])
        np.testing.assert_array_equal(gb, x[..., c:])
    with pytest.raises(
        ag.ShapeError, match=r"^chunk: x \(B, T\): symbolic axis 1 of size T does not divide into 2"
    ):
        ag.input("x", ("B", "T")).chunk(2, axis=1)
    with pytest.raises(
        ag.ShapeError, match=r"^split: x \(2, 5\): sizes \(2, 2\) add up to 4, not axis 1's 5$"
    ):
        ag.input("x", (2, 5)).split([2, 2], axis=1)


# Parity of torch-style gather: asg.core.testing.OP_CASES, run by test_op_coverage.py.


def test_gather_errors_and_the_deprecated_take_form():
    x = ag.input("x", (3, 4))
    with pytest.raises(
        ag.ShapeError,
        match=r"^gather: x \(3, 4\) float32, i \(2,\) int64: index must have as many dimensions",
    ):
        x.gather(1, ag.input("i", (2,), "int64"))
    with pytest.raises(ag.ShapeError, match=r"index has size 5 on axis 0, more than the input's 3"):
        x.gather(1, ag.input("i", (5, 2), "int64"))
    f = ag.compile(x.gather(1, ag.input("i", (3, 1), "int64")))
    for bad in (4, -1):
        with pytest.raises(
            ag.ExecutionError,
            match=rf"gather: index {bad} is out of range for axis 1 of size 4 \(valid: 0 to 3\)",
        ):
            f(np.zeros((3, 4), "float32"), np.array([[0], [bad], [1]]))
    values = np.arange(12.0).reshape(3, 4)
    with pytest.warns(DeprecationWarning, match=r"use take\(x, idx, axis\)"):
        old = ag.gather(x, np.array([2, 0]), 1)
    np.testing.assert_array_equal(ag.compile(old)(values.astype("float32")), np.take(values, [2, 0], 1))


# Parity of take: asg.core.testing.OP_CASES, run by test_op_coverage.py.


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda x, i: ag.index_select(x, i, 0),
            r"index_select: index 3 is out of range for axis 0 of size 3 \(valid: -3 to 2\)",
        ),
        (
            lambda x, i: ag.take_along_axis(x, i[:, None], 0),
            r"take_along_axis: index 3 is out of range for axis 0 of size 3",
        ),
        (lambda x, i: ag.take(x, i, axis=0), r"index_select: index 3 is out of range"),
    ],
    ids=["index_select", "take_along_axis", "take"],
)
def test_index_ops_raise_on_out_of_range_ids_naming_op_and_id(build, message):
    x, i = ag.input("x", (3, 2)), ag.input("i", ("N",), "int64")
    f = ag.compile(build(x, i))
    f(np.zeros((3, 2), "float32"), np.array([0, -3, 2]))  # negative ids count from the end, as in numpy
    with pytest.raises(ag.ExecutionError, match=message):
        f(np.zeros((3, 2), "float32"), np.array([0, 3]))


def test_transpose_swaps_two_axes_and_permute_reorders():
    x = ag.input("x", ("B", "T", 4))
    assert x.transpose(1, 2).shape == ("B", 4, "T") and x.swapaxes(0, -1).shape == (4, "T", "B")
    assert x.permute(2, 0, 1).shape == x.permute((2, 0, 1)).shape == (4, "B", "T")
    assert x.transpose(0, 0) is x and x.permute(0, 1, 2) is x
    with pytest.raises(
        TypeError,
        match=r"transpose swaps two axes .* got 3 axes \(2, 0, 1\); to reorder all axes use x\.permute\(2, 0, 1\)",
    ):
        x.transpose(2, 0, 1)
    with pytest.warns(DeprecationWarning, match=r"use permute\(x, axes\)"):
        assert ag.transpose(x, (2, 0, 1)).shape == (4, "B", "T")


def test_iterating_a_tensor_needs_a_static_first_axis():
    rows = list(ag.input("x", (3, 2)))
    assert [r.shape for r in rows] == [(2,)] * 3
    with pytest.raises(TypeError, match=r"its first dimension 'T' is symbolic"):
        list(ag.input("s", ("T", 2)))
