"""Fused attention (FlashAttention-2 style): the forward, its log-sum-exp and the three gradients.

One generator (:func:`attention_wgsl`) writes all five kernels. A workgroup of 16x16 invocations
owns a block of ``BR`` rows (query rows for ``attention``, ``attention_lse`` and
``attention_grad_q``; key rows for ``attention_grad_k`` and ``attention_grad_v``) and walks the
other side (keys, or queries) in blocks of ``BC`` rows. Per block:

1. the ``BR x BC`` score tile ``S = own @ other^T`` (and, for dq/dk, ``dP = dout v^T``) is
   computed as a register-tiled matmul: each invocation owns rows ``4 ty .. 4 ty + 3`` and columns
   ``4 tx .. 4 tx + 3`` as four named ``vec4`` accumulators; both operands are streamed through
   workgroup memory in slices of 16 along the feature axis, stored transposed (``As[k][r]``) so
   each step reads one ``vec4`` of each;
2. the tile is masked (bounds, ``causal``, the bool mask read with broadcast strides) and turned
   into what the second product needs, written transposed to workgroup memory ``Ss[c][r]``:
   the probabilities ``P`` (forward: an online softmax, 4 invocations per row keep the running
   max and their part of the sum; gradients: ``exp(s - lse)``), or ``dS = P * (dP - delta)``;
3. the row accumulators (``4 x ceil(D / 64)`` named ``vec4`` per invocation, columns
   ``4 tx + 64 h``) take ``Ss^T @ X`` with ``X`` (v, k, q or dout) streamed 16 rows at a time
   (fewer for rows over 128 wide, to stay within 32 KiB of workgroup memory).

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
BC = 64  # other-side rows per step
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


def chunk_rows(shapes: Shapes, role: Role) -> int:
    """KX, the rows of the second product's operand streamed per step: 16, or fewer for wide rows
    (where 16 would pass :data:`SHARED_LIMIT`); 0 when even 4 would (rows over 576 wide)."""
    for kx in (16, 8, 4):
        if 16 * _shared_vec4s(shapes, role, kx) <= SHARED_LIMIT:
            return kx
    return 0


def _shared_vec4s(shapes: Shapes, role: Role, kx: int) -> int:
    dp4 = 16 * -(-_acc_width(shapes, role) // 64)
    b = max(KC * (BC // 4 + 1), kx * dp4)
    stats = (256 + BR) // 4 if role.value == "softmax" else 0
    return KC * (BR // 4 + 1) + b + BC * (BR // 4 + 1) + stats


def _acc_width(shapes: Shapes, role: Role) -> int:
    """D, the width of the accumulated rows (0 for the lse kernel)."""
    return 0 if role.x is None else shapes.rows(role.x)[1]


def attention_wgsl(
    op: str, shapes: Shapes, causal: bool, scale: float
) -> tuple[str, list[str], tuple[int, int, int]]:
    """(WGSL, the buffers it binds in order, workgroup grid) of the kernel of ``op`` (one of :data:`ROLES`).

    The buffers are names from :data:`INPUTS` plus ``"mask"`` and ``"out"``.
    """
    assert BR == BC == 64 and KC == 16, "each invocation copies one vec4 of each 64 x 16 tile"
    role = ROLES[op]
    sh = shapes
    kx = chunk_rows(sh, role)
    d = _acc_width(sh, role)
    if not kx:
        raise ValueError(
            f"{op}: query/key features E = {sh.E} and value features Ev = {sh.Ev}: rows of {d} features "
            f"do not fit the wgpu kernel's {SHARED_LIMIT // 1024} KiB of workgroup memory (at most 576); "
            "use the unfused formula (matmul, softmax, matmul) for such heads"
        )
    hd = -(-d // 64)  # column groups of 64 in the accumulated rows
    dp4 = 16 * hd
    n_own, n_other = (sh.L, sh.S) if role.own_query else (sh.S, sh.L)
    ap4 = sp4 = BR // 4 + 1  # pitches (in vec4) of As[k][r] and Ss[c][r], padded against bank conflicts
    bp4 = BC // 4 + 1
    st = 256 // BR  # invocations per row in the online softmax
    cpt = BC // st  # columns each of them handles
    need = {b for _, own, other in role.products for b in (own, other)} | ({role.x} if role.x else set())
    if role.value in ("p", "ds"):
        need |= {"lse"} | ({"delta"} if role.value == "ds" else set())
    names = [n for n in INPUTS if n in need] + (["mask"] if sh.mask is not None else []) + ["out"]
    count = math.prod(sh.batch)
    last_row = count * sh.L - 1  # of lse and delta

    lines: list[str] = [
        "let z = i32(wid.y);",
        "let lid = i32(lidx);",
        f"let own0 = i32(wid.x) * {BR};",
        f"let tx = lid % {THREADS};",
        f"let ty = lid / {THREADS};",
        f"let tk = lid % {KC}; let tg = lid / {KC};  // the tile element this invocation copies",
    ]
    for name in names[:-1]:
        if name != "mask":
            rows, width = sh.rows(name)
            lines.append(f"let {name}_base = z * {rows * width};")
    if sh.mask is not None:
        mst = broadcast_strides(sh.mask, (*sh.batch, sh.L, sh.S))
        bst = strides(sh.batch)
        terms = [f"((z / {bst[k]}) % {sh.batch[k]}) * {mst[k]}" for k in range(len(sh.batch)) if mst[k]]
        lines.append(f"let mask_base = {' + '.join(terms) or '0'};")
    out_width = 1 if role.x is None else d
    lines.append(f"let out_base = z * {n_own * out_width};")

    # ------------------------------------------------------------ per-row values of own query rows
    if role.value in ("p", "ds") and role.own_query:
        for i in range(4):
            row = f"own0 + 4 * ty + {i}"
            lines.append(f"let lse_{i} = _finite(lse[min(lse_base + {row}, {last_row})]);")
            if role.value == "ds":
                lines.append(f"let delta_{i} = delta[min(delta_base + {row}, {last_row})];")
    if role.value == "softmax":
        lines += [
            f"let sr = lid / {st}; let sp = lid % {st}; let sq = sr / 4; let sc = sr % 4;",
            f"var m_run = {NEG};",
            "var l_part = 0.0;",
        ]
    lines += [f"var o_{i}_{h} = vec4<f32>(0.0);" for i in range(4) for h in range(hd)]

    # ------------------------------------------------------------ the walk over the other side
    if causal:
        shift = sh.S - sh.L  # query i attends keys j <= i + shift
        if role.own_query:
            lines.append(f"let c_start = 0; let c_end = min({n_other}, own0 + {BR + shift});")
        else:
            lines.append(f"let c_start = max(0, own0 - {shift}); let c_end = {n_other};")
    else:
        lines.append(f"let c_start = 0; let c_end = {n_other};")
    lines.append(f"for (var c0 = c_start; c0 < c_end; c0 += {BC}) {{")
    body: list[str] = []
    for prefix, own, other in role.products:
        body += _product(prefix, own, other, sh, n_own, n_other, ap4, bp4)
    # the tile, masked, as the second product's left operand: Ss[c][r], rows 4 ty + i, columns 4 tx + j
    if role.value in ("p", "ds") and not role.own_query:
        for j in range(4):
            col = f"c0 + 4 * tx + {j}"
            body.append(f"let lse_{j} = _finite(lse[min(lse_base + {col}, {last_row})]);")
            if role.value == "ds":
                body.append(f"let delta_{j} = delta[min(delta_base + {col}, {last_row})];")
    for j in range(4):
        comps = []
        for i in range(4):
            own_i, other_j = f"(own0 + 4 * ty + {i})", f"(c0 + 4 * tx + {j})"
            qi, kj = (own_i, other_j) if role.own_query else (other_j, own_i)
            ok = [f"{own_i} < {n_own}", f"{other_j} < {n_other}"]
            if causal:
                ok.append(f"{kj} <= {qi} + {sh.S - sh.L}")
            if sh.mask is not None:
                idx = f"mask_base + {qi} * {mst[-2]} + {kj} * {mst[-1]}"
                ok.append(f"mask[min({idx}, {math.prod(sh.mask) - 1})] != 0u")
            s_ij = f"s_{i}[{j}] * {literal(scale, 'f32')}"
            if role.value == "softmax":
                val = f"select({NEG}, {s_ij}, {' && '.join(ok)})"
            else:
                lse_ = f"lse_{i}" if role.own_query else f"lse_{j}"
                val = f"select(0.0, exp({s_ij} - {lse_}), {' && '.join(ok)})"
                if role.value == "ds":
                    dl = f"delta_{i}" if role.own_query else f"delta_{j}"
                    val = f"{val} * (dp_{i}[{j}] - {dl})"
            body.append(f"let v_{i}_{j} = {val};")
            comps.append(f"v_{i}_{j}")
        body.append(f"Ss[(4 * tx + {j}) * {sp4} + ty] = vec4<f32>({', '.join(comps)});")
    body.append("workgroupBarrier();")
    if role.value == "softmax":
        body += _online_softmax(st, cpt, sp4)
    if role.x is not None:
        if role.value == "softmax":  # rescale the rows by exp(m_old - m_new)
            for i in range(4):
                body.append(f"{{ let al = alpha_s[4 * ty + {i}];")
                body += [f"  o_{i}_{h} = o_{i}_{h} * al;" for h in range(hd)]
                body.append("}")
        body += _accumulate(role.x, sh, n_other, hd, dp4, kx, sp4)
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
        for i in range(4):
            r = f"4 * ty + {i}"
            lines.append(f"if (own0 + {r} < {n_own}) {{")
            if role.value == "softmax":
                lines.append(f"    let l = alpha_s[{r}]; let f = select(1.0 / l, 0.0, l == 0.0);")
            else:
                lines.append(f"    let f = {literal(scale if role.scaled else 1.0, 'f32')};")
            for h in range(hd):
                for j in range(4):
                    c = f"4 * tx + {64 * h + j}"
                    guard = f"if ({c} < {d}) " if d % 64 else ""
                    lines.append(
                        f"    {guard}{{ out[out_base + (own0 + {r}) * {d} + {c}] = o_{i}_{h}[{j}] * f; }}"
                    )
            lines.append("}")

    shared = [
        f"As: array<vec4<f32>, {KC * ap4}>",
        f"Bs: array<vec4<f32>, {max(KC * bp4, kx * dp4)}>",
        f"Ss: array<vec4<f32>, {BC * sp4}>",
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


def _tile_fetch(buf: str, row0: str, nrows: int, width: int, k0: str) -> str:
    """The ``vec4`` of rows ``row0 + 4 tg .. + 3`` at column ``k0 + tk`` of ``buf`` (``nrows`` x
    ``width`` per batch entry), zero outside: this invocation's part of a 64-row, 16-column tile."""
    parts = []
    for i in range(4):
        r = f"{row0} + 4 * tg + {i}"
        at = f"{buf}[{buf}_base + min({r}, {nrows - 1}) * {width} + min({k0} + tk, {width - 1})]"
        parts.append(f"select(0.0, {at}, {r} < {nrows} && {k0} + tk < {width})")
    return f"vec4<f32>({', '.join(parts)})"


