"""layer_norm forward and backward as workgroup-per-row kernels; embedding; the fused optimizer updates.

A layer_norm row is contiguous (the normalised axes trail); one workgroup reads it once into
registers (:class:`_Layout`: ``per`` named values per invocation, ``vec4`` when the row is a
multiple of 4 wide), combines the statistics in workgroup memory in two steps with a barrier
each (:func:`_group_sum`) and writes the output from the registers. The variance is centred
(the mean first, then the squared deviations of the held values). Rows too wide for the
registers (more than 32 values per invocation at 1024 invocations) walk the row several times
instead (the ``_loop`` kernels). The weight gradient first writes each row's mean and rstd to a
scratch buffer, then sums over rows per feature (:func:`~asg.gpu.kernels.reduction.column_sum`:
coalesced, rows in parallel chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asg.core.lowering import LoweringContext

from ..codegen import Dispatch, Program, check_index, literal, load, per_element, store
from ._base import gpu_lowering
from .reduction import Prologue, _kernel, _rows_grid, _wg, column_sum, column_sum_grids, tree


def _row_kernel(
    names: list[str] | list[tuple[str, str]], wg: int, rows: int, body: list[str], extra: str = ""
) -> str:
    bindings = [n if isinstance(n, tuple) else (n, "float32") for n in names]
    return _kernel(bindings, wg, [f"part: array<f32, {wg}>"], ["let base = o * FEAT;", *body], rows, extra)


def _row_sum(expr: str, var: str, wg: int, feat: int) -> list[str]:
    """Statements summing ``expr`` (of ``r``, with ``off = base + r``) over a row into ``var``."""
    return [
        "{ var acc = 0.0;",
        f"  for (var r = lid; live && r < {feat}; r += {wg}) {{ let off = base + r; acc = acc + {expr}; }}",
        "  part[lid] = acc; }",
        *tree("part", wg, "part[lid] = part[lid] + part[lid + s];"),
        f"let {var} = part[0];",
        "workgroupBarrier();",
    ]


def _stats(wg: int, feat: int, eps: float, x: str = "x[off]") -> list[str]:
    return [
        *_row_sum(x, "total", wg, feat),
        f"let mean = total / {literal(feat, 'f32')};",
        *_row_sum(f"({x} - mean) * ({x} - mean)", "ss", wg, feat),
        f"let rstd = 1.0 / sqrt(ss / {literal(feat, 'f32')} + {literal(eps, 'f32')});",
    ]


# ------------------------------------------------------------------ rows held in registers
MAX_HELD = 32  # floats of one row an invocation holds (per array: x, and g in the backward)
MAX_WG = 1024


@dataclass(frozen=True)
class _Layout:
    """How a row of ``feat`` values is spread over one workgroup of ``wg`` invocations.

    The row is ``units`` units of ``width`` floats (``vec4`` when 4); invocation ``lid`` holds
    units ``lid + k * wg`` for ``k < per`` (named ``{name}{k}``), so each load and store of a
    workgroup is contiguous. Units past the row (the last ``k`` when ``wg`` does not divide
    ``units``) are held as zeros and neither loaded nor stored.
    """

    feat: int
    width: int
    wg: int
    per: int

    @property
    def units(self) -> int:
        return self.feat // self.width

    @property
    def ty(self) -> str:
        return "vec4<f32>" if self.width == 4 else "f32"

    @property
    def zero(self) -> str:
        return f"{self.ty}(0.0)"

    def masked(self, k: int) -> bool:
        return (k + 1) * self.wg > self.units

    def hsum(self, e: str) -> str:
        """The sum of a unit's floats."""
        return f"dot({e}, vec4<f32>(1.0))" if self.width == 4 else e

    def dot(self, a: str, b: str) -> str:
        return f"dot({a}, {b})" if self.width == 4 else f"{a} * {b}"

    def indices(self) -> list[str]:
        return [f"let c{k} = lid + {k * self.wg};" for k in range(self.per)]

    def load(self, names: list[tuple[str, str]]) -> list[str]:
        """Statements holding, for each (register name, expression of ``c{k}``), the row's units.

        The expression uses ``{k}`` for the unit index ``k``."""
        out = []
        for k in range(self.per):
            if self.masked(k):
                out.append(" ".join(f"var {n}{k} = {self.zero};" for n, _ in names))
                sets = " ".join(f"{n}{k} = {e.format(k=k)};" for n, e in names)
                out.append(f"if (c{k} < {self.units}) {{ {sets} }}")
            else:
                out += [f"let {n}{k} = {e.format(k=k)};" for n, e in names]
        return out

    def centred(self, x: str, d: str) -> list[str]:
        """``d{k} = x{k} - mean``, zero for units past the row."""
        return [
            f"let {d}{k} = select({self.zero}, {x}{k} - mean, c{k} < {self.units});"
            if self.masked(k)
            else f"let {d}{k} = {x}{k} - mean;"
            for k in range(self.per)
        ]

    def store(self, stmt: str) -> list[str]:
        """``stmt`` (with ``{k}``) for each unit in the row."""
        return [
            f"if (c{k} < {self.units}) {{ {stmt.format(k=k)} }}" if self.masked(k) else stmt.format(k=k)
            for k in range(self.per)
        ]


