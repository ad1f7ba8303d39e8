"""Profiling and inspection of compiled plans: per-node timings, captured values, a NaN/Inf check.

Everything here runs through a plan's traced run (``plan.run_traced(feeds, on_step, update)``), so it
works on every backend: numpy reports wall time per kernel, a GPU backend fills the same
:class:`Profile` from timestamp queries. Reached through :meth:`asg.core.Function.profile`,
:meth:`~asg.core.Function.capture` and :meth:`~asg.core.Function.check_numerics`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dtypes import is_float
from .errors import NonFiniteError
from .graph import Node
from .schedule import Schedule, Step, intermediate_bytes


@dataclass(frozen=True)
class NodeTiming:
    """One kernel of a profiled step.

    Attributes:
        index: the step's position in the schedule.
        op, name, scope: the node's op, printed name and module path (``None`` outside any scope).
        node_id: the node's id (``node.id``) in the graph the plan runs (``plan.schedule.graph``; for
            the numpy backend that is ``Function.graph``).
        seconds: time spent in the kernel.
        share: ``seconds`` over the step's kernel time.
        line: the node's line of the graph printout.
    """

    index: int
    op: str
    name: str
    scope: str | None
    seconds: float
    share: float
    line: str
    node_id: int


@dataclass(frozen=True)
class MemoryFigures:
    """Memory of one plan, from its schedule.

    Attributes:
        planned_bytes: total size of the buffer table (reused buffers).
        peak_bytes: most bytes of computed values the plan holds at once: the buffer table plus the
            values kernels allocate, at their most (:meth:`~asg.core.schedule.Schedule.peak_bytes`).
        unplanned_bytes: bytes of every computed value with no reuse (views excluded).
        bytes_by_family: bytes each op family computes (``elementwise``, ``linalg`` ...).
    """

    planned_bytes: int
    peak_bytes: int
    unplanned_bytes: int
    bytes_by_family: dict[str, int]

    @classmethod
    def of(cls, schedule: Schedule) -> MemoryFigures:
        """The memory figures of a plan's schedule (``plan.schedule``)."""
        return cls(
            planned_bytes=schedule.memory.bytes(),
            peak_bytes=schedule.peak_bytes(),
            unplanned_bytes=intermediate_bytes(schedule.graph, schedule.spec),
            bytes_by_family=schedule.bytes_by_family(),
        )


