"""The numpy executor: a plan is a flat list of kernel calls over preassigned slots and buffers.

It consumes core's :class:`~asg.core.schedule.Schedule`: each step's lowered kernel (a
:class:`~asg.core.registry.Kernel` with the node's attributes bound) is given its planned buffer as
``out=``. The first call runs step by step and checks every result's shape and dtype against the
graph; later calls run generated straight-line Python (:attr:`NumpyPlan.source`). There, the
step computing a parameter's new value writes it into the parameter's own array when nothing reads
the old value afterwards (``out=`` in the source): no copy after the step. The outputs of one
optimizer op on the same inputs (``adam_update`` ... one op per updated tensor) come from one call.
"""

from __future__ import annotations

import functools
import keyword
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np

from ..errors import ExecutionError
from ..graph import LEAF_OPS, Node
from ..ops.attention import ATTENTION_OPS
from ..registry import ELEMENTWISE, Kernel, get_op
from ..schedule import MemoryPlan, Schedule
from ..storage import claim
from .base import Backend, Capabilities, OnStep

# (kernel, argument slots, output slot, slots to free after it)
_Call = tuple[Any, tuple[int, ...], int, tuple[int, ...]]


class NumpyPlan:
    """A schedule ready to run on numpy arrays.

    Intermediate values live in a list of slots (local variables in the generated code); kernels
    that accept ``out=`` write into the buffers of the schedule's table, allocated once per plan.
    Values no longer needed are dropped as soon as their last reader has run. Calls are not
    re-entrant: :class:`~asg.core.function.Function` serialises them with a lock. The checked first
    run and traced runs copy every update into its parameter after the step; the generated code
    writes some in place (:func:`_in_place_writes`), so a failure there can leave earlier parameters
    updated, which its error says.
    """

    def __init__(
        self, schedule: Schedule, kernels: Sequence[Kernel], options: Mapping[str, Any] | None = None
    ) -> None:
        self.schedule = schedule
        self.graph = graph = schedule.graph
        self.memory: MemoryPlan = schedule.memory
        slot = {n.id: i for i, n in enumerate(graph.nodes)}
        self._template: list[Any] = [None] * len(graph.nodes)
        for n in schedule.constants:
            self._template[slot[n.id]] = n.data
        self._input_slots = [slot[n.id] for n in schedule.inputs]
        self._param_slots = [slot[n.id] for n in schedule.parameters]
        self._variables = [n.data for n in schedule.parameters]
        self._outputs = [
            (slot[n.id], copy) for n, copy in zip(schedule.outputs, schedule.output_copies, strict=True)
        ]
        self._scalar_outputs = [n.ndim == 0 for n in schedule.outputs]
        self._update_slots = [slot[value.id] for _, value in schedule.updates]
        self._update_vars = [param.data for param, _ in schedule.updates]
        self._update_copies = list(schedule.update_copies)
        buffers = [np.empty(b.shape, b.dtype) for b in schedule.memory.buffers]

        self._nodes: list[Node] = [step.node for step in schedule.steps]
        self._steps: list[_Call] = []
        self._expected: list[tuple[tuple[int, ...], np.dtype]] = []
        fns, sets = _shared_output_calls(schedule, kernels)
        sets += _named_output_sets(fns, {i for indices, _ in sets for i in indices})
        # The fast path writes these steps' results into the parameters' arrays (no copy afterwards).
        self._writes = _in_place_writes(schedule, sets)
        written = {param.id for targets in self._writes.values() for param in targets if param is not None}
        self._written = [param.id in written for param, _ in schedule.updates]
        # (update index, variable, copy first) of the updates copied after a run: all, or those not written
        self._copies_after = [
            (i, var, copy)
            for i, (var, copy) in enumerate(zip(self._update_vars, self._update_copies, strict=True))
        ]
        self._copies_after_fast = [c for c in self._copies_after if not self._written[c[0]]]
        self._written_vars = [param.data for param, _ in schedule.updates if param.id in written]
        for step, kernel, fn in zip(schedule.steps, kernels, fns, strict=True):
            if step.buffer is not None:
                out = buffers[step.buffer]
                if (
                    get_op(step.node.op).has(ELEMENTWISE)
                    and out.size >= PARALLEL_MIN_ELEMENTS
                    and _workers() > 1
                ):
                    fn = _parallel_elementwise(kernel.fn, out)
                else:
                    fn = functools.partial(kernel.fn, out=out)
            args = tuple(slot[i] for i in step.inputs)
            self._steps.append((fn, args, slot[step.output], tuple(slot[i] for i in step.frees)))
            self._expected.append((step.shape, np.dtype(step.node.dtype)))
        self._checked = False
        self._line_step: dict[int, int] = {}  # line of the generated code -> the step it runs
        self.source, namespace = self._generate_source()
        self._filename = f"<asg plan {id(self):x}>"
        exec(compile(self.source, self._filename, "exec"), namespace)
        self._fast = namespace["plan"]
        self._first_write = min(self._writes, default=len(self._steps))

    # ------------------------------------------------------------------ running
    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        params = self._host_values()
        if not self._checked or not self._targets_writable():
            results, values = self._run_interpreted(feeds, params, None)
            self._checked = True
            return self._finish(results, values, update=True)
        try:
            with np.errstate(all="ignore"):
                results, values = self._fast(feeds, params)
        except Exception as err:
            index = self._failed_step(err)
            if index > self._first_write:
                # Parameters were already written in place: running again would start from them.
                raise self._error(index, err, note=self._written_note(index)) from err
            # Run again step by step to name the node that failed.
            results, values = self._run_interpreted(feeds, params, None)
            return self._finish(results, values, update=True)
        return self._finish(results, values, update=True, written=self._written)

    def _host_values(self) -> list[np.ndarray]:
        """The parameters' arrays, each variable moved home to the host first if a backend holds it."""
        params = []
        for var in self._variables:
            if var._home is not None:
                claim(var, None)
            value = var._value
            params.append(value if value is not None else var.value)  # .value raises, naming it
        return params

    def _targets_writable(self) -> bool:
        """The parameters written in place hold writeable arrays (a user may have assigned any array)."""
        for var in self._written_vars:
            value = var._value
            if type(value) is not np.ndarray or not value.flags.writeable:
                return False
        return True

    def _failed_step(self, err: BaseException) -> int:
        """The step whose line of the generated code raised ``err`` (the number of steps if none did)."""
        tb, line = err.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self._filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        return self._line_step.get(line, len(self._steps)) if line is not None else len(self._steps)

    def _written_note(self, index: int) -> str:
        names = [
            p.label
            for i, targets in sorted(self._writes.items())
            if i < index
            for p in targets
            if p is not None
        ]
        return f"\n  the updates of {', '.join(names)} were already written in place by earlier steps"

    def run_traced(
        self, feeds: Sequence[np.ndarray], on_step: OnStep, update: bool = True
    ) -> list[np.ndarray]:
        """Run step by step, calling ``on_step(step, value, seconds)`` after each kernel (wall time)."""
        results, values = self._run_interpreted(feeds, self._host_values(), on_step)
        self._checked = True
        return self._finish(results, values, update=update)

    def _finish(
        self, results: list[Any], values: list[Any], update: bool, written: Sequence[bool] | None = None
    ) -> list[np.ndarray]:
        """The outputs, and the update values copied into the parameters (``written``: those the run
        wrote in place already)."""
        # Values that may alias parameters (views, leaves) are copied before any parameter is written.
        out = [
            np.array(r) if copy else (np.asarray(r) if scalar else r)
            for r, (_, copy), scalar in zip(results, self._outputs, self._scalar_outputs, strict=True)
        ]
        if update:
            copies = self._copies_after_fast if written is not None else self._copies_after
            staged = [(var, values[i].copy() if copy else values[i]) for i, var, copy in copies]
            for var, value in staged:
                np.copyto(var._value, value, casting="same_kind")
        return out

    def _run_interpreted(
        self, feeds: Sequence[np.ndarray], params: Sequence[np.ndarray], on_step: OnStep | None
    ) -> tuple[list[Any], list[Any]]:
        env = list(self._template)
        for s, array in zip(self._input_slots, feeds, strict=True):
            env[s] = array
        for s, array in zip(self._param_slots, params, strict=True):
            env[s] = array
        with np.errstate(all="ignore"):
            self._run_checked(env, on_step)
        return [env[s] for s, _ in self._outputs], [env[s] for s in self._update_slots]

    def _run_checked(self, env: list[Any], on_step: OnStep | None) -> None:
        """Run step by step, checking each kernel's result against the inferred shape and dtype."""
        steps = self.schedule.steps
        for index, ((fn, args, out, frees), (shape, dtype)) in enumerate(
            zip(self._steps, self._expected, strict=True)
        ):
            try:
                start = time.perf_counter()
                result = fn(*[env[a] for a in args])
                seconds = time.perf_counter() - start
            except Exception as err:
                raise self._error(index, err) from err
            array = np.asarray(result)
            if array.dtype != dtype:
                raise self._error(
                    index,
                    TypeError(
                        f"the {self._nodes[index].op!r} kernel returned {array.dtype}, but the dtype rule says "
                        f"{dtype} (a kernel bug: kernels must return the dtype their rule infers)"
                    ),
                )
            if array.shape != shape:
                raise self._error(
                    index,
                    AssertionError(f"kernel returned shape {array.shape}, the shape rule says {shape}"),
                )
            env[out] = result
            if on_step is not None:
                on_step(steps[index], result, seconds)
            for s in frees:
                env[s] = None

    def _error(self, index: int, err: BaseException, note: str = "") -> ExecutionError:
        node = self._nodes[index]
        where = f"\n  built at {node.meta['source']}" if node.meta.get("source") else ""
        return ExecutionError(
            f"while executing {self.graph.format_node(node)}{where}\n  {type(err).__name__}: {err}{note}"
        )

    # ------------------------------------------------------------------ generated code
    def _out_arg(self, index: int, local: Mapping[int, str]) -> str:
        """``, out=...`` naming the parameters a step writes in place (:func:`_in_place_writes`), or ""."""
        targets = self._writes.get(index)
        if targets is None:
            return ""
        slot = {n.id: i for i, n in enumerate(self.graph.nodes)}
        names = [local[slot[p.id]] if p is not None else "None" for p in targets]
        if self._nodes[index].op in SHARED_OUTPUT_OPS:
            return f", out=({', '.join(names)},)"
        return f", out={names[0]}"

    def _generate_source(self) -> tuple[str, dict[str, Any]]:
        """Python source for the whole plan (and the kernels it calls, by name): one line per kernel
        call, values in local variables.

        Locals take the graph's printed names, kernels their op's name (``matmul_3``), and each
        line carries the graph line it runs as a comment. Local variables are the cheapest storage
        CPython has, so the per-op overhead is one call.
        """
        names = self.graph.names()
        slot_node = {s: n for s, n in enumerate(self.graph.nodes)}
        used = {"feeds", "params"}
        local: dict[int, str] = {}
        for s, n in slot_node.items():
            name = names.get(n.id, "")
            if not name.isidentifier() or keyword.iskeyword(name) or name in used:
                name = _fresh(f"v{s}", used)
            used.add(name)
            local[s] = name
        namespace: dict[str, Any] = {}
        lines = ["def plan(feeds, params):"]
        if self._input_slots:
            lines.append("    " + "".join(f"{local[s]}, " for s in self._input_slots) + "= feeds")
        if self._param_slots:
            lines.append("    " + "".join(f"{local[s]}, " for s in self._param_slots) + "= params")
        for s, value in enumerate(self._template):
            if value is not None:
                const = _fresh(f"const_{s}", used)
                used.add(const)
                namespace[const] = value
                lines.append(f"    {local[s]} = {const}")
        for index, (fn, args, out, frees) in enumerate(self._steps):
            node = self._nodes[index]
            kname = _fresh(f"{node.op}_{index}" if node.op.isidentifier() else f"kernel_{index}", used)
            used.add(kname)
            namespace[kname] = fn
            call = f"    {local[out]} = {kname}({', '.join(local[a] for a in args)}{self._out_arg(index, local)})"
            self._line_step[len(lines) + 1] = index
            lines.append(f"{call}  # {self.graph.format_node(node)}")
            if frees:
                lines.append("    del " + ", ".join(local[s] for s in frees))
        outs = "".join(f"{local[s]}, " for s, _ in self._outputs)
        updates = "".join(f"{local[s]}, " for s in self._update_slots)
        lines.append(f"    return ({outs}), ({updates})")
        return "\n".join(lines), namespace


