"""Training-step time on the CPU: ASG against PyTorch CPU eager, each in its own process.

Workloads (the architectures of ``shared/reference/torch_cpu_steps.py``), each trained with Adam
(lr 1e-3) and softmax cross-entropy on one fixed random batch:

* ``mlp``   — 784-256-10 with ReLU, batch 128;
* ``lenet`` — LeNet-5 on 1x28x28, batch 64 (conv 1->6 5x5 pad 2, relu, maxpool 2, conv 6->16 5x5,
  relu, maxpool 2, flatten, 400-120-84-10);
* ``gpt``   — 4 pre-LN blocks, d=128, 4 heads, T=64, vocab 65, batch 16, causal attention from
  matmul + softmax with an additive mask, GELU MLP 4x, untied head.

``--scale`` adds MLP hidden 1024 (b128) and 4096 (b512), and GPT d256 T64 (b16) and d512 T256 (b4).

How it measures (see ``shared/notes/cpu.md`` for why): every framework runs **in its own
subprocess**, one workload at a time, with the same thread count (``--threads``, default 2: BLAS,
OpenMP, numba and torch), so no library's idle threads spin on the cores of another. Each process
runs three untimed steps from the same initial weights (PyTorch's, handed to ASG through an
``.npz`` file; the losses must agree: the loss check), then ``--warmup`` steps, then reports the
median of ``--steps`` timed steps. Each side reports the BLAS and thread pools it used
(threadpoolctl). ASG builds the whole step — forward, graph gradients and the fused ``adam_update``
ops — as one compiled plan, on each backend of ``--backends`` (default: ``numpy,numpy-jit``).

    taskset -c 0,1 python benchmarks/train_steps.py [--threads 2] [--steps 30] [--warmup 5]
        [--only mlp,lenet,gpt] [--scale] [--backends numpy,numpy-jit] [--rounds 1] [--profile] [--composed]

``--rounds R`` runs every framework R times, alternating them, and shows the run with the median
time (on a machine shared with other work). ``--profile`` times every kernel of the ASG plans and prints the ops that dominate each model.
``--composed`` builds conv2d/max_pool2d/layer_norm from primitive ops even where asg-core has them.
Needs only numpy (and numba for ``numpy-jit``, torch for the PyTorch column) with
``PYTHONPATH=packages/asg-core/src``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A worker fixes its thread counts before numpy (and its BLAS) or torch is imported.
if __name__ == "__main__" and "--worker" in sys.argv:
    _n = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    for _var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMBA_NUM_THREADS",
        "ASG_NUM_THREADS",
    ):
        os.environ[_var] = _n

import numpy as np

if "--worker" not in sys.argv or "asg" in sys.argv:
    import asg.core as ag
    from asg.core.ops import optim

TARGETS = {"mlp": 0.8, "lenet": 1.0, "gpt": 1.0}
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

    def load_torch_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy a torch state_dict (as numpy arrays, same names) into the ASG parameters."""
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


def asg_mlp(
    rng: np.random.Generator, batch: int, hidden: int = 256
) -> tuple[Model, list[ag.Tensor], ag.Tensor]:
    """MLP 784-hidden-10 (torch names: 0.*, 2.*)."""
    m = Model()
    x, y = ag.input("x", (batch, 784)), ag.input("y", (batch,), "int64")
    h = linear(m, rng, x, "0", 784, hidden).relu()
    logits = linear(m, rng, h, "2", hidden, 10)
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
    import torch
    import torch.nn as tnn

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
        "mlp": lambda hidden=256: tnn.Sequential(tnn.Linear(784, hidden), tnn.ReLU(), tnn.Linear(hidden, 10)),
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
    name: str  # unique key: "mlp", "mlp-h1024", "gpt-d512-t256" ...
    family: str  # "mlp", "lenet" or "gpt"
    label: str
    config: dict[str, int]
    batch: int

    def build_asg(self, rng: np.random.Generator) -> tuple[Model, list[Any], Any]:
        if self.family == "mlp":
            return asg_mlp(rng, self.batch, **self.config)
        if self.family == "lenet":
            return asg_lenet(rng, self.batch)
        return asg_gpt(rng, self.batch, **self.config)

    def build_torch(self) -> Any:
        return torch_models()[self.family](**self.config)

    def make_batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        b = self.batch
        if self.family == "mlp":
            return rng.standard_normal((b, 784), np.float32), rng.integers(0, 10, b)
        if self.family == "lenet":
            return rng.standard_normal((b, 1, 28, 28), np.float32), rng.integers(0, 10, b)
        seq, vocab = self.config["seq"], self.config.get("vocab", 65)
        return rng.integers(0, vocab, (b, seq)), rng.integers(0, vocab, b * seq)


