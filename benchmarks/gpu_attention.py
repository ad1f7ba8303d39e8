"""Fused attention on asg-gpu's wgpu backend (forward and backward kernels) vs PyTorch SDPA on CUDA.

Run on the lent GPU machine (see ../shared/device/README.md)::

    source .gl/preamble.sh; PYTHONPATH=packages/asg-core/src:packages/asg-gpu/src:$PYTHONPATH \\
        python3 benchmarks/gpu_attention.py

and on lavapipe (CPU) with ``--small``. Each wgpu kernel (``attention``, and the backward's
``attention_lse``, ``attention_grad_q/k/v``) is the backend's own lowering for the shape
(:func:`asg.gpu.kernels.attention.attention_wgsl`), in every variant
(:data:`~asg.gpu.kernels.attention.VARIANTS`, one table row each; ``--variants`` picks some), plus
the two-output kernels the backend does not lower yet (``attention+lse``, ``attention_grad_kv``).
Each is dispatched ``--reps`` times back to back in one compute pass and timed by timestamp
queries; its outputs are checked against asg-core's numpy kernels. The backward's
``delta = sum(dout * out, -1)`` (ordinary ops, memory-bound) is not timed. PyTorch runs
``scaled_dot_product_attention`` forward, and forward plus backward, in float32 (and float16 for
reference) timed with CUDA events; without CUDA its rows are left out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu import cuda_torch, pass_timer  # sets XDG_RUNTIME_DIR, registers wgpu from the source tree

import asg.core as ag
from asg.core.tensor import apply
from asg.gpu.backend import WgpuBackend
from asg.gpu.kernels.attention import FUSED, ROLES, VARIANTS, Shapes, attention_wgsl

GRADS = ("attention_grad_q", "attention_grad_k", "attention_grad_v")
KERNELS = (*ROLES, *FUSED)
# what each kernel writes to out (and out2), by the names numpy_results gives them
OUTPUTS = {op: (op,) for op in ROLES} | {
    "attention_lse": ("lse",),
    "attention+lse": ("attention", "lse"),
    "attention_grad_kv": ("attention_grad_k", "attention_grad_v"),
}


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
    backend: WgpuBackend,
    sh: Shapes,
    scale: float,
    reps: int,
    variants: Sequence[str],
    repeat: int = 3,
    seed: int = 0,
) -> dict[bool, dict[str, dict[str, tuple[list[float], float]]]]:
    """Per ``causal`` (False, True), per variant (names in :data:`VARIANTS`), per kernel (:data:`KERNELS`):
    (seconds per dispatch, one figure per repeat; max abs error against numpy over its outputs).

    A kernel whose WGSL another variant already generated (the softmax knob leaves the gradient
    kernels alone) is compiled and timed once. Every configuration runs on the same buffers,
    allocated once: on the H200, kernels timed after freshly re-allocated buffers sometimes ran 3x
    slower, so the repeats also show the spread.
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
    sizes["out"] = sizes["out2"] = max(sizes.values())
    bufs = {n: dev.create_buffer(size) for n, size in sizes.items()}
    for n, a in arrays.items():
        dev.write(bufs[n], a)
    timed = pass_timer(dev)
    results: dict[bool, dict[str, dict[str, tuple[list[float], float]]]] = {}
    for causal in (False, True):
        want = numpy_results(arrays, causal, scale)
        dev.write(bufs["lse"], want["lse"].astype(np.float32))
        dev.write(bufs["delta"], want["delta"].astype(np.float32))
        kernels: dict[str, tuple[list, float]] = {}  # WGSL -> (dispatches, max error)
        chosen: dict[tuple[str, str], str] = {}  # (variant, kernel) -> WGSL
        for name in variants:
            for op in KERNELS:
                wgsl, names, grid = attention_wgsl(op, sh, causal, scale, VARIANTS[name])
                chosen[name, op] = wgsl
                if wgsl in kernels:
                    continue
                windows = [(bufs[n], 0, sizes[n]) for n in names]
                dispatch = [(dev.pipeline(wgsl, len(names)), dev.bind_group(len(names), windows), grid)]
                timed(1, dispatch)  # JIT / warm-up
                err = 0.0
                for buf, expected in zip(("out", "out2"), OUTPUTS[op], strict=False):
                    ref = want[expected]
                    got = np.frombuffer(dev.read(bufs[buf], ref.size * 4), np.float32).reshape(ref.shape)
                    finite = np.isfinite(ref)
                    if finite.any():
                        err = max(err, float(np.abs(got[finite] - ref[finite]).max()))
                kernels[wgsl] = (dispatch, err)
        seconds: dict[str, list[float]] = {wgsl: [] for wgsl in kernels}
        for _ in range(repeat):
            for wgsl, (dispatch, _) in kernels.items():
                seconds[wgsl].append(timed(reps, dispatch) / reps)
        results[causal] = {
            name: {op: (seconds[chosen[name, op]], kernels[chosen[name, op]][1]) for op in KERNELS}
            for name in variants
        }
    for buf in bufs.values():
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
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per kernel (the best is shown)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="kernel variants to compare",
    )
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
    measured = wgpu_times(backend, sh, scale, reps, args.variants, repeat)
    print(f"wgpu wall time, JIT and numpy checks included: {time.perf_counter() - start:.1f} s")
    print(
        "ms per kernel (best of the passes); fwd+bwd = attention + attention_lse + grad_q + grad_k + grad_v;"
        " fused = attention+lse + grad_q + grad_kv (two-output kernels, not lowered yet);"
        " TF/s of the forward; err: max abs error vs numpy over all kernels; spread: worst (max-min)/min"
    )
    short = {op: op.replace("attention_", "").replace("attention", "attn") for op in KERNELS}
    head = "".join(f"{short[op]:>9}" for op in KERNELS)
    print(
        f"{'causal':>6} {'variant':>9}{head} {'fwd+bwd':>8} {'fused':>8} {'TF/s':>6} {'err':>8} {'spread':>6}"
    )
    for causal, per_variant in measured.items():
        frac = 0.5 if causal else 1.0
        for name, per_op in per_variant.items():
            best = {op: min(secs) for op, (secs, _) in per_op.items()}
            err = max(e for _, e in per_op.values())
            spread = max((max(secs) - min(secs)) / min(secs) for secs, _ in per_op.values())
            total = best["attention"] + sum(best[op] for op in ("attention_lse", *GRADS))
            fused = best["attention+lse"] + best["attention_grad_q"] + best["attention_grad_kv"]
            tf = flops_fwd * frac / best["attention"] / 1e12
            cols = "".join(f"{best[op] * 1e3:>9.3f}" for op in KERNELS)
            print(
                f"{causal!s:>6} {name:>9}{cols} {total * 1e3:>8.3f} {fused * 1e3:>8.3f} {tf:>6.2f}"
                f" {err:>8.1e} {spread:>6.0%}"
            )
        for dtype in ("float32", "float16"):
            ref = torch_times(sh, causal, reps, dtype)
            if ref is not None:
                tf = flops_fwd * frac / ref[0] / 1e12
                label = f"torch {dtype[5:]}"
                print(
                    f"{causal!s:>6} {label:>9} {'fwd':>8} {ref[0] * 1e3:.3f}, fwd+bwd {ref[1] * 1e3:.3f}"
                    f" (SDPA, {tf:.2f} TF/s forward)"
                )


if __name__ == "__main__":
    main()