# Ops whose numpy kernel, given a tuple of names as ``output``, returns those outputs from one pass
# (asg.core.ops.optim): an optimizer adds one such op per updated tensor, all reading the same inputs.
SHARED_OUTPUT_OPS = frozenset({"adam_update", "rmsprop_update", "sgd_update"})


def _shared_output_calls(
    schedule: Schedule, kernels: Sequence[Kernel]
) -> tuple[list[Any], list[tuple[list[int], tuple[str, ...]]]]:
    """The function each step calls: its kernel's, except for the steps of a :data:`SHARED_OUTPUT_OPS`
    op with the same inputs and attributes but ``output``: the first computes them all (one call of the
    numpy kernel with every name), the others hand its values on (:func:`head_and_tails`).

    Only kernels that are the registry's numpy kernel with attributes bound are merged (a backend's own
    lowering of the op is left alone). Returns the functions and every set: (its step indices, the
    names of their outputs), one-step sets included (their kernels take ``out=`` too).
    """
    fns = [k.fn for k in kernels]
    sets: dict[tuple, list[int]] = {}
    for index, (step, fn) in enumerate(zip(schedule.steps, fns, strict=True)):
        op = step.node.op
        if (
            op in SHARED_OUTPUT_OPS
            and isinstance(fn, functools.partial)
            and "output" in fn.keywords
            and fn.func is get_op(op).kernels["numpy"].fn
        ):
            attrs = tuple(sorted((k, repr(v)) for k, v in fn.keywords.items() if k != "output"))
            sets.setdefault((op, step.inputs, fn.args, attrs), []).append(index)
    found = []
    for indices in sets.values():
        names = tuple(fns[i].keywords["output"] for i in indices)
        found.append((indices, names))
        if len(indices) > 1:
            first = fns[indices[0]]
            compute = functools.partial(first.func, *first.args, **{**first.keywords, "output": names})
            for index, fn in zip(indices, head_and_tails(compute, len(indices)), strict=True):
                fns[index] = fn
    return fns, found


