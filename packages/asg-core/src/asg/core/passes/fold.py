"""Constant folding: compute, once, what depends on constants only."""

from __future__ import annotations

import math

import numpy as np

from ..graph import Graph, Node
from ..registry import RANDOM, get_op
from ..shapes import is_static
from .base import register_pass
from .rewrite import is_pure, rewrite

MAX_FOLDED_ELEMENTS = 100_000


def foldable(node: Node, max_elements: int = MAX_FOLDED_ELEMENTS) -> bool:
    """True when ``node`` reads constants only, has a static shape of at most ``max_elements`` and a pure numpy kernel.

    Random ops are never folded: another backend may draw its numbers differently.
    """
    if node.op in ("input", "parameter", "constant") or not is_pure(node.op):
        return False
    if not is_static(node.shape) or math.prod(node.shape) > max_elements:
        return False
    if not all(i.op == "constant" for i in node.inputs):
        return False
    op = get_op(node.op)
    return "numpy" in op.kernels and not op.has(RANDOM)


def evaluate(node: Node) -> np.ndarray | None:
    """The value of a node over constant inputs, computed by its numpy kernel; ``None`` if the kernel fails."""
    kernel = get_op(node.op).kernels["numpy"]
    try:
        with np.errstate(all="ignore"):
            value = np.asarray(kernel(*(i.data for i in node.inputs), **node.attrs))
    except Exception:
        return None
    if value.shape != node.shape:
        return None
    value = np.array(value, dtype=node.dtype, order="C", copy=True)
    value.setflags(write=False)
    return value


def constant_like(node: Node, value: np.ndarray) -> Node:
    """A constant node holding ``value``, with ``node``'s name and meta (marked ``meta["folded"]``)."""
    meta = {**node.meta, "folded": node.op}
    return Node("constant", (), {}, value.shape, node.dtype, node.name, value, meta)


@register_pass("constant_folding")
def constant_folding(graph: Graph, max_elements: int = MAX_FOLDED_ELEMENTS) -> Graph:
    """Replace nodes computed from constants alone by constants (results up to ``max_elements``).

    Values are computed with the same numpy kernels the executor runs, so results are identical.
    ``full`` of a large or symbolic shape stays a node: it costs nothing to keep and a lot to store.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", (3,))
        >>> g = ag.Graph([(x * (ag.constant(2.0) + 1.0)).node])
        >>> print(constant_folding(g))
        { lambda ; x:f32[3]. let
            a:f32[3] = mul x 3.0:f32
          in (a) }
    """

    def fold(node: Node) -> Node | None:
        if not foldable(node, max_elements):
            return None
        value = evaluate(node)
        return None if value is None else constant_like(node, value)

    return rewrite(graph, fold, "constant_folding")
