"""Reductions (sum, mean, max, min, argmax, argmin, sum_to, count), softmax/log_softmax and cumsum.

A reduction runs one workgroup per output element: its invocations stride over the reduced
elements, then combine their partial results in workgroup memory (a tree). A sum over leading
axes (``sum_to`` a bias's shape) is a column sum instead (:func:`column_sum`). The reduced axes may be
any subset; input offsets come from the output's coordinates plus the reduced coordinates, both
computed with the strides baked in. Softmax is the same shape of kernel with three passes over a
row (max, sum of exponentials, write).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from asg.core.lowering import LoweringContext

from ..codegen import (
    HELPERS,
    MAX_GROUPS,
    VTYPE,
    Dispatch,
    Program,
    declare,
    elementwise_kernel,
    grid,
    literal,
    load,
    per_element,
    store,
    strides,
)
from ._base import gpu_lowering


def _shape(t: object) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)  # type: ignore[attr-defined]


def _wg(n: int) -> int:
    """Invocations per workgroup for ``n`` reduced elements (a power of two, 32 to 256)."""
    return max(32, min(256, 1 << max(0, (n - 1).bit_length())))


def split_offsets(shape: Sequence[int], axes: Sequence[int]) -> tuple[list[str], list[str], int, int]:
    """Statements giving ``base`` (from row ``o``) and a function of ``r`` for the reduced offset.

    Returns (row statements, element statements, rows, reduced count); the element statements
    define ``off`` for reduced index ``r`` given ``base``.
    """
    st = strides(shape)
    kept = [d for d in range(len(shape)) if d not in axes]
    red = [d for d in range(len(shape)) if d in axes]
    rows = math.prod(shape[d] for d in kept)
    count = math.prod(shape[d] for d in red)

    def offset_of(index: str, dims: list[int]) -> str:  # index over ``dims`` -> offset in ``shape``
        sub = strides([shape[d] for d in dims])
        terms = [f"(({index} / {sub[j]}) % {shape[d]}) * {st[d]}" for j, d in enumerate(dims) if shape[d] > 1]
        return " + ".join(terms) or "0"

    return [f"let base = {offset_of('o', kept)};"], [f"let off = base + {offset_of('r', red)};"], rows, count


def _kernel(
    bindings: Sequence[tuple[str, str]],
    wg: int,
    shared: Sequence[str],
    body: Sequence[str],
    rows: int,
    extra: str = "",
) -> str:
    inner = "\n    ".join(body)
    decl = "\n".join(f"var<workgroup> {s};" for s in shared)
    return f"""{declare(bindings)}
{HELPERS}
{extra}
{decl}
@compute @workgroup_size({wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {{
    let o = i32(wid.x + wid.y * nwg.x);
    let lid = i32(lid3.x);
    let live = o < {rows};
    {inner}
}}
"""


def _rows_grid(rows: int) -> tuple[int, int, int]:
    rows = max(rows, 1)
    return (rows, 1, 1) if rows <= MAX_GROUPS else (MAX_GROUPS, -(-rows // MAX_GROUPS), 1)


def tree(var: str, wg: int, combine: str) -> list[str]:
    """Statements combining ``{var}[0..wg)`` in workgroup memory into ``{var}[0]``.

    ``combine`` uses ``a`` (index ``lid``) and ``b`` (index ``lid + s``) and assigns to ``{var}[lid]``.
    Every invocation reaches every barrier (uniform control flow).
    """
    return [
        "workgroupBarrier();",
        f"for (var s = {wg // 2}; s > 0; s = s >> 1u) {{",
        f"    if (lid < s) {{ {combine} }}",
        "    workgroupBarrier();",
        "}",
    ]


@dataclass(frozen=True)
class Prologue:
    """Elementwise work fused in front of a reduction (:mod:`asg.gpu.fusion` builds it).

    ``source`` defines ``fn prologue(i: i32) -> T``: the reduced input's element at linear index
    ``i`` (computed, not loaded; it also stores the group values needed elsewhere). ``before`` and
    ``after`` are the buffers it uses, declared before and after the reduction's ``out``.
    """

    source: str
    before: tuple[tuple[str, str], ...]
    after: tuple[tuple[str, str], ...]


def reduce_program(
    ctx: LoweringContext, axes: Sequence[int], kind: str, name: str = "", out_dtype: str | None = None
) -> Program:
    """One workgroup per output element reducing input 0 over ``axes``: sum, mean, max, min, argmax, argmin."""
    shape = _shape(ctx.in_types[0])
    wgsl, rows = reduce_wgsl(shape, ctx.in_types[0].dtype, out_dtype or ctx.out_type.dtype, axes, kind)
    if rows == 0:
        return Program([], name=name or ctx.name)
    return Program([Dispatch(wgsl, _rows_grid(rows), (("in", 0), ("out", 0)))], name=name or ctx.name)


def reduce_wgsl(
    shape: Sequence[int],
    in_dtype: str,
    out_dtype: str,
    axes: Sequence[int],
    kind: str,
    prologue: Prologue | None = None,
) -> tuple[str, int]:
    """(WGSL, rows) of the reduction of a ``shape`` input (buffer ``in0``, or ``prologue``) to ``out``."""
    row, elem, rows, count = split_offsets(shape, axes)
    wg = _wg(count)
    vt = VTYPE[in_dtype]
    if kind in ("sum", "mean"):
        at = "f32" if vt == "f32" else "i32"
        x = "prologue(off)" if prologue else load("in0", in_dtype, "off")
        x = f"select(0, 1, {x})" if vt == "bool" else x
        shared = [f"part: array<{at}, {wg}>"]
        body = [
            *row,
            f"var acc = {literal(0, at)};",
            f"for (var r = lid; live && r < {count}; r += {wg}) {{ {elem[0]} acc = acc + {x}; }}",
            "part[lid] = acc;",
            *tree("part", wg, "part[lid] = part[lid] + part[lid + s];"),
        ]
        result = "part[0]"
        if kind == "mean":
            result = f"part[0] / {literal(count, 'f32')}"
        elif VTYPE[out_dtype] != at:
            result = f"{VTYPE[out_dtype]}(part[0])"
        body.append(f"if (lid == 0 && live) {{ {store('out', out_dtype, 'o', result)} }}")
    elif kind in ("max", "min"):
        pick = ">" if kind == "max" else "<"
        x = "prologue(off)" if prologue else load("in0", in_dtype, "off")
        if vt == "f32":
            init = literal(float("-inf") if kind == "max" else float("inf"), "f32")
            better = f"(is_nan(v) && !is_nan(acc)) || v {pick} acc"
        else:
            init = literal(-(2**31) if kind == "max" else 2**31 - 1, "i32")
            better = f"v {pick} acc"
        comb = "let a = part[lid]; let b = part[lid + s]; " + (
            f"if ((is_nan(b) && !is_nan(a)) || b {pick} a) {{ part[lid] = b; }}"
            if vt == "f32"
            else f"if (b {pick} a) {{ part[lid] = b; }}"
        )
        shared = [f"part: array<{vt}, {wg}>"]
        body = [
            *row,
            f"var acc = {init};",
            f"for (var r = lid; live && r < {count}; r += {wg}) {{ {elem[0]} let v = {x}; if ({better}) {{ acc = v; }} }}",
            "part[lid] = acc;",
            *tree("part", wg, comb),
            f"if (lid == 0 && live) {{ {store('out', out_dtype, 'o', 'part[0]')} }}",
        ]
    else:  # argmax / argmin: the first index of the extreme (a NaN counts as the extreme, as numpy's)
        pick = ">" if kind == "argmax" else "<"
        x = "prologue(off)" if prologue else load("in0", in_dtype, "off")
        fl = vt == "f32"
        nan_a = "is_nan(a)" if fl else "false"
        nan_b = "is_nan(b)" if fl else "false"
        # b beats a: b is NaN and a is not; or neither is NaN and b is strictly better; or equal (or
        # both NaN) and b comes first.
        wins = f"(({nan_b}) && !({nan_a})) || (!({nan_a}) && !({nan_b}) && b {pick} a) || ((a == b || (({nan_a}) && ({nan_b}))) && ib < ia)"
        comb = (
            "let a = part[lid]; let b = part[lid + s]; let ia = where_[lid]; let ib = where_[lid + s]; "
            f"if (ib >= 0 && (ia < 0 || {wins})) {{ part[lid] = b; where_[lid] = ib; }}"
        )
        shared = [f"part: array<{vt}, {wg}>", f"where_: array<i32, {wg}>"]
        body = [
            *row,
            f"var acc = {literal(0, vt)};",
            "var at = -1;",
            f"for (var r = lid; live && r < {count}; r += {wg}) {{",
            f"    {elem[0]} let b = {x}; let a = acc; let ib = r; let ia = at;",
            f"    if (ia < 0 || {wins}) {{ acc = b; at = r; }}",
            "}",
            "part[lid] = acc;",
            "where_[lid] = at;",
            *tree("part", wg, comb),
            f"if (lid == 0 && live) {{ {store('out', out_dtype, 'o', 'where_[0]')} }}",
        ]
    if prologue is None:
        return _kernel([("in0", in_dtype), ("out", out_dtype)], wg, shared, body, rows), rows
    bindings = [*prologue.before, ("out", out_dtype), *prologue.after]
    return _kernel(bindings, wg, shared, body, rows, prologue.source), rows


def _axes(ctx: LoweringContext) -> tuple[int, ...]:
    nd = len(ctx.in_types[0].shape)
    if "axis" in ctx.attrs:  # argmax, argmin
        return (ctx.attrs["axis"] % nd,)
    return tuple(sorted(a % nd for a in ctx.attrs["axes"]))


@gpu_lowering("sum", "mean", "max", "min", "argmax", "argmin", f16=True)
def _reduce(ctx: LoweringContext) -> Program:
    return reduce_program(ctx, _axes(ctx), ctx.op_name)


COLS = 64  # columns per workgroup of a column sum (x of its 64 x 4 invocations)
LANES = 4  # rows each column's workgroup visits at once (y)


def column_sum(
    rows: int, cols: int, terms: Sequence[str], bindings: Sequence[tuple[str, str]], out_dtype: str
) -> tuple[tuple[str, str], int]:
    """(WGSL of two passes, chunks) summing each of ``terms`` over the rows of a (rows, cols) space,
    per column.

    A term is an f32 expression of ``off`` (the element ``r * cols + c``) and ``r`` over the
    buffers ``bindings``. Pass 1 (grids: :func:`column_sum_grids`) has each workgroup sum a chunk of
    rows for 64 consecutive columns, neighbouring invocations reading neighbouring columns
    (coalesced), into ``part``; pass 2 adds each column's chunks in order into ``out`` (one term)
    or ``out0``, ``out1``... A bias gradient (rows = batch x tokens, a few hundred columns) so reads
    at the memory's speed, where one workgroup per column strode across the rows.
    """
    tiles = -(-cols // COLS)
    chunks = max(1, min(-(-rows // (4 * LANES)), -(-1024 // tiles)))
    per = -(-rows // chunks)
    chunks = -(-rows // per)
    n = len(terms)
    adds = " ".join(f"acc{t} = acc{t} + {term};" for t, term in enumerate(terms))
    keep = "\n    ".join(f"acc_[{t * COLS * LANES}u + lid.y * {COLS}u + lid.x] = acc{t};" for t in range(n))
    first = f"""{declare([*bindings, ("part", "float32")])}
var<workgroup> acc_: array<f32, {n * COLS * LANES}>;
@compute @workgroup_size({COLS}, {LANES})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let c = i32(wid.x) * {COLS} + i32(lid.x);
    let start = i32(wid.y) * {per};
    let stop = min(start + {per}, {rows});
    {" ".join(f"var acc{t} = 0.0;" for t in range(n))}
    if (c < {cols}) {{
        for (var r = start + i32(lid.y); r < stop; r += {LANES}) {{ let off = r * {cols} + c; {adds} }}
    }}
    {keep}
    workgroupBarrier();
    if (lid.y == 0u && c < {cols}) {{
        for (var t = 0u; t < {n}u; t++) {{
            var total = acc_[t * {COLS * LANES}u + lid.x];
            for (var k = 1u; k < {LANES}u; k++) {{ total = total + acc_[t * {COLS * LANES}u + k * {COLS}u + lid.x]; }}
            part[(i32(t) * {chunks} + i32(wid.y)) * {cols} + c] = total;
        }}
    }}
}}
"""
    outs = ["out"] if n == 1 else [f"out{t}" for t in range(n)]
    second = []
    for t, name in enumerate(outs):
        total = f"total{t}" if VTYPE[out_dtype] == "f32" else f"{VTYPE[out_dtype]}(total{t})"
        second += [
            f"var total{t} = 0.0;",
            f"for (var k = 0; k < {chunks}; k++) {{ total{t} = total{t} + part[({t * chunks} + k) * {cols} + i]; }}",
            store(name, out_dtype, "i", total),
        ]
    bindings2 = [("part", "float32"), *((name, out_dtype) for name in outs)]
    return (first, elementwise_kernel(bindings2, cols, second)), chunks


def column_sum_grids(cols: int, chunks: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The grids of :func:`column_sum`'s two passes."""
    return (-(-cols // COLS), chunks, 1), grid(cols)


@gpu_lowering("sum_to", f16=True)
def _sum_to(ctx: LoweringContext) -> Program:
    shape = _shape(ctx.in_types[0])
    target = _shape(ctx.out_type)
    if shape == target:
        return Program(view=True)
    lead = len(shape) - len(target)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(target) if d == 1 and shape[lead + i] != 1
    )
    rows, cols = math.prod(shape[: len(axes)]), math.prod(shape[len(axes) :])
    dtype = ctx.in_types[0].dtype
    if axes == tuple(range(len(axes))) and VTYPE[dtype] == "f32" and COLS // 2 <= cols <= MAX_GROUPS * COLS:
        # a leading block of axes (a bias gradient): columns in parallel, rows in chunks
        (first, second), chunks = column_sum(
            rows, cols, [load("in0", dtype, "off")], [("in0", dtype)], ctx.out_type.dtype
        )
        g1, g2 = column_sum_grids(cols, chunks)
        return Program(
            [Dispatch(first, g1, (("in", 0), ("tmp", 0))), Dispatch(second, g2, (("tmp", 0), ("out", 0)))],
            temps=[4 * chunks * cols],
            name=ctx.name,
        )
    return reduce_program(ctx, axes, "sum")


@gpu_lowering("count", f16=True)
def _count(ctx: LoweringContext) -> Program:
    shape = _shape(ctx.in_types[0])
    n = math.prod(shape[a % len(shape)] for a in ctx.attrs["axes"])
    dtype = ctx.out_type.dtype
    return per_element(ctx.name, [], dtype, 1, [store("out", dtype, "i", literal(n, VTYPE[dtype]))])


def _softmax(ctx: LoweringContext, log: bool) -> Program:
    shape = _shape(ctx.in_types[0])
    axis = ctx.attrs["axis"] % len(shape)
    row, elem, rows, count = split_offsets(shape, (axis,))
    wg = _wg(count)
    x = load("in0", "float32", "off")
    neg_inf = literal(float("-inf"), "f32")
    final = "(v - m) - log(total)" if log else "exp(v - m) / total"
    body = [
        *row,
        f"var acc = {neg_inf};",
        f"for (var r = lid; live && r < {count}; r += {wg}) {{ {elem[0]} let v = {x}; if (is_nan(v) || v > acc) {{ acc = select(v, acc, is_nan(acc)); }} }}",
        "part[lid] = acc;",
        *tree(
            "part",
            wg,
            "let a = part[lid]; let b = part[lid + s]; if (is_nan(b) || b > a) { part[lid] = select(b, a, is_nan(a)); }",
        ),
        "let m = part[0];",
        "workgroupBarrier();",
        "var sum = 0.0;",
        f"for (var r = lid; live && r < {count}; r += {wg}) {{ {elem[0]} sum = sum + exp({x} - m); }}",
        "part[lid] = sum;",
        *tree("part", wg, "part[lid] = part[lid] + part[lid + s];"),
        "let total = part[0];",
        f"for (var r = lid; live && r < {count}; r += {wg}) {{ {elem[0]} let v = {x}; {store('out', 'float32', 'off', final)} }}",
    ]
    wgsl = _kernel([("in0", "float32"), ("out", "float32")], wg, [f"part: array<f32, {wg}>"], body, rows)
    if rows == 0:
        return Program([], name=ctx.name)
    return Program([Dispatch(wgsl, _rows_grid(rows), (("in", 0), ("out", 0)))], name=ctx.name)


@gpu_lowering("softmax")
def _softmax_rule(ctx: LoweringContext) -> Program:
    return _softmax(ctx, log=False)


@gpu_lowering("log_softmax")
def _log_softmax_rule(ctx: LoweringContext) -> Program:
    return _softmax(ctx, log=True)


@gpu_lowering("cumsum", f16=True)
def _cumsum(ctx: LoweringContext) -> Program:
    shape = _shape(ctx.in_types[0])
    axis = ctx.attrs["axis"] % len(shape)
    st = strides(shape)
    n = shape[axis]
    in_dtype, dtype = ctx.in_types[0].dtype, ctx.out_type.dtype
    t = VTYPE[dtype]
    at = "f32" if t == "f32" else "i32"
    from ..codegen import convert, coords

    x = convert(load("in0", in_dtype, f"i + (j - c{axis}) * {st[axis]}"), VTYPE[in_dtype], at)
    lo, hi = (f"c{axis}", str(n)) if ctx.attrs.get("reverse") else ("0", f"c{axis} + 1")
    body = [
        *coords(shape),
        f"var acc = {literal(0, at)};",
        f"for (var j = {lo}; j < {hi}; j++) {{ acc = acc + {x}; }}",
        store("out", dtype, "i", convert("acc", at, t)),
    ]
    return per_element(ctx.name, [in_dtype], dtype, math.prod(shape), body)
