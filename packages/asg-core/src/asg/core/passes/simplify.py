"""Algebraic simplification: identities that hold exactly for every input.

Each rule keeps the node's shape and dtype and the value of every element. The rules, with
``0`` and ``1`` meaning a constant or ``full`` node holding only that value (also through
reshape, transpose and broadcast):

- ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1`` -> ``x``; when the other operand
  broadcasts ``x`` to a larger shape, ``broadcast_to(x)`` (a view) instead. (``-0.0 + 0`` gives
  ``+0.0``: the two zeros compare equal, so that is the only change, as in XLA.)
- ``x * 0`` -> zeros only when ``x`` is known to be finite (``inf * 0`` is NaN).
- ``x + (-y)`` -> ``x - y``; ``x - (-y)`` -> ``x + y``; ``(-x) * (-y)`` -> ``x * y``; ``-(-x)`` -> ``x``.
- ``reshape(reshape(x))`` -> one reshape (not of a transpose: that reshape copies), or ``x``;
  ``transpose(transpose(x))`` -> one transpose, or ``x``; ``broadcast_to(broadcast_to(x))`` -> one
  broadcast; ``broadcast_to``/``sum_to``/``reshape`` to ``x``'s own shape, ``transpose`` by the
  identity and ``cast`` to ``x``'s dtype -> ``x``.
- A sum of tensors that are zero outside disjoint ranges of one axis -> one ``concat`` of the ranges
  (zeros of a gap's shape where no range lands). Such a tensor is a ``concat`` along that axis with
  zero inputs (the gradient of ``split``/``chunk``/``slice_range``) or a ``slice_backward`` (the gradient
  of ``x[a:b]``) of step-1 ranges. The gradient of ``q, k, v = chunk(qkv, 3, axis)`` is then one concat
  of the three piece gradients instead of three zero-padded full-size tensors and two adds. Ranges that
  coincide on the axis are summed in turn (pieces tiling two axes); ranges that overlap otherwise keep
  the adds. Each element is one piece's value plus zeros, so the values are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..graph import Graph, Node
from ..registry import MOVEMENT, op_has
from .base import register_pass
from .rewrite import make_node, rewrite


class _Values:
    """Cache of "every element of this node equals v" facts."""

    def __init__(self) -> None:
        self._known: dict[int, Any] = {}

    def uniform(self, node: Node) -> Any:
        """The single value all elements of ``node`` hold (a Python number), or ``None`` when unknown."""
        if node.id in self._known:
            return self._known[node.id]
        value: Any = None
        if node.op == "constant" and node.data.size > 0:
            first = node.data.flat[0]
            if not (isinstance(first, np.floating) and np.isnan(first)) and np.all(node.data == first):
                value = first.item()
        elif node.op == "full":
            value = node.attrs["value"]
        elif op_has(node.op, MOVEMENT):
            value = self.uniform(node.inputs[0])
        self._known[node.id] = value
        return value

    def is_zero(self, node: Node) -> bool:
        value = self.uniform(node)
        return value is not None and value == 0 and not isinstance(value, bool)

    def is_one(self, node: Node) -> bool:
        value = self.uniform(node)
        return value is not None and value == 1 and not isinstance(value, bool)

    def is_finite(self, node: Node) -> bool:
        value = self.uniform(node)
        if value is not None:
            return bool(np.isfinite(value))
        return node.op == "constant" and bool(np.all(np.isfinite(node.data)))


def _same_type(a: Node, b: Node) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def _try(op: str, inputs: list[Node], attrs: dict[str, Any], like: Node) -> Node | None:
    """A new node, provided its shape rule accepts the inputs and it has ``like``'s exact type."""
    try:
        node = make_node(op, inputs, attrs, like)
    except (ShapeError, ValueError, TypeError):
        return None
    return node if _same_type(node, like) else None


def _identity_of(x: Node, node: Node) -> Node | None:
    """``x`` standing for ``node``: itself when the types match, or broadcast to ``node``'s shape."""
    if _same_type(x, node):
        return x
    if x.dtype == node.dtype:
        return _try("broadcast_to", [x], {"shape": node.shape}, node)
    return None


