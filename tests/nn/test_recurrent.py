"""LSTM and GRU against PyTorch: weights loaded by name, outputs, final states and all gradients."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import compare_module, torch_or_skip

import asg.core as ag
from asg import nn

CASES = [
    ("one-layer", dict()),
    ("two-layers-batch-first", dict(num_layers=2, batch_first=True)),
    ("bidirectional", dict(num_layers=2, bidirectional=True)),
    ("no-bias", dict(bias=False, batch_first=True)),
]


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.torch
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("which", ["output", "h_n"])
def test_recurrent_layer_matches_torch(cls: str, name: str, kw: dict, which: str) -> None:
    torch = torch_or_skip()
    torch.manual_seed(0)
    ours, theirs = getattr(nn, cls)(5, 6, **kw), getattr(torch.nn, cls)(5, 6, **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    x = _x(3, 4, 5) if kw.get("batch_first") else _x(4, 3, 5)

    def pick(result):
        out, state = result
        if which == "output":
            return out
        return state[0] if cls == "LSTM" else state

    compare_module(ours, theirs, x, call_ours=lambda m, x: pick(m(x)), call_theirs=lambda m, x: pick(m(x)))


@pytest.mark.torch
def test_lstm_with_initial_state_and_cell_output_matches_torch() -> None:
    torch = torch_or_skip()
    torch.manual_seed(1)
    ours, theirs = nn.LSTM(4, 3, num_layers=2), torch.nn.LSTM(4, 3, num_layers=2)
    x, h0, c0 = _x(5, 2, 4), _x(2, 2, 3, seed=1), _x(2, 2, 3, seed=2)
    compare_module(
        ours,
        theirs,
        x,
        h0,
        c0,
        call_ours=lambda m, x, h, c: m(x, (h, c))[1][1],
        call_theirs=lambda m, x, h, c: m(x, (h, c))[1][1],
    )


def test_recurrent_shapes_unbatched_and_errors() -> None:
    gru = nn.GRU(3, 4, batch_first=True)
    out, h = gru(ag.input("x", ("B", 6, 3)))
    assert out.shape == ("B", 6, 4) and h.shape == (1, "B", 4)
    out, h = gru(ag.input("x", (6, 3)))  # one unbatched sequence
    assert out.shape == (6, 4) and h.shape == (1, 4)
    with pytest.raises(ag.ShapeError, match="the sequence length must be static"):
        gru(ag.input("x", ("B", "T", 3)))
    with pytest.raises(ag.ShapeError, match="expected 3 input features, got 5"):
        gru(ag.input("x", ("B", 6, 5)))
    lstm = nn.LSTM(3, 4, num_layers=2)
    with pytest.raises(
        ag.ShapeError, match=r"LSTM: h_0 h \(1, 2, 4\) must be \(num_layers \* directions, N, hidden\)"
    ):
        lstm(ag.input("x", (6, 2, 3)), (ag.input("h", (1, 2, 4)), ag.input("c", (2, 2, 4))))


def test_lstm_trains_on_a_sequence_task() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 1)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)  # the sign of the running sum

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(1, 16, batch_first=True)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    model = Model()
    step = nn.compile_train_step(model, nn.CrossEntropyLoss(), nn.optim.Adam(model.parameters(), lr=0.02))
    losses = [step(x, y) for _ in range(80)]
    assert losses[-1] < 0.3 * losses[0]
