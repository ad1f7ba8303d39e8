"""Per-call overhead of a compiled training step: the whole call against its kernels alone.

Builds a workload of ``train_steps.py`` (MLP 784-256-10 b128 with Adam by default) and reports, as
medians over ``--repeats`` calls (CPU time of this thread, so that other processes on a loaded
machine do not count; ``--wall`` for wall time):

* ``step``: ``fn(x, y)``, everything a user pays for;
* ``plan body``: the plan's generated function alone (every kernel call, values in locals), without
  feed checks, the lock, storage checks and the parameter write-back;
* ``kernels``: the sum of the kernel calls' times, each timed alone (the steps replayed from the plan);
* ``overhead``: step minus plan body, in µs per step.

Run it once per version in the same conditions (an A/B: alternate ``PYTHONPATH`` between two
checkouts, several rounds) and compare the medians::

    OPENBLAS_NUM_THREADS=1 python benchmarks/step_overhead.py [--backend numpy] [--workload mlp]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import train_steps as ts

import asg.core as ag


def median_us(call, repeats: int, clock) -> float:
    """Median duration of ``call()`` over ``repeats`` calls, in µs."""
    times = []
    for _ in range(repeats):
        start = clock()
        call()
        times.append(clock() - start)
    return float(np.median(times)) * 1e6


def median_us_sum(plan, feeds, values, repeats: int, clock) -> float:
    """Median over ``repeats`` runs of the sum of the kernel calls' times (each call timed alone), in µs.

    The steps are replayed from the plan's step table (no parameter is updated).
    """
    sums = []
    for _ in range(repeats):
        env = list(plan._template)
        for s, a in zip(plan._input_slots, feeds, strict=True):
            env[s] = a
        for s, a in zip(plan._param_slots, values, strict=True):
            env[s] = a
        total = 0.0
        with np.errstate(all="ignore"):
            for fn, slots, out, frees in plan._steps:
                args = [env[a] for a in slots]
                start = clock()
                env[out] = fn(*args)
                total += clock() - start
                for s in frees:
                    env[s] = None
        sums.append(total)
    return float(np.median(sums)) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--workload", default="mlp", help="a train_steps.py workload (mlp, lenet, gpt ...)")
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--wall", action="store_true", help="wall time instead of this thread's CPU time")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.wall else time.thread_time
    w = next(w for w in ts.WORKLOADS + ts.SCALE if w.name == args.workload)
    model, inputs, loss = w.build_asg(np.random.default_rng(0))
    params = list(model.params.values())
    fn = ag.compile(
        loss, inputs=inputs, updates=ts.adam_step_updates(params, ag.grad(loss, params)), backend=args.backend
    )
    x, y = w.make_batch(np.random.default_rng(1))
    for _ in range(20):
        fn(x, y)
    plan = fn.plan_for(x, y)
    feeds = [np.asarray(x, n.dtype) for n, x in zip(plan.schedule.inputs, (x, y), strict=True)]
    values = [v.value for v in plan._variables]
    step = median_us(lambda: fn(x, y), args.repeats, clock)
    body = median_us(lambda: plan._fast(feeds, values), args.repeats, clock)
    kernels = median_us_sum(plan, feeds, values, max(20, args.repeats // 4), clock)
    result = {
        "workload": w.name,
        "backend": args.backend,
        "steps": len(plan.schedule.steps),
        "step_us": step,
        "plan_body_us": body,
        "kernels_us": kernels,
        "overhead_us": step - body,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{w.name} on {args.backend}, {result['steps']} kernels: step {step:.1f} µs, plan body {body:.1f} µs, "
        f"kernels {kernels:.1f} µs; overhead (step - plan body) {step - body:.1f} µs"
    )


if __name__ == "__main__":
    main()
