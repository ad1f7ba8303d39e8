"""fp32 matmul TFLOP/s of asg-gpu's wgpu backend vs PyTorch CUDA (cuBLAS, TF32 off), in one run.

Run on the lent GPU machine (see ../shared/device/README.md)::

    source .gl/preamble.sh
    export PYTHONPATH=packages/asg-core/src:packages/asg-nn/src:packages/asg-data/src:packages/asg-gpu/src:$PYTHONPATH
    python3 benchmarks/gpu_matmul.py                  # 1024^3, 2048^3, 4096^3 and the GPT shapes
    python3 benchmarks/gpu_matmul.py --only 1024^3 p@v   # some of them

The wgpu figure is the backend's own lowering of ``a @ b`` (the program ``matmul_program`` makes
with its defaults: the tile from ``matmul_tile``, split-K from ``split_k``), dispatched back to back
in one compute pass and timed by timestamp queries. Every candidate variant (tile, double-buffered
tiles, split-K slices; :data:`VARIANTS`) is timed too, on square products and on the GPT
benchmark's shapes, and each result is checked against numpy (float64): a cell ending in ``!`` is
wrong (relative error over 1e-4, or elements left unwritten). Tiles over the device's workgroup
memory are left out (lavapipe: 32 KiB). Where the device has subgroups, A's values passed by
subgroup shuffles instead of its tile (:data:`SUBGROUP_VARIANTS`, ``+sg``) are timed too.
``--small`` is a quick lavapipe run.
It also prints the host cost per dispatch of a compiled plan of many small elementwise ops.
torch is optional: without CUDA its row says "-".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu import cuda_torch, pass_timer  # sets XDG_RUNTIME_DIR, registers wgpu from the source tree

import asg.core as ag
from asg.core.backends import get_backend
from asg.gpu.kernels.attention import subgroup_size
from asg.gpu.kernels.linalg import (
    CANDIDATE_TILES,
    TILES,
    default_subgroup,
    matmul_program,
    matmul_tile,
    split_k,
)

Shape = tuple[int, ...]
Tile = tuple[int, ...]
Variant = tuple[Tile, int] | tuple[Tile, int, bool]  # (tile, split-K slices[, A by subgroup shuffles])

# timed for every shape: TILES' tiles and the candidates (BK 32 at 64x64, 8x16 outputs per
# invocation at 128x256 and 256x128, double-buffered tiles)
VARIANTS: list[Variant] = [
    (t, 1)
    for t in [
        *(tile for tile, _ in TILES),
        *CANDIDATE_TILES,
        (64, 128, 32, 2),  # 48 KiB of workgroup memory: where the device allows (the H200 does)
        (128, 64, 32, 2),
        (64, 128, 64),  # 48 KiB too: the backend's tile for one such product where it fits
        (128, 64, 64),
    ]
]
# split-K candidates where 128x128 tiles leave some of the H200's 132 SMs idle ...
SPLITS_FEW: list[Variant] = [
    ((128, 128, 16), 2),
    ((128, 128, 16, 2), 2),
    ((64, 128, 32), 2),
    ((128, 128, 16), 4),
    ((128, 128, 16, 2), 4),
    ((64, 128, 32, 2), 2),
]
# ... and, for long K (k >= 4 max(m, n): weight gradients), more slices
SPLITS_LONG_K: list[Variant] = [((128, 128, 16), 8), ((64, 128, 32), 4), ((64, 128, 16, 2), 4)]
# A's values by subgroup shuffles instead of its workgroup tile (matmul_program(subgroup=S) at the
# device's subgroup size), where the device has the subgroup feature and A is not read transposed
SUBGROUP_VARIANTS: list[Variant] = [
    ((64, 128, 32), 1, True),
    ((128, 64, 32), 1, True),
    ((128, 128, 16), 1, True),
    ((128, 128, 32), 1, True),  # K step 32 at 128x128: B's tile alone fits 16 KiB
    ((64, 128, 64), 1, True),
]
TOLERANCE = 1e-4  # relative to the product's largest element


def variant_name(variant: Variant | None) -> str:
    """``128x128x16``, ``+db`` for a 2-stage (double-buffered) tile, ``+sg`` for A by subgroup
    shuffles, ``/kS`` for S split-K slices."""
    if variant is None:
        return "backend"
    tile, splits = variant[:2]
    return (
        "x".join(map(str, tile[:3]))
        + ("+db" if tile[3:] == (2,) else "")
        + ("+sg" if variant[2:] == (True,) else "")
        + (f"/k{splits}" if splits > 1 else "")
    )


def _out_shape(a: Shape, b: Shape) -> Shape:
    return (*np.broadcast_shapes(a[:-2], b[:-2]), a[-2], b[-1])


def _flops(a: Shape, b: Shape) -> float:
    return 2.0 * float(np.prod(_out_shape(a, b))) * a[-1]


def _product(a: Shape, b: Shape) -> tuple[int, int, int, int]:
    """(m, n, k, batch) as the lowering sees ``a @ b``: a 2-D right operand folds the batch into m."""
    batch = int(np.prod(_out_shape(a, b)[:-2]))
    return (a[-2] * (batch if len(b) == 2 else 1), b[-1], a[-1], 1 if len(b) == 2 else batch)


def _workgroup_bytes(variant: Variant) -> int:
    tile = variant[0]
    rows = tile[1] if variant[2:] == (True,) else tile[0] + tile[1]  # shuffled A has no tile
    return 4 * tile[2] * rows * (tile[3] if len(tile) > 3 else 1)


def shape_variants(
    a: Shape, b: Shape, workgroup_bytes: int, subgroup: bool = False, a_transposed: bool = False
) -> list[Variant]:
    """:data:`VARIANTS` no larger than the product (rounded up to 64), split-K where it may pay and
    :data:`SUBGROUP_VARIANTS` where ``subgroup`` (A not ``a_transposed``); those whose tiles fit
    ``workgroup_bytes``."""
    m, n, k, batch = _product(a, b)
    variants = list(VARIANTS)
    if -(-m // 128) * -(-n // 128) * batch < 132:
        variants += SPLITS_FEW + (SPLITS_LONG_K if k >= 4 * max(m, n) else [])
    if subgroup and not a_transposed:
        variants += SUBGROUP_VARIANTS
    return [
        variant
        for variant in variants
        if variant[0][0] <= -(-m // 64) * 64
        and variant[0][1] <= -(-n // 64) * 64
        and _workgroup_bytes(variant) <= workgroup_bytes
    ]


class Bench:
    """One product's operands on the GPU, its float64 reference, and timings of program variants."""

    def __init__(self, dev: Any, a_shape: Shape, b_shape: Shape, a_transposed: bool = False) -> None:
        self.dev, self.a_shape, self.b_shape, self.a_t = dev, a_shape, b_shape, a_transposed
        self.out_shape = _out_shape(a_shape, b_shape)
        rng = np.random.default_rng(0)
        a = rng.standard_normal(a_shape).astype(np.float32)
        b = rng.standard_normal(b_shape).astype(np.float32)
        self.want = a.astype(np.float64) @ b.astype(np.float64)
        if a_transposed:  # the buffer holds A^T, read in place (the weight gradient X^T @ dY)
            a = np.ascontiguousarray(a.T)
        self.unwritten = np.full(self.out_shape, np.nan, np.float32)
        self.values = {("in", 0): dev.create_buffer(a.nbytes), ("in", 1): dev.create_buffer(b.nbytes)}
        self.values[("out", 0)] = dev.create_buffer(self.unwritten.nbytes)
        dev.write(self.values[("in", 0)], a)
        dev.write(self.values[("in", 1)], b)
        self.timed = pass_timer(dev)
        self.workgroup_bytes = int(dev.limits["max-compute-workgroup-storage-size"])
        self.subgroup = subgroup_size()  # 0: no subgroup feature

    def run(self, reps: int, variant: Variant | None) -> tuple[float, float]:
        """(TFLOP/s from timestamps, max relative error against numpy; inf where elements were left
        unwritten) of the program of ``variant`` (None: the backend's defaults)."""
        dev, values = self.dev, dict(self.values)
        config, splits = variant[:2] if variant else (None, None)
        prog = matmul_program(
            self.a_shape,
            self.b_shape,
            self.out_shape,
            "bench",
            config,
            splits=splits,
            a_transposed=self.a_t,
            workgroup_bytes=self.workgroup_bytes,
            subgroup=self.subgroup if variant and variant[2:] == (True,) else 0,
        )
        temps = [dev.create_buffer(nb) for nb in prog.temps]
        values.update({("tmp", j): buf for j, buf in enumerate(temps)})
        dev.write(values[("out", 0)], self.unwritten)
        steps = [
            (
                dev.pipeline(d.wgsl, len(d.args)),
                dev.bind_group(len(d.args), [(values[r], 0, values[r].size) for r in d.args]),
                d.grid,
            )
            for d in prog.dispatches
        ]
        self.timed(1, steps)  # JIT / warm-up
        seconds = self.timed(reps, steps)
        out = values[("out", 0)]
        got = np.frombuffer(dev.read(out, self.unwritten.nbytes), np.float32).reshape(self.out_shape)
        err = float(np.abs(got - self.want).max() / np.abs(self.want).max())
        for buf in temps:
            buf.destroy()
        return _flops(self.a_shape, self.b_shape) * reps / seconds / 1e12, err if np.isfinite(err) else np.inf

    def close(self) -> None:
        for buf in self.values.values():
            buf.destroy()


