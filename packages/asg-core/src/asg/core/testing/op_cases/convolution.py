"""Parity cases of the convolution and pooling ops (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

import numpy as np

from ... import ops as ag
from ...tensor import apply, constant
from .. import references as R
from ..cases import F, T
from ..cases import add_case as _add
from ..check import rand


def _add_rows(op: str, rows: list, seeds: tuple[int, ...], covers: tuple[str, ...] = ()) -> None:
    """One case per ``(name, *input shapes, kwargs)`` row of ``op``, checked as ag.<op>(*inputs, **kwargs)
    against references.<op> and F.<op>; input ``i`` is ``rand(*shape, seed=seeds[i])``."""
    ours, ref, theirs = getattr(ag, op), getattr(R, op), getattr(F, op)
    for name, *shapes, kw in rows:
        _add(
            op,
            lambda *xs, kw=kw: ours(*xs, **kw),
            *[rand(*shape, seed=seed) for shape, seed in zip(shapes, seeds, strict=True)],
            ref=lambda *xs, kw=kw: ref(*xs, **kw),
            torch_fn=lambda *xs, kw=kw: theirs(*xs, **kw),
            name=name,
            covers=covers,
        )


CONV_CASES = [
    # (name, x shape, w shape, kwargs)
    ("plain", (2, 2, 5, 5), (3, 2, 3, 3), {}),
    ("stride_pad", (2, 2, 5, 6), (3, 2, 3, 3), dict(stride=2, padding=1)),
    ("rect_kernel_pairs", (1, 2, 6, 5), (2, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    ("dilation", (2, 1, 6, 6), (2, 1, 2, 2), dict(dilation=2, padding=1)),
    ("groups", (2, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("depthwise", (2, 3, 5, 5), (3, 1, 3, 3), dict(groups=3, stride=2)),
    ("depthwise_multiplier", (1, 2, 5, 4), (4, 1, 2, 3), dict(groups=2)),
    ("same_even_kernel", (1, 2, 5, 5), (2, 2, 2, 4), dict(padding="same")),
    ("same_dilated", (1, 2, 5, 5), (2, 2, 3, 3), dict(padding="same", dilation=2)),
    ("valid", (1, 1, 4, 4), (1, 1, 4, 4), dict(padding="valid")),
    ("one_by_one", (2, 3, 3, 3), (4, 3, 1, 1), dict(stride=2)),
]
_add_rows("conv2d", CONV_CASES, (1, 2), covers=("conv2d_backward_weight", "conv_transpose2d"))
_add(
    "conv2d",
    lambda a, w, b: ag.conv2d(a, w, b, padding=1),
    rand(2, 2, 4, 4, seed=1),
    rand(3, 2, 3, 3, seed=2),
    rand(3, seed=3),
    ref=lambda a, w, b: R.conv2d(a, w, padding=1) + b[None, :, None, None],
    torch_fn=lambda a, w, b: F.conv2d(a, w, b, padding=1),
    name="bias",
)
CONV_T_CASES = [
    ("plain", (2, 3, 3, 4), (3, 2, 3, 3), {}),
    ("stride_pad_outpad", (1, 2, 3, 3), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("pairs", (1, 2, 3, 2), (2, 2, 2, 3), dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 2))),
    ("groups_dilation", (2, 4, 3, 3), (4, 1, 2, 2), dict(groups=2, dilation=2, stride=2)),
]
_add_rows("conv_transpose2d", CONV_T_CASES, (3, 4))
_add(
    "conv2d_backward_weight",
    lambda a, b: apply(
        "conv2d_backward_weight",
        a,
        b,
        kernel_size=(2, 2),
        stride=(2, 1),
        padding=(1, 1, 0, 0),
        dilation=(1, 2),
        groups=2,
    ),
    rand(2, 4, 5, 6, seed=8),
    rand(2, 2, 3, 4, seed=9),
    torch_fn=lambda a, b: T.nn.grad.conv2d_weight(
        a, (2, 2, 2, 2), b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2
    ),
)
MAX_POOL_CASES = [
    ("k2", (2, 2, 6, 6), dict(kernel_size=2)),
    ("k3_s2_p1", (1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ("rect_ceil", (1, 2, 7, 8), dict(kernel_size=(3, 2), stride=(2, 3), ceil_mode=True)),
    ("ceil_pad", (1, 1, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("dilation", (1, 2, 7, 7), dict(kernel_size=2, stride=1, dilation=2)),
    ("overlap", (2, 1, 5, 5), dict(kernel_size=3, stride=1)),
]

_add_rows("max_pool2d", MAX_POOL_CASES, (13,), covers=("max_pool2d_backward", "max_pool2d_gather"))
_POOL_ATTRS = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=False)
_POOLED_X = rand(1, 2, 5, 5, seed=14)
# Linear in the second operand; the first (a constant here) only chooses the positions.
_add(
    "max_pool2d_backward",
    lambda g: apply("max_pool2d_backward", constant(_POOLED_X, g.dtype), g, **_POOL_ATTRS),
    rand(1, 2, 3, 3, seed=15),
)
_add(
    "max_pool2d_gather",
    lambda h: apply("max_pool2d_gather", constant(_POOLED_X, h.dtype), h, **_POOL_ATTRS),
    rand(1, 2, 5, 5, seed=16),
)
_add(
    "max_pool2d_gather",
    lambda x: apply("max_pool2d_gather", x, x, **_POOL_ATTRS),  # gather(x, x) is the pool itself
    _POOLED_X,
    ref=lambda x: R.max_pool2d(x, 3, 2, 1),
    name="self",
    order=0,
)
AVG_POOL_CASES = [
    ("k2", (2, 2, 6, 6), dict(kernel_size=2)),
    ("k3_s2_p1", (1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ("exclude_pad", (1, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("ceil", (1, 2, 7, 8), dict(kernel_size=(3, 2), stride=(2, 3), ceil_mode=True)),
    ("ceil_pad_include", (1, 1, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (
        "ceil_pad_exclude",
        (1, 1, 6, 6),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ),
    ("overlap", (2, 1, 5, 5), dict(kernel_size=3, stride=1)),
]
_add_rows("avg_pool2d", AVG_POOL_CASES, (17,))
ADAPTIVE_CASES = [
    # (name, x shape, output_size, output_size with None filled in)
    ("global", (2, 2, 5, 6), 1, 1),
    ("divisible", (1, 2, 6, 4), (3, 2), (3, 2)),
    ("non_divisible", (1, 2, 7, 5), (3, 4), (3, 4)),
    ("larger_than_input", (1, 2, 2, 3), (3, 5), (3, 5)),
    ("keep_width", (1, 1, 5, 3), (2, None), (2, 3)),
]
for _name, _shape, _size, _full in ADAPTIVE_CASES:
    for _op, _reduce, _seed in (("adaptive_avg_pool2d", np.mean, 18), ("adaptive_max_pool2d", np.max, 19)):
        _add(
            _op,
            lambda a, s=_size, o=_op: getattr(ag, o)(a, s),
            rand(*_shape, seed=_seed),
            ref=lambda a, s=_full, r=_reduce: R.adaptive_pool2d(a, s, r),
            torch_fn=lambda a, s=_size, o=_op: getattr(F, o)(a, s),
            name=_name,
        )
