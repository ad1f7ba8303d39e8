"""Parity cases of the shape and indexing ops (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import ops as ag
from ...tensor import apply, constant
from ..cases import ANY, X3, F, T, _torch_module
from ..cases import add_case as _add
from ..cases import axis_id as _axis_id
from ..cases import shape_id as _shape_id
from ..check import rand

XS = rand(2, 3, 4, seed=40)
VIEWS = [
    # (op or public function, name, asg function, numpy reference, torch function)
    ("reshape", "", lambda x: x.reshape(4, 6), lambda x: x.reshape(4, 6), lambda t: t.reshape(4, 6)),
    ("reshape", "hole", lambda x: x.reshape((6, -1)), lambda x: x.reshape(6, -1), lambda t: t.reshape(6, -1)),
    ("reshape", "flat", lambda x: ag.reshape(x, (-1,)), lambda x: x.reshape(-1), lambda t: t.reshape(-1)),
    ("flatten", "1", lambda x: x.flatten(1), lambda x: x.reshape(2, 12), lambda t: t.flatten(1)),
    ("flatten", "0_1", lambda x: x.flatten(0, 1), lambda x: x.reshape(6, 4), lambda t: t.flatten(0, 1)),
    ("flatten", "all", lambda x: ag.flatten(x), lambda x: x.reshape(-1), lambda t: t.flatten()),
    (
        "transpose",
        "T_default",
        lambda x: x.transpose(),
        lambda x: x.transpose(),
        lambda t: t.permute(2, 1, 0),
    ),
    (
        "transpose",
        "two_axes",
        lambda x: x.transpose(1, 2),
        lambda x: x.swapaxes(1, 2),
        lambda t: t.transpose(1, 2),
    ),
    (
        "transpose",
        "fn_neg",
        lambda x: ag.transpose(x, -1, 0),
        lambda x: x.swapaxes(0, 2),
        lambda t: T.transpose(t, -1, 0),
    ),
    ("transpose", "T", lambda x: x.T, lambda x: x.T, lambda t: t.permute(2, 1, 0)),
    (
        "permute",
        "varargs",
        lambda x: x.permute(1, 0, 2),
        lambda x: x.transpose(1, 0, 2),
        lambda t: t.permute(1, 0, 2),
    ),
    (
        "permute",
        "tuple",
        lambda x: x.permute((2, 0, 1)),
        lambda x: x.transpose(2, 0, 1),
        lambda t: t.permute(2, 0, 1),
    ),
    (
        "permute",
        "neg",
        lambda x: ag.permute(x, (0, -1, 1)),
        lambda x: x.transpose(0, 2, 1),
        lambda t: t.permute(0, 2, 1),
    ),
    (
        "swapaxes",
        "method",
        lambda x: x.swapaxes(0, 1),
        lambda x: x.swapaxes(0, 1),
        lambda t: t.swapaxes(0, 1),
    ),
    (
        "swapaxes",
        "fn_neg",
        lambda x: ag.swapaxes(x, 0, -1),
        lambda x: x.swapaxes(0, 2),
        lambda t: t.swapaxes(0, 2),
    ),
    ("unsqueeze", "", lambda x: x.unsqueeze(1), lambda x: x[:, None], lambda t: t.unsqueeze(1)),
    ("unsqueeze", "neg", lambda x: ag.unsqueeze(x, -1), lambda x: x[..., None], lambda t: t.unsqueeze(-1)),
    ("squeeze", "roundtrip", lambda x: x.unsqueeze(0).squeeze(0), lambda x: x, lambda t: t),
    ("squeeze", "all", lambda x: x[:, :1].squeeze(), lambda x: x[:, 0], lambda t: t[:, :1].squeeze()),
    (
        "squeeze",
        "axes",
        lambda x: x[:1, :, :1].squeeze((0, 2)),
        lambda x: x[0, :, 0],
        lambda t: t[:1, :, :1].squeeze((0, 2)),
    ),
]
for _op, _name, _fn, _ref, _torch_fn in VIEWS:
    _add(_op, _fn, XS, ref=_ref, torch_fn=_torch_fn, name=_name)
for _shape, _target in [((3,), (2, 3)), ((2, 1), (2, 4)), ((1, 3, 1), (2, 3, 4)), ((), (2, 2))]:
    _add(
        "broadcast_to",
        lambda x, s=_target: ag.broadcast_to(x, s),
        rand(*_shape, seed=41),
        ref=lambda x, s=_target: np.broadcast_to(x, s),
        torch_fn=lambda t, s=_target: t.expand(*s),
        name=_shape_id(_shape, _target),
    )
    _add(
        "expand",
        lambda x, s=_target: x.expand(*s),
        rand(*_shape, seed=41),
        ref=lambda x, s=_target: np.broadcast_to(x, s),
        name=_shape_id(_shape, _target),
        order=1,
    )


def _sum_to_ref(x: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    lead = x.ndim - len(target)
    out = x.sum(axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, d in enumerate(target) if d == 1 and out.shape[i] != 1)
    return out.sum(axis=axes, keepdims=True).reshape(target)


for _shape, _target in [((2, 3), (3,)), ((2, 4), (2, 1)), ((2, 3, 4), (3, 1)), ((2, 3), ())]:
    _add(
        "sum_to",
        lambda x, s=_target: ag.sum_to(x, s),
        rand(*_shape, seed=42),
        ref=lambda x, s=_target: _sum_to_ref(x, s),
        name=_shape_id(_shape, _target),
    )
BASIC_INDEXES = [
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


def _key_id(key: tuple[Any, ...]) -> str:
    def one(k: Any) -> str:
        if isinstance(k, slice):
            text = f"{'' if k.start is None else k.start}:{'' if k.stop is None else k.stop}"
            return text + (f":{k.step}" if k.step is not None else "")
        return {None: "None", Ellipsis: "..."}[k] if k is None or k is Ellipsis else str(k)

    return "[" + ",".join(one(k) for k in key) + "]"


for _key in BASIC_INDEXES:
    _add(
        "getitem",
        lambda x, k=_key: x[k],
        XS,
        ref=lambda x, k=_key: x[k],
        torch_fn=lambda t, k=_key: t[k],
        name=_key_id(_key),
    )
for _key_name, _key in [
    ("int", (1,)),
    ("strided", (slice(None, None, 2), slice(1, None, 2), slice(None, 3, 2))),
]:
    _add(
        "slice",
        lambda x, k=_key: x[k],
        X3,
        ref=lambda x, k=_key: x[k],
        torch_fn=lambda t, k=_key: t[k],
        name=_key_name,
        covers=("slice_backward",),
    )
ARRAY_INDEXES = [
    ("repeated_rows", [2, 0, 2, 2]),
    ("2d_index", np.array([[1, 1], [0, 1]])),
    ("axis1_repeated", (slice(None), [2, 2, 0])),
    ("axis2_negative", (slice(None), slice(None), [-1, 0, 3, -1])),
    ("axis1_negative", (slice(None), np.array([1, -3]))),
]


def _torch_key(key: Any) -> tuple[Any, ...]:
    return tuple(
        _torch_module().tensor(k) if isinstance(k, (list, np.ndarray)) else k
        for k in (key if isinstance(key, tuple) else (key,))
    )


for _name, _key in ARRAY_INDEXES:
    _add(
        "index_select",
        lambda x, k=_key: x[k],  # repeated ids: their gradients accumulate
        rand(3, 3, 4, seed=43),
        ref=lambda x, k=_key: x[k if isinstance(k, tuple) else np.asarray(k)],
        torch_fn=lambda t, k=_key: t[_torch_key(k)],
        name=f"getitem_{_name}",
    )
_add(
    "slice_range",
    lambda x: apply("slice_range", x, axis=1, start=1, stop=3),
    X3,
    ref=lambda x: x[:, 1:3],
    torch_fn=lambda t: t[:, 1:3],
)
_CONCAT_SHAPES = {
    0: [(1, 3, 2), (2, 3, 2), (3, 3, 2)],
    1: [(2, 1, 2), (2, 2, 2), (2, 3, 2)],
    -1: [(2, 3, 1), (2, 3, 3), (2, 3, 2)],
}
for _axis, _shapes in _CONCAT_SHAPES.items():
    _add(
        "concat",
        lambda a, b, c, ax=_axis: ag.concat([a, b, c], ax),
        *[rand(*sh, seed=44 + i) for i, sh in enumerate(_shapes)],
        ref=lambda a, b, c, ax=_axis: np.concatenate([a, b, c], ax),
        torch_fn=lambda a, b, c, ax=_axis: T.cat([a, b, c], ax),
        name=_axis_id(_axis),
        covers=("slice_range",),
    )
for _axis in (0, 1, 2, -1):
    _add(
        "stack",
        lambda a, b, c, ax=_axis: ag.stack([a, b, c], ax),
        *[rand(2, 3, seed=50 + i) for i in range(3)],
        ref=lambda a, b, c, ax=_axis: np.stack([a, b, c], ax),
        torch_fn=lambda a, b, c, ax=_axis: T.stack([a, b, c], ax),
        name=_axis_id(_axis),
    )
for _widths, _value in [(((1, 2), (0, 1)), 0.0), (((0, 0), (3, 0)), -1.5), (1, 2.0), (((2, 0), (0, 2)), 0.0)]:
    _torch_pad = (1, 1, 1, 1) if isinstance(_widths, int) else (*_widths[1], *_widths[0])
    _add(
        "pad",
        lambda x, w=_widths, v=_value: ag.pad(x, w, v),
        rand(2, 3, seed=55),
        ref=lambda x, w=_widths, v=_value: np.pad(x, w, constant_values=v),
        torch_fn=lambda t, p=_torch_pad, v=_value: F.pad(t, p, value=v),
        name=f"{_widths}_{_value}".replace(" ", ""),
    )
INDEX_SELECTS = [
    # (x shape, ids, axis): repeated and negative ids
    ((4, 3), [0, 3, 3, 1, 0], 0),
    ((2, 4, 3), [[1, 1], [3, 0]], 1),
    ((3, 4), [-1, 0, -1], 1),
    ((4,), [2, 2, 2], 0),
    ((3, 2), [1], -1),
]
for _shape, _idx, _axis in INDEX_SELECTS:
    _add(
        "index_select",
        lambda x, i, ax=_axis: ag.index_select(x, i, ax),
        rand(*_shape, seed=56),
        np.array(_idx),
        ref=lambda x, i, ax=_axis: np.take(x, i, axis=ax),
        name=_shape_id(_shape, np.shape(_idx)) + f"_{_axis_id(_axis)}",
    )
TAKE_ALONG = [
    ((2, 3), [[2], [0]], 1),
    ((3, 2), [[0, 1], [2, 2], [1, 0], [0, 0]], 0),
    ((2, 3, 2), [[[1, 0]], [[2, 2]]], 1),
    ((2, 4), [[1, 1, 3], [0, 0, 0]], -1),
]
for _shape, _idx, _axis in TAKE_ALONG:
    _add(
        "take_along_axis",
        lambda x, i, ax=_axis: ag.take_along_axis(x, i, ax),
        rand(*_shape, seed=57),
        np.array(_idx),
        ref=lambda x, i, ax=_axis: np.take_along_axis(x, i, axis=ax),
        torch_fn=lambda x, i, ax=_axis: T.gather(x, ax, i),
        name=_shape_id(_shape, np.shape(_idx)) + f"_{_axis_id(_axis)}",
    )
_add(
    "one_hot",
    lambda i: ag.one_hot(i, 4, "float32"),
    np.array([[0, 3], [2, 2]]),
    ref=lambda i: np.eye(4, dtype=np.float32)[i],
    torch_fn=lambda i: F.one_hot(i, 4).float(),
)
_add("full", lambda x: x + ag.full((2, 3), 1.5, x.dtype), ANY, ref=lambda x: x + 1.5)
_add(
    "stop_gradient",
    lambda x: x * ag.stop_gradient(x),
    ANY,
    ref=lambda x: x * x,
    torch_fn=lambda x: x * x.detach(),
    order=0,
)

# The new ops' cases multiply the op by its input, so that the second-order checks are not trivial.
for _dim in (0, 1, -1):
    _x = rand(3, 4, seed=63)
    _ids = np.random.default_rng(64).integers(0, _x.shape[_dim], size=(4, 3) if _dim == 0 else (2, 5))
    _ids = _ids[:, :4] if _dim == 0 else _ids  # smaller than x on the other axis is allowed; ids repeat
    _add(
        "gather",
        lambda x, i, d=_dim: x.gather(d, i),
        _x,
        _ids,
        ref=lambda x, i, d=_dim: np.take_along_axis(x[:, : i.shape[1]] if d == 0 else x[: i.shape[0]], i, d),
        torch_fn=lambda x, i, d=_dim: T.gather(x, d, i),
        name=_axis_id(_dim),
        covers=("gather_backward",),
    )
_GATHER_IDX = np.array([[2, 0, 2], [1, 1, 0]])
_add(
    "gather_backward",
    lambda g: apply("gather_backward", g, constant(_GATHER_IDX), axis=1, shape=(2, 4)),
    rand(2, 3, seed=47),
    ref=lambda g: np.stack([np.bincount(_GATHER_IDX[r], weights=g[r], minlength=4) for r in range(2)]),
)
_TAKE_IDX2 = np.array([[5, 0], [-1, 11]])
_add(
    "take",
    lambda x: x.take(_TAKE_IDX2),
    rand(3, 4, seed=65),
    ref=lambda x: np.take(x, _TAKE_IDX2),
    torch_fn=lambda x: T.take(x, T.tensor(_TAKE_IDX2 % 12)),
    name="flat",
    covers=("index_select_backward",),
)
_add(
    "take",
    lambda x: ag.take(x, np.array([2, -1, 2]), axis=1),
    rand(3, 4, seed=65),
    ref=lambda x: np.take(x, [2, -1, 2], axis=1),
    name="axis1",
)
for _op in ("tril", "triu"):
    for _k in (-1, 0, 2):
        _add(
            _op,
            lambda x, k=_k, o=_op: getattr(x, o)(k) * x,
            rand(2, 3, 4, seed=60),  # a batch of 3x4 matrices
            ref=lambda x, k=_k, o=_op: getattr(np, o)(x, k) * x,
            torch_fn=lambda x, k=_k, o=_op: getattr(T, o)(x, k) * x,
            name=f"k{_k}",
        )
_add(
    "tril",
    lambda x: ag.where(ag.causal_mask(3), x, 0.0),
    rand(3, 3, seed=51),
    ref=lambda x: np.tril(x),
    name="causal_mask",
)
for _args in [(5,), (2, 7), (1, 8, 3), (5, 1, -2)]:
    _add(
        "arange",
        lambda a=_args: ag.arange(*a),
        ref=lambda a=_args: np.arange(*a),
        torch_fn=lambda a=_args: T.arange(*a),
        name="_".join(map(str, _args)),
    )
_add(
    "arange",
    lambda x: ag.arange(x.shape[0]),
    np.zeros((4, 2), np.int64),
    ref=lambda x: np.arange(4),
    name="dim",
)


def _weigh(pieces: Sequence[Any]) -> list[Any]:
    """Each piece scaled differently, so that a wrong gradient routing shows."""
    return [p * float(i + 1) for i, p in enumerate(pieces)]


def _split_ref(x: np.ndarray, size: int | list[int], axis: int) -> np.ndarray:
    cuts = np.cumsum(size)[:-1] if isinstance(size, list) else np.arange(size, x.shape[axis], size)
    return np.concatenate(_weigh(np.split(x, cuts, axis)), axis)


for _size, _axis in [(2, 1), (3, 1), ([1, 3], 1), (1, -1), ([4], 2), (4, 0)]:
    _add(
        "split",
        lambda x, s=_size, a=_axis: ag.concat(_weigh(x.split(s, a)), a),
        rand(2, 4, 4, seed=61),
        ref=lambda x, s=_size, a=_axis: _split_ref(x, s, a),
        torch_fn=lambda x, s=_size, a=_axis: T.cat(_weigh(x.split(s, a)), a),
        name=f"{_size}_{_axis_id(_axis)}".replace(" ", ""),
    )
for _chunks in (1, 2, 3, 4):
    _add(
        "chunk",
        lambda x, c=_chunks: ag.concat(_weigh(ag.chunk(x, c, 0)), 0),
        rand(5, 2, seed=62),
        ref=lambda x, c=_chunks: np.concatenate(_weigh(np.array_split(x, -(-5 // -(-5 // c)), 0)), 0),
        torch_fn=lambda x, c=_chunks: T.cat(_weigh(T.chunk(x, c, 0)), 0),
        name=str(_chunks),
    )
