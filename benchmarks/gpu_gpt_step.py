"""A GPT training step (AdamW, fp32) on asg-gpu's wgpu backend vs PyTorch CUDA eager, in one run.

The model is the one of ``../shared/reference/torch_cuda_gpt.py`` (pre-norm blocks, causal attention,
GELU-tanh MLP, tied embedding head), built from asg-nn modules and compiled as one training step.
On the lent GPU machine::

    source .gl/preamble.sh; PYTHONPATH=packages/asg-core/src:packages/asg-nn/src:packages/asg-gpu/src \\
        python3 benchmarks/gpu_gpt_step.py

``--check`` runs a tiny configuration on wgpu and on numpy and prints both loss curves (lavapipe
can run it); ``--small`` a small one on lavapipe with the memory figures, with and without buffer packing. The table gives median step time, GPU memory held by the backend's pool, dispatches
per step and, where torch has CUDA, PyTorch's eager SDPA step and peak memory. ``--recompute MODE``
sets the wgpu option ``recompute`` (``all``: the MLP activation and attention's transposed output
recomputed by the matmuls reading them, not stored; ``transpose``, the default: the transposes only;
``none``), to compare time and memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu import cuda_torch  # sets XDG_RUNTIME_DIR, registers wgpu from the source tree

import asg.core as ag
from asg import nn
from asg.core.backends import get_backend
from asg.nn import functional as F


class Block(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.h = h

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        b, t, c = x.shape
        q, k, v = ag.chunk(self.qkv(self.ln1(x)), 3, axis=2)
        q, k, v = (
            ag.reshape(z, (b, t, self.h, c // self.h)).transpose(1, 2) for z in (q, k, v)
        )  # (B, h, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(ag.reshape(y.transpose(1, 2), (b, t, c)))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, t: int, d: int, layers: int, h: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(t, d)
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.t = t

    def forward(self, idx: ag.Tensor) -> ag.Tensor:
        x = self.tok(idx) + self.pos(ag.arange(0, self.t, dtype="int64"))
        for block in self.blocks:
            x = block(x)
        logits = self.ln(x) @ self.tok.weight.T  # tied head
        return ag.reshape(logits, (-1, logits.shape[-1]))


def asg_step(
    backend: str, vocab: int, t: int, d: int, layers: int, h: int, batch: int, options: dict | None = None
):
    nn.init.manual_seed(0)
    model = GPT(vocab, t, d, layers, h)
    params = list(model.parameters())
    opt = nn.optim.AdamW(params, lr=3e-4)
    idx = ag.input("idx", (batch, t), "int64")
    target = ag.input("target", (batch * t,), "int64")
    loss = F.cross_entropy(model(idx), target)
    grads = ag.grad(loss, params)
    # last layers first, as compile_train_step orders them: a plan runs the nodes in the order the
    # updates reach them, so each weight gradient is computed as soon as its layer's backward is done
    # and that layer's activations and gradients are freed early
    updates = dict(reversed(list(opt.updates(grads).items())))
    return ag.compile(loss, inputs=[idx, target], updates=updates, backend=backend, options=options)


def time_asg(step, x: np.ndarray, y: np.ndarray, steps: int) -> tuple[float, list[float]]:
    losses = [float(step(x, y)) for _ in range(3)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(float(step(x, y)))  # the loss readback waits for the step
        times.append(time.perf_counter() - start)
    return float(np.median(times)), losses


def torch_gpt(vocab: int, t: int, d: int, layers: int, h: int):  # type: ignore[no-untyped-def]
    """The same GPT as a ``torch.nn.Module`` (on the CPU, PyTorch's own initialisation); needs torch."""
    import torch
    import torch.nn.functional as TF

    class TBlock(torch.nn.Module):
        def __init__(s) -> None:
            super().__init__()
            s.ln1, s.qkv, s.proj = torch.nn.LayerNorm(d), torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            s.ln2, s.fc, s.out = torch.nn.LayerNorm(d), torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

        def forward(s, x):
            b, tt, c = x.shape
            q, k, v = s.qkv(s.ln1(x)).split(c, 2)
            q, k, v = (z.view(b, tt, h, c // h).transpose(1, 2) for z in (q, k, v))
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + s.proj(y.transpose(1, 2).reshape(b, tt, c))
            return x + s.out(TF.gelu(s.fc(s.ln2(x)), approximate="tanh"))

    class TGPT(torch.nn.Module):
        def __init__(s) -> None:
            super().__init__()
            s.tok, s.pos = torch.nn.Embedding(vocab, d), torch.nn.Embedding(t, d)
            s.blocks = torch.nn.ModuleList([TBlock() for _ in range(layers)])
            s.ln = torch.nn.LayerNorm(d)

        def forward(s, idx):
            x = s.tok(idx) + s.pos(torch.arange(idx.shape[1], device=idx.device))
            for blk in s.blocks:
                x = blk(x)
            return (s.ln(x) @ s.tok.weight.T).flatten(0, 1)

    return TGPT()


def torch_step(
    vocab: int, t: int, d: int, layers: int, h: int, batch: int, steps: int
) -> tuple[float, float] | None:
    torch = cuda_torch()
    if torch is None:
        return None
    TF = torch.nn.functional
    torch.manual_seed(0)

    m = torch_gpt(vocab, t, d, layers, h).cuda()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4)
    x = torch.randint(0, vocab, (batch, t), device="cuda")
    y = torch.randint(0, vocab, (batch * t,), device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        TF.cross_entropy(m(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), torch.cuda.max_memory_allocated() / 2**20


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's flags (the reference GPT by default), shared with gpu_memory.py and gpu_plan_dispatches.py."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--t", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=65)


def add_recompute_argument(parser: argparse.ArgumentParser) -> None:
    """``--recompute all|transpose|none``: the wgpu option (values matmuls recompute as they load A)."""
    parser.add_argument(
        "--recompute",
        choices=("all", "transpose", "none"),
        default="transpose",
        help="wgpu option recompute: what the matmuls recompute as they load A instead of reading it stored",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--check", action="store_true", help="tiny config on wgpu and numpy, losses compared")
    parser.add_argument(
        "--small",
        action="store_true",
        help="lavapipe: 2 layers, d=64, T=64, batch 8; memory with and without packing",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print the per-kernel GPU profile (timestamps)"
    )
    parser.add_argument(
        "--profile-out",
        default=os.environ.get("OUT"),
        help="with --profile: write dispatches.json and each kernel's WGSL here (default $OUT)",
    )
    parser.add_argument(
        "--dispatches-per-submit",
        type=int,
        default=None,
        help="wgpu option dispatches_per_submit (0: the whole step in one compute pass and submission)",
    )
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch's step")
    add_recompute_argument(parser)
    a = parser.parse_args()
    if a.check:
        a.layers, a.d, a.heads, a.t, a.batch, a.steps = 2, 32, 4, 16, 4, 5
    if a.small:
        a.layers, a.d, a.heads, a.t, a.batch, a.steps = 2, 64, 4, 64, 8, 3
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.vocab, (a.batch, a.t)).astype(np.int64)
    y = rng.integers(0, a.vocab, (a.batch * a.t,)).astype(np.int64)
    cfg = (a.vocab, a.t, a.d, a.layers, a.heads, a.batch)
    options: dict = {"recompute": a.recompute}
    if a.dispatches_per_submit is not None:
        options["dispatches_per_submit"] = a.dispatches_per_submit
    step = asg_step("wgpu", *cfg, options=options)
    seconds, losses = time_asg(step, x, y, a.steps)
    plan = step.plan_for(x, y)
    pool = get_backend("wgpu").pool.stats()
    storage_bytes = sum(
        int(np.prod(n.data._value.shape)) * n.data._value.dtype.itemsize for n in plan.schedule.parameters
    )
    print(f"adapter: {get_backend('wgpu').device().summary}")
    print(f"config: layers={a.layers} d={a.d} heads={a.heads} T={a.t} batch={a.batch} vocab={a.vocab}")
    print(
        f"steps in the schedule: {len(plan.schedule.steps)}, dispatches per step after fusion: {plan.dispatch_count}"
    )
    if a.check:
        ref = asg_step("numpy", *cfg)
        ref_losses = [float(ref(x, y)) for _ in range(len(losses))]
        print("wgpu  losses:", " ".join(f"{v:.6f}" for v in losses))
        print("numpy losses:", " ".join(f"{v:.6f}" for v in ref_losses))
        print(
            f"max relative difference: {max(abs(p - q) / abs(q) for p, q in zip(losses, ref_losses, strict=True)):.2e}"
        )
    ref_t = torch_step(*cfg, a.steps) if not (a.check or a.small or a.no_torch) else None
    mib = 2**20
    print(
        f"memory: parameters and optimizer state {storage_bytes / mib:.1f} MiB; the plan's buffers "
        f"{sum(b.size for b in plan._owned) / mib:.1f} MiB (packed values {getattr(plan, 'packed_bytes', 0) / mib:.1f}; "
        f"core's buffer table {plan.schedule.memory.bytes() / mib:.1f}); pool free {pool.free_bytes / mib:.1f}"
    )
    if a.small:  # the same step with core's buffer table as is (one buffer per entry): the saving
        unpacked = asg_step("wgpu", *cfg, options={"pack_buffers": False})
        unpacked(x, y)
        owned = sum(b.size for b in unpacked.plan_for(x, y)._owned)
        print(f"the plan's buffers without packing (pack_buffers=False): {owned / mib:.1f} MiB")
    print(f"{'':30} {'step ms':>9} {'GPU MiB':>9}")
    print(f"{'asg wgpu (pool in use)':30} {seconds * 1e3:>9.2f} {pool.in_use_bytes / mib:>9.1f}")
    if ref_t:
        print(f"{'torch CUDA eager, SDPA':30} {ref_t[0] * 1e3:>9.2f} {ref_t[1]:>9.0f}")
        print(f"ratio asg/torch: {seconds / ref_t[0]:.2f}x")
    if a.profile:
        prof = step.profile(x, y)
        print(prof.table(top=25))
        print(step_breakdown(plan, x, y, seconds, prof.kernel_seconds))
        if a.profile_out:
            dump_dispatches(plan, prof, a.profile_out)


def step_breakdown(plan, x: np.ndarray, y: np.ndarray, wall: float, kernels: float) -> str:
    """Where a step's wall time goes: the GPU's one compute pass (timestamps at its two ends), the
    host's rest (feeds, recording, submit, readback), and inside the pass the kernels (each timed in a
    pass of its own) against the gaps between them."""
    passes, phases = [], []
    for _ in range(5):
        _, s = plan.run_pass_timed([x, y])
        passes.append(s)
    for _ in range(5):
        plan([x, y])
        phases.append(plan.host_seconds)
    gpu = float(np.median(passes))
    rows = [
        ("step, wall", wall),
        ("GPU: the step's compute passes", gpu),
        ("  kernels (sum, each in its own pass)", kernels),
        ("  between kernels", gpu - kernels),
        ("host: wall - GPU passes", wall - gpu),
    ]
    rows += [(f"  host phase: {k}", float(np.median([p[k] for p in phases]))) for k in phases[0]]
    n = plan.dispatch_count
    lines = [f"{'breakdown':40} {'ms':>8}"] + [f"{k:40} {v * 1e3:8.2f}" for k, v in rows]
    lines.append(f"{n} dispatches: {(gpu - kernels) / n * 1e6:.1f} us between two, on average")
    return "\n".join(lines)


def dump_dispatches(plan, prof, out_dir: str) -> None:
    """Write each dispatch's ops, GPU ms, grid and bytes (dispatches.json) and its WGSL (wgsl/K.wgsl)."""
    import json

    os.makedirs(os.path.join(out_dir, "wgsl"), exist_ok=True)
    sources, grids, sizes = plan.dispatch_sources(), plan.dispatch_grids(), plan.dispatch_bytes()
    unique: dict[str, int] = {}
    rows = []
    for t, src, grid, nb in zip(prof.nodes, sources, grids, sizes, strict=True):
        k = unique.setdefault(src, len(unique))
        rows.append(
            {"ops": t.op, "ms": t.seconds * 1e3, "grid": grid, "bytes": nb, "wgsl": k, "node": t.line}
        )
    for src, k in unique.items():
        with open(os.path.join(out_dir, "wgsl", f"{k}.wgsl"), "w") as f:
            f.write(src)
    with open(os.path.join(out_dir, "dispatches.json"), "w") as f:
        json.dump(rows, f, indent=0)


if __name__ == "__main__":
    main()
