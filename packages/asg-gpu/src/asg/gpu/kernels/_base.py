"""Registering wgpu lowerings, and the helpers every family shares."""

from __future__ import annotations

from collections.abc import Callable

from asg.core.lowering import LoweringContext
from asg.core.registry import Kernel, register_lowering

from ..codegen import Program

IMPLEMENTED: set[str] = set()


def gpu_lowering(
    *names: str, in_place: bool = False
) -> Callable[[Callable[[LoweringContext], Program]], Callable]:
    """Register ``fn(ctx) -> Program`` as the wgpu lowering of each op in ``names``.

    ``in_place=True``: a one-dispatch program that reads each input element at the index it writes,
    so core's planner may give it the buffer of an input dying at this step.
    """

    def deco(fn: Callable[[LoweringContext], Program]) -> Callable[[LoweringContext], Program]:
        def rule(ctx: LoweringContext) -> Kernel:
            prog = fn(ctx)
            prog.name = prog.name or ctx.name
            return Kernel(
                prog,
                out_arg=not prog.view,
                returns_view=prog.view,
                in_place=in_place and len(prog.dispatches) == 1 and not prog.temps,
            )

        for name in names:
            register_lowering(name, "wgpu", rule)
            IMPLEMENTED.add(name)
        return fn

    return deco


def const_scalar(ctx: LoweringContext, k: int) -> object | None:
    """The value of input ``k`` when it is a one-element constant (inlined as a literal), else None."""
    node = ctx.node.inputs[k]
    if node.op == "constant" and node.data is not None and node.data.size == 1:
        return node.data.reshape(()).item()
    return None
