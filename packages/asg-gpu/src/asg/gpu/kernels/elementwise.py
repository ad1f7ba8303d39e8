"""Elementwise ops from one table (op name -> WGSL expression), with numpy broadcasting via strides.

Each input is read at the output's coordinates through its broadcast strides (a (1, N) bias over a
(B, N) batch has stride 0 on axis 0), or at ``i`` when its shape is the output's; a one-element
constant is inlined as a literal. Operands are converted to the op's computation type first, as
numpy's type promotion does (``int32 + float32`` adds in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from asg.core.dtypes import promote
from asg.core.lowering import LoweringContext

from ..codegen import (
    ITEMSIZE,
    VTYPE,
    Dispatch,
    Program,
    broadcast_strides,
    chunks,
    convert,
    coords,
    literal,
    load,
    offset,
    per_element,
    store,
    window,
)
from ..device import get_device
from ._base import const_scalar, gpu_lowering

# WGSL functions the table's expressions call (prepended to kernels that use them).
FUNCTIONS = {
    "erf_f": """
fn erf_f(x0: f32) -> f32 {
    let x = clamp(x0, -4.0, 4.0);
    let x2 = x * x;
    var n = -2.72614225801306e-10;
    n = n * x2 + 2.77068142495902e-08; n = n * x2 - 2.10102402082508e-06; n = n * x2 - 5.69250639462346e-05;
    n = n * x2 - 7.34990630326855e-04; n = n * x2 - 2.95459980854025e-03; n = n * x2 - 1.60960333262415e-02;
    var d = -1.45660718464996e-05;
    d = d * x2 - 2.13374055278905e-04; d = d * x2 - 1.68282697438203e-03; d = d * x2 - 7.37332916720468e-03;
    d = d * x2 - 1.42647390514189e-02;
    return select(clamp(x * n / d, -1.0, 1.0), x0, is_nan(x0));
}""",
    "sigmoid_f": """
fn sigmoid_f(x: f32) -> f32 {
    let e = exp(-abs(x));
    let s = 1.0 / (1.0 + e);
    return select(s, s * e, x < 0.0);
}""",
    "tanh_f": """
fn tanh_f(x: f32) -> f32 { return select(tanh(clamp(x, -15.0, 15.0)), x, is_nan(x)); }""",
    "pow_f": """
fn pow_f(x: f32, y: f32) -> f32 {
    if (y == 0.0) { return 1.0; }
    if (is_nan(x) || is_nan(y)) { return x + y; }
    let ay = abs(y);
    if (x == 0.0) {
        let odd = fract(ay * 0.5) == 0.5;
        if (y > 0.0) { return select(0.0, x, odd); }
        return select(bitcast<f32>(0x7f800000u), 1.0 / x, odd);
    }
    let r = exp2(y * log2(abs(x)));
    if (x > 0.0) { return r; }
    if (floor(y) != y) { return bitcast<f32>(0x7fc00000u); }
    return select(r, -r, fract(ay * 0.5) == 0.5);
}""",
    "pow_i": """
fn pow_i(x: i32, y: i32) -> i32 {
    var r = 1; var b = x; var e = y;
    if (e < 0) { return select(0, select(-1, 1, (e & 1) == 0), x == -1) + select(0, 1, x == 1); }
    loop { if (e == 0) { break; } if ((e & 1) == 1) { r = r * b; } b = b * b; e = e >> 1u; }
    return r;
}""",
    "max_f": """
fn max_f(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, is_nan(a) || is_nan(b)); }""",
    "min_f": """
fn min_f(a: f32, b: f32) -> f32 { return select(min(a, b), a + b, is_nan(a) || is_nan(b)); }""",
    "mul_zero_f": """
fn mul_zero_f(x: f32, zero: f32) -> f32 {
    if (is_nan(x) || is_inf(x)) { return bitcast<f32>(0x7fc00000u); }
    return bitcast<f32>((bitcast<u32>(x) ^ bitcast<u32>(zero)) & 0x80000000u);
}""",
    # x rounded to the nearest float16 (ties to even) and back, in integer arithmetic: NVIDIA's compiler
    # folds both f32(f16(x)) and unpack2x16float(pack2x16float(x)) to x, so a fused float16 chain
    # kept float32 precision and never overflowed to inf (the loss scaler's overflow went unseen)
    "round_f16": """
fn round_f16(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let a = bits & 0x7fffffffu;
    let sign = bits & 0x80000000u;
    if (a > 0x7f800000u) { return x; }
    if (a >= 0x477ff000u) { return bitcast<f32>(sign | 0x7f800000u); }
    if (a >= 0x38800000u) { return bitcast<f32>(sign | ((a + 0xfffu + ((a >> 13u) & 1u)) & 0xffffe000u)); }
    return bitcast<f32>(sign | bitcast<u32>(round(bitcast<f32>(a) * 16777216.0) * 5.9604644775390625e-08));
}""",
    "softplus_f": """