@dataclass
class Profile:
    """Per-node timings and memory figures of one step; ``print(profile)`` shows a table.

    Attributes:
        backend: the backend that ran the step.
        nodes: one :class:`NodeTiming` per kernel, in execution order.
        kernel_seconds: the sum of the kernels' times.
        wall_seconds: the whole traced step, executor overhead included.
        memory: the plan's :class:`MemoryFigures`.
    """

    backend: str
    nodes: list[NodeTiming]
    kernel_seconds: float
    wall_seconds: float
    memory: MemoryFigures

    @classmethod
    def from_timings(
        cls, backend: str, schedule: Schedule, seconds: Sequence[float], wall_seconds: float
    ) -> Profile:
        """Build a profile from one time per step of ``schedule`` (how a GPU backend fills it too)."""
        names = schedule.graph.names()
        total = float(sum(seconds))
        nodes = [
            NodeTiming(
                index=step.index,
                op=step.node.op,
                name=names[step.node.id],
                scope=step.node.meta.get("scope"),
                seconds=float(s),
                share=float(s) / total if total > 0 else 0.0,
                line=schedule.graph.format_node(step.node),
                node_id=step.node.id,
            )
            for step, s in zip(schedule.steps, seconds, strict=True)
        ]
        return cls(backend, nodes, total, wall_seconds, MemoryFigures.of(schedule))

    @classmethod
    def from_dispatches(
        cls,
        backend: str,
        schedule: Schedule,
        rows: Sequence[tuple[int, str, float]],
        wall_seconds: float,
    ) -> Profile:
        """Build a profile from (step index, label, seconds) per kernel a backend ran: a fused
        kernel is attributed to the step it runs at and named by its ops (``matmul+add+gelu``)."""
        names = schedule.graph.names()
        total = float(sum(s for _, _, s in rows))
        nodes = []
        for index, label, s in rows:
            node = schedule.steps[index].node
            nodes.append(
                NodeTiming(
                    index=index,
                    op=label,
                    name=names[node.id],
                    scope=node.meta.get("scope"),
                    seconds=float(s),
                    share=float(s) / total if total > 0 else 0.0,
                    line=schedule.graph.format_node(node),
                    node_id=node.id,
                )
            )
        return cls(backend, nodes, total, wall_seconds, MemoryFigures.of(schedule))

    def by_op(self) -> list[tuple[str, float, float, int]]:
        """``(op, seconds, share, calls)`` per op, slowest first."""
        totals: dict[str, list[float]] = {}
        for t in self.nodes:
            entry = totals.setdefault(t.op, [0.0, 0])
            entry[0] += t.seconds
            entry[1] += 1
        rows = [
            (op, s, s / self.kernel_seconds if self.kernel_seconds else 0.0, int(n))
            for op, (s, n) in totals.items()
        ]
        return sorted(rows, key=lambda r: -r[1])

    def by_scope(self) -> list[tuple[str, float, float]]:
        """``(scope, seconds, share)`` per module path (``""`` for nodes outside any scope), slowest first."""
        totals: dict[str, float] = {}
        for t in self.nodes:
            totals[t.scope or ""] = totals.get(t.scope or "", 0.0) + t.seconds
        share = lambda s: s / self.kernel_seconds if self.kernel_seconds else 0.0  # noqa: E731
        return sorted(((k, s, share(s)) for k, s in totals.items()), key=lambda r: -r[1])

    def table(self, top: int = 15) -> str:
        """The slowest ``top`` nodes, the time per op, and the memory figures, as text."""
        mem = self.memory
        lines = [
            f"{self.backend}: {len(self.nodes)} kernels, {self.kernel_seconds * 1e3:.3f} ms in kernels, "
            f"{self.wall_seconds * 1e3:.3f} ms for the step",
            f"memory: planned buffers {_size(mem.planned_bytes)}, peak {_size(mem.peak_bytes)}, "
            f"without reuse {_size(mem.unplanned_bytes)}",
            "  bytes by family: " + ", ".join(f"{k} {_size(v)}" for k, v in mem.bytes_by_family.items()),
        ]
        slowest = sorted(self.nodes, key=lambda t: -t.seconds)[:top]
        ops = self.by_op()[:top]
        w_op = max([2] + [len(t.op) for t in slowest] + [len(op) for op, *_ in ops])
        w_scope = max([5] + [len(t.scope or "-") for t in slowest])
        lines.append(f"{'ms':>9} {'share':>6}  {'op':{w_op}} {'scope':{w_scope}} node")
        for t in slowest:
            scope = t.scope or "-"
            lines.append(
                f"{t.seconds * 1e3:9.3f} {t.share:6.1%}  {t.op:{w_op}} {scope:{w_scope}} {t.line[:100]}"
            )
        lines.append(f"{'ms':>9} {'share':>6}  {'op':{w_op}} calls")
        for op, s, share, calls in ops:
            lines.append(f"{s * 1e3:9.3f} {share:6.1%}  {op:{w_op}} {calls}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024 or unit == "MiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def profile(plan: Any, feeds: Sequence[np.ndarray], backend: str, update: bool = False) -> Profile:
    """Run one step of ``plan`` and return its :class:`Profile`: the plan's own kernels where it can
    time them (``plan.run_timed(feeds, update)``, a GPU plan's fused dispatches), else one traced step."""
    start = time.perf_counter()
    timed = getattr(plan, "run_timed", None)
    found = timed(feeds, update=update) if timed is not None else None
    if found is not None:
        _, rows = found
        return Profile.from_dispatches(backend, plan.schedule, rows, time.perf_counter() - start)
    seconds = [0.0] * len(plan.schedule.steps)

    def on_step(step: Step, value: Any, s: float) -> None:
        seconds[step.index] = s

    start = time.perf_counter()
    plan.run_traced(feeds, on_step, update=update)
    return Profile.from_timings(backend, plan.schedule, seconds, time.perf_counter() - start)


def find_nodes(schedule: Schedule, names: Iterable[str], what: str) -> dict[str, Node]:
    """Nodes by user name (``h.0.attn.q``) or printed name (``h_0_attn_q``, ``a``); a ``KeyError`` if absent."""
    printed = schedule.graph.names()
    by_name: dict[str, Node] = {}
    for n in schedule.graph.nodes:
        by_name.setdefault(printed[n.id], n)
    for n in schedule.graph.nodes:  # the user's own spelling wins over a printed name
        if n.name:
            by_name[n.name] = n
    found: dict[str, Node] = {}
    for name in names:
        if name not in by_name:
            known = sorted(n.name for n in schedule.graph.nodes if n.name)
            raise KeyError(
                f"{what}: no node named {name!r} in the compiled graph (an optimisation pass may have "
                f"merged or removed it: compile with passes=[] to keep every node); named nodes: "
                f"{', '.join(known[:20]) or 'none'}{' ...' if len(known) > 20 else ''}"
            )
        found[name] = by_name[name]
    return found


def capture(
    plan: Any, feeds: Sequence[np.ndarray], names: Sequence[str], update: bool = False
) -> dict[str, np.ndarray]:
    """Run one traced step and return a copy of the value of each named node."""
    schedule: Schedule = plan.schedule
    wanted = find_nodes(schedule, names, "capture")
    by_id: dict[int, list[str]] = {}
    for name, node in wanted.items():
        by_id.setdefault(node.id, []).append(name)
    values: dict[str, np.ndarray] = {}
    feed_of = {n.id: a for n, a in zip(schedule.inputs, feeds, strict=True)}
    for name, node in wanted.items():
        if node.op == "input":
            values[name] = np.array(feed_of[node.id])
        elif node.op == "parameter":
            values[name] = np.array(node.data.value)
        elif node.op == "constant":
            values[name] = np.array(node.data)

    def on_step(step: Step, value: Any, seconds: float) -> None:
        for name in by_id.get(step.output, ()):
            values[name] = np.array(value)

    plan.run_traced(feeds, on_step, update=update)
    return {name: values[name] for name in names}


def _non_finite(array: np.ndarray) -> str | None:
    if not is_float(array.dtype.name) or np.isfinite(array).all():
        return None
    nan = int(np.isnan(array).sum())
    pos = int(np.isposinf(array).sum())
    neg = int(np.isneginf(array).sum())
    parts = [f"{k} {label}" for k, label in ((nan, "NaN"), (pos, "+inf"), (neg, "-inf")) if k]
    return f"{', '.join(parts)} of {array.size} values"


def _describe(schedule: Schedule, node: Node) -> str:
    scope = node.meta.get("scope")
    source = node.meta.get("source")
    return f"{schedule.graph.format_node(node)}\n  op {node.op!r}, scope {scope!r}" + (
        f", built at {source}" if source else ""
    )


def _error(schedule: Schedule, node: Node, message: str) -> NonFiniteError:
    name = schedule.graph.names()[node.id]
    scope = node.meta.get("scope")
    return NonFiniteError(message, node_name=name, node_id=node.id, op=node.op, scope=scope)


def check_numerics(plan: Any, feeds: Sequence[np.ndarray], update: bool = True) -> list[np.ndarray]:
    """Run one traced step, stopping at the first value that holds a NaN or infinity.

    Inputs and parameters are checked first; then each kernel's result as it is computed. The
    :class:`~asg.core.errors.NonFiniteError` names the node, its op, its scope and the line that built
    it in its message and in its attributes (``node_name``, ``node_id``, ``op``, ``scope``); no
    parameter is updated by a step that fails the check.
    """
    schedule: Schedule = plan.schedule
    for node, array in zip(schedule.inputs, feeds, strict=True):
        bad = _non_finite(np.asarray(array))
        if bad:
            raise _error(schedule, node, f"check_numerics: input {node.label!r} holds {bad}")
    for node in schedule.parameters:
        bad = _non_finite(node.data.value)
        if bad:
            raise _error(
                schedule, node, f"check_numerics: parameter {node.label!r} holds {bad} before the step"
            )

    def on_step(step: Step, value: Any, seconds: float) -> None:
        bad = _non_finite(np.asarray(value))
        if bad:
            raise _error(
                schedule,
                step.node,
                f"check_numerics: the first non-finite value is made by {_describe(schedule, step.node)}\n"
                f"  it holds {bad}; its inputs were finite",
            )

    return plan.run_traced(feeds, on_step, update=update)
