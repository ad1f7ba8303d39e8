"""Shared helpers of the asg-nn tests: run a module against its PyTorch twin with the same weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import asg.core as ag
from asg import nn


def torch_or_skip() -> Any:
    return pytest.importorskip("torch")


def load_from_torch(ours: nn.Module, theirs: Any) -> None:
    """PyTorch's state_dict into ours BY NAME, no renaming, strict."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()}, strict=True)


def _input(i: int, a: np.ndarray) -> ag.Tensor:
    dtype = "float32" if a.dtype.kind == "f" else "bool" if a.dtype.kind == "b" else "int64"
    return ag.input(f"x{i}", a.shape, dtype)


def compare_module(
    ours: nn.Module,
    theirs: Any,
    *arrays: np.ndarray,
    call_ours: Callable[..., ag.Tensor] | None = None,
    call_theirs: Callable[..., Any] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    grad_rtol: float | None = None,
    grad_atol: float | None = None,
    check_params: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Load torch's weights into ``ours`` by name; compare outputs and the gradients of ``sum(out * c)``
    with respect to every float input and every parameter (by its dotted name). Returns the max errors."""
    torch = torch_or_skip()
    load_from_torch(ours, theirs)
    call_ours = call_ours or (lambda m, *xs: m(*xs))
    call_theirs = call_theirs or (lambda m, *xs: m(*xs))
    xs = [_input(i, a) for i, a in enumerate(arrays)]
    out = call_ours(ours, *xs)
    cot = np.random.default_rng(seed).normal(size=[int(d) for d in out.shape])
    cot = cot.astype(np.float32)
    named = list(ours.named_parameters()) if check_params else []
    float_xs = [x for x in xs if x.dtype == "float32"]
    grads = ag.grad((out * ag.constant(cot)).sum(), [*float_xs, *(p for _, p in named)])
    fn = ag.compile([out, *grads], inputs=xs)
    got = fn(*arrays)

    t_in = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    t_out = call_theirs(theirs, *t_in)
    (t_out * torch.tensor(cot)).sum().backward()
    t_params = dict(theirs.named_parameters())
    want = [t_out.detach().numpy()]
    want += [_grad(t) for t in t_in if t.dtype == torch.float32]
    # a parameter the output does not depend on has no torch gradient: ours is zeros
    want += [_grad(t_params[name]) for name, _ in named]
    labels = ["output"] + [f"grad x{i}" for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    labels += [f"grad {name}" for name, _ in named]
    errors = {}
    for i, (label, g, w) in enumerate(zip(labels, got, want, strict=True)):
        r = rtol if i == 0 else (grad_rtol or rtol)
        a = atol if i == 0 else (grad_atol or atol)
        assert g.shape == w.shape, f"{label}: shape {g.shape} vs torch {w.shape}"
        np.testing.assert_allclose(g, w, rtol=r, atol=a, err_msg=label)
        errors[label] = float(np.max(np.abs(g - w))) if g.size else 0.0
    return errors


def _grad(t: Any) -> np.ndarray:
    return np.zeros(tuple(t.shape), np.float32) if t.grad is None else t.grad.numpy()