def _named_output_sets(fns: Sequence[Any], known: set[int]) -> list[tuple[list[int], tuple[str, ...]]]:
    """The sets of steps a backend made with :func:`head_and_tails` from a compute naming its outputs
    (``compute.output_names``, e.g. numpy-jit's optimizer kernels): (head and tail indices, names)."""
    found = []
    for index, fn in enumerate(fns):
        names = getattr(fn, "output_names", None)
        if names and index not in known:
            tails = [i for i, other in enumerate(fns) if getattr(other, "head", None) is fn]
            found.append(([index, *tails], tuple(names)))
    return found


def _in_place_writes(
    schedule: Schedule, sets: Sequence[tuple[list[int], tuple[str, ...]]]
) -> dict[int, tuple[Node | None, ...]]:
    """Step index -> the parameter nodes whose arrays the step may write its results into (one per
    result; ``None``: a fresh array), so that the update needs no copy afterwards.

    A parameter is written in place by the step computing its new value when nothing can see the old
    value afterwards: the step reads the parameter node itself (as that input: the kernel reads each
    element before writing it), no later step reads the variable or a view of it, and no output or other
    update value is (a view of) it. Two kinds of step qualify: the head of an optimizer set
    (:func:`_shared_output_calls`; each output into the input of the same name), and an elementwise
    kernel with ``out=`` reading the parameter directly (``p - lr * g``'s subtraction).
    """
    from ..ops.optim import input_names

    flags, steps = schedule.kernels, schedule.steps
    root: dict[int, int] = {}
    for n in schedule.graph.nodes:
        is_view = n.op not in LEAF_OPS and flags[n.id].returns_view and n.inputs
        root[n.id] = root[n.inputs[0].id] if is_view else n.id
    by_id = {n.id: n for n in schedule.graph.nodes}

    def var_of(node_id: int) -> int | None:
        node = by_id[root[node_id]]
        return id(node.data) if node.op == "parameter" else None

    readers: dict[int, list[int]] = {}  # variable -> the steps reading it (or a view of it)
    for step in steps:
        for i in set(step.inputs):
            var = var_of(i)
            if var is not None:
                readers.setdefault(var, []).append(step.index)
    values = [value for _, value in schedule.updates]
    pinned = {var_of(n.id) for n in schedule.outputs + values} - {None}
    output_ids = {n.id for n in schedule.outputs}
    target_of = {value.id: param for param, value in schedule.updates if values.count(value) == 1}
    step_of = {step.output: step.index for step in steps}
    set_of = {i: indices for indices, _ in sets for i in indices}

    def writable(param: Node, value_id: int, at: int, own: Sequence[int], reads: Sequence[int]) -> bool:
        var = id(param.data)
        return (
            var not in pinned
            and value_id not in output_ids
            and all(r < at or r in own for r in readers.get(var, ()))
            and [k for k, i in enumerate(steps[at].inputs) if var_of(i) == var] == list(reads)
            and all(steps[at].inputs[k] == param.id for k in reads)
        )

    writes: dict[int, tuple[Node | None, ...]] = {}
    for indices, names in sets:
        head = steps[indices[0]]
        order = input_names(head.node.op, head.node.attrs)
        targets = []
        for index, name in zip(indices, names, strict=True):
            param = target_of.get(steps[index].output)
            ok = param is not None and writable(
                param, steps[index].output, head.index, indices, [order.index(name)]
            )
            targets.append(param if ok else None)
        if any(targets):
            writes[head.index] = tuple(targets)
    for value_id, param in target_of.items():
        index = step_of.get(value_id)
        if index is None or index in set_of or not (flags[value_id].out_arg and flags[value_id].in_place):
            continue
        if flags[value_id].returns_view or steps[index].buffer is not None:
            continue
        reads = [k for k, i in enumerate(steps[index].inputs) if i == param.id]
        if reads and writable(param, value_id, index, [index], reads):
            writes[index] = (param,)
    return writes


