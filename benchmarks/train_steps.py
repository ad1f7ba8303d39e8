"""Training-step time on the CPU: ASG (numpy executor) against PyTorch CPU eager, in the same run.

Three workloads, the architectures of ``shared/reference/torch_cpu_steps.py``, each trained with Adam
(lr 1e-3) and softmax cross-entropy on one fixed random batch:

* ``mlp``   — 784-256-10 with ReLU, batch 128;
* ``lenet`` — LeNet-5 on 1x28x28, batch 64 (conv 1->6 5x5 pad 2, relu, maxpool 2, conv 6->16 5x5,
  relu, maxpool 2, flatten, 400-120-84-10);
* ``gpt``   — 4 pre-LN blocks, d=128, 4 heads, T=64, vocab 65, batch 16, causal attention from
  matmul + softmax with an additive mask, GELU MLP 4x, untied head.

The ASG models are built from asg-core ops (asg-nn does not exist yet); the whole step — forward,
graph-to-graph gradients and the Adam update (``compile(updates=...)``) — is one compiled plan.
Before timing, each model checks (untimed) that ASG's loss equals PyTorch's for the same initial weights
(copied torch -> ASG), on the first step and after two Adam steps.

    python benchmarks/train_steps.py [--steps 30] [--warmup 5] [--only mlp,lenet,gpt] [--threads N]
                                     [--profile] [--composed]

``--profile`` times every kernel of the ASG plan and prints the ops that dominate each model.
``--composed`` builds conv2d/max_pool2d/layer_norm from primitive ops even where asg-core has them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Thread counts must be fixed before numpy (and its BLAS) is imported.
if __name__ == "__main__":
    for _i, _arg in enumerate(sys.argv):
        if _arg.startswith("--threads"):
            _n = _arg.split("=", 1)[1] if "=" in _arg else sys.argv[_i + 1]
            for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[_var] = _n

import numpy as np

import asg.core as ag

# Adam as graph updates is written once, in the digits example (asg-nn will own optimizers).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from train_digits import adam_updates

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F
except ImportError:  # the PyTorch column is skipped
    torch = None  # type: ignore[assignment]

TARGETS = {"mlp": 0.8, "lenet": 1.2, "gpt": 1.2}
USE_CORE_OPS = True  # --composed sets this to False


# ============================================================================ ASG model building
@dataclass
class Model:
    """An ASG model: named parameters (torch state_dict names), graph inputs and the loss tensor."""

    params: dict[str, ag.Tensor] = field(default_factory=dict)
    # How a torch tensor of the same name becomes this parameter's value (e.g. a transpose).
    converters: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)

    def param(
        self,
        name: str,
        shape: Sequence[int],
        rng: np.random.Generator,
        bound: float,
        convert: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> ag.Tensor:
        """A new float32 parameter, uniform in +-bound (torch's default init scale for Linear/Conv)."""
        return self.add(name, rng.uniform(-bound, bound, shape).astype(np.float32), convert)

    def add(
        self, name: str, value: np.ndarray, convert: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> ag.Tensor:
        """A new parameter holding ``value``."""
        p = ag.parameter(value, name=name)
        self.params[name] = p
        if convert is not None:
            self.converters[name] = convert
        return p

    def load_torch(self, module: Any) -> None:
        """Copy the torch module's parameters (same names) into the ASG parameters."""
        state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        for name, p in self.params.items():
            value = state[name]
            p.assign(self.converters.get(name, lambda a: a)(value))


def linear(model: Model, rng: np.random.Generator, x: ag.Tensor, name: str, n_in: int, n_out: int,
           bias: bool = True, names: tuple[str, str] | None = None) -> ag.Tensor:  # fmt: skip
    """``x @ W + b`` with W stored (in, out); torch's weight (out, in) is transposed on load.

    The parameters are ``<name>.weight`` and ``<name>.bias``, or ``names`` (weight, bias).
    """
    w_name, b_name = names or (f"{name}.weight", f"{name}.bias")
    bound = 1.0 / math.sqrt(n_in)
    y = x @ model.param(w_name, (n_in, n_out), rng, bound, convert=lambda a: np.ascontiguousarray(a.T))
    if bias:
        y = y + model.param(b_name, (n_out,), rng, bound)
    return y


def ln(model: Model, x: ag.Tensor, name: str) -> ag.Tensor:
    """LayerNorm over the last axis with parameters ``<name>.weight`` (ones) and ``<name>.bias`` (zeros)."""
    d = x.shape[-1]
    weight = model.add(f"{name}.weight", np.ones(d, np.float32))
    return layer_norm(x, weight, model.add(f"{name}.bias", np.zeros(d, np.float32)))


def conv2d_composed(x: ag.Tensor, w: ag.Tensor, b: ag.Tensor, padding: int) -> ag.Tensor:
    """Stride-1 convolution from pad + slices + stack + one matmul (im2col), NCHW, weight (O, C, kh, kw)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    if padding:
        x = ag.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    patches = ag.stack([x[:, :, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)], axis=2)
    cols = patches.reshape(n, c * kh * kw, ho * wo)
    y = w.reshape(o, c * kh * kw) @ cols + b.reshape(o, 1)
    return y.reshape(n, o, ho, wo)


def max_pool2d_composed(x: ag.Tensor, k: int) -> ag.Tensor:
    """Non-overlapping k x k max pooling (stride k) from reshape + max."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).max(axis=(3, 5))


def layer_norm_composed(x: ag.Tensor, weight: ag.Tensor, bias: ag.Tensor, eps: float = 1e-5) -> ag.Tensor:
    """LayerNorm over the last axis from mean, subtraction and rsqrt."""
    centered = x - x.mean(axis=-1, keepdims=True)
    var = (centered * centered).mean(axis=-1, keepdims=True)
    return centered * ag.rsqrt(var + eps) * weight + bias


def conv2d(x: ag.Tensor, w: ag.Tensor, b: ag.Tensor, padding: int) -> ag.Tensor:
    """asg-core's conv2d when present (and not --composed), else the im2col composition."""
    fn = getattr(ag, "conv2d", None)
    if USE_CORE_OPS and fn is not None:
        return fn(x, w, b, padding=padding)
    return conv2d_composed(x, w, b, padding)


def max_pool2d(x: ag.Tensor, k: int) -> ag.Tensor:
    """asg-core's max_pool2d when present (and not --composed), else reshape + max."""
    fn = getattr(ag, "max_pool2d", None)
    if USE_CORE_OPS and fn is not None:
        return fn(x, k)
    return max_pool2d_composed(x, k)


def layer_norm(x: ag.Tensor, weight: ag.Tensor, bias: ag.Tensor) -> ag.Tensor:
    """asg-core's layer_norm when present (and not --composed), else the composition."""
    fn = getattr(ag, "layer_norm", None)
    if USE_CORE_OPS and fn is not None:
        return fn(x, (x.shape[-1],), weight, bias, eps=1e-5)
    return layer_norm_composed(x, weight, bias)


def asg_mlp(rng: np.random.Generator, batch: int) -> tuple[Model, list[ag.Tensor], ag.Tensor]:
    """MLP 784-256-10 (torch names: 0.*, 2.*)."""
    m = Model()
    x, y = ag.input("x", (batch, 784)), ag.input("y", (batch,), "int64")
    h = linear(m, rng, x, "0", 784, 256).relu()
    logits = linear(m, rng, h, "2", 256, 10)
    return m, [x, y], ag.cross_entropy(logits, y)


def asg_lenet(rng: np.random.Generator, batch: int) -> tuple[Model, list[ag.Tensor], ag.Tensor]:
    """LeNet-5 (torch nn.Sequential names: 0 conv, 3 conv, 7/9/11 linear)."""
    m = Model()
    x, y = ag.input("x", (batch, 1, 28, 28)), ag.input("y", (batch,), "int64")
    b1, b2 = 1 / math.sqrt(25), 1 / math.sqrt(150)
    h = conv2d(x, m.param("0.weight", (6, 1, 5, 5), rng, b1), m.param("0.bias", (6,), rng, b1), padding=2)
    h = max_pool2d(h.relu(), 2)
    h = conv2d(h, m.param("3.weight", (16, 6, 5, 5), rng, b2), m.param("3.bias", (16,), rng, b2), padding=0)
    h = max_pool2d(h.relu(), 2).reshape(batch, 400)
    h = linear(m, rng, h, "7", 400, 120).relu()
    h = linear(m, rng, h, "9", 120, 84).relu()
    logits = linear(m, rng, h, "11", 84, 10)
    return m, [x, y], ag.cross_entropy(logits, y)


def asg_gpt(
    rng: np.random.Generator,
    batch: int,
    vocab: int = 65,
    seq: int = 64,
    d: int = 128,
    layers: int = 4,
    heads: int = 4,
) -> tuple[Model, list[ag.Tensor], ag.Tensor]:
    """Tiny GPT with the parameter names of the reference torch GPT (nn.MultiheadAttention layout)."""
    m = Model()
    idx, y = ag.input("idx", (batch, seq), "int64"), ag.input("y", (batch * seq,), "int64")
    hd = d // heads
    tok = m.add("tok.weight", rng.standard_normal((vocab, d), np.float32))
    pos = m.add("pos.weight", rng.standard_normal((seq, d), np.float32))
    x = ag.index_select(tok, idx, axis=0) + pos  # positions 0..T-1 are all rows of the table
    mask = np.triu(np.full((seq, seq), -1e9, np.float32), 1)  # additive causal mask
    scale = 1.0 / math.sqrt(hd)
    for i in range(layers):
        p = f"blocks.{i}"
        h = ln(m, x, f"{p}.ln1")
        names = (f"{p}.att.in_proj_weight", f"{p}.att.in_proj_bias")
        qkv = linear(m, rng, h, "", d, 3 * d, names=names)  # (B, T, 3d): q, k, v
        q, k, v = (
            qkv[:, :, j * d : (j + 1) * d].reshape(batch, seq, heads, hd).permute(0, 2, 1, 3)
            for j in range(3)
        )
        att = ((q * scale) @ k.transpose(-2, -1) + mask).softmax(axis=-1)
        o = (att @ v).permute(0, 2, 1, 3).reshape(batch, seq, d)
        x = x + linear(m, rng, o, f"{p}.att.out_proj", d, d)
        h = ln(m, x, f"{p}.ln2")
        h = ag.gelu(linear(m, rng, h, f"{p}.mlp.0", d, 4 * d))
        x = x + linear(m, rng, h, f"{p}.mlp.2", 4 * d, d)
    x = ln(m, x, "ln")
    logits = linear(m, rng, x, "head", d, vocab, bias=False).reshape(batch * seq, vocab)
    return m, [idx, y], ag.cross_entropy(logits, y)


# ============================================================================ PyTorch reference models
def torch_models() -> dict[str, Callable[[], Any]]:
    """Constructors of the reference PyTorch models (exactly those of torch_cpu_steps.py)."""

    class Block(tnn.Module):
        def __init__(self, d: int, h: int) -> None:
            super().__init__()
            self.ln1 = tnn.LayerNorm(d)
            self.att = tnn.MultiheadAttention(d, h, batch_first=True)
            self.ln2 = tnn.LayerNorm(d)
            self.mlp = tnn.Sequential(tnn.Linear(d, 4 * d), tnn.GELU(), tnn.Linear(4 * d, d))

        def forward(self, x: Any) -> Any:
            t = x.shape[1]
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
            h = self.ln1(x)
            x = x + self.att(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class GPT(tnn.Module):
        def __init__(
            self, vocab: int = 65, seq: int = 64, d: int = 128, layers: int = 4, heads: int = 4
        ) -> None:
            super().__init__()
            self.tok = tnn.Embedding(vocab, d)
            self.pos = tnn.Embedding(seq, d)
            self.blocks = tnn.Sequential(*[Block(d, heads) for _ in range(layers)])
            self.ln = tnn.LayerNorm(d)
            self.head = tnn.Linear(d, vocab, bias=False)

        def forward(self, idx: Any) -> Any:
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            return self.head(self.ln(self.blocks(x))).flatten(0, 1)

    return {
        "mlp": lambda: tnn.Sequential(tnn.Linear(784, 256), tnn.ReLU(), tnn.Linear(256, 10)),
        "lenet": lambda: tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(400, 120),
            tnn.ReLU(),
            tnn.Linear(120, 84),
            tnn.ReLU(),
            tnn.Linear(84, 10),
        ),
        "gpt": GPT,
    }


# ============================================================================ workloads
@dataclass
class Workload:
    name: str
    label: str
    build: Callable[[np.random.Generator], tuple[Model, list[ag.Tensor], ag.Tensor]]
    make_batch: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


WORKLOADS = [
    Workload(
        "mlp", "MLP 784-256-10, b128", lambda r: asg_mlp(r, 128),
        lambda r: (r.standard_normal((128, 784), np.float32), r.integers(0, 10, 128)),
    ),
    Workload(
        "lenet", "LeNet-5 1x28x28, b64", lambda r: asg_lenet(r, 64),
        lambda r: (r.standard_normal((64, 1, 28, 28), np.float32), r.integers(0, 10, 64)),
    ),
    Workload(
        "gpt", "GPT-tiny L4 d128 T64, b16", lambda r: asg_gpt(r, 16),
        lambda r: (r.integers(0, 65, (16, 64)), r.integers(0, 65, 16 * 64)),
    ),
]  # fmt: skip


def median_ms(steps_fns: Sequence[Callable[[], Any]], warmup: int, steps: int) -> list[float]:
    """Median wall time in ms of each step function, after ``warmup`` untimed calls of each.

    The functions are timed interleaved (one step of each per round), so that load from other processes
    on the machine falls on all of them alike.
    """
    for fn in steps_fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in steps_fns]
    for _ in range(steps):
        for fn, record in zip(steps_fns, times, strict=True):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e3 for t in times]