def _gpt(d: int, seq: int, batch: int) -> Workload:
    name = "gpt" if (d, seq) == (128, 64) else f"gpt-d{d}-t{seq}"
    label = f"GPT L4 d{d} T{seq}, b{batch}" if name != "gpt" else "GPT-tiny L4 d128 T64, b16"
    return Workload(name, "gpt", label, {"d": d, "seq": seq, "heads": 4, "layers": 4}, batch)


WORKLOADS = [
    Workload("mlp", "mlp", "MLP 784-256-10, b128", {"hidden": 256}, 128),
    Workload("lenet", "lenet", "LeNet-5 1x28x28, b64", {}, 64),
    _gpt(128, 64, 16),
]
SCALE = [
    Workload("mlp-h1024", "mlp", "MLP 784-1024-10, b128", {"hidden": 1024}, 128),
    Workload("mlp-h4096", "mlp", "MLP 784-4096-10, b512", {"hidden": 4096}, 512),
    _gpt(256, 64, 16),
    _gpt(512, 256, 4),
]


# ============================================================================ the two workers
def adam_step_updates(params: list[Any], grads: list[Any], lr: float = 1e-3) -> dict[Any, Any]:
    """Adam as torch.optim.Adam, with asg-core's fused ``adam_update`` op (one op per updated tensor)."""
    step = ag.state(np.zeros((), np.float32), name="adam.step")
    lr_t = ag.state(np.float32(lr), name="adam.lr")
    t = step + 1.0
    updates: dict[Any, Any] = {step: t}
    for p, g in zip(params, grads, strict=True):
        m = ag.state(np.zeros(p.shape, np.float32), name=f"adam.m.{p.name}")
        v = ag.state(np.zeros(p.shape, np.float32), name=f"adam.v.{p.name}")
        new = optim.adam_update(p, g, m, v, t, lr=lr_t)
        updates[p], updates[m], updates[v] = new["param"], new["exp_avg"], new["exp_avg_sq"]
    return updates


