"""fp32 matmul TFLOP/s of asg-gpu's wgpu backend vs PyTorch CUDA (cuBLAS, TF32 off), in one run.

Run on the lent GPU machine (see ../shared/device/README.md)::

    source .gl/preamble.sh; PYTHONPATH=packages/asg-core/src:packages/asg-gpu/src python3 benchmarks/gpu_matmul.py

The wgpu figure is the backend's own lowering of ``a @ b`` (the kernel ``compile(..., backend="wgpu")``
runs, its tile from ``matmul_tile``), dispatched back to back in one compute pass and timed by timestamp
queries; each tile variant is timed too, on square products and on the GPT benchmark's shapes.
``--small`` is a quick lavapipe run.
It also prints the host cost per dispatch of a compiled plan of many small elementwise ops, and
checks each product against numpy. torch is optional: without CUDA its column says "-".
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu import cuda_torch, pass_timer  # sets XDG_RUNTIME_DIR, registers wgpu from the source tree

import asg.core as ag
from asg.core.backends import get_backend
from asg.gpu.backend import WgpuBackend
from asg.gpu.kernels.linalg import TILES, matmul_program, matmul_tile, split_k

Shape = tuple[int, ...]


def _out_shape(a: Shape, b: Shape) -> Shape:
    return (*np.broadcast_shapes(a[:-2], b[:-2]), a[-2], b[-1])


def _flops(a: Shape, b: Shape) -> float:
    return 2.0 * float(np.prod(_out_shape(a, b))) * a[-1]


def wgpu_matmul_tflops(
    backend: WgpuBackend,
    a_shape: Shape,
    b_shape: Shape,
    reps: int,
    config: tuple[int, int, int] | None = None,
) -> tuple[float, float]:
    """(TFLOP/s from timestamps, max relative error against numpy) for ``a @ b``.

    ``config``: a tile (BM, BN, BK) instead of the backend's choice (``matmul_tile``).
    """
    dev = backend.device()
    out_shape = _out_shape(a_shape, b_shape)
    prog = matmul_program(a_shape, b_shape, out_shape, "bench", config)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    out_bytes = int(np.prod(out_shape)) * 4
    values = {("in", 0): dev.create_buffer(a.nbytes), ("in", 1): dev.create_buffer(b.nbytes)}
    values[("out", 0)] = dev.create_buffer(out_bytes)
    values.update({("tmp", j): dev.create_buffer(nb) for j, nb in enumerate(prog.temps)})
    dev.write(values[("in", 0)], a)
    dev.write(values[("in", 1)], b)
    # (pipeline, bind group, grid) per dispatch: split-K products are two
    steps = [
        (
            dev.pipeline(d.wgsl, len(d.args)),
            dev.bind_group(len(d.args), [(values[r], 0, values[r].size) for r in d.args]),
            d.grid,
        )
        for d in prog.dispatches
    ]
    timed = pass_timer(dev)
    timed(1, steps)  # JIT / warm-up
    seconds = timed(reps, steps)
    got = np.frombuffer(dev.read(values[("out", 0)], out_bytes), np.float32).reshape(out_shape)
    want = a.astype(np.float64) @ b.astype(np.float64)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    for buf in values.values():
        buf.destroy()
    return _flops(a_shape, b_shape) * reps / seconds / 1e12, err


# tiles timed for every shape (the backend's own choice is the "tile" column)
VARIANTS = [(64, 64, 16), (64, 128, 16), (64, 128, 32), (128, 64, 32), (128, 128, 16), (128, 128, 32)]


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


def _shapes(sizes: list[int], gpt: bool) -> list[tuple[str, Shape, Shape]]:
    rows = [(f"{n}^3", (n, n), (n, n)) for n in sizes]
    if gpt:  # the GPT benchmark's products (B*T=8192, d=512, 4d=2048, 8 heads of 64, T=256)
        rows += [
            ("x@W_fc", (8192, 512), (512, 2048)),
            ("dW_fc", (512, 8192), (8192, 2048)),
            ("q@k^T", (32, 8, 256, 64), (32, 8, 64, 256)),
            ("p@v", (32, 8, 256, 256), (32, 8, 256, 64)),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="lavapipe: sizes 64 and 128, no GPT shapes")
    args = parser.parse_args()
    if args.small:
        args.sizes, args.reps = [64, 128], 1
    backend = get_backend("wgpu")
    dev = backend.device()
    print(f"adapter: {dev.summary}; features: {', '.join(sorted(dev.features))}")
    rows = []
    for label, a, b in _shapes(args.sizes, not args.small):
        flop = _flops(a, b)
        reps = max(args.reps, min(args.reps * 10, int(args.reps * 2 * 2048**3 / flop)))
        tf, err = wgpu_matmul_tflops(backend, a, b, reps)
        each = [wgpu_matmul_tflops(backend, a, b, reps, c)[0] for c in VARIANTS]
        batch = int(np.prod(_out_shape(a, b)[:-2]))
        mn = (a[-2] * (batch if len(b) == 2 else 1), b[-1], a[-1], 1 if len(b) == 2 else batch)
        splits = split_k(*mn)
        tile = "x".join(map(str, matmul_tile(*mn) if splits == 1 else TILES[0][0]))
        rows.append(
            (label, tile + (f"/{splits}k" if splits > 1 else ""), tf, torch_tflops(a, b, reps), err, each)
        )
    print(f"host cost per dispatch in a compiled plan: {dispatch_cost():.1f} us")
    names = "".join(f"{'x'.join(map(str, c)):>12}" for c in VARIANTS)
    print(
        f"{'shape':>8} {'tile (/split-K)':>13} {'wgpu TF/s':>10} {'torch TF/s':>11} {'ratio':>6} {'rel err':>8} | TF/s per tile:{names}"
    )
    for label, tile, tf, ref, err, each in rows:
        ratio = f"{tf / ref:.0%}" if ref else "-"
        ref_s = f"{ref:.3g}" if ref else "-"
        per_tile = "".join(f"{t:>12.3g}" for t in each)
        print(f"{label:>8} {tile:>13} {tf:>10.3g} {ref_s:>11} {ratio:>6} {err:>8.1e} | {'':>14}{per_tile}")


if __name__ == "__main__":
    main()
