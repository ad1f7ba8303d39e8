"""Fixing a graph's symbolic dimensions to the concrete shapes of one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ShapeError
from .graph import Graph, Node
from .registry import TensorType, get_op
from .shapes import Dim, bind_shape, format_shape, resolve_dim


@dataclass
class Specialization:
    """Concrete shapes and resolved attributes of every node for one set of input shapes."""

    bindings: dict[str, int]
    shapes: dict[int, tuple[int, ...]]
    attrs: dict[int, dict[str, Any]]


def _resolve_attr(value: Any, bindings: Mapping[str, int]) -> Any:
    if isinstance(value, tuple):
        return tuple(_resolve_attr(v, bindings) for v in value)
    if isinstance(value, str):
        return resolve_dim(value, bindings)
    return value


def bind_inputs(graph: Graph, arrays: Sequence[np.ndarray]) -> dict[str, int]:
    """Values of the symbolic dimensions, read off the arrays fed to ``graph.inputs``."""
    bindings: dict[str, int] = {}
    for node, array in zip(graph.inputs, arrays, strict=True):
        try:
            bind_shape(node.shape, array.shape, bindings, f"input {node.label!r}")
        except ValueError as err:
            raise ShapeError(str(err)) from None
    return bindings


def specialize(graph: Graph, bindings: dict[str, int]) -> Specialization:
    """Re-run every shape rule with concrete shapes; check them against the symbolic ones."""
    shapes: dict[int, tuple[int, ...]] = {}
    attrs: dict[int, dict[str, Any]] = {}
    for node in graph.nodes:
        if node.op == "input":
            shapes[node.id] = tuple(resolve_dim(d, bindings) for d in node.shape)
            continue
        if node.op == "parameter":
            shapes[node.id] = tuple(node.data.value.shape)
            continue
        if node.op == "constant":
            shapes[node.id] = tuple(node.data.shape)
            continue
        op = get_op(node.op)
        resolved = dict(node.attrs)
        for name in op.shape_attrs:
            resolved[name] = _resolve_attr(node.attrs[name], bindings)
        types = [TensorType(shapes[i.id], i.dtype) for i in node.inputs]
        try:
            result = op.infer(*types, **resolved)
        except (ValueError, TypeError) as err:
            raise ShapeError(_where(node, bindings) + f": {err}") from None
        concrete = tuple(int(d) for d in result.shape)
        expected = _expected(node.shape, bindings)
        if expected is not None and expected != concrete:
            raise ShapeError(
                _where(node, bindings)
                + f": its shape {format_shape(node.shape)} is {concrete} for these inputs, not {expected}"
            )
        shapes[node.id] = concrete
        attrs[node.id] = resolved
    return Specialization(bindings, shapes, attrs)


def _expected(shape: Sequence[Dim], bindings: Mapping[str, int]) -> tuple[int, ...] | None:
    try:
        return tuple(resolve_dim(d, bindings) for d in shape)
    except ValueError:
        return None


def _where(node: Node, bindings: Mapping[str, int]) -> str:
    ins = ", ".join(f"{i.label} {format_shape(i.shape)}" for i in node.inputs)
    where = f" (built at {node.meta['source']})" if node.meta.get("source") else ""
    return f"{node.op}: {ins} with {dict(bindings)}{where}"
