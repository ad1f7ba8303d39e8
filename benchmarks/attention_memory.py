"""Memory (and time) of attention's forward + backward step: the fused ``ag.attention`` against the
unfused formula (matmul, scale, where with a causal mask, softmax, matmul) on a GPT-like shape.

For each form it builds ``[out, dq, dk, dv]`` of ``sum(out * cotangent)`` with causal attention of
q, k, v ``(B, H, T, E)``, compiles it on the numpy backend and reports, from the plan's schedule
(``Function.profile().memory``): the buffer table (planned bytes), the peak of computed values
(planned buffers plus values kernels allocate), every computed value with no reuse; then the
``tracemalloc`` peak of one step, which also counts the kernels' scratch (the fused kernels' score
blocks), and the median step time.

    python benchmarks/attention_memory.py [--batch 8] [--heads 4] [--length 256] [--dim 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import tracemalloc

import numpy as np

import asg.core as ag
from asg.core.ops.attention import causal_allowed


def unfused(q: ag.Tensor, k: ag.Tensor, v: ag.Tensor, causal: bool = True) -> ag.Tensor:
    """``softmax(where(causal, q k^T / sqrt(E), -inf)) v`` in ordinary core ops."""
    s = ag.matmul(q, ag.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    s = ag.where(causal_allowed(q.shape[-2], k.shape[-2]), s, -math.inf)
    return ag.matmul(ag.softmax(s, -1), v)


def measure(build, arrays: list[np.ndarray], steps: int) -> dict[str, float]:
    xs = [ag.input(n, a.shape, a.dtype) for n, a in zip("qkv", arrays, strict=True)]
    out = build(*xs, causal=True)
    cot = ag.constant(np.random.default_rng(1).standard_normal(out.shape).astype(np.float32))
    f = ag.compile([out, *ag.grad((out * cot).sum(), xs)], inputs=xs)
    memory = f.profile(*arrays).memory
    tracemalloc.start()
    f(*arrays)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        f(*arrays)
        times.append(time.perf_counter() - start)
    return {
        "planned": memory.planned_bytes,
        "peak": memory.peak_bytes,
        "unplanned": memory.unplanned_bytes,
        "traced": traced,
        "ms": 1e3 * statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    a = parser.parse_args()
    shape = (a.batch, a.heads, a.length, a.dim)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    print(f"causal attention forward + backward, q/k/v {shape} float32, numpy backend")
    print(
        f"{'':8} {'planned MiB':>12} {'peak MiB':>10} {'unplanned MiB':>14} {'tracemalloc MiB':>16} {'ms':>8}"
    )
    for name, build in (("unfused", unfused), ("fused", ag.attention)):
        m = measure(build, arrays, a.steps)
        mib = [m[key] / 2**20 for key in ("planned", "peak", "unplanned", "traced")]
        print(f"{name:8} {mib[0]:12.2f} {mib[1]:10.2f} {mib[2]:14.2f} {mib[3]:16.2f} {m['ms']:8.1f}")


if __name__ == "__main__":
    main()
