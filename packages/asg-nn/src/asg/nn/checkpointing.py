"""Gradient checkpointing: recompute a marked segment in the backward pass instead of keeping its activations.

``y = nn.checkpoint(block, x)`` (or wrapping a module in :class:`Checkpoint`) builds the segment's forward as
usual and passes its output through a ``recompute`` node. That node is the identity going forward; its
gradient rule rebuilds the segment from its inputs, made to depend on the incoming gradient (so the copy
can only run in the backward pass), and differentiates the copy. The segment's own activations are then
needed by nothing after the forward pass and their buffers are reused: the memory planner's peak drops,
at the cost of one more forward pass of the segment. The gradient does not flow into the original
segment's nodes (the recomputed copy carries it), so everything differentiates as usual.

>>> import numpy as np
>>> import asg.core as ag
>>> from asg import nn
>>> block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
>>> x = ag.input("x", ("B", 4))
>>> y = nn.checkpoint(block, x).sum()
>>> (g,) = ag.grad(y, [block[0].weight])
>>> "recompute" in ag.Graph([y.node]).op_counts(), g.shape
(True, (4, 4))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asg.core as ag

from .module import Module

__all__ = ["Checkpoint", "checkpoint"]


def _recompute_infer(out: ag.TensorType, *inputs: ag.TensorType, segment: int) -> ag.TensorType:
    return out


def _recompute_kernel(out: Any, *inputs: Any, segment: int) -> Any:
    return out


def _recompute_grad(
    g: ag.Tensor, out: ag.Tensor, seg_out: ag.Tensor, *leaves: ag.Tensor, segment: int
) -> tuple:
    fn, n_inputs, params = _segments()[segment]
    # The copy reads its inputs through a dependence on g, so it cannot be computed before g exists, and
    # through stop_gradient, so differentiating the copy stops at its inputs (it must not walk on into
    # earlier segments, which would recompute them again from inside this rule).
    anchor = ag.stop_gradient(ag.reshape(g, (-1,))[0:1].sum() * 0.0)
    inputs = [
        ag.stop_gradient(x) + ag.cast(anchor, x.dtype) if x.dtype.startswith("float") else x
        for x in leaves[:n_inputs]
    ]
    again = fn(*inputs)
    wrt = [x for x in inputs if x.dtype.startswith("float")] + list(params)
    grads = iter(ag.grad(again, wrt, grad_output=g))
    input_grads = [next(grads) if x.dtype.startswith("float") else None for x in inputs]
    return (None, *input_grads, *grads)


if "recompute" not in ag.OPS:  # importing this file twice (doctest collection) must not redefine the op
    ag.define_op(
        "recompute",
        infer=_recompute_infer,
        kernel=_recompute_kernel,
        grad=_recompute_grad,
        view=True,
        doc="Identity on the output of a checkpointed segment; its gradient recomputes the segment (asg.nn).",
    )


def _segments() -> dict[int, tuple[Callable[..., ag.Tensor], int, list[ag.Tensor]]]:
    """segment id -> (function, number of tensor inputs, parameters), kept on the op (one table per process)."""
    op = ag.get_op("recompute")
    if not hasattr(op, "segments"):
        op.segments = {}  # type: ignore[attr-defined]
    return op.segments  # type: ignore[attr-defined]


def checkpoint(fn: Callable[..., ag.Tensor], *inputs: ag.Tensor) -> ag.Tensor:
    """``fn(*inputs)`` whose activations are recomputed in the backward pass (``torch.utils.checkpoint``).

    ``fn`` must be deterministic given its inputs (a module without dropout, or with its random key an
    input) and return one Tensor. The parameters it uses are those of ``fn`` when it is a Module, else
    every trainable variable the segment reads.
    """
    tensors = [ag.as_tensor(x) for x in inputs]
    out = fn(*tensors)
    if not isinstance(out, ag.Tensor):
        raise TypeError(f"checkpoint: the segment must return one Tensor, got {type(out).__name__}")
    if isinstance(fn, Module):
        params = list(fn.parameters())
    else:
        graph = ag.Graph([out.node])
        params = [ag.Tensor(n) for n in graph.parameters if n.data.trainable]
    table = _segments()
    segment = len(table)
    table[segment] = (fn, len(tensors), params)
    return ag.apply("recompute", out, *tensors, *params, segment=segment)


class Checkpoint(Module):
    """Wraps a module so that its activations are recomputed in the backward pass (see :func:`checkpoint`).

    The wrapped module is the child ``module``, so parameter names gain a ``module.`` prefix; use
    ``nn.checkpoint(block, x)`` inside ``forward`` to keep the names unchanged.
    """

    def __init__(self, module: Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: ag.Tensor) -> ag.Tensor:
        """Runs the wrapped module under :func:`checkpoint`: same outputs, activations recomputed for the
        gradient.
        """
        return checkpoint(self.module, *inputs)
