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

:class:`Variant` knobs (``$ASG_WGPU_ATTN_VARIANT`` names one of :data:`VARIANTS` for the lowering;
``benchmarks/gpu_attention.py`` compares them all) change the slices streamed per step, where the
forward's softmax runs and whether the next slice is prefetched into registers. :data:`FUSED` holds
two-output kernels (the forward with its lse; the key and value gradients from one pass) that the
benchmark and tests run directly; a lowering has one output, so the wgpu plan runs them for sibling
nodes (:func:`merged_attention`, ``WgpuPlan._merge_attention``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

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
class Variant:
    """Tuning knobs of the generated kernels (the layout of rows and columns stays the same).

    ``kc``: feature columns of the score products per workgroup-memory step (16 or 32; at 32 the
    operand tile shares its workgroup memory with ``Ss``); ``kx``: rows of the second product's
    operand per step (at most: fewer where wide rows would pass :data:`SHARED_LIMIT`);
    ``softmax`` (the forward and lse kernels): ``"shared"`` runs the online softmax on the score
    tile in workgroup memory, 4 invocations per row; ``"regs"`` keeps it in each invocation's 4 x 4
    registers and exchanges only the 16 per-row block maxima (and the final sums) through workgroup
    memory; ``"subgroup"`` exchanges them by ``subgroupShuffleXor`` where subgroups have at least 16
    invocations (else as ``"regs"``; it needs the device's ``subgroup`` feature); ``prefetch``: each
    slice of the streamed operands is loaded into registers one step ahead (the first ones at the
    start of the block), so global-memory latency overlaps the products.
    """

    kc: int = 16
    kx: int = 16
    softmax: str = "shared"
    prefetch: bool = False


VARIANTS = {
    "base": Variant(),
    "k32": Variant(kc=32, kx=32),
    "regs": Variant(softmax="regs"),
    "regs-k32": Variant(kc=32, kx=32, softmax="regs"),
    "sg": Variant(softmax="subgroup"),
    "sg-k32": Variant(kc=32, kx=32, softmax="subgroup"),
    "pf": Variant(softmax="regs", prefetch=True),
    "pf-k32": Variant(kc=32, kx=32, softmax="regs", prefetch=True),
    "sg-pf-k32": Variant(kc=32, kx=32, softmax="subgroup", prefetch=True),
}
VARIANT_ENV = "ASG_WGPU_ATTN_VARIANT"  # names the variant the lowering uses (a key of VARIANTS)
# The lowering's variant without $ASG_WGPU_ATTN_VARIANT: the fastest on the H200 (B=32 H=8 T=256 E=64,
# causal fwd+bwd 1.43 ms against base's 1.68), where subgroups have at least 16 invocations; elsewhere
# (lavapipe's are 8 wide, or no subgroup feature) the same kernels exchanging through workgroup memory.
DEFAULT_VARIANT = "sg-pf-k32"
FALLBACK_VARIANT = "pf-k32"
_SUBGROUP_PROBE = """@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) i: u32, @builtin(subgroup_size) sgs: u32) {
    if (i == 0u) { out[0] = sgs; }
}
"""


@functools.cache
def subgroup_size() -> int:
    """The subgroup size of a 256-invocation kernel on this process's device, measured by one
    dispatch (wgpu 0.32 reports no adapter subgroup sizes); 0 without the ``subgroup`` feature.

    >>> subgroup_size() >= 0  # doctest: +SKIP
    True
    """
    from ..device import get_device

    dev = get_device()
    if "subgroup" not in dev.features:
        return 0
    buf = dev.create_buffer(4)
    enc = dev.device.create_command_encoder()
    cpass = enc.begin_compute_pass()
    cpass.set_pipeline(dev.pipeline(_SUBGROUP_PROBE, 1))
    cpass.set_bind_group(0, dev.bind_group(1, [(buf, 0, buf.size)]))
    cpass.dispatch_workgroups(1, 1, 1)
    cpass.end()
    dev.queue.submit([enc.finish()])
    size = int.from_bytes(dev.read(buf, 4), "little")
    buf.destroy()
    return size


def default_variant() -> str:
    """The name of the variant the lowering uses without ``$ASG_WGPU_ATTN_VARIANT``:
    :data:`DEFAULT_VARIANT` where :func:`subgroup_size` is at least 16, else :data:`FALLBACK_VARIANT`.

    >>> default_variant() in (DEFAULT_VARIANT, FALLBACK_VARIANT)  # doctest: +SKIP
    True
    """
    return DEFAULT_VARIANT if subgroup_size() >= 16 else FALLBACK_VARIANT


def selected_variant() -> Variant:
    """The :data:`VARIANTS` entry named by ``$ASG_WGPU_ATTN_VARIANT`` (default :func:`default_variant`).

    >>> selected_variant() == VARIANTS[os.environ.get(VARIANT_ENV) or default_variant()]  # doctest: +SKIP
    True
    """
    name = os.environ.get(VARIANT_ENV) or default_variant()
    if name not in VARIANTS:
        raise ValueError(f"{VARIANT_ENV}={name!r}: not one of {sorted(VARIANTS)}")
    return VARIANTS[name]


@dataclass(frozen=True)
class Role:
    """What one of the five kernels computes.

    ``own_query``: the workgroup's rows are queries (else keys); ``products``: (accumulator
    prefix, own buffer, other buffer) of the score-tile products; ``x``: the other-side operand of
    the second product (None: no second product, the lse kernel); ``value``: what the tile becomes
    (``"softmax"``, ``"p"`` or ``"ds"``); ``scaled``: the result is multiplied by ``scale``.
    The two-output kernels of :data:`FUSED` also write ``out2``: ``x2`` names the operand of a
    second accumulation of the probabilities (``P^T dout``, the value gradient), ``lse`` says the
    forward writes its log-sum-exp there. ``ds``: the kernel also stores ``scale * dS`` (``*batch, L, S``,
    zero where masked) in ``out3``, from which one batched matmul gives the query gradient.
    """

    own_query: bool
    products: tuple[tuple[str, str, str], ...]
    x: str | None
    value: str
    scaled: bool
    x2: str | None = None
    lse: bool = False
    ds: bool = False


ROLES = {
    "attention": Role(True, (("s", "q", "k"),), "v", "softmax", False),
    "attention_lse": Role(True, (("s", "q", "k"),), None, "softmax", False),
    "attention_grad_q": Role(True, (("s", "q", "k"), ("dp", "g", "v")), "k", "ds", True),
    "attention_grad_k": Role(False, (("s", "k", "q"), ("dp", "v", "g")), "q", "ds", True),
    "attention_grad_v": Role(False, (("s", "k", "q"),), "g", "p", False),
}
# Kernels with a second output ``out2`` (not ops: a lowering has one output): the forward with its
# lse, and the key gradient with the value gradient (one pass over the probabilities).
FUSED = {
    "attention+lse": Role(True, (("s", "q", "k"),), "v", "softmax", False, lse=True),
    "attention_grad_kv": Role(False, (("s", "k", "q"), ("dp", "v", "g")), "q", "ds", True, x2="g"),
    "attention_grad_kv+ds": Role(
        False, (("s", "k", "q"), ("dp", "v", "g")), "q", "ds", True, x2="g", ds=True
    ),
}
INPUTS = ("q", "k", "v", "g", "lse", "delta")  # the grad ops' inputs in order (the forward's: q, k, v)


@dataclass(frozen=True)
class Layout:
    """Where an input's rows lie in the buffer bound for it: element ``(*z, r, c)`` at
    ``offset + sum(z_k * strides_k) + r * pitch + c`` (the q of a fused qkv projection read in place:
    offset ``h * hs``-style head columns, pitch ``3 d``)."""

    offset: int
    strides: tuple[int, ...]
    pitch: int
    size: int  # elements of the buffer


@dataclass(frozen=True)
class Shapes:
    """The concrete problem: ``batch`` leading dims, lengths L (queries) and S (keys), feature sizes;
    ``layouts``: (input name, :class:`Layout`) of inputs not stored contiguously."""

    batch: tuple[int, ...]
    L: int
    S: int
    E: int
    Ev: int
    mask: tuple[int, ...] | None  # the bool mask's shape (broadcasting to (*batch, L, S)), or None
    layouts: tuple[tuple[str, Layout], ...] = ()

    def pitch(self, name: str) -> int:
        """Elements from one row of input ``name`` to the next."""
        found = dict(self.layouts).get(name)
        return found.pitch if found else self.rows(name)[1]

    def base(self, name: str) -> str:
        """The WGSL offset of batch entry ``z`` (flat over ``batch``) of input ``name``."""
        found = dict(self.layouts).get(name)
        if found is None:
            rows, width = self.rows(name)
            return f"z * {rows * width}"
        bst = strides(self.batch)
        terms = [
            f"((z / {bst[k]}) % {n}) * {st}"
            for k, (n, st) in enumerate(zip(self.batch, found.strides, strict=True))
            if st and n > 1
        ]
        return " + ".join([str(found.offset), *terms])

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


def chunk_rows(shapes: Shapes, role: Role, variant: Variant = VARIANTS["base"]) -> int:
    """KX, the rows of the second product's operand streamed per step: ``variant.kx`` (16 for the
    base variant), or fewer for wide rows (where more would pass :data:`SHARED_LIMIT`); 0 when even
    4 would (rows over 576 wide in the base variant)."""
    for kx in (32, 16, 8, 4):
        if kx <= variant.kx and 16 * _shared_vec4s(shapes, role, kx, variant) <= SHARED_LIMIT:
            return kx
    return 0


def _shared_vec4s(shapes: Shapes, role: Role, kx: int, variant: Variant) -> int:
    dp4 = 16 * -(-_acc_width(shapes, role) // 64)
    a, b = _tile_sizes(variant, dp4, kx)
    s = BC * (BR // 4 + 1)
    stats = 0 if role.value != "softmax" else (256 + BR) // 4 if variant.softmax == "shared" else 256 + 1
    return (max(a, s) if _aliased(variant) else a + s) + b + stats


def _aliased(variant: Variant) -> bool:
    """Whether the products' operand tile As lives in Ss's workgroup memory (free while it is used)."""
    return variant.kc > 16


def _tile_sizes(variant: Variant, dp4: int, kx: int) -> tuple[int, int]:
    """vec4s of As and of Bs (the products' other operand, then the second product's rows)."""
    return variant.kc * (BR // 4 + 1), max(variant.kc * (BC // 4 + 1), kx * dp4)


def _acc_width(shapes: Shapes, role: Role) -> int:
    """D, the width of the accumulated rows (0 for the lse kernel; the wider of both for grad_kv)."""
    return max([shapes.rows(x)[1] for x in (role.x, role.x2) if x] or [0])


def attention_wgsl(
    op: str,
    shapes: Shapes,
    causal: bool,
    scale: float,
    variant: Variant | None = None,
    out2_first: bool = False,
) -> tuple[str, list[str], tuple[int, int, int]]:
    """(WGSL, the buffers it binds in order, workgroup grid) of the kernel of ``op`` (one of :data:`ROLES`).

    The buffers are names from :data:`INPUTS` plus ``"mask"`` and ``"out"``. ``variant``: the
    :class:`Variant` (default: :func:`selected_variant`); one whose workgroup memory would not fit
    the shape falls back to the base variant. ``out2_first``: a two-output kernel binds ``out2``
    before ``out``.
    """
    assert BR == BC == 64 and KC == 16, "each invocation copies one vec4 per 64 x 16 tile"
    role = ROLES[op] if op in ROLES else FUSED[op]
    sh = shapes
    var = selected_variant() if variant is None else variant
    d, d2 = (sh.rows(role.x)[1] if role.x else 0), (sh.rows(role.x2)[1] if role.x2 else 0)
    if not chunk_rows(sh, role):  # the base variant's limit, whichever variant runs
        raise ValueError(
            f"{op}: query/key features E = {sh.E} and value features Ev = {sh.Ev}: rows of {d} features "
            f"do not fit the wgpu kernel's {SHARED_LIMIT // 1024} KiB of workgroup memory (at most 576); "
            "use the unfused formula (matmul, softmax, matmul) for such heads"
        )
    kx = chunk_rows(sh, role, var)
    if not kx:
        var = VARIANTS["base"]
        kx = chunk_rows(sh, role, var)
    kc = var.kc
    regs = role.value == "softmax" and var.softmax != "shared"
    tiles = "Ss" if _aliased(var) else "As"  # the array holding the products' own-row tile
    hd = -(-d // 64)  # column groups of 64 in the accumulated rows
    hd2 = -(-d2 // 64)
    dp4 = 16 * max(hd, hd2)
    n_own, n_other = (sh.L, sh.S) if role.own_query else (sh.S, sh.L)
    ap4 = sp4 = BR // 4 + 1  # pitches (in vec4) of As[k][r] and Ss[c][r], padded against bank conflicts
    bp4 = BC // 4 + 1
    st = 256 // BR  # invocations per row in the online softmax ("shared")
    cpt = BC // st  # columns each of them handles
    need = {b for _, own, other in role.products for b in (own, other)} | ({role.x} if role.x else set())
    if role.value in ("p", "ds"):
        need |= {"lse"} | ({"delta"} if role.value == "ds" else set())
    outs = ["out", "out2"] if role.x2 or role.lse else ["out"]
    outs = outs[::-1] if out2_first else outs
    if role.ds:
        if sh.S % 4:
            raise ValueError(f"{op}: dS is stored as vec4 rows: S = {sh.S} must be a multiple of 4")
        outs = [*outs, "out3"]
    names = [n for n in INPUTS if n in need] + (["mask"] if sh.mask is not None else []) + outs
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
    if var.softmax == "subgroup" and role.value == "softmax":
        lines += ["if (lid == 0) { sg_w = sgs; }", "let sg_ok = workgroupUniformLoad(&sg_w) >= 16u;"]
    for name in names[: -len(outs)]:
        if name != "mask":
            lines.append(f"let {name}_base = {sh.base(name)};")
    if sh.mask is not None:
        mst = broadcast_strides(sh.mask, (*sh.batch, sh.L, sh.S))
        bst = strides(sh.batch)
        terms = [f"((z / {bst[k]}) % {sh.batch[k]}) * {mst[k]}" for k in range(len(sh.batch)) if mst[k]]
        lines.append(f"let mask_base = {' + '.join(terms) or '0'};")
    out_width = 1 if role.x is None else d
    placed = dict(sh.layouts)  # outputs stored in place have layouts too
    lines.append(f"let out_base = {sh.base('out') if 'out' in placed else f'z * {n_own * out_width}'};")
    if role.x2 or role.lse:
        lines.append(
            f"let out2_base = {sh.base('out2') if 'out2' in placed else f'z * {n_own * (d2 if role.x2 else 1)}'};"
        )
    if role.ds:
        lines.append(f"let out3_base = z * {sh.L * sh.S // 4} + i32(wid.x) * {BR // 4} + ty;")

    # ------------------------------------------------------------ per-row values of own query rows
    if role.value in ("p", "ds") and role.own_query:
        for i in range(4):
            row = f"own0 + 4 * ty + {i}"
            lines.append(f"let lse_{i} = _finite(lse[min(lse_base + {row}, {last_row})]);")
            if role.value == "ds":
                lines.append(f"let delta_{i} = delta[min(delta_base + {row}, {last_row})];")
    if regs:
        lines += [f"var m_{i} = {NEG};" for i in range(4)] + ["var l_r = vec4<f32>(0.0);"]
    elif role.value == "softmax":
        lines += [
            f"let sr = lid / {st}; let sp = lid % {st}; let sq = sr / 4; let sc = sr % 4;",
            f"var m_run = {NEG};",
            "var l_part = 0.0;",
        ]
    lines += [f"var o_{i}_{h} = vec4<f32>(0.0);" for i in range(4) for h in range(hd)]
    lines += [f"var w_{i}_{h} = vec4<f32>(0.0);" for i in range(4) for h in range(hd2)]

    # ------------------------------------------------------------ the walk over the other side
    if causal:
        shift = sh.S - sh.L  # query i attends keys j <= i + shift
        if role.own_query:
            lines.append(f"let c_start = 0; let c_end = min({n_other}, own0 + {BR + shift});")
        else:
            lines.append(f"let c_start = max(0, own0 - {shift}); let c_end = {n_other};")
    else:
        lines.append(f"let c_start = 0; let c_end = {n_other};")
    if role.ds and causal:  # dS is zero for the queries before c_start: they see none of these keys
        lines.append(f"for (var c0 = 0; c0 < c_start; c0 += {BC}) {{")
        lines += [f"    {line}" for line in _store_ds(sh, "vec4<f32>(0.0)", "c_start")]
        lines.append("}")
    lines.append(f"for (var c0 = c_start; c0 < c_end; c0 += {BC}) {{")
    body: list[str] = []
    pf = var.prefetch
    for prefix, own, other in role.products:
        pre, loop = _product(prefix, own, other, sh, n_own, n_other, ap4, bp4, kc, tiles, pf)
        body = pre + body + loop
    acc_pre = []
    if role.x2:
        acc_pre, acc_x2 = _accumulate(role.x2, sh, n_other, hd2, 16 * hd2, kx, sp4, "w", pf)
    if role.x:
        pre, acc_x = _accumulate(role.x, sh, n_other, hd, 16 * hd, kx, sp4, "o", pf)
        acc_pre += pre
    body = acc_pre + body
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
                    body.append(f"let p_{i}_{j} = {val};")
                    val = f"p_{i}_{j} * (dp_{i}[{j}] - {dl})"
            body.append(f"let v_{i}_{j} = {val};")
            comps.append(f"{'p' if regs else 'v'}_{i}_{j}")
        if not regs and not role.x2:
            body.append(f"Ss[(4 * tx + {j}) * {sp4} + ty] = vec4<f32>({', '.join(comps)});")
    if role.ds:
        body += _store_ds(
            sh, lambda j: f"vec4<f32>({', '.join(f'v_{i}_{j}' for i in range(4))}) * {literal(scale, 'f32')}"
        )
    if role.x2:  # P^T x2 first, then dS^T x into Ss's memory
        for prefix, x in (("p", role.x2), ("v", None)):
            for j in range(4):
                comps = ", ".join(f"{prefix}_{i}_{j}" for i in range(4))
                body.append(f"Ss[(4 * tx + {j}) * {sp4} + ty] = vec4<f32>({comps});")
            body.append("workgroupBarrier();")
            if x:
                body += acc_x2
    elif regs:
        body += _register_softmax(var.softmax == "subgroup")
        if role.x is not None:
            for j in range(4):
                comps = ", ".join(f"p_{i}_{j}" for i in range(4))
                body.append(f"Ss[(4 * tx + {j}) * {sp4} + ty] = vec4<f32>({comps});")
            body += [f"o_{i}_{h} = o_{i}_{h} * al_{i};" for i in range(4) for h in range(hd)]
            body.append("workgroupBarrier();")
    else:
        body.append("workgroupBarrier();")
    if role.value == "softmax" and not regs:
        body += _online_softmax(st, cpt, sp4)
    if role.x is not None:
        if role.value == "softmax" and not regs:  # rescale the rows by exp(m_old - m_new)
            for i in range(4):
                body.append(f"{{ let al = alpha_s[4 * ty + {i}];")
                body += [f"  o_{i}_{h} = o_{i}_{h} * al;" for h in range(hd)]
                body.append("}")
        body += acc_x
    lines += [f"    {line}" for line in body]
    lines.append("}")

    # ------------------------------------------------------------ results
    inf = literal(float("-inf"), "f32")
    lse_out = "out" if role.x is None else "out2" if role.lse else None
    if regs:
        lines += ["workgroupBarrier();", *_row_reduce("l_r", "+", var.softmax == "subgroup")]
        if lse_out:
            for i in range(4):
                r = f"own0 + 4 * ty + {i}"
                lse = f"select(m_{i} + log(l_r[{i}]), {inf}, l_r[{i}] == 0.0)"
                lines.append(f"if (tx == 0 && {r} < {n_own}) {{ {lse_out}[{lse_out}_base + {r}] = {lse}; }}")
    elif role.value == "softmax":
        lines += [
            "red[lid] = l_part;",
            "workgroupBarrier();",
            "if (sp == 0) {",
            "    var l = 0.0;",
            *[f"    l = l + red[sr * {st} + {p}];" for p in range(st)],
            "    alpha_s[sr] = l;",
        ]
        if lse_out:
            lse = f"select(m_run + log(l), {inf}, l == 0.0)"
            lines.append(f"    if (own0 + sr < {n_own}) {{ {lse_out}[{lse_out}_base + own0 + sr] = {lse}; }}")
        lines += ["}", "workgroupBarrier();"]
    if role.x is not None:
        for i in range(4):
            r = f"4 * ty + {i}"
            lines.append(f"if (own0 + {r} < {n_own}) {{")
            if regs:
                lines.append(f"    let l = l_r[{i}]; let f = select(1.0 / l, 0.0, l == 0.0);")
            elif role.value == "softmax":
                lines.append(f"    let l = alpha_s[{r}]; let f = select(1.0 / l, 0.0, l == 0.0);")
            else:
                lines.append(f"    let f = {literal(scale if role.scaled else 1.0, 'f32')};")
            for dst, acc, width, f in (("out", "o", d, "f"), ("out2", "w", d2, "1.0")):
                for h in range(-(-width // 64)):
                    for j in range(4):
                        c = f"4 * tx + {64 * h + j}"
                        guard = f"if ({c} < {width}) " if width % 64 else ""
                        pitch = placed[dst].pitch if dst in placed else width
                        at = f"{dst}[{dst}_base + (own0 + {r}) * {pitch} + {c}]"
                        lines.append(f"    {guard}{{ {at} = {acc}_{i}_{h}[{j}] * {f}; }}")
            lines.append("}")

    a_size, b_size = _tile_sizes(var, dp4, kx)
    shared = [] if _aliased(var) else [f"As: array<vec4<f32>, {a_size}>"]
    shared += [
        f"Bs: array<vec4<f32>, {b_size}>",
        f"Ss: array<vec4<f32>, {max(BC * sp4, a_size) if _aliased(var) else BC * sp4}>",
    ]
    if regs:
        shared.append("redv: array<vec4<f32>, 256>")
        if var.softmax == "subgroup":
            shared.append("sg_w: u32")
    elif role.value == "softmax":
        shared += ["red: array<f32, 256>", f"alpha_s: array<f32, {BR}>"]
    sg_arg = ", @builtin(subgroup_size) sgs: u32" if var.softmax == "subgroup" and regs else ""
    decl = "\n".join(f"var<workgroup> {s};" for s in shared)
    bindings = [(n, "bool" if n == "mask" else "vec4<f32>" if n == "out3" else "float32") for n in names]
    inner = "\n    ".join(lines)
    wgsl = f"""{declare(bindings)}
{decl}
fn _finite(x: f32) -> f32 {{ return select(x, 0.0, x < {NEG}); }}
@compute @workgroup_size({THREADS * THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32{sg_arg}) {{
    {inner}
}}
"""
    return wgsl, names, (-(-n_own // BR), max(count, 1), 1)


def _store_ds(sh: Shapes, value: Any, below: str | None = None) -> list[str]:
    """Stores of a key-row workgroup's dS block into ``out3`` (``*batch, L, S`` as vec4 rows): query
    ``c0 + 4 tx + j`` takes keys ``own0 + 4 ty .. + 3`` (``value(j)``, or ``value`` for every j); only
    queries before ``below`` when given."""
    lines = []
    for j in range(4):
        q = f"c0 + 4 * tx + {j}"
        ok = [f"{q} < {sh.L}", f"own0 + 4 * ty < {sh.S}"] + ([f"{q} < {below}"] if below else [])
        v = value(j) if callable(value) else value
        lines.append(f"if ({' && '.join(ok)}) {{ out3[out3_base + ({q}) * {sh.S // 4}] = {v}; }}")
    return lines


def _tile_fetch(buf: str, row0: str, nrows: int, width: int, col: str, pitch: int) -> str:
    """The ``vec4`` of rows ``row0 + 4 tg .. + 3`` at column ``col`` of ``buf`` (``nrows`` x
    ``width`` per batch entry, rows ``pitch`` apart), zero outside: this invocation's part of a
    64-row, 16-column tile."""
    parts = []
    for i in range(4):
        r = f"{row0} + 4 * tg + {i}"
        at = f"{buf}[{buf}_base + min({r}, {nrows - 1}) * {pitch} + min({col}, {width - 1})]"
        parts.append(f"select(0.0, {at}, {r} < {nrows} && {col} < {width})")
    return f"vec4<f32>({', '.join(parts)})"


def _product(
    prefix: str,
    own: str,
    other: str,
    sh: Shapes,
    n_own: int,
    n_other: int,
    ap4: int,
    bp4: int,
    kc: int = KC,
    tiles: str = "As",
    prefetch: bool = False,
) -> tuple[list[str], list[str]]:
    """``{prefix}_i[j] = own[4 ty + i] . other[4 tx + j]`` over the feature axis, streamed in slices
    of ``kc`` stored transposed (``{tiles}[k][r]``, ``Bs[k][c]``): (lines to run first, the loop).

    ``prefetch``: the next slice is loaded into registers while this one is multiplied (the first
    one by the lines to run first, which the caller puts ahead of the block's work)."""
    width = sh.rows(own)[1]
    pre, copies, refetch = [], [], []
    for t in range(kc // KC):
        dst = [f"{tiles}[(tk + {KC * t}) * {ap4} + tg]", f"Bs[(tk + {KC * t}) * {bp4} + tg]"]
        for u, (buf, row0, rows) in enumerate(((own, "own0", n_own), (other, "c0", n_other))):
            col = f"tk + {KC * t}"
            if prefetch:
                reg = f"{prefix}_p{u}{t}"
                pre.append(f"var {reg} = {_tile_fetch(buf, row0, rows, width, col, sh.pitch(buf))};")
                copies.append(f"    {dst[u]} = {reg};")
                refetch.append(
                    f"    {reg} = {_tile_fetch(buf, row0, rows, width, f'k0 + {kc} + {col}', sh.pitch(buf))};"
                )
            else:
                copies.append(
                    f"    {dst[u]} = {_tile_fetch(buf, row0, rows, width, f'k0 + {col}', sh.pitch(buf))};"
                )
    body = [
        *copies,
        "    workgroupBarrier();",
        *refetch,
        *_steps(
            kc,
            [
                f"let a = {tiles}[kk * {ap4} + ty]; let b = Bs[kk * {bp4} + tx];",
                *[f"{prefix}_{i} = fma(vec4<f32>(a.{'xyzw'[i]}), b, {prefix}_{i});" for i in range(4)],
            ],
        ),
        "    workgroupBarrier();",
    ]
    lines = [f"var {prefix}_{i} = vec4<f32>(0.0);" for i in range(4)]
    return pre, [*lines, f"for (var k0 = 0; k0 < {width}; k0 += {kc}) {{", *body, "}"]


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


def _row_reduce(name: str, combine: str, subgroup: bool) -> list[str]:
    """Combine the ``vec4`` ``name`` (this invocation's values of rows ``4 ty .. 4 ty + 3``) over the
    16 invocations of those rows (``combine``: ``"max"`` or ``"+"``) into ``name``: by subgroup
    shuffles where ``sg_ok``, else through ``redv`` (whose next writer waits at a barrier first)."""

    def comb(other: str) -> str:
        return f"{name} = max({name}, {other});" if combine == "max" else f"{name} = {name} + {other};"

    shared = [
        f"redv[tx * 16 + ty] = {name};",
        "workgroupBarrier();",
        f"{name} = redv[ty];",
        *[comb(f"redv[{c * 16} + ty]") for c in range(1, 16)],
    ]
    if not subgroup:
        return shared
    shuffles = [comb(f"subgroupShuffleXor({name}, {m}u)") for m in (1, 2, 4, 8)]
    return ["if (sg_ok) {", *(f"    {x}" for x in shuffles), "} else {", *(f"    {x}" for x in shared), "}"]


def _register_softmax(subgroup: bool) -> list[str]:
    """The forward's per-block softmax step on the registers ``v_i_j`` (row ``4 ty + i``): the rows'
    block maxima combined over their 16 invocations, the running maxima ``m_i``, the probabilities
    ``p_i_j``, the rescale factors ``al_i = exp(m_old - m_new)`` and the partial row sums ``l_r``."""
    lines = [
        "var bm = vec4<f32>("
        + ", ".join(f"max(max(v_{i}_0, v_{i}_1), max(v_{i}_2, v_{i}_3))" for i in range(4))
        + ");",
        *_row_reduce("bm", "max", subgroup),
    ]
    for i in range(4):
        lines += [
            f"let mb_{i} = max(m_{i}, bm[{i}]);",
            f"let mu_{i} = select(mb_{i}, 0.0, mb_{i} <= {NEG});",
            f"let al_{i} = exp(m_{i} - mu_{i});",
            f"m_{i} = mb_{i};",
            *[f"let p_{i}_{j} = select(exp(v_{i}_{j} - mu_{i}), 0.0, v_{i}_{j} <= {NEG});" for j in range(4)],
        ]
    al = ", ".join(f"al_{i}" for i in range(4))
    ps = ", ".join(f"p_{i}_0 + p_{i}_1 + p_{i}_2 + p_{i}_3" for i in range(4))
    return [*lines, f"l_r = l_r * vec4<f32>({al}) + vec4<f32>({ps});"]


def _accumulate(
    x: str,
    sh: Shapes,
    n_other: int,
    hd: int,
    dp4: int,
    kx: int,
    sp4: int,
    acc: str = "o",
    prefetch: bool = False,
) -> tuple[list[str], list[str]]:
    """``{acc}_i_h[j] += sum_c Ss[c][4 ty + i] * x[c0 + c][4 tx + 64 h + j]``, ``x`` streamed ``kx``
    rows at a time (``Bs[kk][d / 4]``): (lines to run first, the loop), as :func:`_product`."""
    width = sh.rows(x)[1]
    pre, copies, refetch = [], [], []
    for t in range(-(-kx * dp4 // (THREADS * THREADS))):
        e = f"(lid + {t * THREADS * THREADS})"

        def fetch(kc: str, e: str = e) -> str:
            gr = f"(c0 + {kc}{e} / {dp4})"
            parts = []
            for j in range(4):
                dd = f"(({e} % {dp4}) * 4 + {j})"
                at = f"{x}[{x}_base + min({gr}, {n_other - 1}) * {sh.pitch(x)} + min({dd}, {width - 1})]"
                parts.append(f"select(0.0, {at}, {gr} < {n_other} && {dd} < {width})")
            return f"vec4<f32>({', '.join(parts)})"

        guard = f"if ({e} < {kx * dp4}) " if (t + 1) * THREADS * THREADS > kx * dp4 else ""
        if prefetch:
            reg = f"{acc}_x{t}"
            pre.append(f"var {reg} = {fetch('')};")
            copies.append(f"    {guard}{{ Bs[{e}] = {reg}; }}")
            refetch.append(f"    {reg} = {fetch(f'kc + {kx} + ')};")
        else:
            copies.append(f"    {guard}{{ Bs[{e}] = {fetch('kc + ')}; }}")
    lines = [
        f"for (var kc = 0; kc < min({BC}, {n_other} - c0); kc += {kx}) {{",
        *copies,
        "    workgroupBarrier();",
        *refetch,
        *_steps(
            kx,
            [
                f"let a = Ss[(kc + kk) * {sp4} + ty];",
                *[f"let b_{h} = Bs[kk * {dp4} + tx + {16 * h}];" for h in range(hd)],
                *[
                    f"{acc}_{i}_{h} = fma(vec4<f32>(a.{'xyzw'[i]}), b_{h}, {acc}_{i}_{h});"
                    for i in range(4)
                    for h in range(hd)
                ],
            ],
        ),
        "    workgroupBarrier();",
        "}",
    ]
    return pre, lines


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


# Sibling nodes (same inputs and attributes; sorted names) and the kernel of :data:`FUSED` storing
# their outputs: the query gradient with the other two is ``scale dS @ k``, dS stored by the kernel
MERGED = {
    ("attention", "attention_lse"): "attention+lse",
    ("attention_grad_k", "attention_grad_v"): "attention_grad_kv",
    ("attention_grad_k", "attention_grad_q", "attention_grad_v"): "attention_grad_kv+ds",
}
DQ_MATMUL = True  # the query gradient from the stored dS when all three gradients are siblings


def merged_attention(
    ctxs: Sequence[LoweringContext], max_binding: int = 1 << 31, layouts: Mapping[int, Layout] | None = None
) -> Program | None:
    """One program for sibling nodes of a set in :data:`MERGED` (same inputs and attributes; any
    order): its dispatches bind ``("in", k)`` (input ``k`` of the nodes), ``("out", j)`` (the output
    of ``ctxs[j]``) and ``("tmp", 0)``. The forward with its lse walks the scores once; the key and
    value gradients compute the probabilities once; with the query gradient too, that kernel also
    stores ``scale dS`` (a scratch buffer of ``*batch, L, S``, at most ``max_binding`` bytes) and a
    batched matmul gives ``dS @ k``. ``layouts``: input index -> :class:`Layout` of inputs the
    dispatches read where another value holds them (bound in their place), and ``("out", j)`` ->
    the :class:`Layout` of ``ctxs[j]``'s output stored into another value. ``None`` for other
    nodes, float16 or empty outputs.

    >>> merged_attention([]) is None
    True
    """
    from .linalg import matmul_program

    ops = [c.op_name for c in ctxs]
    fused = MERGED.get(tuple(sorted(ops)))
    if fused is None or len(set(ops)) != len(ops):
        return None
    ctx = ctxs[0]
    if any(t.dtype == "float16" for c in ctxs for t in (*c.in_types, c.out_type)):
        return None
    if any(math.prod(int(d) for d in c.out_type.shape) == 0 for c in ctxs):
        return None
    if any(dict(c.attrs) != dict(ctx.attrs) or c.in_types != ctx.in_types for c in ctxs):
        return None
    layouts = dict(layouts or {})
    pair = [op for op in ops if op != "attention_grad_q"]
    named = {"out": ops.index(min(pair)), "out2": ops.index(max(pair))}  # the kernel's outputs: ctxs
    placed = [(INPUTS[k], layouts[k]) for k in sorted(k for k in layouts if isinstance(k, int))]
    placed += [(name, layouts["out", j]) for name, j in named.items() if ("out", j) in layouts]
    sh = replace(shapes_of(ctx), layouts=tuple(placed))
    count = math.prod(sh.batch)
    if count > 65535:
        return None
    ds_bytes = 4 * count * sh.L * sh.S
    if fused == "attention_grad_kv+ds" and (not DQ_MATMUL or sh.S % 4 or ds_bytes > max_binding):
        return None
    scale = ctx.attrs.get("scale")
    scale = 1.0 / math.sqrt(sh.E) if scale is None else float(scale)
    causal = bool(ctx.attrs.get("causal"))
    wgsl, names, grid = attention_wgsl(fused, sh, causal, scale)
    index = {n: ("in", k) for k, n in enumerate(INPUTS)} | {
        "mask": ("in", 3 if fused == "attention+lse" else 6)
    }
    index |= {name: ("out", j) for name, j in named.items()} | {"out3": ("tmp", 0)}
    dispatches = [Dispatch(wgsl, grid, tuple(index[n] for n in names))]
    if fused != "attention_grad_kv+ds":
        return Program(dispatches, name=ctx.name)
    dq = ops.index("attention_grad_q")
    k_rows, dq_rows = layouts.get(1), layouts.get(("out", dq))
    k_layout = None if k_rows is None else (k_rows.offset, k_rows.strides, k_rows.pitch, k_rows.size)
    dq_layout = None if dq_rows is None else (dq_rows.offset, dq_rows.strides, dq_rows.pitch)
    mm = matmul_program(
        (*sh.batch, sh.L, sh.S),
        (*sh.batch, sh.S, sh.E),
        (*sh.batch, sh.L, sh.E),
        b_layout=k_layout,
        a_causal=sh.S - sh.L if causal else None,  # dS is zero past each query's last key
        c_layout=dq_layout,
    )
    roles = {("in", 0): ("tmp", 0), ("in", 1): ("in", 1), ("out", 0): ("out", dq)}
    dispatches += [Dispatch(d.wgsl, d.grid, tuple(roles[a] for a in d.args)) for d in mm.dispatches]
    return Program(dispatches, temps=[ds_bytes], name=ctx.name)


@gpu_lowering(*ROLES)
def _attention(ctx: LoweringContext) -> Program:
    return attention_program(ctx)


__all__: Sequence[str] = [
    "FUSED",
    "MERGED",
    "ROLES",
    "VARIANTS",
    "Layout",
    "Shapes",
    "Variant",
    "attention_program",
    "attention_wgsl",
    "default_variant",
    "merged_attention",
    "selected_variant",
    "subgroup_size",
]
