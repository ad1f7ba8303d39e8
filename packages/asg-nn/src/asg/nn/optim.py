"""Optimizers as graph updates, shaped like ``torch.optim``, and gradient clipping inside the step.

An optimizer does not touch arrays: :meth:`Optimizer.updates` takes the gradient tensors of a graph and
returns ``{variable: new value}`` for ``ag.compile(updates=...)``, so the forward pass, the gradients
and the update compile into one function. Each update is one fused op of asg-core's "optim" family
(``sgd_update``, ``adam_update``, ``rmsprop_update``). The learning rate of each parameter group is a
graph variable: setting ``group["lr"]`` (as the schedulers do) changes it without recompiling.
After :meth:`Optimizer.vary_momentum` (what ``OneCycleLR(cycle_momentum=True)`` calls) SGD's momentum and
Adam's beta1 are graph variables too, and their updates are built from elementwise ops instead of the fused
op, whose momentum and betas are compiled constants.

State lives in asg-core variables under PyTorch's names (``exp_avg``, ``exp_avg_sq``, ``step``,
``momentum_buffer``, ``square_avg``, ``grad_avg``), and :meth:`Optimizer.state_dict` has PyTorch's
layout: ``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg import nn
    >>> w = nn.Parameter(np.ones(2), name="w")
    >>> x = ag.input("x", (2,))
    >>> loss = ((w * x) ** 2).sum()
    >>> opt = nn.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> step = ag.compile(loss, updates=opt.updates(ag.grad(loss, [w])))
    >>> _ = step(np.ones(2, "float32"))
    >>> w.numpy().tolist(), sorted(opt.state_dict()["state"][0])
    ([0.800000011920929, 0.800000011920929], ['momentum_buffer'])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

import asg.core as ag
from asg.core.ops import optim as fused

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "clip_grad_norm", "clip_grad_value"]


class _Group(dict):
    """A parameter group; writing ``"lr"`` also writes the group's learning-rate graph variable, and
    writing ``"momentum"`` (SGD) or ``"betas"`` (Adam: beta1) its momentum variable once it has one."""

    lr_var: ag.Tensor
    momentum_var: ag.Tensor | None = None

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key == "lr" and hasattr(self, "lr_var"):
            self.lr_var.assign(np.asarray(value, np.float32))
        elif self.momentum_var is not None and key in ("momentum", "betas"):
            self.momentum_var.assign(np.asarray(value[0] if key == "betas" else value, np.float32))


def _check_params(params: Any, where: str) -> list[ag.Tensor]:
    if isinstance(params, ag.Tensor):
        raise TypeError(
            f"{where}: params must be an iterable of parameters, got one Tensor (wrap it in a list)"
        )
    out = list(params)
    for p in out:
        if not (isinstance(p, ag.Tensor) and p.node.op == "parameter" and p.node.data.trainable):
            raise TypeError(
                f"{where}: every parameter must be a trainable variable (nn.Parameter), got {p!r}"
            )
        if not p.dtype.startswith("float"):
            raise TypeError(
                f"{where}: parameter {p.name} is {p.dtype}; only float parameters can be optimized"
            )
    return out


class Optimizer:
    """Base class: parameter groups, per-parameter state variables, PyTorch-shaped ``state_dict``.

    Subclasses define ``_state_names(group)`` (the state tensors a parameter needs) and
    ``_update(group, param, grad, state)`` (the fused op applications); ``momentum_key`` names the
    hyperparameter :meth:`vary_momentum` turns into a variable (``None``: not supported).
    """

    momentum_key: str | None = None

    def __init__(self, params: Iterable[Any], defaults: Mapping[str, Any]) -> None:
        name = type(self).__name__
        for key, value in defaults.items():
            _check_hyper(name, key, value)
        self.defaults = dict(defaults)
        if isinstance(params, ag.Tensor):
            raise TypeError(
                f"{name}: params must be an iterable of parameters, got one Tensor (wrap it in a list)"
            )
        items = list(params)
        if not items:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = items if isinstance(items[0], Mapping) else [{"params": items}]
        self.param_groups: list[_Group] = []
        self.state: dict[int, dict[str, ag.Tensor]] = {}  # id(Variable) -> state variables
        self._built = False  # updates() was called: compiled steps hold the hyperparameters they read
        seen: set[int] = set()
        for spec in groups:
            if not isinstance(spec, Mapping) or "params" not in spec:
                raise TypeError(
                    f"{name}: a parameter group must be a dict with a 'params' entry, got {spec!r}"
                )
            for key, value in spec.items():
                if key != "params":
                    _check_hyper(name, key, value)
            group = _Group({**self.defaults, **spec})
            group["params"] = _check_params(spec["params"], name)
            for p in group["params"]:
                if id(p.node.data) in seen:
                    raise ValueError(f"{name}: parameter {p.name} appears in more than one parameter group")
                seen.add(id(p.node.data))
            group.lr_var = ag.state(np.float32(group["lr"]), name=f"optim.group{len(self.param_groups)}.lr")
            self.param_groups.append(group)

    # ------------------------------------------------------------------ graph building
    def _state_names(self, group: Mapping[str, Any]) -> list[str]:
        raise NotImplementedError

    def _state_for(self, group: Mapping[str, Any], p: ag.Tensor) -> dict[str, ag.Tensor]:
        key = id(p.node.data)
        if key not in self.state:
            label = p.name or f"param{len(self.state)}"
            entry: dict[str, ag.Tensor] = {"step": ag.state(np.float32(0.0), name=f"optim.{label}.step")}
            for s in self._state_names(group):
                entry[s] = ag.state(np.zeros(p.shape, p.dtype), name=f"optim.{label}.{s}")
            self.state[key] = entry
        return self.state[key]

    def updates(
        self, grads: Mapping[ag.Tensor, ag.Tensor] | Sequence[ag.Tensor]
    ) -> dict[ag.Tensor, ag.Tensor]:
        """``{variable: new value}`` for one optimizer step, given each parameter's gradient tensor.

        ``grads`` is ``{param: grad}`` or a list aligned with the parameters of all groups in order
        (what ``ag.grad(loss, optimizer.params)`` returns).
        """
        params = self.params
        if not isinstance(grads, Mapping):
            grads = list(grads)
            if len(grads) != len(params):
                raise ValueError(
                    f"{type(self).__name__}.updates: got {len(grads)} gradients for {len(params)} parameters"
                )
            by_var = {id(p.node.data): g for p, g in zip(params, grads, strict=True)}
        else:
            by_var = {id(p.node.data): g for p, g in grads.items()}
        out: dict[ag.Tensor, ag.Tensor] = {}
        self._built = True
        for group in self.param_groups:
            for p in group["params"]:
                g = by_var.get(id(p.node.data))
                if g is None:
                    continue
                if tuple(g.shape) != tuple(p.shape):
                    raise ag.ShapeError(
                        f"{type(self).__name__}.updates: gradient of {p.name} has shape {g.shape}, "
                        f"the parameter {p.shape}"
                    )
                state = self._state_for(group, p)
                step = state["step"] + 1.0
                new = self._update(group, p, g, state, step, group.lr_var)
                out[state["step"]] = step
                out[p] = new.pop("param")
                for s, value in new.items():
                    out[state[s]] = value
        return out

    def _update(
        self,
        group: Mapping[str, Any],
        p: ag.Tensor,
        g: ag.Tensor,
        state: dict[str, ag.Tensor],
        step: ag.Tensor,
        lr: ag.Tensor,
    ) -> dict[str, ag.Tensor]:
        raise NotImplementedError

    def vary_momentum(self) -> None:
        """Make each group's momentum (SGD) or beta1 (Adam, AdamW) a float32 graph variable.

        Writing ``group["momentum"]`` or ``group["betas"]`` then changes it in compiled steps without
        recompiling, as ``group["lr"]`` does (``OneCycleLR(cycle_momentum=True)`` relies on it). Those
        updates are built from elementwise ops rather than the fused optimizer op. Call it before
        :meth:`updates` (before compiling a step with this optimizer).

        >>> import numpy as np
        >>> import asg.core as ag
        >>> from asg import nn
        >>> w = nn.Parameter(np.ones(1), name="w")
        >>> opt = nn.optim.SGD([w], lr=1.0, momentum=0.5)
        >>> opt.vary_momentum()
        >>> step = ag.compile([], updates=opt.updates([ag.constant(np.ones(1, "float32"))]))
        >>> _ = step()
        >>> opt.param_groups[0]["momentum"] = 0.0
        >>> _ = step()
        >>> float(w.numpy()[0])  # buffers 1, then 0 * 1 + 1: the second step reads the new momentum
        -1.0
        """
        name = type(self).__name__
        if self.momentum_key is None:
            raise ValueError(f"{name}.vary_momentum: {name} has no momentum or beta1 to vary")
        if self._built:
            raise RuntimeError(
                f"{name}.vary_momentum: the optimizer's updates were already built with a constant "
                f"{self.momentum_key}; create the scheduler (OneCycleLR) before compiling the training step"
            )
        for i, group in enumerate(self.param_groups):
            if group.momentum_var is None:
                value = group[self.momentum_key]
                value = value[0] if self.momentum_key == "betas" else value
                group.momentum_var = ag.state(np.float32(value), name=f"optim.group{i}.momentum")

    @property
    def params(self) -> list[ag.Tensor]:
        """Every parameter, group by group (the order of ``state_dict`` indices)."""
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do: gradients are graph values, recomputed every step (kept for PyTorch code)."""

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: per-parameter state by index, and the groups' hyperparameters.

        Values are numpy copies; ``step`` is a float32 scalar, as in PyTorch.
        """
        state: dict[int, dict[str, np.ndarray]] = {}
        groups = []
        index = 0
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                entry = self.state.get(id(p.node.data))
                if entry is not None and float(entry["step"].numpy()) > 0:
                    exported = {
                        k: np.array(v.numpy(), copy=True) for k, v in entry.items() if self._exported(k)
                    }
                    if exported:  # torch.optim.SGD without momentum keeps no state at all
                        state[index] = exported
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def _exported(self, name: str) -> bool:
        return True

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` or from ``torch.optim`` (tensors or arrays)."""
        name = type(self).__name__
        groups = state_dict.get("param_groups")
        if not isinstance(groups, Sequence) or len(groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: the state dict has "
                f"{len(groups) if isinstance(groups, Sequence) else 'no'} parameter groups, the optimizer "
                f"{len(self.param_groups)}"
            )
        for i, (mine, theirs) in enumerate(zip(self.param_groups, groups, strict=True)):
            if len(theirs["params"]) != len(mine["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: group {i} has {len(theirs['params'])} parameters in the state "
                    f"dict, {len(mine['params'])} in the optimizer"
                )
        params = self.params
        saved = {int(k): v for k, v in state_dict.get("state", {}).items()}
        indices = [int(j) for g in groups for j in g["params"]]
        for mine, theirs in zip(self.param_groups, groups, strict=True):
            for key, value in theirs.items():
                if key != "params" and key in mine:
                    mine[key] = _plain(value)
        for position, j in enumerate(indices):
            p = params[position]
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            if j not in saved:
                continue
            entry = self._state_for(group, p)
            for key, value in saved[j].items():
                if key not in entry:
                    continue
                array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
                if array.shape != tuple(entry[key].shape):
                    raise ValueError(
                        f"{name}.load_state_dict: state {key!r} of parameter {p.name} has shape "
                        f"{array.shape}, expected {tuple(entry[key].shape)}"
                    )
                entry[key].assign(array)
            self._after_load(entry, saved[j])

    def _after_load(self, entry: dict[str, ag.Tensor], saved: Mapping[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params")
        return "\n".join([*lines, ")"])


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return tuple(value) if isinstance(value, list) else value


def _check_hyper(name: str, key: str, value: Any) -> None:
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    numeric = ("lr", "eps", "weight_decay", "momentum", "dampening", "alpha")
    if key in numeric and (not number or value < 0 or math.isnan(value)):
        raise ValueError(f"{name}: invalid {key}: {value!r} (expected a non-negative number)")
    if key == "betas" and (len(value) != 2 or not all(0.0 <= b < 1.0 for b in value)):
        raise ValueError(f"{name}: invalid betas: {value!r} (expected two numbers in [0, 1))")


# --------------------------------------------------------------------------- the optimizers
class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``: momentum, dampening, Nesterov, weight decay.

    With momentum, ``buf = momentum * buf + (1 - dampening) * grad`` (the first step sets ``buf = grad``),
    and the step uses ``grad + momentum * buf`` (Nesterov) or ``buf``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )

    momentum_key = "momentum"

    def _state_names(self, group: Mapping[str, Any]) -> list[str]:
        return ["momentum_buffer"] if group["momentum"] or group.momentum_var is not None else []

    def _exported(self, name: str) -> bool:
        return name != "step"  # torch.optim.SGD keeps only momentum_buffer

    def _after_load(self, entry: dict[str, ag.Tensor], saved: Mapping[str, Any]) -> None:
        if "momentum_buffer" in saved and saved["momentum_buffer"] is not None and "step" not in saved:
            entry["step"].assign(np.float32(1.0))  # the buffer exists: later steps accumulate into it

    def _update(self, group, p, g, state, step, lr):  # type: ignore[no-untyped-def]
        if group.momentum_var is not None:
            return _sgd_formula(group, p, g, state["momentum_buffer"], step, lr, group.momentum_var)
        return fused.sgd_update(
            p,
            g,
            state.get("momentum_buffer"),
            step,
            lr=lr,
            momentum=group["momentum"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (``decoupled_weight_decay=True`` is AdamW).

    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2``,
    ``p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=bool(amsgrad),
                maximize=maximize,
                decoupled_weight_decay=decoupled_weight_decay,
            ),
        )

    momentum_key = "betas"

    def _state_names(self, group: Mapping[str, Any]) -> list[str]:
        return ["exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if group["amsgrad"] else [])]

    def _update(self, group, p, g, state, step, lr):  # type: ignore[no-untyped-def]
        if group.momentum_var is not None:
            return _adam_formula(group, p, g, state, step, lr, group.momentum_var)
        return fused.adam_update(
            p,
            g,
            state["exp_avg"],
            state["exp_avg_sq"],
            step,
            lr=lr,
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            max_exp_avg_sq=state.get("max_exp_avg_sq"),
            maximize=group["maximize"],
        )


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: Adam with decoupled weight decay ``p *= 1 - lr * weight_decay``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True
        )


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop``: ``alpha`` smoothing, ``momentum``, ``centered``, weight decay."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                alpha=alpha,
                eps=eps,
                weight_decay=weight_decay,
                momentum=momentum,
                centered=centered,
                maximize=maximize,
            ),
        )

    def _state_names(self, group: Mapping[str, Any]) -> list[str]:
        return [
            "square_avg",
            *(["momentum_buffer"] if group["momentum"] else []),
            *(["grad_avg"] if group["centered"] else []),
        ]

    def _update(self, group, p, g, state, step, lr):  # type: ignore[no-untyped-def]
        return fused.rmsprop_update(
            p,
            g,
            state["square_avg"],
            state.get("grad_avg"),
            state.get("momentum_buffer"),
            lr=lr,
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
            maximize=group["maximize"],
        )