def _simplify_add(node: Node, values: _Values) -> Node | None:
    a, b = node.inputs
    if values.is_zero(b):
        return _identity_of(a, node)
    if values.is_zero(a):
        return _identity_of(b, node)
    if b.op == "neg":
        return _try("sub", [a, b.inputs[0]], {}, node)
    if a.op == "neg":
        return _try("sub", [b, a.inputs[0]], {}, node)
    return _merge_segments(node, values)


Segments = dict[tuple[int, int], Node]
"""The non-zero ranges ``[start, stop)`` of a tensor along one axis and their contents (zeros elsewhere)."""


def _slice_bounds(node: Node) -> list[tuple[int, int] | None] | None:
    """Per axis of a ``slice_backward``: the step-1 range it writes, ``None`` for a symbolic axis it
    writes whole; ``None`` in place of the list when some range is empty, strided or symbolic."""
    bounds: list[tuple[int, int] | None] = []
    for d, (start, stop, step) in zip(node.shape, node.attrs["index"], strict=True):
        if not isinstance(d, int):
            if start not in (None, 0) or stop is not None or step != 1:
                return None
            bounds.append(None)
            continue
        r = range(*slice(start, stop, step).indices(d))
        if len(r) == 0 or (step != 1 and len(r) > 1):
            return None
        bounds.append((r.start, r.start + len(r)))
    return bounds


def _segment_axes(node: Node) -> list[int]:
    """The axes along which :func:`_segments` can describe ``node``."""
    if node.op == "concat":
        return [node.attrs["axis"]]
    if node.op == "slice_backward" and (bounds := _slice_bounds(node)) is not None:
        return [a for a, b in enumerate(bounds) if b is not None and b != (0, node.shape[a])]
    return []


def _segments(node: Node, axis: int, values: _Values) -> Segments | None:
    """``node`` as non-zero ranges along ``axis`` (see :data:`Segments`), or ``None`` when it is not one."""
    if node.op == "concat" and node.attrs["axis"] == axis:
        segments, start = {}, 0
        for x in node.inputs:
            if not isinstance(size := x.shape[axis], int):
                return None
            if size and not values.is_zero(x):
                segments[start, start + size] = x
            start += size
        return segments
    if node.op != "slice_backward" or axis not in _segment_axes(node):
        return None
    bounds = _slice_bounds(node)
    assert bounds is not None and bounds[axis] is not None
    start, stop = bounds[axis]
    (g,) = node.inputs
    shape = tuple(stop - start if a == axis else d for a, d in enumerate(node.shape))
    index = tuple((0, stop - start, 1) if a == axis else s for a, s in enumerate(node.attrs["index"]))
    inner = make_node("slice_backward", [g], {"shape": shape, "index": index}, node)
    return {(start, stop): g if _segment_axes(inner) == [] and g.shape == shape else inner}


def _merge_segments(node: Node, values: _Values) -> Node | None:
    """``a + b`` as one ``concat`` when ``a`` and ``b`` are zero outside disjoint (or coinciding) ranges
    of one axis; ``None`` otherwise."""
    a, b = node.inputs
    if not (_same_type(a, node) and _same_type(b, node)):
        return None
    for axis in sorted(set(_segment_axes(a)) & set(_segment_axes(b))):
        merged = _merge_along(node, axis, values)
        if merged is not None:
            return merged
    return None


def _merge_along(node: Node, axis: int, values: _Values) -> Node | None:
    parts = [_segments(x, axis, values) for x in node.inputs]
    if parts[0] is None or parts[1] is None:
        return None
    merged = dict(parts[0])
    for (start, stop), x in parts[1].items():
        if any(s < stop and start < e and (s, e) != (start, stop) for s, e in merged):
            return None  # overlapping ranges: the adds stay
        if (start, stop) in merged:  # the same range in both: sum the two, if that is a concat too
            total = _merge_segments(make_node("add", [merged[start, stop], x], {}, node), values)
            if total is None:
                return None
            x = total
        merged[start, stop] = x
    pieces, at, size = [], 0, node.shape[axis]
    for (start, stop), x in sorted(merged.items()):
        pieces += [_zeros(node, axis, start - at)] if start > at else []
        pieces.append(x)
        at = stop
    pieces += [_zeros(node, axis, size - at)] if size > at else []
    if len(pieces) == 1:
        return pieces[0] if _same_type(pieces[0], node) else None
    return _try("concat", pieces, {"axis": axis}, node)


