"""Memory (and time) of attention's forward + backward step: the fused ``ag.attention`` against the
unfused formula (matmul, scale, where with a causal mask, softmax, matmul) on a GPT-like shape.

For each form it builds ``[out, dq, dk, dv]`` of ``sum(out * cotangent)`` with causal attention of
q, k, v ``(B, H, T, E)``, compiles it on the numpy backend and reports, from the plan's schedule
(``Function.profile().memory``): the buffer table (planned bytes), the peak of computed values
(planned buffers plus values kernels allocate), every computed value with no reuse; then the
``tracemalloc`` peak of one step, which also counts the kernels' scratch (the fused kernels' score
blocks), and the median step time.

``--gpt`` measures a whole asg-zoo GPT training graph instead (loss and every parameter gradient;
``n_layer`` 2, ``n_embd = heads * dim``, vocabulary 65), built once as it is (fused) and once with
``ag.attention`` replaced by the unfused formula while the graph is built.

Forms: ``unfused`` (the formula, as built), ``fused`` (``ag.attention`` and its gradient ops kept fused:
``options={"decompose": ()}``) and ``decomposed`` (``ag.attention`` as the numpy backend runs it by
default: every op of the family replaced by its formula before lowering, the shared scores merged).

    python benchmarks/attention_memory.py [--batch 8] [--heads 4] [--length 256] [--dim 32] [--steps 5] [--gpt]
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


def unfused(
    q: ag.Tensor, k: ag.Tensor, v: ag.Tensor, mask: ag.Tensor | None = None, *, causal: bool = True,
    scale: float | None = None,
) -> ag.Tensor:  # fmt: skip
    """``softmax(where(allowed, scale * q k^T, -inf)) v`` in ordinary core ops (ag.attention's signature)."""
    s = ag.matmul(q, ag.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    allowed = causal_allowed(q.shape[-2], k.shape[-2]) if causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        s = ag.where(allowed, s, -math.inf)
    return ag.matmul(ag.softmax(s, -1), v)


def attention_step(build, arrays: list[np.ndarray], options: dict) -> ag.Function:
    """``[out, dq, dk, dv]`` of ``sum(out * cotangent)`` for causal attention built by ``build``."""
    xs = [ag.input(n, a.shape, a.dtype) for n, a in zip("qkv", arrays, strict=True)]
    out = build(*xs, causal=True)
    cot = ag.constant(np.random.default_rng(1).standard_normal(out.shape).astype(np.float32))
    return ag.compile([out, *ag.grad((out * cot).sum(), xs)], inputs=xs, options=options)


def gpt_step(
    build, batch: int, heads: int, length: int, dim: int, options: dict
) -> tuple[ag.Function, list[np.ndarray]]:
    """A zoo GPT's loss and parameter gradients, with ``ag.attention`` being ``build`` while it is built."""
    from asg.zoo import GPT, GPTConfig, lm_loss

    config = GPTConfig(block_size=length, vocab_size=65, n_layer=2, n_head=heads, n_embd=heads * dim)
    model = GPT(config)
    idx, targets = ag.input("idx", (batch, length), "int64"), ag.input("targets", (batch, length), "int64")
    fused, ag.attention = ag.attention, build
    try:
        loss = lm_loss(model(idx), targets)
    finally:
        ag.attention = fused
    params = [p for p in model.parameters() if p.dtype.startswith("float")]
    f = ag.compile([loss, *ag.grad(loss, params)], inputs=[idx, targets], options=options)
    tokens = np.random.default_rng(2).integers(0, 65, (2, batch, length))
    return f, list(tokens)


def measure(f: ag.Function, arrays: list[np.ndarray], steps: int) -> dict[str, float]:
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
    parser.add_argument("--gpt", action="store_true", help="a whole zoo GPT training graph")
    a = parser.parse_args()
    shape = (a.batch, a.heads, a.length, a.dim)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    what = f"zoo GPT (2 layers) loss + gradients, B={a.batch}, T={a.length}, {a.heads} heads of {a.dim}"
    print(what if a.gpt else f"causal attention forward + backward, q/k/v {shape} float32, numpy backend")
    print(
        f"{'':10} {'planned MiB':>12} {'peak MiB':>10} {'unplanned MiB':>14} {'tracemalloc MiB':>16} {'ms':>8}"
    )
    forms = (
        ("unfused", unfused, {}),
        ("fused", ag.attention, {"decompose": ()}),
        ("decomposed", ag.attention, {}),
    )
    for name, build, options in forms:
        if a.gpt:
            m = measure(*gpt_step(build, a.batch, a.heads, a.length, a.dim, options), a.steps)
        else:
            m = measure(attention_step(build, arrays, options), arrays, a.steps)
        mib = [m[key] / 2**20 for key in ("planned", "peak", "unplanned", "traced")]
        print(f"{name:10} {mib[0]:12.2f} {mib[1]:10.2f} {mib[2]:14.2f} {mib[3]:16.2f} {m['ms']:8.1f}")


if __name__ == "__main__":
    main()