# --------------------------------------------------------------------------- variable momentum
# The fused ops compile momentum and betas as constants; with a momentum variable (vary_momentum) the
# same steps are written with elementwise ops, in torch.optim's order of operations.
def _descent_grad(group: Mapping[str, Any], p: ag.Tensor, g: ag.Tensor) -> ag.Tensor:
    """The maximize sign and, unless decoupled, the L2 weight decay folded into the gradient."""
    g = -g if group["maximize"] else g
    if group["weight_decay"] and not group.get("decoupled_weight_decay", False):
        g = g + group["weight_decay"] * p
    return g


def _sgd_formula(
    group: Mapping[str, Any],
    p: ag.Tensor,
    g: ag.Tensor,
    buf: ag.Tensor,
    step: ag.Tensor,
    lr: ag.Tensor,
    momentum: ag.Tensor,
) -> dict[str, ag.Tensor]:
    """``torch.optim.SGD``'s step with ``momentum`` a scalar tensor: the first step sets ``buf = grad``."""
    g = _descent_grad(group, p, g)
    m = ag.cast(momentum, p.dtype)
    new_buf = ag.where(step <= 1.0, g, buf * m + (1.0 - group["dampening"]) * g)
    direction = g + new_buf * m if group["nesterov"] else new_buf
    return {"param": p - ag.cast(lr, p.dtype) * direction, "momentum_buffer": new_buf}