def _product(
    prefix: str, own: str, other: str, sh: Shapes, n_own: int, n_other: int, ap4: int, bp4: int
) -> list[str]:
    """``{prefix}_i[j] = own[4 ty + i] . other[4 tx + j]`` over the feature axis, streamed in slices
    of KC stored transposed (``As[k][r]``)."""
    width = sh.rows(own)[1]
    body = [
        f"    As[tk * {ap4} + tg] = {_tile_fetch(own, 'own0', n_own, width, 'k0')};",
        f"    Bs[tk * {bp4} + tg] = {_tile_fetch(other, 'c0', n_other, width, 'k0')};",
        "    workgroupBarrier();",
        *_steps(
            KC,
            [
                f"let a = As[kk * {ap4} + ty]; let b = Bs[kk * {bp4} + tx];",
                *[f"{prefix}_{i} = fma(vec4<f32>(a.{'xyzw'[i]}), b, {prefix}_{i});" for i in range(4)],
            ],
        ),
        "    workgroupBarrier();",
    ]
    lines = [f"var {prefix}_{i} = vec4<f32>(0.0);" for i in range(4)]
    return [*lines, f"for (var k0 = 0; k0 < {width}; k0 += {KC}) {{", *body, "}"]


def _steps(count: int, body: list[str]) -> list[str]:
    """``body`` for ``kk`` in ``0 .. count``, as a WGSL loop (a variant unrolled by the generator
    was not faster on the H200)."""
    return [f"    for (var kk = 0; kk < {count}; kk++) {{", *(f"        {x}" for x in body), "    }"]


