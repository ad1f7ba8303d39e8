"""conv2d, its weight gradient and conv_transpose2d as direct convolutions (one thread per output element).

Stride, padding (top, bottom, left, right), dilation and groups (depthwise included) follow
asg-core's numpy kernels. Each output element loops over its receptive field; conv_transpose2d is
written as a gather (each output pixel sums the input pixels whose window covers it), so it needs
no atomics. These are the correct first kernels; an implicit-GEMM path on the tiled matmul is the
fast one still to write.
"""

from __future__ import annotations

import math

from asg.core.lowering import LoweringContext

from ..codegen import Dispatch, Program, coords, per_element, store
from ._base import gpu_lowering


def _ints(t: object) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)  # type: ignore[attr-defined]


def _window(ctx: LoweringContext) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """(stride, (top, left) padding, dilation, groups) of a conv node."""
    top, _, left, _ = ctx.attrs["padding"]
    return ctx.attrs["stride"], (top, left), ctx.attrs["dilation"], ctx.attrs["groups"]


def _summed(
    ctx: LoweringContext, out: tuple[int, ...], setup: list[str], loops: list[list[str]], term: str
) -> Program:
    """One thread per output element: ``setup`` lines, then ``acc += term`` inside nested loops.

    Each entry of ``loops`` is a loop's opening line followed by the lines at the top of its body
    (index lets, bounds checks that ``continue``).
    """
    body = [*coords(out), *setup, "var acc = 0.0;"]
    for depth, (head, *lines) in enumerate(loops):
        pad = "  " * depth
        body += [pad + head, *(f"{pad}  {line}" for line in lines)]
    body.append("  " * len(loops) + f"acc = acc + {term};")
    body += ["  " * d + "}" for d in reversed(range(len(loops)))]
    body.append(store("out", "float32", "i", "acc"))
    return per_element(ctx.name, ["float32", "float32"], "float32", math.prod(out), body)


def _im2col_conv2d(ctx: LoweringContext) -> Program:
    """groups == 1: columns (N, C*kH*kW, Ho*Wo) in scratch, then the tiled matmul W @ cols."""
    from .linalg import matmul_program

    n, c, h, w = _ints(ctx.in_types[0])
    co, _, kh, kw = _ints(ctx.in_types[1])
    out = _ints(ctx.out_type)
    ho, wo = out[2:]
    (sh, sw), (top, left), (dh, dw), _ = _window(ctx)
    ckk, p = c * kh * kw, ho * wo
    cols = (n, ckk, p)
    body = [
        *coords(cols),  # c0: image, c1: (channel, ky, kx), c2: output pixel
        f"let ci = c1 / {kh * kw}; let ky = (c1 / {kw}) % {kh}; let kx = c1 % {kw};",
        f"let y = (c2 / {wo}) * {sh} - {top} + ky * {dh};",
        f"let x = (c2 % {wo}) * {sw} - {left} + kx * {dw};",
        "var v = 0.0;",
        f"if (y >= 0 && y < {h} && x >= 0 && x < {w}) {{ v = in0[((c0 * {c} + ci) * {h} + y) * {w} + x]; }}",
        store("out", "float32", "i", "v"),
    ]
    im2col = per_element(ctx.name, ["float32"], "float32", math.prod(cols), body)
    mm = matmul_program((co, ckk), cols, (n, co, p), ctx.name, splits=1)
    dispatches = [Dispatch(d.wgsl, d.grid, (("in", 0), ("tmp", 0))) for d in im2col.dispatches]
    dispatches += [Dispatch(d.wgsl, d.grid, (("in", 1), ("tmp", 0), ("out", 0))) for d in mm.dispatches]
    return Program(dispatches, temps=[4 * max(math.prod(cols), 1)])


# im2col pays off once the product is big enough to use the matmul's tiles; small convs stay direct.
IM2COL_MIN_MACS = 1 << 12


