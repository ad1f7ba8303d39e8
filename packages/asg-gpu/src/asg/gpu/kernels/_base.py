"""Registering wgpu lowerings, and the helpers every family shares."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from asg.core.lowering import LoweringContext
from asg.core.registry import OPS, Kernel, TensorType, register_lowering

from ..codegen import Dispatch, Program, elementwise_kernel, grid, load, store

IMPLEMENTED: set[str] = set()
# op name -> rule, for ops that packages above asg-gpu define (asg-nn's ``recompute``): registered by
# :func:`register_deferred` once the op exists, without asg-gpu importing that package.
_DEFERRED: dict[str, Callable[[LoweringContext], Kernel]] = {}


def register_deferred() -> None:
    """Register the deferred lowerings whose op has been defined since (the backend calls it per compile)."""
    for name in [n for n in _DEFERRED if n in OPS]:
        register_lowering(name, "wgpu", _DEFERRED.pop(name))
        IMPLEMENTED.add(name)


def gpu_lowering(
    *names: str, in_place: bool = False, f16: bool = False, defined_above: bool = False
) -> Callable[[Callable[[LoweringContext], Program]], Callable]:
    """Register ``fn(ctx) -> Program`` as the wgpu lowering of each op in ``names``.

    ``defined_above=True``: the ops are defined by a package that depends on asg-core (asg-nn) and
    may be imported after asg-gpu; each lowering is registered when its op exists (:func:`register_deferred`).

    ``in_place=True``: a one-dispatch program that reads each input element at the index it writes,
    so core's planner may give it the buffer of an input dying at this step. ``f16=True``: ``fn``
    reads and writes float16 buffers itself (through :func:`~asg.gpu.codegen.load`/``store``);
    otherwise float16 operands are converted to float32 scratch buffers around a float32 program
    (:func:`via_float32`), which is also the "float32 accumulation" numpy's float16 kernels use.
    """

    def deco(fn: Callable[[LoweringContext], Program]) -> Callable[[LoweringContext], Program]:
        def rule(ctx: LoweringContext) -> Kernel:
            halves = any(t.dtype == "float16" for t in (*ctx.in_types, ctx.out_type))
            prog = fn(ctx) if f16 or not halves else via_float32(fn, ctx)
            prog.name = prog.name or ctx.name
            return Kernel(
                prog,
                out_arg=not prog.view,
                returns_view=prog.view,
                in_place=in_place and len(prog.dispatches) == 1 and not prog.temps,
            )

        for name in names:
            if defined_above and name not in OPS:
                _DEFERRED[name] = rule
                continue
            register_lowering(name, "wgpu", rule)
            IMPLEMENTED.add(name)
        return fn

    return deco


def via_float32(fn: Callable[[LoweringContext], Program], ctx: LoweringContext) -> Program:
    """``fn``'s float32 program run on float16 data: inputs converted into scratch, output back."""
    f32 = replace(
        ctx,
        in_types=tuple(TensorType(t.shape, "float32") if t.dtype == "float16" else t for t in ctx.in_types),
        out_type=TensorType(ctx.out_type.shape, "float32")
        if ctx.out_type.dtype == "float16"
        else ctx.out_type,
    )
    inner = fn(f32)
    if inner.view:
        return inner
    temps: list[int] = []
    dispatches: list[Dispatch] = []
    role: dict[tuple[str, int], tuple[str, int]] = {}
    for k, t in enumerate(ctx.in_types):
        if t.dtype == "float16":
            n = math.prod(int(d) for d in t.shape)
            role[("in", k)] = ("tmp", len(temps))
            dispatches += _convert(n, ("in", k), ("tmp", len(temps)), "float16", "float32")
            temps.append(4 * max(n, 1))
    out_half = ctx.out_type.dtype == "float16"
    n_out = math.prod(int(d) for d in ctx.out_type.shape)
    if out_half:
        role[("out", 0)] = ("tmp", len(temps))
        out_tmp = len(temps)
        temps.append(4 * max(n_out, 1))
    shift = len(temps)
    for d in inner.dispatches:
        args = tuple(("tmp", k + shift) if r == "tmp" else role.get((r, k), (r, k)) for r, k in d.args)
        dispatches.append(Dispatch(d.wgsl, d.grid, args))
    temps += inner.temps
    if out_half:
        dispatches += _convert(n_out, ("tmp", out_tmp), ("out", 0), "float32", "float16")
    return Program(dispatches, temps, name=inner.name)


def _convert(n: int, src: tuple[str, int], dst: tuple[str, int], a: str, b: str) -> list[Dispatch]:
    if not n:
        return []
    wgsl = elementwise_kernel([("src", a), ("dst", b)], n, [store("dst", b, "i", load("src", a, "i"))])
    return [Dispatch(wgsl, grid(n), (src, dst))]


def const_scalar(ctx: LoweringContext, k: int) -> object | None:
    """The value of input ``k`` when it is a one-element constant (inlined as a literal), else None."""
    node = ctx.node.inputs[k]
    if node.op == "constant" and node.data is not None and node.data.size == 1:
        return node.data.reshape(()).item()
    return None