def _zeros(like: Node, axis: int, size: int) -> Node:
    """Zeros of ``like``'s type with ``size`` entries on ``axis``."""
    shape = tuple(size if a == axis else d for a, d in enumerate(like.shape))
    return make_node("full", [], {"shape": shape, "value": 0.0, "dtype": like.dtype}, like)


def _simplify_sub(node: Node, values: _Values) -> Node | None:
    a, b = node.inputs
    if values.is_zero(b):
        return _identity_of(a, node)
    if b.op == "neg":
        return _try("add", [a, b.inputs[0]], {}, node)
    return None


def _simplify_mul(node: Node, values: _Values) -> Node | None:
    a, b = node.inputs
    if values.is_one(b):
        return _identity_of(a, node)
    if values.is_one(a):
        return _identity_of(b, node)
    if (values.is_zero(a) and values.is_finite(b)) or (values.is_zero(b) and values.is_finite(a)):
        return _try("full", [], {"shape": node.shape, "value": 0.0, "dtype": node.dtype}, node)
    if a.op == "neg" and b.op == "neg":
        return _try("mul", [a.inputs[0], b.inputs[0]], {}, node)
    return None


def _simplify_div(node: Node, values: _Values) -> Node | None:
    a, b = node.inputs
    return _identity_of(a, node) if values.is_one(b) else None


def _simplify_neg(node: Node, values: _Values) -> Node | None:
    (x,) = node.inputs
    return x.inputs[0] if x.op == "neg" and _same_type(x.inputs[0], node) else None


def _simplify_reshape(node: Node, values: _Values) -> Node | None:
    (x,) = node.inputs
    if x.op == "reshape":
        x = x.inputs[0]
        if _same_type(x, node):
            return x
        if x.op == "transpose":
            # reshaping a transposed view copies it: the inner reshape's copy (which attention's
            # (B, T, H, hs) -> (B, T, d) also feeds elsewhere) is reshaped as a view, not copied again
            return None
        return _try("reshape", [x], {"shape": node.shape}, node)
    return x if _same_type(x, node) else None


def _simplify_transpose(node: Node, values: _Values) -> Node | None:
    (x,) = node.inputs
    axes = tuple(node.attrs["axes"])
    if x.op == "transpose":
        inner = tuple(x.attrs["axes"])
        axes = tuple(inner[a] for a in axes)
        x = x.inputs[0]
        if axes == tuple(range(len(axes))):
            return x if _same_type(x, node) else None
        return _try("transpose", [x], {"axes": axes}, node)
    return x if axes == tuple(range(len(axes))) and _same_type(x, node) else None


def _simplify_broadcast_to(node: Node, values: _Values) -> Node | None:
    (x,) = node.inputs
    if _same_type(x, node):
        return x
    if x.op == "broadcast_to":
        return _try("broadcast_to", [x.inputs[0]], {"shape": node.shape}, node)
    return None


def _simplify_same_type(node: Node, values: _Values) -> Node | None:
    (x, *_) = node.inputs
    return x if _same_type(x, node) else None


RULES: dict[str, Callable[[Node, _Values], Node | None]] = {
    "add": _simplify_add,
    "sub": _simplify_sub,
    "mul": _simplify_mul,
    "div": _simplify_div,
    "neg": _simplify_neg,
    "reshape": _simplify_reshape,
    "transpose": _simplify_transpose,
    "broadcast_to": _simplify_broadcast_to,
    "sum_to": _simplify_same_type,
    "cast": _simplify_same_type,
}


@register_pass("simplify")
def simplify(graph: Graph) -> Graph:
    """Apply the algebraic identities of :mod:`asg.core.passes.simplify` until none applies.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", (2, 3))
        >>> y = ((x * 1.0 + 0.0).T.T - (-x)).reshape(3, 2).reshape(6)
        >>> print(simplify(ag.Graph([y.node])))
        { lambda ; x:f32[2,3]. let
            a:f32[2,3] = add x x
            b:f32[6] = reshape[shape=(6,)] a
          in (b) }
    """
    values = _Values()

    def apply_rules(node: Node) -> Node | None:
        result = None
        for _ in range(16):  # a replacement may itself simplify (it is new, so rewrite does not revisit it)
            rule = RULES.get(node.op)
            new = rule(node, values) if rule is not None else None
            if new is None or new is node:
                break
            result = node = new
        return result

    return rewrite(graph, apply_rules, "simplify")