def head_and_tails(
    compute: Callable[..., Sequence[np.ndarray]], count: int
) -> list[Callable[..., np.ndarray]]:
    """Kernels for one computation with ``count`` results, run as ``count`` steps in schedule order:
    the head computes all and returns the first, each tail returns one of the others.

    The tails' arguments are ignored (a tail reads the head's value or the head's own inputs only so
    that the schedule orders it after the head). Calls are serialised by the plan's caller.

    >>> head, tail = head_and_tails(lambda x: (x + 1, x + 2), 2)
    >>> head(1), tail(None)
    (2, 3)
    """
    stash: list[Any] = [None] * count

    def head(*arrays: np.ndarray, **kwargs: Any) -> np.ndarray:
        outs = compute(*arrays, **kwargs)
        stash[1:] = outs[1:]
        return outs[0]

    # A compute that names its outputs and takes out= (an optimizer set's) may write them in place.
    head.output_names = getattr(compute, "output_names", None)  # type: ignore[attr-defined]

    def tail(k: int) -> Callable[..., np.ndarray]:
        def fetch(*_ignored: Any) -> np.ndarray:
            value, stash[k] = stash[k], None
            return value

        fetch.head = head  # type: ignore[attr-defined]
        return fetch

    return [head, *(tail(k) for k in range(1, count))]


