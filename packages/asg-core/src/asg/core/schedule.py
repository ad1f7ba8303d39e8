"""The schedule: a specialised graph as ordered steps plus a buffer table, for every backend.

Core builds one :class:`Schedule` per plan (per set of input shapes). Its steps are the graph's
compute nodes in execution order, each with the value ids it reads, the value it writes, its
resolved attributes and the values that die after it. Its :class:`MemoryPlan` is the buffer table:
every reusable buffer's shape, dtype, size and lifetime, which value writes into which buffer, which
values are written in place over a dying input, and which are views of another value's storage.

The planner (:func:`plan_memory`) walks the steps in order. A value whose kernel can write into a
given buffer (``out_arg``) gets one from a free list keyed by (shape, dtype); the buffer returns to the
list after the last step that reads the value or any view of it. A kernel that is safe in place
(``in_place``, elementwise ops) may write over an input that dies at that very step. The backend
supplies these flags through its kernel records (:class:`~asg.core.registry.Kernel`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from .graph import LEAF_OPS, Graph, Node
from .registry import VIEW, Kernel, get_op
from .specialize import Specialization


class KernelFlags(Protocol):
    """What the planner asks of a backend's kernel (every :class:`~asg.core.registry.Kernel` has it)."""

    out_arg: bool
    returns_view: bool
    in_place: bool


_NO_FLAGS = Kernel(lambda *a: None)


def numpy_flags(graph: Graph) -> dict[int, KernelFlags]:
    """The numpy kernels' flags for every compute node of ``graph`` (the registry's records)."""
    return {n.id: get_op(n.op).kernels.get("numpy", _NO_FLAGS) for n in graph.nodes if n.op not in LEAF_OPS}


