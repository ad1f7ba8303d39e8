"""layer_norm forward and backward as workgroup-per-row kernels; embedding; the fused optimizer updates.

A layer_norm row is contiguous (the normalised axes trail); one workgroup walks it several times
(mean, centred variance, then the output), combining partial sums in workgroup memory. The weight
gradient first writes each row's mean and rstd to a scratch buffer, then sums over rows per
feature (:func:`~asg.gpu.kernels.reduction.column_sum`: coalesced, rows in parallel chunks).
"""

from __future__ import annotations

import math

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


def _features(ctx: LoweringContext) -> tuple[int, int]:
    shape = tuple(int(d) for d in ctx.in_types[0].shape)
    feat = math.prod(int(d) for d in ctx.attrs["normalized_shape"])
    return math.prod(shape) // max(feat, 1), feat


def layer_norm_wgsl(
    rows: int, feat: int, eps: float, hw: bool, hb: bool, prologue: Prologue | None = None
) -> str:
    """The layer_norm kernel: buffers x (or ``prologue``'s), w, b, y; one workgroup per row.

    With a prologue, ``prologue(i)`` computes each input element (three times: two statistics
    passes and the output pass) and ``prologue_store(i)``, used in the output pass, also stores the
    group's values needed elsewhere.
    """
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
    kernel (a plan folds the ``add`` that follows)."""
    rows, feat = _features(ctx)
    rows = math.prod(int(d) for d in ctx.in_types[1].shape) // max(feat, 1)
    wg = _wg(feat)
    hw = ctx.attrs["has_weight"]
    names = ["g", "x"] + (["w"] if hw else []) + (["res"] if residual is not None else []) + ["dx"]
    gh = "(g[off] * w[r])" if hw else "g[off]"
    f = literal(feat, "f32")
    plus = " + res[off]" if residual is not None else ""
    body = [
        *_stats(wg, feat, ctx.attrs["eps"]),
        *_row_sum(gh, "sum_g", wg, feat),
        *_row_sum(f"{gh} * (x[off] - mean)", "sum_gx", wg, feat),
        f"let mean_g = sum_g * (1.0 / {f});",
        f"let x_coef = sum_gx * (rstd * rstd * (1.0 / {f}));",
        f"for (var r = lid; live && r < {feat}; r += {wg}) {{ let off = base + r;"
        f" dx[off] = ({gh} - ((x[off] - mean) * x_coef + mean_g)) * rstd{plus}; }}",
    ]
    wgsl = _row_kernel(names, wg, rows, body).replace("FEAT", str(feat))
    ins = tuple(("in", k) for k in range(2 + hw))
    res = (("value", residual),) if residual is not None else ()
    return Program([Dispatch(wgsl, _rows_grid(rows), (*ins, *res, ("out", 0)))] if rows else [])


@gpu_lowering("layer_norm_weight_grad")
def _layer_norm_weight_grad(ctx: LoweringContext) -> Program:
    return layer_norm_weight_grad_program(ctx)


def layer_norm_weight_grad_program(ctx: LoweringContext, bias_grad: int | None = None) -> Program:
    """The weight gradient ``sum over rows of g * (x - mean) * rstd`` (stats, then a column sum);
    with ``bias_grad`` (a value id) the same column pass also sums ``g`` into that value: the bias
    gradient, ``sum_to(g)``, without reading ``g`` again (a plan merges the two)."""
    shape = tuple(int(d) for d in ctx.in_types[1].shape)
    feat = math.prod(int(d) for d in ctx.attrs["normalized_shape"])
    rows = math.prod(shape) // max(feat, 1)
    wg = _wg(feat)
    stats_body = [
        *_stats(wg, feat, ctx.attrs["eps"]),
        "if (lid == 0 && live) { st[2 * o] = mean; st[2 * o + 1] = rstd; }",
    ]
    stats = _row_kernel(["x", "st"], wg, rows, stats_body).replace("FEAT", str(feat))
    if not rows:
        return per_element(ctx.name, [], "float32", feat, [store("out", "float32", "i", "0.0")])
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
