"""The ``"wgpu"`` backend: a plan is one command encoder, one compute pass and one submit per step.

At compile time every step's lowering (:mod:`asg.gpu.kernels`) gives a :class:`~asg.gpu.codegen.Program`;
the plan takes one pooled buffer per entry of core's buffer table, one per other computed value,
input and constant, creates each pipeline once (the device caches them by WGSL text) and each
bind group once. A call writes the inputs, records every dispatch into one compute pass, copies
the parameter updates into the parameters' buffers and the requested outputs into the staging
buffer, submits once and reads the outputs back. Parameters stay in GPU buffers across steps.

Example:
    >>> import numpy as np, asg.core as ag
    >>> x = ag.input("x", (2, 3))
    >>> b = ag.parameter(np.ones((1, 3), "float32"), name="b")
    >>> f = ag.compile(ag.relu(x + b), backend="wgpu")  # doctest: +SKIP
    >>> f(np.full((2, 3), -0.5, "float32")).tolist()  # doctest: +SKIP
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from asg.core.backends.base import Backend, Capabilities, OnStep
from asg.core.errors import ExecutionError
from asg.core.graph import Node
from asg.core.schedule import Schedule
from asg.core.storage import claim_all

from . import kernels as _kernels  # noqa: F401  (registers the wgpu lowerings)
from .codegen import Program, chunks, elementwise_kernel, from_gpu, nbytes, to_gpu, window
from .codegen import grid as grid_for
from .device import GpuDevice, get_device
from .kernels._base import register_deferred
from .kernels.linalg import ALoad
from .pool import BufferPool, Lifetime, pack
from .storage import WgpuStorage

FOLD_B_TRANSPOSES = False
"""Read a matmul's transposed right operand in place (``x @ W^T``). Off: on the H200 the GPT step's
linear layers ran 0.2-0.3 ms slower each with B^T's tile loaded as 4x4 blocks than the transposes
they saved (53.45 against 52.96 ms a step)."""

HOST_INDEX_NODES = 16
"""Most ops the host runs to compute a step's indices from its feeds, checking them before the step."""

DISPATCHES_PER_SUBMIT = 128
"""Dispatches per compute pass and submission of a step (option ``dispatches_per_submit``; 0: one
pass). On the H200 the GPT step's host side (recording, wgpu's checks as each pass ends) took about
12 ms after its 58 ms of GPU work when the step was one submission."""


class WgpuBackend(Backend):
    """asg-core's backend for WebGPU through wgpu-py (Vulkan, Metal, DX12; lavapipe on CPU-only machines).

    Options (``compile(..., backend="wgpu", options={...})``):

    - ``adapter``: a substring of the adapter summary to use (default: ``ASG_WGPU_ADAPTER``, else
      wgpu's high-performance choice);
    - ``raw_dispatch`` (default True): record the dispatches of a step through wgpu-native's C
      functions directly (about 1 us per dispatch instead of 3-10 through wgpu-py's checked
      wrappers). Every pipeline and bind group was validated when the plan was built; False uses
      the wrappers, which also validate each call;
    - ``fusion`` (default True): each elementwise fusion group of asg-core's analysis runs as one
      generated kernel (:mod:`asg.gpu.fusion`); ``Function.profile`` and ``capture`` still run
      node by node;
    - ``pack_buffers`` (default True): values of any shape whose lifetimes (after fusion) do not overlap
      share a buffer (:func:`~asg.gpu.pool.pack`), parameter updates included; False gives each entry
      of core's buffer table (values of one shape and dtype) its own buffer;
    - ``recompute`` (default ``"transpose"``, with ``fusion`` and ``pack_buffers``): values read only
      as the left operand of matmuls that are not stored, each matmul recomputing them from the op's
      input as it loads A (:func:`~asg.gpu.fusion.matmul_operands`). ``"transpose"``: transposes
      (attention's output back to (B, T, heads, hs)), which cost index arithmetic only;
      ``"all"`` (or True): elementwise ops too (an MLP's activation: on the H200 the reference GPT
      step then holds 1982 MiB instead of about 2490, and takes 72.6 ms instead of 68.2);
      ``"none"`` (or False): every value is stored;
    - ``profile`` (default ``"plan"``): ``Function.profile`` times the plan's own (fused) dispatches,
      one row per dispatch named by the ops it runs (:meth:`WgpuPlan.run_timed`); ``"traced"`` times
      node by node (``run_traced``), one row per node of the schedule.

    The device is created on first use; without an adapter that is a :class:`~asg.gpu.device.NoAdapterError`.
    """

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """float32, int32, bool (and int64 random keys); float16 where the adapter has ``shader-f16``."""
        register_deferred()  # read before every compile's checks: lowerings of ops defined since
        dtypes = {"float32", "int32", "int64", "bool"}
        if "shader-f16" in self.device().features:
            dtypes.add("float16")
        return Capabilities(dtypes=frozenset(dtypes), narrow_index=True)

    options: Mapping[str, Any] = {
        "adapter": None,
        "raw_dispatch": True,
        "fusion": True,
        "pack_buffers": True,
        "recompute": "transpose",
        "profile": "plan",
        "dispatches_per_submit": DISPATCHES_PER_SUBMIT,
    }

    def __init__(self) -> None:
        self._device: GpuDevice | None = None
        self._pool: BufferPool | None = None
        self._storage: WgpuStorage | None = None

    def device(self, adapter: str | None = None) -> GpuDevice:
        """The GPU device (created on first use)."""
        if self._device is None:
            self._device = get_device(adapter)
            self._pool = BufferPool(self._device)
            self._storage = WgpuStorage(self._device, self._pool)
        return self._device

    @property
    def pool(self) -> BufferPool:
        """The buffer pool of every plan and of the parameters' storage."""
        self.device()
        assert self._pool is not None
        return self._pool

    @property
    def storage(self) -> WgpuStorage:  # type: ignore[override]
        """The GPU buffers of every parameter and state value (opens the device on first use)."""
        self.device()
        assert self._storage is not None
        return self._storage

    def compile(self, schedule: Schedule, kernels: Sequence[Any], options: Mapping[str, Any]) -> WgpuPlan:
        """A :class:`WgpuPlan` for ``schedule`` on the adapter of ``options["adapter"]`` (or
        ``ASG_WGPU_ADAPTER``); the other options (see the class) pass on."""
        self.device(options.get("adapter"))
        return WgpuPlan(
            self,
            schedule,
            kernels,
            raw=bool(options.get("raw_dispatch", True)),
            fusion=bool(options.get("fusion", True)),
            pack_buffers=bool(options.get("pack_buffers", True)),
            profile=str(options.get("profile", "plan")),
            recompute=recompute_mode(options.get("recompute", "transpose")),
            dispatches_per_submit=int(options.get("dispatches_per_submit", DISPATCHES_PER_SUBMIT)),
        )


def recompute_mode(value: Any) -> str:
    """The ``recompute`` option as ``"all"``, ``"transpose"`` or ``"none"`` (True and False stand for
    ``"all"`` and ``"none"``).

    >>> recompute_mode(True), recompute_mode("transpose"), recompute_mode(False)
    ('all', 'transpose', 'none')
    """
    if value is True or value is False:
        return "all" if value else "none"
    if value not in ("all", "transpose", "none"):
        raise ValueError(
            f"wgpu: option recompute={value!r}: expected 'all', 'transpose' or 'none' (or True/False)"
        )
    return str(value)