def _fresh(name: str, used: set[str]) -> str:
    while name in used:
        name += "_"
    return name


PARALLEL_MIN_ELEMENTS = 1 << 16
_pool: ThreadPoolExecutor | None = None


@functools.cache
def _workers() -> int:
    """Threads for large elementwise kernels: ``ASG_NUM_THREADS`` (default 1)."""
    return max(1, int(os.environ.get("ASG_NUM_THREADS", "1")))


def _parallel_elementwise(kernel: Any, out: np.ndarray) -> Any:
    """Run an elementwise kernel (attributes bound) over row blocks of ``out`` on several threads.

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
    whole = functools.partial(kernel, out=out)

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
            kernel(*args, out=out[lo:hi])

        futures = [pool.submit(block, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        block(bounds[0], bounds[1])
        for f in futures:
            f.result()
        return out

    return run


class NumpyBackend(Backend):
    """The reference CPU backend: numpy kernels, buffer reuse, in-place elementwise ops.

    Parameters stay in their host numpy arrays (``storage`` is ``None``); every dtype is supported.
    The fused attention ops run as their formulas (``Capabilities.decompose``): on the CPU, keeping
    the probabilities is faster than the fused kernels' recomputing them for each gradient.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(decompose=ATTENTION_OPS)

    def compile(self, schedule: Schedule, kernels: Sequence[Any], options: Mapping[str, Any]) -> NumpyPlan:
        """A :class:`NumpyPlan`: generated Python calling ``kernels`` in ``schedule`` order."""
        return NumpyPlan(schedule, kernels, options)
