"""The program each rank runs under ``mpirun -n R python ddp_ranks.py SCENARIO OUT`` (tests/nn/test_parallel.py).

Scenarios:
- ``train``: every case of ddp_cases on this world (rank r initialised from seed 100 + r, so only the
  broadcast from rank 0 makes them agree); writes ``OUT/<case>.rank<r>.safetensors`` with the
  parameters after every step and the losses; mlp64 writes a checkpoint after epoch 0.
  mlp64_scaled then takes one step where rank 1's batch holds an inf.
  Then ``fit`` for 2 epochs (fit.csv, fit-<epoch>.safetensors, fit.rank<r>.safetensors with the losses).
- ``wgpu``: 3 steps of mlp32 on the wgpu backend (``mlp32.wgpu.rank<r>.safetensors``).
- ``resume``: load that checkpoint (into a model initialised from another seed) and train epoch 1.
- ``mismatch``: rank 1 builds a float32 model, rank 0 a float64 one: building the step raises on both.
- ``raise``: rank 1 raises mid-epoch (at step 5); ``kill``: rank 1 kills itself with SIGKILL at step 5.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import numpy as np
from ddp_cases import CASES, EPOCHS, STEPS, B, build, data, inputs, order, record, stack

from asg import nn
from asg.data import DataLoader, DistributedSampler, InMemoryDataset
from asg.nn import parallel


class Seen(nn.Callback):
    """Leaves a file naming the rank that ran its epoch-end hook."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        open(os.path.join(self.out, f"seen.epoch{epoch}.rank{parallel.get_rank()}"), "w").close()


def fit(out: str) -> None:
    """``fit`` over a DataLoader with a DistributedSampler; checkpoints and CSV log on rank 0 only."""
    rank, ranks = parallel.get_rank(), parallel.get_world_size()
    model, loss, opt, _ = build("mlp32", 100 + rank)
    x, y = data("mlp32")
    sampler = DistributedSampler(len(x), num_replicas=ranks, rank=rank, seed=0)
    loader = DataLoader(InMemoryDataset(x, y), batch_size=B * 2 // ranks, sampler=sampler)
    step = parallel.compile_distributed_train_step(model, loss, opt)
    callbacks = [
        parallel.RankZero(nn.ModelCheckpoint(os.path.join(out, "fit-{epoch}.safetensors"))),
        parallel.RankZero(nn.CSVLogger(os.path.join(out, "fit.csv"))),
        parallel.RankZero(Seen(out)),
    ]
    history = nn.fit(model, loss, opt, loader, epochs=2, step=step, callbacks=callbacks, progress=False)
    assert os.path.exists(os.path.join(out, "fit-1.safetensors"))  # RankZero's barrier
    nn.save_state_dict({"loss": np.array(history["loss"])}, os.path.join(out, f"fit.rank{rank}.safetensors"))


def train(
    case: str,
    out: str,
    first_epoch: int = 0,
    seed: int | None = None,
    tag: str = "",
    steps: int = STEPS,
    **compile_options: Any,
) -> None:
    rank, ranks = parallel.get_rank(), parallel.get_world_size()
    model, loss, opt, options = build(case, 100 + rank if seed is None else seed)
    ckpt = os.path.join(out, f"{case}.epoch0.safetensors")
    if first_epoch:
        meta = parallel.load_checkpoint(ckpt, model, opt)
        assert meta["epoch"] == first_epoch - 1, meta
    step = parallel.compile_distributed_train_step(
        model, loss, opt, inputs(case), bucket_mb=0.0005, **options, **compile_options
    )
    x, y = data(case)
    per_rank = B * 2 // ranks
    history, losses = [], []
    for epoch in range(first_epoch, EPOCHS.get(case, 1)):
        idx = order(epoch, ranks, rank)
        for k in range(steps):
            rows = idx[k * per_rank : (k + 1) * per_rank]
            losses.append(step(x[rows], y[rows]))
            history.append(record(model))
        if epoch == 0 and EPOCHS.get(case, 1) > 1:
            parallel.save_checkpoint(ckpt, model, opt, epoch=epoch)
            assert os.path.exists(ckpt)  # the barrier: every rank sees rank 0's file
    arrays = stack(history, losses)
    if case == "mlp64_scaled":  # rank 1's gradients overflow: every rank skips the step and backs off
        before = record(model)
        bad = x[:per_rank].copy()
        if rank == 1:
            bad[0, 0] = np.inf
        step(bad, y[:per_rank])
        unchanged = all(np.array_equal(before[k], v) for k, v in record(model).items())
        arrays["overflow"] = np.array([float(unchanged), float(step.loss_scaler.scale.numpy())])
    arrays["buckets"] = np.array([len(step.buckets)])
    tag = "resumed" if first_epoch else f"{tag}rank{rank}"
    nn.save_state_dict(arrays, os.path.join(out, f"{case}.{tag}.safetensors"))


def fail(how: str) -> None:
    rank = parallel.get_rank()
    model, loss, opt, options = build("mlp64", 0)
    step = parallel.compile_distributed_train_step(model, loss, opt, inputs("mlp64"), **options)
    x, y = data("mlp64")
    for k in range(STEPS):
        if rank == 1 and k == 5:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"boom at step {k} on purpose")
        step(x[k * B : (k + 1) * B], y[k * B : (k + 1) * B])
    raise AssertionError("rank 0 finished the epoch although rank 1 failed")


def main(scenario: str, out: str) -> None:
    if scenario == "train":
        assert parallel.get_local_rank() == parallel.get_rank()  # one machine
        for case in CASES:
            train(case, out)
        fit(out)
    elif scenario == "wgpu":
        train("mlp32", out, tag="wgpu.", steps=3, backend="wgpu")
    elif scenario == "resume":
        train("mlp64", out, first_epoch=1, seed=999)
    elif scenario == "mismatch":
        case = "mlp64" if parallel.get_rank() == 0 else "mlp32"
        model, loss, opt, _ = build(case, 0)
        parallel.compile_distributed_train_step(model, loss, opt, inputs(case))
    else:
        fail(scenario)


if __name__ == "__main__":
    parallel.run(main, *sys.argv[1:3])
