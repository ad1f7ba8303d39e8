"""Matmul GFLOP/s on the CPU: numpy's BLAS (OpenBLAS) against ASG's MKL path and PyTorch, at ASG's shapes.

Each library runs **in its own subprocess** (see ``shared/notes/cpu.md``: idle BLAS threads of one
library spin on the cores of another), pinned with ``taskset`` to the same cores (``--cores``,
default the first ``--threads`` cores this process may use), with ``--threads`` threads (default 2).
The shapes are those of ``benchmarks/train_steps.py``'s MLP, LeNet-5 (the batch-wide im2col GEMMs)
and GPT workloads; ``ᵀ`` marks an operand passed as a transposed view, as the gradients do.

Columns:

* ``numpy``: ``asg.core.blas.matmul`` with ``ASG_BLAS=numpy`` (``np.matmul``, with the
  ``(..., m, k) @ (k, n)`` rows folded into one GEMM as ASG's matmul kernel does);
* ``mkl GNU`` (and the other ``--layers``): ``asg.core.blas.matmul`` with ``ASG_BLAS=mkl`` and
  ``MKL_THREADING_LAYER`` set to that layer;
* ``torch``: ``torch.matmul`` (PyTorch's own MKL / oneDNN), when torch is installed.

    python benchmarks/blas.py [--threads 2] [--cores 0,1] [--layers GNU,INTEL,SEQUENTIAL] [--repeats 7]
        [--rounds 3] [--only GPT] [--clock wall|cpu]

The workers inherit the environment: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/blas.py`` times MKL
with sleeping OpenMP threads (the default keeps libgomp's short spin; see ``asg.core.blas``). On a
machine shared with other work, ``--threads 1 --clock cpu`` compares the kernels themselves.

Needs numpy, and the ``mkl`` package for the MKL columns (``pip install asg-core[mkl]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

# A worker fixes its thread counts before numpy (and its BLAS) or torch is imported.
if __name__ == "__main__" and "--worker" in sys.argv:
    _n = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ASG_NUM_THREADS"):
        os.environ[_var] = _n

import numpy as np

# (label, a shape, a transposed, b shape, b transposed): a transposed operand is the swapaxes view
# of a contiguous array of the swapped shape.
SHAPES: list[tuple[str, tuple[int, ...], bool, tuple[int, ...], bool]] = [
    ("MLP fc1", (128, 784), False, (784, 256), False),
    ("MLP fc1 weight grad", (784, 128), True, (128, 256), False),
    ("MLP fc1 hidden 4096 b512", (512, 784), False, (784, 4096), False),
    ("LeNet conv1 fwd", (6, 25), False, (25, 50176), False),
    ("LeNet conv1 weight grad", (6, 50176), False, (50176, 25), True),
    ("LeNet conv2 fwd", (16, 150), False, (150, 6400), False),
    ("LeNet conv2 weight grad", (16, 6400), False, (6400, 150), True),
    ("LeNet conv2 input grad", (150, 16), False, (16, 6400), False),
    ("LeNet fc1", (64, 400), False, (400, 120), False),
    ("GPT qkv", (1024, 128), False, (128, 384), False),
    ("GPT qkv 3-d", (16, 64, 128), False, (128, 384), False),
    ("GPT qkv weight grad", (128, 1024), True, (1024, 384), False),
    ("GPT mlp down", (1024, 512), False, (512, 128), False),
    ("GPT mlp down grad", (1024, 128), False, (128, 512), True),
    ("GPT attention q@kᵀ", (64, 64, 32), False, (64, 32, 64), True),
    ("GPT attention p@v", (64, 64, 64), False, (64, 64, 32), False),
    ("GPT d512 mlp up", (1024, 512), False, (512, 2048), False),
    ("GPT d512 T256 attention", (32, 256, 64), False, (32, 64, 256), False),
    ("small 32^3", (32, 32), False, (32, 32), False),
    ("small 64^3", (64, 64), False, (64, 64), False),
    ("small 128^3", (128, 128), False, (128, 128), False),
]


def _shapes(only: str) -> list[tuple[str, tuple[int, ...], bool, tuple[int, ...], bool]]:
    return [s for s in SHAPES if only.lower() in s[0].lower()]


def _operand(rng: np.random.Generator, shape: tuple[int, ...], transposed: bool) -> np.ndarray:
    if not transposed:
        return rng.standard_normal(shape, dtype=np.float32)
    swapped = (*shape[:-2], shape[-1], shape[-2])
    return np.swapaxes(rng.standard_normal(swapped, dtype=np.float32), -1, -2)


def _flops(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return 2.0 * float(np.prod(batch)) * a[-2] * a[-1] * b[-1]


def _time(fn: Any, repeats: int, clock: Any = time.perf_counter) -> float:
    """Median seconds of one call, over ``repeats`` loops of at least ~20 ms each."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(1, int(0.02 / once))
    for _ in range(min(loops, 10)):
        fn()
    samples = []
    for _ in range(repeats):
        start = clock()
        for _ in range(loops):
            fn()
        samples.append((clock() - start) / loops)
    return float(np.median(samples))


