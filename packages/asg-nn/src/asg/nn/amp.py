"""Mixed precision: a float16 copy of a float32 graph, float32 master weights and dynamic loss scaling.

:func:`half_precision` is a graph rewrite: it re-applies every op of a graph with its float32 values
in float16 (parameters and inputs enter through a cast, so gradients reach the float32 master
weights, cast back to float32). :class:`LossScaler` multiplies the loss by a scale before
differentiating, divides the gradients by it, and gates the optimizer's updates on the gradients being
finite: a step whose float16 gradients overflowed leaves the weights and optimizer state unchanged (layer
statistics such as BatchNorm's still update, as with PyTorch's GradScaler) and halves the scale; ``growth_interval``
finite steps in a row double it (``torch.amp.GradScaler``'s policy). ``compile_train_step(...,
mixed_precision=True)`` puts both into the one compiled step; with ``accumulate=k`` the scaled float32
gradients of ``k`` micro-batches are summed, then unscaled, tested and applied (or skipped) once, and the
scale moves once per optimizer step.

>>> import numpy as np
>>> import asg.core as ag
>>> from asg import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> y = model(ag.input("x", ("B", 4)))
>>> (y16,) = nn.amp.half_precision([y])
>>> y16.dtype, sorted({n.dtype for n in ag.Graph([y16.node]).nodes if n.op == "matmul"})
('float16', ['float16'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

import asg.core as ag
from asg.core.graph import topological_order

__all__ = ["LossScaler", "half_precision"]


def half_precision(outputs: Sequence[ag.Tensor], dtype: str = "float16") -> list[ag.Tensor]:
    """The graph computing ``outputs`` rebuilt with every float32 value in ``dtype`` (a graph rewrite).

    Float32 parameters and inputs enter through ``cast`` nodes (their gradients flow back in float32);
    float32 constants are converted; ops whose ``dtype`` attribute is float32 (``full``, ``cast``,
    random numbers) produce ``dtype``. Each output keeps its role but comes out in ``dtype`` where it
    was float32 (cast it back where float32 is needed). Node names and scopes are kept.
    """
    mapping: dict[int, ag.Tensor] = {}
    for node in topological_order([t.node for t in outputs]):
        t = ag.Tensor(node)
        if node.op == "constant":
            new = ag.constant(node.data.astype(dtype)) if node.dtype == "float32" else t
        elif node.op in ("parameter", "input"):
            new = ag.cast(t, dtype) if node.dtype == "float32" else t
        else:
            attrs = {k: (dtype if k == "dtype" and v == "float32" else v) for k, v in node.attrs.items()}
            new = ag.apply(node.op, *(mapping[i.id] for i in node.inputs), **attrs)
            new.node.name = node.name
            if "scope" in node.meta:
                new.node.meta["scope"] = node.meta["scope"]
        mapping[node.id] = new
    return [mapping[t.node.id] for t in outputs]


class LossScaler:
    """Dynamic loss scaling in the graph: a float32 ``scale`` variable and a count of finite steps.

    Args:
        init_scale: the first scale (PyTorch's default 2**16).
        growth_factor, backoff_factor: multiply the scale after ``growth_interval`` finite steps in a
            row, or after a step with non-finite gradients.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError(
                "LossScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1"
            )
        self.growth_factor, self.backoff_factor, self.growth_interval = (
            growth_factor,
            backoff_factor,
            growth_interval,
        )
        self.scale = ag.state(np.float32(init_scale), name="loss_scaler.scale")
        # int32, so the step runs on backends without 64-bit integers (WGSL)
        self.good_steps = ag.state(np.int32(0), name="loss_scaler.good_steps")
        self.finite: ag.Tensor | None = None

    def gradients(self, loss: ag.Tensor, params: Sequence[ag.Tensor]) -> list[ag.Tensor]:
        """Unscaled gradients of ``loss`` (float32) through the scaled loss; sets :attr:`finite`."""
        return self.unscale(self.scaled_gradients(loss, params))

    def scaled_gradients(self, loss: ag.Tensor, params: Sequence[ag.Tensor]) -> list[ag.Tensor]:
        """The gradients of ``loss * scale`` (in the parameters' dtype, float32 for master weights).

        Gradient accumulation sums these over the micro-batches and calls :meth:`unscale` once on the
        sum (``divide_by`` the number of micro-batches), as PyTorch's GradScaler does: one finiteness
        test, one (skipped or applied) step and one scale update per optimizer step.
        """
        return ag.grad(ag.cast(loss, "float32") * self.scale, list(params))

    def unscale(self, scaled: Sequence[ag.Tensor], divide_by: float = 1.0) -> list[ag.Tensor]:
        """``scaled`` gradients divided by the scale (and by ``divide_by``); sets :attr:`finite`.

        The data-parallel step calls it on the summed gradients of all ranks with ``divide_by`` the
        number of ranks, and gradient accumulation on the summed gradients of its micro-batches with
        ``divide_by`` their number, so the finiteness test and the back-off see the averaged gradients.
        """
        inv = 1.0 / (self.scale * float(divide_by))
        grads = [g * ag.cast(inv, g.dtype) for g in scaled]
        # sum(g * 0) is 0 when every entry is finite, NaN as soon as one is inf or NaN
        probe = sum(((g * 0.0).sum() for g in grads[1:]), (grads[0] * 0.0).sum())
        self.finite = ag.cast(probe, "float32") == 0.0
        return grads

    def gate(self, updates: Mapping[ag.Tensor, ag.Tensor]) -> dict[ag.Tensor, ag.Tensor]:
        """The (optimizer) updates applied only when the gradients were finite, plus the scale's own updates."""
        if self.finite is None:
            raise RuntimeError("LossScaler.gate: call gradients() first")
        ok = self.finite
        gated = {var: ag.where(ok, value, var) for var, value in updates.items()}
        grown = self.good_steps + 1 >= self.growth_interval
        gated[self.scale] = ag.where(
            ok,
            ag.where(grown, self.scale * self.growth_factor, self.scale),
            self.scale * self.backoff_factor,
        )
        gated[self.good_steps] = ag.where(ok & ~grown, self.good_steps + 1, 0)
        return gated

    def state_dict(self) -> dict[str, float | int]:
        """``{"scale", "good_steps"}``: the current loss scale and the finite steps in a row since it last
        changed.
        """
        return {"scale": float(self.scale.numpy()), "good_steps": int(self.good_steps.numpy())}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        """Restore the scale and step count saved by :meth:`state_dict`."""
        self.scale.assign(np.float32(state["scale"]))
        self.good_steps.assign(np.int32(state["good_steps"]))
