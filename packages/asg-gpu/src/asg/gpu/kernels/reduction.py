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
    """(WGSL, workgroups) of the reduction of a ``shape`` input (buffer ``in0``, or ``prologue``) to
    ``out``; ``_rows_grid(workgroups)`` is its grid.

    A row of up to :data:`SHORT` elements is reduced by a few invocations of a workgroup holding
    several rows (:func:`_short_rows`); a longer row has a workgroup of its own.
    """
    row, elem, rows, count = split_offsets(shape, axes)
    if 0 < count <= SHORT:
        return _short_rows(shape, in_dtype, out_dtype, axes, kind, prologue)
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


SHORT = 128  # a row of at most this many reduced elements shares its workgroup with other rows
SHORT_WG = 256  # invocations of such a workgroup
BATCH = 8  # elements an invocation loads before combining them (loads in flight at once)


def _contiguous(shape: Sequence[int], axes: Sequence[int]) -> bool:
    """Whether the reduced elements of a row are consecutive in memory (``off = base + r``)."""
    st = strides(shape)
    red = [d for d in range(len(shape)) if d in axes and shape[d] > 1]
    sub = strides([shape[d] for d in red])
    return all(st[d] == sub[j] for j, d in enumerate(red))


def short_layout(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, int]:
    """(invocations per row, rows per workgroup) of :func:`_short_rows`.

    A contiguous row gets a power of two of neighbouring invocations, about 4 elements each (at
    least 8 to a row of 32 or more: each load instruction then reads whole 32-byte sectors), at
    most 32; a strided row gets one invocation, so neighbouring invocations read neighbouring rows.
    """
    count = math.prod(shape[d] for d in axes)
    lanes = 1
    if _contiguous(shape, axes):
        lanes = min(32, 1 << max(0, (-(-count // 4) - 1).bit_length()))
    return lanes, SHORT_WG // lanes


def _short_rows(
    shape: Sequence[int],
    in_dtype: str,
    out_dtype: str,
    axes: Sequence[int],
    kind: str,
    prologue: Prologue | None,
) -> tuple[str, int]:
    """(WGSL, workgroups) of a reduction of short rows, :data:`SHORT_WG` invocations a workgroup.

    ``lanes`` invocations (:func:`short_layout`) reduce a row: lane ``l`` combines elements
    ``l, l + lanes, ...``, its loads issued in batches of :data:`BATCH` before they are combined (no
    dependent load waits for the previous one), then a tree over the lanes in workgroup memory
    (``log2(lanes)`` barriers; none for one lane). Row ``o`` is the workgroup's index times its rows
    plus ``lid / lanes``; ``base`` and ``off`` are computed as in the one-row kernel, so a prologue
    sees the same indices. A lane's max, min, argmax or argmin goes in element order; its sum is a
    tree (:func:`_tree_schedule`): with the tree over the lanes, the one-row kernel's order of
    additions, so the same bits. (A running sum, which a strided row of one lane was at first, had
    2 to 4 times the tree's error on rows of 32 to 128 elements, and moved a ResNet's batch-norm
    gradients out of the numpy backend's tolerance.)
    """
    row, elem, rows, count = split_offsets(shape, axes)
    lanes, per_wg = short_layout(shape, axes)
    groups = -(-rows // per_wg)
    vt = VTYPE[in_dtype]
    x = "prologue(off_)" if prologue else load("in0", in_dtype, "off_")
    fl = vt == "f32"
    arg = kind in ("argmax", "argmin")
    if kind in ("sum", "mean"):
        at = "f32" if vt == "f32" else "i32"
        x = f"select(0, 1, {x})" if vt == "bool" else x
        init = literal(0, at)
        comb = ""  # a tree instead (_tree_schedule)
        tree_comb = "part[lid] = part[lid] + part[lid + s];"
    elif kind in ("max", "min"):
        at = vt
        pick = ">" if kind == "max" else "<"
        if fl:
            init = literal(float("-inf") if kind == "max" else float("inf"), "f32")
            comb = f"acc = select(acc, {{v}}, (is_nan({{v}}) && !is_nan(acc)) || {{v}} {pick} acc);"
            tree_comb = (
                "let a = part[lid]; let b = part[lid + s]; "
                f"if ((is_nan(b) && !is_nan(a)) || b {pick} a) {{ part[lid] = b; }}"
            )
        else:
            init = literal(-(2**31) if kind == "max" else 2**31 - 1, "i32")
            comb = f"acc = select(acc, {{v}}, {{v}} {pick} acc);"
            tree_comb = f"let a = part[lid]; let b = part[lid + s]; if (b {pick} a) {{ part[lid] = b; }}"
    else:  # argmax / argmin: the first index of the extreme (a NaN counts as the extreme, as numpy's)
        at = vt
        pick = ">" if kind == "argmax" else "<"
        nan_a = "is_nan(a)" if fl else "false"
        nan_b = "is_nan(b)" if fl else "false"
        wins = f"(({nan_b}) && !({nan_a})) || (!({nan_a}) && !({nan_b}) && b {pick} a) || ((a == b || (({nan_a}) && ({nan_b}))) && ib < ia)"
        init = literal(0, vt)
        comb = (
            "{{ let a = acc; let b = {v}; let ia = at; let ib = {r}; "
            f"let w = {{valid}}(ia < 0 || {wins}); acc = select(a, b, w); at = select(ia, ib, w); }}}}"
        )
        tree_comb = (
            "let a = part[lid]; let b = part[lid + s]; let ia = where_[lid]; let ib = where_[lid + s]; "
            f"if (ib >= 0 && (ia < 0 || {wins})) {{ part[lid] = b; where_[lid] = ib; }}"
        )
    # the elements of this lane, in batches: loads first, then the combines
    per = -(-count // lanes)
    lines: list[str] = []

    def load_element(j: int) -> list[str]:
        r = f"lane + {lanes * j}" if lanes > 1 else str(j)
        value = f"{{ let off_ = red_off(base, r{j}); v{j} = {x}; }}"
        if lanes * j + lanes > count:  # some lanes have no element j: it holds the identity (init)
            return [f"let r{j} = {r};", f"var v{j} = {init}; if (r{j} < {count}) {value}"]
        return [f"let r{j} = {r};", f"var v{j} = {init}; {value}"]

    if kind in ("sum", "mean"):
        # a tree, not a running sum (whose error grows with the count): the one-row kernel's
        # order exactly, so the same bits (see _tree_schedule)
        for batch, adds in _tree_schedule(per):
            lines += [line for j in batch for line in load_element(j)] + adds
    else:  # max, min, argmax, argmin: exact, in element order (the first index wins a tie)
        for start in range(0, per, BATCH):
            js = range(start, min(per, start + BATCH))
            lines += [line for j in js for line in load_element(j)]
            for j in js:
                valid = f"r{j} < {count} && " if lanes * j + lanes > count else ""
                lines.append(comb.format(v=f"v{j}", r=f"r{j}", valid=valid))
    elems = "\n        ".join(lines)
    body = [
        *row,
        f"var acc = {init};",
        *(["var at = -1;"] if arg else []),
        f"if (live) {{\n        {elems}\n    }}",
    ]
    shared: list[str] = []
    res, where = "acc", "at"
    if lanes > 1:
        shared = [f"part: array<{at}, {SHORT_WG}>"] + ([f"where_: array<i32, {SHORT_WG}>"] if arg else [])
        body += [
            "part[lid] = acc;",
            *(["where_[lid] = at;"] if arg else []),
            "workgroupBarrier();",
            f"for (var s = {lanes // 2}; s > 0; s = s >> 1u) {{",
            f"    if (lane < s) {{ {tree_comb} }}",
            "    workgroupBarrier();",
            "}",
        ]
        res, where = "part[lid]", "where_[lid]"
    if kind == "mean":
        result = f"{res} / {literal(count, 'f32')}"
    elif arg:
        result = where
    elif kind == "sum" and VTYPE[out_dtype] != at:
        result = f"{VTYPE[out_dtype]}({res})"
    else:
        result = res
    body.append(f"if (lane == 0 && live) {{ {store('out', out_dtype, 'o', result)} }}")
    off = "let off = base + r;" if _contiguous(shape, axes) else elem[0]
    off_fn = f"fn red_off(base: i32, r: i32) -> i32 {{ {off} return off; }}"
    if prologue is None:
        bindings = [("in0", in_dtype), ("out", out_dtype)]
        extra = off_fn
    else:
        bindings = [*prologue.before, ("out", out_dtype), *prologue.after]
        extra = prologue.source + "\n" + off_fn
    decl = "\n".join(f"var<workgroup> {s};" for s in shared)
    inner = "\n    ".join(body)
    wgsl = f"""{declare(bindings)}
{HELPERS}
{extra}
{decl}
@compute @workgroup_size({SHORT_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {{
    let lid = i32(lid3.x);
    let lane = lid % {lanes};
    let o = i32(wid.x + wid.y * nwg.x) * {per_wg} + lid / {lanes};
    let live = o < {rows};
    {inner}
}}
"""
    return wgsl, groups


def _tree_schedule(per: int) -> list[tuple[list[int], list[str]]]:
    """A lane's ``per`` values ``v0 .. v{per-1}`` added in a tree into ``acc``: (elements to load,
    statements then) a batch of :data:`BATCH` loads at a time.

    The tree is the one-row kernel's (:func:`tree` over a power of two ``P >= per`` of slots, slot
    ``j`` added to slot ``j + P/2``, then ``j + P/4`` ...; empty slots hold zeros), so that a short
    row's sum is the same bits as it was with a workgroup of its own, and its error grows with
    ``log2(count)``, not ``count``. Visiting the slots in bit-reversed order makes that tree a
    contiguous pairwise one, computed as the loads arrive with a stack of ``log2(P)`` partial sums
    (a binary counter), so a lane keeps about ``BATCH + log2(P)`` values live, not ``per``.
    (Where a fused prologue ends in a product, the driver may fuse it into the first addition, an
    FMA, which the one-row kernel's trip through workgroup memory prevented: other bits, one
    rounding fewer.)
    """
    bits = max(0, (per - 1).bit_length())
    stack: list[tuple[int, str | None]] = []  # (level, the partial sum's name; None: empty slots)
    schedule: list[tuple[list[int], list[str]]] = []
    batch: list[int] = []
    adds: list[str] = []
    names = 0
    for m in range(1 << bits):
        j = int(format(m, f"0{bits}b")[::-1], 2) if bits else 0
        if j < per:
            batch.append(j)
        stack.append((0, f"v{j}" if j < per else None))
        while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
            (level, b), (_, a) = stack.pop(), stack.pop()
            if a is not None and b is not None:
                adds.append(f"let s{names} = {a} + {b};")
                a, names = f"s{names}", names + 1
            stack.append((level + 1, a if a is not None else b))
        if len(batch) == BATCH:
            schedule.append((batch, adds))
            batch, adds = [], []
    ((_, total),) = stack
    schedule.append((batch, [*adds, f"acc = {total};"]))
    return schedule


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
UNROLL = 4  # rows a lane of column_sum's first pass loads before adding them


def column_sum(
    rows: int, cols: int, terms: Sequence[str], bindings: Sequence[tuple[str, str]], out_dtype: str
) -> tuple[tuple[str, str], int]:
    """(WGSL of two passes, chunks) summing each of ``terms`` over the rows of a (rows, cols) space,
    per column.

    A term is an f32 expression of ``off`` (the element ``r * cols + c``) and ``r`` over the
    buffers ``bindings``. Pass 1 (grids: :func:`column_sum_grids`) has each workgroup sum a chunk of
    rows for 64 consecutive columns, neighbouring invocations reading neighbouring columns
    (coalesced), into ``part``; pass 2 (:func:`_column_totals`) adds each column's chunks, several
    invocations a column and a fixed tree, into ``out`` (one term) or ``out0``, ``out1``... A bias gradient (rows = batch x tokens, a few hundred columns) so reads
    at the memory's speed, where one workgroup per column strode across the rows.
    """
    tiles = -(-cols // COLS)
    chunks = max(1, min(-(-rows // (4 * LANES)), -(-1024 // tiles)))
    per = -(-rows // chunks)
    chunks = -(-rows // per)
    n = len(terms)
    # each term a function of (off, r); a lane loads UNROLL rows before adding them, in row order
    fns = "\n".join(
        f"fn term{t}(off: i32, r: i32) -> f32 {{ return {term}; }}" for t, term in enumerate(terms)
    )
    adds = " ".join(f"acc{t} = acc{t} + term{t}(r * {cols} + c, r);" for t in range(n))
    batch = (
        " ".join(
            f"let v{t}_{u} = term{t}((r + {u * LANES}) * {cols} + c, r + {u * LANES});"
            for u in range(UNROLL)
            for t in range(n)
        )
        + " "
        + " ".join(
            f"acc{t} = acc{t} + " + " + ".join(f"v{t}_{u}" for u in range(UNROLL)) + ";" for t in range(n)
        )
    )
    keep = "\n    ".join(f"acc_[{t * COLS * LANES}u + lid.y * {COLS}u + lid.x] = acc{t};" for t in range(n))
    first = f"""{declare([*bindings, ("part", "float32")])}
{fns}
var<workgroup> acc_: array<f32, {n * COLS * LANES}>;
@compute @workgroup_size({COLS}, {LANES})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let c = i32(wid.x) * {COLS} + i32(lid.x);
    let start = i32(wid.y) * {per};
    let stop = min(start + {per}, {rows});
    {" ".join(f"var acc{t} = 0.0;" for t in range(n))}
    if (c < {cols}) {{
        var r = start + i32(lid.y);
        for (; r + {(UNROLL - 1) * LANES} < stop; r += {UNROLL * LANES}) {{
            {batch}
        }}
        for (; r < stop; r += {LANES}) {{ {adds} }}
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
    return (first, _column_totals(cols, chunks, n, outs, out_dtype)), chunks


TOTALS_WG = 256  # invocations of a workgroup of column_sum's second pass


def _totals_layout(chunks: int) -> tuple[int, int]:
    """(lanes, columns) of a workgroup of :func:`column_sum`'s second pass: ``lanes`` invocations
    share a column's chunks (a power of two, about 4 chunks each, at most 64)."""
    lanes = min(64, 1 << max(0, (-(-chunks // 4) - 1).bit_length()))
    return lanes, TOTALS_WG // lanes


def _column_totals(cols: int, chunks: int, n: int, outs: Sequence[str], out_dtype: str) -> str:
    """Pass 2 of :func:`column_sum`: each column's ``chunks`` partial sums (per term) added up.

    A workgroup of (columns x lanes) invocations (:func:`_totals_layout`); lane ``l`` of a column adds
    chunks ``l, l + lanes, ...`` in that order, its loads issued in batches of :data:`BATCH` before
    the adds, then the lanes' sums meet in a fixed tree in workgroup memory: the same order on every
    run, so the same bits.
    """
    lanes, width = _totals_layout(chunks)
    per = -(-chunks // lanes)
    lines: list[str] = []
    for start in range(0, per, BATCH):
        loads, adds = [], []
        for j in range(start, min(per, start + BATCH)):
            loads.append(f"let k{j} = lane + {lanes * j};")
            guard = f"if (k{j} < {chunks}) " if lanes * j + lanes > chunks else ""
            for t in range(n):
                loads.append(
                    f"var p{t}_{j} = 0.0; {guard}{{ p{t}_{j} = part[({t * chunks} + k{j}) * {cols} + c]; }}"
                )
                adds.append(f"total{t} = total{t} + p{t}_{j};")
        lines += loads + adds
    elems = "\n        ".join(lines)
    body = [
        "let cl = i32(lid3.x);",
        "let lane = i32(lid3.y);",
        f"let c = i32(wid.x + wid.y * nwg.x) * {width} + cl;",
        f"let live = c < {cols};",
        *(f"var total{t} = 0.0;" for t in range(n)),
        f"if (live) {{\n        {elems}\n    }}",
    ]
    results = [f"total{t}" for t in range(n)]
    shared = ""
    if lanes > 1:
        shared = f"var<workgroup> sh: array<f32, {n * TOTALS_WG}>;"
        adds = " ".join(
            f"sh[{t * TOTALS_WG} + lid] = sh[{t * TOTALS_WG} + lid] + sh[{t * TOTALS_WG} + lid + s * {width}];"
            for t in range(n)
        )
        body += [
            f"let lid = lane * {width} + cl;",
            *(f"sh[{t * TOTALS_WG} + lid] = total{t};" for t in range(n)),
            "workgroupBarrier();",
            f"for (var s = {lanes // 2}; s > 0; s = s >> 1u) {{",
            f"    if (lane < s) {{ {adds} }}",
            "    workgroupBarrier();",
            "}",
        ]
        results = [f"sh[{t * TOTALS_WG} + cl]" for t in range(n)]
    cast = (lambda v: v) if VTYPE[out_dtype] == "f32" else (lambda v: f"{VTYPE[out_dtype]}({v})")
    stores = " ".join(store(name, out_dtype, "c", cast(v)) for name, v in zip(outs, results, strict=True))
    body.append(f"if (lane == 0 && live) {{ {stores} }}")
    inner = "\n    ".join(body)
    bindings = [("part", "float32"), *((name, out_dtype) for name in outs)]
    return f"""{declare(bindings)}
{shared}
@compute @workgroup_size({width}, {lanes})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {{
    {inner}
}}
"""


def column_sum_grids(cols: int, chunks: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The grids of :func:`column_sum`'s two passes."""
    return (-(-cols // COLS), chunks, 1), grid(cols, _totals_layout(chunks)[1])


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
