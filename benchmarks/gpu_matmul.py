"""fp32 matmul TFLOP/s of asg-gpu's wgpu backend vs PyTorch CUDA (cuBLAS, TF32 off), in one run.

Run on the lent GPU machine (see ../shared/device/README.md)::

    source .gl/preamble.sh; PYTHONPATH=packages/asg-core/src:packages/asg-gpu/src python3 benchmarks/gpu_matmul.py

The wgpu figure is the backend's own lowering of ``a @ b`` (the kernel ``compile(..., backend="wgpu")``
runs), dispatched ``--reps`` times back to back in one compute pass and timed by timestamp queries.
It also prints the host cost per dispatch of a compiled plan of many small elementwise ops, and
checks each product against numpy. torch is optional: without CUDA its column says "-".
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))

import asg.core as ag
from asg.gpu.backend import WgpuBackend
from asg.gpu.kernels.linalg import matmul_program, tile_config


def wgpu_matmul_tflops(
    backend: WgpuBackend, n: int, reps: int, config: tuple[int, int, int] | None = None
) -> tuple[float, float]:
    """(TFLOP/s from timestamps, max relative error against numpy) for an n x n x n product.

    ``config``: a tile (BM, BN, BK) instead of the backend's choice (``tile_config``).
    """
    import wgpu

    dev = backend.device()
    prog = matmul_program((n, n), (n, n), (n, n), "bench", config)
    (d,) = prog.dispatches
    pipe = dev.pipeline(d.wgsl, 3)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    bufs = [dev.create_buffer(a.nbytes) for _ in range(3)]
    dev.write(bufs[0], a)
    dev.write(bufs[1], b)
    bg = dev.bind_group(3, [(buf, 0, a.nbytes) for buf in bufs])
    qs = dev.device.create_query_set(type=wgpu.QueryType.timestamp, count=2)
    qbuf = dev.device.create_buffer(
        size=256, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC
    )

    def run(count: int) -> float:
        enc = dev.device.create_command_encoder()
        cpass = enc.begin_compute_pass(
            timestamp_writes={
                "query_set": qs,
                "beginning_of_pass_write_index": 0,
                "end_of_pass_write_index": 1,
            }
        )
        cpass.set_pipeline(pipe)
        cpass.set_bind_group(0, bg)
        for _ in range(count):
            cpass.dispatch_workgroups(*d.grid)
        cpass.end()
        enc.resolve_query_set(qs, 0, 2, qbuf, 0)
        dev.queue.submit([enc.finish()])
        t = np.frombuffer(dev.read(qbuf, 16), np.uint64)
        return float(int(t[1]) - int(t[0])) * 1e-9

    run(1)  # JIT / warm-up
    seconds = run(reps)
    got = np.frombuffer(dev.read(bufs[2], a.nbytes), np.float32).reshape(n, n)
    want = a.astype(np.float64) @ b.astype(np.float64)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    for buf in bufs:
        buf.destroy()
    return 2.0 * n**3 * reps / seconds / 1e12, err


TILES = [(64, 64, 16), (64, 128, 16), (128, 128, 16), (128, 128, 32)]


def torch_tflops(n: int, reps: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2.0 * n**3 * reps / (time.perf_counter() - start) / 1e12


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    backend = WgpuBackend()
    dev = backend.device()
    print(f"adapter: {dev.summary}; features: {', '.join(sorted(dev.features))}")
    rows = []
    for n in args.sizes:
        reps = args.reps if n >= 1024 else args.reps * 10
        tf, err = wgpu_matmul_tflops(backend, n, reps)
        each = [wgpu_matmul_tflops(backend, n, reps, c)[0] for c in TILES]
        rows.append((n, tile_config(n, n, n), tf, torch_tflops(n, reps), err, each))
    print(f"host cost per dispatch in a compiled plan: {dispatch_cost():.1f} us")
    tiles = "".join(f"{'x'.join(map(str, c)):>12}" for c in TILES)
    print(
        f"{'n':>6} {'tile':>10} {'wgpu TF/s':>10} {'torch TF/s':>11} {'ratio':>6} {'rel err':>8} | TF/s per tile:{tiles}"
    )
    for n, tile, tf, ref, err, each in rows:
        ratio = f"{tf / ref:.0%}" if ref else "-"
        ref_s = f"{ref:.3g}" if ref else "-"
        per_tile = "".join(f"{t:>12.3g}" for t in each)
        name = "x".join(map(str, tile))
        print(f"{n:>6} {name:>10} {tf:>10.3g} {ref_s:>11} {ratio:>6} {err:>8.1e} | {'':>14}{per_tile}")


if __name__ == "__main__":
    main()
