"""Fused attention on asg-gpu's wgpu backend (forward and backward kernels) vs PyTorch SDPA on CUDA.

Run on the lent GPU machine (see ../shared/device/README.md)::

    source .gl/preamble.sh; PYTHONPATH=packages/asg-core/src:packages/asg-gpu/src:$PYTHONPATH \\
        python3 benchmarks/gpu_attention.py

and on lavapipe (CPU) with ``--small``. Each wgpu kernel (``attention``, and the backward's
``attention_lse``, ``attention_grad_q/k/v``) is the backend's own lowering for the shape
(:func:`asg.gpu.kernels.attention.attention_wgsl`), dispatched ``--reps`` times back to back in one
compute pass and timed by timestamp queries; its output is checked against asg-core's numpy kernel.
The backward's ``delta = sum(dout * out, -1)`` (ordinary ops, memory-bound) is not timed. PyTorch
runs ``scaled_dot_product_attention`` forward, and forward plus backward, in float32 (and float16 for
reference) timed with CUDA events; without CUDA its columns say "-".
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu import cuda_torch, pass_timer  # sets XDG_RUNTIME_DIR, registers wgpu from the source tree

import asg.core as ag
from asg.core.tensor import apply
from asg.gpu.backend import WgpuBackend
from asg.gpu.kernels.attention import ROLES, Shapes, attention_wgsl

GRADS = ("attention_grad_q", "attention_grad_k", "attention_grad_v")


def numpy_results(arrays: dict[str, np.ndarray], causal: bool, scale: float) -> dict[str, np.ndarray]:
    """Every kernel's output (and lse, delta) from asg-core's numpy kernels."""
    xs = {n: ag.input(n, a.shape) for n, a in arrays.items()}
    q, k, v, g = (xs[n] for n in "qkvg")
    attrs = dict(causal=causal, scale=scale)
    out = apply("attention", q, k, v, **attrs)
    lse = apply("attention_lse", q, k, v, **attrs)
    delta = (g * out).sum(-1)
    grads = [apply(name, q, k, v, g, lse, delta, **attrs) for name in GRADS]
    f = ag.compile([out, lse, delta, *grads], inputs=list(xs.values()), backend="numpy")
    values = f(*arrays.values())
    return dict(zip(("attention", "lse", "delta", *GRADS), values, strict=True))


def wgpu_times(
    backend: WgpuBackend, sh: Shapes, scale: float, reps: int, repeat: int = 3, seed: int = 0
) -> dict[bool, tuple[dict[str, list[float]], dict[str, float]]]:
    """Per ``causal`` (False, True): (seconds per dispatch of each attention kernel at ``sh``, one
    figure per repeat; max abs error against numpy).

    Every configuration runs on the same buffers, allocated once: on the H200, kernels timed after
    freshly re-allocated buffers sometimes ran 3x slower, so the repeats also show the spread.
    """
    dev = backend.device()
    rng = np.random.default_rng(seed)
    lead = sh.batch
    arrays = {
        "q": rng.standard_normal((*lead, sh.L, sh.E)).astype(np.float32),
        "k": rng.standard_normal((*lead, sh.S, sh.E)).astype(np.float32),
        "v": rng.standard_normal((*lead, sh.S, sh.Ev)).astype(np.float32),
        "g": rng.standard_normal((*lead, sh.L, sh.Ev)).astype(np.float32),
    }
    sizes = {**{n: a.nbytes for n, a in arrays.items()}, "lse": 4 * arrays["q"][..., 0].size}
    sizes["delta"] = sizes["lse"]
    bufs = {n: dev.create_buffer(size) for n, size in sizes.items()}
    for n, a in arrays.items():
        dev.write(bufs[n], a)
    out_size = max(sizes.values())
    out = dev.create_buffer(out_size)
    timed = pass_timer(dev)
    results = {}
    for causal in (False, True):
        want = numpy_results(arrays, causal, scale)
        dev.write(bufs["lse"], want["lse"].astype(np.float32))
        dev.write(bufs["delta"], want["delta"].astype(np.float32))
        seconds: dict[str, list[float]] = {op: [] for op in ROLES}
        errors = {}
        kernels = {}
        for op in ROLES:
            wgsl, names, grid = attention_wgsl(op, sh, causal, scale)
            windows = [(bufs[n], 0, sizes[n]) if n != "out" else (out, 0, out_size) for n in names]
            kernels[op] = [(dev.pipeline(wgsl, len(names)), dev.bind_group(len(names), windows), grid)]
            timed(1, kernels[op])  # JIT / warm-up
            expected = want["lse" if op == "attention_lse" else op]
            got = np.frombuffer(dev.read(out, expected.size * 4), np.float32).reshape(expected.shape)
            finite = np.isfinite(expected)
            errors[op] = float(np.abs(got[finite] - expected[finite]).max()) if finite.any() else 0.0
        for _ in range(repeat):
            for op in ROLES:
                seconds[op].append(timed(reps, kernels[op]) / reps)
        results[causal] = (seconds, errors)
    for buf in (*bufs.values(), out):
        buf.destroy()
    return results


def torch_times(sh: Shapes, causal: bool, reps: int, dtype: str) -> tuple[float, float] | None:
    """(forward, forward + backward) seconds of torch SDPA on CUDA in ``dtype``, or None without CUDA."""
    torch = cuda_torch()
    if torch is None:
        return None
    dt = getattr(torch, dtype)
    q, k, v = (
        torch.randn(*sh.batch, n, e, device="cuda", dtype=dt, requires_grad=True)
        for n, e in ((sh.L, sh.E), (sh.S, sh.E), (sh.S, sh.Ev))
    )
    g = torch.randn(*sh.batch, sh.L, sh.Ev, device="cuda", dtype=dt)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def timed(step) -> float:
        for _ in range(3):
            step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e-3 / reps

    def forward() -> None:
        with torch.no_grad():
            sdpa(q, k, v, is_causal=causal)

    def both() -> None:
        torch.autograd.grad(sdpa(q, k, v, is_causal=causal), (q, k, v), g)

    return timed(forward), timed(both)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="B=2, H=2, T=64, E=32: a quick run on lavapipe")
    parser.add_argument("--shape", type=int, nargs=4, metavar=("B", "H", "T", "E"), default=(32, 8, 256, 64))
    parser.add_argument("--reps", type=int, default=20, help="dispatches per timed pass")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per kernel (min and max shown)")
    args = parser.parse_args()
    b, h, t, e = (2, 2, 64, 32) if args.small else args.shape
    reps, repeat = (2, 1) if args.small else (args.reps, args.repeat)
    backend = WgpuBackend()
    dev = backend.device()
    print(f"adapter: {dev.summary}; B={b} H={h} T={t} E={e}, float32, {reps} dispatches x {repeat} passes")
    sh = Shapes((b, h), t, t, e, e, None)
    scale = 1.0 / math.sqrt(e)
    flops_fwd = 4.0 * b * h * t * t * e  # q k^T and P v
    start = time.perf_counter()
    measured = wgpu_times(backend, sh, scale, reps, repeat)
    print(f"wgpu wall time, JIT and numpy checks included: {time.perf_counter() - start:.1f} s")
    ms = lambda s: f"{s * 1e3:.3f}" if s is not None else "-"  # noqa: E731
    print(
        f"{'causal':>6} {'kernel':>18} {'wgpu ms (min-max)':>18} {'TFLOP/s':>8} {'max err':>8}"
        f" | {'torch fp32 ms (fwd, fwd+bwd)':>28} {'torch fp16 ms':>16}"
    )
    products = {
        "attention": 2,
        "attention_lse": 1,
        "attention_grad_q": 3,
        "attention_grad_k": 3,
        "attention_grad_v": 2,
    }
    for causal, (secs, errs) in measured.items():
        ref32 = torch_times(sh, causal, reps, "float32")
        ref16 = torch_times(sh, causal, reps, "float16")
        frac = 0.5 if causal else 1.0
        best = {op: min(v) for op, v in secs.items()}
        for op in ROLES:
            tf = products[op] * flops_fwd / 2 * frac / best[op] / 1e12
            spread = f"{ms(best[op])}-{ms(max(secs[op]))}"
            print(f"{causal!s:>6} {op:>18} {spread:>18} {tf:>8.3g} {errs[op]:>8.1e} |")
        fwd = best["attention"]
        bwd = sum(best[op] for op in ("attention_lse", *GRADS))
        t32 = f"{ms(ref32[0])}, {ms(ref32[1])}" if ref32 else "-"
        t16 = f"{ms(ref16[0])}, {ms(ref16[1])}" if ref16 else "-"
        print(f"{causal!s:>6} {'forward':>18} {ms(fwd):>18} {'':>8} {'':>8} | {t32:>28} {t16:>16}")
        ratio = (
            f"  (torch fp32 / wgpu: fwd {ref32[0] / fwd:.2f}, fwd+bwd {ref32[1] / (fwd + bwd):.2f})"
            if ref32
            else ""
        )
        print(f"{causal!s:>6} {'forward+backward':>18} {ms(fwd + bwd):>18}{ratio}")


if __name__ == "__main__":
    main()
