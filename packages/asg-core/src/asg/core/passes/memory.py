"""Memory planning: give intermediate values reusable buffers once their lifetimes end.

The planner walks a specialised graph in execution order. A value whose kernel can write into a
given buffer (``out_arg``) gets one from a free list keyed by (shape, dtype); the buffer returns
to the list after the last step that reads the value or any view of it. An elementwise op may
write in place over an input that dies at that very step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..graph import LEAF_OPS, Graph
from ..registry import get_op
from ..specialize import Specialization


@dataclass
class MemoryPlan:
    """``buffer_of`` maps node ids to indices into ``buffers`` ((shape, dtype) of each buffer)."""

    buffer_of: dict[int, int] = field(default_factory=dict)
    buffers: list[tuple[tuple[int, ...], str]] = field(default_factory=list)
    in_place: int = 0

    def bytes(self) -> int:
        """Total size of the planned buffers."""
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in self.buffers)

    @property
    def planned_values(self) -> int:
        """How many values write into a planned buffer (several may share one)."""
        return len(self.buffer_of)

    def planned_bytes(self, spec: Specialization) -> int:
        """Bytes the planned values would take with one buffer each (compare with :meth:`bytes`)."""
        return sum(_nbytes(spec.shapes[i], self.buffers[b][1]) for i, b in self.buffer_of.items())


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def intermediate_bytes(graph: Graph, spec: Specialization) -> int:
    """Bytes of every value the graph computes (views excluded): the memory of a run without reuse."""
    return sum(
        _nbytes(spec.shapes[n.id], n.dtype)
        for n in graph.nodes
        if n.op not in LEAF_OPS and not get_op(n.op).view
    )


def plan_memory(graph: Graph, spec: Specialization, keep_alive: Iterable[int]) -> MemoryPlan:
    """Assign buffers to the nodes of ``graph`` (run in its order); ``keep_alive`` ids are never pooled.

    The graph's outputs (including the new values of parameter updates, which are copied into
    the parameters after the run) are always kept alive, whatever ``keep_alive`` says.

    Example:
        >>> import asg.core as ag
        >>> from asg.core.specialize import specialize
        >>> x = ag.input("x", (4, 4))
        >>> y = ((x + 1.0) * 2.0).sum()
        >>> g = ag.Graph([y.node])
        >>> plan = plan_memory(g, specialize(g, {}), keep_alive=[y.node.id])
        >>> len(plan.buffers), plan.in_place  # x+1 gets a buffer; *2 reuses it in place
        (1, 1)
    """
    keep = set(keep_alive) | {n.id for n in graph.outputs}
    order = [n for n in graph.nodes if n.op not in LEAF_OPS]
    position = {n.id: i for i, n in enumerate(order)}
    end = len(order)

    root: dict[int, int] = {}  # views share the storage of their first input
    for n in graph.nodes:
        is_view = n.op not in LEAF_OPS and get_op(n.op).view and n.inputs
        root[n.id] = root[n.inputs[0].id] if is_view else n.id

    last_use: dict[int, int] = {}
    for n in order:
        for i in n.inputs:
            r = root[i.id]
            last_use[r] = max(last_use.get(r, -1), position[n.id])
    for node_id in keep:
        if node_id in root:
            last_use[root[node_id]] = end

    plan = MemoryPlan()
    free: dict[tuple[tuple[int, ...], str], list[int]] = {}
    key_of: dict[int, tuple[tuple[int, ...], str]] = {}

    def release(roots: Iterable[int]) -> None:
        for r in roots:
            free.setdefault(key_of[r], []).append(plan.buffer_of[r])

    for n in order:
        op = get_op(n.op)
        step = position[n.id]
        dying = [r for r in {root[i.id] for i in n.inputs} if r in plan.buffer_of and last_use[r] == step]
        if op.elementwise:
            release(dying)
        if op.out_arg and not op.view and n.id not in keep and n.id in last_use:
            key = (spec.shapes[n.id], n.dtype)
            slots = free.get(key)
            if slots:
                buffer = slots.pop()
                if any(plan.buffer_of[r] == buffer for r in dying):
                    plan.in_place += 1
            else:
                buffer = len(plan.buffers)
                plan.buffers.append(key)
            plan.buffer_of[n.id] = buffer
            key_of[n.id] = key
        if not op.elementwise:
            release(dying)
    return plan