def build_asg(w: Workload, seed: int, module: Any = None) -> Any:
    """The compiled ASG training step (loss out, Adam updates in place), with torch's weights if given."""
    model, inputs, loss = w.build(np.random.default_rng(seed))
    if module is not None:
        model.load_torch(module)
    params = list(model.params.values())
    grads = ag.grad(loss, params)
    return ag.compile(loss, inputs=inputs, updates=adam_updates(params, grads, lr=1e-3))


def torch_step(module: Any, x: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
    """One Adam step of the reference (as torch_cpu_steps.py); returns the loss before the update."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(xt), yt)
        loss.backward()
        opt.step()
        return loss

    return step


def check_same_loss(
    name: str, asg_step: Callable[[], Any], ref_step: Callable[[], Any], steps: int = 3
) -> str:
    """Untimed: from the same weights, ASG's and PyTorch's losses agree at steps 1 and ``steps``."""
    losses = [(float(asg_step()), float(ref_step().detach())) for _ in range(steps)]
    ok = all(abs(a - t) <= 1e-4 * max(1.0, abs(t)) for a, t in losses)
    (a1, t1), (an, tn) = losses[0], losses[-1]
    return (
        f"{name:6s} loss check {'OK' if ok else 'MISMATCH'}: step 1 ASG {a1:.6f} torch {t1:.6f} "
        f"(|diff| {abs(a1 - t1):.1e}); step {steps} ASG {an:.6f} torch {tn:.6f} (|diff| {abs(an - tn):.1e})"
    )


def profile_plan(fn: Any, feeds: Sequence[np.ndarray], repeats: int = 10) -> tuple[float, list, list]:
    """Time every kernel of the plan that ``fn(*feeds)`` runs, by running its steps one by one.

    Returns (total kernel ms per step, [(op, ms, calls)] by op, [(ms, node text)] slowest nodes), each
    kernel's time being its median over ``repeats`` runs. Parameters are not updated by these runs.
    """
    fn(*feeds)  # make sure the plan has been built and validated
    runs = [fn.profile(*feeds) for _ in range(repeats)]  # Function.profile: one traced step, no update
    nodes = runs[0].nodes
    samples = np.array([[t.seconds for t in run.nodes] for run in runs])
    # The median over repeats of each kernel resists preemption by other processes.
    per_step = np.median(samples, axis=0) * 1e3
    by_op: dict[str, list[float]] = {}
    for node, ms in zip(nodes, per_step, strict=True):
        entry = by_op.setdefault(node.op, [0.0, 0])
        entry[0] += ms
        entry[1] += 1
    ops = sorted(((op, ms, n) for op, (ms, n) in by_op.items()), key=lambda r: -r[1])
    slow = sorted(
        ((ms, node.line) for node, ms in zip(nodes, per_step, strict=True)),
        key=lambda r: -r[0],
    )
    return float(per_step.sum()), ops, slow


def print_profile(name: str, total_step_ms: float, fn: Any, feeds: Sequence[np.ndarray], top: int) -> None:
    kernels_ms, ops, slow = profile_plan(fn, feeds)
    n_nodes = sum(n for _, _, n in ops)
    print(
        f"\n--- {name}: {n_nodes} kernels, {kernels_ms:.2f} ms in kernels per step "
        f"(step {total_step_ms:.2f} ms; the rest is executor/Python overhead and parameter copies)"
    )
    print(f"  {'op':24s} {'ms/step':>8s} {'share':>6s} {'calls':>5s}")
    for op, ms, n in ops[:top]:
        print(f"  {op:24s} {ms:8.3f} {ms / kernels_ms:6.1%} {n:5d}")
    print("  slowest nodes:")
    for ms, text in slow[: min(top, 8)]:
        print(f"  {ms:8.3f} ms  {text.strip()[:150]}")


def main(argv: list[str] | None = None) -> None:
    global USE_CORE_OPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per workload (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--only", default="mlp,lenet,gpt", help="comma-separated subset of mlp,lenet,gpt")
    parser.add_argument(
        "--threads", type=int, default=None, help="BLAS/torch threads (default: library defaults)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="per-op kernel times of the ASG plans")
    parser.add_argument("--profile-only", action="store_true", help="only the profile (no timing table)")
    parser.add_argument("--top", type=int, default=12, help="rows in each profile (default 12)")
    parser.add_argument("--composed", action="store_true", help="conv/pool/layer_norm from primitive ops")
    parser.add_argument("--no-check", action="store_true", help="skip the ASG-vs-torch loss check")
    args = parser.parse_args(argv)
    USE_CORE_OPS = not args.composed
    chosen = [w for w in WORKLOADS if w.name in {s.strip() for s in args.only.split(",")}]
    if not chosen:
        parser.error(f"--only: choose from {', '.join(w.name for w in WORKLOADS)}")

    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)
    threads = f"torch threads {torch.get_num_threads()}" if torch is not None else "torch not installed"
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}, {threads}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}"
    )
    print(
        f"median of {args.steps} steps after {args.warmup} warm-up steps, ASG and PyTorch steps interleaved; "
        "Adam lr 1e-3, fp32, one fixed random batch\n"
    )

    rows, profiles = [], []
    for w in chosen:
        x, y = w.make_batch(np.random.default_rng(args.seed + 1))
        module = None
        if torch is not None:
            torch.manual_seed(args.seed)
            module = torch_models()[w.name]()
        step = build_asg(w, args.seed, module)

        def asg_step(step: Any = step, x: np.ndarray = x, y: np.ndarray = y) -> Any:
            return step(x, y)

        ref_step = torch_step(module, x, y) if module is not None else None
        if args.profile_only:
            profiles.append((w.name, median_ms([asg_step], 2, 3)[0], step, (x, y)))
            continue
        if ref_step is not None and not args.no_check:
            print(check_same_loss(w.name, asg_step, ref_step), flush=True)
        medians = median_ms(
            [asg_step] + ([ref_step] if ref_step is not None else []), args.warmup, args.steps
        )
        asg_ms, torch_ms = medians[0], (medians[1] if ref_step is not None else None)
        rows.append((w, asg_ms, torch_ms))
        if args.profile:
            profiles.append((w.name, asg_ms, step, (x, y)))
    print()

    if rows:
        print_table(rows)
    for name, asg_ms, step, feeds in profiles:
        print_profile(name, asg_ms, step, feeds, args.top)


def print_table(rows: list[tuple[Workload, float, float | None]]) -> None:
    """The markdown table: ASG and PyTorch median step times, ratio and target."""
    header = f"| {'workload':26s} | {'ASG ms':>8s} |"
    if any(t is not None for _, _, t in rows):
        header += f" {'PyTorch ms':>10s} | {'ASG/PyTorch':>11s} | {'target':>6s} | {'':4s} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for w, asg_ms, torch_ms in rows:
        line = f"| {w.label:26s} | {asg_ms:8.2f} |"
        if torch_ms is not None:
            ratio = asg_ms / torch_ms
            ok = "ok" if ratio <= TARGETS[w.name] else "MISS"
            line += f" {torch_ms:10.2f} | {ratio:11.2f} | {'<= ' + str(TARGETS[w.name]):>6s} | {ok:4s} |"
        print(line)


if __name__ == "__main__":
    main()