def _online_softmax(st: int, cpt: int, sp4: int) -> list[str]:
    """The forward's per-block softmax step: ``st`` invocations per row (``sr``, part ``sp``), each
    owning ``cpt`` columns of ``Ss`` (``sp + st * cc``), update the running max ``m_run`` and their
    part of the sum, turn their scores into probabilities in place and publish the rows'
    ``alpha_s = exp(m_old - m_new)``."""
    at = f"Ss[(sp + {st} * cc) * {sp4} + sq][sc]"
    return [
        f"{{ var mx = {NEG};",
        f"  for (var cc = 0; cc < {cpt}; cc++) {{ mx = max(mx, {at}); }}",
        "  red[lid] = mx; }",
        "workgroupBarrier();",
        "{ var mb = m_run;",
        *[f"  mb = max(mb, red[sr * {st} + {p}]);" for p in range(st)],
        f"  let m_use = select(mb, 0.0, mb <= {NEG});",
        "  let alpha = exp(m_run - m_use);",
        "  var ls = 0.0;",
        f"  for (var cc = 0; cc < {cpt}; cc++) {{",
        f"      let s = {at}; let p = select(exp(s - m_use), 0.0, s <= {NEG});",
        f"      {at} = p; ls = ls + p;",
        "  }",
        "  l_part = l_part * alpha + ls;",
        "  m_run = mb;",
        "  if (sp == 0) { alpha_s[sr] = alpha; } }",
        "workgroupBarrier();",
    ]