@gpu_lowering("conv2d")
def _conv2d(ctx: LoweringContext) -> Program:
    _n, c, h, w = _ints(ctx.in_types[0])
    co, cpg, kh, kw = _ints(ctx.in_types[1])
    out = _ints(ctx.out_type)
    if ctx.attrs["groups"] == 1 and math.prod(out) * cpg * kh * kw >= IM2COL_MIN_MACS:
        return _im2col_conv2d(ctx)
    (sh, sw), (top, left), (dh, dw), groups = _window(ctx)
    opg = co // groups
    loops = [
        [f"for (var ci = 0; ci < {cpg}; ci++) {{"],
        [
            f"for (var ky = 0; ky < {kh}; ky++) {{",
            f"let y = c2 * {sh} - {top} + ky * {dh};",
            f"if (y < 0 || y >= {h}) {{ continue; }}",
        ],
        [
            f"for (var kx = 0; kx < {kw}; kx++) {{",
            f"let x = c3 * {sw} - {left} + kx * {dw};",
            f"if (x < 0 || x >= {w}) {{ continue; }}",
        ],
    ]
    term = f"in0[((c0 * {c} + gi * {cpg} + ci) * {h} + y) * {w} + x] * in1[((c1 * {cpg} + ci) * {kh} + ky) * {kw} + kx]"
    return _summed(ctx, out, [f"let gi = c1 / {opg};"], loops, term)


@gpu_lowering("conv2d_backward_weight")
def _conv2d_backward_weight(ctx: LoweringContext) -> Program:
    n, c, h, w = _ints(ctx.in_types[0])
    _, co, ho, wo = _ints(ctx.in_types[1])
    out = _ints(ctx.out_type)  # (co, cpg, kh, kw)
    cpg = out[1]
    (sh, sw), (top, left), (dh, dw), groups = _window(ctx)
    opg = co // groups
    loops = [
        [f"for (var b = 0; b < {n}; b++) {{"],
        [
            f"for (var oy = 0; oy < {ho}; oy++) {{",
            f"let y = oy * {sh} - {top} + c2 * {dh};",
            f"if (y < 0 || y >= {h}) {{ continue; }}",
        ],
        [
            f"for (var ox = 0; ox < {wo}; ox++) {{",
            f"let x = ox * {sw} - {left} + c3 * {dw};",
            f"if (x < 0 || x >= {w}) {{ continue; }}",
        ],
    ]
    term = f"in1[((b * {co} + c0) * {ho} + oy) * {wo} + ox] * in0[((b * {c} + chan) * {h} + y) * {w} + x]"
    return _summed(ctx, out, [f"let chan = (c0 / {opg}) * {cpg} + c1;"], loops, term)


@gpu_lowering("conv_transpose2d")
def _conv_transpose2d(ctx: LoweringContext) -> Program:
    _n, cin, hg, wg = _ints(ctx.in_types[0])
    _, opg_t, kh, kw = _ints(ctx.in_types[1])  # (cin, cout/groups, kh, kw)
    out = _ints(ctx.out_type)  # (n, cout, H, W)
    (sh, sw), (top, left), (dh, dw), groups = _window(ctx)
    ipg = cin // groups
    loops = [
        [f"for (var j = 0; j < {ipg}; j++) {{", f"let ci = gi * {ipg} + j;"],
        [
            f"for (var ky = 0; ky < {kh}; ky++) {{",
            f"let ty = c2 + {top} - ky * {dh};",
            f"if (ty < 0 || ty % {sh} != 0 || ty / {sh} >= {hg}) {{ continue; }}",
        ],
        [
            f"for (var kx = 0; kx < {kw}; kx++) {{",
            f"let tx = c3 + {left} - kx * {dw};",
            f"if (tx < 0 || tx % {sw} != 0 || tx / {sw} >= {wg}) {{ continue; }}",
        ],
    ]
    term = (
        f"in0[((c0 * {cin} + ci) * {hg} + ty / {sh}) * {wg} + tx / {sw}]"
        f" * in1[((ci * {opg_t} + oc) * {kh} + ky) * {kw} + kx]"
    )
    return _summed(ctx, out, [f"let gi = c1 / {opg_t};", f"let oc = c1 % {opg_t};"], loops, term)