fn softplus_f(x: f32, beta: f32, threshold: f32) -> f32 {
    let bx = x * beta;
    let soft = (max(bx, 0.0) + log(1.0 + exp(-abs(bx)))) / beta;
    return select(soft, x, bx > threshold);
}""",
}

Expr = Callable[[Sequence[str], Mapping[str, Any], str], str]


def _f(name: str) -> Expr:
    return lambda a, attrs, t: f"{name}({', '.join(a)})"


def _minmax(fname: str, builtin: str) -> Expr:
    return lambda a, attrs, t: f"{fname}({a[0]}, {a[1]})" if t == "f32" else f"{builtin}({a[0]}, {a[1]})"


def _clamp(a: Sequence[str], attrs: Mapping[str, Any], t: str) -> str:
    x = a[0]
    if t == "f32":
        out = x
        if attrs.get("min") is not None:
            out = f"max({out}, {literal(attrs['min'], t)})"
        if attrs.get("max") is not None:
            out = f"min({out}, {literal(attrs['max'], t)})"
        return f"select({out}, {x}, is_nan({x}))"
    out = x
    if attrs.get("min") is not None:
        out = f"max({out}, {literal(attrs['min'], t)})"
    if attrs.get("max") is not None:
        out = f"min({out}, {literal(attrs['max'], t)})"
    return out


# The float zeros as :func:`literal` renders them: a product with one is folded to 0 by shader
# compilers (Mesa's NIR does; WGSL lets implementations assume no infinity or NaN), so inf * 0.0
# would give 0, not NaN, and a finiteness probe such as sum(g * 0.0) == 0 would always pass.
_F32_ZEROS = frozenset({literal(0.0, "f32"), literal(-0.0, "f32"), convert(literal(0, "i32"), "i32", "f32")})


def _mul(a: Sequence[str], attrs: Mapping[str, Any], t: str) -> str:
    """``a0 * a1``; by a literal float zero through :data:`FUNCTIONS` ``mul_zero_f`` (IEEE: NaN for inf or NaN)."""
    if t == "bool":
        return f"({a[0]} && {a[1]})"
    if t == "f32" and (a[0] in _F32_ZEROS or a[1] in _F32_ZEROS):
        x, zero = (a[1], a[0]) if a[0] in _F32_ZEROS else (a[0], a[1])
        return f"mul_zero_f({x}, {zero})"
    return f"({a[0]} * {a[1]})"


def _not_equal(a: Sequence[str], attrs: Mapping[str, Any], t: str) -> str:
    # WGSL's float != compiles to an ordered comparison on some drivers (lavapipe: NaN != NaN is false)
    return f"(!({a[0]} == {a[1]}))" if t == "f32" else f"({a[0]} != {a[1]})"


def _sign(a: Sequence[str], attrs: Mapping[str, Any], t: str) -> str:
    if t == "f32":
        return f"select(sign({a[0]}), {a[0]}, is_nan({a[0]}))"
    if t == "bool":
        return a[0]
    return f"sign({a[0]})"


def _gelu(a: Sequence[str], attrs: Mapping[str, Any], t: str) -> str:
    x = a[0]
    if attrs.get("approximate") == "tanh":
        return f"(0.5 * {x} * (1.0 + tanh_f(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x}))))"
    return f"(0.5 * {x} * (erf_f({x} * 0.7071067811865476) + 1.0))"


# op -> (expression, how the computation type is chosen, uses)
#   "out": the output's value type; "f32": float; "promote": the inputs' promoted dtype;
#   "bool": operands as bool.
TABLE: dict[str, tuple[Expr, str]] = {
    "add": (lambda a, _, t: f"({a[0]} + {a[1]})" if t != "bool" else f"({a[0]} || {a[1]})", "out"),
    "sub": (lambda a, _, t: f"({a[0]} - {a[1]})", "out"),
    "mul": (_mul, "out"),
    "div": (lambda a, _, t: f"({a[0]} / {a[1]})", "out"),
    "pow": (lambda a, _, t: f"pow_f({a[0]}, {a[1]})" if t == "f32" else f"pow_i({a[0]}, {a[1]})", "out"),
    "maximum": (_minmax("max_f", "max"), "out"),
    "minimum": (_minmax("min_f", "min"), "out"),
    "neg": (lambda a, _, t: f"(-{a[0]})", "out"),
    "exp": (_f("exp"), "out"),
    "log": (_f("log"), "out"),
    "sqrt": (_f("sqrt"), "out"),
    "rsqrt": (lambda a, _, t: f"(1.0 / sqrt({a[0]}))", "out"),
    "abs": (lambda a, _, t: f"abs({a[0]})" if t != "bool" else a[0], "out"),
    "sign": (_sign, "out"),
    "erf": (_f("erf_f"), "out"),
    "clamp": (_clamp, "out"),
    "less": (lambda a, _, t: f"({a[0]} < {a[1]})", "promote"),
    "less_equal": (lambda a, _, t: f"({a[0]} <= {a[1]})", "promote"),
    "greater": (lambda a, _, t: f"({a[0]} > {a[1]})", "promote"),
    "greater_equal": (lambda a, _, t: f"({a[0]} >= {a[1]})", "promote"),
    "equal": (lambda a, _, t: f"({a[0]} == {a[1]})", "promote"),
    "not_equal": (_not_equal, "promote"),
    "logical_and": (lambda a, _, t: f"({a[0]} && {a[1]})", "bool"),
    "logical_or": (lambda a, _, t: f"({a[0]} || {a[1]})", "bool"),
    "logical_not": (lambda a, _, t: f"(!{a[0]})", "bool"),
    "relu": (lambda a, _, t: f"select(max({a[0]}, 0.0), {a[0]}, is_nan({a[0]}))", "out"),
    "leaky_relu": (
        lambda a, at, t: f"select({a[0]} * {literal(at['negative_slope'], t)}, {a[0]}, {a[0]} > 0.0)",
        "out",
    ),
    "elu": (
        lambda a, at, t: (
            f"select({literal(at['alpha'], t)} * (exp(min({a[0]}, 0.0)) - 1.0), {a[0]}, {a[0]} > 0.0)"
        ),
        "out",
    ),
    "sigmoid": (_f("sigmoid_f"), "out"),
    "tanh": (_f("tanh_f"), "out"),
    "silu": (lambda a, _, t: f"({a[0]} * sigmoid_f({a[0]}))", "out"),
    "softplus": (
        lambda a, at, t: f"softplus_f({a[0]}, {literal(at['beta'], t)}, {literal(at['threshold'], t)})",
        "out",
    ),
    "gelu": (_gelu, "out"),
}


def functions_for(text: str, defined: str = "") -> str:
    """The :data:`FUNCTIONS` that ``text`` calls (and those they call), as WGSL source; those already
    in the source ``defined`` left out (two generated functions of one kernel)."""
    used = [src for name, src in FUNCTIONS.items() if f"{name}(" in text]
    for name, src in FUNCTIONS.items():  # one level of helpers calling helpers
        if src not in used and any(f"{name}(" in u for u in used):
            used.append(src)
    return "\n".join(src for src in used if src not in defined)


def operand(ctx: LoweringContext, k: int, ctype: str, bound: list[int]) -> tuple[str, list[str]]:
    """Input ``k`` read at the output's coordinates, converted to ``ctype``; appends to ``bound``."""
    in_type = ctx.in_types[k]
    src = VTYPE[in_type.dtype]
    value = const_scalar(ctx, k)
    if value is not None:
        return convert(literal(value, src), src, ctype), []
    slot = len(bound)
    bound.append(k)
    out_shape = tuple(ctx.out_type.shape)
    in_shape = tuple(in_type.shape)
    if in_shape == out_shape:
        return convert(load(f"in{slot}", in_type.dtype, "i"), src, ctype), []
    st = broadcast_strides(in_shape, out_shape)
    return convert(load(f"in{slot}", in_type.dtype, f"({offset(st)})"), src, ctype), []


