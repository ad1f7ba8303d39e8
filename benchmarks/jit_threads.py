"""numba's threading layers and OpenMP wait policies for ``"numpy-jit"``: idle spinning and step time.

For each (threading layer, ``OMP_WAIT_POLICY``) a fresh process builds a ``train_steps.py`` workload on
``"numpy-jit"`` (MLP by default), runs it, and reports:

* the layer numba actually took (``numba.threading_layer()``; ``tbb`` needs the tbb package);
* ``idle CPU``: CPU seconds the process burns during 0.3 s of sleep right after a step: threads that
  busy-wait show up here (0 means nothing spins against other libraries' threads);
* the median wall time of a step, and of a step followed by a BLAS call outside ASG (``a @ a``), the
  pattern of a program that mixes ASG with other numpy code.

    taskset -c 2,3 python benchmarks/jit_threads.py [--workload mlp] [--threads 2] [--steps 100]

The ``"numpy-jit"`` default is numba's choice of layer (tbb, else omp, else workqueue) with
``OMP_WAIT_POLICY=PASSIVE``; ``workqueue`` never spins but refuses concurrent launches from several
threads. Measure on otherwise idle cores: on an oversubscribed machine a sleeping worker that is not
scheduled in time stalls every parallel kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = [("default", ""), ("omp", "PASSIVE"), ("omp", "ACTIVE"), ("workqueue", ""), ("tbb", "")]


def worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numba
    import numpy as np
    import train_steps as ts

    import asg.core as ag

    w = next(w for w in ts.WORKLOADS + ts.SCALE if w.name == args.workload)
    model, inputs, loss = w.build_asg(np.random.default_rng(0))
    params = list(model.params.values())
    fn = ag.compile(
        loss, inputs=inputs, updates=ts.adam_step_updates(params, ag.grad(loss, params)), backend="numpy-jit"
    )
    x, y = w.make_batch(np.random.default_rng(1))
    for _ in range(5):
        fn(x, y)
    start = time.process_time()
    time.sleep(0.3)
    idle = time.process_time() - start
    a = np.ones((256, 256), np.float32)

    def median_ms(step) -> float:
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1e3

    return {
        "layer": numba.threading_layer(),
        "idle_cpu_s": idle,
        "step_ms": median_ms(lambda: fn(x, y)),
        "step_blas_ms": median_ms(lambda: (fn(x, y), a @ a)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mlp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(worker(args)))
        return
    print(f"{args.workload} on numpy-jit, {args.threads} threads, median of {args.steps} steps")
    print(
        f"{'layer asked':12s} {'OMP_WAIT_POLICY':16s} {'layer':10s} {'idle CPU s':>10s} {'step ms':>8s} {'+BLAS ms':>9s}"
    )
    for layer, policy in CONFIGS:
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
        n = str(args.threads)
        env.update(
            OMP_NUM_THREADS=n,
            OPENBLAS_NUM_THREADS=n,
            MKL_NUM_THREADS=n,
            NUMBA_NUM_THREADS=n,
            ASG_NUM_THREADS=n,
        )
        if layer != "default":
            env["NUMBA_THREADING_LAYER"] = layer
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--workload", args.workload,
               "--steps", str(args.steps)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["failed"])[-1][:70]
            print(f"{layer:12s} {policy or '(asg default)':16s} not available: {reason}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{layer:12s} {policy or '(asg default)':16s} {r['layer']:10s} {r['idle_cpu_s']:10.3f} "
            f"{r['step_ms']:8.2f} {r['step_blas_ms']:9.2f}"
        )


if __name__ == "__main__":
    main()
