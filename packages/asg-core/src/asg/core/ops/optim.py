"""The "optim" family: fused optimizer updates, one op per optimizer (SGD, Adam/AdamW, RMSprop).

An optimizer step is part of the compiled training graph: each op reads a parameter, its gradient,
its optimizer state and the learning rate (a graph variable, so changing it never recompiles) and
computes a new value. Ops have one output, so each op carries an ``output`` attribute naming which of
the updated tensors it computes (``"param"``, ``"exp_avg"``, ...): an optimizer applies the same op,
with the same inputs, once per updated tensor. A backend may compute all the outputs of one op and one
set of inputs in a single kernel: the numpy kernels compute just what is asked, and given a tuple of
names as ``output`` they return that tuple of values from one pass (the numpy backend calls them so),
written into ``out=`` arrays where given (the numpy backend passes the state's own arrays: in place).
The formulas follow ``torch.optim``'s single-tensor implementations operation for operation, so
float32 results agree with PyTorch's to rounding.

Inputs (all arrays have the parameter's shape and dtype; ``step`` and ``lr`` are float scalars):

- ``sgd_update(param, grad, [momentum_buffer, step,] lr)`` — the buffer and step only with ``momentum > 0``;
  ``step`` is the count including this step (the first step initialises the buffer to the gradient).
- ``adam_update(param, grad, exp_avg, exp_avg_sq, [max_exp_avg_sq,] step, lr)`` — ``decoupled_weight_decay=True``
  is AdamW; ``max_exp_avg_sq`` with ``amsgrad``.
- ``rmsprop_update(param, grad, square_avg, [grad_avg,] [momentum_buffer,] lr)`` — ``grad_avg`` when
  ``centered``, the buffer when ``momentum > 0``.

Gradients do not flow through optimizer updates (they are not differentiable).

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> from asg.core.ops import optim
    >>> p = ag.parameter(np.ones(3, "float32"), name="p")
    >>> g = ag.input("g", (3,))
    >>> lr = ag.state(np.float32(0.1), name="lr")
    >>> step = ag.compile([], inputs=[g], updates={p: optim.sgd_update(p, g, lr=lr)["param"]})
    >>> _ = step(np.array([1.0, 2.0, 3.0], "float32"))
    >>> p.numpy().tolist()
    [0.8999999761581421, 0.800000011920929, 0.699999988079071]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..registry import TensorType, define_op
from ..shapes import format_shape
from ..tensor import Tensor, apply, as_tensor
from ._rules import require_float

# The state tensors each op can output, in input order after (param, grad).
_OUTPUTS = {
    "sgd_update": ("param", "momentum_buffer"),
    "adam_update": ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop_update": ("param", "square_avg", "grad_avg", "momentum_buffer"),
}


def _check(op: str, names: list[str], types: tuple[TensorType, ...], output: str) -> TensorType:
    """Arrays match the parameter exactly; step and lr are float scalars; ``output`` is one of the arrays."""
    if len(types) != len(names):
        raise ValueError(f"expected {len(names)} inputs ({', '.join(names)}), got {len(types)}")
    param = types[0]
    require_float(param)
    arrays = [n for n in names if n not in ("step", "lr")]
    for name, t in zip(names, types, strict=True):
        if name in ("step", "lr"):
            if t.shape != () or not t.dtype.startswith("float"):
                raise ValueError(f"{name} must be a float scalar, got {format_shape(t.shape)} {t.dtype}")
        elif tuple(t.shape) != tuple(param.shape) or t.dtype != param.dtype:
            raise ValueError(
                f"{name} is {format_shape(t.shape)} {t.dtype}, but the parameter is "
                f"{format_shape(param.shape)} {param.dtype}; optimizer state must match its parameter"
            )
    if output not in arrays or output == "grad":
        raise ValueError(
            f"output must be one of {', '.join(a for a in arrays if a != 'grad')}, got {output!r}"
        )
    return param


def _pick(got: dict[str, np.ndarray], output: str | tuple[str, ...]) -> Any:
    """The value named ``output``, or a tuple of them for a tuple of names (one kernel call, every output)."""
    return got[output] if isinstance(output, str) else tuple(got[name] for name in output)


def _targets(output: str | tuple[str, ...], out: Sequence[np.ndarray | None] | None) -> dict[str, Any]:
    """Output name -> the array to write it into (``out``, aligned with the names), where one is given.

    A target may be the input holding the old value (an update in place): every kernel reads an input
    before it writes that input's output, elementwise.
    """
    if out is None:
        return {}
    names = (output,) if isinstance(output, str) else output
    return {name: array for name, array in zip(names, out, strict=True) if array is not None}


def _into(ufunc: np.ufunc, a: Any, b: Any, scratch: Any) -> Any:
    """``ufunc(a, b)`` written over ``scratch`` (a temporary of the result's shape) when it is an array."""
    return ufunc(a, b, out=scratch) if isinstance(scratch, np.ndarray) else ufunc(a, b)


def input_names(op: str, attrs: Mapping[str, Any]) -> list[str]:
    """The names of an optimizer op's inputs, in order, for its attributes.

    >>> input_names("sgd_update", {"momentum": 0.9})
    ['param', 'grad', 'momentum_buffer', 'step', 'lr']
    """
    if op == "sgd_update":
        return _sgd_names(attrs["momentum"])
    if op == "adam_update":
        return _adam_names(attrs["amsgrad"])
    return _rmsprop_names(attrs["momentum"], attrs["centered"])


def _l2_grad(grad: np.ndarray, param: np.ndarray, maximize: bool, weight_decay: float) -> np.ndarray:
    """The gradient a torch.optim step uses: negated with ``maximize``, plus ``weight_decay * param`` (L2)."""
    if maximize:
        grad = -grad
    if weight_decay:
        grad = grad + weight_decay * param
    return grad


# ----------------------------------------------------------------------------- SGD
def _sgd_names(momentum: float) -> list[str]:
    return ["param", "grad", *(["momentum_buffer", "step"] if momentum else []), "lr"]


def _sgd_infer(
    *types: TensorType,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    maximize: bool,
    output: str,
) -> TensorType:
    return _check("sgd_update", _sgd_names(momentum), types, output)


def _sgd_kernel(
    *arrays: np.ndarray,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    maximize: bool,
    output: str | tuple[str, ...],
    out: Sequence[np.ndarray | None] | None = None,
) -> Any:
    param, grad = arrays[0], arrays[1]
    lr = float(arrays[-1])
    into = _targets(output, out)
    grad = _l2_grad(grad, param, maximize, weight_decay)
    got: dict[str, np.ndarray] = {}
    if momentum:
        buf, step = arrays[2], float(arrays[3])
        target = into.get("momentum_buffer")
        if step <= 1:
            buf = grad.copy() if target is None else target
            if target is not None:
                np.copyto(target, grad)
        else:
            buf = np.multiply(buf, momentum, out=target)
            buf += (1 - dampening) * grad
        got["momentum_buffer"] = buf
        if output == "momentum_buffer":
            return buf
        grad = grad + momentum * buf if nesterov else buf
    got["param"] = np.subtract(param, lr * grad, out=into.get("param"))
    return _pick(got, output)


define_op(
    "sgd_update",
    infer=_sgd_infer,
    kernel=_sgd_kernel,
    differentiable=False,
    doc="SGD (momentum, dampening, Nesterov, weight decay) as torch.optim.SGD; outputs param or momentum_buffer.",
)


# ----------------------------------------------------------------------------- Adam / AdamW
def _adam_names(amsgrad: bool) -> list[str]:
    return ["param", "grad", "exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if amsgrad else []), "step", "lr"]


def _adam_infer(
    *types: TensorType,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    output: str,
) -> TensorType:
    return _check("adam_update", _adam_names(amsgrad), types, output)


def _lerp(start: np.ndarray, end: np.ndarray, weight: float, out: np.ndarray | None = None) -> np.ndarray:
    """``torch.lerp`` as PyTorch computes it (two formulas, for weights below and above 0.5), into ``out``."""
    step = end - start
    if weight < 0.5:
        step *= weight
        return np.add(start, step, out=out)
    step *= 1 - weight
    return np.subtract(end, step, out=out)


def _adam_kernel(
    *arrays: np.ndarray,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    output: str | tuple[str, ...],
    out: Sequence[np.ndarray | None] | None = None,
) -> Any:
    named = dict(zip(_adam_names(amsgrad), arrays, strict=True))
    param, grad, exp_avg, exp_avg_sq = named["param"], named["grad"], named["exp_avg"], named["exp_avg_sq"]
    lr_, t = float(named["lr"]), float(named["step"])
    into = _targets(output, out)
    grad = _l2_grad(grad, param, maximize, 0.0 if decoupled_weight_decay else weight_decay)
    if weight_decay and decoupled_weight_decay:
        param = np.multiply(param, 1 - lr_ * weight_decay, out=into.get("param"))
    got: dict[str, np.ndarray] = {}
    want = (output,) if isinstance(output, str) else output
    if "exp_avg" in want or "param" in want:
        m = got["exp_avg"] = _lerp(exp_avg, grad, 1 - beta1, into.get("exp_avg"))
        if output == "exp_avg":
            return m
    v = np.multiply(exp_avg_sq, beta2, out=into.get("exp_avg_sq"))
    squared = grad * grad
    squared *= 1 - beta2
    v += squared
    got["exp_avg_sq"] = v
    if output == "exp_avg_sq":
        return v
    if amsgrad:
        v = got["max_exp_avg_sq"] = np.maximum(named["max_exp_avg_sq"], v, out=into.get("max_exp_avg_sq"))
        if output == "max_exp_avg_sq":
            return v
    step_size = lr_ / (1 - beta1**t)
    denom = np.sqrt(v)
    denom /= math.sqrt(1 - beta2**t)
    denom += eps
    ratio = _into(np.divide, m, denom, denom)
    ratio *= step_size
    got["param"] = np.subtract(param, ratio, out=into.get("param"))
    return _pick(got, output)


define_op(
    "adam_update",
    infer=_adam_infer,
    kernel=_adam_kernel,
    differentiable=False,
    doc="Adam as torch.optim.Adam (decoupled_weight_decay=True: AdamW; amsgrad); outputs param, exp_avg, "
    "exp_avg_sq or max_exp_avg_sq.",
)


# ----------------------------------------------------------------------------- RMSprop
def _rmsprop_names(momentum: float, centered: bool) -> list[str]:
    return [
        "param",
        "grad",
        "square_avg",
        *(["grad_avg"] if centered else []),
        *(["momentum_buffer"] if momentum else []),
        "lr",
    ]


def _rmsprop_infer(
    *types: TensorType,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    output: str,
) -> TensorType:
    return _check("rmsprop_update", _rmsprop_names(momentum, centered), types, output)


def _rmsprop_kernel(
    *arrays: np.ndarray,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    output: str | tuple[str, ...],
    out: Sequence[np.ndarray | None] | None = None,
) -> Any:
    named = dict(zip(_rmsprop_names(momentum, centered), arrays, strict=True))
    param, grad, lr = named["param"], named["grad"], float(named["lr"])
    into = _targets(output, out)
    grad = _l2_grad(grad, param, maximize, weight_decay)
    square_avg = np.multiply(named["square_avg"], alpha, out=into.get("square_avg"))
    squared = grad * grad
    squared *= 1 - alpha
    square_avg += squared
    if output == "square_avg":
        return square_avg
    got = {"square_avg": square_avg}
    if centered:
        grad_avg = got["grad_avg"] = _lerp(named["grad_avg"], grad, 1 - alpha, into.get("grad_avg"))
        if output == "grad_avg":
            return grad_avg
        avg = np.sqrt(square_avg - grad_avg * grad_avg)
    else:
        avg = np.sqrt(square_avg)
    avg += eps
    if momentum:
        buf = np.multiply(named["momentum_buffer"], momentum, out=into.get("momentum_buffer"))
        buf += grad / avg
        got["momentum_buffer"] = buf
        if output == "momentum_buffer":
            return buf
        got["param"] = np.subtract(param, lr * buf, out=into.get("param"))
    else:
        step = _into(np.divide, grad, avg, avg)
        step *= lr
        got["param"] = np.subtract(param, step, out=into.get("param"))
    return _pick(got, output)


define_op(
    "rmsprop_update",
    infer=_rmsprop_infer,
    kernel=_rmsprop_kernel,
    differentiable=False,
    doc="RMSprop (momentum, centered) as torch.optim.RMSprop; outputs param, square_avg, grad_avg or momentum_buffer.",
)


# ----------------------------------------------------------------------------- public functions
def _apply_all(op: str, inputs: list[Any], outputs: tuple[str, ...], **attrs: Any) -> dict[str, Tensor]:
    param = as_tensor(inputs[0])
    tensors = [as_tensor(t, param.dtype) for t in inputs]
    return {name: apply(op, *tensors, output=name, **attrs) for name in outputs}


def sgd_update(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor | None = None,
    step: Tensor | None = None,
    *,
    lr: Tensor,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> dict[str, Tensor]:
    """The new ``param`` (and ``momentum_buffer`` with momentum) after one SGD step, as graph nodes.

    ``step`` is the step count including this one (a float scalar tensor); it is needed with momentum.
    """
    if momentum and (momentum_buffer is None or step is None):
        raise ValueError("sgd_update: momentum > 0 needs momentum_buffer and step")
    inputs = [param, grad, *([momentum_buffer, step] if momentum else []), lr]
    outputs = ("param", "momentum_buffer") if momentum else ("param",)
    return _apply_all(
        "sgd_update",
        inputs,
        outputs,
        momentum=float(momentum),
        dampening=float(dampening),
        nesterov=bool(nesterov),
        weight_decay=float(weight_decay),
        maximize=bool(maximize),
    )


def adam_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    *,
    lr: Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    max_exp_avg_sq: Tensor | None = None,
    maximize: bool = False,
) -> dict[str, Tensor]:
    """The new ``param``, ``exp_avg`` and ``exp_avg_sq`` after one Adam (or AdamW) step, as graph nodes.

    ``step`` is the step count including this one (a float scalar tensor). Passing ``max_exp_avg_sq``
    turns on AMSGrad (its new value is returned too).
    """
    amsgrad = max_exp_avg_sq is not None
    outputs = _OUTPUTS["adam_update"] if amsgrad else _OUTPUTS["adam_update"][:3]
    return _apply_all(
        "adam_update",
        [param, grad, exp_avg, exp_avg_sq, *([max_exp_avg_sq] if amsgrad else []), step, lr],
        outputs,
        beta1=float(betas[0]),
        beta2=float(betas[1]),
        eps=float(eps),
        weight_decay=float(weight_decay),
        decoupled_weight_decay=bool(decoupled_weight_decay),
        amsgrad=amsgrad,
        maximize=bool(maximize),
    )


def rmsprop_update(
    param: Tensor,
    grad: Tensor,
    square_avg: Tensor,
    grad_avg: Tensor | None = None,
    momentum_buffer: Tensor | None = None,
    *,
    lr: Tensor,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> dict[str, Tensor]:
    """The new ``param``, ``square_avg`` (and ``grad_avg``, ``momentum_buffer``) after one RMSprop step."""
    if centered and grad_avg is None:
        raise ValueError("rmsprop_update: centered=True needs grad_avg")
    if momentum and momentum_buffer is None:
        raise ValueError("rmsprop_update: momentum > 0 needs momentum_buffer")
    extra = [*([grad_avg] if centered else []), *([momentum_buffer] if momentum else [])]
    outputs = (
        "param",
        "square_avg",
        *(["grad_avg"] if centered else []),
        *(["momentum_buffer"] if momentum else []),
    )
    return _apply_all(
        "rmsprop_update",
        [param, grad, square_avg, *extra, lr],
        outputs,
        alpha=float(alpha),
        eps=float(eps),
        weight_decay=float(weight_decay),
        momentum=float(momentum),
        centered=bool(centered),
        maximize=bool(maximize),
    )


__all__ = ["adam_update", "rmsprop_update", "sgd_update"]