def _one_minus_power(log_base: ag.Tensor | float, t: ag.Tensor) -> ag.Tensor:
    """``1 - base ** t`` without float32's cancellation (``1 - 0.999`` loses 4 digits): ``-expm1(t log base)``
    by Kahan's formula ``(u - 1) x / log(u)``, ``u = exp(x)`` (``x`` itself where ``u`` rounds to 1)."""
    x = t * log_base
    u = ag.exp(x)
    return -ag.where(u == 1.0, x, (u - 1.0) * x / ag.log(u))


def _adam_formula(
    group: Mapping[str, Any],
    p: ag.Tensor,
    g: ag.Tensor,
    state: Mapping[str, ag.Tensor],
    step: ag.Tensor,
    lr: ag.Tensor,
    beta1: ag.Tensor,
) -> dict[str, ag.Tensor]:
    """``torch.optim.Adam``/``AdamW``'s step with ``beta1`` a scalar tensor (the bias correction uses it too)."""
    g = _descent_grad(group, p, g)
    lr_p, b1 = ag.cast(lr, p.dtype), ag.cast(beta1, p.dtype)
    beta2, eps = group["betas"][1], group["eps"]
    if group["weight_decay"] and group["decoupled_weight_decay"]:
        p = p * (1.0 - lr_p * group["weight_decay"])
    out = {"exp_avg": state["exp_avg"] + (g - state["exp_avg"]) * (1.0 - b1)}
    out["exp_avg_sq"] = state["exp_avg_sq"] * beta2 + (1.0 - beta2) * g * g
    v = out["exp_avg_sq"]
    if group["amsgrad"]:
        v = out["max_exp_avg_sq"] = ag.maximum(state["max_exp_avg_sq"], v)
    t = ag.cast(step, p.dtype)
    step_size = lr_p / _one_minus_power(ag.log(b1), t)
    denom = ag.sqrt(v) / ag.sqrt(_one_minus_power(math.log(beta2), t)) + eps
    return {"param": p - step_size * out["exp_avg"] / denom, **out}