def _accumulate(x: str, sh: Shapes, n_other: int, hd: int, dp4: int, kx: int, sp4: int) -> list[str]:
    """``o_i_h[j] += sum_c Ss[c][4 ty + i] * x[c0 + c][4 tx + 64 h + j]``, ``x`` streamed ``kx`` rows
    at a time (``Bs[kk][d / 4]``)."""
    width = sh.rows(x)[1]
    lines = [f"for (var kc = 0; kc < min({BC}, {n_other} - c0); kc += {kx}) {{"]
    for t in range(-(-kx * dp4 // (THREADS * THREADS))):
        e = f"(lid + {t * THREADS * THREADS})"
        gr = f"(c0 + kc + {e} / {dp4})"
        parts = []
        for j in range(4):
            dd = f"(({e} % {dp4}) * 4 + {j})"
            at = f"{x}[{x}_base + min({gr}, {n_other - 1}) * {width} + min({dd}, {width - 1})]"
            parts.append(f"select(0.0, {at}, {gr} < {n_other} && {dd} < {width})")
        guard = f"if ({e} < {kx * dp4}) " if (t + 1) * THREADS * THREADS > kx * dp4 else ""
        lines.append(f"    {guard}{{ Bs[{e}] = vec4<f32>({', '.join(parts)}); }}")
    lines += [
        "    workgroupBarrier();",
        *_steps(
            kx,
            [
                f"let a = Ss[(kc + kk) * {sp4} + ty];",
                *[f"let b_{h} = Bs[kk * {dp4} + tx + {16 * h}];" for h in range(hd)],
                *[
                    f"o_{i}_{h} = fma(vec4<f32>(a.{'xyzw'[i]}), b_{h}, o_{i}_{h});"
                    for i in range(4)
                    for h in range(hd)
                ],
            ],
        ),
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
