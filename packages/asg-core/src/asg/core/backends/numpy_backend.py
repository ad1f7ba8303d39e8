"""The numpy executor: a plan is a flat list of kernel calls over preassigned slots and buffers."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ExecutionError
from ..graph import Graph, Node
from ..passes.memory import MemoryPlan, plan_memory
from ..registry import get_op, kernel_for
from ..specialize import Specialization

Step = tuple[Any, tuple[int, ...], int, tuple[int, ...]]


class NumpyPlan:
    """A graph specialised to one set of input shapes, ready to run on numpy arrays.

    Intermediate values live in a list of slots; kernels that accept ``out=`` write into buffers
    allocated once per plan (see :mod:`asg.core.passes.memory`). Values no longer needed are
    dropped as soon as their last reader has run. Not safe to call from two threads at once.
    """

    def __init__(
        self,
        graph: Graph,
        spec: Specialization,
        num_outputs: int,
        updates: Sequence[tuple[Node, Node]],
        memory_planning: bool = True,
    ) -> None:
        self.graph = graph
        nodes = graph.nodes
        slot = {n.id: i for i, n in enumerate(nodes)}
        self._template: list[Any] = [None] * len(nodes)
        self._input_slots = [slot[n.id] for n in graph.inputs]
        self._param_slots = [(slot[n.id], n.data) for n in nodes if n.op == "parameter"]
        for n in nodes:
            if n.op == "constant":
                self._template[slot[n.id]] = n.data
        outputs = graph.outputs[:num_outputs]
        # An output listed twice is returned as two arrays, so the caller may change one freely.
        self._outputs = [(slot[n.id], _needs_copy(n) or n in outputs[:i]) for i, n in enumerate(outputs)]
        self._updates = [(param.data, slot[value.id]) for param, value in updates]
        self._update_copies = [_needs_copy(value) for _, value in updates]
        keep = {n.id for n in outputs} | {value.id for _, value in updates}
        self.memory: MemoryPlan = plan_memory(graph, spec, keep) if memory_planning else MemoryPlan()
        buffers = [np.empty(shape, dtype) for shape, dtype in self.memory.buffers]

        last_reader: dict[int, int] = {}
        compute = [n for n in nodes if n.op not in ("input", "parameter", "constant")]
        for step, n in enumerate(compute):
            for i in n.inputs:
                last_reader[i.id] = step
        pinned = keep
        frees: dict[int, list[int]] = {}
        for node_id, step in last_reader.items():
            if node_id not in pinned:
                frees.setdefault(step, []).append(slot[node_id])

        self._steps: list[Step] = []
        self._nodes: list[Node] = compute
        self._expected: list[tuple[tuple[int, ...], np.dtype]] = []
        for step, n in enumerate(compute):
            kernel = kernel_for("numpy", n.op)
            attrs = spec.attrs[n.id]
            if n.id in self.memory.buffer_of:
                out = buffers[self.memory.buffer_of[n.id]]
                if get_op(n.op).elementwise and out.size >= PARALLEL_MIN_ELEMENTS and _workers() > 1:
                    fn = _parallel_elementwise(kernel, attrs, out)
                else:
                    fn = functools.partial(kernel, **attrs, out=out)
            else:
                fn = functools.partial(kernel, **attrs) if attrs else kernel
            args = tuple(slot[i.id] for i in n.inputs)
            self._steps.append((fn, args, slot[n.id], tuple(frees.get(step, ()))))
            self._expected.append((spec.shapes[n.id], np.dtype(n.dtype)))

        self._fast: Any = None

    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._fast is None:
            results, values = self._run_interpreted(feeds)
            self._fast = self._generate()
        else:
            try:
                with np.errstate(all="ignore"):
                    results, values = self._fast(feeds, [var.value for _, var in self._param_slots])
            except Exception:
                # Run again step by step to name the node that failed.
                results, values = self._run_interpreted(feeds)
        # Values that may alias parameters (views, leaves) are copied before any parameter is written.
        results = [r.copy() if copy else r for r, (_, copy) in zip(results, self._outputs, strict=True)]
        values = [v.copy() if copy else v for v, copy in zip(values, self._update_copies, strict=True)]
        for (var, _), value in zip(self._updates, values, strict=True):
            np.copyto(var.value, value, casting="same_kind")
        return results

    def _run_interpreted(self, feeds: Sequence[np.ndarray]) -> tuple[list[Any], list[Any]]:
        env = list(self._template)
        for s, array in zip(self._input_slots, feeds, strict=True):
            env[s] = array
        for s, var in self._param_slots:
            env[s] = var.value
        with np.errstate(all="ignore"):
            self._run_checked(env)
        return [env[s] for s, _ in self._outputs], [env[s] for _, s in self._updates]

    def _generate(self) -> Any:
        """Python source for the whole plan: one line per kernel call, values in local variables.

        Local variables are the cheapest storage CPython has, so the per-op overhead is one call.
        """
        namespace: dict[str, Any] = {}
        lines = ["def plan(feeds, params):"]
        if self._input_slots:
            lines.append("    " + "".join(f"v{s}, " for s in self._input_slots) + "= feeds")
        if self._param_slots:
            lines.append("    " + "".join(f"v{s}, " for s, _ in self._param_slots) + "= params")
        for s, value in enumerate(self._template):
            if value is not None:
                namespace[f"c{s}"] = value
                lines.append(f"    v{s} = c{s}")
        for index, (fn, args, out, frees) in enumerate(self._steps):
            namespace[f"f{index}"] = fn
            lines.append(f"    v{out} = f{index}({', '.join(f'v{a}' for a in args)})")
            if frees:
                lines.append("    del " + ", ".join(f"v{s}" for s in frees))
        outs = "".join(f"v{s}, " for s, _ in self._outputs)
        updates = "".join(f"v{s}, " for _, s in self._updates)
        lines.append(f"    return ({outs}), ({updates})")
        self.source = "\n".join(lines)
        exec(compile(self.source, f"<asg plan {id(self):x}>", "exec"), namespace)
        return namespace["plan"]

    def _run_checked(self, env: list[Any]) -> None:
        """First run: also check each kernel's result against the inferred shape and dtype."""
        for index, ((fn, args, out, frees), (shape, dtype)) in enumerate(
            zip(self._steps, self._expected, strict=True)
        ):
            try:
                result = np.asarray(fn(*[env[a] for a in args]))
            except Exception as err:
                raise self._error(index, err) from err
            if result.dtype != dtype:
                # Kernels that follow numpy promotion are cast to the graph's dtype from now on.
                fn = _casting(fn, dtype)
                self._steps[index] = (fn, args, out, frees)
                result = result.astype(dtype)
            if result.shape != shape:
                raise self._error(
                    index,
                    AssertionError(f"kernel returned shape {result.shape}, the shape rule says {shape}"),
                )
            env[out] = result
            for s in frees:
                env[s] = None

    def _error(self, index: int, err: BaseException) -> ExecutionError:
        node = self._nodes[index]
        where = f"\n  built at {node.meta['source']}" if node.meta.get("source") else ""
        return ExecutionError(
            f"while executing {self.graph.format_node(node)}{where}\n  {type(err).__name__}: {err}"
        )


