"""Gradient checkpointing: the same gradients as without it, and a lower planned peak memory."""

from __future__ import annotations

import numpy as np

import asg.core as ag
from asg import nn


class Deep(nn.Module):
    def __init__(self, width: int, depth: int, checkpointed: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width), nn.Tanh())
                for _ in range(depth)
            ]
        )
        self.head = nn.Linear(width, 10)
        self.checkpointed = checkpointed

    def forward(self, x):
        for block in self.blocks:
            x = nn.checkpoint(block, x) if self.checkpointed else block(x)
        return self.head(x)


def _step(checkpointed: bool, width: int = 64, depth: int = 4):
    nn.init.manual_seed(0)
    model = Deep(width, depth, checkpointed)
    opt = nn.optim.SGD(model.parameters(), lr=0.1)
    return model, nn.compile_train_step(model, nn.CrossEntropyLoss(), opt)


def test_checkpointed_training_equals_plain_training() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    plain, plain_step = _step(False)
    ckpt, ckpt_step = _step(True)
    for _ in range(3):
        assert ckpt_step(x, y) == plain_step(x, y)
    for (k, a), (_, b) in zip(plain.state_dict().items(), ckpt.state_dict().items(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=k)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in ckpt.named_parameters()]
    counts = ckpt_step.function.graph.op_counts()
    assert counts["recompute"] == 4 and counts["matmul"] > plain_step.function.graph.op_counts()["matmul"]


def test_input_gradients_and_second_order_through_a_checkpoint() -> None:
    block = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    x = ag.input("x", (2, 3))
    a = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    direct = ag.grad((block(x) ** 2).sum(), [x])[0]
    through = ag.grad((nn.checkpoint(block, x) ** 2).sum(), [x])[0]
    (dd,) = ag.grad((direct * direct).sum(), [block[0].weight])  # a gradient of the gradient
    (dt,) = ag.grad((through * through).sum(), [block[0].weight])
    got, want, got2, want2 = ag.compile([through, direct, dt, dd])(a)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got2, want2, rtol=1e-5, atol=1e-6)


def test_checkpointing_lowers_the_planned_peak_memory() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 256)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    memory = {}
    for checkpointed in (False, True):
        _, step = _step(checkpointed, width=256, depth=8)
        step(x, y)
        memory[checkpointed] = step.function.profile(x, y).memory
    plain, ckpt = memory[False], memory[True]
    print(
        f"\n8 blocks (Linear-GELU-Linear-Tanh, width 256) at batch 256: planned buffers "
        f"{plain.planned_bytes / 2**20:.2f} -> {ckpt.planned_bytes / 2**20:.2f} MiB, "
        f"peak {plain.peak_bytes / 2**20:.2f} -> {ckpt.peak_bytes / 2**20:.2f} MiB"
    )
    assert ckpt.planned_bytes < 0.7 * plain.planned_bytes, (plain, ckpt)
    assert ckpt.peak_bytes < 0.85 * plain.peak_bytes, (plain, ckpt)
