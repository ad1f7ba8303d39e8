"""Fused attention (FlashAttention-2 style): the forward, its log-sum-exp and the three gradients.

One generator (:func:`attention_wgsl`) writes all five kernels. A workgroup of 16x16 invocations
owns a block of ``BR`` rows (query rows for ``attention``, ``attention_lse`` and
``attention_grad_q``; key rows for ``attention_grad_k`` and ``attention_grad_v``) and walks the
other side (keys, or queries) in blocks of ``BC`` rows. Per block:

1. the ``BR x BC`` score tile ``S = own @ other^T`` (and, for dq/dk, ``dP = dout v^T``) is
   computed as a register-tiled matmul (each invocation owns 4 x BC/16 named accumulators at rows
   ``ty + 16 i``, columns ``tx + 16 j``), both operands streamed through workgroup memory in
   slices of 16 along the feature axis;
2. the tile is masked (bounds, ``causal``, the bool mask read with broadcast strides) and turned
   into what the second product needs, written transposed to workgroup memory ``Ss[c][r]``:
   the probabilities ``P`` (forward: an online softmax, ``BR / 64 * 4`` invocations per row keep
   the running max and sum; gradients: ``exp(s - lse)``), or ``dS = P * (dP - delta)``;
3. the row accumulators (``4 x ceil(D/16)`` named variables per invocation) take ``Ss^T @ X`` with
   ``X`` (v, k, q or dout) streamed in slices of 16 rows.

Causal blocks past the diagonal are never visited. A masked score is a large negative finite
sentinel rather than ``-inf`` (WGSL has no infinity literal and may assume none), and
probabilities are zeroed explicitly where masked, so a row with no key gives 0 (lse ``-inf``).
Float16 runs through float32 scratch (:func:`~asg.gpu.kernels._base.via_float32`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from asg.core.lowering import LoweringContext

from ..codegen import Dispatch, Program, broadcast_strides, declare, literal, strides
from ._base import gpu_lowering

THREADS = 16  # invocations per side of the workgroup
KC = 16  # feature (or row) slice streamed through workgroup memory per step
BR = 64  # own rows per workgroup
NEG = "f32(-3e38)"  # a masked score; probabilities are zeroed where it appears
SHARED_LIMIT = 32768  # bytes of workgroup memory (lavapipe's limit; NVIDIA has 48 KiB)


@dataclass(frozen=True)
class Role:
    """What one of the five kernels computes.

    ``own_query``: the workgroup's rows are queries (else keys); ``products``: (accumulator
    prefix, own buffer, other buffer) of the score-tile products; ``x``: the other-side operand of
    the second product (None: no second product, the lse kernel); ``value``: what the tile becomes
    (``"softmax"``, ``"p"`` or ``"ds"``); ``scaled``: the result is multiplied by ``scale``.
    """

    own_query: bool
    products: tuple[tuple[str, str, str], ...]
    x: str | None
    value: str
    scaled: bool


ROLES = {
    "attention": Role(True, (("s", "q", "k"),), "v", "softmax", False),
    "attention_lse": Role(True, (("s", "q", "k"),), None, "softmax", False),
    "attention_grad_q": Role(True, (("s", "q", "k"), ("dp", "g", "v")), "k", "ds", True),
    "attention_grad_k": Role(False, (("s", "k", "q"), ("dp", "v", "g")), "q", "ds", True),
    "attention_grad_v": Role(False, (("s", "k", "q"),), "g", "p", False),
}
INPUTS = ("q", "k", "v", "g", "lse", "delta")  # the grad ops' inputs in order (the forward's: q, k, v)


@dataclass(frozen=True)
class Shapes:
    """The concrete problem: ``batch`` leading dims, lengths L (queries) and S (keys), feature sizes."""

    batch: tuple[int, ...]
    L: int
    S: int
    E: int
    Ev: int
    mask: tuple[int, ...] | None  # the bool mask's shape (broadcasting to (*batch, L, S)), or None

    def rows(self, name: str) -> tuple[int, int]:
        """(rows, row length) of each buffer per batch entry."""
        return {
            "q": (self.L, self.E),
            "k": (self.S, self.E),
            "v": (self.S, self.Ev),
            "g": (self.L, self.Ev),
            "lse": (self.L, 1),
            "delta": (self.L, 1),
        }[name]


def block_cols(shapes: Shapes, role: Role) -> int:
    """BC, the other-side rows per step: 64, or 32 where 64 would pass :data:`SHARED_LIMIT`."""
    for bc in (64, 32):
        if 4 * _shared_floats(shapes, role, bc) <= SHARED_LIMIT:
            return bc
    return 16


def _shared_floats(shapes: Shapes, role: Role, bc: int) -> int:
    d = _acc_width(shapes, role)
    dp = THREADS * -(-d // THREADS)
    b = max(KC * (bc + 1), KC * dp)
    stats = 256 + BR if role.value == "softmax" else 0
    return KC * (BR + 1) + b + bc * (BR + 1) + stats


def _acc_width(shapes: Shapes, role: Role) -> int:
    """D, the width of the accumulated rows (0 for the lse kernel)."""
    return 0 if role.x is None else shapes.rows(role.x)[1]


def attention_wgsl(
    op: str, shapes: Shapes, causal: bool, scale: float, bc: int | None = None
) -> tuple[str, list[str], tuple[int, int, int]]:
    """(WGSL, the buffers it binds in order, workgroup grid) of the kernel of ``op`` (one of :data:`ROLES`).

    The buffers are names from :data:`INPUTS` plus ``"mask"`` and ``"out"``.
    """
    role = ROLES[op]
    sh = shapes
    bc = bc or block_cols(sh, role)
    tm, tn = BR // THREADS, bc // THREADS
    d = _acc_width(sh, role)
    td = -(-d // THREADS)
    dp = THREADS * td
    n_own, n_other = (sh.L, sh.S) if role.own_query else (sh.S, sh.L)
    ap, sp = BR + 1, BR + 1  # pitches of As[k][r] and Ss[c][r] (padded against bank conflicts)
    bp = bc + 1
    st = 256 // BR  # invocations per row in the online softmax
    cpt = bc // st  # columns each of them handles
    used = ["q", "k", "v", "g", "lse", "delta"]
    need = {b for _, own, other in role.products for b in (own, other)} | ({role.x} if role.x else set())
    if role.value in ("p", "ds"):
        need |= {"lse"} | ({"delta"} if role.value == "ds" else set())
    names = [n for n in used if n in need] + (["mask"] if sh.mask is not None else []) + ["out"]
    count = math.prod(sh.batch)

    lines: list[str] = [
        "let z = i32(wid.y);",
        "let lid = i32(lidx);",
        f"let own0 = i32(wid.x) * {BR};",
        f"let tx = lid % {THREADS};",
        f"let ty = lid / {THREADS};",
    ]
    for name in names[:-1]:
        if name != "mask":
            rows, width = sh.rows(name)
            lines.append(f"let {name}_base = z * {rows * width};")
    if sh.mask is not None:
        full = (*sh.batch, sh.L, sh.S)
        mst = broadcast_strides(sh.mask, full)
        bst = strides(sh.batch)
        terms = [f"((z / {bst[k]}) % {sh.batch[k]}) * {mst[k]}" for k in range(len(sh.batch)) if mst[k]]
        lines.append(f"let mask_base = {' + '.join(terms) or '0'};")
        mask_q, mask_k = mst[-2], mst[-1]
    out_width = 1 if role.x is None else d
    lines.append(f"let out_base = z * {n_own * out_width};")

    def q_k(r: str, c: str) -> tuple[str, str]:
        """(query index, key index) of own row ``r`` and other row ``c`` (absolute)."""
        return (r, c) if role.own_query else (c, r)

    # ------------------------------------------------------------ per-row values of own query rows
    if role.value in ("p", "ds") and role.own_query:
        for i in range(tm):
            row = f"own0 + ty + {i * THREADS}"
            lines.append(f"let lse_{i} = _finite(lse[min(lse_base + {row}, {count * sh.L - 1})]);")
            if role.value == "ds":
                lines.append(f"let delta_{i} = delta[min(delta_base + {row}, {count * sh.L - 1})];")
    if role.value == "softmax":
        lines += [
            f"let sr = lid / {st};",
            f"let sp = lid % {st};",
            f"var m_run = {NEG};",
            "var l_part = 0.0;",
        ]
    for i in range(tm):
        for j in range(td):
            lines.append(f"var o_{i}_{j} = 0.0;")

    # ------------------------------------------------------------ the walk over the other side
    if causal:
        shift = sh.S - sh.L  # query i attends keys j <= i + shift
        if role.own_query:
            lines.append(f"let c_start = 0; let c_end = min({n_other}, own0 + {BR + shift});")
        else:
            lines.append(f"let c_start = max(0, own0 - {shift}); let c_end = {n_other};")
    else:
        lines.append(f"let c_start = 0; let c_end = {n_other};")
    lines.append(f"for (var c0 = c_start; c0 < c_end; c0 += {bc}) {{")
    body: list[str] = []
    for prefix, own, other in role.products:
        body += _product(prefix, own, other, sh, n_own, n_other, tm, tn, bc, ap, bp)
    # the tile, masked, as the second product's left operand
    if role.value in ("p", "ds") and not role.own_query:
        for j in range(tn):
            col = f"c0 + tx + {j * THREADS}"
            body.append(f"let lse_{j} = _finite(lse[min(lse_base + {col}, {count * sh.L - 1})]);")
            if role.value == "ds":
                body.append(f"let delta_{j} = delta[min(delta_base + {col}, {count * sh.L - 1})];")
    for i in range(tm):
        for j in range(tn):
            r, c = f"ty + {i * THREADS}", f"tx + {j * THREADS}"
            qi, kj = q_k(f"(own0 + {r})", f"(c0 + {c})")
            ok = [f"own0 + {r} < {n_own}", f"c0 + {c} < {n_other}"]
            if causal:
                ok.append(f"{kj} <= {qi} + {sh.S - sh.L}")
            if sh.mask is not None:
                idx = f"mask_base + {qi} * {mask_q} + {kj} * {mask_k}"
                ok.append(f"mask[min({idx}, {math.prod(sh.mask) - 1})] != 0u")
            s = f"s_{i}_{j} * {literal(scale, 'f32')}"
            if role.value == "softmax":
                val = f"select({NEG}, {s}, {' && '.join(ok)})"
            else:
                shift_ = f"lse_{i}" if role.own_query else f"lse_{j}"
                val = f"select(0.0, exp({s} - {shift_}), {' && '.join(ok)})"
                if role.value == "ds":
                    dl = f"delta_{i}" if role.own_query else f"delta_{j}"
                    val = f"{val} * (dp_{i}_{j} - {dl})"
            body.append(f"Ss[({c}) * {sp} + {r}] = {val};")
    body.append("workgroupBarrier();")
    if role.value == "softmax":
        body += _online_softmax(st, cpt, sp)
    if role.x is not None:
        if role.value == "softmax":  # rescale the rows by exp(m_old - m_new)
            for i in range(tm):
                body.append(f"{{ let al = alpha_s[ty + {i * THREADS}];")
                body += [f"  o_{i}_{j} = o_{i}_{j} * al;" for j in range(td)]
                body.append("}")
        body += _accumulate(role.x, sh, n_other, tm, td, dp, bc, sp)
    lines += [f"    {line}" for line in body]
    lines.append("}")

    # ------------------------------------------------------------ results
    if role.value == "softmax":
        lines += [
            "red[lid] = l_part;",
            "workgroupBarrier();",
            "if (sp == 0) {",
            "    var l = 0.0;",
            *[f"    l = l + red[sr * {st} + {p}];" for p in range(st)],
            "    alpha_s[sr] = l;",
        ]
        if role.x is None:
            inf = literal(float("-inf"), "f32")
            lines.append(
                f"    if (own0 + sr < {n_own}) {{ out[out_base + own0 + sr] = select(m_run + log(l), {inf}, l == 0.0); }}"
            )
        lines += ["}", "workgroupBarrier();"]
    if role.x is not None:
        for i in range(tm):
            r = f"ty + {i * THREADS}"
            lines.append(f"if (own0 + {r} < {n_own}) {{")
            if role.value == "softmax":
                lines.append(f"    let l = alpha_s[{r}]; let inv = select(1.0 / l, 0.0, l == 0.0);")
                factor = "inv"
            else:
                factor = literal(scale, "f32") if role.scaled else ""
            for j in range(td):
                c = f"tx + {j * THREADS}"
                value = f"o_{i}_{j} * {factor}" if factor else f"o_{i}_{j}"
                guard = f"if ({c} < {d}) " if d % THREADS else ""
                lines.append(f"    {guard}{{ out[out_base + (own0 + {r}) * {d} + {c}] = {value}; }}")
            lines.append("}")

    shared = [
        f"As: array<f32, {KC * ap}>",
        f"Bs: array<f32, {max(KC * bp, KC * dp)}>",
        f"Ss: array<f32, {bc * sp}>",
    ]
    if role.value == "softmax":
        shared += ["red: array<f32, 256>", f"alpha_s: array<f32, {BR}>"]
    decl = "\n".join(f"var<workgroup> {s};" for s in shared)
    bindings = [(n, "bool" if n == "mask" else "float32") for n in names]
    inner = "\n    ".join(lines)
    wgsl = f"""{declare(bindings)}
{decl}
fn _finite(x: f32) -> f32 {{ return select(x, 0.0, x < {NEG}); }}
@compute @workgroup_size({THREADS * THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {{
    {inner}
}}
"""
    return wgsl, names, (-(-n_own // BR), max(count, 1), 1)


def _tile_load(
    dst: str, pitch: int, buf: str, row0: str, nrows: int, tile_rows: int, width: int, k0: str
) -> list[str]:
    """Statements copying rows ``row0 ..`` (``tile_rows`` of them), columns ``k0 .. k0+KC`` of ``buf``
    (``nrows`` x ``width`` per batch entry) transposed into ``dst[k * pitch + r]``, zero outside."""
    lines = []
    total = tile_rows * KC
    for t in range(-(-total // (THREADS * THREADS))):
        e = f"lid + {t * THREADS * THREADS}" if t else "lid"
        lines += [
            f"{{ let e = {e}; let tr = e / {KC}; let tk = e % {KC}; let gr = {row0} + tr; let gk = {k0} + tk;",
            f"  if (e < {total}) {{ {dst}[tk * {pitch} + tr] = select(0.0, {buf}[{buf}_base + min(gr, {nrows - 1}) * {width} + min(gk, {width - 1})], gr < {nrows} && gk < {width}); }} }}",
        ]
    return lines


def _product(
    prefix: str,
    own: str,
    other: str,
    sh: Shapes,
    n_own: int,
    n_other: int,
    tm: int,
    tn: int,
    bc: int,
    ap: int,
    bp: int,
) -> list[str]:
    """``{prefix}_i_j = own[r] . other[c]`` over the feature axis, streamed in slices of KC."""
    width = sh.rows(own)[1]
    lines = [f"var {prefix}_{i}_{j} = 0.0;" for i in range(tm) for j in range(tn)]
    lines.append(f"for (var k0 = 0; k0 < {width}; k0 += {KC}) {{")
    lines += _tile_load("As", ap, own, "own0", n_own, BR, width, "k0")
    lines += _tile_load("Bs", bp, other, "c0", n_other, bc, width, "k0")
    lines.append("    workgroupBarrier();")
    lines.append(f"    for (var kk = 0; kk < {KC}; kk++) {{")
    lines += [f"        let a_{i} = As[kk * {ap} + ty + {i * THREADS}];" for i in range(tm)]
    lines += [f"        let b_{j} = Bs[kk * {bp} + tx + {j * THREADS}];" for j in range(tn)]
    lines += [
        f"        {prefix}_{i}_{j} = fma(a_{i}, b_{j}, {prefix}_{i}_{j});"
        for i in range(tm)
        for j in range(tn)
    ]
    lines += ["    }", "    workgroupBarrier();", "}"]
    return lines


def _online_softmax(st: int, cpt: int, sp: int) -> list[str]:
    """The forward's per-block softmax step: ``st`` invocations per row (``sr``, part ``sp``), each
    owning ``cpt`` columns of ``Ss``, update the running max ``m_run`` and their part of the sum,
    turn their scores into probabilities in place and publish the rows' ``alpha_s = exp(m_old - m_new)``."""
    col = f"(sp * {cpt} + cc) * {sp} + sr"
    return [
        f"{{ var mx = {NEG};",
        f"  for (var cc = 0; cc < {cpt}; cc++) {{ mx = max(mx, Ss[{col}]); }}",
        "  red[lid] = mx; }",
        "workgroupBarrier();",
        "{ var mb = m_run;",
        *[f"  mb = max(mb, red[sr * {st} + {p}]);" for p in range(st)],
        f"  let m_use = select(mb, 0.0, mb <= {NEG});",
        "  let alpha = exp(m_run - m_use);",
        "  var ls = 0.0;",
        f"  for (var cc = 0; cc < {cpt}; cc++) {{",
        f"      let s = Ss[{col}]; let p = select(exp(s - m_use), 0.0, s <= {NEG});",
        f"      Ss[{col}] = p; ls = ls + p;",
        "  }",
        "  l_part = l_part * alpha + ls;",
        "  m_run = mb;",
        "  if (sp == 0) { alpha_s[sr] = alpha; } }",
        "workgroupBarrier();",
    ]


def _accumulate(x: str, sh: Shapes, n_other: int, tm: int, td: int, dp: int, bc: int, sp: int) -> list[str]:
    """``o_i_j += sum_c Ss[c][r] * x[c0 + c][col]``, ``x`` streamed in slices of KC rows."""
    width = sh.rows(x)[1]
    total = KC * dp
    lines = [f"for (var kc = 0; kc < min({bc}, {n_other} - c0); kc += {KC}) {{"]
    for t in range(-(-total // (THREADS * THREADS))):
        e = f"lid + {t * THREADS * THREADS}" if t else "lid"
        lines += [
            f"    {{ let e = {e}; let kk = e / {dp}; let dd = e % {dp}; let gr = c0 + kc + kk;",
            f"      if (e < {total}) {{ Bs[e] = select(0.0, {x}[{x}_base + min(gr, {n_other - 1}) * {width} + min(dd, {width - 1})], gr < {n_other} && dd < {width}); }} }}",
        ]
    lines += [
        "    workgroupBarrier();",
        f"    for (var kk = 0; kk < {KC}; kk++) {{",
        *[f"        let a_{i} = Ss[(kc + kk) * {sp} + ty + {i * THREADS}];" for i in range(tm)],
        *[f"        let b_{j} = Bs[kk * {dp} + tx + {j * THREADS}];" for j in range(td)],
        *[f"        o_{i}_{j} = fma(a_{i}, b_{j}, o_{i}_{j});" for i in range(tm) for j in range(td)],
        "    }",
        "    workgroupBarrier();",
        "}",
    ]
    return lines


def shapes_of(ctx: LoweringContext) -> Shapes:
    """The :class:`Shapes` of an attention node (the mask is the input after the float ones)."""
    q, k, v = (tuple(int(d) for d in t.shape) for t in ctx.in_types[:3])
    floats = 3 if ctx.op_name in ("attention", "attention_lse") else 6
    mask = tuple(int(d) for d in ctx.in_types[floats].shape) if len(ctx.in_types) > floats else None
    return Shapes(q[:-2], q[-2], k[-2], q[-1], v[-1], mask)


def attention_program(ctx: LoweringContext) -> Program:
    """The one-dispatch program of an attention op's node."""
    sh = shapes_of(ctx)
    scale = ctx.attrs.get("scale")
    scale = 1.0 / math.sqrt(sh.E) if scale is None else float(scale)
    if math.prod(int(d) for d in ctx.out_type.shape) == 0:
        return Program([], name=ctx.name)
    count = math.prod(sh.batch)
    if count > 65535:
        raise ValueError(
            f"{ctx.op_name}: {count} leading (batch x head) entries exceed the 65,535 of a workgroup grid axis"
        )
    wgsl, names, grid = attention_wgsl(ctx.op_name, sh, bool(ctx.attrs.get("causal")), scale)
    mask_at = 3 if ctx.op_name in ("attention", "attention_lse") else 6
    role = {n: ("in", k) for k, n in enumerate(INPUTS)} | {"mask": ("in", mask_at), "out": ("out", 0)}
    return Program([Dispatch(wgsl, grid, tuple(role[n] for n in names))], name=ctx.name)


@gpu_lowering(*ROLES)
def _attention(ctx: LoweringContext) -> Program:
    return attention_program(ctx)


__all__: Sequence[str] = ["ROLES", "Shapes", "attention_program", "attention_wgsl"]