def map_program(
    ctx: LoweringContext,
    expr: Callable[[list[str]], str],
    ctype: str,
    inputs: Sequence[int],
    result: str | None = None,
) -> Program:
    """One thread per output element: ``out[i] = expr(operands)`` with broadcasting reads.

    Operands are converted to ``ctype``; the expression's value has type ``result`` (default ``ctype``).
    """
    bound: list[int] = []
    operands = [operand(ctx, k, ctype, bound)[0] for k in inputs]
    return _with_operands(ctx, expr(operands), result or ctype, bound)


def _ctype(ctx: LoweringContext, mode: str) -> str:
    if mode == "out":
        return VTYPE[ctx.out_type.dtype]
    if mode == "bool":
        return "bool"
    dtype = ctx.in_types[0].dtype
    for t in ctx.in_types[1:]:
        dtype = promote(dtype, t.dtype)
    return VTYPE[dtype]


def _table_rule(op: str) -> None:
    expr, mode = TABLE[op]

    @gpu_lowering(op, in_place=True, f16=True)
    def rule(ctx: LoweringContext) -> Program:
        ctype = _ctype(ctx, mode)
        result = "bool" if mode == "promote" else ctype
        return map_program(ctx, lambda a: expr(a, ctx.attrs, ctype), ctype, range(len(ctx.in_types)), result)


