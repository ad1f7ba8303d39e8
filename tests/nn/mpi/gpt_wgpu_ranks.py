"""The program each rank runs under ``mpirun -n 2 python gpt_wgpu_ranks.py OUT`` (test_ddp_wgpu_gpt.py).

The tiny GPT of benchmarks/gpu_gpt_step.py, data-parallel on the wgpu backend: the adapter chosen as
benchmarks/ddp_gpu.py chooses it (local rank modulo the number of adapters), SGD with momentum (its
step, unlike Adam's, shows a gradient that is summed instead of averaged), gradients in several
buckets; each rank takes its half of ddp_gpu's global batches. Writes ``OUT/gpt.rank<r>.safetensors``
with the parameters after every step, the losses and the adapter choice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import ddp_gpu

CFG = {"layers": 2, "d": 16, "heads": 2, "t": 8, "vocab": 65, "batch": 2}  # per-rank batch
STEPS = 3


def build(batch: int, **compile_options: object):  # type: ignore[no-untyped-def]
    """(model, step) for ``batch`` sequences: one process's step, or the distributed one with ``comm``."""
    import gpu_gpt_step as bench

    from asg import nn
    from asg.nn import functional as F
    from asg.nn import parallel

    nn.init.manual_seed(0)
    model = bench.GPT(CFG["vocab"], CFG["t"], CFG["d"], CFG["layers"], CFG["heads"])
    opt = nn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    specs = ddp_gpu.gpt_inputs(batch, CFG["t"])
    if "comm" in compile_options:
        return model, parallel.compile_distributed_train_step(
            model, F.cross_entropy, opt, specs, **compile_options
        )
    return model, nn.compile_train_step(model, F.cross_entropy, opt, specs, **compile_options)


def main(out: str) -> None:
    from mpi4py import MPI

    index, count = ddp_gpu.choose_adapter(ddp_gpu.local_rank())  # before the first GPU call
    from asg import nn
    from asg.core.backends import get_backend

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    model, step = build(CFG["batch"], comm=comm, backend="wgpu", bucket_mb=0.01)
    ids, targets = ddp_gpu.global_batches(CFG, STEPS, ranks=2)
    b, t = CFG["batch"], CFG["t"]
    history, losses = [], []
    for k in range(STEPS):
        losses.append(step(ids[k][rank * b : (rank + 1) * b], targets[k][rank * b * t : (rank + 1) * b * t]))
        history.append({name: np.array(v, copy=True) for name, v in model.state_dict().items()})
    arrays = {name: np.stack([h[name] for h in history]) for name in history[0]}
    arrays["loss"] = np.array(losses, np.float64)
    arrays["adapter"] = np.array([index, count, ddp_gpu.local_rank()])
    arrays["buckets"] = np.array([len(step.buckets)])
    nn.save_state_dict(arrays, os.path.join(out, f"gpt.rank{rank}.safetensors"))
    with open(os.path.join(out, f"adapter.rank{rank}.txt"), "w") as f:
        f.write(get_backend("wgpu").device().summary)


if __name__ == "__main__":
    from asg.nn import parallel

    parallel.run(main, sys.argv[1])
