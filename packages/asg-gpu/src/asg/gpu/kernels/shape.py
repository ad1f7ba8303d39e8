"""Shape and index ops: views, strided copies, padding, concatenation, gathers and their scatter-adds.

``reshape`` and ``stop_gradient`` are views (no dispatch: the output is the input's buffer). Every
other movement op is one thread per output element reading its input through computed strides.
The scatter-adds of the gradients (``index_select_backward`` and friends) are written as gathers:
each output element sums the gradient entries whose index points at it, so they are deterministic
and need no float atomics. Out-of-range indices are not checked on the GPU (numpy raises): an index
outside the axis reads 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from asg.core.lowering import LoweringContext

from ..codegen import (
    HELPERS,
    MAX_GROUPS,
    VTYPE,
    WG,
    Dispatch,
    Program,
    broadcast_strides,
    check_index,
    coords,
    declare,
    elementwise_kernel,
    grid,
    literal,
    load,
    offset,
    per_element,
    store,
    strides,
)
from ._base import gpu_lowering


def _shape(t: object) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)  # type: ignore[attr-defined]


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def copy_program(ctx: LoweringContext, base: int, st: Sequence[int]) -> Program:
    """``out[c] = in0[base + sum(c_d * st_d)]`` over the output's coordinates ``c``."""
    out = _shape(ctx.out_type)
    dtype = ctx.out_type.dtype
    body = [
        *coords(out),
        store("out", dtype, "i", load("in0", ctx.in_types[0].dtype, f"({offset(st, base)})")),
    ]
    return per_element(ctx.name, [ctx.in_types[0].dtype], dtype, _count(out), body)


@gpu_lowering("reshape", "stop_gradient", f16=True)
def _view(ctx: LoweringContext) -> Program:
    return Program(view=True)


# asg-nn's gradient checkpointing: the identity going forward (its gradient rule rebuilds the segment)
gpu_lowering("recompute", f16=True, defined_above=True)(_view)


TILE = 32  # a tiled transpose's tile: 32 x 32 elements, 32 x 8 invocations