def thread_setup() -> list[str]:
    """The BLAS / OpenMP pools loaded in this process, as threadpoolctl reports them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed"]
    return [
        f"{p.get('internal_api')} {p.get('version') or ''} ({os.path.basename(p.get('filepath', ''))}): "
        f"{p.get('num_threads')} threads" + (f", {p['threading_layer']}" if p.get("threading_layer") else "")
        for p in threadpool_info()
    ]


def timed(step: Callable[[], Any], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def worker_torch(w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    module = w.build_torch()
    if args.weights:
        np.savez(args.weights, **{k: v.detach().numpy() for k, v in module.state_dict().items()})
    x, y = w.make_batch(np.random.default_rng(args.seed + 1))
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(xt), yt)
        loss.backward()
        opt.step()
        return loss

    losses = [float(step().detach()) for _ in range(3)]
    ms = timed(step, args.warmup, args.steps)
    return {
        "ms": ms,
        "losses": losses,
        "setup": [f"torch {torch.__version__}, {torch.get_num_threads()} threads", *thread_setup()],
    }


def worker_asg(w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    global USE_CORE_OPS
    USE_CORE_OPS = not args.composed
    model, inputs, loss = w.build_asg(np.random.default_rng(args.seed))
    if args.weights and os.path.exists(args.weights):
        with np.load(args.weights, allow_pickle=False) as state:
            model.load_torch_state({k: state[k] for k in state.files})
    params = list(model.params.values())
    fn = ag.compile(
        loss, inputs=inputs, updates=adam_step_updates(params, ag.grad(loss, params)), backend=args.backend
    )
    x, y = w.make_batch(np.random.default_rng(args.seed + 1))
    start = time.perf_counter()
    losses = [float(fn(x, y))]
    first_ms = (time.perf_counter() - start) * 1e3
    losses += [float(fn(x, y)) for _ in range(2)]
    ms = timed(lambda: fn(x, y), args.warmup, args.steps)
    setup = [f"asg backend {args.backend}, {ag.get_num_threads()} threads"]
    from asg.core import blas as asg_blas

    blas = asg_blas.info()  # which BLAS ASG's matmul and convolution GEMMs used
    setup.append(
        f"matmul on MKL ({blas['layer']} threading layer, {blas['threads']} threads)"
        if blas["blas"] == "mkl"
        else f"matmul on numpy's BLAS ({blas['why']})"
    )
    if "numba" in sys.modules:
        import numba

        setup.append(
            f"numba {numba.__version__}, {numba.get_num_threads()} threads, layer {numba.threading_layer()}"
        )
    result = {"ms": ms, "first_ms": first_ms, "losses": losses, "setup": setup + thread_setup()}
    if args.profile:
        result["profile"] = profile_text(w.name, ms, fn, (x, y), args.top)
    return result


def profile_text(
    name: str, step_ms: float, fn: Any, feeds: Sequence[np.ndarray], top: int, repeats: int = 10
) -> str:
    """Per-op kernel times of the plan (median of ``repeats`` traced runs, no parameter updates)."""
    runs = [fn.profile(*feeds) for _ in range(repeats)]
    nodes = runs[0].nodes
    per_step = np.median(np.array([[t.seconds for t in run.nodes] for run in runs]), axis=0) * 1e3
    steps = fn.plan_for(*feeds).schedule.steps
    by_op: dict[str, list[float]] = {}
    for node, ms in zip(nodes, per_step, strict=True):
        # a numpy-jit kernel is named by what it computes ("elementwise kernel over 5 nodes: ...")
        fused = steps[node.index].node.meta.get("jit")
        key = node.op if fused is None else "jit: " + fused.split(": ", 1)[-1][:40]
        entry = by_op.setdefault(key, [0.0, 0])
        entry[0] += ms
        entry[1] += 1
    total = float(per_step.sum())
    lines = [
        f"--- {name}: {len(nodes)} kernels, {total:.2f} ms in kernels per step "
        f"(step {step_ms:.2f} ms; the rest is executor overhead and parameter copies)",
        f"  {'op':45s} {'ms/step':>8s} {'share':>6s} {'calls':>5s}",
    ]
    for op, (ms, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {op:45s} {ms:8.3f} {ms / total:6.1%} {n:5d}")
    lines.append("  slowest nodes:")
    for ms, node in sorted(zip(per_step, nodes, strict=True), key=lambda r: -r[0])[: min(top, 8)]:
        lines.append(f"  {ms:8.3f} ms  {node.line.strip()[:150]}")
    return "\n".join(lines)


# ============================================================================ the parent
def run_worker(
    kind: str, w: Workload, args: argparse.Namespace, weights: str, backend: str = ""
) -> dict | None:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", kind, "--only", w.name,
        "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--seed", str(args.seed), "--weights", weights, "--top", str(args.top),
    ]  # fmt: skip
    if backend:
        cmd += ["--backend", backend]
    cmd += ["--profile"] * args.profile + ["--composed"] * args.composed
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        print(f"  {kind} {backend} {w.name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per workload (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--only", default="", help="comma-separated workloads (default: mlp,lenet,gpt)")
    parser.add_argument("--scale", action="store_true", help="add the larger MLP and GPT sizes")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    parser.add_argument(
        "--backends", default="numpy,numpy-jit", help="ASG backends to time (default numpy,numpy-jit)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="processes per framework, alternated; the median is shown"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="per-op kernel times of the ASG plans")
    parser.add_argument("--top", type=int, default=12, help="rows in each profile (default 12)")
    parser.add_argument("--composed", action="store_true", help="conv/pool/layer_norm from primitive ops")
    # internal: one measurement in this process
    parser.add_argument("--worker", choices=("asg", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="numpy-jit", help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    every = WORKLOADS + SCALE
    names = [s.strip() for s in args.only.split(",") if s.strip()] or [w.name for w in WORKLOADS]
    if args.scale and not args.only:
        names += [w.name for w in SCALE]
    chosen = [w for w in every if w.name in names]
    unknown = set(names) - {w.name for w in every}
    if unknown or not chosen:
        parser.error(f"--only: choose from {', '.join(w.name for w in every)}")

    if args.worker:
        w = chosen[0]
        result = worker_asg(w, args) if args.worker == "asg" else worker_torch(w, args)
        print(json.dumps(result))
        return

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    with_torch = torch_installed()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable), "
        f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}, Python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )
    print(
        f"{args.threads} threads per framework, each framework in its own process ({args.rounds} round(s), "
        f"alternated); median of {args.steps} steps "
        f"after 3 checked + {args.warmup} warm-up steps; Adam lr 1e-3, fp32, one fixed random batch\n",
        flush=True,
    )
    rows, setups, profiles, rounds_lines = [], {}, [], []
    with tempfile.TemporaryDirectory(prefix="asg-bench-") as tmp:
        for w in chosen:
            weights = os.path.join(tmp, f"{w.name}.npz")
            refs: list[dict] = []
            runs: dict[str, list[dict]] = {b: [] for b in backends}
            paired: dict[str, list[tuple[float, float]]] = {b: [] for b in backends}
            # Rounds alternate the frameworks, so that changing load from other processes falls on all.
            for _ in range(args.rounds):
                ref = run_worker("torch", w, args, weights) if with_torch else None
                if ref is not None:
                    refs.append(ref)
                for backend in backends:
                    got = run_worker("asg", w, args, weights if ref is not None else "", backend)
                    if got is not None:
                        runs[backend].append(got)
                        if ref is not None:
                            paired[backend].append((got["ms"], ref["ms"]))
            if args.rounds > 1:
                rounds_lines.extend(round_summary(w.name, b, pairs) for b, pairs in paired.items() if pairs)
            ref = _median_run(refs)
            if ref is not None:
                setups.setdefault("PyTorch", ref["setup"])
            results = {}
            for backend, got_runs in runs.items():
                got = _median_run(got_runs)
                if got is None:
                    continue
                results[backend] = got
                setups.setdefault(f"ASG {backend}", got["setup"])
                if ref is not None:
                    print(loss_check(w.name, backend, got["losses"], ref["losses"]), flush=True)
                if "profile" in got:
                    profiles.append(f"[{backend}] " + got["profile"])
            rows.append((w, results, ref))
    print()
    for side, lines in setups.items():
        print(f"{side}: " + "; ".join(lines))
    print()
    print_table(rows, backends)
    if rounds_lines:
        print(
            "\nper round (ASG and PyTorch processes run one after the other, so each ratio pairs times taken "
            "under the same load):"
        )
        print("\n".join(rounds_lines))
    for text in profiles:
        print("\n" + text)


def _median_run(runs: list[dict]) -> dict | None:
    """The run with the median step time (of ``--rounds`` runs), or None when every run failed."""
    if not runs:
        return None
    return sorted(runs, key=lambda r: r["ms"])[(len(runs) - 1) // 2]


def round_summary(name: str, backend: str, pairs: Sequence[tuple[float, float]]) -> str:
    """One line of the rounds' step times and the ratio of each round's pair.

    >>> round_summary("lenet", "numpy-jit", [(4.0, 5.0), (8.0, 6.0), (4.5, 6.0)])
    'lenet          numpy-jit  ASG 4.00 8.00 4.50 ms, PyTorch 5.00 6.00 6.00 ms, ratio per round 0.80 1.33 0.75 (median 0.80, range 0.75-1.33)'
    """
    ratios = [a / t for a, t in pairs]
    return (
        f"{name:14s} {backend:10s} ASG {' '.join(f'{a:.2f}' for a, _ in pairs)} ms, "
        f"PyTorch {' '.join(f'{t:.2f}' for _, t in pairs)} ms, ratio per round "
        f"{' '.join(f'{r:.2f}' for r in ratios)} (median {float(np.median(ratios)):.2f}, "
        f"range {min(ratios):.2f}-{max(ratios):.2f})"
    )


def loss_check(name: str, backend: str, asg: Sequence[float], ref: Sequence[float]) -> str:
    ok = all(abs(a - t) <= 1e-4 * max(1.0, abs(t)) for a, t in zip(asg, ref, strict=True))
    return (
        f"{name:14s} {backend:10s} loss check {'OK' if ok else 'MISMATCH'}: step 1 ASG {asg[0]:.6f} torch {ref[0]:.6f} "
        f"(|diff| {abs(asg[0] - ref[0]):.1e}); step 3 ASG {asg[-1]:.6f} torch {ref[-1]:.6f} "
        f"(|diff| {abs(asg[-1] - ref[-1]):.1e})"
    )


def print_table(rows: list[tuple[Workload, dict[str, dict], dict | None]], backends: list[str]) -> None:
    """The markdown table: median step times, the ratio ASG / PyTorch per backend, and the target."""
    head = f"| {'workload':28s} |" + "".join(f" {'ASG ' + b + ' ms':>17s} |" for b in backends)
    head += f" {'PyTorch ms':>10s} |" + "".join(f" {'ratio ' + b:>15s} |" for b in backends) + " target |"
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for w, results, ref in rows:
        line = f"| {w.label:28s} |"
        for b in backends:
            line += f" {results[b]['ms']:17.2f} |" if b in results else f" {'failed':>17s} |"
        line += f" {ref['ms']:10.2f} |" if ref else f" {'-':>10s} |"
        for b in backends:
            ratio = results[b]["ms"] / ref["ms"] if ref and b in results else float("nan")
            line += f" {ratio:15.2f} |"
        print(line + f" {'<= ' + str(TARGETS[w.family]):>6s} |")
    first = [f"{w.name} {b} {r['first_ms']:.0f} ms" for w, res, _ in rows for b, r in res.items()]
    print("\nfirst step (plan build, JIT compile or cache load, checked run): " + ", ".join(first))


if __name__ == "__main__":
    main()
