"""Fusion codegen: each elementwise fusion group of asg-core's analysis becomes one WGSL kernel.

:func:`asg.core.fusion.find_fusion_groups` marks the groups; the elementwise nodes of each (all
of an elementwise group; the epilogue of a matmul, the prologue of a reduction or layer_norm, whose
anchor stays its own kernel) are rendered by :func:`elementwise_group_kernel` as one kernel over
the group's iteration space: its external inputs are read once per
element (broadcasting through strides, one-element constants inlined), every node's value is a
local, and only the group's outputs are stored. :func:`plan_groups` places each kernel at the step
of the group's last node in core's schedule, when that keeps the schedule's buffer plan valid
(readers of the outputs come later; no input's buffer is reused before then); other groups run
node by node. :func:`matmul_operands` finds the values no kernel needs to store because every
matmul reading them recomputes them as it loads its left operand (``gelu(h) @ W``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from asg.core.fusion import FusionGroup, find_fusion_groups
from asg.core.graph import Node
from asg.core.schedule import Schedule, Step
from asg.core.specialize import Specialization

from .codegen import (
    ITEMSIZE,
    VTYPE,
    Dispatch,
    broadcast_strides,
    coords,
    elementwise_kernel,
    grid,
    literal,
    load,
    offset,
    store,
    strides,
)
from .kernels.elementwise import FUSIBLE, TABLE, emit, functions_for
from .kernels.linalg import ALoad, transposed_operand_ok


def _const(node: object) -> object | None:
    data = getattr(node, "data", None)
    if getattr(node, "op", None) == "constant" and data is not None and data.size == 1:
        return data.reshape(()).item()
    return None


def _external_inputs(nodes: Sequence[Node]) -> list[Node]:
    """The values outside ``nodes`` that they read, each once, in first-use order."""
    members = {n.id for n in nodes}
    return list({i.id: i for n in nodes for i in n.inputs if i.id not in members}.values())


def _group_values(
    inputs: Sequence[Node],
    nodes: Sequence[Node],
    spec: Specialization,
    space: tuple[int, ...],
    values: dict[int, tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[int], list[str], bool]:
    """WGSL lines computing ``nodes`` at linear index ``i`` of ``space`` from ``inputs``.

    Returns (``in{slot}`` bindings, ids of the inputs read, the ``let`` lines, whether they use the
    coordinates of ``i``). ``values`` maps each id to its (WGSL expression, type); it is filled in
    place (one-element constants inlined, loads as ``e{slot}``, nodes as ``v{k}``).
    """
    bindings: list[tuple[str, str]] = []
    reads: list[int] = []
    lets: list[str] = []
    needs_coords = False
    for e in inputs:
        vt = VTYPE[e.dtype]
        c = _const(e)
        if c is not None:
            values[e.id] = (literal(c, vt), vt)
            continue
        slot = len(bindings)
        bindings.append((f"in{slot}", e.dtype))
        reads.append(e.id)
        shape = tuple(spec.shapes[e.id])
        if shape == space:
            index = "i"
        else:
            needs_coords = True
            index = f"({offset(broadcast_strides(shape, space))})"
        lets.append(f"let e{slot} = {load(f'in{slot}', e.dtype, index)};")
        values[e.id] = (f"e{slot}", vt)
    for k, n in enumerate(nodes):
        expr = emit(
            n.op, spec.attrs[n.id], [i.dtype for i in n.inputs], n.dtype, [values[i.id] for i in n.inputs]
        )
        lets.append(f"let v{k} = {expr};")
        values[n.id] = (f"v{k}", VTYPE[n.dtype])
    return bindings, reads, lets, needs_coords


def elementwise_group_kernel(
    group: ElementwiseGroup, schedule: Schedule
) -> tuple[Dispatch, list[int], list[int]]:
    """(dispatch, ids of the values it reads, ids of the values it writes) for an elementwise group.

    The dispatch's ``args`` are ``("value", node id)`` in binding order: inputs, then outputs.
    """
    spec = schedule.spec
    space = tuple(spec.shapes[group.nodes[-1].id])
    values: dict[int, tuple[str, str]] = {}
    bindings, reads, lets, needs_coords = _group_values(group.inputs, group.nodes, spec, space, values)
    writes = [o.id for o in group.outputs]
    for j, o in enumerate(group.outputs):
        bindings.append((f"out{j}", o.dtype))
        lets.append(store(f"out{j}", o.dtype, "i", values[o.id][0]))
    body = (coords(space) if needs_coords else []) + lets
    count = math.prod(space)
    wgsl = elementwise_kernel(bindings, count, body)
    wgsl = wgsl.replace("\n@compute", functions_for(wgsl) + "\n@compute", 1)
    args = tuple(("value", i) for i in reads + writes)
    return Dispatch(wgsl, grid(count), args), reads, writes


@dataclass
class ElementwiseGroup:
    """The elementwise nodes of one fusion group (its anchor, if any, left out), as one kernel computes them.

    ``inputs``: values outside it that its nodes read (first use order); ``outputs``: its values read
    by another step or returned by the graph. ``source`` is core's group (``None`` for a test's own).
    """

    nodes: tuple[Node, ...]
    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    source: FusionGroup | None = None


def matmul_epilogue_kernel(
    group: ElementwiseGroup,
    schedule: Schedule,
    a_load: tuple[int, ALoad] | None = None,
    b_transposed: bool = False,
) -> Dispatch:
    """The matmul ``group.nodes[0]`` with the elementwise nodes after it computed in its store.

    The epilogue function gets each product element and its linear index; external inputs (a bias,
    a residual) are read at that index's coordinates through their broadcast strides. ``a_load``:
    (the value bound as A, how A is recomputed from it) when A is not stored (:func:`matmul_operands`).
    """
    from .kernels.linalg import Epilogue, matmul_program

    spec = schedule.spec
    anchor, nodes = group.nodes[0], group.nodes[1:]
    space = tuple(spec.shapes[anchor.id])
    values: dict[int, tuple[str, str]] = {anchor.id: ("acc", "f32")}
    matmul_only = {anchor.inputs[0].id, anchor.inputs[1].id} - {i.id for n in nodes for i in n.inputs}
    inputs = [e for e in group.inputs if e.id not in matmul_only]
    store_c = any(o.id == anchor.id for o in group.outputs)
    outs = [o for o in group.outputs if o.id != anchor.id]
    a, b = anchor.inputs
    k, n = int(spec.shapes[a.id][-1]), int(space[-1])
    found = (
        _vec4_epilogue(anchor, inputs, nodes, outs, spec, space) if k % 4 == 0 and n % 4 == 0 and k else None
    )
    if found is not None:
        source, bindings, reads = found
    else:
        bindings, reads, lets, needs_coords = _group_values(inputs, nodes, spec, space, values)
        for j, o in enumerate(outs):
            bindings.append((f"out{j}", o.dtype))
            lets.append(store(f"out{j}", o.dtype, "i", values[o.id][0]))
        body = "\n    ".join((coords(space) if needs_coords else []) + lets)
        source = f"fn epilogue(i: i32, acc: f32) {{\n    {body}\n}}"
    source = functions_for(source) + "\n" + source
    a_value, load = a_load if a_load is not None else (anchor.inputs[0].id, None)
    prog = matmul_program(
        spec.shapes[a.id],
        spec.shapes[b.id],
        space,
        "",
        epilogue=Epilogue(source, tuple(bindings), store_c, vec4=found is not None),
        a_load=load,
        b_transposed=b_transposed,
    )
    (d,) = prog.dispatches
    args = [("value", a_value), ("value", b.inputs[0].id if b_transposed else b.id)] + (
        [("value", anchor.id)] if store_c else []
    )
    args += [("value", i) for i in reads] + [("value", o.id) for o in outs]
    return Dispatch(d.wgsl, d.grid, tuple(args))


def _vec4_epilogue(
    anchor: Node,
    inputs: Sequence[Node],
    nodes: Sequence[Node],
    outs: Sequence[Node],
    spec: Specialization,
    space: tuple[int, ...],
) -> tuple[str, list[tuple[str, str]], list[int]] | None:
    """``fn epilogue4(i4: i32, acc: vec4<f32>)`` for the vec4 matmul: four neighbouring elements of a
    row (``i4``: their vec4 index) computed at once, each input read and each output written as one
    ``vec4`` (the scalar epilogue made four loads and stores of each); the math stays the scalar
    formulas, once per component. Returns (source, bindings, ids read), or ``None`` unless every
    input and output is float32 and every input either has the product's shape or is a row vector
    over its last axis (a bias)."""
    n4 = space[-1] // 4
    if any(o.dtype != "float32" for o in outs) or any(v.dtype != "float32" for v in nodes):
        return None
    bindings: list[tuple[str, str]] = []
    reads: list[int] = []
    loads: list[str] = []
    values: list[dict[int, tuple[str, str]]] = [{} for _ in range(4)]
    for e in inputs:
        c = _const(e)
        if c is not None and e.dtype == "float32":
            for q in range(4):
                values[q][e.id] = (literal(c, "f32"), "f32")
            continue
        shape = tuple(int(d) for d in spec.shapes[e.id])
        if e.dtype != "float32":
            return None
        if shape == space:
            index = "i4"
        elif shape[-1:] == space[-1:] and math.prod(shape) == space[-1]:
            index = f"i4 % {n4}"
        else:
            return None
        slot = len(bindings)
        bindings.append((f"in{slot}", "vec4<f32>"))
        reads.append(e.id)
        loads.append(f"let e{slot} = in{slot}[{index}];")
        for q in range(4):
            values[q][e.id] = (f"e{slot}.{'xyzw'[q]}", "f32")
    lets = list(loads)
    for q in range(4):
        values[q][anchor.id] = (f"acc.{'xyzw'[q]}", "f32")
        for k, node in enumerate(nodes):
            if any(i.id not in values[q] for i in node.inputs):
                return None
            expr = emit(
                node.op,
                spec.attrs[node.id],
                [i.dtype for i in node.inputs],
                node.dtype,
                [values[q][i.id] for i in node.inputs],
            )
            lets.append(f"let v{k}_{q} = {expr};")
            values[q][node.id] = (f"v{k}_{q}", "f32")
    for j, o in enumerate(outs):
        bindings.append((f"out{j}", "vec4<f32>"))
        lets.append(f"out{j}[i4] = vec4<f32>({', '.join(values[q][o.id][0] for q in range(4))});")
    body = "\n    ".join(lets)
    return f"fn epilogue4(i4: i32, acc: vec4<f32>) {{\n    {body}\n}}", bindings, reads


def transpose_index(in_shape: Sequence[int], axes: Sequence[int]) -> str:
    """WGSL of ``fn a_index(l: i32) -> i32`` for ``permute(x, axes)`` of a contiguous ``x`` of ``in_shape``:
    the vec4 index in x of linear element ``l`` of the permuted value (its last axis kept, a multiple of 4).

    >>> print(transpose_index((2, 3, 4, 8), (0, 2, 1, 3)))  # (B, h, T, hs) -> (B, T, h, hs)
    fn a_index(l: i32) -> i32 {
        return ((l / 96) * 96 + ((l / 24) % 4) * 8 + ((l / 8) % 3) * 32 + (l % 8)) / 4;
    }
    """
    in_st = strides(tuple(in_shape))
    out_shape = tuple(in_shape[a] for a in axes)
    out_st = strides(out_shape)
    terms = []
    for d, (size, axis) in enumerate(zip(out_shape, axes, strict=True)):
        if size == 1:
            continue
        at = f"(l / {out_st[d]})" if out_st[d] > 1 else "l"
        coord = at if d == 0 else f"({at} % {size})"
        terms.append(coord if in_st[axis] == 1 else f"{coord} * {in_st[axis]}")
    return f"fn a_index(l: i32) -> i32 {{\n    return ({' + '.join(terms) or '0'}) / 4;\n}}"


def a_load_for(node: Node, spec: Specialization) -> ALoad:
    """How a matmul recomputes ``node`` (an elementwise op of one input, or a transpose keeping its
    last axis) from its input as it loads A (:class:`~asg.gpu.kernels.linalg.ALoad`)."""
    if node.op == "transpose":
        return ALoad(index=transpose_index(spec.shapes[node.inputs[0].id], spec.attrs[node.id]["axes"]))
    expr = emit(node.op, spec.attrs[node.id], ["float32"], "float32", [("x", "f32")])
    return ALoad(prologue=f"fn prologue(x: f32) -> f32 {{\n    return {expr};\n}}")


def matmul_operands(
    schedule: Schedule, root: Mapping[int, int], elementwise: bool = True
) -> dict[int, tuple[int, ALoad]]:
    """Values that the matmuls reading them recompute as they load A, so no buffer ever holds them.

    A float32 elementwise op of one input (``gelu(h)`` in an MLP), or a transpose keeping its last
    axis (a multiple of 4; attention's output back to (B, T, heads, hs)), qualifies when every step
    reading it, or a reshape of it, is a matmul taking it as A (``gelu(h) @ W``; k and n multiples
    of 4, B 2-D or A unbatched) or a 2-D transpose read only by such a matmul, whose operands suit
    a transposed A (the weight gradient ``gelu(h)^T @ dY``). Returns value id -> (id of its input,
    :func:`a_load_for`). Recomputing costs the op (or the index arithmetic) once per vec4 of A per
    column tile of the product; storing the value would keep it alive from the forward to the
    backward pass. ``elementwise=False`` takes transposes only.
    """
    shapes, attrs = schedule.spec.shapes, schedule.spec.attrs
    readers: dict[int, list[Step]] = {}
    for step in schedule.steps:
        for i in set(step.inputs):
            readers.setdefault(root.get(i, i), []).append(step)
    kept = {root.get(n.id, n.id) for n in schedule.outputs} | {
        root.get(v.id, v.id) for _, v in schedule.updates
    }

    def reads_as_a(step: Step, value: int) -> bool:
        node = step.node
        if node.op != "matmul" or node.dtype != "float32":
            return False
        a, b = step.inputs
        return (
            root.get(a, a) == value
            and root.get(b, b) != value
            and int(shapes[a][-1]) % 4 == 0
            and int(shapes[a][-1]) > 0
            and int(shapes[b][-1]) % 4 == 0
            and (len(shapes[a]) == 2 or len(shapes[b]) == 2)
        )

    def recomputable(node: Node) -> bool:
        if node.op == "transpose":
            axes = tuple(attrs[node.id]["axes"])
            return len(axes) > 1 and axes[-1] == len(axes) - 1 and int(shapes[node.id][-1]) % 4 == 0
        return elementwise and node.op in TABLE and tuple(shapes[node.inputs[0].id]) == tuple(shapes[node.id])

    found: dict[int, tuple[int, ALoad]] = {}
    for step in schedule.steps:
        node = step.node
        if (
            len(node.inputs) != 1
            or node.dtype != "float32"
            or node.inputs[0].dtype != "float32"
            or node.id in kept
            or not readers.get(node.id)
            or not recomputable(node)
        ):
            continue
        ok = True
        for r in readers[node.id]:
            if root.get(r.output, r.output) != r.output:
                continue  # a reshape: its readers are among the value's
            if r.node.op == "transpose" and tuple(attrs[r.output].get("axes", ())) == (1, 0):
                users = readers.get(r.output, [])
                ok = (
                    r.output not in kept
                    and len(users) == 1
                    and users[0].inputs[0] == r.output
                    and reads_as_a(users[0], r.output)
                    and transposed_operand_ok(shapes[r.output], shapes[users[0].inputs[1]])
                )
            else:
                ok = reads_as_a(r, node.id)
            if not ok:
                break
        if ok:
            found[node.id] = (node.inputs[0].id, a_load_for(node, schedule.spec))
    return found


REDUCTIONS = frozenset({"sum", "mean", "max", "min", "argmax", "argmin"})


def reduction_prologue_kernel(group: ElementwiseGroup, schedule: Schedule) -> Dispatch:
    """The reduction ``group.nodes[-1]`` reading its input from the elementwise nodes before it.

    Each element the reduction visits is computed on the spot by ``prologue(i)``, which also
    stores the group values needed elsewhere; the reduced input itself is not stored unless read
    outside the group.
    """
    from .kernels.reduction import Prologue, _rows_grid, reduce_wgsl

    spec = schedule.spec
    anchor, nodes = group.nodes[-1], group.nodes[:-1]
    source_value = anchor.inputs[0]
    space = tuple(spec.shapes[source_value.id])
    values: dict[int, tuple[str, str]] = {}
    before, reads, lets, needs_coords = _group_values(group.inputs, nodes, spec, space, values)
    outs = [o for o in group.outputs if o.id != anchor.id]
    after = [(f"pout{j}", o.dtype) for j, o in enumerate(outs)]
    lets += [store(f"pout{j}", o.dtype, "i", values[o.id][0]) for j, o in enumerate(outs)]
    vt = VTYPE[source_value.dtype]
    lets.append(f"return {values[source_value.id][0]};")
    body = "\n    ".join((coords(space) if needs_coords else []) + lets)
    source = f"fn prologue(i: i32) -> {vt} {{\n    {body}\n}}"
    source = functions_for(source) + "\n" + source
    attrs = spec.attrs[anchor.id]
    nd = len(space)
    axes = (attrs["axis"] % nd,) if "axis" in attrs else tuple(sorted(a % nd for a in attrs["axes"]))
    wgsl, rows = reduce_wgsl(
        space,
        source_value.dtype,
        anchor.dtype,
        axes,
        anchor.op,
        Prologue(source, tuple(before), tuple(after)),
    )
    args = [("value", i) for i in reads] + [("value", anchor.id)] + [("value", o.id) for o in outs]
    return Dispatch(wgsl, _rows_grid(rows), tuple(args))


def norm_prologue_kernel(group: ElementwiseGroup, schedule: Schedule) -> Dispatch:
    """layer_norm ``group.nodes[-1]`` reading its input from the elementwise nodes before it
    (typically the residual add): ``layer_norm(x + r)`` in one kernel."""
    from .kernels.normalization import layer_norm_wgsl
    from .kernels.reduction import Prologue, _rows_grid

    spec = schedule.spec
    anchor, nodes = group.nodes[-1], group.nodes[:-1]
    source_value = anchor.inputs[0]
    space = tuple(spec.shapes[source_value.id])
    values: dict[int, tuple[str, str]] = {}
    before, reads, lets, needs_coords = _group_values(_external_inputs(nodes), nodes, spec, space, values)
    outs = [o for o in group.outputs if o.id != anchor.id]
    after = [(f"pout{j}", o.dtype) for j, o in enumerate(outs)]
    stores = [store(f"pout{j}", o.dtype, "i", values[o.id][0]) for j, o in enumerate(outs)]
    result = f"return {values[source_value.id][0]};"
    head = coords(space) if needs_coords else []
    plain = "\n    ".join([*head, *lets, result])
    storing = "\n    ".join([*head, *lets, *stores, result])
    source = f"fn prologue(i: i32) -> f32 {{\n    {plain}\n}}\nfn prologue_store(i: i32) -> f32 {{\n    {storing}\n}}"
    source = functions_for(source) + "\n" + source
    attrs = spec.attrs[anchor.id]
    feat = math.prod(int(d) for d in attrs["normalized_shape"])
    rows = math.prod(space) // max(feat, 1)
    hw, hb = bool(attrs["has_weight"]), bool(attrs["has_bias"])
    wgsl = layer_norm_wgsl(rows, feat, attrs["eps"], hw, hb, Prologue(source, tuple(before), tuple(after)))
    params = [anchor.inputs[k].id for k in range(1, 1 + hw + hb)]
    args = [("value", i) for i in reads + params] + [("value", anchor.id)] + [("value", o.id) for o in outs]
    return Dispatch(wgsl, _rows_grid(rows), tuple(args))


def elementwise_nodes(group: FusionGroup, schedule: Schedule) -> list[Node]:
    """The elementwise members of ``group`` over its iteration space (the anchor left out).

    For an elementwise group that is the whole group; for a matmul epilogue the nodes after the
    matmul (which becomes an input); for a reduction or normalisation prologue the nodes before the
    anchor (their values the anchor reads become outputs).
    """
    shapes = schedule.spec.shapes
    nodes = [n for n in group.nodes if n is not group.anchor and n.op in FUSIBLE]
    space = tuple(shapes[nodes[0].id]) if nodes else ()
    return [n for n in nodes if tuple(shapes[n.id]) == space]


class _Placement:
    """Schedule facts the placement of fused kernels needs, computed once per plan."""

    def __init__(self, schedule: Schedule, root: Mapping[int, int]) -> None:
        self.schedule = schedule
        self.steps = schedule.steps
        self.pos = {s.output: s.index for s in self.steps}
        self.readers: dict[int, list[int]] = {}
        for s in self.steps:
            for i in s.inputs:
                self.readers.setdefault(i, []).append(s.index)
        self.root = root
        self.buffer_of = schedule.memory.buffer_of
        self.last_read: dict[int, int] = {}  # storage owner -> last step reading it or a view of it
        for v, rs in self.readers.items():
            base = root.get(v, v)
            self.last_read[base] = max(self.last_read.get(base, -1), *rs)
        self.kept = {n.id for n in schedule.outputs} | {v.id for _, v in schedule.updates}

    def group(
        self,
        nodes: Sequence[Node],
        source: FusionGroup | None,
        contraction: bool = False,
        wide: bool = False,
    ) -> ElementwiseGroup | None:
        """``nodes`` as one kernel placed at the last one's step, or None when that is unsafe.

        Safe means: every step outside the chunk reading one of its values comes after that step,
        and no step outside the chunk writes the buffer of one of its inputs after the input's last
        read (the planner may have reused it). Outputs written over an input's buffer by the kernel
        itself are fine: each invocation loads everything before it stores.
        """
        members = {n.id for n in nodes}
        last = max(self.pos[n.id] for n in nodes)
        outputs = []
        for n in nodes:
            outside = [r for r in self.readers.get(n.id, ()) if self.steps[r].output not in members]
            if any(r <= last for r in outside):
                return None
            if outside or n.id in self.kept:
                outputs.append(n)
        inputs = _external_inputs(nodes)
        for e in inputs:
            base = self.root.get(e.id, e.id)
            b = self.buffer_of.get(base)
            if b is None:
                continue
            for s in range(self.last_read.get(base, last) + 1, last + 1):
                if self.steps[s].buffer == b and self.steps[s].output not in members:
                    return None
        if contraction:  # a matmul reads A and B widely: no value may be stored over them
            operands = {self.buffer_of.get(self.root.get(i.id, i.id)) for i in nodes[0].inputs} - {None}
            if any(self.buffer_of.get(o.id) in operands for o in outputs):
                return None
        if wide:  # a reduction's output may not be stored over any input of the kernel
            operands = {self.buffer_of.get(self.root.get(i.id, i.id)) for i in inputs} - {None}
            if any(self.buffer_of.get(o.id) in operands for o in outputs):
                return None
        if not outputs:
            return None
        return ElementwiseGroup(tuple(nodes), tuple(inputs), tuple(outputs), source)


def plan_groups(
    schedule: Schedule,
    root: Mapping[int, int],
    matmul_epilogues: bool = True,
    reductions: bool = True,
    max_binding: int | None = None,
    recomputed: Mapping[int, tuple[int, ALoad]] | None = None,
) -> tuple[dict[int, Dispatch], set[int], list[ElementwiseGroup]]:
    """Which steps run fused: (step index -> fused dispatch there, step indices skipped, groups fused).

    ``root`` maps each value to the value owning its storage (views to their base). Every kind of
    core's groups contributes its elementwise nodes (:func:`elementwise_nodes`; the matmul,
    reduction or normalisation anchor stays its own kernel), cut in schedule order into the longest
    runs that can be placed safely (a training step's group often spans forward and backward).
    A group with a value past ``max_binding`` bytes is not fused (its elementwise ops run over windows).
    ``recomputed`` (:func:`matmul_operands`): values recomputed by the matmuls reading them, left out
    of every group (a fused matmul reading one as A recomputes it).
    """
    recomputed = recomputed or {}
    place = _Placement(schedule, root)
    at: dict[int, Dispatch] = {}
    skipped: set[int] = set()
    fused: list[ElementwiseGroup] = []

    def emit_chunk(chunk: list[Node], found: ElementwiseGroup | None) -> None:
        if len(chunk) >= 2 and found is not None:
            dispatch, _, _ = elementwise_group_kernel(found, schedule)
            last = max(place.pos[n.id] for n in chunk)
            at[last] = dispatch
            skipped.update(place.pos[n.id] for n in chunk if place.pos[n.id] != last)
            fused.append(found)

    def emit_matmul(chunk: list[Node], found: ElementwiseGroup) -> None:
        last = max(place.pos[n.id] for n in chunk)
        a = chunk[0].inputs[0].id
        at[last] = matmul_epilogue_kernel(found, schedule, recomputed.get(root.get(a, a)))
        skipped.update(place.pos[n.id] for n in chunk if place.pos[n.id] != last)
        fused.append(found)

    limit = max_binding if max_binding is not None else 1 << 62
    shapes = schedule.spec.shapes
    for group in find_fusion_groups(schedule.graph):
        touched = [*group.nodes, *group.inputs]
        if any(math.prod(shapes[n.id]) * ITEMSIZE[n.dtype] > limit for n in touched if n.id in shapes):
            continue  # past the binding limit: node by node, elementwise ops over windows
        nodes = sorted(
            (n for n in elementwise_nodes(group, schedule) if n.id in place.pos and n.id not in recomputed),
            key=lambda n: place.pos[n.id],
        )
        anchor = group.anchor
        if (
            matmul_epilogues
            and group.kind == "matmul_epilogue"
            and anchor is not None
            and anchor.op == "matmul"
            and anchor.dtype == "float32"
            and anchor.id in place.pos
            and nodes
            and tuple(schedule.spec.shapes[nodes[0].id]) == tuple(schedule.spec.shapes[anchor.id])
            and math.prod(schedule.spec.shapes[anchor.id])
        ):
            # the matmul and the epilogue nodes right after it, as long as that stays safe
            chunk, found = [anchor], None
            for n in nodes:
                trial = place.group([*chunk, n], group, contraction=True)
                if trial is None:
                    break
                chunk, found = [*chunk, n], trial
            if found is not None:
                emit_matmul(chunk, found)
                nodes = nodes[len(chunk) - 1 :]
        prologue = None
        if reductions and anchor is not None and anchor.id in place.pos:
            if group.kind == "residual_norm" and anchor.op == "layer_norm" and anchor.dtype == "float32":
                prologue = norm_prologue_kernel
            elif group.kind == "reduction_prologue" and anchor.op in REDUCTIONS:
                prologue = reduction_prologue_kernel
        if (
            prologue is not None
            and anchor.inputs[0].id in {n.id for n in nodes}
            and math.prod(schedule.spec.shapes[anchor.inputs[0].id])
            and math.prod(schedule.spec.shapes[anchor.id])
        ):
            # the longest run of prologue nodes ending at the anchor's input that can run inside it
            for start in range(len(nodes)):
                if anchor.inputs[0].id not in {n.id for n in nodes[start:]}:
                    break
                found = place.group([*nodes[start:], anchor], group, wide=True)
                if found is not None:
                    at[place.pos[anchor.id]] = prologue(found, schedule)
                    skipped.update(place.pos[n.id] for n in nodes[start:])
                    fused.append(found)
                    nodes = nodes[:start]
                    break
        if len(nodes) < 2 or math.prod(schedule.spec.shapes[nodes[0].id]) == 0:
            continue
        chunk: list[Node] = []
        found: ElementwiseGroup | None = None
        for n in nodes:
            trial = place.group([*chunk, n], group)
            if trial is not None or not chunk:
                chunk, found = [*chunk, n], trial
                continue
            emit_chunk(chunk, found)
            chunk, found = [n], place.group([n], group)
        emit_chunk(chunk, found)
    if matmul_epilogues:
        _absorb_into_epilogues(place, at, skipped, fused, recomputed)
    return at, skipped, fused


def _absorb_into_epilogues(
    place: _Placement,
    at: dict[int, Dispatch],
    skipped: set[int],
    fused: list[ElementwiseGroup],
    recomputed: Mapping[int, tuple[int, ALoad]],
) -> None:
    """A fused elementwise kernel whose one value is read only by a fused matmul's epilogue runs
    inside that epilogue instead (GELU's derivative of the pre-activation, times ``dY @ W``): its
    value is neither stored nor read back, and its kernel is gone. In place in ``at``,
    ``skipped`` and ``fused``."""
    schedule = place.schedule
    shapes = schedule.spec.shapes
    by_output = {g.outputs[0].id: g for g in fused if len(g.outputs) == 1 and g.nodes[0].op != "matmul"}
    for m in list(fused):
        anchor = m.nodes[0]
        if anchor.op != "matmul" or m not in fused:
            continue
        space = tuple(shapes[anchor.id])
        members = {n.id for n in m.nodes}
        for e in m.inputs:
            g = by_output.get(e.id)
            if (
                g is None
                or g not in fused
                or e.id in {i.id for i in anchor.inputs}  # the product's own operand: loaded as a tile
                or e.id in place.kept
                or any(tuple(shapes[n.id]) != space for n in g.nodes)
                or any(schedule.steps[r].output not in members for r in place.readers.get(e.id, ()))
            ):
                continue
            trial = place.group([anchor, *g.nodes, *m.nodes[1:]], m.source, contraction=True)
            if trial is None or {o.id for o in trial.outputs} != {o.id for o in m.outputs}:
                continue
            gone = [place.pos[n.id] for n in g.nodes]
            at.pop(max(gone), None)
            skipped.update(gone)
            a = anchor.inputs[0].id
            at[max(place.pos[n.id] for n in m.nodes)] = matmul_epilogue_kernel(
                trial, schedule, recomputed.get(place.root.get(a, a))
            )
            fused[fused.index(m)] = trial
            fused.remove(g)
            m = trial
            members = {n.id for n in m.nodes}
