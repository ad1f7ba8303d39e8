"""Graph-to-graph reverse-mode differentiation.

:func:`grad` walks the graph backwards from a scalar and calls each op's gradient rule. The rules
use the Tensor API, so the result is an ordinary graph: it prints, optimises, serialises, runs on
any backend, and can be differentiated again (Hessian-vector products, second derivatives).
"""

from __future__ import annotations

from collections.abc import Sequence

from .dtypes import is_float
from .errors import DTypeError, MissingRuleError, ShapeError
from .graph import LEAF_OPS, Node, topological_order
from .naming import gradient_of
from .registry import get_op, grad_rule
from .shapes import broadcast_shapes, format_shape
from .tensor import Tensor, apply

# Autograd sits below the op families (as JAX's ``ad`` sits below ``lax``): it never imports them.
# The few ops it emits itself are applied by registry name; the op families (``asg.core.ops``)
# register them, and they import this module for ``grad``.


def _full(shape: tuple, value: float, dtype: str) -> Tensor:
    return apply("full", shape=shape, value=float(value), dtype=dtype)


def _accumulate(grads: dict[int, Tensor], node: Node, value: Tensor) -> None:
    previous = grads.get(node.id)
    grads[node.id] = value if previous is None else previous + value


def _fit_to(g: Tensor, x: Node) -> Tensor:
    """Undo broadcasting and dtype changes so the cotangent has exactly ``x``'s type."""
    if g.shape != x.shape:
        # A rule may return a cotangent that is broadcast (sum it back) or not yet broadcast.
        grows = g.ndim < x.ndim and broadcast_shapes(g.shape, x.shape) == x.shape
        g = apply("broadcast_to" if grows else "sum_to", g, shape=x.shape)
    if g.dtype != x.dtype:
        g = apply("cast", g, dtype=x.dtype)
    return g


def grad(
    output: Tensor,
    wrt: Sequence[Tensor] | Tensor,
    grad_output: Tensor | None = None,
) -> list[Tensor]:
    """Gradients of ``output`` with respect to each tensor in ``wrt``, as new graph nodes.

    Args:
        output: a scalar tensor, or any tensor when ``grad_output`` (same shape) is given.
        wrt: tensors to differentiate with respect to (inputs, parameters or intermediates).
        grad_output: the cotangent seeding the backward pass (default: 1 for a scalar).

    Returns:
        One tensor per entry of ``wrt``, with its shape and dtype; zeros where ``output`` does
        not depend on it.

    Example:
        >>> import numpy as np
        >>> import asg.core as ag
        >>> x = ag.input("x", (3,), "float64")
        >>> (dx,) = ag.grad((x * x).sum(), [x])
        >>> f = ag.compile([dx], inputs=[x])
        >>> f(np.array([1.0, 2.0, 3.0]))[0]
        array([2., 4., 6.])
    """
    single = isinstance(wrt, Tensor)
    targets = [wrt] if single else list(wrt)
    for t in targets:
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: wrt must hold Tensors, got {type(t).__name__}")
        if not is_float(t.dtype):
            raise DTypeError(
                f"grad: cannot differentiate with respect to {t.node.label}: its dtype is {t.dtype}"
            )
    if grad_output is None:
        if output.ndim != 0:
            raise ShapeError(
                f"grad: output {output.node.label} has shape {format_shape(output.shape)}; differentiate a scalar "
                "(e.g. loss.sum()) or pass grad_output"
            )
        if not is_float(output.dtype):
            raise DTypeError(
                f"grad: output {output.node.label} has dtype {output.dtype}; it must be floating point"
            )
        with gradient_of(output.node.id, output.node.meta.get("scope")):
            seed = _full((), 1.0, output.dtype)
    else:
        if grad_output.shape != output.shape:
            raise ShapeError(
                f"grad: grad_output {format_shape(grad_output.shape)} must match output "
                f"{output.node.label} {format_shape(output.shape)}"
            )
        seed = grad_output

    order = topological_order([output.node])
    target_ids = {t.node.id for t in targets}
    # Only nodes that lie on a path from a target to the output need cotangents.
    needed: set[int] = set()
    for node in order:
        if node.id in target_ids or (
            any(i.id in needed for i in node.inputs) and get_op_differentiable(node)
        ):
            needed.add(node.id)

    grads: dict[int, Tensor] = {output.node.id: seed}
    for node in reversed(order):
        g = grads.get(node.id)
        if g is None or node.op in LEAF_OPS or node.id not in needed:
            continue
        op = get_op(node.op)
        if not op.differentiable:
            continue
        if not any(i.id in needed for i in node.inputs):
            continue
        try:
            rule = grad_rule(op)
        except MissingRuleError as err:
            raise MissingRuleError(
                f"{err} (needed for {node.label}, built at {node.meta.get('source')})"
            ) from None
        with gradient_of(node.id, node.meta.get("scope")):
            input_grads = rule(g, Tensor(node), *(Tensor(i) for i in node.inputs), **node.attrs)
            if len(input_grads) != len(node.inputs):
                raise MissingRuleError(
                    f"gradient rule of {op.name!r} returned {len(input_grads)} cotangents for {len(node.inputs)} inputs"
                )
            for x, gx in zip(node.inputs, input_grads, strict=True):
                if gx is None or x.id not in needed or not is_float(x.dtype):
                    continue
                _accumulate(grads, x, _fit_to(gx, x))

    results = []
    for t in targets:
        g = grads.get(t.node.id)
        results.append(_full(t.shape, 0.0, t.dtype) if g is None else g)
    return results


def get_op_differentiable(node: Node) -> bool:
    """True when gradients can flow through ``node`` to its inputs."""
    if node.op in LEAF_OPS:
        return False
    return get_op(node.op).differentiable


def value_and_grad(output: Tensor, wrt: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """``(output, grad(output, wrt))``, for symmetry with JAX."""
    return output, grad(output, wrt)


def hvp(output: Tensor, wrt: Sequence[Tensor], vectors: Sequence[Tensor]) -> list[Tensor]:
    """Hessian-vector product: ``d/dwrt (grad(output, wrt) . vectors)``, by differentiating twice."""
    first = grad(output, wrt)
    dot = None
    for g, v in zip(first, vectors, strict=True):
        prod = g * v
        term = apply("sum", prod, axes=tuple(range(prod.ndim)), keepdims=False)
        dot = term if dot is None else dot + term
    assert dot is not None
    return grad(dot, wrt)
