"""The dispatches of the GPT training step's real (fused) wgpu plan: ops, shape, bytes, bandwidth bound.

Builds the plan of ``gpu_gpt_step.py`` (same model flags; the full size by default) without running
a step unless asked, so it works on lavapipe: compiling is quick there, running full-size steps is
not. Lists each dispatch's ops (a fused kernel's ops joined by ``+``), the shape of the value its
step computes and the bytes it binds (inputs, outputs, scratch: an upper bound of what it reads and
writes), then totals per ops label with the time those bytes take at ``--tbps`` (4 TB/s, about an
H200's HBM). ``--timed`` also runs the step once through ``Function.profile`` (the fused plan's own
dispatches, timestamped; run it twice in one process so pipeline compilation is not timed) and adds
the measured milliseconds and the achieved bandwidth (on the GPU machine)::

    python3 benchmarks/gpu_plan_dispatches.py --top 40
    python3 benchmarks/gpu_plan_dispatches.py --timed --top 40
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_gpt_step import (  # sets XDG_RUNTIME_DIR, registers wgpu from the source tree
    add_model_arguments,
    asg_step,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--small", action="store_true", help="2 layers, d=64, T=64, batch 8")
    parser.add_argument("--tbps", type=float, default=4.0, help="bandwidth for the lower bound, TB/s")
    parser.add_argument("--top", type=int, default=30, help="largest dispatches to list")
    parser.add_argument("--timed", action="store_true", help="also time one step (fused dispatches)")
    a = parser.parse_args()
    if a.small:
        a.layers, a.d, a.heads, a.t, a.batch = 2, 64, 4, 64, 8
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.vocab, (a.batch, a.t)).astype(np.int64)
    y = rng.integers(0, a.vocab, (a.batch * a.t,)).astype(np.int64)
    step = asg_step("wgpu", a.vocab, a.t, a.d, a.layers, a.heads, a.batch)
    plan = step.plan_for(x, y)
    shapes = plan.schedule.spec.shapes
    labels, sizes = plan.dispatch_labels(), plan.dispatch_bytes()
    measured = None
    if a.timed:
        step.profile(x, y)  # compiles every pipeline on the device (first dispatch), untimed
        p = step.profile(x, y)
        measured = [t.seconds for t in p.nodes]
        print(p.table(top=10))
    rows = []
    for k, ((index, ops), nb) in enumerate(zip(labels, sizes, strict=True)):
        out = tuple(int(d) for d in shapes[plan.schedule.steps[index].output])
        rows.append((k, index, ops, out, nb, measured[k] if measured else None))
    bound = lambda nb: nb / (a.tbps * 1e12) * 1e3  # noqa: E731  (ms)
    print(f"config: layers={a.layers} d={a.d} heads={a.heads} T={a.t} batch={a.batch} vocab={a.vocab}")
    print(f"{len(plan.schedule.steps)} schedule steps, {plan.dispatch_count} dispatches per step")
    total = sum(sizes)
    print(f"bytes bound by all dispatches: {total / 2**20:.1f} MiB, {bound(total):.2f} ms at {a.tbps} TB/s")
    if measured:
        print(f"measured: {sum(measured) * 1e3:.2f} ms in the dispatches")
    order = (lambda r: -(r[5] or 0.0)) if measured else (lambda r: -r[4])
    print(f"\nlargest {a.top} dispatches by {'measured time' if measured else 'bytes'}:")
    print(f"{'#':>4} {'step':>5} {'MiB':>8} {'bound ms':>9} {'meas ms':>8} {'TB/s':>5}  {'shape':20} ops")
    for k, index, ops, out, nb, s in sorted(rows, key=order)[: a.top]:
        ms = f"{s * 1e3:8.3f} {nb / s / 1e12 if s else 0.0:5.2f}" if s is not None else f"{'-':>8} {'-':>5}"
        print(f"{k:4d} {index:5d} {nb / 2**20:8.2f} {bound(nb):9.4f} {ms}  {out!s:20} {ops}")
    totals: dict[str, list[float]] = {}
    for _, _, ops, _, nb, s in rows:
        entry = totals.setdefault(ops, [0, 0, 0.0])
        entry[0] += 1
        entry[1] += nb
        entry[2] += s or 0.0
    print(f"\nper ops label ({'slowest' if measured else 'most bytes'} first):")
    print(f"{'calls':>5} {'MiB':>9} {'bound ms':>9} {'meas ms':>8}  ops")
    for ops, (calls, nb, s) in sorted(totals.items(), key=lambda kv: -(kv[1][2] or kv[1][1])):
        ms = f"{s * 1e3:8.3f}" if measured else f"{'-':>8}"
        print(f"{int(calls):5d} {nb / 2**20:9.1f} {bound(nb):9.3f} {ms}  {ops}")


if __name__ == "__main__":
    main()
