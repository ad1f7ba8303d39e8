"""LSTM and GRU with PyTorch's gate order, weight names and layouts, so PyTorch weights load by name.

Parameters per layer ``k`` (and direction suffix ``_reverse``): ``weight_ih_l{k}`` ``(G*H, input)``,
``weight_hh_l{k}`` ``(G*H, H)``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, with ``G`` = 4 gates (i, f, g, o) for
LSTM and 3 (r, z, n) for GRU, all initialised ``U(-1/sqrt(H), 1/sqrt(H))`` as in PyTorch.

The graph is the recurrence unrolled over time, so the sequence length must be static (the batch size
may be symbolic). The input projections of all time steps are one matmul per layer and direction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import asg.core as ag
from asg.core.shapes import format_shape

from . import init
from .layers import _RandomLayer
from .module import Parameter

__all__ = ["GRU", "LSTM"]


class _RNNBase(_RandomLayer):
    _gates = 0
    _mode = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for what, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: {what} must be a positive integer, got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be a probability in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        g = self._gates * hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
                self.register_parameter(f"weight_ih_l{layer}{suffix}", Parameter(np.zeros((g, layer_in))))
                self.register_parameter(f"weight_hh_l{layer}{suffix}", Parameter(np.zeros((g, hidden_size))))
                if bias:
                    self.register_parameter(f"bias_ih_l{layer}{suffix}", Parameter(np.zeros(g)))
                    self.register_parameter(f"bias_hh_l{layer}{suffix}", Parameter(np.zeros(g)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw every weight and bias from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))`` (PyTorch's
        init).
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def _cell(
        self, xw: ag.Tensor, state: Any, w_hh: ag.Tensor, b_hh: ag.Tensor | None
    ) -> tuple[ag.Tensor, Any]:
        raise NotImplementedError

    def _initial(self, hx: Any, n: Any, dtype: str) -> list[Any]:
        raise NotImplementedError

    def forward(self, input: ag.Tensor, hx: Any = None) -> tuple[ag.Tensor, Any]:
        """Runs the recurrence over ``input`` ``(T, N, input_size)`` (``(N, T, input_size)`` with
        ``batch_first``, ``(T, input_size)`` unbatched), unrolled over the static ``T``; returns
        ``(output, final state)`` as the class describes.
        """
        x = ag.as_tensor(input)
        name = type(self).__name__
        where = f"{name} at {self.path or 'the root'}: input {x.node.label} {format_shape(x.shape)}"
        batched = x.ndim == 3
        if x.ndim not in (2, 3):
            raise ag.ShapeError(
                f"{where}: expected (T, N, {self.input_size}) or (N, T, ...) with batch_first"
            )
        if not batched:
            x = ag.unsqueeze(x, 0 if self.batch_first else 1)
        if not self.batch_first:
            x = ag.swapaxes(x, 0, 1)  # (N, T, I)
        n, t = x.shape[0], x.shape[1]
        if not isinstance(t, int):
            raise ag.ShapeError(
                f"{where}: the sequence length must be static (the recurrence is unrolled), got {t!r}"
            )
        if x.shape[2] != self.input_size:
            raise ag.ShapeError(f"{where}: expected {self.input_size} input features, got {x.shape[2]}")
        directions = 2 if self.bidirectional else 1
        states = self._initial(hx, n, x.dtype)
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(("", "_reverse")[:directions]):
                w_ih = getattr(self, f"weight_ih_l{layer}{suffix}")
                w_hh = getattr(self, f"weight_hh_l{layer}{suffix}")
                b_ih = getattr(self, f"bias_ih_l{layer}{suffix}") if self.bias else None
                b_hh = getattr(self, f"bias_hh_l{layer}{suffix}") if self.bias else None
                xw = ag.linear(x, w_ih, b_ih)  # (N, T, G*H): every step's input projection at once
                state = states[layer * directions + d]
                steps: list[ag.Tensor] = [None] * t  # type: ignore[list-item]
                order = range(t - 1, -1, -1) if d == 1 else range(t)
                for i in order:
                    h, state = self._cell(xw[:, i], state, w_hh, b_hh)
                    steps[i] = h
                outputs.append(ag.stack(steps, axis=1))  # (N, T, H)
                finals.append(state)
            x = outputs[0] if directions == 1 else ag.concat(outputs, axis=2)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = ag.dropout(x, self.dropout, self._key())
        out = x if self.batch_first else ag.swapaxes(x, 0, 1)
        if not batched:
            out = ag.squeeze(out, 0 if self.batch_first else 1)
        return out, self._pack(finals, batched)

    def _pack(self, finals: list[Any], batched: bool) -> Any:
        raise NotImplementedError

    def extra_repr(self) -> str:
        """The sizes, ``num_layers``, ``batch_first`` and ``bidirectional`` for ``repr``."""
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first={self.batch_first}, bidirectional={self.bidirectional}"
        )


def _initial_states(hx: Any, count: int, n: Any, hidden: int, dtype: str, what: str) -> list[ag.Tensor]:
    """hx ``(L*D, N, H)`` (or ``(L*D, H)`` unbatched) split per layer and direction; zeros when None."""
    if hx is None:
        return [ag.zeros((n, hidden), dtype) for _ in range(count)]
    hx = ag.as_tensor(hx, dtype)
    if hx.ndim == 2:
        hx = ag.unsqueeze(hx, 1)
    if hx.ndim != 3 or hx.shape[0] != count or hx.shape[2] != hidden:
        raise ag.ShapeError(
            f"{what} {hx.node.label} {format_shape(hx.shape)} must be (num_layers * directions, N, hidden) = "
            f"({count}, {n}, {hidden})"
        )
    return [hx[i] for i in range(count)]


def _stack_states(states: list[ag.Tensor], batched: bool) -> ag.Tensor:
    out = ag.stack(states, axis=0)  # (L*D, N, H)
    return out if batched else ag.squeeze(out, 1)


class LSTM(_RNNBase):
    """Long short-term memory (``torch.nn.LSTM``): multi-layer, bidirectional, ``batch_first``, dropout.

    ``forward(input, (h_0, c_0)=None)`` returns ``(output, (h_n, c_n))``: output ``(T, N, D*H)`` (or
    ``(N, T, D*H)`` with batch_first), states ``(num_layers * D, N, H)``.

    >>> import asg.core as ag
    >>> from asg import nn
    >>> lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)
    >>> out, (h, c) = lstm(ag.input("x", ("B", 5, 8)))
    >>> out.shape, h.shape
    (('B', 5, 16), (2, 'B', 16))
    """

    _gates = 4

    def _initial(self, hx: Any, n: Any, dtype: str) -> list[Any]:
        count = self.num_layers * (2 if self.bidirectional else 1)
        h0, c0 = (None, None) if hx is None else hx
        hs = _initial_states(h0, count, n, self.hidden_size, dtype, "LSTM: h_0")
        cs = _initial_states(c0, count, n, self.hidden_size, dtype, "LSTM: c_0")
        return list(zip(hs, cs, strict=True))

    def _cell(self, xw, state, w_hh, b_hh):  # type: ignore[no-untyped-def]
        h, c = state
        gates = xw + ag.linear(h, w_hh, b_hh)  # (N, 4H): i, f, g, o
        hs = self.hidden_size
        i, f = ag.sigmoid(gates[:, 0:hs]), ag.sigmoid(gates[:, hs : 2 * hs])
        g, o = ag.tanh(gates[:, 2 * hs : 3 * hs]), ag.sigmoid(gates[:, 3 * hs : 4 * hs])
        c = f * c + i * g
        h = o * ag.tanh(c)
        return h, (h, c)

    def _pack(self, finals, batched):  # type: ignore[no-untyped-def]
        return _stack_states([h for h, _ in finals], batched), _stack_states([c for _, c in finals], batched)


class GRU(_RNNBase):
    """Gated recurrent unit (``torch.nn.GRU``), PyTorch's r, z, n gates: ``n = tanh(x_n + r * (h W_hn + b_hn))``.

    ``forward(input, h_0=None)`` returns ``(output, h_n)``.
    """

    _gates = 3

    def _initial(self, hx: Any, n: Any, dtype: str) -> list[Any]:
        count = self.num_layers * (2 if self.bidirectional else 1)
        return _initial_states(hx, count, n, self.hidden_size, dtype, "GRU: h_0")

    def _cell(self, xw, h, w_hh, b_hh):  # type: ignore[no-untyped-def]
        hw = ag.linear(h, w_hh, b_hh)  # (N, 3H): r, z, n
        hs = self.hidden_size
        r = ag.sigmoid(xw[:, 0:hs] + hw[:, 0:hs])
        z = ag.sigmoid(xw[:, hs : 2 * hs] + hw[:, hs : 2 * hs])
        n = ag.tanh(xw[:, 2 * hs : 3 * hs] + r * hw[:, 2 * hs : 3 * hs])
        h = (1.0 - z) * n + z * h
        return h, h

    def _pack(self, finals, batched):  # type: ignore[no-untyped-def]
        return _stack_states(finals, batched)
