"""Shape and indexing ops: reshape, transpose, broadcast, slicing, concat, stack, pad, gathers, one_hot."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.core.testing import check_op, rand, run, torch_or_skip

torch = torch_or_skip

X = rand(2, 3, 4, seed=40)


@pytest.mark.parametrize(
    ("fn", "ref", "torch_fn"),
    [
        (lambda x: x.reshape(4, 6), lambda x: x.reshape(4, 6), lambda t: t.reshape(4, 6)),
        (lambda x: x.reshape((6, -1)), lambda x: x.reshape(6, -1), lambda t: t.reshape(6, -1)),
        (lambda x: ag.reshape(x, (-1,)), lambda x: x.reshape(-1), lambda t: t.reshape(-1)),
        (lambda x: x.flatten(1), lambda x: x.reshape(2, 12), lambda t: t.flatten(1)),
        (lambda x: x.flatten(0, 1), lambda x: x.reshape(6, 4), lambda t: t.flatten(0, 1)),
        (lambda x: ag.flatten(x), lambda x: x.reshape(-1), lambda t: t.flatten()),
        (lambda x: x.transpose(), lambda x: x.transpose(), lambda t: t.permute(2, 1, 0)),
        (lambda x: x.permute(1, 0, 2), lambda x: x.transpose(1, 0, 2), lambda t: t.permute(1, 0, 2)),
        (lambda x: x.transpose(1, 2), lambda x: x.swapaxes(1, 2), lambda t: t.transpose(1, 2)),
        (lambda x: ag.transpose(x, -1, 0), lambda x: x.swapaxes(0, 2), lambda t: torch.transpose(t, -1, 0)),
        (lambda x: x.swapaxes(0, 1), lambda x: x.swapaxes(0, 1), lambda t: t.swapaxes(0, 1)),
        (lambda x: x.permute((2, 0, 1)), lambda x: x.transpose(2, 0, 1), lambda t: t.permute(2, 0, 1)),
        (lambda x: ag.permute(x, (0, -1, 1)), lambda x: x.transpose(0, 2, 1), lambda t: t.permute(0, 2, 1)),
        (lambda x: x.T, lambda x: x.T, lambda t: t.permute(2, 1, 0)),
        (lambda x: ag.swapaxes(x, 0, -1), lambda x: x.swapaxes(0, 2), lambda t: t.swapaxes(0, 2)),
        (lambda x: x.unsqueeze(1), lambda x: x[:, None], lambda t: t.unsqueeze(1)),
        (lambda x: ag.unsqueeze(x, -1), lambda x: x[..., None], lambda t: t.unsqueeze(-1)),
        (lambda x: x.unsqueeze(0).squeeze(0), lambda x: x, lambda t: t),
        (lambda x: x[:, :1].squeeze(), lambda x: x[:, 0], lambda t: t[:, :1].squeeze()),
        (
            lambda x: x[:1, :, :1].squeeze((0, 2)),
            lambda x: x[0, :, 0],
            lambda t: t[:1, :, :1].squeeze((0, 2)),
        ),
    ],
    ids=[
        "reshape",
        "reshape_hole",
        "reshape_flat",
        "flatten_1",
        "flatten_0_1",
        "flatten_all",
        "T_default",
        "permute_varargs",
        "transpose_two",
        "transpose_fn_neg",
        "swapaxes_method",
        "permute_tuple",
        "permute_neg",
        "T",
        "swapaxes",
        "unsqueeze",
        "unsqueeze_neg",
        "squeeze_roundtrip",
        "squeeze_all",
        "squeeze_axes",
    ],
)
def test_view_ops(fn, ref, torch_fn):
    check_op(fn, X, ref=ref, torch_fn=torch_fn)


@pytest.mark.parametrize(
    ("shape", "target"),
    [((3,), (2, 3)), ((2, 1), (2, 4)), ((1, 3, 1), (2, 3, 4)), ((), (2, 2))],
)
def test_broadcast_to_and_expand(shape, target):
    x = rand(*shape, seed=41)
    check_op(
        lambda v: ag.broadcast_to(v, target),
        x,
        ref=lambda v: np.broadcast_to(v, target),
        torch_fn=lambda t: t.expand(*target),
    )
    check_op(lambda v: v.expand(*target), x, ref=lambda v: np.broadcast_to(v, target), order=1)


@pytest.mark.parametrize(
    ("shape", "target"), [((2, 3), (3,)), ((2, 4), (2, 1)), ((2, 3, 4), (3, 1)), ((2, 3), ())]
)
def test_sum_to(shape, target):
    def ref(v):
        lead = v.ndim - len(target)
        out = v.sum(axis=tuple(range(lead))) if lead else v
        axes = tuple(i for i, d in enumerate(target) if d == 1 and out.shape[i] != 1)
        return out.sum(axis=axes, keepdims=True).reshape(target)

    check_op(lambda v: ag.sum_to(v, target), rand(*shape, seed=42), ref=ref)


# ----------------------------------------------------------------------------- getitem
INDEXES = [
    (1,),
    (-1,),
    (-2,),
    (slice(1, None),),
    (slice(None, None, 2),),
    (slice(None, -1),),
    (slice(-2, None),),
    (slice(-3, -1),),
    (slice(0, 100),),
    (slice(5, 10),),
    (0, slice(None), 1),
    (slice(None), -1, slice(None, None, 3)),
    (Ellipsis, 1),
    (Ellipsis, slice(1, 3)),
    (1, Ellipsis),
    (None,),
    (slice(None), None, 2),
    (None, Ellipsis, None),
    (0, -1, -1),
    (slice(1, 2), None, None),
    (slice(None, None, 2), slice(1, None, 2), slice(None, 3, 2)),
]


@pytest.mark.parametrize("key", INDEXES, ids=str)
def test_getitem_basic(key):
    check_op(lambda x: x[key], X, ref=lambda x: x[key], torch_fn=lambda t: t[key])


@pytest.mark.parametrize(
    "key",
    [
        [2, 0, 2, 2],
        np.array([[1, 1], [0, 1]]),
        (slice(None), [2, 2, 0]),
        (slice(None), slice(None), [-1, 0, 3, -1]),
        (slice(None), np.array([1, -3])),
    ],
    ids=["repeated_rows", "2d_index", "axis1_repeated", "axis2_negative", "axis1_negative"],
)
def test_getitem_integer_array_accumulates_gradients(key):
    x = rand(3, 3, 4, seed=43)
    torch_key = tuple(
        torch.tensor(k) if isinstance(k, (list, np.ndarray)) else k
        for k in (key if isinstance(key, tuple) else (key,))
    )
    check_op(
        lambda v: v[key],
        x,
        ref=lambda v: v[key if isinstance(key, tuple) else np.asarray(key)],
        torch_fn=lambda t: t[torch_key],
    )


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
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = {
        0: [(1, 3, 2), (2, 3, 2), (3, 3, 2)],
        1: [(2, 1, 2), (2, 2, 2), (2, 3, 2)],
        -1: [(2, 3, 1), (2, 3, 3), (2, 3, 2)],
    }[axis]
    arrays = [rand(*s, seed=44 + i) for i, s in enumerate(shapes)]
    check_op(
        lambda *xs: ag.concat(xs, axis),
        *arrays,
        ref=lambda *xs: np.concatenate(xs, axis),
        torch_fn=lambda *ts: torch.cat(ts, axis),
    )


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


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    arrays = [rand(2, 3, seed=50 + i) for i in range(3)]
    check_op(
        lambda *xs: ag.stack(xs, axis),
        *arrays,
        ref=lambda *xs: np.stack(xs, axis),
        torch_fn=lambda *ts: torch.stack(ts, axis),
    )


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


@pytest.mark.parametrize(
    ("pad_width", "value"),
    [(((1, 2), (0, 1)), 0.0), (((0, 0), (3, 0)), -1.5), (1, 2.0), (((2, 0), (0, 2)), 0.0)],
)
def test_pad(pad_width, value):
    x = rand(2, 3, seed=55)
    torch_pad = (1, 1, 1, 1) if isinstance(pad_width, int) else (*pad_width[1], *pad_width[0])
    check_op(
        lambda v: ag.pad(v, pad_width, value),
        x,
        ref=lambda v: np.pad(v, pad_width, constant_values=value),
        torch_fn=lambda t: torch.nn.functional.pad(t, torch_pad, value=value),
    )


def test_pad_errors():
    x = ag.input("x", (2, 3))
    with pytest.raises(ag.ShapeError, match=r"pad: x \(2, 3\): pad_width has 1 entries for a 2-d tensor"):
        ag.pad(x, [(1, 1)])
    with pytest.raises(ag.ShapeError, match=r"pad: x \(2, 3\): padding must be non-negative"):
        ag.pad(x, [(1, 1), (-1, 0)])


# ----------------------------------------------------------------------------- gathers
@pytest.mark.parametrize(
    ("shape", "idx", "axis"),
    [
        ((4, 3), [0, 3, 3, 1, 0], 0),
        ((2, 4, 3), [[1, 1], [3, 0]], 1),
        ((3, 4), [-1, 0, -1], 1),
        ((4,), [2, 2, 2], 0),
        ((3, 2), [1], -1),
    ],
)
def test_index_select(shape, idx, axis):
    x = rand(*shape, seed=56)
    idx = np.array(idx)
    check_op(
        lambda v: ag.index_select(v, idx, axis),
        x,
        ref=lambda v: np.take(v, idx, axis=axis),
        torch_fn=lambda t: torch.index_select(t, axis, torch.tensor(idx % shape[axis]).reshape(-1)).reshape(
            np.take(x, idx, axis=axis).shape
        ),
    )
    check_op(lambda v: ag.gather(v, idx, axis), x, ref=lambda v: np.take(v, idx, axis=axis), order=0)


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


@pytest.mark.parametrize(
    ("shape", "idx", "axis"),
    [
        ((2, 3), [[2], [0]], 1),
        ((3, 2), [[0, 1], [2, 2], [1, 0], [0, 0]], 0),
        ((2, 3, 2), [[[1, 0]], [[2, 2]]], 1),
        ((2, 4), [[1, 1, 3], [0, 0, 0]], -1),
    ],
)
def test_take_along_axis(shape, idx, axis):
    x = rand(*shape, seed=57)
    idx = np.array(idx)
    check_op(
        lambda v: ag.take_along_axis(v, idx, axis),
        x,
        ref=lambda v: np.take_along_axis(v, idx, axis=axis),
        torch_fn=lambda t: torch.gather(t, axis, torch.tensor(idx)),
    )


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