def worker(kind: str, repeats: int, threads: int, only: str, clock: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    if kind == "torch":
        import torch

        torch.set_num_threads(threads)
        setup = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    else:
        from asg.core import blas

        setup = json.dumps(blas.info())
    results = {}
    for label, sa, ta, sb, tb in _shapes(only):
        a, b = _operand(rng, sa, ta), _operand(rng, sb, tb)
        if kind == "torch":
            at, bt = torch.from_numpy(a), torch.from_numpy(b)
            out = torch.matmul(at, bt)

            def fn(at: Any = at, bt: Any = bt, out: Any = out) -> Any:
                return torch.matmul(at, bt, out=out)
        else:
            out = blas.matmul(a, b)

            def fn(a: np.ndarray = a, b: np.ndarray = b, out: np.ndarray = out) -> Any:
                return blas.matmul(a, b, out)

        results[label] = _time(fn, repeats, time.process_time if clock == "cpu" else time.perf_counter)
    return {"setup": setup, "seconds": results}


def run(kind: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any] | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--threads", str(args.threads)]
    cmd += ["--repeats", str(args.repeats), "--only", args.only, "--clock", args.clock]
    if shutil.which("taskset") and args.cores:
        cmd = ["taskset", "-c", args.cores, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode != 0:
        print(f"{kind} {env} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    parser.add_argument("--cores", default="", help="taskset core list (default: the first --threads usable)")
    parser.add_argument(
        "--layers", default="GNU", help="MKL threading layers to time, comma-separated (GNU,INTEL,SEQUENTIAL)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per shape; the median is shown")
    parser.add_argument(
        "--rounds", type=int, default=3, help="processes per library, alternated; each shape's best is shown"
    )
    parser.add_argument("--only", default="", help="time only the shapes whose label contains this text")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the process's CPU time, which other load on the machine does not inflate (meaningful "
        "with --threads 1 only: spinning threads count as work)",
    )
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch column")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats, args.threads, args.only, args.clock)))
        return
    if not args.cores and hasattr(os, "sched_getaffinity"):
        args.cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[: args.threads])

    columns: list[tuple[str, str, dict[str, str]]] = [("numpy", "asg", {"ASG_BLAS": "numpy"})]
    for layer in [s.strip().upper() for s in args.layers.split(",") if s.strip()]:
        columns.append((f"mkl {layer}", "asg", {"ASG_BLAS": "mkl", "MKL_THREADING_LAYER": layer}))
    if not args.no_torch:
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            columns.append(("torch", "torch", {}))
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, cores {args.cores or 'any'}, "
        f"{args.threads} threads, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}, "
        f"numpy {np.__version__}; float32, {args.clock} clock, best of {args.rounds} rounds of the median of {args.repeats} loops, each library in its own process\n"
    )
    results: dict[str, dict[str, Any]] = {}
    # Rounds alternate the libraries, so that changing load from other processes falls on all;
    # each shape keeps its best time over the rounds.
    for _ in range(args.rounds):
        for name, kind, env in columns:
            got = run(kind, args, env)
            if got is None:
                continue
            if name not in results:
                results[name] = got
                print(f"{name}: {got['setup']}", flush=True)
            best = results[name]["seconds"]
            for label, seconds in got["seconds"].items():
                best[label] = min(best[label], seconds)
    names = list(results)
    print()
    head = f"| {'shape':52s} |" + "".join(f" {n + ' GFLOP/s':>17s} |" for n in names)
    if "numpy" in results:
        head += "".join(f" {'numpy/' + n:>14s} |" for n in names[1:])
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for label, sa, ta, sb, tb in _shapes(args.only):
        text = f"{'x'.join(map(str, sa))}{'ᵀ' if ta else ''} @ {'x'.join(map(str, sb))}{'ᵀ' if tb else ''}"
        row = f"| {label + ': ' + text:52s} |"
        flops = _flops(sa, sb)
        for n in names:
            row += f" {flops / results[n]['seconds'][label] / 1e9:17.1f} |"
        if "numpy" in results:
            base = results["numpy"]["seconds"][label]
            row += "".join(f" {base / results[n]['seconds'][label]:14.2f} |" for n in names[1:])
        print(row)
    print("\n(numpy/X > 1: X is faster than numpy's BLAS.)")


if __name__ == "__main__":
    main()
