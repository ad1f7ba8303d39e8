"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s behaviour and lr sequences.

A scheduler writes each parameter group's ``"lr"``; the optimizer keeps the value in a graph variable,
so a compiled training step picks the new rate up at its next call without recompiling. Call
:meth:`LRScheduler.step` once per epoch (or per batch for per-step schedules such as OneCycleLR), after
the optimizer steps, as in PyTorch. Each schedule is computed in closed form from the step count.

Example:
    >>> import numpy as np
    >>> from asg import nn
    >>> opt = nn.optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    >>> sched = nn.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(sched.get_last_lr()[0])
    ...     sched.step()
    >>> [round(v, 4) for v in lrs]
    [0.1, 0.1, 0.05, 0.05, 0.025]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .optim import Optimizer

__all__ = [
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "LinearWarmupLR",
    "OneCycleLR",
    "StepLR",
    "WarmupCosineAnnealingLR",
]


class LRScheduler:
    """Base class: ``step()`` advances ``last_epoch`` and sets every group's lr to :meth:`lr_at`."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: expected an asg.nn optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"{type(self).__name__}: resuming (last_epoch={last_epoch}) needs 'initial_lr' in "
                        f"parameter group {i}"
                    )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The learning rate at ``epoch`` for a group whose initial lr is ``base_lr``."""
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        """The learning rate of every parameter group at ``last_epoch``."""
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def step(self) -> None:
        """Advance one epoch (or batch) and write the new lr into the optimizer's groups."""
        self.last_epoch += 1
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs

    def get_last_lr(self) -> list[float]:
        """The lr of each group set by the last :meth:`step`."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (JSON-serialisable numbers and lists)."""
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k != "optimizer"
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` and write its last learning rates into the optimizer's groups."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "optimizer"})
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


class StepLR(LRScheduler):
    """``base_lr * gamma ** (epoch // step_size)``."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        if step_size <= 0:
            raise ValueError(f"StepLR: step_size must be positive, got {step_size}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """``base_lr * gamma ** (epoch // step_size)``."""
        return base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """``base_lr * gamma ** epoch``."""

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """``base_lr * gamma ** epoch``."""
        return base_lr * self.gamma**epoch


def _cosine(epoch: float, period: float, high: float, low: float) -> float:
    return low + (high - low) * (1 + math.cos(math.pi * epoch / period)) / 2


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2`` (rising again after ``T_max``)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be positive, got {T_max}")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The cosine-annealed learning rate at ``epoch`` (see the class)."""
        return _cosine(epoch, self.T_max, base_lr, self.eta_min)


class LinearWarmupLR(LRScheduler):
    """Linear warmup from ``start_factor * base_lr`` to ``base_lr`` over ``warmup_steps``, then constant.

    Equal to ``torch.optim.lr_scheduler.LinearLR(start_factor, 1.0, total_iters=warmup_steps)``.
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 0.0, last_epoch: int = -1
    ) -> None:
        if warmup_steps <= 0 or not 0.0 <= start_factor <= 1.0:
            raise ValueError(
                f"LinearWarmupLR: need warmup_steps > 0 and start_factor in [0, 1], got {warmup_steps}, {start_factor}"
            )
        self.warmup_steps, self.start_factor = warmup_steps, start_factor
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The warmup's learning rate at ``epoch``; ``base_lr`` from ``warmup_steps`` on."""
        frac = min(epoch, self.warmup_steps) / self.warmup_steps
        return base_lr * (self.start_factor + (1.0 - self.start_factor) * frac)


class WarmupCosineAnnealingLR(LRScheduler):
    """Linear warmup over ``warmup_steps``, then cosine annealing to ``eta_min`` at ``total_steps``.

    Equal to PyTorch's ``SequentialLR([LinearLR(start_factor, 1, warmup_steps),
    CosineAnnealingLR(total_steps - warmup_steps, eta_min)], milestones=[warmup_steps])``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        eta_min: float = 0.0,
        start_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if not 0 < warmup_steps < total_steps:
            raise ValueError(
                f"WarmupCosineAnnealingLR: need 0 < warmup_steps < total_steps, got {warmup_steps}, {total_steps}"
            )
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.eta_min, self.start_factor = eta_min, start_factor
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """Linear warmup before ``warmup_steps``, cosine annealing after."""
        if epoch < self.warmup_steps:
            return base_lr * (self.start_factor + (1.0 - self.start_factor) * epoch / self.warmup_steps)
        return _cosine(epoch - self.warmup_steps, self.total_steps - self.warmup_steps, base_lr, self.eta_min)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (``torch.optim.lr_scheduler.OneCycleLR``), stepped once per batch.

    The lr rises from ``max_lr / div_factor`` to ``max_lr`` over ``pct_start`` of ``total_steps`` and
    anneals (``"cos"`` or ``"linear"``) to ``initial_lr / final_div_factor``; ``three_phase`` as in PyTorch.
    With ``cycle_momentum`` (the default, as in PyTorch) the momentum (SGD) or beta1 (Adam, AdamW) moves
    the other way, from ``max_momentum`` down to ``base_momentum`` and back: the optimizer's momentum
    becomes a graph variable (:meth:`asg.nn.optim.Optimizer.vary_momentum`), so create the scheduler
    before compiling the training step.

    >>> import numpy as np
    >>> from asg import nn
    >>> opt = nn.optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    >>> sched = nn.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=4, pct_start=0.5)
    >>> seq = []
    >>> for _ in range(4):
    ...     seq.append((round(sched.get_last_lr()[0], 3), round(opt.param_groups[0]["momentum"], 3)))
    ...     sched.step()
    >>> seq
    [(0.04, 0.95), (1.0, 0.85), (0.5, 0.9), (0.0, 0.95)]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            total_steps = epochs * steps_per_epoch
        if total_steps <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be positive, got {total_steps}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
            )
        self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
        n = len(optimizer.param_groups)
        max_lrs = _per_group("max_lr", max_lr, n)
        if last_epoch == -1:
            for group, m in zip(optimizer.param_groups, max_lrs, strict=True):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor
                group["lr"] = group["initial_lr"]
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if getattr(optimizer, "momentum_key", None) is None:
                raise ValueError(
                    f"OneCycleLR: cycle_momentum=True needs an optimizer with momentum or beta1 (SGD, Adam, "
                    f"AdamW), got {type(optimizer).__name__}; pass cycle_momentum=False"
                )
            optimizer.vary_momentum()
            self.use_beta1 = optimizer.momentum_key == "betas"
            if last_epoch == -1:
                pairs = zip(
                    _per_group("max_momentum", max_momentum, n),
                    _per_group("base_momentum", base_momentum, n),
                    strict=True,
                )
                for group, (hi, lo) in zip(optimizer.param_groups, pairs, strict=True):
                    group["max_momentum"], group["base_momentum"] = hi, lo
                    self._set_momentum(group, hi)
        # (last step of the phase, lr from, lr to, momentum from, momentum to)
        if three_phase:
            self._phases = [
                (float(pct_start * total_steps) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (
                    float(2 * pct_start * total_steps) - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ),
                (total_steps - 1.0, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._phases = [
                (float(pct_start * total_steps) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (total_steps - 1.0, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: dict[str, Any], value: float) -> None:
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        """Each group's learning rate at the current step of the cycle; ``ValueError`` past ``total_steps``.

        With ``cycle_momentum`` it also writes each group's momentum (or beta1), as PyTorch's does.
        """
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {step} times, but total_steps is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, (end, lr_from, lr_to, m_from, m_to) in enumerate(self._phases):
                if step <= end or i == len(self._phases) - 1:
                    pct = (step - start) / (end - start)
                    lrs.append(self._anneal(group[lr_from], group[lr_to], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(group[m_from], group[m_to], pct))
                    break
                start = end
        return lrs


def _per_group(name: str, value: float | list[float], n: int) -> list[float]:
    """One value per parameter group: a list of ``n``, or one number repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"OneCycleLR: {name} has {len(value)} values for {n} parameter groups")
        return list(value)
    return [value] * n
