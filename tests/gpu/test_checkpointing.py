"""asg-nn's gradient checkpointing (the ``recompute`` op) on wgpu: trains as on numpy."""

import numpy as np

import asg.core as ag
from asg import nn


class _Deep(nn.Module):
    def __init__(self, checkpointed: bool, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)) for _ in range(depth)]
        )
        self.head = nn.Linear(width, 4)
        self.checkpointed = checkpointed

    def forward(self, x):
        for block in self.blocks:
            x = x + (nn.checkpoint(block, x) if self.checkpointed else block(x))
        return self.head(x)


def _train(backend: str, checkpointed: bool, steps: int = 6):
    nn.init.manual_seed(0)
    model = _Deep(checkpointed)
    step = nn.compile_train_step(
        model, nn.CrossEntropyLoss(), nn.optim.Adam(model.parameters(), lr=0.01), backend=backend
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16)).astype(np.float32)
    y = rng.integers(0, 4, 8)
    losses = [step(x, y) for _ in range(steps)]
    return losses, model.state_dict(), step


def test_a_checkpointed_mlp_trains_on_wgpu_as_on_numpy():
    want, w_want, _ = _train("numpy", True)
    got, w_got, step = _train("wgpu", True)
    assert step.function.graph.op_counts()["recompute"] == 3
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert want[-1] < want[0]
    for k, v in w_want.items():
        np.testing.assert_allclose(w_got[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    plain, _, _ = _train("wgpu", False)  # and as without checkpointing
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-6)


def test_recompute_is_the_identity_forward_on_wgpu():
    block = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
    x = ag.input("x", (2, 3))
    y = nn.checkpoint(block, x) * 2.0
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 6
    np.testing.assert_allclose(ag.compile(y, backend="wgpu")(a), ag.compile(y)(a), rtol=1e-6, atol=1e-7)
