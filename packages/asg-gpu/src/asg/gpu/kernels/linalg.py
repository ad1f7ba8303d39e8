"""Matmul: a tiled, register-blocked WGSL kernel, generated per tile configuration, batched on the z grid.

Each workgroup of 16x16 invocations computes a BM x BN tile of the output, stepping through K in
slices of BK held in workgroup memory (A transposed, ``As[k][m]``, so both tiles are read along
their fast axis). Each invocation owns TM x TN outputs at rows ``ty + 16 i`` and columns
``tx + 16 j`` (the "split" layout: conflict-free workgroup reads, coalesced stores). The
accumulators are generated named variables (``acc_0_0`` ...) and the whole K slice is unrolled by
the generator: WGSL loops over function-local arrays cost about 30x (see the wgpu notes).
Bounds are checked on loads and stores, so any M, N, K work. Batch dimensions broadcast
(``(B, H, T, D) @ (B, H, D, T)``, ``(B, T, D) @ (D, N)``); a 2-D right operand folds the batch into M.
``matmul_program(..., subgroup=S)``: the vec4 kernel without A's tile, A's values passed between
the invocations of a row by subgroup shuffles; by default for batched products on 64x128 and 128x64
tiles where subgroups are at least 16 wide (:func:`default_subgroup`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asg.core.lowering import LoweringContext

from ..codegen import HELPERS, Dispatch, Program, broadcast_strides, declare, elementwise_kernel, strides
from ..codegen import grid as grid_for
from ._base import gpu_lowering
from .elementwise import functions_for

THREADS = 16  # invocations per side of the workgroup


def _tile_products(
    bk: int,
    a: tuple[int, int],
    b: tuple[int, int],
    fmas: Callable[[int], list[str]],
    offsets: tuple[str, str] = ("", ""),
    a_values: Callable[[int], list[str]] | None = None,
) -> list[str]:
    """The FMAs of a k-step of a tiled matmul whose tiles are in ``As``/``Bs`` (from ``offsets``, WGSL
    expressions, for a double-buffered tile): for each of the ``bk`` rows, registers ``a{kk}_{i}`` and
    ``b{kk}_{j}`` ((count, row pitch) in ``a``/``b``) are read and ``fmas(kk)`` accumulates their
    products. ``a_values(kk)``: the lines defining the ``a{kk}_{i}`` instead (A without a tile)."""
    at, bt = (f"{o} + " if o else "" for o in offsets)
    lines = []
    for kk in range(bk):
        if a_values is not None:
            lines += [f"    {line}" for line in a_values(kk)]
        else:
            lines += [f"    let a{kk}_{i} = As[{at}{kk * a[1]} + ty + {i * THREADS}];" for i in range(a[0])]
        lines += [f"    let b{kk}_{j} = Bs[{bt}{kk * b[1]} + tx + {j * THREADS}];" for j in range(b[0])]
        lines += [f"    {line}" for line in fmas(kk)]
    return lines


@dataclass(frozen=True)
class Epilogue:
    """Elementwise work fused into the matmul's store (:mod:`asg.gpu.fusion` builds it).

    ``source`` defines ``fn epilogue(i: i32, acc: f32)`` (``i``: the output's linear index) that
    stores the group's values; ``bindings`` are the buffers it uses, declared after A, B (and C when
    ``store_c``: the product itself is also needed outside the group).
    """

    source: str
    bindings: tuple[tuple[str, str], ...]
    store_c: bool
    vec4: bool = False
    """``source`` defines ``fn epilogue4(i4: i32, acc: vec4<f32>)`` instead (``i4``: the vec4 index of
    four neighbouring outputs of a row), for the vec4 kernel only."""


@dataclass(frozen=True)
class ALoad:
    """A left operand recomputed as it is loaded (:func:`asg.gpu.fusion.matmul_operands` finds them).

    ``prologue``: WGSL of ``fn prologue(x: f32) -> f32`` applied to every element loaded (A is an
    elementwise op of the buffer bound: ``gelu(h) @ W`` reads h); the helper functions it calls
    are added. ``index``: WGSL of ``fn a_index(l: i32) -> i32``, the vec4 index in the buffer bound
    of the 4 elements from linear index ``l`` of A as stored (of A^T for a transposed A): A is a
    transpose of the buffer, read where it lies.
    """

    prologue: str | None = None
    index: str | None = None


def _declare_from(first: int, bindings: Sequence[tuple[str, str]]) -> str:
    return "\n".join(
        line.replace(f"@binding({k})", f"@binding({k + first})")
        for k, line in enumerate(declare(bindings).splitlines())
    )


# (tile, fewest workgroups it must give) from the largest tile down; the vec4 kernel needs multiples of 64.
# WebGPU cannot query the SM count: the thresholds are those measured best on the H200 (132 SMs) with
# benchmarks/gpu_matmul.py (2026-12-02, TF/s): 128x128 needs about two workgroups per SM (4096^3: 38,
# 2048^3: 35; at 1024^3, 64 workgroups: 16); 64x128 with K step 32 serves one per SM (1024^3: 26 where
# 128x128 gives 16 and 64x64 22; dW of GPT's MLP, 512x2048 over k=8192: 24 where 128x128 gives 14);
# 128x64 is its transpose for narrow products (attention's p @ v, n=64: 26 where 128x128 gives 17).
TILES: tuple[tuple[tuple[int, ...], int], ...] = (
    ((128, 128, 16), 256),
    ((64, 128, 32), 128),
    ((128, 64, 32), 128),
    ((64, 64, 16), 0),
)


CANDIDATE_TILES: tuple[tuple[int, ...], ...] = (
    (64, 64, 32),
    (128, 256, 16),
    (256, 128, 16),
    (64, 64, 16, 2),
    (64, 64, 32, 2),
    (64, 128, 16, 2),
    (128, 64, 16, 2),
    (128, 128, 16, 2),
)
"""Tiles beyond :data:`TILES` that ``benchmarks/gpu_matmul.py`` times and the tests check (BK 32 at
64x64, 8x16 outputs per invocation, 2-stage); all fit the portable 32 KiB of workgroup memory."""


def matmul_tile(m: int, n: int, k: int, batch: int = 1, workgroup_bytes: int = 32768) -> tuple[int, ...]:
    """The tile, (BM, BN, BK) or (BM, BN, BK, stages), for ``batch`` products (m, k) @ (k, n): the first
    of :data:`TILES` that gives enough workgroups, is no larger than the product (rounded up to 64)
    and, for 64x128 or 128x64, is oriented along the longer side. One product (``batch`` 1) on 64x128
    or 128x64 tiles steps K by 64 where ``workgroup_bytes`` holds the 48 KiB that needs (on the H200,
    1024^3 at 27.8 TF/s against 25.9 with K step 32; batched products keep 32: not measured).

    >>> matmul_tile(4096, 4096, 4096), matmul_tile(1024, 1024, 1024), matmul_tile(512, 2048, 8192)
    ((128, 128, 16), (64, 128, 32), (64, 128, 32))
    >>> matmul_tile(1024, 1024, 1024, workgroup_bytes=49152)
    (64, 128, 64)
    >>> matmul_tile(256, 64, 256, batch=256), matmul_tile(8, 8, 8)  # attention's p @ v; a tiny one
    ((128, 64, 32), (64, 64, 16))
    """
    for tile, fewest in TILES:
        bm, bn = tile[:2]
        if bm > -(-m // 64) * 64 or bn > -(-n // 64) * 64 or (bm, bn) == ((64, 128) if m > n else (128, 64)):
            continue
        if -(-m // bm) * -(-n // bn) * batch >= fewest:
            if batch == 1 and bm + bn == 192 and workgroup_bytes >= 4 * 64 * 192:
                return (bm, bn, 64)
            return tile
    return TILES[-1][0]


SUBGROUP_TILES = ((128, 64, 32), (64, 128, 32))
"""The tiles of batched products whose A reaches the invocations by subgroup shuffles by default (H200,
subgroups of 32, 2026-12-04: attention's p @ v shape, (32, 8, 256, 256) @ (32, 8, 256, 64), 27.5 TF/s
against 24.1 with A's tile; on 128x128 tiles and unbatched products the shuffles were slower)."""


def default_subgroup(tile: Sequence[int], batched: bool) -> int:
    """The subgroup size ``matmul_program`` generates a product's kernel for by default: the device's
    (:func:`asg.gpu.kernels.attention.subgroup_size`) for a batched product on one of
    :data:`SUBGROUP_TILES` where subgroups are at least 16 wide (lavapipe's 8 stay on A's tile), else
    0. ``ASG_WGPU_MATMUL_SUBGROUPS``: ``0`` never; ``1`` every batched product the kernel covers, at
    any subgroup size (the tests run it so on lavapipe).

    >>> default_subgroup((128, 128, 16), batched=True), default_subgroup((128, 64, 32), batched=False)
    (0, 0)
    """
    mode = os.environ.get("ASG_WGPU_MATMUL_SUBGROUPS", "").strip()
    if not batched or mode == "0" or (mode != "1" and tuple(tile) not in SUBGROUP_TILES):
        return 0
    from . import attention

    size = attention.subgroup_size()
    if size not in SUBGROUP_SIZES or (mode != "1" and size < 16):
        return 0
    try:
        _check_subgroup(size, tile, False, None)
    except ValueError:
        return 0
    return size


@functools.cache
def device_workgroup_bytes() -> int:
    """The workgroup memory a kernel may use on this process's device (32 KiB where none can be made).

    >>> device_workgroup_bytes() >= 16384  # doctest: +SKIP
    True
    """
    try:
        from ..device import get_device

        return int(get_device().limits["max-compute-workgroup-storage-size"])
    except Exception:  # no usable adapter: the portable limit
        return 32768


def tile_config(m: int, n: int, k: int) -> tuple[int, ...]:
    """The tile of one (m, k) @ (k, n) product (:func:`matmul_tile` with ``batch=1``)."""
    return matmul_tile(m, n, k)


def matmul_wgsl(
    m: int,
    n: int,
    k: int,
    batch: Sequence[int],
    a_st: Sequence[int],
    b_st: Sequence[int],
    config: tuple[int, int, int] | None = None,
    epilogue: Epilogue | None = None,
    split: tuple[int, int] = (1, 0),
) -> str:
    """The WGSL of an (m, k) @ (k, n) product over ``batch`` (per-batch element strides of A and B).

    ``split = (S, KC)``: split-K as in :func:`matmul_vec4_wgsl` (S slices of KC per product, each
    written to its own (m, n) block of C)."""
    bm, bn, bk = (config or tile_config(m, n, k))[:3]
    tm, tn = bm // THREADS, bn // THREADS
    nthreads = THREADS * THREADS
    lines: list[str] = []
    # batch offsets from the z workgroup index
    bst = strides(batch)
    a_terms = [f"((z / {bst[d]}) % {batch[d]}) * {a_st[d]}" for d in range(len(batch)) if a_st[d]]
    b_terms = [f"((z / {bst[d]}) % {batch[d]}) * {b_st[d]}" for d in range(len(batch)) if b_st[d]]
    lines.append(f"let a_base = {' + '.join(a_terms) or '0'};")
    lines.append(f"let b_base = {' + '.join(b_terms) or '0'};")
    lines.append(f"let o_base = {'i32(wid.z)' if split[0] > 1 else 'z'} * {m * n};")
    lines.append(f"let row0 = i32(wid.y) * {bm};")
    lines.append(f"let col0 = i32(wid.x) * {bn};")
    lines.append(f"let tx = lid % {THREADS};")
    lines.append(f"let ty = lid / {THREADS};")
    for i in range(tm):
        for j in range(tn):
            lines.append(f"var acc_{i}_{j} = 0.0;")
    if split[0] > 1:
        lines.append(f"let k_begin = (i32(wid.z) % {split[0]}) * {split[1]};")
        lines.append(f"let k_end = min(k_begin + {split[1]}, {k});")
    else:
        lines += ["let k_begin = 0;", f"let k_end = {k};"]
    lines.append(f"for (var k0 = k_begin; k0 < k_end; k0 += {bk}) {{")
    for t in range(-(-bm * bk // nthreads)):
        lines.append(f"    {{ let e = lid + {t * nthreads}; let mm = e / {bk}; let kk = e % {bk};")
        lines.append(f"      if (e < {bm * bk}) {{ let r = row0 + mm; let c = k0 + kk;")
        lines.append(
            f"        As[kk * {bm} + mm] = select(0.0, A[min(a_base + r * {k} + c, {m * k} * NB_A - 1)], r < {m} && c < {k}); }} }}"
        )
    for t in range(-(-bn * bk // nthreads)):
        lines.append(f"    {{ let e = lid + {t * nthreads}; let kk = e / {bn}; let nn = e % {bn};")
        lines.append(f"      if (e < {bn * bk}) {{ let r = k0 + kk; let c = col0 + nn;")
        lines.append(
            f"        Bs[kk * {bn} + nn] = select(0.0, B[min(b_base + r * {n} + c, {k * n} * NB_B - 1)], r < {k} && c < {n}); }} }}"
        )
    lines.append("    workgroupBarrier();")
    lines += _tile_products(
        bk,
        (tm, bm),
        (tn, bn),
        lambda kk: [
            f"acc_{i}_{j} = fma(a{kk}_{i}, b{kk}_{j}, acc_{i}_{j});" for i in range(tm) for j in range(tn)
        ],
    )
    lines += ["    workgroupBarrier();", "}"]
    for i in range(tm):
        lines.append(f"{{ let r = row0 + ty + {i * THREADS};")
        lines.append(f"  if (r < {m}) {{")
        for j in range(tn):
            idx, acc = f"o_base + r * {n} + c", f"acc_{i}_{j}"
            lines.append(
                f"    {{ let c = col0 + tx + {j * THREADS}; if (c < {n}) {{ {_store(idx, acc, epilogue)} }} }}"
            )
        lines.append("  } }")
    body = "\n    ".join(lines)
    return f"""// matmul {bm}x{bn}x{bk}{f" split-k {split[0]}" if split[0] > 1 else ""}
{_header(epilogue, "f32")}
{HELPERS}
{epilogue.source if epilogue else ""}
var<workgroup> As: array<f32, {bm * bk}>;
var<workgroup> Bs: array<f32, {bn * bk}>;
@compute @workgroup_size({nthreads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {{
    let z = i32(wid.z){f" / {split[0]}" if split[0] > 1 else ""};
    let lid = i32(lidx);
    {body}
}}
"""


def _header(epilogue: Epilogue | None, elem: str) -> str:
    """Declarations of A, B, C (C left out when an epilogue stores other values) and the epilogue's."""
    names = ["A", "B"] + (["C"] if epilogue is None or epilogue.store_c else [])
    lines = [
        f"@group(0) @binding({k}) var<storage, read_write> {x}: array<{elem}>;" for k, x in enumerate(names)
    ]
    if epilogue is not None and epilogue.bindings:
        lines.append(_declare_from(len(names), epilogue.bindings))
    return "\n".join(lines)


def _store(idx: str, acc: str, epilogue: Epilogue | None) -> str:
    if epilogue is None:
        return f"C[{idx}] = {acc};"
    return (f"C[{idx}] = {acc}; " if epilogue.store_c else "") + f"epilogue({idx}, {acc});"


def _c_base(batch: Sequence[int], size4: int, c_rows: tuple[int, tuple[int, ...], int] | None) -> str:
    """The vec4 offset of product ``z``'s C: ``z * size4``, or from ``c_rows``' offset and strides."""
    if c_rows is None:
        return f"z * {size4}"
    bst = strides(batch)
    terms = [
        f"((z / {bst[d]}) % {batch[d]}) * {c_rows[1][d] // 4}" for d in range(len(batch)) if c_rows[1][d]
    ]
    return " + ".join([str(c_rows[0] // 4), *terms])


SUBGROUP_SIZES = (8, 16, 32, 64)
"""Subgroup sizes the vec4 kernel's shuffled-A variant is generated for (``matmul_program(subgroup=S)``)."""


def _check_subgroup(subgroup: int, config: Sequence[int], a_t: bool, a_load: ALoad | None) -> None:
    """Raise ValueError unless the vec4 kernel's shuffled-A variant exists for these options."""
    bm, _bn, bk = config[:3]
    lanes = min(subgroup, THREADS)
    refusals = [
        (subgroup not in SUBGROUP_SIZES, f"a subgroup size in {SUBGROUP_SIZES}"),
        (len(config) > 3 and config[3] != 1, "one stage"),
        (a_t, "A not transposed"),
        (a_load is not None, "A without a load prologue or index"),
        (bk % 4 != 0 or (bm // 64) * bk % lanes != 0, f"(BM / 64) * BK a multiple of {lanes} lanes"),
    ]
    wanted = [why for refused, why in refusals if refused]
    if wanted:
        raise ValueError(
            f"matmul: A by subgroup shuffles (subgroup {subgroup}, tile {tuple(config)}) needs {', '.join(wanted)}"
        )


def _shuffled_a(
    gm: int, bk: int, m: int, k: int, subgroup: int, last: int
) -> tuple[list[str], list[str], Callable[[int], list[str]]]:
    """A's values by subgroup shuffles instead of a workgroup tile: (lines before the K loop, the
    loop's loads, the ``a_values`` of :func:`_tile_products`).

    The 16 invocations of one ``ty`` use the same 4 * ``gm`` rows of A (``row0 + 64 g + 4 ty + i``),
    i.e. ``gm * bk`` vec4s along k per K step. Their H = min(subgroup, 16) lanes of one subgroup
    (lanes follow ``local_invocation_index``: a subgroup of 8 holds half a ``ty``, one of 32 two
    ``ty``) each load ``gm * bk / H`` of those vec4s from global memory into ``sa{p}`` (unit
    ``u = p H + lane``: row ``u / (bk / 4)``, k vec4 ``u % (bk / 4)``); at every 4th kk each of the
    4 * ``gm`` rows' vec4 of the next 4 kk is shuffled from its owner (``sg_row + u % H``), and
    ``a{kk}_{g}`` takes component kk % 4 of the 4 rows of group g.
    """
    lanes, bk4 = min(subgroup, THREADS), bk // 4
    per_lane = gm * bk // lanes
    before = [
        f"let sg_lane = tx % {lanes};",
        "let sg_row = sid - u32(sg_lane);  // this row group's first lane in the subgroup",
    ]
    for p in range(per_lane):
        before += [
            f"let sa_u{p} = sg_lane + {p * lanes};",
            f"let sa_r{p} = row0 + ty * 4 + (sa_u{p} / {4 * bk4}) * 64 + (sa_u{p} / {bk4}) % 4;",
            f"let sa_c{p} = (sa_u{p} % {bk4}) * 4;",
            f"let sa_at{p} = a_base + sa_r{p} * {k // 4};",
        ]
    loads = [
        f"    let sa_k{p} = k0 + sa_c{p}; let sa{p} = select(vec4<f32>(0.0), "
        f"A[min(sa_at{p} + sa_k{p} / 4, {last})], sa_r{p} < {m} && sa_k{p} < {k});"
        for p in range(per_lane)
    ]

    def a_values(kk: int) -> list[str]:
        kb, c = kk // 4, "xyzw"[kk % 4]
        out = []
        if kk % 4 == 0:
            for g in range(gm):
                for i in range(4):
                    u = (4 * g + i) * bk4 + kb
                    out.append(f"let s{kb}_{g}_{i} = subgroupShuffle(sa{u // lanes}, sg_row + {u % lanes}u);")
        out += [
            f"let a{kk}_{g} = vec4<f32>({', '.join(f's{kb}_{g}_{i}.{c}' for i in range(4))});"
            for g in range(gm)
        ]
        return out

    return before, loads, a_values


def matmul_vec4_wgsl(
    m: int,
    n: int,
    k: int,
    batch: Sequence[int],
    a_st: Sequence[int],
    b_st: Sequence[int],
    config: Sequence[int],
    nb: tuple[int, int],
    epilogue: Epilogue | None = None,
    split: tuple[int, int] = (1, 0),
    a_t: bool = False,
    a_load: ALoad | None = None,
    b_t: bool = False,
    b_rows: tuple[int, int, int] | None = None,
    a_causal: int | None = None,
    c_rows: tuple[int, tuple[int, ...], int] | None = None,
    subgroup: int = 0,
) -> str:
    """The vec4 kernel (``k % 4 == 0`` and ``n % 4 == 0``): A, B and C read and written as ``vec4<f32>``.

    A's tile is loaded as 4x4 blocks, transposed in registers and stored ``As[k][m/4]``; B's rows are
    copied ``Bs[k][n/4]``. An invocation owns groups of 4 rows (``4 ty + 64 g``) by 4 columns
    (``4 tx + 64 h``), one ``vec4`` accumulator per row and column group. ``config``: (BM, BN, BK)
    or (BM, BN, BK, stages); with 2 stages the tiles are double-buffered: each k-step loads the next
    step's tiles into registers, multiplies the current ones, then stores the next ones in the other
    half of workgroup memory (one barrier per step instead of two, loads in flight during the FMAs).
    ``split = (S, KC)``: the
    z grid runs S slices of KC along K per product, each writing its partial product to its own
    (m, n) block of C (split-K; :func:`matmul_program` sums them). ``a_t``: the buffer A holds A
    transposed, (k, m) with ``m % 4 == 0``, one unbatched product (the weight gradient ``X^T @ dY``
    reading X where it is, instead of a transposed copy). ``a_load``: A is recomputed as it is
    loaded from the buffer bound (:class:`ALoad`; unbatched A, or a batch folded into its rows).
    ``b_t``: the buffer B holds B transposed, (n, k), 2-D (a linear layer's ``x @ W^T`` reading W
    where it is); its tile is loaded as 4x4 blocks, like A's. ``b_rows``: (offset, row pitch,
    elements) of B's rows in the buffer bound (``b_st`` its batch strides; all multiples of 4): the
    heads' keys read where a fused qkv projection stored them. ``a_causal``: A is zero past column
    ``r + a_causal`` of each row ``r`` (a causal attention's dS), so a tile's K loop stops there.
    ``c_rows``: (offset, batch strides, row pitch) where C's rows go in the buffer bound (multiples
    of 4; no split-K): the heads' query gradient stored into its place in the qkv gradient.
    ``subgroup``: the subgroup size S the kernel is generated for (0: off): A's values reach the
    invocations by ``subgroupShuffle`` from registers loaded straight from global memory instead of
    through ``As`` (:func:`_shuffled_a`); one stage, A neither transposed nor recomputed
    (:func:`_check_subgroup`); needs the device's ``subgroup`` feature at that subgroup size.
    """
    bm, bn, bk = config[:3]
    if subgroup:
        _check_subgroup(subgroup, config, a_t, a_load)
    stages = config[3] if len(config) > 3 else 1
    gm, gn = bm // 64, bn // 64
    nthreads = THREADS * THREADS
    bm4, bn4, k4, n4 = bm // 4, bn // 4, k // 4, n // 4
    bst = strides(batch)
    a_terms = [f"((z / {bst[d]}) % {batch[d]}) * {a_st[d] // 4}" for d in range(len(batch)) if a_st[d]]
    b_terms = [f"((z / {bst[d]}) % {batch[d]}) * {b_st[d] // 4}" for d in range(len(batch)) if b_st[d]]
    a_last, b_last = m * k4 * nb[0] - 1, k * n4 * nb[1] - 1
    b_pitch = n
    if b_rows is not None:
        b_terms.insert(0, str(b_rows[0] // 4))
        b_pitch, b_last = b_rows[1], b_rows[2] // 4 - 1
    lines = [
        f"let a_base = {' + '.join(a_terms) or '0'};",
        f"let b_base = {' + '.join(b_terms) or '0'};",
        f"let o_base = {_c_base(batch, m * n4, c_rows) if split[0] == 1 else f'i32(wid.z) * {m * n4}'};",
        f"let row0 = i32(wid.y) * {bm};",
        f"let col0 = i32(wid.x) * {bn};",
        f"let tx = lid % {THREADS};",
        f"let ty = lid / {THREADS};",
    ]
    for g in range(gm):
        for h in range(gn):
            for i in range(4):
                lines.append(f"var acc_{g}_{h}_{i} = vec4<f32>(0.0);")
    # The K loop. A split-K slice counts its steps from 0 to a constant (its start comes from the z
    # index): with `k0 < min(k_begin + KC, k)` as the bound, the H200 ran 1024^3 in 2 slices at 6 TF/s.
    loop = [f"for (var k0 = k_begin; k0 < k_end; k0 += {bk}) {{"]
    if split[0] > 1:
        lines.append(f"let k_begin = (i32(wid.z) % {split[0]}) * {split[1]};")
        loop = [f"for (var ks = 0; ks < {split[1] // bk}; ks++) {{", f"    let k0 = k_begin + ks * {bk};"]
    elif a_causal is not None:
        lines += ["let k_begin = 0;", f"let k_end = min({k}, row0 + {bm + a_causal});"]
    else:
        lines += ["let k_begin = 0;", f"let k_end = {k};"]

    prologue, a_index = (a_load.prologue, a_load.index) if a_load else (None, None)

    def load_a(at: str, linear: str) -> str:
        """A's vec4 at vec4 index ``at`` of A as stored, whose linear element index is ``linear``."""
        value = f"A[min(a_index({linear}), {a_last})]" if a_index else f"A[{at}]"
        return f"prologue4({value})" if prologue else value

    # The tile loads, one unit per range of `nthreads` elements: (element count, the unit's index
    # lines, value lines reading the rows from WGSL k `kv` into registers named by `reg`, store lines
    # writing those registers to the tile from offset `off`).
    Unit = tuple[
        int,
        list[str],
        Callable[[str, Callable[[int], str]], list[str]],
        Callable[[str, Callable[[int], str]], list[str]],
    ]

    def copy_rows(
        tile: str,
        buf: str,
        along: str,
        width: int,
        tile_w4: int,
        col0: str,
        base: str,
        last: int,
        pitch: int = 0,
    ) -> Unit:
        """Rows ``kv .. kv + bk`` of the row-major ``(k, width)`` buffer ``buf`` (from ``base``),
        ``tile_w4`` vec4s from column ``col0`` on, to ``tile[kk * tile_w4 + mm]`` (``nn`` along n);
        zero past k and width. A^T's tile and B's are both such copies."""
        start, x = f"{base} + " if base else "", along * 2  # the vec4 column's name: mm, nn
        at = f"min({start}r * {(pitch or width) // 4} + c / 4, {last})"
        value = load_a(at, f"r * {width} + c") if buf == "A" else f"{buf}[{at}]"
        index = [f"let kk = e / {tile_w4}; let {x} = e % {tile_w4};"]
        fetch = lambda kv, reg: [  # noqa: E731
            f"let r = {kv} + kk; let c = {col0} + {x} * 4;",
            f"{reg(0)} select(vec4<f32>(0.0), {value}, r < {k} && c < {width});",
        ]
        store = lambda off, val: [f"{tile}[{off}e] = {val(0)};"]  # noqa: E731
        return bk * tile_w4, index, fetch, store

    def blocks(tile: str, rows: int, row0: str, base: str, last: int, tile_w4: int, load: Callable) -> Unit:
        """A row-major (rows, k) operand's tile as 4x4 blocks (rows ``mb * 4 ..`` from ``row0``,
        columns ``kv + kb * 4 ..``), transposed into ``tile[k][rows / 4]``: A's, or B's when the
        buffer holds B^T (``b_t``)."""
        index = [f"let mb = e / {bk // 4}; let kb = e % {bk // 4};"]
        start = f"{base} + " if base else ""

        def fetch(kv: str, reg: Callable[[int], str]) -> list[str]:
            out = [f"let c = {kv} + kb * 4;"]
            for i in range(4):
                at = f"min({start}r{i} * {k4} + c / 4, {last})"
                out.append(
                    f"let r{i} = {row0} + mb * 4 + {i}; {reg(i)} select(vec4<f32>(0.0), {load(at, f'r{i} * {k} + c')}, r{i} < {rows} && c < {k});"
                )
            return out

        def store(off: str, val: Callable[[int], str]) -> list[str]:
            return [
                f"{tile}[{off}(kb * 4 + {j}) * {tile_w4} + mb] = vec4<f32>({', '.join(f'{val(i)}.{c}' for i in range(4))});"
                for j, c in enumerate("xyzw")
            ]

        return tile_w4 * (bk // 4), index, fetch, store

    a_unit = (
        copy_rows("As", "A", "m", m, bm4, "row0", "", k * (m // 4) - 1)
        if a_t
        else blocks("As", m, "row0", "a_base", a_last, bm4, load_a)
    )
    b_unit = (
        blocks("Bs", n, "col0", "b_base", n * k4 * nb[1] - 1, bn4, lambda at, _linear: f"B[{at}]")
        if b_t
        else copy_rows("Bs", "B", "n", n, bn4, "col0", "b_base", b_last, b_pitch)
    )
    # (tile, unit number, count, index lines, fetch, store) per range of `nthreads` elements
    parts = [
        (name, t, *unit)
        for name, unit in ((("b", b_unit),) if subgroup else (("a", a_unit), ("b", b_unit)))
        for t in range(-(-unit[0] // nthreads))
    ]

    def scoped(t: int, count: int, index: list[str], body: list[str]) -> list[str]:
        guard = f"if (e < {count}) " if (t + 1) * nthreads > count else ""
        return [
            f"    {{ let e = lid + {t * nthreads}; {guard}{{",
            *(f"        {x}" for x in index + body),
            "    } }",
        ]

    def fmas(kk: int) -> list[str]:
        return [
            f"acc_{g}_{h}_{i} = fma(vec4<f32>(a{kk}_{g}.{'xyzw'[i]}), b{kk}_{h}, acc_{g}_{h}_{i});"
            for g in range(gm)
            for h in range(gn)
            for i in range(4)
        ]

    size_a, size_b = bm4 * bk, bn4 * bk  # vec4s in one stage of each tile
    if stages == 1:
        a_values = None
        if subgroup:
            before, a_loads, a_values = _shuffled_a(gm, bk, m, k, subgroup, a_last)
            lines += [*before, *loop, *a_loads]
        else:
            lines += loop
        for _name, t, count, index, fetch, store in parts:
            body = fetch("k0", lambda i: f"let v{i} =") + store("", lambda i: f"v{i}")
            lines += scoped(t, count, index, body)
        lines.append("    workgroupBarrier();")
        lines += _tile_products(bk, (gm, bm4), (gn, bn4), fmas, a_values=a_values)
        lines += ["    workgroupBarrier();", "}"]
    else:
        # the next step's values of unit t of tile x in registers px{t}_{i} (4 for A's 4x4 blocks)
        regs = {(name, t): [f"p{name}{t}_{i}" for i in range(4)] for name, t, *_ in parts}
        for (name, _t), names in regs.items():
            blocked = (name == "a" and not a_t) or (name == "b" and b_t)
            lines += [f"var {v} = vec4<f32>(0.0);" for v in names[: 4 if blocked else 1]]

        def load(kv: str) -> list[str]:
            out = []
            for name, t, count, index, fetch, _store in parts:
                out += scoped(t, count, index, fetch(kv, lambda i, r=regs[name, t]: f"{r[i]} ="))
            return out

        def keep(off: dict[str, str]) -> list[str]:
            out = []
            for name, t, count, index, _fetch, store in parts:
                out += scoped(t, count, index, store(off[name], lambda i, r=regs[name, t]: r[i]))
            return out

        lines += [*load("k_begin"), *keep({"a": "", "b": ""}), "workgroupBarrier();"]
        lines += loop
        lines.append(f"    let stage = ((k0 - k_begin) / {bk}) % 2;")
        lines.append(f"    let sa = stage * {size_a}; let sb = stage * {size_b};")
        lines += load(f"(k0 + {bk})")
        lines += _tile_products(bk, (gm, bm4), (gn, bn4), fmas, ("sa", "sb"))
        lines += keep({"a": f"{size_a} - sa + ", "b": f"{size_b} - sb + "})
        lines += ["    workgroupBarrier();", "}"]
    for g in range(gm):
        for i in range(4):
            lines.append(f"{{ let r = row0 + {64 * g} + ty * 4 + {i};")
            lines.append(f"  if (r < {m}) {{")
            for h in range(gn):
                at, acc = f"o_base + r * {c_rows[2] // 4 if c_rows else n4} + c / 4", f"acc_{g}_{h}_{i}"
                if epilogue is None:
                    st = f"C[{at}] = {acc};"
                else:
                    st = (f"C[{at}] = {acc}; " if epilogue.store_c else "") + (
                        f"epilogue4({at}, {acc});"
                        if epilogue.vec4
                        else " ".join(f"epilogue(({at}) * 4 + {q}, {acc}.{'xyzw'[q]});" for q in range(4))
                    )
                lines.append(f"    {{ let c = col0 + {64 * h} + tx * 4; if (c < {n}) {{ {st} }} }}")
            lines.append("  } }")
    body = "\n    ".join(lines)
    loads = [a_index or ""]
    if prologue:
        loads += [
            functions_for(prologue, defined=epilogue.source if epilogue else ""),
            prologue,
            "fn prologue4(x: vec4<f32>) -> vec4<f32> {\n"
            "    return vec4<f32>(prologue(x.x), prologue(x.y), prologue(x.z), prologue(x.w));\n}",
        ]
    flags = "".join(
        (
            " 2-stage" if stages == 2 else "",
            f" split-k {split[0]}" if split[0] > 1 else "",
            " A^T" if a_t else "",
            " B^T" if b_t else "",
            " prologue" if prologue else "",
            " a_index" if a_index else "",
            f" sg{subgroup}" if subgroup else "",
        )
    )
    a_tile = "" if subgroup else f"var<workgroup> As: array<vec4<f32>, {size_a * stages}>;\n"
    sg_arg = ", @builtin(subgroup_invocation_id) sid: u32" if subgroup else ""
    return f"""// matmul {bm}x{bn}x{bk} vec4{flags}
{_header(epilogue, "vec4<f32>")}
{HELPERS if epilogue or prologue else ""}
{epilogue.source if epilogue else ""}
{chr(10).join(x for x in loads if x)}
{a_tile}var<workgroup> Bs: array<vec4<f32>, {size_b * stages}>;
@compute @workgroup_size({nthreads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32{sg_arg}) {{
    let z = i32(wid.z){f" / {split[0]}" if split[0] > 1 else ""};
    let lid = i32(lidx);
    {body}
}}
"""


def split_k(m: int, n: int, k: int, batch: int = 1) -> int:
    """Slices along K for a product whose 128x128 tiles are too few for the GPU but whose K is long
    (weight gradients: (d, B*T) @ (B*T, 4d)): enough for :data:`TILES`' 256 workgroups, rounded up to
    a power of two (on the H200, GPT's (512, 8192) @ (8192, 1536) ran at 27.8 TF/s in 6 slices and 35.5
    in 8), each slice at least 512 deep; 1 (no split) unless ``k >= 4 * max(m, n)``.

    >>> (
    ...     split_k(512, 2048, 8192),
    ...     split_k(512, 512, 8192),
    ...     split_k(1024, 1024, 1024),
    ...     split_k(4096, 4096, 16384),
    ...     split_k(512, 1536, 8192),
    ... )
    (4, 16, 1, 1, 8)
    """
    tiles = -(-m // 128) * -(-n // 128) * batch
    if k < 4 * max(m, n) or tiles >= TILES[0][1]:
        return 1
    wanted = 1 << (-(-TILES[0][1] // tiles) - 1).bit_length()  # a power of two: slices of whole K steps
    return max(1, min(wanted, k // 512))


def transposed_operand_ok(a_shape: Sequence[int], b_shape: Sequence[int]) -> bool:
    """True when ``matmul_program(..., a_transposed=True)`` runs (a, b): both 2-D, m, k, n multiples of 4.

    >>> transposed_operand_ok((512, 8192), (8192, 2048)), transposed_operand_ok((6, 8), (8, 4))
    (True, False)
    """
    return (
        len(a_shape) == 2
        and len(b_shape) == 2
        and all(int(d) % 4 == 0 and int(d) for d in (*a_shape, b_shape[1]))
    )


def matmul_program(
    a_shape: Sequence[int],
    b_shape: Sequence[int],
    out_shape: Sequence[int],
    name: str = "",
    config: Sequence[int] | None = None,
    vec4: bool = True,
    epilogue: Epilogue | None = None,
    splits: int | None = None,
    a_transposed: bool = False,
    a_load: ALoad | None = None,
    workgroup_bytes: int | None = None,
    b_transposed: bool = False,
    b_layout: tuple[int, tuple[int, ...], int, int] | None = None,
    a_causal: int | None = None,
    transposed_out: bool = False,
    c_layout: tuple[int, tuple[int, ...], int] | None = None,
    subgroup: int | None = None,
) -> Program:
    """The program of ``a @ b`` for concrete shapes (inputs 0 and 1, output 0).

    ``vec4`` (default) uses the vec4 kernel where ``k`` and ``n`` are multiples of 4; ``config`` forces
    a tile (BM, BN, BK), BM and BN multiples of 64 for the vec4 kernel (default :func:`matmul_tile`),
    or (BM, BN, BK, stages): 2 stages double-buffer the vec4 kernel's tiles (:func:`matmul_vec4_wgsl`);
    the tiles' workgroup memory, ``4 * BK * (BM + BN) * stages`` bytes, must fit ``workgroup_bytes``
    (default :func:`device_workgroup_bytes`, the device's ``max-compute-workgroup-storage-size``).
    ``splits`` (default :func:`split_k`; only without an epilogue): partial
    products over slices of K into a scratch buffer, then one kernel summing them (two dispatches).
    ``a_transposed``: input 0 holds A transposed, (k, m), for 2-D A and B with m, k, n multiples of 4
    (:func:`transposed_operand_ok`). ``a_load``: A recomputed as it is loaded (:class:`ALoad`; vec4
    kernel, A unbatched or B 2-D). ``b_transposed``: input 1 holds B transposed, (n, k), for a 2-D B
    with k and n multiples of 4 (:func:`transposed_operand_ok` of ``(b^T, ...)``). ``b_layout``:
    (offset, batch strides, row pitch, elements of the buffer) where B's rows are not stored
    contiguously (batched vec4 kernel, all multiples of 4). ``a_causal``: A is zero past column
    ``r + a_causal`` of row ``r``; the vec4 kernel without split-K skips those K steps.
    ``transposed_out``: a split-K product of 2-D operands stores its sum transposed, (n, m) (a
    weight gradient ``(X^T dY)^T`` without a transpose of its own). ``c_layout``: (offset, batch
    strides, row pitch) of C's rows in the buffer bound, for a batched vec4 product without split-K
    (all multiples of 4). ``subgroup``: S (one of :data:`SUBGROUP_SIZES`, the device's subgroup size,
    :func:`asg.gpu.kernels.attention.subgroup_size`) generates the vec4 kernel whose A values reach
    the invocations by subgroup shuffles instead of a workgroup tile (one-stage tiles, A neither
    transposed nor recomputed; split-K, epilogues and B's and C's options unchanged); 0 off; None
    (default): :func:`default_subgroup`.
    The kernel's first line names its tile (``// matmul 64x128x32 vec4``, ``... vec4 sg32``).

    >>> wgsl = matmul_program((256, 256), (256, 256), (256, 256), config=(64, 128, 32), subgroup=32)
    >>> wgsl.dispatches[0].wgsl.splitlines()[0], "var<workgroup> As" in wgsl.dispatches[0].wgsl
    ('// matmul 64x128x32 vec4 sg32', False)
    """
    a_shape, b_shape, out_shape = tuple(a_shape), tuple(b_shape), tuple(out_shape)
    k = a_shape[-1]
    n = b_shape[-1]
    if len(b_shape) == 2:  # (..., m, k) @ (k, n): the batch folds into the rows
        m = math.prod(a_shape[:-1])
        batch: tuple[int, ...] = ()
        a_st: tuple[int, ...] = ()
        b_st: tuple[int, ...] = ()
    else:
        m = a_shape[-2]
        batch = out_shape[:-2]
        a_st = tuple(s * m * k for s in broadcast_strides(a_shape[:-2], batch))
        b_st = tuple(s * k * n for s in broadcast_strides(b_shape[:-2], batch))
    count = math.prod(batch)
    if m * n * count == 0:
        return Program([], name=name)
    vec = k % 4 == 0 and n % 4 == 0 and k > 0 and vec4
    if epilogue is not None and epilogue.vec4 and not vec:
        raise ValueError(f"matmul: a vec4 epilogue needs k and n multiples of 4, got {a_shape} @ {b_shape}")
    if a_transposed and not (vec and transposed_operand_ok(a_shape, b_shape)):
        raise ValueError(
            f"matmul: a transposed A needs 2-D operands with m, k, n multiples of 4, got {a_shape} @ {b_shape}"
        )
    if b_transposed and not (vec and len(b_shape) == 2):
        raise ValueError(
            f"matmul: a transposed B needs a 2-D B with k and n multiples of 4, got {a_shape} @ {b_shape}"
        )
    if b_layout is not None:
        if not (vec and batch and all(x % 4 == 0 for x in (b_layout[0], *b_layout[1], b_layout[2]))):
            raise ValueError(
                f"matmul: B read in place needs a batched vec4 product and multiples of 4, got {b_layout}"
            )
        b_st = tuple(b_layout[1])
    if c_layout is not None and not (
        vec and batch and all(x % 4 == 0 for x in (c_layout[0], *c_layout[1], c_layout[2]))
    ):
        raise ValueError(
            f"matmul: C stored in place needs a batched vec4 product and multiples of 4, got {c_layout}"
        )
    if subgroup and not vec:
        raise ValueError(
            f"matmul: A by subgroup shuffles needs k and n multiples of 4, got {a_shape} @ {b_shape}"
        )
    if a_load and not (vec and (len(b_shape) == 2 or len(a_shape) == 2)):
        raise ValueError(
            f"matmul: recomputing A as it loads needs k and n multiples of 4 and one A, got {a_shape} @ {b_shape}"
        )
    if splits is None:
        splits = split_k(m, n, k, max(count, 1)) if epilogue is None and config is None else 1
    if epilogue is not None:
        splits = 1
    if splits > 1 and vec:
        config = config or TILES[0][0]
    if count * splits > 65535:
        raise ValueError(f"matmul: {count} batch entries exceed the 65,535 of a z grid; reshape the batch")
    if workgroup_bytes is None:
        workgroup_bytes = device_workgroup_bytes()
    tile = tuple(config or matmul_tile(m, n, k, max(count, 1), workgroup_bytes if vec else 32768))
    if subgroup is None:
        plain = config is None and vec and splits == 1 and not a_transposed and a_load is None
        subgroup = default_subgroup(tile, bool(batch)) if plain else 0
    bm, bn, bk = tile[:3]
    if vec and 4 * bk * (bn if subgroup else bm + bn) * (tile[3] if len(tile) > 3 else 1) > workgroup_bytes:
        raise ValueError(f"matmul: tile {tile} needs more than {workgroup_bytes} B of workgroup memory")
    nb_a = math.prod(a_shape[:-2]) if len(b_shape) != 2 else 1
    nb_b = math.prod(b_shape[:-2]) if len(b_shape) != 2 else 1
    grid = (-(-n // bn), -(-m // bm), max(count, 1) * splits)
    if vec:
        kc = -(-k // (splits * bk)) * bk  # a slice is a whole number of K steps
        wgsl = matmul_vec4_wgsl(
            m,
            n,
            k,
            batch,
            a_st,
            b_st,
            tile,
            (max(nb_a, 1), max(nb_b, 1)),
            epilogue,
            (splits, kc),
            a_transposed,
            a_load,
            b_transposed,
            None if b_layout is None else (b_layout[0], b_layout[2], b_layout[3]),
            a_causal if splits == 1 else None,
            c_layout,
            subgroup,
        )
    else:
        kc = -(-k // (splits * bk)) * bk
        wgsl = matmul_wgsl(m, n, k, batch, a_st, b_st, (bm, bn, bk), epilogue, (splits, kc))
        wgsl = wgsl.replace("NB_A", str(max(nb_a, 1))).replace("NB_B", str(max(nb_b, 1)))
    if c_layout is not None and splits > 1:
        raise ValueError("matmul: C stored in place has no split-K")
    if transposed_out and (splits == 1 or batch):
        raise ValueError(
            f"matmul: a transposed result needs a split-K product of 2-D operands, got {a_shape} @ {b_shape}"
        )
    if splits == 1:
        return Program([Dispatch(wgsl, grid, (("in", 0), ("in", 1), ("out", 0)))], name=name)
    # the partial products (batch, splits, m, n) in scratch, summed in slice order
    total, mn = max(count, 1) * m * n, m * n
    terms = " + ".join(f"part[base + {s * mn}]" for s in range(splits))
    at = f"(i % {n}) * {m} + i / {n}" if transposed_out else "i"
    body = [f"let base = (i / {mn}) * {splits * mn} + i % {mn};", f"out[{at}] = {terms};"]
    sum_wgsl = elementwise_kernel([("part", "float32"), ("out", "float32")], total, body)
    return Program(
        [
            Dispatch(wgsl, grid, (("in", 0), ("in", 1), ("tmp", 0))),
            Dispatch(sum_wgsl, grid_for(total), (("tmp", 0), ("out", 0))),
        ],
        temps=[4 * total * splits],
        name=name,
    )


@gpu_lowering("matmul")
def _matmul(ctx: LoweringContext) -> Program:
    return matmul_program(ctx.in_types[0].shape, ctx.in_types[1].shape, ctx.out_type.shape, ctx.name)