class WgpuPlan:
    """A schedule compiled for the GPU (see the module docstring). Calls are not re-entrant."""

    def __init__(
        self,
        backend: WgpuBackend,
        schedule: Schedule,
        kernels: Sequence[Any],
        raw: bool = True,
        fusion: bool = True,
        pack_buffers: bool = True,
        profile: str = "plan",
        recompute: str = "transpose",
        dispatches_per_submit: int = 0,
    ) -> None:
        if profile not in ("plan", "traced"):
            raise ValueError(f"wgpu: option profile={profile!r}: expected 'plan' or 'traced'")
        self.profile_mode = profile
        self.schedule = schedule
        self.raw = raw
        self.dispatches_per_submit = dispatches_per_submit
        self.encode_seconds = 0.0  # host time recording the last step's dispatches
        self.host_seconds: dict[str, float] = {}  # the last step's host phases (see _run)
        self.backend = backend
        self.dev = dev = backend.device()
        self.pool = pool = backend.pool
        self.storage = backend.storage
        graph = schedule.graph
        self._nodes = {n.id: n for n in graph.nodes}
        self._owned: list[Any] = []  # buffers this plan took from the pool
        # A plan dropped with its Function gives its buffers back to the pool (never rely on GC for GPU memory).
        self._finalizer = weakref.finalize(self, _give_back, backend.pool, self._owned)
        self._buf: dict[int, Any] = {}  # node id -> buffer (params filled per call)
        self.programs: list[Program] = [k.fn for k in kernels]
        shapes = schedule.spec.shapes

        def take(nb: int) -> Any:
            buf = pool.acquire(nb)
            self._owned.append(buf)
            return buf

        def size(node_id: int) -> int:
            return nbytes(shapes[node_id], self._nodes[node_id].dtype)

        self._take, self._size = take, size

        largest = int(dev.limits.get("max-buffer-size", 1 << 62))
        for node in graph.nodes:
            if size(node.id) > largest:
                raise ExecutionError(
                    f"wgpu: {graph.format_node(node)} is {size(node.id)} bytes, more than the adapter's "
                    f"largest buffer ({largest} bytes, {dev.summary}); split the tensor (smaller batch)"
                )
        for node in schedule.inputs:
            self._buf[node.id] = take(size(node.id))
        for node in schedule.constants:
            self._buf[node.id] = buf = take(size(node.id))
            dev.write(buf, to_gpu(node.data, node.dtype))
        self._variables = [n.data for n in schedule.parameters]
        self._param_nodes = list(schedule.parameters)
        self._views: dict[int, int] = {}
        for step, prog in zip(schedule.steps, self.programs, strict=True):
            if prog.view:
                self._views[step.output] = step.inputs[0]
        # Index checks: one 256-byte slot (flag, bad index) per checking step, cleared every call.
        self._checks = {
            step.index: (slot, prog.index_check)
            for slot, (step, prog) in enumerate(
                (st, pr) for st, pr in zip(schedule.steps, self.programs, strict=True) if pr.index_check
            )
        }
        self._err = take(256 * len(self._checks)) if self._checks else None
        # Indices read straight from a feed (through reshapes) are checked on the host before the step
        # runs; only the others need the flags read back after it and the guarded parameter copies.
        self._host_checks = self._fed_indices()
        self._device_checks = {i: c for i, c in self._checks.items() if i not in self._host_checks}
        self.fused_groups: list[Any] = []
        fused_at: dict[int, Any] = {}
        skipped: set[int] = set()
        folded: set[int] = set()
        if fusion:
            from .fusion import matmul_operands, plan_groups

            root = {n.id: self._root(n.id) for n in graph.nodes}
            # needs lifetimes from the dispatches (packing): a matmul reads the recomputed value's input later
            recomputed = (
                matmul_operands(schedule, root, elementwise=recompute == "all")
                if pack_buffers and recompute != "none"
                else {}
            )
            fused_at, skipped, self.fused_groups = plan_groups(
                schedule, root, max_binding=dev.max_binding, recomputed=recomputed
            )
            folded = self._fold_transposes(fused_at, skipped, recomputed)
            folded |= self._fold_recomputed(fused_at, skipped, recomputed)
        pos = {step.output: step.index for step in schedule.steps}
        self._labels = {
            max(pos[n.id] for n in g.nodes): "+".join(n.op for n in g.nodes) for g in self.fused_groups
        }
        self._written_over: dict[int, int] = {}  # value -> the dying input its fused kernel stores it over
        self._merged_update_inputs: dict[int, set[int]] = {}  # an output of a merged update -> its inputs
        if fusion:
            self._merge_updates(fused_at, skipped)
            if pack_buffers:  # the sources' lifetimes then come from the dispatches reading them
                folded |= self._fold_copies(fused_at, skipped)
                self._merge_norm_grads(fused_at, skipped)
                folded |= self._fold_residual_adds(fused_at, skipped)
                folded |= self._merge_attention(fused_at, skipped)
        # Values a fused kernel keeps in registers get no buffer (run_traced allocates them if it runs).
        internal = {n.id for g in self.fused_groups for n in g.nodes} - {
            o.id for g in self.fused_groups for o in g.outputs
        }
        internal |= folded
        self._planned: dict[int, Any] = {}
        # Per dispatch: (step index, pipeline, number of bindings, grid, argument descriptors).
        self._source_of: dict[int, str] = {}
        self._dispatches = self._collect(fused_at, skipped)
        self._traced_dispatches = self._collect({}, set()) if fused_at or skipped else self._dispatches
        self._label_at = [index for index, *_ in self._dispatches]  # the step each dispatch is named by
        if pack_buffers and not self._device_checks:
            self._delay_updates()
        self._in_place = self._updates_in_place() if pack_buffers else {}
        if pack_buffers:
            self._temps = self._pack(internal | set(self._in_place), kernels, fused_at, skipped)
        else:  # core's buffer table as it is: one buffer per entry (values of one shape and dtype share)
            for step, prog in zip(schedule.steps, self.programs, strict=True):
                if not prog.view and step.output not in internal:
                    self._materialize(step)
            self._temps = [[take(t) for t in prog.temps] for prog in self.programs]
        self._outputs = list(schedule.outputs)
        self._out_copy = [
            take(size(n.id)) if copy or self._root(n.id) in self._param_ids() else None
            for n, copy in zip(self._outputs, schedule.output_copies, strict=True)
        ]
        self._update_vars = [p.data for p, _ in schedule.updates]
        self._update_scratch = [
            take(size(v.id)) if copy else None
            for (_, v), copy in zip(schedule.updates, schedule.update_copies, strict=True)
        ]
        self._bound_params: list[Any] | None = None
        self._own: dict[int, Any] | None = None  # run_traced's buffers of the values updated in place
        self._guards: dict[tuple[int, int, int], list[tuple[Any, Any, tuple[int, int, int]]]] = {}
        self._encoded: list[tuple[Any, Any, tuple[int, int, int]]] = []
        self.calls = 0

    def _step_dispatches(self, fused_at: dict[int, Any], skipped: set[int]) -> Any:
        """(step, dispatch, refs) of each dispatch a step runs: refs are (kind, value id / key, window)."""
        for step, prog in zip(self.schedule.steps, self.programs, strict=True):
            if step.index in skipped:
                continue
            fused = fused_at.get(step.index, prog.dispatches)
            for d in fused if isinstance(fused, list) else [fused]:
                refs = []
                windows = d.windows or (None,) * len(d.args)
                for (role, k), win in zip(d.args, windows, strict=True):
                    if role == "in":
                        refs.append(("value", step.inputs[k], win))
                    elif role == "out":
                        refs.append(("value", step.output, win))
                    elif role == "value":
                        refs.append(("value", k, win))
                    elif role == "err":
                        refs.append(("err", step.index, None))
                    else:
                        refs.append(("temp", step.index * 1_000_000 + k, None))
                yield step, d, refs

    def _collect(self, fused_at: dict[int, Any], skipped: set[int]) -> list[tuple[int, Any, int, Any, list]]:
        dispatches = []
        for step, d, refs in self._step_dispatches(fused_at, skipped):
            self._check_binding(step, refs)
            pipe = self.dev.pipeline(d.wgsl, len(d.args))
            self._source_of[id(pipe)] = d.wgsl
            dispatches.append((step.index, pipe, len(d.args), d.grid, refs))
        return dispatches

    def _fold_recomputed(
        self, fused_at: dict[int, Any], skipped: set[int], recomputed: Mapping[int, tuple[int, ALoad]]
    ) -> set[int]:
        """Each unfused matmul reading a value of ``recomputed`` (:func:`~asg.gpu.fusion.matmul_operands`)
        as A binds the value's input and recomputes it as it loads A (fused matmuls and folded
        transposes already do). A value no dispatch reads any more is not computed: its step is
        skipped (``run_traced`` still runs it); returns the ids of those values.
        """
        if not recomputed:
            return set()
        from .kernels.linalg import matmul_program

        shapes = self.schedule.spec.shapes
        for step in self.schedule.steps:
            if step.node.op != "matmul" or step.index in fused_at or step.index in skipped:
                continue
            a, b = step.inputs
            found = recomputed.get(self._root(a))
            if found is None or self.programs[step.index].dispatches[0].args[0] != ("in", 0):
                continue  # not reading A as it is (a folded transpose reads another value)
            source, load = found
            prog = matmul_program(
                shapes[a], shapes[b], shapes[step.output], self.programs[step.index].name, a_load=load
            )
            for j, d in enumerate(prog.dispatches):
                args = tuple(("value", source) if arg == ("in", 0) else arg for arg in d.args)
                prog.dispatches[j] = replace(d, args=args)
            self.programs[step.index] = prog
        read = {
            self._root(ref)
            for step, _, refs in self._step_dispatches(fused_at, skipped)
            for kind, ref, _ in refs
            if kind == "value" and step.output not in recomputed
        }
        dropped = set(recomputed) - read
        skipped.update(step.index for step in self.schedule.steps if step.output in dropped)
        return dropped

    def _fold_transposes(
        self,
        fused_at: dict[int, Any],
        skipped: set[int],
        recomputed: Mapping[int, tuple[int, ALoad]] | None = None,
    ) -> set[int]:
        """A matmul whose left operand is a 2-D transpose read by nothing else reads the transpose's input
        in place (``matmul_program(a_transposed=True)``): the weight gradient ``X^T @ dY`` then needs no
        transposed copy of the activation X. The transpose's step is skipped (``run_traced`` still runs it);
        returns the ids of the transposes folded. When X is a value of ``recomputed`` the matmul binds
        its input and recomputes it (:func:`~asg.gpu.fusion.matmul_operands`). When the product runs
        split-K and only a 2-D transpose reads it (the gradient of a linear layer's ``W`` from that of
        ``W^T``), the sum of its slices stores the transpose's value (``transposed_out``) and that
        step is skipped too.
        """
        from .kernels.linalg import matmul_program, transposed_operand_ok

        recomputed = recomputed or {}
        schedule = self.schedule
        shapes = schedule.spec.shapes
        readers, kept = self._reader_counts(), self._kept()
        made_at = {step.output: step for step in schedule.steps}
        read_by: dict[int, list[Any]] = {}
        for s in schedule.steps:
            for v in set(s.inputs):
                read_by.setdefault(v, []).append(s)

        def transposed_by(value: int) -> Any:
            """The step of the 2-D transpose that alone reads ``value``, or None."""
            found = read_by.get(value, [])
            ok = len(found) == 1 and readers.get(value) == 1 and value not in kept
            t = found[0] if ok else None
            if t is None or t.node.op != "transpose" or len(shapes[value]) != 2:
                return None
            if tuple(schedule.spec.attrs[t.output].get("axes", ())) != (1, 0):
                return None
            free = not self.programs[t.index].view and t.index not in fused_at and t.index not in skipped
            return t if free else None

        folded: set[int] = set()
        for step in schedule.steps:
            node = step.node
            if (
                node.op != "matmul"
                or node.dtype != "float32"
                or step.index in fused_at
                or step.index in skipped
            ):
                continue
            a, b = node.inputs
            t_step = made_at.get(a.id)
            a_shape, b_shape = tuple(shapes[a.id]), tuple(shapes[b.id])
            if (
                t_step is None
                or not self._sole_transpose(a, readers, kept)
                or not transposed_operand_ok(a_shape, b_shape)
            ):
                continue
            source, load = recomputed.get(self._root(a.inputs[0].id), (a.inputs[0].id, None))
            out_shape, name = shapes[node.id], self.programs[step.index].name
            prog = matmul_program(a_shape, b_shape, out_shape, name, a_transposed=True, a_load=load)
            after = transposed_by(node.id) if len(prog.dispatches) == 2 else None
            if after is not None:
                prog = matmul_program(
                    a_shape, b_shape, out_shape, name, a_transposed=True, a_load=load, transposed_out=True
                )
            outs = {("in", 0): ("value", source), **({("out", 0): ("value", after.output)} if after else {})}
            for j, d in enumerate(prog.dispatches):
                prog.dispatches[j] = replace(d, args=tuple(outs.get(arg, arg) for arg in d.args))
            self.programs[step.index] = prog
            skipped.add(t_step.index)
            folded.add(a.id)
            if after is not None:
                skipped.add(after.index)
                folded.add(node.id)
        if FOLD_B_TRANSPOSES:
            folded |= self._fold_b_transposes(fused_at, skipped, recomputed, folded)
        return folded

    def _sole_transpose(self, node: Node, readers: Mapping[int, int], kept: set[int]) -> bool:
        """Whether ``node`` is a 2-D transpose (axes (1, 0)) that one step reads and no output keeps."""
        axes = tuple(self.schedule.spec.attrs[node.id].get("axes", ()))
        return node.op == "transpose" and axes == (1, 0) and readers.get(node.id) == 1 and node.id not in kept

    def _fold_b_transposes(
        self,
        fused_at: dict[int, Any],
        skipped: set[int],
        recomputed: Mapping[int, tuple[int, ALoad]],
        a_folded: set[int],
    ) -> set[int]:
        """A matmul whose right operand is a 2-D transpose read by nothing else reads the transpose's
        input in place (``b_transposed``): a linear layer's ``x @ W^T`` needs no copy of ``W^T``
        (fused epilogue matmuls and plain ones; a plain one whose A was folded keeps its copy)."""
        from .fusion import matmul_epilogue_kernel
        from .kernels.linalg import matmul_program

        schedule = self.schedule
        shapes = schedule.spec.shapes
        readers, kept = self._reader_counts(), self._kept()
        made_at = {step.output: step for step in schedule.steps}
        pos = {step.output: step.index for step in schedule.steps}
        group_of = {g.nodes[0].id: g for g in self.fused_groups if g.nodes[0].op == "matmul"}
        folded: set[int] = set()
        for step in schedule.steps:
            node = step.node
            if node.op != "matmul" or node.dtype != "float32":
                continue
            a, b = node.inputs
            t_step = made_at.get(b.id)
            shape = tuple(shapes[b.id])
            if (
                t_step is None
                or not self._sole_transpose(b, readers, kept)
                or len(shape) != 2
                or any(d % 4 or not d for d in shape)
                or shapes[a.id][-1] % 4
                or t_step.index in fused_at
                or t_step.index in skipped
            ):
                continue
            group = group_of.get(node.id)
            if group is not None:
                last = max(pos[n.id] for n in group.nodes)
                if last not in fused_at:
                    continue
                root_a = self._root(a.id)
                fused_at[last] = matmul_epilogue_kernel(
                    group, schedule, recomputed.get(root_a), b_transposed=True
                )
            elif step.index in fused_at or step.index in skipped or a.id in a_folded:
                continue
            else:
                prog = matmul_program(
                    shapes[a.id], shape, shapes[node.id], self.programs[step.index].name, b_transposed=True
                )
                for j, d in enumerate(prog.dispatches):
                    args = tuple(("value", b.inputs[0].id) if arg == ("in", 1) else arg for arg in d.args)
                    prog.dispatches[j] = replace(d, args=args)
                self.programs[step.index] = prog
            skipped.add(t_step.index)
            folded.add(b.id)
        return folded

    def _fold_copies(self, fused_at: dict[int, Any], skipped: set[int]) -> set[int]:
        """A transpose, slice_range or concat reading (through reshapes) transposes or slices that
        nothing else reads reads their source in place (:func:`~asg.gpu.kernels.shape.source_offset`):
        the split of a fused qkv projection into heads is one copy, the heads' gradients go straight
        into the concatenation. The copies' steps are skipped (``run_traced`` still runs them);
        returns the ids of their values."""
        from .codegen import Dispatch, grid
        from .kernels.shape import FOLDABLE, chain_copy, concat_kernel

        schedule = self.schedule
        shapes, attrs = schedule.spec.shapes, schedule.spec.attrs
        made_at = {s.output: s for s in schedule.steps}
        readers, kept = self._reader_counts(), self._kept(self._root)
        limit = self.dev.max_binding

        def chain_of(value: int) -> tuple[int, list[Any], list[Any]]:
            chain, copies = [], []
            while True:
                s = made_at.get(value)
                if (
                    s is None
                    or s.node.op not in FOLDABLE
                    or s.index in fused_at
                    or s.index in skipped
                    or readers.get(value) != 1
                    or value in kept
                    or (s.node.op == "reshape") != bool(self.programs[s.index].view)
                ):
                    break
                chain.append((s.node.op, tuple(shapes[s.inputs[0]]), tuple(shapes[value]), attrs[value]))
                copies += [s] if s.node.op != "reshape" else []
                value = s.inputs[0]
            return value, chain, copies

        folded: set[int] = set()
        for step in reversed(schedule.steps):
            node = step.node
            if (
                node.op not in ("transpose", "slice_range", "concat")
                or step.index in fused_at
                or step.index in skipped
                or self.programs[step.index].view
                or self._size(step.output) > limit
            ):
                continue
            found = [chain_of(v) for v in step.inputs]
            if not any(copies for _, _, copies in found) or any(
                self._size(src) > limit for src, _, _ in found
            ):
                continue
            out = tuple(shapes[step.output])
            if node.op == "concat":
                inputs = [(tuple(shapes[v]), self._nodes[v].dtype) for v in step.inputs]
                chains = [chain for _, chain, _ in found]
                wgsl = concat_kernel(out, attrs[step.output]["axis"] % len(out), inputs, node.dtype, chains)
                d = Dispatch(wgsl, grid(math.prod(out)), ())
            else:
                own = (node.op, tuple(shapes[step.inputs[0]]), out, attrs[step.output])
                chain = [own, *found[0][1]]
                (d,) = chain_copy(
                    self.programs[step.index].name, node.dtype, math.prod(out), chain
                ).dispatches
            args = (*(("value", src) for src, _, _ in found), ("value", step.output))
            fused_at[step.index] = Dispatch(d.wgsl, d.grid, args)
            copies = [c for _, _, cs in found for c in cs]
            skipped.update(c.index for c in copies)
            folded.update(c.output for c in copies)
            self._labels[step.index] = "+".join([*(c.node.op for c in reversed(copies)), node.op])
        return folded

    def _fold_residual_adds(self, fused_at: dict[int, Any], skipped: set[int]) -> set[int]:
        """``add(r, layer_norm_backward(...))`` with the gradient read only there: the backward kernel
        runs at the add's step and stores ``dx + r`` itself, over ``r``'s buffer where ``r`` dies there
        (the residual stream's gradient of a pre-norm block,
        :func:`~asg.gpu.kernels.normalization.layer_norm_backward_program`); the backward's own step
        is skipped (``run_traced`` still runs both). Returns the ids of the gradients not stored."""
        from asg.core.lowering import context

        from .codegen import Dispatch
        from .kernels.normalization import layer_norm_backward_program

        schedule = self.schedule
        shapes = schedule.spec.shapes
        made_at = {step.output: step for step in schedule.steps}
        readers, kept = self._reader_counts(self._root), self._kept(self._root)
        names = schedule.graph.names()
        folded: set[int] = set()
        for step in schedule.steps:
            node = step.node
            if (
                node.op != "add"
                or node.dtype != "float32"
                or step.index in fused_at
                or step.index in skipped
                or len({tuple(shapes[v]) for v in (*step.inputs, step.output)}) != 1
            ):
                continue
            for k in (0, 1):
                u, r = step.inputs[k], step.inputs[1 - k]
                src = made_at.get(u)
                if (
                    src is None
                    or src.node.op != "layer_norm_backward"
                    or src.node.dtype != "float32"
                    or src.index in fused_at
                    or src.index in skipped
                    or readers.get(u) != 1
                    or u in kept
                    or self._root(r) == u
                ):
                    continue
                ctx = context("wgpu", schedule.graph, src.node, schedule.spec, names)
                (d,) = layer_norm_backward_program(ctx, residual=r).dispatches
                values = {("out", 0): ("value", step.output)}
                values.update({("in", j): ("value", v) for j, v in enumerate(src.inputs)})
                fused_at[step.index] = Dispatch(d.wgsl, d.grid, tuple(values.get(a, a) for a in d.args))
                skipped.add(src.index)
                folded.add(u)
                self._written_over[step.output] = r  # each invocation reads r[off], then stores there
                self._labels[step.index] = "layer_norm_backward+add"
                break
        return folded

    def _merge_norm_grads(self, fused_at: dict[int, Any], skipped: set[int]) -> None:
        """A layer_norm's bias gradient (``sum_to`` of the ``g`` its weight gradient reads) is summed
        in the weight gradient's column pass
        (:func:`~asg.gpu.kernels.normalization.layer_norm_weight_grad_program`), at the earlier of
        the two steps: ``g`` read once, two dispatches fewer. The other step is skipped
        (``run_traced`` still runs it)."""
        from asg.core.lowering import context

        from .kernels.normalization import layer_norm_weight_grad_program

        schedule = self.schedule
        shapes, attrs = schedule.spec.shapes, schedule.spec.attrs
        readers: dict[int, list[int]] = {}
        sums: dict[int, list[Any]] = {}
        for step in schedule.steps:
            for i in step.inputs:
                readers.setdefault(self._root(i), []).append(step.index)
            node = step.node
            if node.op == "sum_to" and node.dtype == "float32" and step.index not in {*fused_at, *skipped}:
                sums.setdefault(self._root(step.inputs[0]), []).append(step)
        names = schedule.graph.names()
        made_at = {step.output: step.index for step in schedule.steps}
        for step in schedule.steps:
            node = step.node
            if node.op != "layer_norm_weight_grad" or step.index in fused_at or step.index in skipped:
                continue
            g, x = step.inputs
            feat = tuple(int(d) for d in attrs[step.output]["normalized_shape"])
            for s in sums.get(self._root(g), []):
                at = min(s.index, step.index)  # both values computed there, by one program
                if (
                    s.index in skipped
                    or tuple(shapes[s.inputs[0]]) != tuple(shapes[g])
                    or tuple(shapes[s.output]) != feat
                    or self.programs[s.index].view
                    or any(made_at.get(self._root(v), -1) >= at for v in (g, x))
                    or any(r <= at for v in (s.output, step.output) for r in readers.get(v, ()))
                ):
                    continue
                ctx = context("wgpu", schedule.graph, node, schedule.spec, names)
                prog = layer_norm_weight_grad_program(ctx, bias_grad=s.output)
                values = {
                    ("in", 0): ("value", g),
                    ("in", 1): ("value", x),
                    ("out", 0): ("value", step.output),
                }
                for j, d in enumerate(prog.dispatches):
                    prog.dispatches[j] = replace(d, args=tuple(values.get(a, a) for a in d.args))
                self.programs[at] = prog
                skipped.add(s.index if at == step.index else step.index)
                self._labels[at] = "layer_norm_weight_grad+sum_to"
                break

    def _merge_updates(self, fused_at: dict[int, Any], skipped: set[int]) -> None:
        """Sibling optimizer updates (the nodes of one ``adam_update``: new param, exp_avg, exp_avg_sq;
        same inputs) run as one kernel storing all of them, at the last one's step
        (:func:`~asg.gpu.kernels.optim.merged_update`), when nothing reads an output before then.
        A one-element input computed only for them from parameters (the step count ``step + 1``)
        is computed in that kernel too (invocation 0 stores it)."""
        from asg.core.lowering import context

        from .codegen import Dispatch
        from .kernels.optim import MERGEABLE, merged_update, scalar_expression

        schedule = self.schedule
        graph, spec = schedule.graph, schedule.spec
        siblings: dict[tuple, list[Any]] = {}
        readers: dict[int, list[int]] = {}
        for step in schedule.steps:
            for i in step.inputs:
                readers.setdefault(self._root(i), []).append(step.index)
            node = step.node
            if node.op in MERGEABLE and step.index not in fused_at and step.index not in skipped:
                attrs = sorted((k, repr(v)) for k, v in spec.attrs[node.id].items() if k != "output")
                siblings.setdefault((node.op, tuple(step.inputs), tuple(attrs)), []).append(step)
        names = graph.names()
        made_at = {s.output: s for s in schedule.steps}
        kept = {self._root(n.id) for n in schedule.outputs} | {self._root(v.id) for _, v in schedule.updates}
        for group in siblings.values():
            last = max(s.index for s in group)
            if (
                len(group) < 2
                or len({spec.attrs[s.node.id]["output"] for s in group}) < len(group)
                or any(r <= last for s in group for r in readers.get(s.output, ()))
                or any(self._size(v) > self.dev.max_binding for v in group[0].inputs)
            ):
                continue
            computed: dict[int, str] = {}
            extra: list[tuple[str, str]] = []
            scalars: list[tuple[str, str, str]] = []
            extra_ids, scalar_ids, inlined = [], [], []
            members = {s.index for s in group}
            for k, v in enumerate(group[0].inputs):
                src = made_at.get(v)
                if (
                    src is None
                    or src.index in fused_at
                    or src.index in skipped
                    or self.programs[src.index].view
                    or any(r not in members for r in readers.get(v, ()))
                ):
                    continue
                inline = scalar_expression(src.node, spec, f"x{len(extra)}_")
                if inline is None:
                    continue
                computed[k], binds, ids = inline
                extra += binds
                extra_ids += ids
                if v in kept:
                    scalars.append((f"s{len(scalars)}", src.node.dtype, computed[k]))
                    scalar_ids.append(v)
                inlined.append(src)
            ctxs = [context("wgpu", graph, s.node, spec, names) for s in group]
            found = merged_update(ctxs, computed, extra, scalars)
            if found is None:
                continue
            wgsl, grid, bound = found
            args = [("value", group[0].inputs[k]) for k in bound] + [("value", i) for i in extra_ids]
            args += [("value", s.output) for s in group] + [("value", v) for v in scalar_ids]
            fused_at[last] = Dispatch(wgsl, grid, tuple(args))
            for s in group:
                self._merged_update_inputs[s.output] = set(group[0].inputs)
            skipped.update(s.index for s in [*group, *inlined] if s.index != last)
            self._labels[last] = "+".join(s.node.op for s in [*inlined, *group])

    def _delay_updates(self) -> None:
        """Move each merged update kernel after the last dispatch reading a parameter it updates (a
        layer's weight is read by the input gradient scheduled after its update), when nothing
        between reads its outputs, so that :meth:`_updates_in_place` can write it in place. The
        moved dispatch takes the step index of the one it follows: buffer lifetimes come from those
        indices, so its inputs stay alive until it runs."""
        targets = {v.id: p.id for p, v in self.schedule.updates}
        k = len(self._dispatches) - 1
        while k >= 0:
            refs = self._dispatches[k][4]
            outs = {r for kind, r, _ in refs if kind == "value" and r in self._merged_update_inputs}
            params = {targets[v] for v in outs if v in targets}
            if not params:
                k -= 1
                continue
            after = [
                j
                for j in range(k + 1, len(self._dispatches))
                if any(kind == "value" and self._root(r) in params for kind, r, _ in self._dispatches[j][4])
            ]
            reads_outs = any(
                kind == "value" and self._root(r) in outs
                for j in range(k + 1, (after[-1] if after else k) + 1)
                for kind, r, _ in self._dispatches[j][4]
            )
            if after and not reads_outs:
                last = after[-1]
                moved = (self._dispatches[last][0], *self._dispatches[k][1:])
                self._dispatches.insert(last + 1, moved)
                self._label_at.insert(last + 1, self._label_at[k])
                del self._dispatches[k]
                del self._label_at[k]
            k -= 1

    def _updates_in_place(self) -> dict[int, int]:
        """New values a merged update kernel stores straight into their parameter's storage: value
        id -> parameter node id. The kernel reads each element of its inputs before it stores that
        element of its outputs, so this is safe when no later dispatch reads the parameter, nothing
        returns it, no index check must be able to cancel the step (those run on the GPU), and the
        value needs no copy of its own. The values then take no buffer of the plan, and the step
        copies nothing into the parameters."""
        if self._device_checks:
            return {}
        order = [refs for *_, refs in self._dispatches]
        writer: dict[int, int] = {}
        last_read: dict[int, int] = {}
        for k, refs in enumerate(order):
            for kind, ref, _ in refs:
                if kind == "value":
                    last_read[self._root(ref)] = k
        for k, refs in enumerate(order):  # a merged update's output is first touched by its kernel
            for kind, ref, _ in refs:
                if kind == "value" and ref in self._merged_update_inputs:
                    writer.setdefault(ref, k)
        returned = {self._root(n.id) for n in self.schedule.outputs}
        found: dict[int, int] = {}
        for (param, value), copy in zip(self.schedule.updates, self.schedule.update_copies, strict=True):
            v, p = value.id, param.id
            if (
                copy
                or v not in self._merged_update_inputs
                or p not in self._merged_update_inputs[v]
                or p in returned
                or self._root(v) != v
                or self._size(v) != self._size(p)
                or v in found
                or last_read.get(p, -1) > writer.get(v, -1)
            ):
                continue
            found[v] = p
        return found

    def _merge_attention(self, fused_at: dict[int, Any], skipped: set[int]) -> set[int]:
        """Sibling attention nodes (same inputs and attributes) run as one kernel storing their
        outputs (:func:`~asg.gpu.kernels.attention.merged_attention`). ``attention`` and its
        ``attention_lse`` (which the backward computes again): at the forward's step, the lse alive
        from there to its readers (``_pack`` takes lifetimes from the dispatches, so this needs packed
        buffers). The key and value gradients, and with them the query gradient (the kernel stores
        ``scale dS`` in a scratch buffer of the step, a batched matmul then gives ``dS @ k``): at the
        latest of the steps, when no dispatch reads a gradient before it (in the GPT step the heads'
        transposes between them are folded into the concatenation after all three); the inputs only
        earlier ones read live until then. The other steps are skipped (``run_traced`` still runs
        them). q, k and v copied out of a fused projection (``_fold_copies``' transposed slices) that
        only merged kernels read are read where the projection stored them
        (:meth:`_attention_inputs_in_place`): their copies are skipped too; returns their ids.
        Runs after the other folds: it reads their dispatches."""
        from asg.core.lowering import context

        from .codegen import Dispatch
        from .kernels.attention import MERGED, merged_attention

        schedule = self.schedule
        graph, spec = schedule.graph, schedule.spec
        mergeable = {op for ops in MERGED for op in ops}
        siblings: dict[tuple, list[Any]] = {}
        for step in schedule.steps:
            node = step.node
            free = step.index not in fused_at and step.index not in skipped
            if node.op in mergeable and free:
                attrs = sorted((k, repr(v)) for k, v in spec.attrs[node.id].items())
                siblings.setdefault((tuple(step.inputs), tuple(attrs)), []).append(step)
        first_read: dict[int, int] = {}  # value -> the first step whose dispatch reads it, in the fused order
        for step, _, refs in self._step_dispatches(fused_at, skipped):
            for kind, ref, _ in refs:
                if kind == "value" and ref != step.output:
                    first_read.setdefault(self._root(ref), step.index)
        names = graph.names()

        def merged(steps: list[Any], layouts: Any = None) -> Any:
            ctxs = [context("wgpu", graph, s.node, spec, names) for s in steps]
            return merged_attention(ctxs, self.dev.max_binding, layouts) if len(steps) > 1 else None

        chosen = []  # (steps, the step they run at)
        for group in siblings.values():
            if any(self.programs[s.index].view for s in group):
                continue
            pair = [s for s in group if s.node.op != "attention_grad_q"]  # without the query gradient
            for steps in [group, pair] if len(group) == 3 else [group]:
                if merged(steps) is None:
                    continue
                first, last = min(s.index for s in steps), max(s.index for s in steps)
                if any(s.node.op == "attention" for s in steps):
                    at = first  # every input is ready there, every reader of either output comes later
                elif any(first_read.get(s.output, last + 1) <= last for s in steps):
                    continue
                else:
                    at = last
                chosen.append((steps, at))
                break
        in_place = self._attention_inputs_in_place(
            [s for steps, _ in chosen for s in steps], fused_at, skipped
        )
        placed, concats = self._attention_outputs_in_place(
            [steps for steps, _ in chosen if len(steps) == 3], fused_at
        )
        for steps, at in chosen:
            layouts: dict[Any, Any] = {
                k: in_place[v][1] for k, v in enumerate(steps[0].inputs) if v in in_place
            }
            layouts |= {("out", j): placed[s.output][1] for j, s in enumerate(steps) if s.output in placed}
            found = merged(steps, layouts)
            own = self.programs[at]
            refs = {("in", k): ("value", in_place.get(v, (v,))[0]) for k, v in enumerate(steps[0].inputs)}
            refs |= {("out", j): ("value", placed.get(s.output, (s.output,))[0]) for j, s in enumerate(steps)}
            refs |= {("tmp", t): ("tmp", len(own.temps) + t) for t in range(len(found.temps))}
            fused_at[at] = [
                Dispatch(d.wgsl, d.grid, tuple(refs[r] for r in d.args)) for d in found.dispatches
            ]
            if found.temps:
                self.programs[at] = replace(own, temps=[*own.temps, *found.temps])
            skipped.update(s.index for s in steps if s.index != at)
            self._labels[at] = "+".join(s.node.op for s in steps)
        made_at = {step.output: step for step in schedule.steps}
        for v in in_place:  # the heads' copies nothing reads any more
            fused_at.pop(made_at[v].index, None)
            skipped.add(made_at[v].index)
        for c in concats:  # the heads' gradients are in their places already
            fused_at.pop(c, None)
            skipped.add(c)
        return set(in_place) | set(placed)

    def _attention_outputs_in_place(
        self, triples: list[list[Any]], fused_at: dict[int, Any]
    ) -> tuple[dict[int, tuple[int, Any]], list[int]]:
        """The gradients of q, k and v (merged, ``triples``) that a concatenation (``_fold_copies``'
        transposes and reshapes into a concat) alone reads, all three: value -> (the concatenation,
        the :class:`~asg.gpu.kernels.attention.Layout` of the gradient in it), and the steps of those
        concatenations, so the attention step stores the gradients there (the qkv projection's
        gradient, without the heads' transposes)."""
        from .kernels.attention import Layout
        from .kernels.shape import strided_view

        schedule = self.schedule
        shapes, attrs = schedule.spec.shapes, schedule.spec.attrs
        made_at = {s.output: s for s in schedule.steps}
        readers, kept = self._reader_counts(), self._kept(self._root)
        outputs = {s.output for steps in triples for s in steps}
        placed: dict[int, tuple[int, Any]] = {}
        concats = []
        for step in schedule.steps:
            if (
                step.node.op != "concat"
                or step.index not in fused_at
                or self._nodes[step.output].dtype != "float32"
            ):
                continue
            if self._size(step.output) > self.dev.max_binding or self._root(step.output) in kept:
                continue
            out = tuple(shapes[step.output])
            axis = attrs[step.output]["axis"] % len(out)
            found, start = {}, 0
            for u in step.inputs:
                chain, x = [], u  # from the concatenated value back to the gradient
                while (
                    x not in outputs
                    and (s := made_at.get(x)) is not None
                    and s.node.op in ("transpose", "reshape")
                ):
                    if readers.get(x) != 1 or self._root(x) in kept:
                        break
                    chain.append((s.node.op, tuple(shapes[s.inputs[0]]), tuple(shapes[x]), attrs[x]))
                    x = s.inputs[0]
                width = shapes[u][axis]
                if x not in outputs or readers.get(x) != 1 or x in kept:
                    break
                # the gradient as a view of the concatenation: the chain undone, then the slice of u
                inverse = [
                    ("transpose", o, i, {"axes": tuple(int(a) for a in np.argsort(at["axes"]))})
                    if op == "transpose"
                    else ("reshape", o, i, {})
                    for op, i, o, at in reversed(chain)
                ]
                inverse.append(("slice_range", out, tuple(shapes[u]), {"axis": axis, "start": start}))
                start += width
                view = strided_view(inverse)
                if view is None or view[1][-1] != 1 or any(v % 4 for v in (view[0], *view[1][:-1])):
                    break
                found[x] = (step.output, Layout(view[0], tuple(view[1][:-2]), view[1][-2], math.prod(out)))
            else:
                if any(all(s.output in found for s in steps) for steps in triples):
                    placed |= found
                    concats.append(step.index)
        return placed, concats

    def _attention_inputs_in_place(
        self, merged: list[Any], fused_at: dict[int, Any], skipped: set[int]
    ) -> dict[int, tuple[int, Any]]:
        """q, k and v of the merged attention steps ``merged`` that are copies of a transposed slice
        (the heads of a fused qkv projection) read by no other step: value -> (the source, its
        :class:`~asg.gpu.kernels.attention.Layout` there), for the kernels to read them in place."""
        from .kernels.attention import Layout
        from .kernels.shape import FOLDABLE, strided_view

        schedule = self.schedule
        shapes, attrs = schedule.spec.shapes, schedule.spec.attrs
        made_at = {s.output: s for s in schedule.steps}
        readers, kept = self._reader_counts(), self._kept(self._root)
        ours = {s.index for s in merged}
        read_by: dict[int, set[int]] = {}
        touched: set[int] = set()
        for step, _, refs in self._step_dispatches(fused_at, skipped):
            for kind, ref, _ in refs:
                if kind == "value":
                    touched.add(self._root(ref))
                    if ref != step.output:
                        read_by.setdefault(ref, set()).add(step.index)
        found: dict[int, tuple[int, Any]] = {}
        for v in {s.inputs[k] for s in merged for k in range(3)}:
            if v in kept or not read_by.get(v, set()) <= ours or self._nodes[v].dtype != "float32":
                continue
            chain, x = [], v
            while (s := made_at.get(x)) is not None and s.node.op in FOLDABLE:
                if x != v and (readers.get(x) != 1 or self._root(x) in kept):
                    break
                if (s.node.op == "reshape") != bool(self.programs[s.index].view):
                    break
                chain.append((s.node.op, tuple(shapes[s.inputs[0]]), tuple(shapes[x]), attrs[x]))
                x = s.inputs[0]
            view = strided_view(chain)
            src = self._root(x)
            if view is None or src not in touched or self._size(src) > self.dev.max_binding:
                continue
            offset, st = view
            # rows of unit stride; multiples of 4, as the query gradient's vec4 matmul reads k
            if st[-1] != 1 or any(x % 4 for x in (offset, *st[:-1], shapes[v][-1])):
                continue
            size = math.prod(int(d) for d in shapes[src])
            found[v] = (src, Layout(offset, tuple(st[:-2]), st[-2], size))
        return found

    def _check_binding(self, step: Any, refs: list[tuple[str, int, Any]]) -> None:
        """A value bound past the adapter's largest storage binding is an error naming the op and the value."""
        limit = self.dev.max_binding
        for kind, ref, win in refs:
            if kind != "value":
                continue
            nb = win[1] if win is not None else self._size(ref)
            if nb > limit:
                graph = self.schedule.graph
                raise ExecutionError(
                    f"wgpu: {graph.format_node(step.node)} binds {graph.format_node(self._nodes[ref])}: it is "
                    f"{nb} bytes, more than the adapter's largest storage binding ({limit} bytes, {self.dev.summary}). "
                    f"Elementwise ops and parameter updates run over windows of that size; {step.node.op!r} "
                    "binds its operands whole: split the tensor (smaller batch)"
                )

    def _pack(
        self, internal: set[int], kernels: Sequence[Any], fused_at: dict[int, Any], skipped: set[int]
    ) -> list[list[Any]]:
        """Give every computed value and scratch buffer a buffer shared with others of disjoint lifetime.

        A lifetime runs from the first to the last step that dispatches touching the value run at,
        in the fused order and in the node-by-node order of ``run_traced`` (both must stay valid), to
        the end for outputs and parameter updates. Values of any shape share (:func:`~asg.gpu.pool.pack`);
        an unfused in-place step keeps core's choice of the dying input it overwrites. Returns the temps.
        """
        end = len(self.schedule.steps)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for dispatches in {
            id(self._dispatches): self._dispatches,
            id(self._traced_dispatches): self._traced_dispatches,
        }.values():
            for index, _, _, _, refs in dispatches:
                for kind, ref, _ in refs:
                    if kind == "value":
                        r = self._root(ref)
                        first[r] = min(first.get(r, index), index)
                        last[r] = max(last.get(r, index), index)
        kept = {self._root(n.id) for n in self.schedule.outputs} | {
            self._root(v.id) for _, v in self.schedule.updates
        }
        fused = skipped | set(fused_at)
        in_place_of = self.schedule.memory.in_place_of
        values: list[Lifetime] = []
        for step, prog, kernel in zip(self.schedule.steps, self.programs, kernels, strict=True):
            v = step.output
            if prog.view or v in internal:
                continue
            over = (
                in_place_of.get(v)
                if kernel.in_place and step.index not in fused
                else self._written_over.get(v)
            )
            if over is not None and (self._root(over) != over or last.get(over) != step.index):
                over = None
            lo = min(first.get(v, step.index), step.index)
            hi = end if v in kept else max(last.get(v, step.index), step.index)
            values.append(Lifetime(v, self._size(v), lo, hi, over))
        temps_at = {}
        for step, prog in zip(self.schedule.steps, self.programs, strict=True):
            for k, nb in enumerate(prog.temps):
                key = -(1 + step.index * 1_000_000 + k)
                temps_at[key] = (step.index, k)
                values.append(Lifetime(key, nb, step.index, step.index))
        self.lifetimes = values
        slot_of, sizes = pack(values)
        slots = [self._take(nb) for nb in sizes]
        temps: list[list[Any]] = [[None] * len(prog.temps) for prog in self.programs]
        for key, slot in slot_of.items():
            if key >= 0:
                self._buf[key] = slots[slot]
            else:
                index, k = temps_at[key]
                temps[index][k] = slots[slot]
        self.packed_bytes = sum(b.size for b in slots)
        return temps

    def _materialize(self, step: Any) -> None:
        """Give ``step``'s value its buffer: its entry of core's buffer table, or one of its own."""
        if step.buffer is not None:
            if step.buffer not in self._planned:
                b = self.schedule.memory.buffers[step.buffer]
                self._planned[step.buffer] = self._take(nbytes(b.shape, b.dtype))
            self._buf[step.output] = self._planned[step.buffer]
        else:
            self._buf[step.output] = self._take(self._size(step.output))

    @property
    def dispatch_count(self) -> int:
        """Dispatches per step (after fusion)."""
        return len(self._dispatches)

    def dispatch_labels(self) -> list[tuple[int, str]]:
        """(step index, ops) of each dispatch of a step: a fused kernel's ops joined by ``+``
        (``matmul+add+gelu``), else its step's op."""
        ops = [step.node.op for step in self.schedule.steps]
        return [(index, self._labels.get(index, ops[index])) for index in self._label_at]

    def dispatch_sources(self) -> list[str]:
        """The WGSL of each dispatch of a step (for benchmarks and reading what a fused kernel does)."""
        return [self._source_of[id(pipe)] for _, pipe, *_ in self._dispatches]

    def dispatch_grids(self) -> list[tuple[int, int, int]]:
        """The workgroup grid of each dispatch of a step."""
        return [tuple(grid) for _, _, _, grid, _ in self._dispatches]

    def dispatch_bytes(self) -> list[int]:
        """Bytes each dispatch of a step binds (its inputs, outputs and scratch buffers, each once):
        what it reads and writes at most, for a bandwidth bound."""
        sizes = []
        for _, _, _, _, refs in self._dispatches:
            seen: dict[Any, int] = {}
            for kind, ref, win in refs:
                if kind == "value":
                    seen[(self._root(ref), win)] = win[1] if win is not None else self._size(ref)
                elif kind == "temp":
                    seen[ref] = self.programs[ref // 1_000_000].temps[ref % 1_000_000]
            sizes.append(sum(seen.values()))
        return sizes

    # ------------------------------------------------------------------ buffers
    def _param_ids(self) -> set[int]:
        return {n.id for n in self._param_nodes}

    def _reader_counts(self, key: Callable[[int], int] = int) -> dict[int, int]:
        """How many schedule steps read each value (``key(id)``: the value, or the buffer it views)."""
        readers: dict[int, int] = {}
        for step in self.schedule.steps:
            for i in set(step.inputs):
                readers[key(i)] = readers.get(key(i), 0) + 1
        return readers

    def _kept(self, key: Callable[[int], int] = int) -> set[int]:
        """The values that outlive the step (outputs and updated values), as ``key(id)``."""
        schedule = self.schedule
        return {key(n.id) for n in schedule.outputs} | {key(v.id) for _, v in schedule.updates}

    def _root(self, node_id: int) -> int:
        while node_id in self._views:
            node_id = self._views[node_id]
        return node_id

    def buffer_of(self, node_id: int) -> Any:
        """The buffer holding value ``node_id`` during a call."""
        return self._buf[self._root(node_id)]

    def _window(self, node_id: int) -> tuple[Any, int, int]:
        node = self._nodes[node_id]
        nb = nbytes(self.schedule.spec.shapes[node_id], node.dtype)
        return (self.buffer_of(node_id), 0, max(4, (nb + 3) // 4 * 4))

    def _bind(self) -> None:
        """(Re)build the bind groups: once per plan, again only if a parameter moved to another buffer."""
        params = [self.storage.buffer(v) for v in self._variables]
        if self._bound_params is not None and all(
            a is b for a, b in zip(params, self._bound_params, strict=True)
        ):
            return
        for node, buf in zip(self._param_nodes, params, strict=True):
            self._buf[node.id] = buf
        for value, param in self._in_place.items():
            self._buf[value] = self._buf[param]
        self._encoded = self._encode(self._dispatches)
        same = self._traced_dispatches is self._dispatches and not self._in_place
        self._traced = self._encoded if same else None
        # (pipeline, bind group, x, y, z) as C handles, for raw dispatch (the objects above keep them alive)
        self._raw = [(p._internal, bg._internal, *g) for p, bg, g, _ in self._encoded]
        self._bound_params = params
        self._update_raw: list[tuple[Any, Any, int, int, int]] | None = None

    def _encode(self, dispatches: list) -> list[tuple[Any, Any, tuple[int, int, int], int]]:
        encoded = []
        for index, pipe, nbind, grid, refs in dispatches:
            windows = []
            for kind, ref, win in refs:
                if kind == "value":
                    buf, off, nb = self._window(ref)
                    windows.append((buf, win[0], win[1]) if win is not None else (buf, off, nb))
                elif kind == "err":
                    windows.append((self._err, 256 * self._checks[ref][0], 8))
                else:
                    buf = self._temps[ref // 1_000_000][ref % 1_000_000]
                    windows.append((buf, 0, buf.size))
            encoded.append((pipe, self.dev.bind_group(nbind, windows), grid, index))
        return encoded

    def release(self) -> None:
        """Give this plan's buffers back to the pool now (the plan cannot run afterwards)."""
        self._finalizer()
        self._encoded = []
        self._raw = []

    # ------------------------------------------------------------------ running
    def _prepare(self, feeds: Sequence[np.ndarray]) -> None:
        self._check_fed_indices(feeds)
        claim_all(self._variables, self.storage)
        self._bind()
        for node, array in zip(self.schedule.inputs, feeds, strict=True):
            self.dev.write(self._buf[node.id], to_gpu(array, node.dtype))

    def _encode_updates(self, enc: Any, update: bool) -> list[tuple[Any, int, int]]:
        """Record the output copies and parameter updates; return the output windows to read."""
        windows = []
        for n, copy in zip(self._outputs, self._out_copy, strict=True):
            buf, off, nb = self._window(n.id)
            if copy is not None:
                enc.copy_buffer_to_buffer(buf, off, copy, 0, nb)
                buf = copy
            windows.append((buf, 0, nbytes(self.schedule.spec.shapes[n.id], n.dtype)))
        if update:
            values = []
            for (param, value), scratch in zip(self.schedule.updates, self._update_scratch, strict=True):
                src, _, nb = self._window(value.id)
                if scratch is not None:
                    enc.copy_buffer_to_buffer(src, 0, scratch, 0, nb)
                    src = scratch
                values.append((src, self.storage.buffer(param.data), nb))
            if not self._device_checks:
                for src, dst, nb in values:
                    if src is not dst:
                        enc.copy_buffer_to_buffer(src, 0, dst, 0, nb)
            else:  # copied by a kernel that does nothing when an index check failed in this step
                if self._update_raw is None:  # once per binding of the parameters (see _bind)
                    guarded = [
                        (pipe, bg, *grid)
                        for src, dst, nb in values
                        if src is not dst
                        for pipe, bg, grid in self._guarded_copy(src, dst, nb)
                    ]
                    self._update_raw = [(p._internal, b._internal, *g) for p, b, *g in guarded]
                    self._update_guarded = guarded
                cpass = enc.begin_compute_pass()
                if self.raw:
                    _record_raw(cpass, self._update_raw)
                else:
                    for pipe, bg, *grid in self._update_guarded:
                        cpass.set_pipeline(pipe)
                        cpass.set_bind_group(0, bg)
                        cpass.dispatch_workgroups(*grid)
                cpass.end()
        if self._device_checks:
            windows.append((self._err, 0, 256 * len(self._checks)))
        return windows

    def _guarded_copy(self, src: Any, dst: Any, nb: int) -> list[tuple[Any, Any, tuple[int, int, int]]]:
        """Dispatches copying ``nb`` bytes unless an index check failed (over windows past the binding limit)."""
        key = (id(src), id(dst), nb)
        found = self._guards.get(key)
        if found is None:
            found = []
            for start, words in chunks((nb + 3) // 4, [4], self.dev.max_binding):
                body = [
                    "var bad = 0u;",
                    f"for (var s = 0; s < {len(self._checks)}; s++) {{ bad = bad | err[s * 64]; }}",
                    "if (bad == 0u) { dst[i] = src[i]; }",
                ]
                wgsl = elementwise_kernel([("err", "u32"), ("src", "u32"), ("dst", "u32")], words, body)
                off, size = window(start, words, "int32")
                bg = self.dev.bind_group(
                    3, [(self._err, 0, self._err.size), (src, off, size), (dst, off, size)]
                )
                found.append((self.dev.pipeline(wgsl, 3), bg, grid_for(words)))
            self._guards[key] = found
        return found

    def _fed_indices(self) -> dict[int, list[Node]]:
        """Index-checking steps whose indices (a step's last input) the host can compute from the feeds
        and constants alone, through at most :data:`HOST_INDEX_NODES` pure ops with numpy kernels (a
        reshape; cross_entropy's ``where(y != ignore_index, y, 0)``): step index -> those nodes in order,
        the indices last (feeds and constants are not listed)."""
        from asg.core.passes.rewrite import is_pure
        from asg.core.registry import RANDOM, get_op

        fed = {n.id for n in self.schedule.inputs}
        found: dict[int, list[Node]] = {}
        for index in self._checks:
            order: list[Node] = []
            seen: set[int] = set()
            todo = [(self._nodes[self.schedule.steps[index].inputs[-1]], False)]
            ok = True
            while todo and ok:
                node, ready = todo.pop()
                if ready:
                    order.append(node)
                    continue
                if node.id in seen:
                    continue
                seen.add(node.id)
                if node.op == "constant" or node.id in fed:
                    continue
                op = get_op(node.op) if node.op not in ("input", "parameter") else None
                if (
                    op is None
                    or not is_pure(node.op)
                    or op.has(RANDOM)
                    or "numpy" not in op.kernels
                    or len(seen) > HOST_INDEX_NODES
                ):
                    ok = False
                    break
                todo.append((node, True))
                todo += [(i, False) for i in node.inputs]
            if ok:
                found[index] = order
        return found

    def _check_fed_indices(self, feeds: Sequence[np.ndarray]) -> None:
        if not self._host_checks:
            return
        from asg.core.registry import get_op

        values = {
            n.id: np.asarray(f).astype(n.dtype, copy=False)
            for n, f in zip(self.schedule.inputs, feeds, strict=True)
        }
        attrs = self.schedule.spec.attrs
        for index, order in self._host_checks.items():
            for node in order:
                if node.id not in values:
                    args = [values[i.id] if i.op != "constant" else i.data for i in node.inputs]
                    values[node.id] = np.asarray(
                        get_op(node.op).kernels["numpy"](*args, **attrs.get(node.id, node.attrs))
                    )
            found = values.get(self.schedule.steps[index].inputs[-1])
            if found is None:  # the indices are a feed or a constant as they are
                leaf = self._nodes[self.schedule.steps[index].inputs[-1]]
                found = leaf.data if leaf.op == "constant" else values[leaf.id]
            _, (_, size, negative) = self._checks[index]
            if found.size:
                low, high = found.min(), found.max()
                if low < (-size if negative else 0) or high >= size:
                    bad = int(low) if low < (-size if negative else 0) else int(high)
                    raise self._index_error(index, bad, "the step did not run")

    def _raise_index_errors(self, data: bytes) -> None:
        words = np.frombuffer(data, np.uint32).reshape(len(self._checks), 64)
        for index, (slot, _) in sorted(self._device_checks.items()):
            if words[slot, 0]:
                bad = int(words[slot, 1].view(np.int32))
                raise self._index_error(
                    index, bad, "on wgpu the step ran; its parameter updates were not applied"
                )

    def _index_error(self, index: int, bad: int, note: str) -> ExecutionError:
        _, (what, size, negative) = self._checks[index]
        node = self.schedule.steps[index].node
        low = -size if negative else 0
        where = f"\n  built at {node.meta['source']}" if node.meta.get("source") else ""
        return ExecutionError(
            f"while executing {self.schedule.graph.format_node(node)}{where}\n  IndexError: {node.op}: "
            f"{what} {bad} is out of range for {size} entries (valid: {low} to {size - 1}); check the "
            f"values fed to this op ({note})"
        )

    def _finish(self, enc: Any, update: bool) -> list[np.ndarray]:
        windows = self._encode_updates(enc, update)
        data = self.dev.read_many(windows, encoder=enc)
        if self._device_checks:
            self._raise_index_errors(data.pop())
        if update:
            for var in self._update_vars:
                self.storage.mark_written(var)
        shapes = self.schedule.spec.shapes
        return [from_gpu(b, shapes[n.id], n.dtype) for b, n in zip(data, self._outputs, strict=True)]

    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._run(feeds)

    def run_pass_timed(
        self, feeds: Sequence[np.ndarray], update: bool = True
    ) -> tuple[list[np.ndarray], float]:
        """Run the step as ``__call__`` does, with a timestamp at each end of its one compute pass:
        (outputs, GPU seconds of the pass). Against the wall time of a step, this splits the host's
        share (feeds, recording, submit, readback) from the GPU's; against the per-dispatch times of
        ``run_timed``, it shows what the barriers between dispatches cost. ``None`` seconds when the
        adapter has no ``timestamp-query``."""
        timer = _Timer(self.dev) if "timestamp-query" in self.dev.features else None
        out = self._run(feeds, update=update, timer=timer)
        return out, (timer.seconds() if timer is not None else None)

    def _run(
        self, feeds: Sequence[np.ndarray], update: bool = True, timer: _Timer | None = None
    ) -> list[np.ndarray]:
        """Run one step. Its dispatches go in compute passes of ``dispatches_per_submit`` each, every
        pass but the last submitted as soon as it is recorded, so that the GPU runs the first while the
        host records the next (recording and wgpu's checks at each pass's end cost about as much as a
        tenth of the GPU's time); the last one's encoder goes on with the updates and the readback.
        ``host_seconds`` keeps the host's phases of the step."""
        with self.dev.lock, self._parameters_kept(update):
            t0 = time.perf_counter()
            self._prepare(feeds)
            t1 = time.perf_counter()
            count = len(self._encoded)
            per = self.dispatches_per_submit if self.dispatches_per_submit > 0 else max(count, 1)
            # a short first pass: the GPU starts sooner
            first = max(1, per // 4) if per < count else per
            starts = [0, *range(first, count, per)] if count else [0]
            bounds = [*starts[1:], max(count, 1)]
            recording = 0.0
            for k, (start, stop) in enumerate(zip(starts, bounds, strict=True)):
                enc = self.dev.device.create_command_encoder()
                if k == 0 and self._device_checks:
                    enc.clear_buffer(self._err)
                last = k == len(starts) - 1
                stamped = timer is not None and (k == 0 or last)
                cpass = enc.begin_compute_pass(**(timer.pass_args(k == 0, last) if stamped else {}))
                t = time.perf_counter()
                self._record(cpass, start, stop)
                recording += time.perf_counter() - t
                cpass.end()
                if not last:
                    self.dev.queue.submit([enc.finish()])
            if timer is not None:
                timer.resolve(enc)
            self.encode_seconds = recording
            t2 = time.perf_counter()
            try:
                out = self._finish(enc, update=update)
            except ExecutionError:
                raise
            except Exception as err:
                raise ExecutionError(f"wgpu: the step failed on {self.dev.summary}: {err}") from err
            t3 = time.perf_counter()
            self.host_seconds = {
                "feeds": t1 - t0,
                "recording": recording,
                "passes and submits": t2 - t1 - recording,
                "updates and readback": t3 - t2,
            }
            self.calls += 1
            return out

    def _record(self, cpass: Any, start: int, stop: int) -> None:
        """Record dispatches ``start:stop`` of the step into ``cpass``."""
        if self.raw:
            _record_raw(cpass, self._raw[start:stop])
            return
        last = None
        for pipe, bg, grid, _ in self._encoded[start:stop]:
            if pipe is not last:
                cpass.set_pipeline(pipe)
                last = pipe
            cpass.set_bind_group(0, bg)
            cpass.dispatch_workgroups(*grid)

    def run_timed(
        self, feeds: Sequence[np.ndarray], update: bool = False
    ) -> tuple[list[np.ndarray], list[tuple[int, str, float]]] | None:
        """Run the step as it runs (fused), each dispatch in its own compute pass between two
        timestamps, all in one submission: (outputs, (step index, ops, GPU seconds) per dispatch).

        ``None`` (nothing run) when the adapter has no ``timestamp-query`` or the plan was compiled
        with ``options={"profile": "traced"}``; ``Function.profile`` then runs ``run_traced``.
        """
        if self.profile_mode != "plan" or "timestamp-query" not in self.dev.features:
            return None
        import wgpu

        with self.dev.lock, self._parameters_kept(update):
            self._prepare(feeds)
            count = len(self._encoded)
            per_set = _QUERIES_PER_SET // 2
            enc = self.dev.device.create_command_encoder()
            if self._err is not None:
                enc.clear_buffer(self._err)
            sets = []
            for start in range(0, count, per_set):
                n = 2 * min(per_set, count - start)
                qs = self.dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=n)
                buf = self.dev.device.create_buffer(
                    size=8 * n, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC
                )
                sets.append((qs, buf, n))
            for k, (pipe, bg, grid, _) in enumerate(self._encoded):
                j = k % per_set
                writes = {
                    "query_set": sets[k // per_set][0],
                    "beginning_of_pass_write_index": 2 * j,
                    "end_of_pass_write_index": 2 * j + 1,
                }
                cpass = enc.begin_compute_pass(timestamp_writes=writes)
                cpass.set_pipeline(pipe)
                cpass.set_bind_group(0, bg)
                cpass.dispatch_workgroups(*grid)
                cpass.end()
            for qs, buf, n in sets:
                enc.resolve_query_set(qs, 0, n, buf, 0)
            out = self._finish(enc, update=update)
            stamps = [np.frombuffer(self.dev.read(buf, 8 * n), np.uint64) for _, buf, n in sets]
            for qs, buf, _ in sets:
                qs.destroy()
                buf.destroy()
            t = np.concatenate([np.zeros(0, np.uint64), *stamps]).astype(np.int64).reshape(-1, 2)
            seconds = np.maximum(t[:, 1] - t[:, 0], 0) * 1e-9
            labels = self.dispatch_labels()
            rows = [(index, ops, float(s)) for (index, ops), s in zip(labels, seconds, strict=True)]
            return out, rows

    @contextlib.contextmanager
    def _own_update_buffers(self) -> Iterator[None]:
        """Node by node, an optimizer's new values are separate kernels (the new parameter reads
        the old moments): the values updated in place get buffers of their own while inside, and the
        step ends with copies into the parameters as usual."""
        if not self._in_place:
            yield
            return
        claim_all(self._variables, self.storage)
        self._bind()
        fused = {v: self._buf[v] for v in self._in_place}
        if self._own is None:
            self._own = {v: self._take(self._size(v)) for v in self._in_place}
        self._buf.update(self._own)
        try:
            yield
        finally:
            self._buf.update(fused)

    @contextlib.contextmanager
    def _parameters_kept(self, update: bool) -> Iterator[None]:
        """With updates in place, a step that must not update (``update=False``) runs between a copy
        of the parameters it writes and the copy back."""
        if update or not self._in_place:
            yield
            return
        claim_all(self._variables, self.storage)
        self._bind()
        saved = []
        enc = self.dev.device.create_command_encoder()
        for param in set(self._in_place.values()):
            buf, nb = self._buf[param], self._size(param)
            keep = self.pool.acquire(nb)
            enc.copy_buffer_to_buffer(buf, 0, keep, 0, (nb + 3) // 4 * 4)
            saved.append((buf, keep, nb))
        self.dev.queue.submit([enc.finish()])
        try:
            yield
        finally:
            enc = self.dev.device.create_command_encoder()
            for buf, keep, nb in saved:
                enc.copy_buffer_to_buffer(keep, 0, buf, 0, (nb + 3) // 4 * 4)
            self.dev.queue.submit([enc.finish()])
            for _, keep, _ in saved:
                self.pool.release(keep)

    def run_traced(
        self, feeds: Sequence[np.ndarray], on_step: OnStep, update: bool = True
    ) -> list[np.ndarray]:
        """Run step by step (one submission each), calling ``on_step(step, value, seconds)`` after each.

        ``seconds`` is the GPU time of the step's dispatches from timestamp queries where the
        adapter has them, else the wall time of the submission and its wait.
        """
        with self.dev.lock, self._own_update_buffers():
            self._prepare(feeds)
            timer = _Timer(self.dev) if "timestamp-query" in self.dev.features else None
            if self._traced is None:
                for step, prog in zip(self.schedule.steps, self.programs, strict=True):
                    if not prog.view and step.output not in self._buf:  # kept in registers when fused
                        self._buf[step.output] = self._take(self._size(step.output))
                self._traced = self._encode(self._traced_dispatches)
            by_step: dict[int, list[tuple[Any, Any, tuple[int, int, int]]]] = {}
            for pipe, bg, grid, index in self._traced:
                by_step.setdefault(index, []).append((pipe, bg, grid))
            shapes = self.schedule.spec.shapes
            for step in self.schedule.steps:
                start = time.perf_counter()
                enc = self.dev.device.create_command_encoder()
                if self._err is not None and step.index == 0:
                    enc.clear_buffer(self._err)
                cpass = enc.begin_compute_pass(**(timer.pass_args() if timer else {}))
                for pipe, bg, grid in by_step.get(step.index, []):
                    cpass.set_pipeline(pipe)
                    cpass.set_bind_group(0, bg)
                    cpass.dispatch_workgroups(*grid)
                cpass.end()
                if timer:
                    timer.resolve(enc)
                node = step.node
                (data,) = self.dev.read_many([self._window(step.output)], encoder=enc)
                seconds = timer.seconds() if timer else time.perf_counter() - start
                value = from_gpu(data, shapes[step.output], node.dtype)
                on_step(step, value, seconds)
            enc = self.dev.device.create_command_encoder()
            return self._finish(enc, update=update)


def _give_back(pool: BufferPool, owned: list[Any]) -> None:
    for buf in owned:
        pool.release(buf)
    owned.clear()


def _record_raw(cpass: Any, raw: Sequence[tuple[Any, Any, int, int, int]]) -> None:
    """Record (pipeline, bind group, grid) dispatches through wgpu-native's C API, unchecked."""
    from wgpu.backends.wgpu_native import ffi, lib

    set_pipeline = lib.wgpuComputePassEncoderSetPipeline
    set_bind_group = lib.wgpuComputePassEncoderSetBindGroup
    dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups
    handle, null, last = cpass._internal, ffi.NULL, None
    for pipe, bg, x, y, z in raw:
        if pipe != last:
            set_pipeline(handle, pipe)
            last = pipe
        set_bind_group(handle, 0, bg, 0, null)
        dispatch(handle, x, y, z)


_QUERIES_PER_SET = 4096  # wgpu's largest query set


class _Timer:
    """Timestamp queries around one compute pass (nanoseconds, read back as u64)."""

    def __init__(self, dev: GpuDevice) -> None:
        import wgpu

        self.dev = dev
        self.qs = dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=2)
        self.buf = dev.device.create_buffer(
            size=256, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC
        )

    def pass_args(self, first: bool = True, last: bool = True) -> dict[str, Any]:
        """``begin_compute_pass`` arguments: the start stamp in the ``first`` pass, the end in the ``last``."""
        writes: dict[str, Any] = {"query_set": self.qs}
        if first:
            writes["beginning_of_pass_write_index"] = 0
        if last:
            writes["end_of_pass_write_index"] = 1
        return {"timestamp_writes": writes}

    def resolve(self, enc: Any) -> None:
        enc.resolve_query_set(self.qs, 0, 2, self.buf, 0)

    def seconds(self) -> float:
        t = np.frombuffer(self.dev.read(self.buf, 16), np.uint64)
        return max(0.0, float(int(t[1]) - int(t[0])) * 1e-9)


def plan_nodes(plan: WgpuPlan) -> list[Node]:
    """The nodes of a plan's steps, in order (for tests and tools)."""
    return [s.node for s in plan.schedule.steps]
