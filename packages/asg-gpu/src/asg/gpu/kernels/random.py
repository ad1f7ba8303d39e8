"""The random ops on the GPU, from the same counter-based streams as asg-core's numpy kernels.

Keys are int64 held as two 32-bit words; ``mix64`` (splitmix64's finaliser) runs on ``vec2<u32>``
pairs with a 32x32->64 multiply built from 16-bit halves; ``fold_in`` writes both words, so a key that
is a graph output reads back as the int64 numpy computes. ``random_uniform`` and ``bernoulli`` are
bit-identical to numpy (integer hashing, then exact float32 scaling); ``random_normal`` uses float32
``log``/``cos`` of the GPU, so it matches numpy to a few ulps, not bit for bit.
"""

from __future__ import annotations

import math

from asg.core.lowering import LoweringContext

from ..codegen import VTYPE, Program, literal, per_element, store
from ._base import gpu_lowering

_GOLDEN = 0x9E3779B97F4A7C15
_FOLD_SALT = 0xD1B54A32D192ED03
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _c64(v: int) -> str:
    return f"vec2<u32>({v & 0xFFFFFFFF}u, {v >> 32}u)"


FUNCTIONS = f"""
fn mul32(a: u32, b: u32) -> vec2<u32> {{
    let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
    let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0; let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}}
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {{
    let p = mul32(a.x, b.x);
    return vec2<u32>(p.x, p.y + a.x * b.y + a.y * b.x);
}}
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {{
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}}
fn shr64(a: vec2<u32>, n: u32) -> vec2<u32> {{
    return vec2<u32>((a.x >> n) | (a.y << (32u - n)), a.y >> n);
}}
fn mix64(z0: vec2<u32>) -> vec2<u32> {{
    var z = z0 ^ shr64(z0, 30u);
    z = mul64(z, {_c64(_MIX1)});
    z = z ^ shr64(z, 27u);
    z = mul64(z, {_c64(_MIX2)});
    return z ^ shr64(z, 31u);
}}
fn hash32(x0: u32) -> u32 {{
    var x = x0;
    x = x ^ (x >> 16u); x = x * 0x7feb352du; x = x ^ (x >> 15u); x = x * 0x846ca68bu; x = x ^ (x >> 16u);
    return x;
}}
fn uniform01(w: u32) -> f32 {{ return f32(w >> 8u) * (1.0 / 16777216.0); }}
fn log1p_f(x: f32) -> f32 {{
    let u = 1.0 + x;
    if (u == 1.0) {{ return x; }}
    return log(u) * x / (u - 1.0);
}}
"""


def _key_words(slot: str) -> str:
    return f"mix64(vec2<u32>(bitcast<u32>({slot}[0]), bitcast<u32>({slot}[1])))"


def _program(ctx: LoweringContext, body: list[str], inputs: list[str], count: int) -> Program:
    prog = per_element(ctx.name, inputs, ctx.out_type.dtype, count, body)
    for j, d in enumerate(prog.dispatches):
        prog.dispatches[j] = type(d)(
            d.wgsl.replace("\n@compute", FUNCTIONS + "\n@compute", 1), d.grid, d.args
        )
    return prog


def _word(index: str) -> str:
    return f"hash32(hash32(u32({index}) ^ k.x) ^ k.y)"


@gpu_lowering("fold_in", f16=True)
def _fold_in(ctx: LoweringContext) -> Program:
    from ..codegen import broadcast_strides, coords, offset

    out = tuple(int(d) for d in ctx.out_type.shape)
    body = coords(out)
    words = []
    for k, t in enumerate(ctx.in_types):
        st = broadcast_strides(tuple(int(d) for d in t.shape), out)
        at = f"({offset(st)})"
        if t.dtype == "int64":
            words.append(f"vec2<u32>(bitcast<u32>(in{k}[2 * {at}]), bitcast<u32>(in{k}[2 * {at} + 1]))")
        else:  # int32: sign-extended
            words.append(f"vec2<u32>(bitcast<u32>(in{k}[{at}]), select(0u, 0xffffffffu, in{k}[{at}] < 0))")
    body += [
        f"let a = mix64(add64({words[0]}, {_c64(_GOLDEN)}));",
        f"let b = mix64(add64({words[1]}, {_c64(_FOLD_SALT)}));",
        "let m = mix64(a ^ b);",
        "out[2 * i] = bitcast<i32>(m.x);",
        "out[2 * i + 1] = bitcast<i32>(m.y);",
    ]
    return _program(ctx, body, [t.dtype for t in ctx.in_types], math.prod(out))


@gpu_lowering("random_uniform", f16=True)
def _uniform(ctx: LoweringContext) -> Program:
    low, high = ctx.attrs["low"], ctx.attrs["high"]
    value = f"uniform01({_word('i')})"
    if (low, high) != (0.0, 1.0):
        value = f"({value} * {literal(high - low, 'f32')} + {literal(low, 'f32')})"
    body = [f"let k = {_key_words('in0')};", store("out", ctx.out_type.dtype, "i", value)]
    return _program(ctx, body, ["int64"], math.prod(int(d) for d in ctx.out_type.shape))


@gpu_lowering("random_normal", f16=True)
def _normal(ctx: LoweringContext) -> Program:
    body = [
        f"let k = {_key_words('in0')};",
        f"let u0 = uniform01({_word('2 * i')});",
        f"let u1 = uniform01({_word('2 * i + 1')});",
        "let radius = sqrt(log1p_f(-u0) * -2.0);",
        f"let angle = u1 * {literal(2.0 * math.pi, 'f32')};",
        store("out", ctx.out_type.dtype, "i", "radius * cos(angle)"),
    ]
    return _program(ctx, body, ["int64"], math.prod(int(d) for d in ctx.out_type.shape))


@gpu_lowering("bernoulli", f16=True)
def _bernoulli(ctx: LoweringContext) -> Program:
    threshold = round(ctx.attrs["p"] * 4294967296.0)
    dtype = ctx.out_type.dtype
    hit = "true" if threshold >= 1 << 32 else f"({_word('i')} < {threshold}u)"
    t = VTYPE[dtype]
    value = hit if t == "bool" else f"select({literal(0, t)}, {literal(1, t)}, {hit})"
    body = [f"let k = {_key_words('in0')};", store("out", dtype, "i", value)]
    return _program(ctx, body, ["int64"], math.prod(int(d) for d in ctx.out_type.shape))