def torch_tflops(a_shape: Shape, b_shape: Shape, reps: int) -> float | None:
    torch = cuda_torch()
    if torch is None:
        return None
    a = torch.randn(*a_shape, device="cuda")
    b = torch.randn(*b_shape, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return _flops(a_shape, b_shape) * reps / (time.perf_counter() - start) / 1e12


def dispatch_cost(ops: int = 400, calls: int = 20) -> float:
    """Host microseconds recording one dispatch in a compiled plan (``ops`` chained small elementwise ops)."""
    x = ag.input("x", (256,))
    y = x
    for i in range(ops):
        y = y * 1.0001 if i % 2 else y + 0.5
    # fusion off: the chain would otherwise be one kernel; this measures recording many dispatches
    f = ag.compile(y.sum(), backend="wgpu", options={"fusion": False})
    data = np.ones(256, np.float32)
    f(data)
    plan = f.plan_for(data)
    encode = 0.0
    for _ in range(calls):
        f(data)
        encode += plan.encode_seconds
    return encode / calls / len(plan._encoded) * 1e6


def _shapes(sizes: list[int], gpt: bool) -> list[tuple[str, Shape, Shape, bool]]:
    """(label, A's shape, B's shape, whether A's buffer holds A^T) of the products timed."""
    rows = [(f"{n}^3", (n, n), (n, n), False) for n in sizes]
    if gpt:  # the GPT benchmark's products (B*T=8192, d=512, 4d=2048, 8 heads of 64, T=256)
        rows += [
            ("x@W_fc", (8192, 512), (512, 2048), False),
            ("x@W_qkv", (8192, 512), (512, 1536), False),
            ("x@W_proj", (8192, 512), (512, 512), False),
            ("h@W_out", (8192, 2048), (2048, 512), False),  # and dX of the MLP's first layer, dH @ W_fc^T
            ("dW_fc^T", (512, 8192), (8192, 2048), True),  # as the step runs it: X^T @ dY, X read in place
            ("dW_qkv^T", (512, 8192), (8192, 1536), True),
            ("dW_proj^T", (512, 8192), (8192, 512), True),
            ("dW_out^T", (2048, 8192), (8192, 512), True),
            ("q@k^T", (32, 8, 256, 64), (32, 8, 64, 256), False),
            ("p@v", (32, 8, 256, 256), (32, 8, 256, 64), False),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-gpt", action="store_true", help="square products only")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="these products only (1024^3, p@v, ...)")
    parser.add_argument("--small", action="store_true", help="lavapipe: sizes 64 and 128, no GPT shapes")
    args = parser.parse_args()
    if args.small:
        args.sizes, args.reps, args.no_gpt = [64, 128], 1, True
    start = time.perf_counter()
    dev = get_backend("wgpu").device()
    print(
        f"adapter: {dev.summary}; features: {', '.join(sorted(dev.features))}; subgroup size {subgroup_size()}"
    )
    shapes = [s for s in _shapes(args.sizes, not args.no_gpt) if not args.only or s[0] in args.only]
    # per shape: {variant name: (TF/s, rel err)}, torch TF/s, the backend's choice
    results: list[tuple[str, dict[str, tuple[float, float]], float | None, str]] = []
    for label, a, b, a_t in shapes:
        reps = max(args.reps, min(args.reps * 10, int(args.reps * 2 * 2048**3 / _flops(a, b))))
        bench = Bench(dev, a, b, a_t)
        variants = [None, *shape_variants(a, b, bench.workgroup_bytes, bench.subgroup > 0, a_t)]
        cells = {variant_name(v): bench.run(reps, v) for v in variants}
        bench.close()
        mn = _product(a, b)
        splits = split_k(*mn)
        tile = matmul_tile(*mn, workgroup_bytes=bench.workgroup_bytes)
        shuffled = splits == 1 and not a_t and default_subgroup(tile, len(b) > 2) > 0
        chosen = variant_name((tile if splits == 1 else TILES[0][0], splits, shuffled))
        results.append((label, cells, torch_tflops(a, b, reps), chosen))
        print(f"  {label}: {len(cells)} variants, {time.perf_counter() - start:.0f} s", flush=True)
    print(f"host cost per dispatch in a compiled plan: {dispatch_cost():.1f} us")
    names = list(dict.fromkeys(name for _, cells, _, _ in results for name in cells))

    def cell(got: tuple[float, float] | None) -> str:
        return "-" if got is None else f"{got[0]:.3g}" + ("!" if got[1] > TOLERANCE else "")

    # the fastest correct variant per shape
    best = [
        max(
            ((v, got) for v, got in cells.items() if got[1] <= TOLERANCE),
            key=lambda c: c[1][0],
            default=("-", (0.0, 0.0)),
        )
        for _, cells, _, _ in results
    ]
    table = [
        ["variant", *(label for label, _, _, _ in results)],
        ["torch (cuBLAS)", *(f"{ref:.3g}" if ref else "-" for _, _, ref, _ in results)],
        *([name, *(cell(cells.get(name)) for _, cells, _, _ in results)] for name in names),
        ["backend's tile", *(chosen for *_, chosen in results)],
        ["best", *(name for name, _ in best)],
        [
            "best / torch",
            *(f"{got[0] / r[2]:.0%}" if r[2] else "-" for (_, got), r in zip(best, results, strict=True)),
        ],
        [
            "backend / torch",
            *(f"{cells['backend'][0] / ref:.0%}" if ref else "-" for _, cells, ref, _ in results),
        ],
    ]
    widths = [max(len(line[c]) for line in table) + 2 for c in range(len(table[0]))]
    print(
        "\nTF/s per variant (+db: double-buffered tiles, +sg: A by subgroup shuffles, /kS: S split-K slices;"
        " ! wrong, - not run)"
    )
    for line in table:
        print("".join(f"{v:>{w}}" for v, w in zip(line, widths, strict=True)))
    errors = max(got[1] for _, cells, _, _ in results for got in cells.values())
    print(f"\nlargest relative error: {errors:.1e}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
