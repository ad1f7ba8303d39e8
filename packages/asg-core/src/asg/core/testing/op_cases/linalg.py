"""Parity cases of the linear algebra ops (see :mod:`asg.core.testing.cases`)."""

from __future__ import annotations

import numpy as np

from ... import ops as ag
from ..cases import T
from ..cases import add_case as _add
from ..cases import shape_id as _shape_id
from ..check import rand

MATMUL_SHAPES = [
    ((2, 3), (3, 4)),
    ((2, 2, 3), (2, 3, 4)),
    ((2, 1, 2, 3), (3, 3, 2)),  # batch dims broadcast: (2, 1) with (3,)
    ((2, 3), (2, 3, 2)),  # a 2-d operand broadcasts over the other's batch
    ((3,), (3, 2)),  # vector @ matrix
    ((2, 3), (3,)),  # matrix @ vector
    ((3,), (3,)),  # dot product
    ((2,), (2, 2, 3)),  # vector @ batched matrix
    ((2, 1, 3), (3,)),  # batched matrix @ vector
]
for _sa, _sb in MATMUL_SHAPES:
    _add(
        "matmul",
        ag.matmul,
        rand(*_sa, seed=30),
        rand(*_sb, seed=31),
        ref=np.matmul,
        torch_fn=T.matmul,
        name=_shape_id(_sa, _sb),
    )
_add(
    "matmul",
    lambda a, b: a @ b.T,
    rand(2, 3, seed=32),
    rand(4, 3, seed=33),
    ref=lambda a, b: a @ b.T,
    torch_fn=lambda a, b: a @ b.T,
    name="operator",
)
