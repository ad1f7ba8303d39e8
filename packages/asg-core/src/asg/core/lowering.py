"""Kernel lowering: turning each step of a schedule into what a backend runs, once per plan.

A backend registers, per op, a rule (:func:`asg.core.registry.register_lowering`) that receives a
:class:`LoweringContext` with everything concrete about one node (as JAX's ``LoweringRuleContext``)
and returns the backend's executable: for numpy a :class:`~asg.core.registry.Kernel` whose function
takes the arrays only; for wgpu a pipeline plus a dispatch size. An op without a lowering is lowered
from its registered kernel by binding the node's attributes. Neither: :class:`MissingRuleError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import MissingRuleError
from .graph import LEAF_OPS, Graph, Node
from .registry import Kernel, OpDef, TensorType, get_op, kernel_for
from .specialize import Specialization


@dataclass(frozen=True)
class LoweringContext:
    """What a lowering rule knows about the node it lowers; every shape is concrete.

    Attributes:
        node: the graph node (its ``meta`` holds analyses such as fusion groups).
        op: the node's :class:`~asg.core.registry.OpDef`.
        backend: the backend's name.
        in_types: the inputs' :class:`~asg.core.registry.TensorType` (int dims).
        out_type: the output's type.
        attrs: the attributes with symbolic dims resolved.
        name: the node's printed name (the user's name, sanitised, where given).
        scope: the module path the node was built under (``"h.0.attn"``), or ``None``.
    """

    node: Node
    op: OpDef
    backend: str
    in_types: tuple[TensorType, ...]
    out_type: TensorType
    attrs: Mapping[str, Any]
    name: str
    scope: str | None

    @property
    def op_name(self) -> str:
        """The name of the op being lowered (``self.op.name``)."""
        return self.op.name


def context(
    backend: str, graph: Graph, node: Node, spec: Specialization, names: Mapping[int, str]
) -> LoweringContext:
    """The :class:`LoweringContext` of ``node`` in ``graph`` specialised by ``spec``."""
    return LoweringContext(
        node=node,
        op=get_op(node.op),
        backend=backend,
        in_types=tuple(TensorType(spec.shapes[i.id], i.dtype) for i in node.inputs),
        out_type=TensorType(spec.shapes[node.id], node.dtype),
        attrs=spec.attrs[node.id],
        name=names.get(node.id, node.label),
        scope=node.meta.get("scope"),
    )


def lower(ctx: LoweringContext) -> Any:
    """Run the node's lowering rule on its backend (or bind its kernel's attributes).

    A rule returning a bare callable (not a :class:`Kernel`) is wrapped in a flagless Kernel.
    """
    rule = ctx.op.lowerings.get(ctx.backend)
    if rule is None:
        kernel = kernel_for(ctx.backend, ctx.op.name)
        return kernel.bind(ctx.attrs)
    result = rule(ctx)
    if callable(result) and not isinstance(result, Kernel):
        return Kernel(result)
    return result


def check_lowerable(graph: Graph, backend: str) -> None:
    """Raise :class:`MissingRuleError` naming every op of ``graph`` that ``backend`` cannot run.

    >>> import asg.core as ag
    >>> x = ag.input("x", (2,))
    >>> check_lowerable(ag.Graph([(x * 2.0).node]), "numpy")
    >>> check_lowerable(ag.Graph([(x * 2.0).node]), "nowhere")
    Traceback (most recent call last):
    ...
    asg.core.errors.MissingRuleError: backend 'nowhere' has no lowering or kernel for op 'mul' (used by 1 node, first mul_...); register one with register_lowering('mul', 'nowhere', rule)
    """
    missing: dict[str, list[Node]] = {}
    for n in graph.nodes:
        if n.op in LEAF_OPS:
            continue
        op = get_op(n.op)
        if backend not in op.lowerings and backend not in op.kernels:
            missing.setdefault(n.op, []).append(n)
    if missing:
        parts = [
            f"op {name!r} (used by {len(nodes)} node{'s' if len(nodes) > 1 else ''}, first {nodes[0].label})"
            for name, nodes in missing.items()
        ]
        first = next(iter(missing))
        raise MissingRuleError(
            f"backend {backend!r} has no lowering or kernel for {', '.join(parts)}; register one with "
            f"register_lowering({first!r}, {backend!r}, rule)"
        )
