"""The fused optimizer updates (sgd_update, adam_update, rmsprop_update): one elementwise kernel each;
a plan runs the sibling nodes of one Adam step (new param, exp_avg, exp_avg_sq) as one (:func:`merged_update`).

The formulas follow asg-core's numpy kernels line by line (torch.optim's single-tensor code). numpy
computes the bias corrections ``1 - beta**t`` in float64; here they are ``-expm1(t * ln(beta))`` in
float32 with ``ln(beta)`` from the host, which keeps their relative error near 1e-7 even for
``beta2 = 0.999`` at step 1 (``1 - pow(beta2, t)`` in float32 would be off by 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from asg.core.graph import Node
from asg.core.lowering import LoweringContext
from asg.core.specialize import Specialization

from ..codegen import VTYPE, Program, elementwise_kernel, grid, literal, load, per_element, store
from ._base import const_scalar, gpu_lowering

EXPM1 = """
fn expm1_f(y: f32) -> f32 {
    if (abs(y) < 0.01) { return y * (1.0 + y * (0.5 + y * (0.16666667 + y * 0.041666668))); }
    return exp(y) - 1.0;
}"""


def _f(v: float) -> str:
    return literal(v, "f32")


def _loads(
    ctx: LoweringContext, names: list[str], computed: Mapping[int, str] | None = None
) -> tuple[list[str], list[int]]:
    """Lines binding the inputs by name (scalars read once, constants inlined, those of ``computed``
    given by its expression), and the inputs bound."""
    body, bound = [], []
    for k, name in enumerate(names):
        if computed and k in computed:
            body.append(f"let {name} = {computed[k]};")
            continue
        value = const_scalar(ctx, k)
        if value is not None and tuple(ctx.in_types[k].shape) == ():
            body.append(f"let {name} = {_f(value)};")
            continue
        slot = len(bound)
        bound.append(k)
        index = "0" if tuple(ctx.in_types[k].shape) == () else "i"
        body.append(f"let {name} = f32({load(f'in{slot}', ctx.in_types[k].dtype, index)});")
    return body, bound


def _program(ctx: LoweringContext, names: list[str], lines: list[str], result: str) -> Program:
    """Bind the inputs by name (scalars read once, constants inlined) and store ``result``."""
    body, bound = _loads(ctx, names)
    body += lines
    body.append(store("out", "float32", "i", result))
    count = math.prod(int(d) for d in ctx.out_type.shape)
    prog = per_element(ctx.name, [ctx.in_types[k].dtype for k in bound], "float32", count, body)
    for j, d in enumerate(prog.dispatches):
        args = tuple(("in", bound[k]) if role == "in" else (role, k) for role, k in d.args)
        prog.dispatches[j] = type(d)(d.wgsl.replace("\n@compute", EXPM1 + "\n@compute", 1), d.grid, args)
    return prog


def merged_update(
    ctxs: Sequence[LoweringContext],
    computed: Mapping[int, str] | None = None,
    extra: Sequence[tuple[str, str]] = (),
    scalar_outputs: Sequence[tuple[str, str, str]] = (),
) -> tuple[str, tuple[int, int, int], list[int]] | None:
    """One kernel storing the outputs of sibling update nodes (the same op, inputs and attributes
    but ``output``: ``adam_update``'s new param, exp_avg and exp_avg_sq), each in ``out{j}`` in the
    order of ``ctxs``: (WGSL, grid, the inputs it binds as ``in0..``). The inputs are read once
    instead of once per output, and one dispatch runs instead of three. ``None`` if the op has no
    merged form (:data:`MERGEABLE`).

    ``computed``: input index -> f32 expression computing it in the kernel (the step count
    ``step + 1``) from the buffers ``extra`` (declared after the inputs); ``scalar_outputs``:
    (buffer, dtype, expression) stored by invocation 0, declared after the outputs.
    """
    ctx = ctxs[0]
    parts = MERGEABLE.get(ctx.op_name)
    if parts is None:
        return None
    names, lines, results = parts(ctx)
    if len(names) != len(ctx.in_types) or any(c.attrs["output"] not in results for c in ctxs):
        return None  # AMSGrad's extra state
    body, bound = _loads(ctx, names, computed)
    body += lines
    body += [store(f"out{j}", "float32", "i", results[c.attrs["output"]]) for j, c in enumerate(ctxs)]
    body += [f"if (i == 0) {{ {store(name, dtype, '0', expr)} }}" for name, dtype, expr in scalar_outputs]
    bindings = [(f"in{j}", ctx.in_types[k].dtype) for j, k in enumerate(bound)] + list(extra)
    bindings += [(f"out{j}", "float32") for j in range(len(ctxs))]
    bindings += [(name, dtype) for name, dtype, _ in scalar_outputs]
    count = math.prod(int(d) for d in ctx.out_type.shape)
    wgsl = elementwise_kernel(bindings, count, body).replace("\n@compute", EXPM1 + "\n@compute", 1)
    return wgsl, grid(count), bound


def _lerp(start: str, end: str, weight: float) -> str:
    if weight < 0.5:
        return f"({start} + {_f(weight)} * ({end} - {start}))"
    return f"({end} - ({end} - {start}) * {_f(1 - weight)})"


@gpu_lowering("sgd_update")
def _sgd(ctx: LoweringContext) -> Program:
    a = ctx.attrs
    momentum = a["momentum"]
    names = ["param", "grad", *(["buf0", "step"] if momentum else []), "lr"]
    lines = ["var g = grad;"]
    if a["maximize"]:
        lines.append("g = -g;")
    if a["weight_decay"]:
        lines.append(f"g = g + {_f(a['weight_decay'])} * param;")
    if momentum:
        lines.append(
            f"let buf = select(buf0 * {_f(momentum)} + {_f(1 - a['dampening'])} * g, g, step <= 1.0);"
        )
        if a["output"] == "momentum_buffer":
            return _program(ctx, names, lines, "buf")
        lines.append(f"g = g + {_f(momentum)} * buf;" if a["nesterov"] else "g = buf;")
    return _program(ctx, names, lines, "param - lr * g")


def _adam_parts(ctx: LoweringContext) -> tuple[list[str], list[str], dict[str, str]]:
    """(input names, lines, expression of each output) of one Adam step."""
    a = ctx.attrs
    b1, b2 = a["beta1"], a["beta2"]
    names = ["param0", "grad0", "exp_avg", "exp_avg_sq", "step", "lr"]
    lines = ["var g = grad0;", "var param = param0;"]
    if a["maximize"]:
        lines.append("g = -g;")
    if a["weight_decay"] and a["decoupled_weight_decay"]:
        lines.append(f"param = param * (1.0 - lr * {_f(a['weight_decay'])});")
    elif a["weight_decay"]:
        lines.append(f"g = g + {_f(a['weight_decay'])} * param;")
    lines += [
        f"let m = {_lerp('exp_avg', 'g', 1 - b1)};",
        f"let v = exp_avg_sq * {_f(b2)} + {_f(1 - b2)} * (g * g);",
        f"let step_size = lr / -expm1_f(step * {_f(math.log(b1))});",
        f"let denom = sqrt(v) / sqrt(-expm1_f(step * {_f(math.log(b2))})) + {_f(a['eps'])};",
    ]
    return names, lines, {"exp_avg": "m", "exp_avg_sq": "v", "param": "param - step_size * (m / denom)"}


@gpu_lowering("adam_update")
def _adam(ctx: LoweringContext) -> Program:
    names, lines, results = _adam_parts(ctx)
    return _program(ctx, names, lines, results[ctx.attrs["output"]])


@gpu_lowering("rmsprop_update")
def _rmsprop(ctx: LoweringContext) -> Program:
    a = ctx.attrs
    alpha, momentum, centered = a["alpha"], a["momentum"], a["centered"]
    names = [
        "param",
        "grad",
        "square_avg0",
        *(["grad_avg0"] if centered else []),
        *(["buf0"] if momentum else []),
        "lr",
    ]
    lines = ["var g = grad;"]
    if a["maximize"]:
        lines.append("g = -g;")
    if a["weight_decay"]:
        lines.append(f"g = g + {_f(a['weight_decay'])} * param;")
    lines.append(f"let square_avg = square_avg0 * {_f(alpha)} + {_f(1 - alpha)} * (g * g);")
    if a["output"] == "square_avg":
        return _program(ctx, names, lines, "square_avg")
    if centered:
        lines.append(f"let grad_avg = {_lerp('grad_avg0', 'g', 1 - alpha)};")
        if a["output"] == "grad_avg":
            return _program(ctx, names, lines, "grad_avg")
        lines.append(f"let avg = sqrt(square_avg - grad_avg * grad_avg) + {_f(a['eps'])};")
    else:
        lines.append(f"let avg = sqrt(square_avg) + {_f(a['eps'])};")
    if momentum:
        lines.append(f"let buf = buf0 * {_f(momentum)} + g / avg;")
        if a["output"] == "momentum_buffer":
            return _program(ctx, names, lines, "buf")
        return _program(ctx, names, lines, "param - lr * buf")
    return _program(ctx, names, lines, "param - lr * (g / avg)")


def scalar_expression(
    node: Node, spec: Specialization, prefix: str
) -> tuple[str, list[tuple[str, str]], list[int]] | None:
    """A one-element float32 elementwise ``node`` (the step count ``step + 1``) as an expression of
    its inputs, for :func:`merged_update`'s ``computed``: (expression, bindings ``{prefix}{k}``, ids of
    the values bound). Only inputs valid for the whole step qualify (parameters, inputs, constants:
    one-element ones inlined); else ``None``."""
    from .elementwise import TABLE, emit

    if node.op not in TABLE or node.dtype != "float32" or tuple(spec.shapes[node.id]) != ():
        return None
    values, bindings, ids = [], [], []
    for inp in node.inputs:
        if inp.op == "constant" and inp.data is not None and inp.data.size == 1:
            values.append((literal(inp.data.reshape(()).item(), VTYPE[inp.dtype]), VTYPE[inp.dtype]))
        elif inp.op in ("parameter", "input") and tuple(spec.shapes[inp.id]) == ():
            name = f"{prefix}{len(bindings)}"
            bindings.append((name, inp.dtype))
            ids.append(inp.id)
            values.append((load(name, inp.dtype, "0"), VTYPE[inp.dtype]))
        else:
            return None
    expr = emit(node.op, spec.attrs[node.id], [i.dtype for i in node.inputs], node.dtype, values)
    return f"f32({expr})", bindings, ids


# ops whose sibling nodes (one per output) :func:`merged_update` computes in one kernel: op -> parts
MERGEABLE = {"adam_update": _adam_parts}