for _op in TABLE:
    _table_rule(_op)


@gpu_lowering("where", in_place=True, f16=True)
def _where(ctx: LoweringContext) -> Program:
    ctype = VTYPE[ctx.out_type.dtype]
    bound: list[int] = []
    cond = operand(ctx, 0, "bool", bound)[0]
    a = operand(ctx, 1, ctype, bound)[0]
    b = operand(ctx, 2, ctype, bound)[0]
    return _with_operands(ctx, f"select({b}, {a}, {cond})", ctype, bound)


@gpu_lowering("cast", in_place=True, f16=True)
def _cast(ctx: LoweringContext) -> Program:
    src = VTYPE[ctx.in_types[0].dtype]
    return map_program(ctx, lambda a: a[0], src, [0])


def _with_operands(ctx: LoweringContext, value: str, ctype: str, bound: list[int]) -> Program:
    """The program storing ``value`` (written over the operands of inputs ``bound``).

    One dispatch; several over byte windows of the output and the inputs of its shape when those
    exceed the adapter's largest storage binding (broadcast inputs are bound whole).
    """
    out_shape = tuple(ctx.out_type.shape)
    out_dtype = ctx.out_type.dtype
    same = [tuple(ctx.in_types[k].shape) == out_shape for k in bound]
    needs_coords = not all(same)
    count = math.prod(out_shape)
    dtypes = [ctx.in_types[k].dtype for k in bound]
    pieces = chunks(
        count,
        [ITEMSIZE[d] for d, s in zip(dtypes, same, strict=True) if s] + [ITEMSIZE[out_dtype]],
        get_device().max_binding,
    )
    result = store("out", out_dtype, "i", convert(value, ctype, VTYPE[out_dtype]))
    prog = Program([], name=ctx.name)
    for start, n in pieces:
        if len(pieces) == 1:
            body = (coords(out_shape) if needs_coords else []) + [result]
        else:  # same-shape operands are read at i of their window; coordinates come from i + start
            body = [f"let gi = i + {start};", *(coords(out_shape, "gi") if needs_coords else []), result]
        piece = per_element(ctx.name, dtypes, out_dtype, n, body)
        for d in piece.dispatches:
            args = tuple(("in", bound[k]) if role == "in" else (role, k) for role, k in d.args)
            wgsl = d.wgsl.replace("\n@compute", functions_for(d.wgsl) + "\n@compute", 1)
            windows: tuple[tuple[int, int] | None, ...] = ()
            if len(pieces) > 1:
                windows = (
                    *(window(start, n, dt) if s else None for dt, s in zip(dtypes, same, strict=True)),
                    window(start, n, out_dtype),
                )
            prog.dispatches.append(Dispatch(wgsl, d.grid, args, windows))
    return prog


def emit(
    op: str,
    attrs: Mapping[str, Any],
    in_dtypes: Sequence[str],
    out_dtype: str,
    operands: Sequence[tuple[str, str]],
) -> str:
    """The WGSL expression of elementwise ``op`` over ``operands`` ((expression, WGSL type) pairs).

    The result has the output dtype's value type; it is the formula of the op's own kernel (inside
    one fused kernel the shader compiler may still contract ``a * b + c`` into an fma: 1-2 ulp).
    """
    value = _emit(op, attrs, in_dtypes, out_dtype, operands)
    # a float16 value is rounded where numpy's op rounds it, also inside a fused kernel
    return f"round_f16({value})" if out_dtype == "float16" else value


def _emit(
    op: str,
    attrs: Mapping[str, Any],
    in_dtypes: Sequence[str],
    out_dtype: str,
    operands: Sequence[tuple[str, str]],
) -> str:
    out_t = VTYPE[out_dtype]
    if op == "where":
        cond = convert(*operands[0], "bool")
        a, b = (convert(e, t, out_t) for e, t in operands[1:])
        return f"select({b}, {a}, {cond})"
    if op == "cast":
        return convert(operands[0][0], operands[0][1], out_t)
    expr, mode = TABLE[op]
    if mode == "out":
        ctype = out_t
    elif mode == "bool":
        ctype = "bool"
    else:
        dtype = in_dtypes[0]
        for d in in_dtypes[1:]:
            dtype = promote(dtype, d)
        ctype = VTYPE[dtype]
    args = [convert(e, t, ctype) for e, t in operands]
    return convert(expr(args, attrs, ctype), "bool" if mode == "promote" else ctype, out_t)


FUSIBLE = frozenset(TABLE) | {"where", "cast"}