# --------------------------------------------------------------------------- gradient clipping
def clip_grad_norm(
    grads: Sequence[ag.Tensor], max_norm: float, norm_type: float = 2.0
) -> tuple[list[ag.Tensor], ag.Tensor]:
    """Scale gradients so their joint norm is at most ``max_norm``; returns ``(clipped, total_norm)``.

    As ``torch.nn.utils.clip_grad_norm_``: ``total_norm`` is the ``norm_type`` norm of all gradients
    together (``inf`` for the max-abs norm), and each gradient is multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))``. Everything is graph nodes, inside the compiled step.

    >>> import numpy as np
    >>> import asg.core as ag
    >>> g = ag.input("g", (2,))
    >>> (clipped,), norm = clip_grad_norm([g], 1.0)
    >>> c, n = ag.compile([clipped, norm])(np.array([3.0, 4.0], "float32"))
    >>> [round(float(v), 4) for v in c], float(n)
    ([0.6, 0.8], 5.0)
    """
    grads = list(grads)
    if not grads:
        raise ValueError("clip_grad_norm: no gradients given")
    if max_norm < 0:
        raise ValueError(f"clip_grad_norm: max_norm must be non-negative, got {max_norm}")
    if norm_type == math.inf:
        total = ag.max(ag.stack([ag.abs(g).max() for g in grads]))
    else:
        p = float(norm_type)
        if p <= 0:
            raise ValueError(f"clip_grad_norm: norm_type must be positive or inf, got {norm_type}")
        if p == 2.0:
            total = ag.sqrt(sum(((g * g).sum() for g in grads[1:]), (grads[0] * grads[0]).sum()))
        else:
            powered = [(ag.abs(g) ** p).sum() for g in grads]
            total = sum(powered[1:], powered[0]) ** (1.0 / p)
    coef = ag.minimum(max_norm / (total + 1e-6), 1.0)
    return [g * ag.cast(coef, g.dtype) for g in grads], total


def clip_grad_value(grads: Sequence[ag.Tensor], clip_value: float) -> list[ag.Tensor]:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (``torch.nn.utils.clip_grad_value_``)."""
    if clip_value < 0:
        raise ValueError(f"clip_grad_value: clip_value must be non-negative, got {clip_value}")
    return [ag.clamp(g, -clip_value, clip_value) for g in grads]