class Buffer(NamedTuple):
    """One reusable buffer: its type, size and the steps between which it holds live data."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    first: int  # the first step writing into it
    last: int  # the last step reading a value held in it (len(steps) for values kept to the end)


@dataclass
class MemoryPlan:
    """The buffer table of a schedule.

    Attributes:
        buffer_of: node id -> index into ``buffers`` of the buffer its value is written into.
        buffers: the buffers (several values with disjoint lifetimes share one).
        in_place_of: node id -> id of the dying input value whose buffer it overwrites.
        alias_of: node id of a view -> id of the value whose storage it shares.
    """

    buffer_of: dict[int, int] = field(default_factory=dict)
    buffers: list[Buffer] = field(default_factory=list)
    in_place_of: dict[int, int] = field(default_factory=dict)
    alias_of: dict[int, int] = field(default_factory=dict)

    @property
    def in_place(self) -> int:
        """How many values are written in place over an input that dies at that step."""
        return len(self.in_place_of)

    def bytes(self) -> int:
        """Total size of the planned buffers."""
        return sum(b.nbytes for b in self.buffers)

    @property
    def planned_values(self) -> int:
        """How many values write into a planned buffer (several may share one)."""
        return len(self.buffer_of)

    def planned_bytes(self, spec: Specialization) -> int:
        """Bytes the planned values would take with one buffer each (compare with :meth:`bytes`)."""
        return sum(_nbytes(spec.shapes[i], self.buffers[b].dtype) for i, b in self.buffer_of.items())


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def intermediate_bytes(graph: Graph, spec: Specialization) -> int:
    """Bytes of every value the graph computes (views excluded): the memory of a run without reuse."""
    return sum(
        _nbytes(spec.shapes[n.id], n.dtype)
        for n in graph.nodes
        if n.op not in LEAF_OPS and not get_op(n.op).has(VIEW)
    )


def _roots(graph: Graph, kernels: Mapping[int, KernelFlags]) -> dict[int, int]:
    """Node id -> the id of the value owning its storage (itself, or the base of a view chain)."""
    root: dict[int, int] = {}
    for n in graph.nodes:
        is_view = n.op not in LEAF_OPS and kernels[n.id].returns_view and n.inputs
        root[n.id] = root[n.inputs[0].id] if is_view else n.id
    return root


def plan_memory(
    graph: Graph,
    spec: Specialization,
    keep_alive: Iterable[int],
    kernels: Mapping[int, KernelFlags] | None = None,
) -> MemoryPlan:
    """Assign buffers to the nodes of ``graph`` (run in its order); ``keep_alive`` ids are never pooled.

    ``kernels`` maps each compute node's id to its backend kernel's flags (default: the numpy
    kernels). The graph's outputs (including the new values of parameter updates, which are copied
    into the parameters after the run) are always kept alive, whatever ``keep_alive`` says.

    Example:
        >>> import asg.core as ag
        >>> from asg.core.specialize import specialize
        >>> x = ag.input("x", (4, 4))
        >>> y = ((x + 1.0) * 2.0).sum()
        >>> g = ag.Graph([y.node])
        >>> plan = plan_memory(g, specialize(g, {}), keep_alive=[y.node.id])
        >>> len(plan.buffers), plan.in_place  # x+1 gets a buffer; *2 reuses it in place
        (1, 1)
        >>> plan.buffers[0]
        Buffer(shape=(4, 4), dtype='float32', nbytes=64, first=0, last=2)
    """
    flags = numpy_flags(graph) if kernels is None else kernels
    keep = set(keep_alive) | {n.id for n in graph.outputs}
    order = [n for n in graph.nodes if n.op not in LEAF_OPS]
    position = {n.id: i for i, n in enumerate(order)}
    end = len(order)
    root = _roots(graph, flags)

    last_use: dict[int, int] = {}
    for n in order:
        for i in n.inputs:
            r = root[i.id]
            last_use[r] = max(last_use.get(r, -1), position[n.id])
    for node_id in keep:
        if node_id in root:
            last_use[root[node_id]] = end

    plan = MemoryPlan(alias_of={k: r for k, r in root.items() if k != r})
    free: dict[tuple[tuple[int, ...], str], list[int]] = {}
    key_of: dict[int, tuple[tuple[int, ...], str]] = {}
    span: list[list[int]] = []  # per buffer: [first write, last read]

    def release(roots: Iterable[int]) -> None:
        for r in roots:
            free.setdefault(key_of[r], []).append(plan.buffer_of[r])

    for n in order:
        kernel = flags[n.id]
        step = position[n.id]
        dying = [r for r in {root[i.id] for i in n.inputs} if r in plan.buffer_of and last_use[r] == step]
        if kernel.in_place:
            release(dying)
        if kernel.out_arg and not kernel.returns_view and n.id not in keep and n.id in last_use:
            key = (spec.shapes[n.id], n.dtype)
            slots = free.get(key)
            if slots:
                buffer = slots.pop()
                over = [r for r in dying if plan.buffer_of[r] == buffer]
                if over:
                    plan.in_place_of[n.id] = over[0]
                span[buffer][1] = max(span[buffer][1], last_use[n.id])
            else:
                buffer = len(span)
                span.append([step, last_use[n.id]])
            plan.buffer_of[n.id] = buffer
            key_of[n.id] = key
        if not kernel.in_place:
            release(dying)
    keys: dict[int, tuple[tuple[int, ...], str]] = {}
    for node_id, b in plan.buffer_of.items():
        keys.setdefault(b, key_of[node_id])
    plan.buffers = [
        Buffer(keys[b][0], keys[b][1], _nbytes(*keys[b]), first, last) for b, (first, last) in enumerate(span)
    ]
    return plan


@dataclass(frozen=True)
class Step:
    """One kernel call of a schedule.

    Attributes:
        index: position in :attr:`Schedule.steps`.
        node: the graph node computed.
        inputs: ids of the values read (node ids).
        output: id of the value written (``node.id``).
        attrs: the node's attributes with symbolic dims resolved.
        shape: the output's concrete shape.
        buffer: index into the buffer table of the buffer written, or ``None`` (the kernel allocates).
        frees: ids of the values no step after this one reads (a backend may drop them).
    """

    index: int
    node: Node
    inputs: tuple[int, ...]
    output: int
    attrs: Mapping[str, Any]
    shape: tuple[int, ...]
    buffer: int | None
    frees: tuple[int, ...]


@dataclass
class Schedule:
    """A graph specialised to one set of input shapes, as backends consume it.

    Attributes:
        graph, spec: the optimised graph and its concrete shapes and attributes.
        steps: the kernel calls in execution order.
        memory: the buffer table (:class:`MemoryPlan`).
        inputs, parameters, constants: the leaf nodes (inputs in call order).
        outputs: the ``num_outputs`` result nodes.
        output_copies: per output, whether it must be copied before being returned (it may alias a
            leaf, a planned buffer or another output).
        updates: (parameter node, new-value node) pairs.
        update_copies: per update, whether the new value may alias storage an update writes.
        kernels: node id -> the backend kernel's flags used to plan (views, in place, ``out=``).
    """

    graph: Graph
    spec: Specialization
    steps: list[Step]
    memory: MemoryPlan
    inputs: list[Node]
    parameters: list[Node]
    constants: list[Node]
    outputs: list[Node]
    output_copies: list[bool]
    updates: list[tuple[Node, Node]]
    update_copies: list[bool]
    kernels: Mapping[int, KernelFlags]

    def nbytes(self, node_id: int) -> int:
        """Size in bytes of a value of the schedule."""
        return _nbytes(self.spec.shapes[node_id], self._by_id[node_id].dtype)

    @functools.cached_property
    def _by_id(self) -> dict[int, Node]:
        return {n.id: n for n in self.graph.nodes}

    def peak_bytes(self) -> int:
        """Most bytes of computed values a plan holds at once: the whole buffer table (allocated once
        per plan) plus, at their most, the values kernels allocate themselves while they are alive.

        Views hold nothing of their own; leaves (inputs, parameters, constants) are not counted.
        """
        root = _roots(self.graph, self.kernels)
        end = len(self.steps)
        last: dict[int, int] = {}
        for step in self.steps:
            for i in step.inputs:
                last[root[i]] = step.index
        for node in self.outputs + [v for _, v in self.updates]:
            last[root[node.id]] = end
        live = [0] * (end + 2)  # bytes of allocated values per step, as a difference array
        for step in self.steps:
            n = step.output
            if n in self.memory.buffer_of or root[n] != n:
                continue
            live[step.index] += self.nbytes(n)
            live[max(last.get(n, step.index), step.index) + 1] -= self.nbytes(n)
        peak = running = 0
        for delta in live:
            running += delta
            peak = max(peak, running)
        return self.memory.bytes() + peak

    def bytes_by_family(self) -> dict[str, int]:
        """Bytes of the values each op family computes (views excluded), largest first."""
        totals: dict[str, int] = {}
        for step in self.steps:
            if step.output in self.memory.alias_of:
                continue
            family = get_op(step.node.op).family.rsplit(".", 1)[-1] or "other"
            totals[family] = totals.get(family, 0) + self.nbytes(step.output)
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def build_schedule(
    graph: Graph,
    spec: Specialization,
    num_outputs: int,
    updates: Sequence[tuple[Node, Node]],
    kernels: Mapping[int, KernelFlags] | None = None,
    memory_planning: bool = True,
) -> Schedule:
    """Order the compute nodes of ``graph`` and plan their buffers (``memory_planning=False``: none).

    ``kernels`` holds the flags of the backend's lowered kernel for every compute node (default:
    the numpy kernels). The graph's outputs are the ``num_outputs`` results followed by the new
    values of ``updates``.

    Example:
        >>> import asg.core as ag
        >>> from asg.core.specialize import specialize
        >>> x = ag.input("x", (3,))
        >>> g = ag.Graph([((x + 1.0) * 2.0).node])
        >>> s = build_schedule(g, specialize(g, {}), 1, [])
        >>> [(step.node.op, step.buffer) for step in s.steps]  # the output is never a pooled buffer
        [('add', 0), ('mul', None)]
    """
    flags = numpy_flags(graph) if kernels is None else kernels
    outputs = graph.outputs[:num_outputs]
    keep = {n.id for n in outputs} | {value.id for _, value in updates}
    memory = plan_memory(graph, spec, keep, flags) if memory_planning else MemoryPlan()
    compute = [n for n in graph.nodes if n.op not in LEAF_OPS]
    last_reader: dict[int, int] = {}
    for index, n in enumerate(compute):
        for i in n.inputs:
            last_reader[i.id] = index
    frees: dict[int, list[int]] = {}
    for node_id, index in last_reader.items():
        if node_id not in keep:
            frees.setdefault(index, []).append(node_id)
    steps = [
        Step(
            index=index,
            node=n,
            inputs=tuple(i.id for i in n.inputs),
            output=n.id,
            attrs=spec.attrs[n.id],
            shape=spec.shapes[n.id],
            buffer=memory.buffer_of.get(n.id),
            frees=tuple(frees.get(index, ())),
        )
        for index, n in enumerate(compute)
    ]

    def aliases(node: Node) -> bool:
        return node.op in LEAF_OPS or flags[node.id].returns_view

    return Schedule(
        graph=graph,
        spec=spec,
        steps=steps,
        memory=memory,
        inputs=list(graph.inputs),
        parameters=[n for n in graph.nodes if n.op == "parameter"],
        constants=[n for n in graph.nodes if n.op == "constant"],
        outputs=list(outputs),
        # An output listed twice is returned as two arrays, so the caller may change one freely.
        output_copies=[aliases(n) or n in outputs[:i] for i, n in enumerate(outputs)],
        updates=list(updates),
        update_copies=[aliases(value) for _, value in updates],
        kernels=flags,
    )