def _round32(n: int) -> int:
    return max(32, -(-n // 32) * 32)


def _layout(feat: int, vec: bool = True) -> _Layout | None:
    """The register layout of a row (``vec4`` units when ``vec`` and ``feat % 4 == 0``): about 8
    floats per invocation (2 ``vec4`` or 8 scalars, at most 256 invocations), more for wide rows
    (up to :data:`MAX_HELD` at :data:`MAX_WG` invocations); None past that.

    >>> [(lay.width, lay.wg, lay.per) for lay in map(_layout, (512, 768, 2048, 77, 3, 8192))]
    [(4, 64, 2), (4, 96, 2), (4, 256, 2), (1, 32, 3), (1, 32, 1), (4, 256, 8)]
    >>> _layout(512, vec=False), _layout(40000)
    (_Layout(feat=512, width=1, wg=64, per=8), None)
    """
    if feat < 1:
        return None
    width = 4 if vec and feat % 4 == 0 else 1
    units = feat // width
    wg = min(256, _round32(-(-units // (8 // width))))
    per = -(-units // wg)
    if per * width > MAX_HELD:
        wg = min(MAX_WG, _round32(-(-units * width // MAX_HELD)))
        per = -(-units // wg)
        if per * width > MAX_HELD:
            return None
    return _Layout(feat, width, wg, per)


def _pairwise(terms: list[str]) -> str:
    """A balanced sum of ``terms``."""
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return f"({_pairwise(terms[:half])} + {_pairwise(terms[half:])})"


def _group_sum(name: str, wg: int, ty: str, value: str) -> tuple[list[str], list[str]]:
    """(workgroup arrays, statements) making ``let {name}`` the sum of ``value`` over the workgroup.

    Two steps, one barrier each: ``g`` invocations each add ``wg / g`` of the values (a stride of
    ``g`` apart: no bank conflicts), then every invocation adds those ``g`` partial sums (``g``
    the largest divisor of ``wg`` not above its square root). Every array is used once, so no
    barrier is needed before the next sum reuses workgroup memory.
    """
    g = max(d for d in range(1, math.isqrt(wg) + 1) if wg % d == 0)
    step = wg // g
    first = _pairwise([f"{name}_a[lid + {g * j}]" for j in range(step)])
    return [f"{name}_a: array<{ty}, {wg}>", f"{name}_b: array<{ty}, {g}>"], [
        f"{name}_a[lid] = {value};",
        "workgroupBarrier();",
        f"if (lid < {g}) {{ {name}_b[lid] = {first}; }}",
        "workgroupBarrier();",
        f"let {name} = {_pairwise([f'{name}_b[{j}]' for j in range(g)])};",
    ]


def _held_kernel(
    bindings: list[tuple[str, str]],
    lay: _Layout,
    rows: int,
    parts: list[tuple[list[str], list[str]]],
    body: list[str],
    extra: str = "",
) -> str:
    """A workgroup-per-row kernel; ``parts`` are :func:`_group_sum`'s (arrays, statements), used in
    ``body`` through the placeholders ``SUM0``, ``SUM1``..."""
    shared = [a for arrays, _ in parts for a in arrays]
    lines = ["if (!live) { return; }", f"let base = o * {lay.units};", *lay.indices()]
    for line in body:
        if line.startswith("SUM"):
            lines += parts[int(line[3:])][1]
        else:
            lines.append(line)
    return _kernel(bindings, lay.wg, shared, lines, rows, extra)


def _held_stats(
    lay: _Layout, eps: float, x: str = "x"
) -> tuple[list[tuple[list[str], list[str]]], list[str]]:
    """Sums and statements giving ``mean``, ``rstd`` and the centred values ``d{k}`` of ``x{k}``."""
    f = literal(lay.feat, "f32")
    sums = [
        _group_sum("s_mean", lay.wg, "f32", lay.hsum(_pairwise([f"{x}{k}" for k in range(lay.per)]))),
        _group_sum("s_var", lay.wg, "f32", _pairwise([lay.dot(f"d{k}", f"d{k}") for k in range(lay.per)])),
    ]
    body = [
        "SUM0",
        f"let mean = s_mean * (1.0 / {f});",
        *lay.centred(x, "d"),
        "SUM1",
        f"let rstd = 1.0 / sqrt(s_var * (1.0 / {f}) + {literal(eps, 'f32')});",
    ]
    return sums, body


def _features(ctx: LoweringContext) -> tuple[int, int]:
    shape = tuple(int(d) for d in ctx.in_types[0].shape)
    feat = math.prod(int(d) for d in ctx.attrs["normalized_shape"])
    return math.prod(shape) // max(feat, 1), feat


def layer_norm_wgsl(
    rows: int, feat: int, eps: float, hw: bool, hb: bool, prologue: Prologue | None = None
) -> str:
    """The layer_norm kernel: buffers x (or ``prologue``'s), w, b, y; one workgroup per row.

    With a prologue, ``prologue_store(i)`` computes each input element once (it also stores the
    group's values needed elsewhere), into registers; the units are then scalars, so that the
    prologue's loads and stores stay contiguous. Rows too wide for registers call ``prologue(i)``
    in both statistics passes and ``prologue_store(i)`` in the output pass.
    """
    lay = _layout(feat, vec=prologue is None)
    if lay is None:
        return _layer_norm_loop_wgsl(rows, feat, eps, hw, hb, prologue)
    elem = lay.ty
    load = "prologue_store(base + c{k})" if prologue else "x[base + c{k}]"
    sums, stats = _held_stats(lay, eps)
    value = "d{k} * rstd" + (" * w[c{k}]" if hw else "") + (" + b[c{k}]" if hb else "")
    body = [*lay.load([("x", load)]), *stats, *lay.store(f"y[base + c{{k}}] = {value};")]
    params = [(n, elem) for n in (["w"] if hw else []) + (["b"] if hb else []) + ["y"]]
    if prologue is None:
        return _held_kernel([("x", elem), *params], lay, rows, sums, body)
    names = [*prologue.before, *params, *prologue.after]
    return _held_kernel(names, lay, rows, sums, body, prologue.source)


def _layer_norm_loop_wgsl(
    rows: int, feat: int, eps: float, hw: bool, hb: bool, prologue: Prologue | None = None
) -> str:
    """layer_norm walking each row three times (mean, centred variance, output): rows wider than
    the registers hold."""
    wg = _wg(feat)
    x = "prologue(off)" if prologue else "x[off]"
    final = "prologue_store(off)" if prologue else "x[off]"
    value = f"({final} - mean) * rstd" + (" * w[r]" if hw else "") + (" + b[r]" if hb else "")
    body = [
        *_stats(wg, feat, eps, x),
        f"for (var r = lid; live && r < {feat}; r += {wg}) {{ let off = base + r; y[off] = {value}; }}",
    ]
    params = (["w"] if hw else []) + (["b"] if hb else []) + ["y"]
    if prologue is None:
        return _row_kernel(["x", *params], wg, rows, body).replace("FEAT", str(feat))
    names = [*prologue.before, *((n, "float32") for n in params), *prologue.after]
    return _row_kernel(names, wg, rows, body, prologue.source).replace("FEAT", str(feat))


@gpu_lowering("layer_norm")
def _layer_norm(ctx: LoweringContext) -> Program:
    rows, feat = _features(ctx)
    hw, hb = ctx.attrs["has_weight"], ctx.attrs["has_bias"]
    wgsl = layer_norm_wgsl(rows, feat, ctx.attrs["eps"], hw, hb)
    args = (*tuple(("in", k) for k in range(1 + hw + hb)), ("out", 0))
    return Program([Dispatch(wgsl, _rows_grid(rows), args)] if rows else [])


@gpu_lowering("layer_norm_backward")
def _layer_norm_backward(ctx: LoweringContext) -> Program:
    return layer_norm_backward_program(ctx)


def layer_norm_backward_program(ctx: LoweringContext, residual: int | None = None) -> Program:
    """The input gradient of layer_norm; with ``residual`` (a value id of the output's shape) it
    stores ``dx + residual``: a pre-norm block's residual stream gradient accumulated in the same
    kernel (a plan folds the ``add`` that follows).

    Held in registers: ``x`` and ``g * w``; the sums come in two pairs, (sum x, sum g w) then
    (sum (x - mean)^2, sum g w (x - mean)), each pair in one :func:`_group_sum` of ``vec2``."""
    rows, feat = _features(ctx)
    rows = math.prod(int(d) for d in ctx.in_types[1].shape) // max(feat, 1)
    hw = ctx.attrs["has_weight"]
    lay = _layout(feat)
    if lay is None:
        wgsl = _layer_norm_backward_loop_wgsl(rows, feat, ctx.attrs["eps"], hw, residual is not None)
    else:
        wgsl = _layer_norm_backward_wgsl(lay, rows, ctx.attrs["eps"], hw, residual is not None)
    ins = tuple(("in", k) for k in range(2 + hw))
    res = (("value", residual),) if residual is not None else ()
    return Program([Dispatch(wgsl, _rows_grid(rows), (*ins, *res, ("out", 0)))] if rows else [])


def _layer_norm_backward_wgsl(lay: _Layout, rows: int, eps: float, hw: bool, residual: bool) -> str:
    names = ["g", "x"] + (["w"] if hw else []) + (["res"] if residual else []) + ["dx"]
    f = literal(lay.feat, "f32")
    per = range(lay.per)
    sums = [
        _group_sum(
            "s_1",
            lay.wg,
            "vec2<f32>",
            f"vec2<f32>({lay.hsum(_pairwise([f'x{k}' for k in per]))}, "
            f"{lay.hsum(_pairwise([f'g{k}' for k in per]))})",
        ),
        _group_sum(
            "s_2",
            lay.wg,
            "vec2<f32>",
            f"vec2<f32>({_pairwise([lay.dot(f'd{k}', f'd{k}') for k in per])}, "
            f"{_pairwise([lay.dot(f'g{k}', f'd{k}') for k in per])})",
        ),
    ]
    gh = "g[base + c{k}] * w[c{k}]" if hw else "g[base + c{k}]"
    plus = " + res[base + c{k}]" if residual else ""
    body = [
        *lay.load([("x", "x[base + c{k}]"), ("g", gh)]),
        "SUM0",
        f"let mean = s_1.x * (1.0 / {f});",
        f"let mean_g = s_1.y * (1.0 / {f});",
        *lay.centred("x", "d"),
        "SUM1",
        f"let rstd = 1.0 / sqrt(s_2.x * (1.0 / {f}) + {literal(eps, 'f32')});",
        f"let x_coef = s_2.y * (rstd * rstd * (1.0 / {f}));",
        *lay.store(f"dx[base + c{{k}}] = (g{{k}} - (d{{k}} * x_coef + mean_g)) * rstd{plus};"),
    ]
    return _held_kernel([(n, lay.ty) for n in names], lay, rows, sums, body)


def _layer_norm_backward_loop_wgsl(rows: int, feat: int, eps: float, hw: bool, residual: bool) -> str:
    wg = _wg(feat)
    names = ["g", "x"] + (["w"] if hw else []) + (["res"] if residual else []) + ["dx"]
    gh = "(g[off] * w[r])" if hw else "g[off]"
    f = literal(feat, "f32")
    plus = " + res[off]" if residual else ""
    body = [
        *_stats(wg, feat, eps),
        *_row_sum(gh, "sum_g", wg, feat),
        *_row_sum(f"{gh} * (x[off] - mean)", "sum_gx", wg, feat),
        f"let mean_g = sum_g * (1.0 / {f});",
        f"let x_coef = sum_gx * (rstd * rstd * (1.0 / {f}));",
        f"for (var r = lid; live && r < {feat}; r += {wg}) {{ let off = base + r;"
        f" dx[off] = ({gh} - ((x[off] - mean) * x_coef + mean_g)) * rstd{plus}; }}",
    ]
    return _row_kernel(names, wg, rows, body).replace("FEAT", str(feat))


@gpu_lowering("layer_norm_weight_grad")
def _layer_norm_weight_grad(ctx: LoweringContext) -> Program:
    return layer_norm_weight_grad_program(ctx)


def _row_stats_wgsl(rows: int, feat: int, eps: float) -> str:
    """Each row's mean and rstd to ``st[2 o]``, ``st[2 o + 1]``."""
    lay = _layout(feat)
    if lay is None:
        wg = _wg(feat)
        body = [*_stats(wg, feat, eps), "if (lid == 0 && live) { st[2 * o] = mean; st[2 * o + 1] = rstd; }"]
        return _row_kernel(["x", "st"], wg, rows, body).replace("FEAT", str(feat))
    sums, stats = _held_stats(lay, eps)
    body = [
        *lay.load([("x", "x[base + c{k}]")]),
        *stats,
        "if (lid == 0) { st[2 * o] = mean; st[2 * o + 1] = rstd; }",
    ]
    return _held_kernel([("x", lay.ty), ("st", "f32")], lay, rows, sums, body)


def layer_norm_weight_grad_program(ctx: LoweringContext, bias_grad: int | None = None) -> Program:
    """The weight gradient ``sum over rows of g * (x - mean) * rstd`` (stats, then a column sum);
    with ``bias_grad`` (a value id) the same column pass also sums ``g`` into that value: the bias
    gradient, ``sum_to(g)``, without reading ``g`` again (a plan merges the two)."""
    shape = tuple(int(d) for d in ctx.in_types[1].shape)
    feat = math.prod(int(d) for d in ctx.attrs["normalized_shape"])
    rows = math.prod(shape) // max(feat, 1)
    if not rows:
        return per_element(ctx.name, [], "float32", feat, [store("out", "float32", "i", "0.0")])
    stats = _row_stats_wgsl(rows, feat, ctx.attrs["eps"])
    col_bindings = [("g", "float32"), ("x", "float32"), ("st", "float32")]
    terms = ["g[off] * ((x[off] - st[2 * r]) * st[2 * r + 1])"] + (
        ["g[off]"] if bias_grad is not None else []
    )
    (col, total), chunks = column_sum(rows, feat, terms, col_bindings, "float32")
    g1, g2 = column_sum_grids(feat, chunks)
    outs = (("out", 0),) + ((("value", bias_grad),) if bias_grad is not None else ())
    return Program(
        [
            Dispatch(stats, _rows_grid(rows), (("in", 1), ("tmp", 0))),
            Dispatch(col, g1, (("in", 0), ("in", 1), ("tmp", 0), ("tmp", 1))),
            Dispatch(total, g2, (("tmp", 1), *outs)),
        ],
        temps=[8 * rows, 4 * chunks * feat * len(terms)],
        name=ctx.name,
    )


@gpu_lowering("embedding")
def _embedding(ctx: LoweringContext) -> Program:
    vocab, dim = (int(d) for d in ctx.in_types[0].shape)
    count = math.prod(int(d) for d in ctx.out_type.shape)
    idt = ctx.in_types[1].dtype
    body = [
        f"let row = {load('in1', idt, f'(i / {dim})')};",
        *check_index("row", vocab, False),
        store("out", "float32", "i", f"in0[row_ok * {dim} + i % {dim}]"),
    ]
    return per_element(ctx.name, ["float32", idt], "float32", count, body, index_check=("id", vocab, False))
