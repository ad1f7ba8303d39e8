"""The training cases shared by the rank program (ddp_ranks.py) and the one-process references.

Each case trains for EPOCHS x STEPS steps: under R ranks with a per-rank batch B, or in one process
with batch R * B. The data order comes from asg.data.DistributedSampler, the same for any R.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import asg.core as ag
from asg import nn
from asg.data import DistributedSampler

B = 4  # per-rank batch of the 2-rank run
RANKS = 2
STEPS = 20  # per epoch
N = B * RANKS * STEPS
CASES = ("mlp64", "mlp32", "mlp64_scaled", "mlp_half", "cnn64")
EPOCHS = {"mlp64": 2}  # mlp64 checkpoints after epoch 0 and is resumed on 1 rank


def to_float64(model: nn.Module) -> nn.Module:
    """Replace every float parameter and buffer by a float64 copy (layers build float32)."""
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                setattr(m, name, nn.Parameter(p.numpy(), dtype="float64"))
        for name, b in list(m._buffers.items()):
            if b is not None and b.dtype == "float32":
                m.register_buffer(name, ag.state(b.numpy().astype(np.float64)))
    return model


def data(case: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    dtype = np.float32 if case in ("mlp32", "mlp_half") else np.float64
    if case.startswith("cnn"):
        x = rng.normal(size=(N, 1, 6, 6)).astype(dtype)
        return x, rng.integers(0, 3, size=N).astype(np.int64)
    x = rng.normal(size=(N, 5)).astype(dtype)
    return x, np.tanh(x[:, :3] * x[:, 2:]).astype(dtype)


def build(case: str, seed: int) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    """(model, loss, optimizer, step options) for ``case``, initialised from ``seed``."""
    nn.init.manual_seed(seed)
    if case.startswith("cnn"):
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3),  # (N, 4, 4, 4)
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 4, 2, 2)
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        loss: Any = nn.CrossEntropyLoss()
    else:
        model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
        loss = nn.MSELoss()
    if case not in ("mlp32", "mlp_half"):
        to_float64(model)
    if case in ("mlp32", "mlp_half"):
        opt: Any = nn.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    options: dict[str, Any] = {
        "mlp64": {"clip_grad_norm": 0.5},
        "mlp32": {},
        "mlp_half": {"mixed_precision": True},
        "mlp64_scaled": {"clip_grad_norm": 0.5, "loss_scaler": nn.amp.LossScaler(init_scale=1024.0)},
        "cnn64": {"clip_grad_norm": 1.0},
    }[case]
    return model, loss, opt, options


def inputs(case: str, batch: Any = "B") -> list[tuple[tuple[Any, ...], str]]:
    """Input specs (float64 data needs them: inputs taken from example arrays are float32)."""
    x, y = data(case)
    return [((batch, *x.shape[1:]), x.dtype.name), ((batch, *y.shape[1:]), y.dtype.name)]


def order(epoch: int, ranks: int, rank: int) -> np.ndarray:
    sampler = DistributedSampler(N, num_replicas=ranks, rank=rank, seed=0)
    sampler.set_epoch(epoch)
    return sampler.indices()


def record(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def stack(history: list[dict[str, np.ndarray]], losses: list[float]) -> dict[str, np.ndarray]:
    out = {k: np.stack([h[k] for h in history]) for k in history[0]}
    out["loss"] = np.array(losses, np.float64)
    return out


class Halves(nn.Module):
    """The one-process reference for BatchNorm: the model sees each rank's half of the batch separately.

    ``last`` is the half the model runs on last: its BatchNorm running-statistics update is the one the
    step keeps (capture_updates keeps the last update of a variable), so ``last=1`` tracks rank 1's
    statistics and ``last=0`` rank 0's. The output keeps the batch order either way.
    """

    def __init__(self, model: nn.Module, half: int, last: int) -> None:
        super().__init__()
        self.inner, self.half, self.last = model, half, last

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        a, b = x[: self.half], x[self.half :]
        if self.last == 1:
            ya = self.inner(a)
            yb = self.inner(b)
        else:
            yb = self.inner(b)
            ya = self.inner(a)
        return ag.concat([ya, yb], axis=0)


def reference(case: str, seed: int, last: int = 1) -> dict[str, np.ndarray]:
    """One process, batch RANKS * B, the same data order; per-step parameters and losses."""
    model, loss, opt, options = build(case, seed)
    x, y = data(case)
    options = dict(options)
    options.pop("loss_scaler", None)  # the reference is the unscaled step: a power-of-two scale is exact
    net: nn.Module = model
    specs = inputs(case)
    if case.startswith("cnn"):
        net = Halves(model, B, last)
        specs = inputs(case, RANKS * B)
    step = nn.compile_train_step(net, loss, opt, specs, **options)
    history, losses = [], []
    for epoch in range(EPOCHS.get(case, 1)):
        idx = order(epoch, 1, 0)
        for k in range(STEPS):
            chunk = idx[k * RANKS * B : (k + 1) * RANKS * B]
            # rank r's rows are chunk[r::RANKS]; the halves put them side by side
            rows = np.concatenate([chunk[r::RANKS] for r in range(RANKS)])
            losses.append(step(x[rows], y[rows]))
            history.append(record(model))
    return stack(history, losses)
