"""GPU memory of the GPT training step of ``gpu_gpt_step.py`` on the wgpu backend, without timing steps.

Builds the step's plan (full size by default: 8 layers, d=512, T=256, batch 32), uploads the
parameters and optimizer state, and prints every byte the backend holds on the device for it: the
plan's buffers (packed values, split-K scratch, inputs, output and update copies), the parameters'
and state's pooled buffers, the pool's free list and the readback staging buffer. Then the values
live at the plan's peak step by op, and the plan's buffers by size. The figures come from the plan
and the pool, so lavapipe gives those of any adapter with the same binding limit (``--run`` also
runs one step, slow on lavapipe: 15 minutes at full size; ``--recompute all|transpose|none`` sets
what the matmuls recompute as they load A instead of storing it)::

    PYTHONPATH=packages/asg-core/src:packages/asg-nn/src:packages/asg-gpu/src \\
        python3 benchmarks/gpu_memory.py
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_gpt_step import (  # also registers wgpu (through _gpu)
    add_model_arguments,
    add_recompute_argument,
    asg_step,
)

from asg.core.backends import get_backend
from asg.core.storage import claim_all

MIB = 2**20


def value_name(plan: Any, key: int) -> str:
    """What a packed value is: its op and, for a gradient, the forward op it belongs to."""
    if key < 0:  # a step's scratch buffer
        step = plan.schedule.steps[(-key - 1) // 1_000_000]
        return f"{step.node.op} scratch"
    node = plan._nodes[key]
    of = node.meta.get("grad_of")
    return f"{node.op} (grad of {plan._nodes[of].op})" if of in plan._nodes else node.op


def live_bytes(plan: Any) -> np.ndarray:
    """Bytes of packed values live at each step."""
    live = np.zeros(len(plan.schedule.steps) + 1)
    for v in plan.lifetimes:
        live[v.first : v.last + 1] += v.nbytes
    return live


def report(plan: Any, top: int = 12) -> dict[str, float]:
    """Print the memory of ``plan`` (parameters uploaded); return the totals in MiB."""
    backend = get_backend("wgpu")
    pool, dev = backend.pool.stats(), backend.device()
    owned = sum(b.size for b in plan._owned)
    packed = getattr(plan, "packed_bytes", 0)
    storage = sum(backend.storage.buffer(v).size for v in plan._variables)
    staging = dev._staging.size if dev._staging is not None else 0
    total = pool.in_use_bytes + pool.free_bytes + staging
    rows = [
        ("packed values and scratch", packed),
        ("other plan buffers (inputs, copies, checks)", owned - packed),
        ("parameters and optimizer state", storage),
        ("other pooled buffers in use", pool.in_use_bytes - owned - storage),
        ("pool free list", pool.free_bytes),
        ("readback staging", staging),
    ]
    print(f"{'buffer':48} {'MiB':>9}")
    for name, nb in rows:
        print(f"{name:48} {nb / MIB:9.1f}")
    print(f"{'total held on the device':48} {total / MIB:9.1f}")
    live = live_bytes(plan)
    peak = int(live.argmax())
    print(
        f"\npeak of live values: {live.max() / MIB:.1f} MiB at step {peak} of {len(plan.schedule.steps)} "
        f"({plan.schedule.steps[peak].node.op}); packing reaches {packed / MIB:.1f} MiB"
    )
    at_peak: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for v in plan.lifetimes:
        if v.first <= peak <= v.last:
            name = value_name(plan, v.key)
            at_peak[name] += v.nbytes
            count[name] += 1
    print(f"{'live at the peak, by op':48} {'MiB':>9} {'values':>7}")
    for name, nb in at_peak.most_common(top):
        print(f"{name:48} {nb / MIB:9.1f} {count[name]:7d}")
    sizes = Counter(b.size for b in plan._owned)
    print(f"\n{'plan buffers by size':30} {'count':>7} {'MiB':>9}")
    for nb, c in sorted(sizes.items(), key=lambda kv: -kv[0] * kv[1])[:top]:
        print(f"{f'{nb / MIB:.2f} MiB':30} {c:7d} {nb * c / MIB:9.1f}")
    return {"total": total / MIB, "plan": owned / MIB, "storage": storage / MIB, "peak": live.max() / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--run", action="store_true", help="also run one step (its staging buffer counts)")
    parser.add_argument("--no-pack", action="store_true", help="options pack_buffers=False")
    add_recompute_argument(parser)
    a = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.vocab, (a.batch, a.t)).astype(np.int64)
    y = rng.integers(0, a.vocab, (a.batch * a.t,)).astype(np.int64)
    options = {"pack_buffers": not a.no_pack, "recompute": a.recompute}
    step = asg_step("wgpu", a.vocab, a.t, a.d, a.layers, a.heads, a.batch, options=options)
    plan = step.plan_for(x, y)
    if a.run:
        print(f"loss after one step: {float(step(x, y)):.4f}")
    else:
        claim_all(plan._variables, plan.storage)  # the parameters' upload, as the first step does
    print(f"adapter: {get_backend('wgpu').device().summary}")
    print(f"config: layers={a.layers} d={a.d} heads={a.heads} T={a.t} batch={a.batch} vocab={a.vocab}")
    print(f"dispatches per step: {plan.dispatch_count}\n")
    if not hasattr(plan, "lifetimes"):
        print("(pack_buffers=False: core's buffer table, no lifetimes to show)")
        return
    report(plan)


if __name__ == "__main__":
    main()