@gpu_lowering("transpose", f16=True)
def _transpose(ctx: LoweringContext) -> Program:
    shape = _shape(ctx.in_types[0])
    axes = tuple(a % len(shape) for a in ctx.attrs["axes"])
    nd = len(shape)
    if (
        nd >= 2
        and axes == (*range(nd - 2), nd - 1, nd - 2)
        and ctx.out_type.dtype in ("float32", "float16", "int32")
        and min(shape[-2:]) > 1
        and -(-max(shape[-2:]) // TILE) <= MAX_GROUPS
        and _count(shape[:-2]) <= MAX_GROUPS
    ):
        return tiled_transpose(ctx.name, ctx.out_type.dtype, _count(shape[:-2]), shape[-2], shape[-1])
    st = strides(shape)
    return copy_program(ctx, 0, [st[a] for a in axes])


def tiled_transpose(name: str, dtype: str, batch: int, rows: int, cols: int) -> Program:
    """``out[b, c, r] = in0[b, r, c]`` through 32 x 32 tiles in workgroup memory (padded a column, so
    no bank conflicts): reads and writes both run along rows of 32 neighbours, where the copy kernel
    read (or wrote) with a stride of a whole row. A weight's transpose for ``dY @ W^T``."""
    t = VTYPE[dtype]
    src = load("in0", dtype, f"b * {rows * cols} + r * {cols} + c")
    wgsl = f"""{declare([("in0", dtype), ("out", dtype)])}
var<workgroup> tile: array<array<{t}, {TILE + 1}>, {TILE}>;
@compute @workgroup_size({TILE}, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
    let b = i32(wid.z);
    let tx = i32(lid.x);
    let ty = i32(lid.y);
    let r0 = i32(wid.x) * {TILE};
    let c0 = i32(wid.y) * {TILE};
    for (var k = 0; k < {TILE}; k += 8) {{
        let r = r0 + ty + k;
        let c = c0 + tx;
        if (r < {rows} && c < {cols}) {{ tile[ty + k][tx] = {src}; }}
    }}
    workgroupBarrier();
    for (var k = 0; k < {TILE}; k += 8) {{
        let c = c0 + ty + k;
        let r = r0 + tx;
        if (r < {rows} && c < {cols}) {{ {store("out", dtype, f"b * {rows * cols} + c * {rows} + r", "tile[tx][ty + k]")} }}
    }}
}}
"""
    groups = (-(-rows // TILE), -(-cols // TILE), batch)
    return Program([Dispatch(wgsl, groups, (("in", 0), ("out", 0)))], name=name)


@gpu_lowering("broadcast_to", f16=True)
def _broadcast_to(ctx: LoweringContext) -> Program:
    return copy_program(ctx, 0, broadcast_strides(_shape(ctx.in_types[0]), _shape(ctx.out_type)))


def _slices(shape: Sequence[int], index: Sequence[tuple]) -> list[tuple[int, int, int]]:
    """(start, step, length) per axis, as Python's slice.indices gives them."""
    out = []
    for d, s in zip(shape, index, strict=True):
        start, stop, step = slice(*s).indices(d)
        out.append((start, step, len(range(start, stop, step))))
    return out


@gpu_lowering("slice", f16=True)
def _slice(ctx: LoweringContext) -> Program:
    shape = _shape(ctx.in_types[0])
    st = strides(shape)
    sl = _slices(shape, ctx.attrs["index"])
    base = sum(s[0] * st[d] for d, s in enumerate(sl))
    return copy_program(ctx, base, [s[1] * st[d] for d, s in enumerate(sl)])


@gpu_lowering("slice_range", f16=True)
def _slice_range(ctx: LoweringContext) -> Program:
    shape = _shape(ctx.in_types[0])
    st = strides(shape)
    axis, start = ctx.attrs["axis"], ctx.attrs["start"]
    start = max(0, min(start + shape[axis] if start < 0 else start, shape[axis]))
    return copy_program(ctx, start * st[axis], st)


@gpu_lowering("slice_backward", f16=True)
def _slice_backward(ctx: LoweringContext) -> Program:
    out = _shape(ctx.out_type)
    g = _shape(ctx.in_types[0])
    gst = strides(g)
    sl = _slices(out, ctx.attrs["index"])
    dtype = ctx.out_type.dtype
    body = [*coords(out), "var ok = true;"]
    terms = []
    for d, (start, step, length) in enumerate(sl):
        body.append(f"let q{d} = c{d} - {start};")
        body.append(f"ok = ok && (q{d} % {step} == 0) && (q{d} / {step} >= 0) && (q{d} / {step} < {length});")
        terms.append(f"(q{d} / {step}) * {gst[d]}")
    src = " + ".join(terms) or "0"
    zero = literal(0, VTYPE[dtype])
    body.append(f"var v = {zero};")
    body.append(f"if (ok) {{ v = {load('in0', dtype, f'({src})')}; }}")
    body.append(store("out", dtype, "i", "v"))
    return per_element(ctx.name, [dtype], dtype, _count(out), body)


# One movement op of a chain a kernel reads through: (op, input shape, output shape, attributes);
# op is "reshape", "transpose" or "slice_range".
Move = tuple[str, tuple[int, ...], tuple[int, ...], Mapping[str, Any]]

FOLDABLE = frozenset({"reshape", "transpose", "slice_range"})


def source_offset(chain: Sequence[Move], index: str, tag: str = "") -> tuple[list[str], str]:
    """(lines, variable): the offset into a chain's source of element ``index`` of the chain's value.

    ``chain`` runs from the value read back to the source (its last op first): a reshape keeps the
    linear index, a transpose or a slice maps the coordinates. A kernel reading a transposed or
    sliced value through this reads the source in place, so the copy is never stored.
    """
    lines: list[str] = []
    cur = index
    for k, (op, shape_in, shape_out, attrs) in enumerate(chain):
        if op == "reshape":
            continue
        pre = f"g{tag}{k}_"
        st = strides(shape_in)
        lines += coords(shape_out, cur, pre)
        if op == "transpose":
            axes = [a % len(shape_in) for a in attrs["axes"]]
            terms = [f"{pre}{d} * {st[a]}" for d, a in enumerate(axes)]
        else:  # slice_range
            axis, start = attrs["axis"] % len(shape_in), attrs["start"]
            start = max(0, min(start + shape_in[axis] if start < 0 else start, shape_in[axis]))
            terms = [f"{pre}{d} * {st[d]}" for d in range(len(shape_in))] + [str(start * st[axis])]
        lines.append(f"let o{tag}{k} = {' + '.join(terms) or '0'};")
        cur = f"o{tag}{k}"
    return lines, cur


def strided_view(chain: Sequence[Move]) -> tuple[int, tuple[int, ...]] | None:
    """(offset, strides) in elements of a chain's value in its (contiguous) source: the value is
    ``source[offset + sum(i_d * strides_d)]``, or ``None`` where a reshape of a strided value has no
    such form. ``chain`` runs from the value back to the source, as for :func:`source_offset`.

    >>> q = [
    ...     ("transpose", (2, 6, 4, 8), (2, 4, 6, 8), {"axes": (0, 2, 1, 3)}),
    ...     ("reshape", (2, 6, 32), (2, 6, 4, 8), {}),
    ...     ("slice_range", (2, 6, 96), (2, 6, 32), {"axis": 2, "start": 32, "stop": 64}),
    ... ]
    >>> strided_view(q)  # the second third of a fused qkv, split into 4 heads of 8
    (32, (576, 8, 96, 1))
    """
    if not chain:
        return None
    shape = chain[-1][1]
    st = list(strides(shape))
    offset = 0
    for op, shape_in, shape_out, attrs in reversed(chain):
        if op == "transpose":
            st = [st[a % len(shape_in)] for a in attrs["axes"]]
        elif op == "slice_range":
            axis, start = attrs["axis"] % len(shape_in), attrs["start"]
            offset += max(0, min(start + shape_in[axis] if start < 0 else start, shape_in[axis])) * st[axis]
        else:
            found = _reshaped_strides(shape_in, st, shape_out)
            if found is None:
                return None
            st = found
    return offset, tuple(st)


def _reshaped_strides(shape: Sequence[int], st: Sequence[int], new: Sequence[int]) -> list[int] | None:
    """The strides of a strided array of ``shape`` reshaped to ``new`` without a copy, or None:
    each run of old dims merged or split must be contiguous within itself."""
    old = [(n, s) for n, s in zip(shape, st, strict=True) if n != 1]
    dims = [k for k, n in enumerate(new) if n != 1]
    out = [0] * len(new)
    a = b = 0
    while a < len(old) and b < len(dims):
        po, pn, a2, b2 = old[a][0], new[dims[b]], a + 1, b + 1
        while po != pn:
            if pn < po:
                pn, b2 = pn * new[dims[b2]], b2 + 1
            else:
                po, a2 = po * old[a2][0], a2 + 1
        if any(old[k][1] != old[k + 1][0] * old[k + 1][1] for k in range(a, a2 - 1)):
            return None
        stride = old[a2 - 1][1]
        for k in range(b2 - 1, b - 1, -1):
            out[dims[k]] = stride
            stride *= new[dims[k]]
        a, b = a2, b2
    return out


def chain_copy(name: str, dtype: str, count: int, chain: Sequence[Move]) -> Program:
    """``out[i]`` = element ``i`` of the chain's value, read from its source ``in0`` (a transpose of a
    slice, say: the q of a fused qkv projection split into heads, in one copy instead of two)."""
    lines, off = source_offset(chain, "i")
    body = [*lines, store("out", dtype, "i", load("in0", dtype, off))]
    return per_element(name, [dtype], dtype, count, body)


def concat_kernel(
    out: Sequence[int],
    axis: int,
    inputs: Sequence[tuple[tuple[int, ...], str]],
    dtype: str,
    chains: Sequence[Sequence[Move]] = (),
) -> str:
    """The concatenation of ``inputs`` ((shape, dtype), bound as ``in0..``) along ``axis``; input k
    read through ``chains[k]`` (:func:`source_offset`) where given, from the chain's source."""
    body = [*coords(out), f"var v = {literal(0, VTYPE[dtype])};"]
    at = 0
    for k, (shape, src) in enumerate(inputs):
        st = list(strides(shape))
        n = shape[axis]
        terms = [f"c{d} * {st[d]}" for d in range(len(out)) if d != axis]
        terms.append(f"(c{axis} - {at}) * {st[axis]}")
        cond = f"c{axis} >= {at} && c{axis} < {at + n}"
        lines, off = source_offset(chains[k] if k < len(chains) else (), f"l{k}", f"{k}_")
        read = " ".join([f"let l{k} = {' + '.join(terms)};", *lines])
        body.append(f"if ({cond}) {{ {read} v = {convert_load(f'in{k}', src, off, dtype)}; }}")
        at += n
    body.append(store("out", dtype, "i", "v"))
    return elementwise_kernel(
        [*((f"in{k}", src) for k, (_, src) in enumerate(inputs)), ("out", dtype)], math.prod(out), body
    )


@gpu_lowering("concat", f16=True)
def _concat(ctx: LoweringContext) -> Program:
    out = _shape(ctx.out_type)
    axis = ctx.attrs["axis"] % len(out)
    inputs = [(_shape(t), t.dtype) for t in ctx.in_types]
    wgsl = concat_kernel(out, axis, inputs, ctx.out_type.dtype)
    args = (*tuple(("in", k) for k in range(len(inputs))), ("out", 0))
    return Program([Dispatch(wgsl, grid(_count(out)), args)] if _count(out) else [], name=ctx.name)


def convert_load(buf: str, src: str, index: str, dst: str) -> str:
    """WGSL reading element ``index`` of ``buf`` (dtype ``src``) as a value of dtype ``dst``."""
    from ..codegen import convert

    return convert(load(buf, src, f"({index})"), VTYPE[src], VTYPE[dst])


@gpu_lowering("pad", f16=True)
def _pad(ctx: LoweringContext) -> Program:
    out = _shape(ctx.out_type)
    shape = _shape(ctx.in_types[0])
    st = strides(shape)
    dtype = ctx.out_type.dtype
    body = [*coords(out), "var ok = true;"]
    terms = []
    for d, (before, _) in enumerate(ctx.attrs["pad_width"]):
        body.append(f"let p{d} = c{d} - {before};")
        body.append(f"ok = ok && p{d} >= 0 && p{d} < {shape[d]};")
        terms.append(f"p{d} * {st[d]}")
    body.append(f"var v = {literal(ctx.attrs['value'], VTYPE[dtype])};")
    body.append(f"if (ok) {{ v = {load('in0', dtype, '(' + (' + '.join(terms) or '0') + ')')}; }}")
    body.append(store("out", dtype, "i", "v"))
    return per_element(ctx.name, [dtype], dtype, _count(out), body)


def _triangle(ctx: LoweringContext, keep: str) -> Program:
    out = _shape(ctx.out_type)
    dtype = ctx.out_type.dtype
    n = len(out)
    k = ctx.attrs["k"]
    body = [
        *coords(out),
        f"let v = select({literal(0, VTYPE[dtype])}, {load('in0', dtype, 'i')}, c{n - 1} - c{n - 2} {keep} {k});",
        store("out", dtype, "i", "v"),
    ]
    return per_element(ctx.name, [dtype], dtype, _count(out), body)


@gpu_lowering("tril", f16=True)
def _tril(ctx: LoweringContext) -> Program:
    return _triangle(ctx, "<=")


@gpu_lowering("triu", f16=True)
def _triu(ctx: LoweringContext) -> Program:
    return _triangle(ctx, ">=")


@gpu_lowering("arange", f16=True)
def _arange(ctx: LoweringContext) -> Program:
    dtype = ctx.out_type.dtype
    t = VTYPE[dtype]
    start, step = ctx.attrs["start"], ctx.attrs["step"]
    value = f"{literal(start, t)} + {t}(i) * {literal(step, t)}"
    return per_element(ctx.name, [], dtype, _count(_shape(ctx.out_type)), [store("out", dtype, "i", value)])


@gpu_lowering("full", f16=True)
def _full(ctx: LoweringContext) -> Program:
    dtype = ctx.out_type.dtype
    value = literal(ctx.attrs["value"], VTYPE[dtype])
    return per_element(ctx.name, [], dtype, _count(_shape(ctx.out_type)), [store("out", dtype, "i", value)])


@gpu_lowering("one_hot", f16=True)
def _one_hot(ctx: LoweringContext) -> Program:
    out = _shape(ctx.out_type)
    dtype = ctx.out_type.dtype
    n = ctx.attrs["num_classes"]
    t = VTYPE[dtype]
    body = [f"let k = {load('in0', ctx.in_types[0].dtype, f'(i / {n})')};", *check_index("k", n, False)]
    body.append(store("out", dtype, "i", f"select({literal(0, t)}, {literal(1, t)}, k == i % {n})"))
    return per_element(
        ctx.name, [ctx.in_types[0].dtype], dtype, _count(out), body, index_check=("class index", n, False)
    )


def _wrapped(idx: str, size: int) -> str:
    """A negative index counted from the end (numpy's take)."""
    return f"select({idx}, {idx} + {size}, {idx} < 0)"


@gpu_lowering("index_select", f16=True)
def _index_select(ctx: LoweringContext) -> Program:
    x, idx = _shape(ctx.in_types[0]), _shape(ctx.in_types[1])
    out = _shape(ctx.out_type)
    axis = ctx.attrs["axis"] % len(x)
    xst, ist = strides(x), strides(idx)
    dtype = ctx.out_type.dtype
    body = coords(out)
    pos = " + ".join([f"c{axis + j} * {ist[j]}" for j in range(len(idx))]) or "0"
    body.append(f"let j = {load('in1', ctx.in_types[1].dtype, f'({pos})')};")
    body += check_index("j", x[axis], True)
    terms = [f"c{d} * {xst[d]}" for d in range(axis)]
    terms.append(f"j_ok * {xst[axis]}")
    terms += [f"c{axis + len(idx) + d - axis - 1} * {xst[d]}" for d in range(axis + 1, len(x))]
    body.append(store("out", dtype, "i", load("in0", dtype, "(" + " + ".join(terms) + ")")))
    return per_element(
        ctx.name,
        [dtype, ctx.in_types[1].dtype],
        dtype,
        _count(out),
        body,
        index_check=("index", x[axis], True),
    )


@gpu_lowering("index_select_backward", f16=True)
def _index_select_backward(ctx: LoweringContext) -> Program:
    g, idx = _shape(ctx.in_types[0]), _shape(ctx.in_types[1])
    out = _shape(ctx.out_type)
    axis = ctx.attrs["axis"] % len(out)
    m, rest = _count(idx), _count(out[1:])
    if axis == 0 and 0 < m <= out[0] * rest:
        return _sorted_scatter_add(ctx, m, out, rest)
    gst = strides(g)
    m = _count(idx)
    dtype = ctx.out_type.dtype
    t = VTYPE[dtype]
    pre = " + ".join(f"c{d} * {gst[d]}" for d in range(axis)) or "0"
    post = " + ".join(f"c{d} * {gst[d - 1 + len(idx)]}" for d in range(axis + 1, len(out))) or "0"
    # g's axes: out[:axis] + idx.shape + out[axis+1:]; the idx block is contiguous, stride gst[axis + len(idx) - 1]
    inner = gst[axis + len(idx) - 1] if idx else 1
    body = [
        *coords(out),
        f"var acc = {literal(0, t)};",
        f"for (var p = 0; p < {m}; p++) {{",
        f"    let j = {_wrapped(load('in1', ctx.in_types[1].dtype, 'p'), out[axis])};",
        f"    if (j == c{axis}) {{ acc = acc + {load('in0', dtype, f'({pre} + p * {inner} + {post})')}; }}",
        "}",
        store("out", dtype, "i", "acc"),
    ]
    return per_element(ctx.name, [dtype, ctx.in_types[1].dtype], dtype, _count(out), body)


_RANK_CHUNK = 256  # positions one invocation of the ranking pass compares its own with


def _sorted_scatter_add(ctx: LoweringContext, m: int, out: tuple[int, ...], rest: int) -> Program:
    """Rows of ``g`` summed into ``out[idx[p]]`` (axis 0: the embedding gradient), without atomics.

    A stable counting sort ranks each position by (index, position): dispatch 1 counts, for each
    position and each chunk of 256 positions, the positions of that chunk ranked before it (a 3-D
    grid, m x chunks invocations, all busy); dispatch 2 adds a position's counts into its rank and
    scatters (position, index) there. Dispatch 3 has each output element binary-search its index's
    run and sum its rows in position order, four loads in flight at a time: the same order, so the
    same bits, as the gather form and as numpy's ``np.add.at``. (A vocabulary of 65 and 8,192
    tokens gives runs of ~126 rows, which one dependent load per row made latency-bound.)
    """
    dtype = ctx.out_type.dtype
    idt = ctx.in_types[1].dtype
    n = out[0]
    t = VTYPE[dtype]

    def wrapped(expr: str) -> str:
        return _wrapped(expr, n)

    chunks = max(1, min(-(-m // _RANK_CHUNK), 64, (1 << 23) // max(m, 1)))
    per = -(-m // chunks)
    count = "\n    ".join(
        [
            f"let i = i32(gid.x + gid.y * nwg.x * {WG}u);",
            f"if (i >= {m}) {{ return; }}",
            f"let v = {wrapped(load('idx', idt, 'i'))};",
            f"let start = i32(gid.z) * {per};",
            f"let stop = min(start + {per}, {m});",
            "var before = 0;",
            "for (var q = start; q < stop; q++) {",
            f"    let w = {wrapped(load('idx', idt, 'q'))};",
            "    before = before + select(0, 1, w < v || (w == v && q < i));",
            "}",
            f"part[i32(gid.z) * {m} + i] = before;",
        ]
    )
    k1 = f"""{declare([("idx", idt), ("part", "i32")])}
{HELPERS}
@compute @workgroup_size({WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    {count}
}}
"""
    rank = [
        "var dest = 0;",
        f"for (var c = 0; c < {chunks}; c++) {{ dest = dest + part[c * {m} + i]; }}",
        "spos[dest] = i;",
        f"sid[dest] = {wrapped(load('idx', idt, 'i'))};",
    ]
    k2 = elementwise_kernel([("idx", idt), ("part", "i32"), ("spos", "i32"), ("sid", "i32")], m, rank)

    def search(name: str, before: str) -> str:  # the first k whose sid[k] is not ``before`` v
        return (
            f"var {name} = 0; {{ var top = {m}; loop {{ if ({name} >= top) {{ break; }} let mid = ({name} + top) / 2; "
            f"if ({before}) {{ {name} = mid + 1; }} else {{ top = mid; }} }} }}"
        )

    def row(k: str) -> str:
        return load("g", dtype, f"spos[{k}] * {rest} + j")

    gather = [
        f"let v = i / {rest};",
        f"let j = i % {rest};",
        search("lo", "sid[mid] < v"),
        search("hi", "sid[mid] <= v"),
        f"var acc = {literal(0, t)};",
        "var k = lo;",
        "for (; k + 4 <= hi; k += 4) {",
        f"    let a0 = {row('k')}; let a1 = {row('k + 1')}; let a2 = {row('k + 2')}; let a3 = {row('k + 3')};",
        "    acc = acc + a0; acc = acc + a1; acc = acc + a2; acc = acc + a3;",
        "}",
        f"for (; k < hi; k++) {{ acc = acc + {row('k')}; }}",
        store("out", dtype, "i", "acc"),
    ]
    total = _count(out)
    k3 = elementwise_kernel([("g", dtype), ("spos", "i32"), ("sid", "i32"), ("out", dtype)], total, gather)
    g1 = grid(m)
    return Program(
        [
            Dispatch(k1, (g1[0], g1[1], chunks), (("in", 1), ("tmp", 2))),
            Dispatch(k2, grid(m), (("in", 1), ("tmp", 2), ("tmp", 0), ("tmp", 1))),
            Dispatch(k3, grid(total), (("in", 0), ("tmp", 0), ("tmp", 1), ("out", 0))),
        ]
        if total
        else [],
        temps=[4 * m, 4 * m, 4 * m * chunks],
    )


@gpu_lowering("take_along_axis", "gather", f16=True)
def _take_along(ctx: LoweringContext) -> Program:
    x, idx = _shape(ctx.in_types[0]), _shape(ctx.in_types[1])
    out = _shape(ctx.out_type)
    axis = ctx.attrs["axis"] % len(x)
    xst = strides(x)
    ist = broadcast_strides(idx, out)
    dtype = ctx.out_type.dtype
    negative = ctx.op_name == "take_along_axis"  # numpy's take_along_axis counts negatives from the end
    body = coords(out)
    body.append(f"let j = {load('in1', ctx.in_types[1].dtype, f'({offset(ist)})')};")
    body += check_index("j", x[axis], negative)
    terms = [f"j_ok * {xst[axis]}"] + [
        f"c{d} * {xst[d]}" for d in range(len(x)) if d != axis and not (x[d] == 1 and out[d] != 1)
    ]
    body.append(store("out", dtype, "i", load("in0", dtype, "(" + " + ".join(terms) + ")")))
    check = ("index", x[axis], negative)
    return per_element(ctx.name, [dtype, ctx.in_types[1].dtype], dtype, _count(out), body, index_check=check)


@gpu_lowering("take_along_axis_backward", "gather_backward", f16=True)
def _take_along_backward(ctx: LoweringContext) -> Program:
    g, idx = _shape(ctx.in_types[0]), _shape(ctx.in_types[1])
    out = _shape(ctx.out_type)
    axis = ctx.attrs["axis"] % len(out)
    gst = strides(g)
    ist = broadcast_strides(idx, g)
    dtype = ctx.out_type.dtype
    t = VTYPE[dtype]
    # Loop over g's axis and over the axes where x has size 1 and g more (broadcast in the forward).
    free = [d for d in range(len(g)) if d == axis or (out[d] == 1 and g[d] != 1)]
    sizes = [g[d] for d in free]
    total = _count(sizes)
    body = [*coords(out), "var acc = " + literal(0, t) + ";", "var ok = true;"]
    body += [f"ok = ok && c{d} < {g[d]};" for d in range(len(g)) if d not in free]
    body.append(f"for (var r = 0; ok && r < {total}; r++) {{")
    fst = strides(sizes)
    for k, d in enumerate(free):
        body.append(f"    let q{d} = (r / {fst[k]}) % {sizes[k]};")
    gi = " + ".join((f"q{d}" if d in free else f"c{d}") + f" * {gst[d]}" for d in range(len(g))) or "0"
    ii = (
        " + ".join((f"q{d}" if d in free else f"c{d}") + f" * {ist[d]}" for d in range(len(g)) if ist[d])
        or "0"
    )
    body.append(f"    let j = {_wrapped(load('in1', ctx.in_types[1].dtype, f'({ii})'), out[axis])};")
    body.append(f"    if (j == c{axis}) {{ acc = acc + {load('in0', dtype, f'({gi})')}; }}")
    body.append("}")
    body.append(store("out", dtype, "i", "acc"))
    return per_element(ctx.name, [dtype, ctx.in_types[1].dtype], dtype, _count(out), body)
