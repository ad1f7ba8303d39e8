"""Pooling (max, average, adaptive) and its backward ops, one thread per output element.

Windows follow asg-core's numpy kernels (PyTorch's rules): regular windows start at
``o * stride - padding`` and step by the dilation (``ceil_mode`` windows may overhang: those
positions count as padding); adaptive bins are ``[floor(o*H/OH), ceil((o+1)*H/OH))``. A max
window's gradient goes to its *first* maximum in row-major order, as PyTorch's does. The backward
ops are gathers: each input pixel visits the windows that can contain it (max pooling first
writes each window's argmax to a scratch buffer), so no atomics are needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asg.core.lowering import LoweringContext

from ..codegen import (
    Dispatch,
    Program,
    coords,
    declare,
    elementwise_kernel,
    grid,
    literal,
    per_element,
    store,
)
from ._base import gpu_lowering

NEG_INF = literal(float("-inf"), "f32")


@dataclass(frozen=True)
class Axis:
    """The windows along one spatial axis: ``size`` inputs pooled to ``out`` outputs."""

    size: int
    out: int
    kernel: int = 0  # 0: adaptive bins
    stride: int = 1
    pad: int = 0
    dilation: int = 1

    def positions(self, o: str, p: str) -> tuple[str, str]:
        """A loop header defining input position ``p`` of window ``o``, and its closing brace."""
        if self.kernel == 0:
            start = f"(({o}) * {self.size}) / {self.out}"
            end = f"((({o}) + 1) * {self.size} + {self.out - 1}) / {self.out}"
            return f"for (var {p} = {start}; {p} < {end}; {p}++) {{", "}"
        k = f"k_{p}"
        return (
            f"for (var {k} = 0; {k} < {self.kernel}; {k}++) {{ let {p} = ({o}) * {self.stride} - {self.pad} + {k} * {self.dilation};",
            "}",
        )

    def windows_of(self, p: str, o: str) -> tuple[str, str]:
        """A loop header over the windows ``o`` that contain input position ``p``, and its closing."""
        if self.kernel == 0:
            start = f"(({o}) * {self.size}) / {self.out}"
            end = f"((({o}) + 1) * {self.size} + {self.out - 1}) / {self.out}"
            return (
                f"for (var {o} = 0; {o} < {self.out}; {o}++) {{ if ({p} < {start} || {p} >= {end}) {{ continue; }}",
                "}",
            )
        k = f"k_{o}"
        t = f"t_{o}"
        return (
            f"for (var {k} = 0; {k} < {self.kernel}; {k}++) {{ let {t} = {p} + {self.pad} - {k} * {self.dilation};"
            f" if ({t} < 0 || {t} % {self.stride} != 0 || {t} / {self.stride} >= {self.out}) {{ continue; }}"
            f" let {o} = {t} / {self.stride};",
            "}",
        )

    def inverse(self, o: str, include_pad: bool) -> str:
        """``1 / window length`` of window ``o`` (average pooling's divisor, PyTorch's count)."""
        if self.kernel == 0:
            start = f"(({o}) * {self.size}) / {self.out}"
            end = f"((({o}) + 1) * {self.size} + {self.out - 1}) / {self.out}"
            return f"(1.0 / f32({end} - {start}))"
        start = f"(({o}) * {self.stride} - {self.pad})"
        end = f"min({start} + {self.kernel}, {self.size + self.pad})"
        length = f"({end} - {start})" if include_pad else f"(min({end}, {self.size}) - max({start}, 0))"
        return f"(1.0 / f32({length}))"


def _axes(ctx: LoweringContext, x_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[Axis, Axis]:
    a = ctx.attrs
    if "output_size" in a:
        return Axis(x_hw[0], out_hw[0]), Axis(x_hw[1], out_hw[1])
    dil = a.get("dilation", (1, 1))
    return tuple(  # type: ignore[return-value]
        Axis(x_hw[i], out_hw[i], a["kernel_size"][i], a["stride"][i], a["padding"][i], dil[i])
        for i in range(2)
    )


def _ints(t: object) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)  # type: ignore[attr-defined]


def _argmax_lines(ay: Axis, ax: Axis, h: int, w: int, plane: str) -> list[str]:
    """Statements setting ``best`` and ``at`` (flat y*w+x, -1 when the window is all padding) of window (c2, c3)."""
    y_open, y_close = ay.positions("c2", "y")
    x_open, x_close = ax.positions("c3", "x")
    return [
        f"var best = {NEG_INF};",
        "var at = -1;",
        y_open,
        x_open,
        f"var v = {NEG_INF};",
        f"if (y >= 0 && y < {h} && x >= 0 && x < {w}) {{ v = {plane}[base + y * {w} + x]; }}",
        "if (at < 0 || v > best || (is_nan(v) && !is_nan(best))) { best = v; at = y * " + str(w) + " + x; }",
        x_close,
        y_close,
    ]


def _window_sum(
    space: tuple[int, ...], setup: list[str], y: tuple[str, str], x: tuple[str, str], step: list[str]
) -> list[str]:
    """Lines over ``space``'s element ``i``: ``setup``, then ``step`` (adding to ``acc``) inside the
    (opening, closing) lines of the ``y`` and ``x`` window loops."""
    return [*coords(space), *setup, "var acc = 0.0;", y[0], x[0], *step, x[1], y[1]]


def _max_forward(ctx: LoweringContext) -> Program:
    _n, c, h, w = _ints(ctx.in_types[0])
    out = _ints(ctx.out_type)
    ay, ax = _axes(ctx, (h, w), out[2:])
    body = [*coords(out), f"let base = (c0 * {c} + c1) * {h * w};", *_argmax_lines(ay, ax, h, w, "in0")]
    body.append(store("out", "float32", "i", "best"))
    return per_element(ctx.name, ["float32"], "float32", math.prod(out), body)


def _max_backward(ctx: LoweringContext) -> Program:
    n, c, h, w = _ints(ctx.in_types[0])
    pooled = _ints(ctx.in_types[1])
    ay, ax = _axes(ctx, (h, w), pooled[2:])
    oh, ow = pooled[2:]
    npooled = math.prod(pooled)
    # 1: each window's first argmax into scratch (i32)
    first = [*coords(pooled), f"let base = (c0 * {c} + c1) * {h * w};", *_argmax_lines(ay, ax, h, w, "x_")]
    first.append("arg[i] = at;")
    k1 = elementwise_kernel([("x_", "float32"), ("arg", "i32")], npooled, first)
    # 2: each input pixel sums the cotangents of the windows whose argmax it is
    second = _window_sum(
        (n, c, h, w),
        [f"let pbase = (c0 * {c} + c1) * {oh * ow};", f"let me = c2 * {w} + c3;"],
        ay.windows_of("c2", "oy"),
        ax.windows_of("c3", "ox"),
        [f"let o = pbase + oy * {ow} + ox;", "if (arg[o] == me) { acc = acc + g[o]; }"],
    )
    second.append("dx[i] = acc;")
    k2 = elementwise_kernel([("g", "float32"), ("arg", "i32"), ("dx", "float32")], n * c * h * w, second)
    return Program(
        [
            Dispatch(k1, grid(npooled), (("in", 0), ("tmp", 0))),
            Dispatch(k2, grid(n * c * h * w), (("in", 1), ("tmp", 0), ("out", 0))),
        ]
        if npooled and n * c * h * w
        else [],
        temps=[4 * max(npooled, 1)],
    )


def _max_gather(ctx: LoweringContext) -> Program:
    _n, c, h, w = _ints(ctx.in_types[0])
    out = _ints(ctx.out_type)
    ay, ax = _axes(ctx, (h, w), out[2:])
    body = [*coords(out), f"let base = (c0 * {c} + c1) * {h * w};", *_argmax_lines(ay, ax, h, w, "in0")]
    body.append("var v = 0.0; if (at >= 0) { v = in1[base + at]; }")
    body.append(store("out", "float32", "i", "v"))
    return per_element(ctx.name, ["float32", "float32"], "float32", math.prod(out), body)


for _name in ("max_pool2d", "adaptive_max_pool2d"):
    gpu_lowering(_name)(_max_forward)
    gpu_lowering(f"{_name}_backward")(_max_backward)
    gpu_lowering(f"{_name}_gather")(_max_gather)


def _avg_forward(ctx: LoweringContext) -> Program:
    _n, c, h, w = _ints(ctx.in_types[0])
    out = _ints(ctx.out_type)
    ay, ax = _axes(ctx, (h, w), out[2:])
    include = bool(ctx.attrs.get("count_include_pad", True))
    body = _window_sum(
        out,
        [f"let base = (c0 * {c} + c1) * {h * w};"],
        ay.positions("c2", "y"),
        ax.positions("c3", "x"),
        [f"if (y >= 0 && y < {h} && x >= 0 && x < {w}) {{ acc = acc + in0[base + y * {w} + x]; }}"],
    )
    body.append(
        store("out", "float32", "i", f"acc * ({ay.inverse('c2', include)} * {ax.inverse('c3', include)})")
    )
    return per_element(ctx.name, ["float32"], "float32", math.prod(out), body)


def _avg_backward(ctx: LoweringContext) -> Program:
    pooled = _ints(ctx.in_types[0])
    out = _ints(ctx.out_type)
    _n, c, h, w = out
    oh, ow = pooled[2:]
    ay, ax = _axes(ctx, (h, w), (oh, ow))
    include = bool(ctx.attrs.get("count_include_pad", True))
    body = _window_sum(
        out,
        [f"let pbase = (c0 * {c} + c1) * {oh * ow};"],
        ay.windows_of("c2", "oy"),
        ax.windows_of("c3", "ox"),
        [
            f"acc = acc + in0[pbase + oy * {ow} + ox] * ({ay.inverse('oy', include)} * {ax.inverse('ox', include)});"
        ],
    )
    body.append(store("out", "float32", "i", "acc"))
    return per_element(ctx.name, ["float32"], "float32", math.prod(out), body)


for _name in ("avg_pool2d", "adaptive_avg_pool2d"):
    gpu_lowering(_name)(_avg_forward)
    gpu_lowering(f"{_name}_backward")(_avg_backward)

_ = declare  # re-exported helpers used by other families