PARALLEL_MIN_ELEMENTS = 1 << 16
_pool: ThreadPoolExecutor | None = None


@functools.cache
def _workers() -> int:
    """Threads for large elementwise kernels: ``ASG_NUM_THREADS`` (default 1)."""
    return max(1, int(os.environ.get("ASG_NUM_THREADS", "1")))


def _parallel_elementwise(kernel: Any, attrs: dict[str, Any], out: np.ndarray) -> Any:
    """Run an elementwise kernel over row blocks of ``out`` on several threads.

    numpy releases the GIL inside ufunc loops, so the blocks run at the same time. Inputs that
    span the full first axis are split with the output; broadcast ones are passed whole. When an
    input overlaps the output other than exactly (a view in another layout), one thread runs it.
    """
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_workers() - 1, thread_name_prefix="asg-elementwise")
    pool = _pool
    rows = out.shape[0] if out.ndim else 0
    parts = min(_workers(), rows)
    bounds = [rows * i // parts for i in range(parts + 1)] if parts > 1 else []
    whole = functools.partial(kernel, **attrs, out=out)

    def run(*arrays: np.ndarray) -> np.ndarray:
        if not bounds:
            return whole(*arrays)
        split = []
        for a in arrays:
            full_rows = a.ndim == out.ndim and a.shape[0] == rows
            if (
                a is not out
                and np.may_share_memory(a, out)
                and not (full_rows and a.strides == out.strides and a.ctypes.data == out.ctypes.data)
            ):
                return whole(*arrays)
            split.append(full_rows)

        def block(lo: int, hi: int) -> None:
            args = [a[lo:hi] if s else a for a, s in zip(arrays, split, strict=True)]
            kernel(*args, **attrs, out=out[lo:hi])

        futures = [pool.submit(block, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        block(bounds[0], bounds[1])
        for f in futures:
            f.result()
        return out

    return run


def _needs_copy(node: Node) -> bool:
    """Outputs that alias parameters, constants, inputs or other values are copied before returning."""
    if node.op in ("input", "parameter", "constant"):
        return True
    return get_op(node.op).view


def _casting(fn: Any, dtype: np.dtype) -> Any:
    def cast(*args: Any) -> Any:
        return np.asarray(fn(*args)).astype(dtype, copy=False)

    return cast


class NumpyBackend:
    """The reference CPU backend: numpy kernels, buffer reuse, in-place elementwise ops."""

    name = "numpy"

    def __init__(self, memory_planning: bool = True) -> None:
        self.memory_planning = memory_planning

    def compile(
        self,
        graph: Graph,
        spec: Specialization,
        num_outputs: int,
        updates: Sequence[tuple[Node, Node]],
    ) -> NumpyPlan:
        return NumpyPlan(graph, spec, num_outputs, updates, self.memory_planning)
